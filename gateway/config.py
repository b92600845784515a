"""Settings of the gateway process (environment prefix GATEWAY_)."""

from __future__ import annotations

from typing import ClassVar

from pydantic import Field
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

    max_unary_request_bytes: int = Field(default=1024 * 1024, ge=1024)
    """The largest request of a unary or server-streaming call, in bytes; larger is INVALID_ARGUMENT, not forwarded."""
    max_stream_message_bytes: int = Field(default=2 * 1024 * 1024, ge=1024)
    """The largest message of a client stream (an upload chunk with its envelope), in bytes."""
    upload_max_seconds: float = Field(default=3600.0, gt=0)
    """The longest a client-streaming call (an upload) may run, in seconds."""
    upload_idle_seconds: float = Field(default=60.0, gt=0)
    """How long an upload may send nothing before the gateway ends it (DEADLINE_EXCEEDED), in seconds."""
    stream_max_seconds: float = Field(default=86400.0, gt=0)
    """The longest a server stream (Follow, WatchJob) may run, in seconds; clients resume from their cursor."""
    stream_idle_seconds: float = Field(default=300.0, gt=0)
    """How long a server stream may deliver nothing (Follow sends heartbeats) before it is ended, in seconds."""
    method_limits: dict[str, dict[str, float]] = {}
    """Per-method overrides, JSON by full method path:
    `{"/avgate.reporting.v1.EvidenceService/AttachEvidence": {"max_request_bytes": 4194304, "idle_seconds": 120}}`
    (keys `max_request_bytes`, `max_seconds`, `idle_seconds`)."""
    upstream_max_concurrent: int = Field(default=1024, ge=1)
    """Calls in flight to one upstream at most (Envoy's default); beyond it calls fail at once with UNAVAILABLE."""
    principal_max_concurrent: int = Field(default=100, ge=1)
    """Calls in flight of one caller (API key, or keyless address) at most; beyond it RESOURCE_EXHAUSTED."""
    breaker_failures: int = Field(default=5, ge=1)
    """Consecutive transport failures (UNAVAILABLE, DEADLINE_EXCEEDED) that open an upstream's circuit breaker."""
    breaker_open_seconds: float = Field(default=5.0, gt=0)
    """How long an open breaker refuses calls before letting one trial call through, in seconds."""
    retry_budget_ratio: float = Field(default=0.2, ge=0, le=1)
    """Retries in flight at most, as a share of the calls in flight (Envoy's 20%); never fewer than 3."""
    max_attempts: int = Field(default=3, ge=1, le=5)
    """Attempts per call at most (the first included) for methods the contract marks as safe to retry."""

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
