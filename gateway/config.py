"""Settings of the gateway process (environment prefix GATEWAY_)."""

from __future__ import annotations

from typing import ClassVar

from pydantic_settings import SettingsConfigDict

from avgate.kernel.settings import ProcessSettings


class GatewaySettings(ProcessSettings):
    model_config = SettingsConfigDict(env_prefix="GATEWAY_", extra="ignore", populate_by_name=True)
    process_name: ClassVar[str] = "gateway"

    grpc_port: int = 50051
    metrics_port: int = 9460
    identity_target: str = "127.0.0.1:50061"
    screening_target: str = "127.0.0.1:50062"
    reporting_target: str = "127.0.0.1:50063"
    complaints_target: str = "127.0.0.1:50064"
    # Deadline given to a unary call whose caller set none (Envoy's route default).
    default_timeout_seconds: float = 15.0
    # How long an authenticated key record is reused before it is read again. A revoke or
    # rotate through this gateway applies at once; through another replica, within this time.
    key_cache_seconds: float = 5.0
    # Development API keys (one per role) are a local stand-in.
    dev_api_keys: bool = True

    def upstream_targets(self) -> dict[str, str]:
        return {
            "identity": self.identity_target,
            "screening": self.screening_target,
            "reporting": self.reporting_target,
            "complaints": self.complaints_target,
        }

    def local_stand_ins(self) -> list[str]:
        problems = super().local_stand_ins()
        if self.dev_api_keys:
            problems.append("GATEWAY_DEV_API_KEYS=true (development API keys); set it to false")
        return problems
