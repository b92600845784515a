"""Settings of the complaints process (environment prefix COMPLAINTS_)."""

from __future__ import annotations

from typing import ClassVar

from pydantic_settings import SettingsConfigDict

from avgate.kernel.reporting_handoff import ReportingHandoffSettings


class ComplaintsSettings(ReportingHandoffSettings):
    """Also COMPLAINTS_REPORTING_TARGET and COMPLAINTS_DISPATCHER_* (the outbox of incidents for reporting)."""

    model_config = SettingsConfigDict(env_prefix="COMPLAINTS_", extra="ignore", populate_by_name=True)
    process_name: ClassVar[str] = "complaints"

    grpc_port: int = 50064
    """complaints' gRPC port."""
    metrics_port: int = 9464
    """complaints' Prometheus metrics port (HTTP /metrics)."""
