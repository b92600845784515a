"""Settings of the screening process (environment prefix SCREENING_)."""

from __future__ import annotations

from typing import ClassVar

from pydantic_settings import SettingsConfigDict

from avgate.kernel.reporting_handoff import ReportingHandoffSettings


class ScreeningSettings(ReportingHandoffSettings):
    """Also SCREENING_REPORTING_TARGET and SCREENING_DISPATCHER_* (the outbox of incidents for reporting)."""

    model_config = SettingsConfigDict(env_prefix="SCREENING_", extra="ignore", populate_by_name=True)
    process_name: ClassVar[str] = "screening"

    grpc_port: int = 50062
    """screening's gRPC port."""
    metrics_port: int = 9462
    """screening's Prometheus metrics port (HTTP /metrics)."""
