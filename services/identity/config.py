"""Settings of the identity process (environment prefix IDENTITY_)."""

from __future__ import annotations

from typing import ClassVar

from pydantic import Field
from pydantic_settings import SettingsConfigDict

from avgate.kernel.reporting_handoff import ReportingHandoffSettings


class IdentitySettings(ReportingHandoffSettings):
    """Also IDENTITY_REPORTING_TARGET and IDENTITY_DISPATCHER_* (the outbox of incidents for reporting)."""

    model_config = SettingsConfigDict(env_prefix="IDENTITY_", extra="ignore", populate_by_name=True)
    process_name: ClassVar[str] = "identity"

    grpc_port: int = 50061
    metrics_port: int = 9461
    # The job that ends enforcement actions at their until_time (every replica may run it).
    expiry_enabled: bool = True
    expiry_interval_seconds: float = Field(default=5.0, gt=0)
    expiry_batch_size: int = Field(default=100, ge=1, le=10_000)
