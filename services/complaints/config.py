"""Settings of the complaints process (environment prefix COMPLAINTS_)."""

from __future__ import annotations

from typing import ClassVar

from pydantic_settings import SettingsConfigDict

from avgate.kernel.settings import ProcessSettings


class ComplaintsSettings(ProcessSettings):
    model_config = SettingsConfigDict(env_prefix="COMPLAINTS_", extra="ignore", populate_by_name=True)
    process_name: ClassVar[str] = "complaints"

    grpc_port: int = 50064
    metrics_port: int = 9464
