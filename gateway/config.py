"""Settings of the gateway process (environment prefix GATEWAY_)."""

from __future__ import annotations

import ipaddress
import pathlib
from typing import ClassVar

from pydantic import Field, field_validator
from pydantic_settings import SettingsConfigDict

from avgate.kernel.settings import ProcessSettings
from avgate.kernel.tls import is_generated


class GatewaySettings(ProcessSettings):
    model_config = SettingsConfigDict(env_prefix="GATEWAY_", extra="ignore", populate_by_name=True)
    process_name: ClassVar[str] = "gateway"
    health_port_offset: ClassVar[int] = 19  # 50070, before the services' 50071-50074

    grpc_port: int = 50051
    """The gateway's gRPC port, the one clients call."""
    metrics_port: int = 9460
    """The gateway's Prometheus metrics port (HTTP /metrics)."""
    tls_cert_file: pathlib.Path | None = None
    """The certificate (PEM, with its chain) the public listener presents: set with GATEWAY_TLS_KEY_FILE,
    clients reach the gateway over TLS. Unset: the public listener is plaintext (local only; production
    refuses it)."""
    tls_key_file: pathlib.Path | None = None
    """The private key (PEM) of GATEWAY_TLS_CERT_FILE."""
    client_ca_file: pathlib.Path | None = None
    """The CA (PEM) that signs outside clients' certificates. Set: a second listener on GATEWAY_MTLS_PORT
    requires a client certificate it signed; API keys bound to a certificate are accepted only there, with
    that certificate. Unset: no such listener."""
    mtls_port: int = 50052
    """The port of the listener that requires client certificates (with GATEWAY_CLIENT_CA_FILE). It
    presents GATEWAY_TLS_CERT_FILE, or the gateway's internal certificate (AVGATE_TLS_CERT_FILE) when that
    is unset."""
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
    rate_limits_enabled: bool = True
    """Token-bucket rate limits per API key, per tenant and per keyless client address (gateway/limits.py).
    Off only to measure what they cost."""
    key_requests_per_second: float = Field(default=100.0, gt=0)
    """Default sustained limit of one API key, in requests per second, across all replicas (an operator sets
    another per key: `avgate keys limit`). About a tenth of what one gateway replica relays (the benchmark's
    ~700-1,500 unary calls/s per core), so one client alone cannot take a replica over."""
    key_burst: int = Field(default=200, ge=1)
    """Default burst of one API key: calls accepted at once after a pause (two seconds' worth of the rate, so
    a batch job that wakes up is not refused at its first step)."""
    tenant_requests_per_second: float = Field(default=300.0, gt=0)
    """Default sustained limit of all of one tenant's keys together, in requests per second, across all
    replicas (`avgate keys tenant-limit` sets another): three keys at full rate, so a tenant cannot escape
    its share by creating keys, while one tenant still cannot crowd out the others."""
    tenant_burst: int = Field(default=600, ge=1)
    """Default burst of one tenant (two seconds' worth of its rate)."""
    address_requests_per_second: float = Field(default=5.0, gt=0)
    """Sustained limit of one client address without a key (an IPv6 /64), in requests per second, across all
    replicas. Keyless callers are people filing complaints and anyone checking the ledger's proofs: a person
    makes a few calls a minute, a verifier a few a second; a scraper or flood is refused."""
    address_burst: int = Field(default=20, ge=1)
    """Burst of one keyless client address: a complaint with its evidence uploads and a status check."""
    trusted_proxies: list[str] = []
    """CIDRs of the proxies (load balancers) in front of the gateway, for example ["10.0.0.0/8"]: for calls
    from them the client address is the last hop of `X-Forwarded-For`. Empty: the peer is the client, and
    an `X-Forwarded-For` header is ignored (anyone can write one)."""
    replicas: int = Field(default=1, ge=1)
    """How many gateway replicas share the load: each enforces its share (limit ÷ replicas) of every rate
    limit with buckets of its own, so the project needs no shared store (see gateway/limits.py)."""
    rate_limit_buckets: int = Field(default=100_000, ge=1)
    """Most token buckets kept; the least recently used is forgotten first (callers choose their addresses,
    so memory must not grow with them). About 33 MB at the default (measured with tracemalloc)."""
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

    @field_validator("trusted_proxies")
    @classmethod
    def _cidrs(cls, value: list[str]) -> list[str]:
        for cidr in value:
            try:
                ipaddress.ip_network(cidr, strict=False)
            except ValueError as exc:
                raise ValueError(f"not a CIDR: {cidr!r}") from exc
        return value

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
        for variable, path in (
            ("GATEWAY_TLS_CERT_FILE", self.tls_cert_file),
            ("GATEWAY_TLS_KEY_FILE", self.tls_key_file),
        ):
            if path is None:
                problems.append(f"{variable} unset (a plaintext public listener); mount the gateway's certificate")
        if self.tls_cert_file is not None and is_generated(self.tls_cert_file):
            problems.append("GATEWAY_TLS_CERT_FILE names a certificate generated by `avgate run`; issue a real one")
        if self.client_ca_file is not None and is_generated(self.client_ca_file):
            problems.append("GATEWAY_CLIENT_CA_FILE names a CA generated by `avgate run`; use the clients' real CA")
        return problems

    # Health watches (gateway/health.py): kept at the end of the class.
    health_watch_interval_seconds: float = Field(default=1.0, gt=0)
    """How often the gateway asks an upstream's health for the `grpc.health.v1.Health/Watch` streams open
    on it, in seconds: one check per watched service per interval, shared by all its watchers."""
    health_watches_per_peer: int = Field(default=4, ge=1)
    """Health watches (`grpc.health.v1.Health/Watch`, open to anyone) one client address (an IPv6 /64;
    behind GATEWAY_TRUSTED_PROXIES, its `X-Forwarded-For`) may hold at once; beyond it RESOURCE_EXHAUSTED."""
    health_watches_total: int = Field(default=256, ge=1)
    """Health watches open on the gateway at most, from everyone; beyond it RESOURCE_EXHAUSTED. At most half
    of the server's 2,000 concurrent calls (the gateway refuses to start otherwise), so a flood of watches
    never takes the slots API calls need."""
