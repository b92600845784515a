"""Settings of the reporting process (environment prefix REPORTING_)."""

from __future__ import annotations

import pathlib
from dataclasses import dataclass
from datetime import timedelta
from typing import Any, ClassVar

from pydantic import Field, field_validator
from pydantic_settings import SettingsConfigDict

from avgate.kernel.db import LEDGER_SEQUENCER_ROLE
from avgate.kernel.principal import DEPARTMENTS
from avgate.kernel.settings import DatabaseLogin, ProcessSettings, plain_http


@dataclass(frozen=True)
class HttpAuthority:
    """An authority that takes signed JSON documents by HTTP POST."""

    url: str
    bearer_token_file: pathlib.Path | None = None
    timeout: float = 10.0
    # Reuse connections (HTTP/1.1 keep-alive); false opens one per report, for endpoints that mishandle it.
    keep_alive: bool = True


@dataclass(frozen=True)
class FileAuthority:
    """An authority that takes exports: signed JSON lines dropped in a directory."""

    directory: pathlib.Path


AuthoritySpec = HttpAuthority | FileAuthority


class ReportingSettings(ProcessSettings):
    model_config = SettingsConfigDict(env_prefix="REPORTING_", extra="ignore", populate_by_name=True)
    process_name: ClassVar[str] = "reporting"

    grpc_port: int = 50063
    """reporting's gRPC port."""
    metrics_port: int = 9463
    """reporting's Prometheus metrics port (HTTP /metrics)."""
    sequencer_enabled: bool = True
    """Run the ledger's sequencer in this replica (one replica leads, the others stand by)."""
    sequencer_database_url: str | None = None
    """PostgreSQL URL of the sequencer's own role (`avgate_ledger_sequencer`; at start, production refuses a
    URL that connects as another role or one with more powers, as for REPORTING_DATABASE_URL). Unset: locally, the
    process's URL with that role (local stand-in; production refuses it while the sequencer is enabled)."""
    ledger_origin: str = "avgate.local/ledger"
    """The log's name: the origin line of every signed tree head (a C2SP checkpoint) and its key's name;
    an `avgate.local/` name is a local stand-in (production refuses it)."""
    ledger_signing_key_file: pathlib.Path | None = None
    """The tree-head signing key in signed-note `PRIVATE+KEY+...` form (`avgate ledger keygen` makes one);
    its name must equal REPORTING_LEDGER_ORIGIN.
    Unset: `<keys dir>/ledger.skey`, generated when missing while AVGATE_GENERATE_KEYS is true."""
    routing_rules: dict[str, list[str]] = {}
    """Routing overrides as JSON, incident category → departments: `{"rumor": ["cyberspace"]}`; categories
    not named keep their built-in routing (services.reporting.incidents.domain.DEFAULT_ROUTING)."""
    # Example: {"cyberspace": {"type": "http", "url": "https://...", "bearer_token_file": "/run/secrets/t",
    #                          "timeout": 10, "keep_alive": true},
    #           "culture_tourism": {"type": "file", "directory": "/exports/culture"}}
    authorities: dict[str, dict[str, Any]] = {}
    """Where each department's reports go, as JSON by department: `{"type": "http", "url": ...}` (optional
    `bearer_token_file`, `timeout`, `keep_alive`) or `{"type": "file", "directory": ...}`; production refuses
    an `http://` URL and a directory under the state directory. A department not named gets a file drop
    under `<state dir>/authority-drops/<department>/` (local stand-in; production refuses it while the
    dispatcher is enabled)."""
    dispatcher_enabled: bool = True
    """Run the dispatcher that delivers reports to the authorities in this process."""
    dispatcher_max_attempts: int = Field(default=10, ge=1)
    """Delivery attempts of one report before it becomes a dead letter."""
    dispatcher_base_delay: float = Field(default=0.5, gt=0)
    """The first retry's backoff, in seconds; it doubles per attempt, with full jitter."""
    dispatcher_max_delay: float = Field(default=300.0, gt=0)
    """The cap on the retry backoff, in seconds."""
    dispatcher_lease_seconds: float = Field(default=60.0, gt=0)
    """How long an attempt may run before another replica may take the report over, in seconds (a crashed
    dispatcher's reports wait this long); keep it above the slowest authority's timeout."""

    rumor_match_threshold: float = Field(default=0.6, gt=0, le=1)
    """The MatchText score a refuted rumour must reach when the request names no threshold."""
    rumor_index_refresh_seconds: float = Field(default=2.0, gt=0)
    """How often, at most, a replica asks the database whether other replicas changed the rumour registry,
    in seconds."""

    evidence_dir: pathlib.Path | None = None
    """Where sealed evidence objects are kept; production mounts a persistent volume here.
    Unset: `<state dir>/evidence` (local stand-in; production refuses it)."""
    evidence_kek_file: pathlib.Path | None = None
    """Evidence key-encryption keys: one `<key id> <base64 32 bytes>` a line, the last one current.
    Unset: `<keys dir>/evidence.kek`, generated when missing (local stand-in; production refuses it)."""
    evidence_retention: timedelta = timedelta(days=365)
    """How long evidence is preserved after it is attached: ISO 8601 (`P365D`) or seconds; at least a day."""
    evidence_max_bytes: int = Field(default=20 * 1024**3, ge=1)
    """The largest evidence upload accepted, in bytes."""

    @field_validator("evidence_retention", mode="before")
    @classmethod
    def _seconds(cls, value: Any) -> Any:
        # An environment variable is a string; a plain number of seconds is one too.
        if isinstance(value, str) and value.strip().lstrip("+-").isdigit():
            return int(value)
        return value

    @field_validator("evidence_retention")
    @classmethod
    def _at_least_a_day(cls, value: timedelta) -> timedelta:
        if value < timedelta(days=1):
            raise ValueError("REPORTING_EVIDENCE_RETENTION must be at least one day")
        return value

    export_dir: pathlib.Path | None = None
    """Where signed export bundles are built and kept (production: the evidence volume's `exports`
    directory). Unset: `<state dir>/exports` (local stand-in; production refuses it while the builder runs)."""
    export_ttl_hours: float = Field(default=168.0, gt=0)
    """How long a ready export bundle is kept, in hours."""
    export_builder_enabled: bool = True
    """Run the export builder in this process."""

    @property
    def own_export_dir(self) -> pathlib.Path:
        return self.export_dir or (self.state_dir / "exports")

    @property
    def own_ledger_key_file(self) -> pathlib.Path:
        return self.ledger_signing_key_file or (self.keys_dir / "ledger.skey")

    @property
    def own_evidence_dir(self) -> pathlib.Path:
        return self.evidence_dir or (self.state_dir / "evidence")

    @property
    def own_evidence_kek_file(self) -> pathlib.Path:
        return self.evidence_kek_file or (self.keys_dir / "evidence.kek")

    def authority_specs(self) -> dict[str, AuthoritySpec]:
        """Every department's adapter spec, checked; ValueError names the department at fault."""
        specs: dict[str, AuthoritySpec] = {
            d: FileAuthority(self.state_dir / "authority-drops" / d) for d in DEPARTMENTS
        }
        for department, raw in self.authorities.items():
            specs[department] = _parse_spec(department, raw)
        return specs

    def local_stand_ins(self) -> list[str]:
        problems = super().local_stand_ins()
        if self.sequencer_enabled and not self.sequencer_database_url:
            problems.append("no REPORTING_SEQUENCER_DATABASE_URL (the sequencer's own role)")
        if self.ledger_origin.startswith("avgate.local/"):
            problems.append(f"REPORTING_LEDGER_ORIGIN={self.ledger_origin} (the local log's name)")
        if self.dispatcher_enabled:
            missing = [d for d in DEPARTMENTS if d not in self.authorities]
            if missing:
                problems.append(
                    f"REPORTING_AUTHORITIES names no adapter for {', '.join(missing)} "
                    "(local file drops under the state directory)"
                )
        if self.evidence_kek_file is None:
            problems.append(
                "no REPORTING_EVIDENCE_KEK_FILE (an evidence key-encryption key generated under the state directory)"
            )
        if self.evidence_dir is None:
            problems.append("no REPORTING_EVIDENCE_DIR (evidence kept under the state directory)")
        if self.export_builder_enabled and self.export_dir is None:
            problems.append("no REPORTING_EXPORT_DIR (export bundles kept under the state directory)")
        return problems

    def weak_settings(self) -> list[str]:
        problems = super().weak_settings()
        state_dir = self.state_dir.resolve()
        for department, raw in self.authorities.items():
            try:
                spec = _parse_spec(department, raw)
            except ValueError as exc:
                problems.append(str(exc))
                continue
            if isinstance(spec, HttpAuthority) and plain_http(spec.url):
                problems.append(
                    f"REPORTING_AUTHORITIES: {department}'s URL {spec.url} is plain http (anyone on the path "
                    "reads and rewrites the reports); use https"
                )
            if isinstance(spec, FileAuthority) and spec.directory.resolve().is_relative_to(state_dir):
                problems.append(
                    f"REPORTING_AUTHORITIES: {department}'s file drop {spec.directory} lies under the state "
                    f"directory AVGATE_STATE_DIR={self.state_dir} (local files, not the authority's); "
                    "mount the authority's directory elsewhere"
                )
        return problems

    def database_logins(self) -> list[DatabaseLogin]:
        logins = super().database_logins()
        if self.sequencer_enabled and self.sequencer_database_url:
            logins.append(
                DatabaseLogin("REPORTING_SEQUENCER_DATABASE_URL", self.sequencer_database_url, LEDGER_SEQUENCER_ROLE)
            )
        return logins


