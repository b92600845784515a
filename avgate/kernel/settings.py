"""Settings from environment variables: one object per process.

Every process's settings class derives from ProcessSettings, which reads the
shared AVGATE_* variables and DATABASE_URL, and adds its own fields under its
own prefix (IDENTITY_, GATEWAY_, ...). The defaults are a working local
stack. With AVGATE_ENV=production, `check_production()` names every local
stand-in still configured and every weak setting (plain-http third parties,
drops under the state directory), and the process refuses to start; at
start (avgate.kernel.process) it also checks the role each database URL
connects as.
"""

from __future__ import annotations

import enum
import pathlib
import urllib.parse
from dataclasses import dataclass
from typing import ClassVar

from pydantic import AliasChoices, Field
from pydantic_settings import BaseSettings, SettingsConfigDict

from avgate.kernel.tls import is_generated


class Environment(enum.StrEnum):
    LOCAL = "local"
    PRODUCTION = "production"


class ProductionProfileError(RuntimeError):
    """The production profile found local stand-ins or weak settings configured."""

    def __init__(self, process: str, problems: list[str]):
        self.problems = problems
        listed = "\n  - ".join(problems)
        super().__init__(
            f"{process} refuses to start with AVGATE_ENV=production while local stand-ins or weak settings "
            f"are configured:\n  - {listed}"
        )


@dataclass(frozen=True)
class DatabaseLogin:
    """A database URL a process connects with, and the one role it must connect as."""

    variable: str
    url: str
    role: str


def plain_http(url: str) -> bool:
    """True for an `http://` URL: anyone on the path reads and rewrites what goes over it."""
    return urllib.parse.urlsplit(url).scheme.lower() == "http"


def shared(env: str, default: object, **kwargs: object) -> object:
    """A field read from a project-wide variable regardless of the class's prefix."""
    return Field(default, validation_alias=AliasChoices(env), **kwargs)  # type: ignore[call-overload]


