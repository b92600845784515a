"""Settings of the identity process (environment prefix IDENTITY_)."""

from __future__ import annotations

import ipaddress
import pathlib
import urllib.parse
from datetime import UTC, datetime
from typing import ClassVar

from pydantic import Field, field_validator
from pydantic_settings import SettingsConfigDict

from avgate.kernel.keyring import KeyFile, create_key_file, parse_key_file
from avgate.kernel.reporting_handoff import ReportingHandoffSettings
from avgate.kernel.settings import plain_http


class IdentitySettings(ReportingHandoffSettings):
    """Also IDENTITY_REPORTING_TARGET and IDENTITY_DISPATCHER_* (the outbox of incidents for reporting)."""

    model_config = SettingsConfigDict(env_prefix="IDENTITY_", extra="ignore", populate_by_name=True)
    process_name: ClassVar[str] = "identity"

    grpc_port: int = 50061
    """identity's gRPC port."""
    metrics_port: int = 9461
    """identity's Prometheus metrics port (HTTP /metrics)."""
    expiry_enabled: bool = True
    """Run the job that ends enforcement actions at their until_time (a ledger entry and an incident for
    reporting per action) in this process; any number of replicas may run it."""
    expiry_interval_seconds: float = Field(default=5.0, gt=0)
    """How often the expiry job looks for actions that have run out, in seconds."""
    expiry_batch_size: int = Field(default=100, ge=1, le=10_000)
    """The most actions the expiry job ends in one transaction."""
    reindex_interval_seconds: float = Field(default=60.0, gt=0)
    """How often the re-index job moves blind indexes made under an older index key to the current one,
    in seconds."""
    housekeeping_interval_seconds: float = Field(default=600.0, gt=0)
    """How often one-time codes finished a day ago and send-limit counters idle for two hours are deleted,
    in seconds."""

    # Personal data (services.identity.vault). Keep old key lines while anything made with them remains.
    vault_kek_file: pathlib.Path | None = None
    """Key-encryption keys that wrap each verified subject's data key (personal data is encrypted per
    field): one `<key id> <base64 32 bytes>` a line, the last one current.
    Unset: `<keys dir>/identity-vault.kek`, generated when missing (local stand-in; production refuses it)."""
    blind_index_key_file: pathlib.Path | None = None
    """Keys (HMAC-SHA256) of the blind indexes that look personal data up without decrypting it; same
    format, separate from the KEKs; a new last line starts a re-index.
    Unset: `<keys dir>/identity-index.keys`, generated when missing (local stand-in; production refuses it)."""

    @property
    def own_vault_kek_file(self) -> pathlib.Path:
        return self.vault_kek_file or (self.keys_dir / "identity-vault.kek")

    @property
    def own_blind_index_key_file(self) -> pathlib.Path:
        return self.blind_index_key_file or (self.keys_dir / "identity-index.keys")

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

    def code_hash_keys(self) -> KeyFile:
        """The one-time-code hash keys, generated when missing where that is allowed (as vault_keys)."""
        return self._key_file(
            "IDENTITY_CODE_HASH_KEY_FILE",
            self.code_hash_key_file,
            self.own_code_hash_key_file,
            "one-time-code hash keys",
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

    # --- SMS (one-time codes are sent directly, never through the outbox)
    sms_url: str | None = None
    """The SMS gateway's HTTP(S) endpoint for one-time codes (production refuses plain http). Unset: every
    message, code included, is written to IDENTITY_SMS_SINK_FILE (local stand-in; production refuses it)."""
    sms_bearer_token_file: pathlib.Path | None = None
    """A file holding the SMS gateway's bearer token (a mounted Secret). Unset: no Authorization header."""
    sms_timeout_seconds: float = Field(default=5.0, gt=0)
    """Timeout of one request to the SMS gateway, in seconds."""
    sms_max_attempts: int = Field(default=3, ge=1, le=10)
    """Attempts per message, retrying connection failures, timeouts, 408, 425, 429 and 5xx with backoff."""
    sms_sink_file: pathlib.Path | None = None
    """Where the local stand-in writes messages when IDENTITY_SMS_URL is unset (JSON lines, mode 0600).
    Unset: `<state dir>/sms/messages.jsonl`."""

    # --- one-time codes
    code_ttl_seconds: int = Field(default=300, ge=30, le=3600)
    """How long a one-time code may be confirmed after it is sent, in seconds."""
    code_max_attempts: int = Field(default=5, ge=1, le=20)
    """Guesses allowed per code; after the last wrong one the code is dead."""
    code_hash_key_file: pathlib.Path | None = None
    """HMAC keys of codes at rest and of the rate-limit keys of client addresses: one
    `<key id> <base64 32 bytes>` a line, the last one current.
    Unset: `<keys dir>/identity-codes.key`, generated when missing (local stand-in; production refuses it)."""

    # --- abuse limits (shared by every replica: they live in PostgreSQL)
    send_interval_per_phone_seconds: int = Field(default=60, ge=1)
    """The shortest time between two codes sent to one phone number, in seconds."""
    sends_per_phone_per_hour: int = Field(default=5, ge=1)
    """Codes sent to one phone number in an hour, at most."""
    sends_per_address_per_hour: int = Field(default=20, ge=1)
    """Codes requested from one client address in an hour, at most."""
    lockout_threshold_per_address: int = Field(default=5, ge=1)
    """Failed code confirmations from one client address before that address is locked out of the account."""
    lockout_threshold_per_account: int = Field(default=20, ge=1)
    """Failed confirmations from all addresses together before the whole account is locked out."""
    lockout_seconds: list[int] = Field(default=[60, 300, 900, 3600], min_length=1)
    """Lockout lengths in seconds, escalating with each lockout, as a JSON list; the last one is the cap."""

    # --- the authoritative identity verifier (an HTTP/JSON adapter)
    verifier_url: str | None = None
    """The authoritative identity verifier's HTTP(S) base URL (production refuses plain http); a loopback
    host is the local stand-in (`python -m services.identity.verifier_standin`; production refuses it).
    Unset: no authoritative verification is possible (production refuses it)."""
    verifier_credentials_file: pathlib.Path | None = None
    """A file holding the verifier's bearer credential (a mounted Secret). Unset: no Authorization header."""
    verifier_timeout_seconds: float = Field(default=5.0, gt=0)
    """Timeout of one request to the verifier, in seconds."""
    verifier_max_attempts: int = Field(default=3, ge=1, le=10)
    """Attempts per verification, retrying connection failures, timeouts, 408, 425, 429 and 5xx with backoff."""

    @field_validator("lockout_seconds")
    @classmethod
    def _escalating(cls, value: list[int]) -> list[int]:
        if any(s <= 0 for s in value) or value != sorted(value):
            raise ValueError("IDENTITY_LOCKOUT_SECONDS must be positive and non-decreasing")
        return value

    @field_validator("sms_url", "verifier_url")
    @classmethod
    def _http_url(cls, value: str | None) -> str | None:
        if value is not None:
            split = urllib.parse.urlsplit(value)
            if split.scheme not in ("http", "https") or not split.hostname:
                raise ValueError("must be an http(s) URL")
        return value

    @property
    def own_sms_sink_file(self) -> pathlib.Path:
        return self.sms_sink_file or (self.state_dir / "sms" / "messages.jsonl")

    @property
    def own_code_hash_key_file(self) -> pathlib.Path:
        return self.code_hash_key_file or (self.keys_dir / "identity-codes.key")

    def local_stand_ins(self) -> list[str]:
        problems = super().local_stand_ins()
        if self.vault_kek_file is None:
            problems.append(
                "no IDENTITY_VAULT_KEK_FILE (a personal-data key-encryption key generated under the state directory)"
            )
        if self.blind_index_key_file is None:
            problems.append("no IDENTITY_BLIND_INDEX_KEY_FILE (a blind-index key generated under the state directory)")
        if not self.sms_url:
            problems.append("no IDENTITY_SMS_URL (one-time codes written to a local file)")
        if self.code_hash_key_file is None:
            problems.append("no IDENTITY_CODE_HASH_KEY_FILE (a code hashing key generated under the state directory)")
        if not self.verifier_url:
            problems.append("no IDENTITY_VERIFIER_URL (no authoritative identity verification)")
        elif _is_local(self.verifier_url):
            problems.append(
                f"IDENTITY_VERIFIER_URL={self.verifier_url} points at this machine (the local verification stand-in)"
            )
        return problems

    def weak_settings(self) -> list[str]:
        problems = super().weak_settings()
        if self.sms_url and plain_http(self.sms_url):
            problems.append(
                f"IDENTITY_SMS_URL={self.sms_url} is plain http (anyone on the path reads the one-time codes); "
                "use https"
            )
        if self.verifier_url and plain_http(self.verifier_url) and not _is_local(self.verifier_url):
            # A loopback verifier is named once, as the local stand-in.
            problems.append(
                f"IDENTITY_VERIFIER_URL={self.verifier_url} is plain http (anyone on the path could answer "
                '"match"); use https'
            )
        return problems


def _is_local(url: str) -> bool:
    """True for a loopback host: where the local stack runs the verification stand-in."""
    host = urllib.parse.urlsplit(url).hostname or ""
    if host == "localhost" or host.endswith(".localhost"):
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False
