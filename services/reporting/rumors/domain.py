"""Refuted rumours (Art. 13): the registry's values, rules and errors.

Pure values: no grpc, no SQL. An entry is shared (owner tenant "", added by
operators, matched for every tenant) or belongs to one tenant (matched for
that tenant only). Entries are never deleted: a retired entry stays
readable and is no longer matched.
"""

from __future__ import annotations

import hashlib
import uuid
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from avgate.kernel.canonical import canonical_json
from avgate.kernel.legal import ART_13

LEGAL_BASIS = ART_13
MAX_CLAIM = 5000
MAX_REFUTATION = 10_000
MAX_URL = 2048
MAX_AUTHORITY = 200
MAX_REASON = 500
MAX_REQUEST_ID = 128
MAX_TITLE = 1000
MAX_DESCRIPTION = 10_000
MAX_TRANSCRIPT = 200_000
DEFAULT_MAX_RESULTS = 10
MAX_RESULTS = 100
SHARED = ""
"""The owner of entries shared with every tenant."""


@dataclass(frozen=True)
class RumorInput:
    """What a caller sends to add an entry (before validation)."""

    tenant_id: str
    claim_text: str
    refutation_text: str
    refutation_url: str
    issuing_authority: str
    publish_time: datetime | None


@dataclass(frozen=True)
class RefutedRumor:
    rumor_id: str
    tenant_id: str
    """The owner tenant; "" for a shared entry."""
    claim_text: str
    refutation_text: str
    refutation_url: str
    issuing_authority: str
    publish_time: datetime
    create_time: datetime
    request_id: str
    request_hash: bytes
    """SHA-256 of the submitted content: a retry with another hash is a conflict."""
    ledger_entry_id: uuid.UUID
    retire_time: datetime | None = None
    retire_reason: str = ""

    @property
    def active(self) -> bool:
        return self.retire_time is None


@dataclass(frozen=True)
class RumorFilter:
    include_retired: bool = False
    issuing_authority: str = ""
    published_from: datetime | None = None
    published_before: datetime | None = None


@dataclass(frozen=True)
class RumorQuery:
    """A listing as the store runs it: the caller's filter plus the owners it may see (None: all)."""

    owners: tuple[str, ...] | None
    include_retired: bool = False
    issuing_authority: str | None = None
    published_from: datetime | None = None
    published_before: datetime | None = None


@dataclass(frozen=True)
class MatchRequest:
    title: str = ""
    description: str = ""
    transcript: str = ""
    threshold: float = 0.0
    """0 means the configured default."""
    max_results: int = 0
    """0 means the default (10)."""
    content_tenant_id: str = ""
    content_id: str = ""


@dataclass(frozen=True)
class RumorMatch:
    rumor: RefutedRumor
    score: float
    field: str
    """"title", "description" or "transcript" (the proto TextField names, lower case)."""
    matched_text: str
    method: str


class RequestIdTaken(Exception):
    """A store found (owner, request id) taken while writing (a concurrent add)."""


def new_rumor_id() -> str:
    return "rum" + uuid.uuid4().hex


def _time(value: datetime) -> str:
    return value.astimezone(UTC).isoformat(timespec="microseconds").replace("+00:00", "Z")


def sha256_hex(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()


def request_document(item: RumorInput, owner: str) -> dict[str, Any]:
    assert item.publish_time is not None
    return {
        "tenant_id": owner,
        "claim_text": item.claim_text,
        "refutation_text": item.refutation_text,
        "refutation_url": item.refutation_url,
        "issuing_authority": item.issuing_authority,
        "publish_time": _time(item.publish_time),
    }


def request_hash(item: RumorInput, owner: str) -> bytes:
    return hashlib.sha256(canonical_json(request_document(item, owner))).digest()