class ProcessSettings(BaseSettings):
    """Settings every avgate process has."""

    # use_attribute_docstrings: the string after each field is its description, which
    # docs/configuration.md shows (scripts/gen_config_docs.py); subclasses inherit it, as
    # pydantic merges their model_config with this one.
    model_config = SettingsConfigDict(extra="ignore", populate_by_name=True, use_attribute_docstrings=True)

    # The short process name ("gateway", "identity", ...); also the issuer of
    # its principal tokens and the audience of tokens addressed to it.
    process_name: ClassVar[str] = "avgate"
    # The health port's distance from the gRPC port when HEALTH_PORT is unset.
    health_port_offset: ClassVar[int] = 10

    env: Environment = shared("AVGATE_ENV", Environment.LOCAL)  # type: ignore[assignment]
    """`local` or `production`; `production` refuses to start while any local stand-in is configured."""
    state_dir: pathlib.Path = shared("AVGATE_STATE_DIR", pathlib.Path(".avgate"))  # type: ignore[assignment]
    """Local state: generated keys, logs, the embedded database, local file drops."""
    log_level: str = shared("AVGATE_LOG_LEVEL", "INFO")  # type: ignore[assignment]
    """The lowest level logged (`DEBUG`, `INFO`, `WARNING`, ...); logs are JSON lines on stderr."""
    otel_exporter: str = shared("AVGATE_OTEL_EXPORTER", "none", pattern="^(none|console|otlp)$")  # type: ignore[assignment]
    """Where OpenTelemetry traces go: `none`, `console` or `otlp` (the standard OTEL_EXPORTER_OTLP_* variables)."""
    generate_keys: bool = shared("AVGATE_GENERATE_KEYS", True)  # type: ignore[assignment]
    """Generate a missing signing key pair or key file (local stand-in; production refuses it)."""
    signing_key_file: pathlib.Path | None = shared("AVGATE_SIGNING_KEY_FILE", None)  # type: ignore[assignment]
    """This process's Ed25519 private key (PEM), which signs its principal tokens.
    Unset: `<keys dir>/<process>.key`, generated when missing while AVGATE_GENERATE_KEYS is true."""
    trusted_keys_dir: pathlib.Path | None = shared("AVGATE_TRUSTED_KEYS_DIR", None)  # type: ignore[assignment]
    """The keys directory: every issuer's public key as `<issuer>.pub`. Unset: `<state dir>/keys`."""
    token_ttl_seconds: float = shared("AVGATE_TOKEN_TTL_SECONDS", 30.0, gt=0, le=300)  # type: ignore[assignment]
    """Lifetime of the principal tokens this process signs, in seconds."""
    max_message_bytes: int = shared("AVGATE_MAX_MESSAGE_BYTES", 16 * 1024 * 1024, ge=1024)  # type: ignore[assignment]
    """The largest gRPC message sent or received, in bytes."""
    shutdown_grace_seconds: float = shared("AVGATE_SHUTDOWN_GRACE_SECONDS", 15.0, ge=0)  # type: ignore[assignment]
    """On SIGTERM, how long in-flight calls may finish before they are cancelled, in seconds."""
    drain_delay_seconds: float = shared("AVGATE_DRAIN_DELAY_SECONDS", 0.0, ge=0, le=60)  # type: ignore[assignment]
    """On SIGTERM, how long health answers NOT_SERVING before the listener closes, in seconds
    (lets load balancers stop routing first)."""
    fallback_database_url: str | None = shared("DATABASE_URL", None)  # type: ignore[assignment]
    """PostgreSQL URL used by every process whose own `<PREFIX>DATABASE_URL` is unset.
    Unset as well: an embedded PostgreSQL under the state directory (local stand-in; production refuses it)."""

    internal_tls_ca_file: pathlib.Path | None = shared("AVGATE_TLS_CA_FILE", None)  # type: ignore[assignment]
    """The internal CA (PEM) every process's certificate is signed by. With AVGATE_TLS_CERT_FILE and
    AVGATE_TLS_KEY_FILE, every call between processes runs over mTLS and a service accepts only peers whose
    certificate names an avgate process (`avgate-<process>` as CN, DNS or URI name). Unset: plaintext
    inside (production refuses it); `avgate run` generates a local CA under `<state dir>/tls/`."""
    internal_tls_cert_file: pathlib.Path | None = shared("AVGATE_TLS_CERT_FILE", None)  # type: ignore[assignment]
    """This process's certificate (PEM) from the internal CA, naming `avgate-<process>`."""
    internal_tls_key_file: pathlib.Path | None = shared("AVGATE_TLS_KEY_FILE", None)  # type: ignore[assignment]
    """The private key (PEM) of AVGATE_TLS_CERT_FILE."""

    grpc_host: str = "127.0.0.1"
    """The address the gRPC and metrics listeners bind to."""
    grpc_port: int = 0
    """The gRPC port (0: any free port)."""
    metrics_port: int = 0
    """The Prometheus metrics port, HTTP at /metrics (0: any free port; negative: no metrics endpoint)."""
    health_port: int | None = None
    """A plaintext listener serving grpc.health.v1 alone, for probes that send no client certificate
    (Kubernetes' gRPC probes). Unset: 50070 for the gateway, the gRPC port + 10 for a service (50071-50074,
    the local stack's block), any free port when the gRPC port is 0; negative: none."""
    database_url: str | None = None
    """This process's PostgreSQL URL, as its own role `avgate_<process>`: at start, production refuses a URL
    that connects as another role (one URL shared by every process), a superuser, or a role that (itself or
    through a role it belongs to) bypasses row-level security or may create roles or databases. Unset:
    DATABASE_URL."""

    @property
    def effective_health_port(self) -> int:
        if self.health_port is not None:
            return self.health_port
        return self.grpc_port + self.health_port_offset if self.grpc_port > 0 else 0

    @property
    def effective_database_url(self) -> str | None:
        """This process's own URL, falling back to DATABASE_URL."""
        return self.database_url or self.fallback_database_url

    @property
    def keys_dir(self) -> pathlib.Path:
        return self.trusted_keys_dir or (self.state_dir / "keys")

    @property
    def own_signing_key_file(self) -> pathlib.Path:
        return self.signing_key_file or (self.keys_dir / f"{self.process_name}.key")

    def local_stand_ins(self) -> list[str]:
        """Every local-only stand-in this configuration uses, by variable name.

        Subclasses extend it with their own (SMS file sink, verification
        stand-in, development API keys, ...).
        """
        problems = []
        if self.generate_keys:
            problems.append("AVGATE_GENERATE_KEYS=true (generated signing keys); mount real keys and set it to false")
        if not self.effective_database_url:
            problems.append(
                f"no {self.model_config.get('env_prefix', '')}DATABASE_URL or DATABASE_URL (embedded PostgreSQL)"
            )
        tls_files = {
            "AVGATE_TLS_CA_FILE": self.internal_tls_ca_file,
            "AVGATE_TLS_CERT_FILE": self.internal_tls_cert_file,
            "AVGATE_TLS_KEY_FILE": self.internal_tls_key_file,
        }
        for variable, path in tls_files.items():
            if path is None:
                problems.append(f"{variable} unset (plaintext between processes); mount the internal mTLS files")
        if any(
            path is not None and is_generated(path) for path in (self.internal_tls_ca_file, self.internal_tls_cert_file)
        ):
            problems.append(
                "AVGATE_TLS_CA_FILE/AVGATE_TLS_CERT_FILE name certificates generated by `avgate run` "
                "(<state dir>/tls/); issue real ones"
            )
        return problems

    def weak_settings(self) -> list[str]:
        """Every setting production refuses although it names no local stand-in (a third party over
        plain http, a drop under the state directory), by variable. Subclasses extend it."""
        return []

    def production_problems(self) -> list[str]:
        """What AVGATE_ENV=production refuses in these settings alone (the database roles are checked
        at start, by avgate.kernel.process, as they need the database)."""
        return self.local_stand_ins() + self.weak_settings()

    def database_logins(self) -> list[DatabaseLogin]:
        """Every database URL this process connects with, each with the role it must connect as:
        `avgate_<process>` (avgate.kernel.db.SCHEMA_OWNERS) for the process's own URL. A URL shared
        by two processes, or an administrator's, fails that for at least one of them."""
        url = self.effective_database_url
        if not url:
            return []
        prefix = str(self.model_config.get("env_prefix", ""))
        variable = f"{prefix}DATABASE_URL" if self.database_url else "DATABASE_URL"
        return [DatabaseLogin(variable, url, f"avgate_{self.process_name}")]

    def check_production(self) -> None:
        if self.env is Environment.PRODUCTION:
            problems = self.production_problems()
            if problems:
                raise ProductionProfileError(self.process_name, problems)
