"""What a ledger entry says, and its exact bytes.

An entry records who (principal, tenant), what (action, subject ids), when,
why (legal basis, reason) and carries an idempotency key. Its stored form is
RFC 8785 canonical JSON: the bytes that are hashed into the tree, so anyone
can reproduce a leaf hash from the entry alone. Personal data never goes in:
callers pass ids and masked values, and `canonical_bytes` refuses strings
that look like a resident ID number, a mainland mobile number (also written
with a 0086 prefix or in groups, "138 0013 8000") or a Unified Social Credit
Code (its check character must hold, so upper-case ids rarely trip it).
"""

from __future__ import annotations

import uuid
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from avgate.kernel.canonical import canonical_json
from avgate.kernel.personal_data import contains_personal_data
from avgate.kernel.principal import Principal

FORMAT_VERSION = 1
MAX_ENTRY_BYTES = 64 * 1024


class PersonalDataInEntry(ValueError):
    """An entry field looks like personal data in clear."""


@dataclass(frozen=True)
class LedgerEntry:
    """One auditable event, as the appending service states it."""

    action: str
    """Dotted verb, for example "api_key.revoke", "enforcement.issue"."""
    subject_type: str
    subject_id: str
    actor: Principal
    legal_basis: str = ""
    """For example "NAVIS-2019 Art. 14"; empty where no article applies."""
    reason: str = ""
    tenant_id: str | None = None
    data: Mapping[str, Any] = field(default_factory=dict)
    """Extra facts: ids, masked values, counts. Never personal data in clear."""
    idempotency_key: str = ""
    """Same key, same entry: a retried append is recorded once. Defaults to a new uuid."""
    entry_id: uuid.UUID = field(default_factory=uuid.uuid4)
    occurred_at: datetime = field(default_factory=lambda: datetime.now(UTC))

    @property
    def key(self) -> str:
        return self.idempotency_key or str(self.entry_id)

    def to_json(self) -> dict[str, Any]:
        return {
            "v": FORMAT_VERSION,
            "id": str(self.entry_id),
            "key": self.key,
            "at": self.occurred_at.astimezone(UTC).isoformat(timespec="microseconds").replace("+00:00", "Z"),
            "action": self.action,
            "subject": {"type": self.subject_type, "id": self.subject_id},
            "tenant": self.tenant_id if self.tenant_id is not None else self.actor.effective.tenant_id,
            "actor": _actor(self.actor),
            "basis": self.legal_basis,
            "reason": self.reason,
            "data": dict(self.data),
        }


def _actor(principal: Principal) -> dict[str, Any]:
    actor: dict[str, Any] = {"role": principal.role.value, "subject": principal.subject}
    if principal.tenant_id:
        actor["tenant"] = principal.tenant_id
    if principal.request_id:
        actor["request_id"] = principal.request_id
    if principal.origin is not None:
        actor["on_behalf_of"] = _actor(principal.origin)
    return actor


def _strings(value: Any) -> list[str]:
    if isinstance(value, str):
        return [value]
    if isinstance(value, Mapping):
        return [s for k, v in value.items() for s in (*_strings(k), *_strings(v))]
    if isinstance(value, (list, tuple)):
        return [s for v in value for s in _strings(v)]
    return []


def canonical_bytes(entry: LedgerEntry) -> bytes:
    """The RFC 8785 bytes of an entry, refusing personal data and oversize entries."""
    document = entry.to_json()
    if contains_personal_data("\x00".join(_strings(document))):
        raise PersonalDataInEntry(
            f"ledger entry {entry.action!r} holds what looks like an ID or mobile number; reference or mask it"
        )
    data = canonical_json(document)
    if len(data) > MAX_ENTRY_BYTES:
        raise ValueError(f"ledger entry is {len(data)} bytes; the limit is {MAX_ENTRY_BYTES}")
    return data
