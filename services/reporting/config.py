"""Settings of the reporting process (environment prefix REPORTING_)."""

from __future__ import annotations

from typing import ClassVar

from pydantic_settings import SettingsConfigDict

from avgate.kernel.settings import ProcessSettings


class ReportingSettings(ProcessSettings):
    model_config = SettingsConfigDict(env_prefix="REPORTING_", extra="ignore", populate_by_name=True)
    process_name: ClassVar[str] = "reporting"

    grpc_port: int = 50063
    metrics_port: int = 9463
