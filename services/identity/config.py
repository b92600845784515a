"""Settings of the identity process (environment prefix IDENTITY_)."""

from __future__ import annotations

import pathlib
from datetime import UTC, datetime
from typing import ClassVar

from pydantic_settings import SettingsConfigDict

from avgate.kernel.keyring import KeyFile, create_key_file, parse_key_file
from avgate.kernel.reporting_handoff import ReportingHandoffSettings


class IdentitySettings(ReportingHandoffSettings):
    """Also IDENTITY_REPORTING_TARGET and IDENTITY_DISPATCHER_* (the outbox of incidents for reporting)."""

    model_config = SettingsConfigDict(env_prefix="IDENTITY_", extra="ignore", populate_by_name=True)
    process_name: ClassVar[str] = "identity"

    grpc_port: int = 50061
    metrics_port: int = 9461

    # Personal data (services.identity.vault). Both files hold "<key id> <base64 32 bytes>" lines,
    # the last one current; keep old lines while anything made with them remains.
    # Key-encryption keys that wrap each subject's data key. Unset: <keys dir>/identity-vault.kek,
    # generated when missing (a local stand-in).
    vault_kek_file: pathlib.Path | None = None
    # Blind-index keys (HMAC-SHA256), separate from the KEKs. Unset: <keys dir>/identity-index.keys,
    # generated when missing (a local stand-in).
    blind_index_key_file: pathlib.Path | None = None

    @property
    def own_vault_kek_file(self) -> pathlib.Path:
        return self.vault_kek_file or (self.keys_dir / "identity-vault.kek")

    @property
    def own_blind_index_key_file(self) -> pathlib.Path:
        return self.blind_index_key_file or (self.keys_dir / "identity-index.keys")

    def local_stand_ins(self) -> list[str]:
        problems = super().local_stand_ins()
        if self.vault_kek_file is None:
            problems.append(
                "no IDENTITY_VAULT_KEK_FILE (a personal-data key-encryption key generated under the state directory)"
            )
        if self.blind_index_key_file is None:
            problems.append("no IDENTITY_BLIND_INDEX_KEY_FILE (a blind-index key generated under the state directory)")
        return problems

    def vault_keys(self) -> tuple[KeyFile, KeyFile]:
        """The KEKs and the blind-index keys, generating a missing file where that is allowed
        (its variable unset, a local stand-in, or AVGATE_GENERATE_KEYS). ValueError names the
        variable and the line at fault, never a key."""
        return (
            self._key_file("IDENTITY_VAULT_KEK_FILE", self.vault_kek_file, self.own_vault_kek_file, "vault KEKs"),
            self._key_file(
                "IDENTITY_BLIND_INDEX_KEY_FILE",
                self.blind_index_key_file,
                self.own_blind_index_key_file,
                "blind-index keys",
            ),
        )

    def _key_file(self, variable: str, configured: pathlib.Path | None, path: pathlib.Path, what: str) -> KeyFile:
        if not path.exists() and (self.generate_keys or configured is None):
            create_key_file(
                path,
                f"local-{datetime.now(UTC):%Y%m%d%H%M%S}",
                f"Identity {what}, generated for the local profile; the last line is current.",
            )
        try:
            return parse_key_file(path.read_text())
        except (OSError, ValueError) as exc:
            raise ValueError(f"{variable} ({path}): {exc}") from exc
