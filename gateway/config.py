"""Settings of the gateway process (environment prefix GATEWAY_)."""

from __future__ import annotations

from typing import ClassVar

from pydantic_settings import SettingsConfigDict

from avgate.kernel.settings import ProcessSettings


class GatewaySettings(ProcessSettings):
    model_config = SettingsConfigDict(env_prefix="GATEWAY_", extra="ignore", populate_by_name=True)
    process_name: ClassVar[str] = "gateway"

    grpc_port: int = 50051
    """The gateway's gRPC port, the one clients call."""
    metrics_port: int = 9460
    """The gateway's Prometheus metrics port (HTTP /metrics)."""
    identity_target: str = "127.0.0.1:50061"
    """identity's gRPC address (host:port)."""
    screening_target: str = "127.0.0.1:50062"
    """screening's gRPC address (host:port)."""
    reporting_target: str = "127.0.0.1:50063"
    """reporting's gRPC address (host:port)."""
    complaints_target: str = "127.0.0.1:50064"
    """complaints' gRPC address (host:port)."""
    default_timeout_seconds: float = 15.0
    """Deadline given to a unary call whose caller set none, in seconds (Envoy's route default)."""
    key_cache_seconds: float = 5.0
    """How long an authenticated API key record is reused before it is read again, in seconds. A revoke or
    rotate through this gateway applies at once; through another replica, within this time."""
    dev_api_keys: bool = True
    """Development API keys, one per role, may be in use (local stand-in; production refuses it, and also
    refuses while development keys are still active in the database)."""

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
