"""Settings of the identity process (environment prefix IDENTITY_)."""

from __future__ import annotations

from typing import ClassVar

from pydantic_settings import SettingsConfigDict

from avgate.kernel.settings import ProcessSettings


class IdentitySettings(ProcessSettings):
    model_config = SettingsConfigDict(env_prefix="IDENTITY_", extra="ignore", populate_by_name=True)
    process_name: ClassVar[str] = "identity"

    grpc_port: int = 50061
    metrics_port: int = 9461
