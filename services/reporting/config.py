"""Settings of the reporting process (environment prefix REPORTING_)."""

from __future__ import annotations

import pathlib
from typing import ClassVar

from pydantic_settings import SettingsConfigDict

from avgate.kernel.settings import ProcessSettings


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
    # Categories not named keep their defaults (services.reporting.domain.DEFAULT_ROUTING).
    routing_rules: dict[str, list[str]] = {}

    @property
    def own_ledger_key_file(self) -> pathlib.Path:
        return self.ledger_signing_key_file or (self.keys_dir / "ledger.skey")

    def local_stand_ins(self) -> list[str]:
        problems = super().local_stand_ins()
        if self.sequencer_enabled and not self.sequencer_database_url:
            problems.append("no REPORTING_SEQUENCER_DATABASE_URL (the sequencer's own role)")
        if self.ledger_origin.startswith("avgate.local/"):
            problems.append(f"REPORTING_LEDGER_ORIGIN={self.ledger_origin} (the local log's name)")
        return problems