def _parse_spec(department: str, raw: Any) -> AuthoritySpec:
    def fail(problem: str) -> ValueError:
        return ValueError(f"REPORTING_AUTHORITIES: department {department!r}: {problem}")

    if department not in DEPARTMENTS:
        raise fail(f"not a department (one of {', '.join(DEPARTMENTS)})")
    if not isinstance(raw, dict):
        raise fail('an adapter spec is a JSON object with "type": "http" or "file"')
    kind = raw.get("type")
    if kind == "http":
        unknown = set(raw) - {"type", "url", "bearer_token_file", "timeout", "keep_alive"}
        url = raw.get("url")
        if unknown:
            raise fail(f"unknown keys {sorted(unknown)}")
        if not isinstance(url, str) or not url.startswith(("http://", "https://")):
            raise fail('"url" must be an http(s) URL')
        token_file = raw.get("bearer_token_file")
        if token_file is not None and (not isinstance(token_file, str) or not token_file):
            raise fail('"bearer_token_file" must be a file path')
        timeout = raw.get("timeout", 10)
        if isinstance(timeout, bool) or not isinstance(timeout, int | float) or timeout <= 0:
            raise fail('"timeout" must be a positive number of seconds')
        keep_alive = raw.get("keep_alive", True)
        if not isinstance(keep_alive, bool):
            raise fail('"keep_alive" must be true or false')
        return HttpAuthority(url, pathlib.Path(token_file) if token_file else None, float(timeout), keep_alive)
    if kind == "file":
        unknown = set(raw) - {"type", "directory"}
        directory = raw.get("directory")
        if unknown:
            raise fail(f"unknown keys {sorted(unknown)}")
        if not isinstance(directory, str) or not directory:
            raise fail('"directory" must be a directory path')
        return FileAuthority(pathlib.Path(directory))
    raise fail(f'"type" must be "http" or "file", not {kind!r}')
