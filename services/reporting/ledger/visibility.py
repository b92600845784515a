"""Which ledger entries a caller reads in full (ListEntries).

Operators read every entry. A regulator reads in full only what it could read
anyway, so the ledger tells it nothing `Get` would not:

- entries about a record it may get: an incident routed to its departments and
  regions, evidence attached to such an incident, a security assessment reported
  by one (the regulator-scope rule of services.reporting.domain), a refuted
  rumour (regulators read every tenant's), an export it asked for;
- entries it caused itself: its reads, acknowledgements, holds, feed sessions.

Every other entry (key changes, consents, identity and enforcement events,
deliveries, whatever another regulator did — even on a record in scope —,
records outside its scope, anything that does not parse) comes redacted: index, integration time and leaf hash, which
is all that proofs and rebuilding the tree need. The records' routes are looked up
once per page (`RecordScopes`), never once per entry.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

from avgate.kernel.principal import Principal, Role
from services.reporting.domain import Route, in_scope

ROUTED_RECORDS = ("incident", "evidence", "security_assessment")
"""Subject types whose visibility follows the routes of the incident(s) they belong to."""
EXPORT = "export"
READ_BY_EVERY_REGULATOR = ("refuted_rumor",)
"""Subject types every regulator may get (GetRefutedRumor has no scope)."""


@dataclass(frozen=True)
class ScopeQuery:
    """The records of one page whose scope decides what a regulator sees."""

    ids: Mapping[str, frozenset[str]] = field(default_factory=dict)
    """Subject type ("incident", "evidence", "security_assessment") → ids."""
    export_ids: frozenset[str] = frozenset()

    def __bool__(self) -> bool:
        return bool(self.export_ids) or any(self.ids.values())


@dataclass(frozen=True)
class Scopes:
    routes: Mapping[tuple[str, str], Sequence[Route]] = field(default_factory=dict)
    """(subject type, id) → the routes of the incident(s) it belongs to; missing: no such record."""
    export_owners: Mapping[str, str] = field(default_factory=dict)
    """Export id → the subject of the principal who asked for it."""


class RecordScopes(Protocol):
    async def scopes(self, query: ScopeQuery) -> Scopes: ...


def parse_entry(payload: bytes) -> dict[str, Any] | None:
    """The entry's JSON object, None if it is not one (such an entry is never shown to a regulator)."""
    try:
        document = json.loads(payload)
    except (UnicodeDecodeError, ValueError):
        return None
    return document if isinstance(document, dict) else None


def _subject(document: Mapping[str, Any]) -> tuple[str, str] | None:
    subject = document.get("subject")
    if not isinstance(subject, Mapping):
        return None
    kind, subject_id = subject.get("type"), subject.get("id")
    if not isinstance(kind, str) or not isinstance(subject_id, str):
        return None
    return kind, subject_id


def acting(actor: Any) -> tuple[str, str] | None:
    """(role, subject) of who acted: a service acting on behalf of someone stands for that someone."""
    depth = 0
    while isinstance(actor, Mapping) and actor.get("role") == Role.SERVICE.value and depth < 8:
        if not isinstance(actor.get("on_behalf_of"), Mapping):
            break
        actor = actor["on_behalf_of"]
        depth += 1
    if not isinstance(actor, Mapping):
        return None
    role, subject = actor.get("role"), actor.get("subject")
    if not isinstance(role, str) or not isinstance(subject, str):
        return None
    return role, subject


def scope_query(documents: Sequence[Mapping[str, Any] | None]) -> ScopeQuery:
    ids: dict[str, set[str]] = {kind: set() for kind in ROUTED_RECORDS}
    exports: set[str] = set()
    for document in documents:
        subject = _subject(document) if document is not None else None
        if subject is None:
            continue
        kind, subject_id = subject
        if kind in ids:
            ids[kind].add(subject_id)
        elif kind == EXPORT:
            exports.add(subject_id)
    return ScopeQuery({k: frozenset(v) for k, v in ids.items()}, frozenset(exports))


def regulator_reads(regulator: Principal, document: Mapping[str, Any] | None, scopes: Scopes) -> bool:
    """Whether `regulator` (an effective principal) reads this entry in full."""
    if document is None:
        return False
    who = acting(document.get("actor"))
    if who is not None and who[0] == Role.REGULATOR.value:
        # Its own acts in full; another regulator's trail never, whatever the record.
        return who[1] == regulator.subject
    subject = _subject(document)
    if subject is None:
        return False
    kind, subject_id = subject
    if kind in READ_BY_EVERY_REGULATOR:
        return True
    if kind == EXPORT:
        return scopes.export_owners.get(subject_id) == regulator.subject
    if kind in ROUTED_RECORDS:
        return in_scope(regulator.regulator_scope, scopes.routes.get(subject, ()))
    return False


async def readable(caller: Principal, payloads: Sequence[bytes], records: RecordScopes) -> list[bool]:
    """For each entry of a page, whether `caller` reads it in full (False: it comes redacted)."""
    effective = caller.effective
    if effective.role is Role.OPERATOR:
        return [True] * len(payloads)
    if effective.role is not Role.REGULATOR:
        return [False] * len(payloads)
    documents = [parse_entry(p) for p in payloads]
    query = scope_query(documents)
    scopes = await records.scopes(query) if query else Scopes()
    return [regulator_reads(effective, d, scopes) for d in documents]
