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

import json
import re
import uuid
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

import rfc8785

from avgate.kernel.principal import Principal

FORMAT_VERSION = 1
MAX_ENTRY_BYTES = 64 * 1024
# Bounded by anything but ASCII letters and digits, so hex ids (uuids, hashes) do not
# trip them, while a number inside Chinese text still does.
_RESIDENT_ID = re.compile(
    r"(?<![0-9A-Za-z])[1-9][0-9]{5}(?:18|19|20)[0-9]{2}(?:0[1-9]|1[0-2])(?:0[1-9]|[12][0-9]|3[01])"
    r"[0-9]{3}[0-9Xx](?![0-9A-Za-z])"
)
_MOBILE = re.compile(r"(?<![0-9A-Za-z])(?:\+?86)?1[3-9][0-9]{9}(?![0-9A-Za-z])")
# What the eleven-digit scan misses: "0086" glued to the number, and numbers written in groups.
_MOBILE_WRITTEN = re.compile(
    r"(?<![0-9A-Za-z])(?:(?:\+|00)?86[ -]?)?1[3-9][0-9](?:[ -][0-9]{4}[ -][0-9]{4}|[0-9]{8})(?![0-9A-Za-z])"
)
# GB 32100 credit codes: 18 characters over the 31-character alphabet, a check character by weights 3^i mod 31.
_USCC_ALPHABET = "0123456789ABCDEFGHJKLMNPQRTUWXY"
_USCC = re.compile(r"(?<![0-9A-Za-z])[1-9ANY][0-9A-HJ-NPQRTUWXY]{17}(?![0-9A-Za-z])")


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


_PERSONAL_DATA = re.compile(f"{_RESIDENT_ID.pattern}|{_MOBILE.pattern}")
_MAX_SAFE_INTEGER = 2**53 - 1


_ELEVEN_DIGITS = re.compile(r"[0-9]{11}")


def _is_credit_code(code: str) -> bool:
    total = sum(_USCC_ALPHABET.index(c) * pow(3, i, 31) for i, c in enumerate(code[:17]))
    return code[17] == _USCC_ALPHABET[(31 - total % 31) % 31]


def contains_personal_data(text: str) -> bool:
    """Whether text holds what looks like a resident ID number, a mainland mobile number or a credit code."""
    # ID and plain mobile numbers hold a run of eleven digits; the cheap scan spares the full patterns on most text.
    if _ELEVEN_DIGITS.search(text) is not None and _PERSONAL_DATA.search(text) is not None:
        return True
    if _MOBILE_WRITTEN.search(text) is not None:
        return True
    return any(_is_credit_code(m.group()) for m in _USCC.finditer(text))


def _plain_json(value: Any) -> bool:
    """Whether Python's sorted, compact JSON of `value` is byte-identical to RFC 8785's.

    It is when there are no floats (RFC 8785 prints numbers as ECMAScript does),
    integers stay within IEEE-754's exact range, and every object key lies in
    the Basic Multilingual Plane below the surrogates or above them (so sorting
    by code point equals RFC 8785's sorting by UTF-16 code unit). String escaping
    is the same in both: quote, backslash, b f n r t escapes, lowercase u00XX for other controls.
    """
    if isinstance(value, str) or value is None or isinstance(value, bool):
        return True
    if isinstance(value, int):
        return -_MAX_SAFE_INTEGER <= value <= _MAX_SAFE_INTEGER
    if isinstance(value, Mapping):
        return all(
            isinstance(k, str)
            and (k.isascii() or all(ord(c) < 0xD800 or 0xE000 <= ord(c) <= 0xFFFF for c in k))
            and _plain_json(v)
            for k, v in value.items()
        )
    if isinstance(value, (list, tuple)):
        return all(_plain_json(v) for v in value)
    return False


def canonical_json(document: Mapping[str, Any]) -> bytes:
    """RFC 8785 bytes of a JSON document: Python's encoder where that is provably
    the same, the reference implementation otherwise (a 5x difference per entry)."""
    if _plain_json(document):
        return json.dumps(document, sort_keys=True, separators=(",", ":"), ensure_ascii=False).encode()
    return rfc8785.dumps(document)


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
