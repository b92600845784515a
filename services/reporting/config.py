"""Settings of the reporting process (environment prefix REPORTING_)."""

from __future__ import annotations

import pathlib
from dataclasses import dataclass
from datetime import timedelta
from typing import Any, ClassVar

from pydantic import Field, field_validator
from pydantic_settings import SettingsConfigDict

from avgate.kernel.principal import DEPARTMENTS
from avgate.kernel.settings import ProcessSettings


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
    metrics_port: int = 9463
    # The ledger's sequencer runs in this process, as the avgate_ledger_sequencer role.
    sequencer_enabled: bool = True
    sequencer_database_url: str | None = None
    # Tree heads are C2SP checkpoints; the origin line names this log and is the key name.
    ledger_origin: str = "avgate.local/ledger"
    # The signer key in signed-note "PRIVATE+KEY+..." form (a file holding it).
    ledger_signing_key_file: pathlib.Path | None = None
    # Routing overrides by category name, as JSON: REPORTING_ROUTING_RULES='{"rumor": ["cyberspace"]}'.
    # Categories not named keep their defaults (services.reporting.incidents.domain.DEFAULT_ROUTING).
    routing_rules: dict[str, list[str]] = {}
    # Where each department's reports go, as JSON by department:
    #   {"cyberspace": {"type": "http", "url": "https://...", "bearer_token_file": "/run/secrets/t", "timeout": 10,
    #                   "keep_alive": true},
    #    "culture_tourism": {"type": "file", "directory": "/exports/culture"}}
    # A department not named gets a file drop under <state_dir>/authority-drops/<department>/
    # (a local stand-in: the production profile names it).
    authorities: dict[str, dict[str, Any]] = {}
    # The outbox dispatcher that delivers the reports runs in this process.
    dispatcher_enabled: bool = True
    dispatcher_max_attempts: int = Field(default=10, ge=1)
    dispatcher_base_delay: float = Field(default=0.5, gt=0)
    dispatcher_max_delay: float = Field(default=300.0, gt=0)
    # How long an attempt may run before another replica may take the report over (a crashed
    # dispatcher's reports wait this long); keep it above the slowest authority's timeout.
    dispatcher_lease_seconds: float = Field(default=60.0, gt=0)

    # MatchText: the score a refuted rumour must reach when the request names no threshold.
    rumor_match_threshold: float = Field(default=0.6, gt=0, le=1)
    # How often, at most, a replica asks the database whether other replicas changed the rumour registry.
    rumor_index_refresh_seconds: float = Field(default=2.0, gt=0)

    # The evidence store. Sealed objects go under this directory (default <state_dir>/evidence,
    # a local stand-in: production mounts a persistent volume and names it).
    evidence_dir: pathlib.Path | None = None
    # Key-encryption keys: one "<key id> <base64 32 bytes>" a line, the last one current.
    # Unset: <keys dir>/evidence.kek, generated when missing (a local stand-in).
    evidence_kek_file: pathlib.Path | None = None
    # How long evidence is preserved after it is attached: ISO 8601 ("P365D") or seconds.
    evidence_retention: timedelta = timedelta(days=365)
    # The largest upload accepted, in bytes.
    evidence_max_bytes: int = Field(default=20 * 1024**3, ge=1)

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

    # Signed export bundles: where their files are kept and for how long; the builder runs in this process.
    export_dir: pathlib.Path | None = None
    export_ttl_hours: float = Field(default=168.0, gt=0)
    export_builder_enabled: bool = True

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
