"""API keys: value objects, the secret format, and how a secret is checked."""

from __future__ import annotations

import base64
import hashlib
import hmac
import re
import secrets
from dataclasses import dataclass, replace
from datetime import datetime

from avgate.kernel.principal import RegulatorScope, Role

SECRET_PREFIX = "avgk"  # noqa: S105 - a public prefix, not a secret
MAX_REQUESTS_PER_SECOND = 1_000_000.0
MAX_BURST = 1_000_000


@dataclass(frozen=True)
class RateLimit:
    """A token bucket's shape: `requests_per_second` sustained, up to `burst` at once after a pause."""

    requests_per_second: float
    burst: int


@dataclass(frozen=True)
class TenantRateLimit:
    """An operator's limit on all of a tenant's keys together (None: the gateway's default applies)."""

    tenant_id: str
    rate_limit: RateLimit | None
    update_time: datetime | None = None
    updated_by: str = ""


CERTIFICATE_SHA256 = re.compile(r"[0-9a-f]{64}")


@dataclass(frozen=True)
class ApiKey:
    key_id: str
    display_name: str
    role: Role
    tenant_id: str | None
    regulator_scope: RegulatorScope | None
    create_time: datetime
    created_by: str
    expire_time: datetime | None = None
    revoke_time: datetime | None = None
    revoke_reason: str | None = None
    last_used_time: datetime | None = None
    development: bool = False
    rate_limit: RateLimit | None = None
    """An operator's limit on this key; None: the gateway's default per-key limit applies."""
    # SHA-256 (hex) of the client certificate the key is bound to: only a connection presenting it may use it.
    client_certificate_sha256: str | None = None

    def is_active(self, now: datetime) -> bool:
        return self.revoke_time is None and (self.expire_time is None or now < self.expire_time)

    def accepts_certificate(self, presented_sha256: str | None) -> bool:
        """Whether a connection presenting this certificate (None: none) may use the key."""
        if self.client_certificate_sha256 is None:
            return True
        return presented_sha256 is not None and hmac.compare_digest(presented_sha256, self.client_certificate_sha256)


@dataclass(frozen=True)
class StoredApiKey:
    """An API key with what is needed to check a secret (hashes only)."""

    key: ApiKey
    secret_hash: bytes
    previous_secret_hash: bytes | None = None
    previous_secret_expire_time: datetime | None = None

    def accepts(self, secret: str, now: datetime) -> bool:
        presented = hash_secret(secret)
        if hmac.compare_digest(presented, self.secret_hash):
            return True
        return (
            self.previous_secret_hash is not None
            and self.previous_secret_expire_time is not None
            and now < self.previous_secret_expire_time
            and hmac.compare_digest(presented, self.previous_secret_hash)
        )

    def with_key(self, **changes: object) -> StoredApiKey:
        return replace(self, key=replace(self.key, **changes))  # type: ignore[arg-type]


def new_key_id() -> str:
    return "ak" + base64.b32encode(secrets.token_bytes(10)).decode().lower().rstrip("=")


def new_secret(key_id: str) -> str:
    """`avgk_<key id>_<43 url-safe characters>`: the id lets the gateway find the row."""
    return f"{SECRET_PREFIX}_{key_id}_{secrets.token_urlsafe(32)}"


def key_id_of(secret: str) -> str | None:
    parts = secret.split("_", 2)
    if len(parts) != 3 or parts[0] != SECRET_PREFIX or not parts[1] or len(parts[2]) < 32:
        return None
    return parts[1]


def hash_secret(secret: str) -> bytes:
    # Secrets carry 256 random bits, so a fast hash is enough (no password stretching).
    return hashlib.sha256(secret.encode()).digest()
