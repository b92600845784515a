"""Where incidents live: a small interface, its SQL implementation and an
in-memory fake for unit tests (both pass one contract suite).

A creation writes the incident, its ledger entry, its regulator-feed item
and one outbox event per routed department (with what the report is about,
for DeliveryService) in one transaction; an acknowledgement writes the change,
its ledger entry and its feed item in one transaction. Delivering the outbox events to the
authorities is the dispatcher's job (wired in services.reporting.wiring); the
statuses delivering implies are set here too (`set_incident_status`), in the
dispatcher's transaction.
"""

from __future__ import annotations

import builtins
import uuid
from collections.abc import Mapping, Sequence
from dataclasses import replace
from datetime import UTC, datetime
from typing import Any, Protocol

import sqlalchemy.exc
from psycopg.rows import dict_row
from sqlalchemy import ColumnElement, Table, TextClause, and_, or_, select, text, update
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from avgate.kernel.db import transaction_driver, violated_constraint
from avgate.kernel.legal import ART_12, LegalBasis
from avgate.kernel.outbox import OutboxEvent, enqueue
from avgate.kernel.paging import Cursor
from avgate.kernel.principal import Principal
from avgate.ledger.append import append as ledger_append
from avgate.ledger.entry import LedgerEntry, canonical_bytes
from services.reporting.domain import EvidenceRef, Route
from services.reporting.incidents.delivery_subjects import Subject, add_subjects
from services.reporting.incidents.domain import (
    Acknowledgement,
    ActionTaken,
    AuthorityReport,
    ContentRef,
    ExternalIdTaken,
    Incident,
    IncidentCategory,
    IncidentChange,
    IncidentInput,
    IncidentQuery,
    IncidentSource,
    IncidentStatus,
    NewIncident,
    RelatedRecord,
    UserRef,
)
from services.reporting.models import SCHEMA, evidence, evidence_attachments, incidents


class ChangeLog(Protocol):
    """Records each change of an incident in the transaction that made it.

    The regulator feed's writer (services.reporting.feed.writer.FeedWriter) is
    the one implementation; it is injected, so incidents never import the feed
    that reads them.
    """

    async def write(self, conn: AsyncConnection, kind: IncidentChange, changed: Sequence[Incident]) -> None: ...

    async def write_on_driver(self, conn: Any, kind: IncidentChange, changed: Sequence[Incident]) -> None:
        """`write` for a change made below SQLAlchemy: `conn` is either layer's connection, transaction begun."""
        ...


class IncidentStore(Protocol):
    async def add(self, new: Sequence[NewIncident]) -> None:
        """Writes every incident with its ledger entry and reports, or nothing.

        Raises ExternalIdTaken when a (tenant, external id) is taken already.
        """
        ...

    async def get(self, incident_id: str) -> Incident | None: ...

    async def find_by_external_ids(self, tenant_id: str, external_ids: Sequence[str]) -> dict[str, Incident]: ...

    async def list(self, query: IncidentQuery, *, after: Cursor | None, limit: int) -> builtins.list[Incident]: ...

    async def acknowledge(self, incident_id: str, ack: Acknowledgement, audit: LedgerEntry) -> Incident | None:
        """Adds `ack` (status ACKNOWLEDGED) with its ledger entry; None when the incident is gone.

        An acknowledgement with the same request id by the same regulator is
        there already: the incident is returned unchanged and nothing is written.
        """
        ...

    async def record(self, audit: LedgerEntry) -> None:
        """Writes a ledger entry alone (a regulator's read)."""
        ...


def _already_acknowledged(incident: Incident, ack: Acknowledgement) -> bool:
    return bool(ack.request_id) and any(
        a.request_id == ack.request_id and a.acknowledged_by == ack.acknowledged_by for a in incident.acknowledgements
    )


def _with_ack(incident: Incident, ack: Acknowledgement) -> Incident:
    return replace(
        incident,
        acknowledgements=(*incident.acknowledgements, ack),
        status=IncidentStatus.ACKNOWLEDGED,
        update_time=ack.acknowledge_time,
    )


def _newest_first(incident: Incident) -> Cursor:
    return (incident.create_time, incident.incident_id)


class InMemoryIncidentStore:
    def __init__(self) -> None:
        self._rows: dict[str, Incident] = {}
        self.ledger: builtins.list[LedgerEntry] = []
        self.outbox: builtins.list[OutboxEvent] = []

    async def add(self, new: Sequence[NewIncident]) -> None:
        taken = {(i.tenant_id, i.external_id) for i in self._rows.values()}
        for item in new:
            key = (item.incident.tenant_id, item.incident.external_id)
            if key in taken:
                raise ExternalIdTaken(*key)
            taken.add(key)
            canonical_bytes(item.audit)  # refuses what the real ledger would refuse
        for item in new:
            self._rows[item.incident.incident_id] = item.incident
            self.ledger.append(item.audit)
            self.outbox.extend(OutboxEvent(r.destination, r.payload, r.event_id) for r in item.reports)

    async def get(self, incident_id: str) -> Incident | None:
        return self._rows.get(incident_id)

    async def find_by_external_ids(self, tenant_id: str, external_ids: Sequence[str]) -> dict[str, Incident]:
        wanted = set(external_ids)
        return {i.external_id: i for i in self._rows.values() if i.tenant_id == tenant_id and i.external_id in wanted}

    async def list(self, query: IncidentQuery, *, after: Cursor | None, limit: int) -> builtins.list[Incident]:
        ordered = sorted(self._rows.values(), key=_newest_first, reverse=True)
        return [i for i in ordered if query.matches(i) and (after is None or _newest_first(i) < after)][:limit]

    async def acknowledge(self, incident_id: str, ack: Acknowledgement, audit: LedgerEntry) -> Incident | None:
        incident = self._rows.get(incident_id)
        if incident is None or _already_acknowledged(incident, ack):
            return incident
        canonical_bytes(audit)
        self._rows[incident_id] = _with_ack(incident, ack)
        self.ledger.append(audit)
        return self._rows[incident_id]

    async def record(self, audit: LedgerEntry) -> None:
        canonical_bytes(audit)
        self.ledger.append(audit)


class SqlIncidentStore:
    def __init__(self, engine: AsyncEngine, feed: ChangeLog):
        self._engine = engine
        self._feed = feed

    async def add(self, new: Sequence[NewIncident]) -> None:
        if not new:
            return
        try:
            async with self._engine.begin() as conn:
                await self.write_new(conn, new)
        except sqlalchemy.exc.IntegrityError as exc:
            # Only the (tenant, external id) key can collide: incident ids are random.
            if violated_constraint(exc) != "incidents_tenant_external_id_key":
                raise
            first = new[0].incident
            raise ExternalIdTaken(first.tenant_id, first.external_id) from exc

    async def get(self, incident_id: str) -> Incident | None:
        async with self._engine.connect() as conn:
            return await self._get(conn, incident_id)

    @staticmethod
    async def _get(conn: AsyncConnection, incident_id: str, *, lock: bool = False) -> Incident | None:
        query = select(incidents).where(incidents.c.incident_id == incident_id)
        if lock:
            query = query.with_for_update()
        row = (await conn.execute(query)).mappings().first()
        if row is None:
            return None
        (incident,) = await _with_attachments(conn, [_from_row(row)])
        return incident

    async def write_new(self, conn: AsyncConnection, new: Sequence[NewIncident]) -> None:
        """Writes incidents with their feed items, ledger entries and reports in the caller's open transaction.

        Also for records reported as incidents (security assessments): their own
        row and the incident commit together. An IntegrityError names the key
        that collided; the caller's transaction is then lost.
        """
        await conn.execute(incidents.insert(), [_to_row(item.incident) for item in new])
        await self._feed.write(conn, IncidentChange.CREATED, [item.incident for item in new])
        for item in new:
            await ledger_append(conn, item.audit)
            for report in item.reports:
                event = OutboxEvent(report.destination, report.payload, report.event_id)
                await enqueue(conn, event, schema=SCHEMA)
        await add_subjects(conn, [_subject(item.incident, r) for item in new for r in item.reports])

    async def publish_update(self, conn: AsyncConnection, incident_id: str) -> None:
        """A regulator-feed item for an incident changed in `conn`'s transaction (evidence attached, ...)."""
        incident = await self._get(conn, incident_id)
        if incident is not None:
            await self._feed.write(conn, IncidentChange.UPDATED, [incident])

    async def find_by_external_ids(self, tenant_id: str, external_ids: Sequence[str]) -> dict[str, Incident]:
        if not external_ids:
            return {}
        query = select(incidents).where(
            incidents.c.tenant_id == tenant_id, incidents.c.external_id.in_(list(set(external_ids)))
        )
        async with self._engine.connect() as conn:
            rows = (await conn.execute(query)).mappings().all()
        return {r["external_id"]: _from_row(r) for r in rows}

    async def list(self, query: IncidentQuery, *, after: Cursor | None, limit: int) -> builtins.list[Incident]:
        c = incidents.c
        statement = (
            select(incidents)
            .where(*incident_conditions(query))
            .order_by(c.create_time.desc(), c.incident_id.desc())
            .limit(limit)
        )
        if after is not None:
            statement = statement.where(
                or_(c.create_time < after[0], and_(c.create_time == after[0], c.incident_id < after[1]))
            )
        async with self._engine.connect() as conn:
            rows = (await conn.execute(statement)).mappings().all()
            return await _with_attachments(conn, [_from_row(r) for r in rows])

    async def acknowledge(self, incident_id: str, ack: Acknowledgement, audit: LedgerEntry) -> Incident | None:
        async with self._engine.begin() as conn:
            # The row lock makes a retried acknowledgement (same request id) wait and then find the first.
            incident = await self._get(conn, incident_id, lock=True)
            if incident is None or _already_acknowledged(incident, ack):
                return incident
            updated = _with_ack(incident, ack)
            await conn.execute(
                update(incidents)
                .where(incidents.c.incident_id == incident_id)
                .values(
                    acknowledgements=[_ack_to_json(a) for a in updated.acknowledgements],
                    status=updated.status.value,
                    update_time=updated.update_time,
                )
            )
            await ledger_append(conn, audit)
            await self._feed.write(conn, IncidentChange.UPDATED, [updated])
        return updated

    async def record(self, audit: LedgerEntry) -> None:
        async with self._engine.begin() as conn:
            await ledger_append(conn, audit)


# --------------------------------------------------------------------------- statuses after creation
# The one place an incident's status changes after creation (other than an acknowledgement,
# which records itself with the acknowledgement): delivery outcomes and replays call
# `set_incident_status`. It runs in the caller's transaction, so each status and its ledger
# entry commit with whatever caused them (outcomes the dispatcher records, an operator's
# replay). It takes many incidents at once: the dispatcher settles a batch of outcomes in one
# statement plus one pipelined round of ledger appends, not two round trips per incident.

# One statement: the previous status comes from the rows as they were (locked here, if the caller
# has not locked them already); an incident that has its new status already is left alone.
_UPDATE_STATUS = (
    "update reporting.incidents i set status = v.status, update_time = %s "
    "from unnest(%s::text[], %s::text[]) as v(incident_id, status), "
    "(select incident_id, status from reporting.incidents where incident_id = any(%s) "
    "order by incident_id for update) as p "
    "where i.incident_id = v.incident_id and p.incident_id = v.incident_id and p.status <> v.status "
    "returning i.incident_id, i.tenant_id, p.status"
)


async def set_incident_status(
    conn: Any,
    changes: Mapping[str, IncidentStatus],
    *,
    actor: Principal,
    reason: str = "",
    data: Mapping[str, Mapping[str, Any]] | None = None,
    at: datetime | None = None,
    change_log: ChangeLog,
) -> dict[str, IncidentStatus]:
    """Moves each incident of `changes` to its status, each with its ledger entry ("incident.status",
    with `data[incident_id]` added) and its regulator-feed item; returns the previous status of those
    that changed. An incident that has its status already, or does not exist, is left alone and gets
    no entry.

    `conn` is a SQLAlchemy AsyncConnection or a psycopg AsyncConnection with a transaction begun.
    """
    if not changes:
        return {}
    driver = await transaction_driver(conn, "set_incident_status")
    when = at or datetime.now(UTC)
    ids = list(changes)
    cur = await driver.execute(_UPDATE_STATUS, (when, ids, [changes[i].value for i in ids], ids))
    changed = {str(r[0]): (str(r[1]), IncidentStatus(r[2])) for r in await cur.fetchall()}
    entries = [
        LedgerEntry(
            action="incident.status",
            subject_type="incident",
            subject_id=incident_id,
            actor=actor,
            legal_basis=ART_12,
            reason=reason,
            tenant_id=tenant_id,
            data={"from": previous.value, "to": changes[incident_id].value, **(data or {}).get(incident_id, {})},
            occurred_at=when,
        )
        for incident_id, (tenant_id, previous) in sorted(changed.items())
    ]
    if entries:
        async with driver.pipeline():  # the appends return nothing: one round trip for all of them
            for entry in entries:
                await ledger_append(driver, entry)
        # The regulator feed shows every status change, as the incident now is.
        now = await load_incidents(driver, sorted(changed))
        await change_log.write_on_driver(driver, IncidentChange.UPDATED, now)
    return {incident_id: previous for incident_id, (_, previous) in changed.items()}


async def load_incidents(conn: Any, incident_ids: Sequence[str]) -> builtins.list[Incident]:
    """The incidents as they are in `conn`'s open transaction (SQLAlchemy's or psycopg's own), by id,
    with the evidence attached to them: for changes made below the store."""
    if not incident_ids:
        return []
    driver = await transaction_driver(conn, "load_incidents")
    async with driver.cursor(row_factory=dict_row) as cur:
        await cur.execute(
            "select * from reporting.incidents where incident_id = any(%s) order by incident_id",
            (list(incident_ids),),
        )
        found = [_from_row(r) for r in await cur.fetchall()]
        await cur.execute(_ATTACHMENTS_SQL, ([i.incident_id for i in found],))
        return _merge_attachments(found, [tuple(r.values()) for r in await cur.fetchall()])


# --------------------------------------------------------------------------- shared with other reporting records


def incident_conditions(query: IncidentQuery) -> list[ColumnElement[bool] | TextClause]:
    """`query` as conditions on reporting.incidents (for listings that join it, too)."""
    c = incidents.c
    conditions = query_conditions(incidents, query)
    if query.content_id is not None:
        conditions.append(c.content.contains([{"content_id": query.content_id}]))
    if query.user_id is not None:
        conditions.append(c.user_id == query.user_id)
    return conditions


def query_conditions(table: Table, query: IncidentQuery) -> builtins.list[ColumnElement[bool] | TextClause]:
    """The conditions of `query` on a table with the incident's columns (incidents, feed_items).

    Content and user conditions are the incidents table's own (the feed does not carry them).
    """
    c = table.c
    conditions: builtins.list[ColumnElement[bool] | TextClause] = []
    if query.tenant_ids is not None:
        conditions.append(c.tenant_id.in_(query.tenant_ids))
    if query.departments is not None:
        conditions.append(c.route_departments.overlap(list(query.departments)))
    for n, prefixes in enumerate(query.region_prefix_sets):
        # Prefixes are digits only (validated), so LIKE needs no escaping.
        conditions.append(
            text(
                f"exists (select 1 from unnest({table.fullname}.route_regions) as r(code) "
                f"where r.code like any(cast(:region_patterns_{n} as text[])))"
            ).bindparams(**{f"region_patterns_{n}": [f"{p}%" for p in prefixes]})
        )
    if query.categories is not None:
        conditions.append(c.category.in_([x.value for x in query.categories]))
    if query.statuses is not None:
        conditions.append(c.status.in_([x.value for x in query.statuses]))
    if query.sources is not None:
        conditions.append(c.source.in_([x.value for x in query.sources]))
    if query.created_from is not None:
        conditions.append(c.create_time >= query.created_from)
    if query.created_before is not None:
        conditions.append(c.create_time < query.created_before)
    return conditions


_ATTACHMENTS_SQL = (
    "select a.incident_id, e.sha256, e.size_bytes, e.media_type from reporting.evidence_attachments a "
    "join reporting.evidence e on e.evidence_id = a.evidence_id "
    "where a.incident_id = any(%s) order by a.attach_time, a.request_id"
)


async def _with_attachments(conn: AsyncConnection, found: builtins.list[Incident]) -> builtins.list[Incident]:
    """The incidents with the evidence attached to them since (the evidence store) among their evidence refs."""
    if not found:
        return found
    a, e = evidence_attachments.c, evidence.c
    rows = await conn.execute(
        select(a.incident_id, e.sha256, e.size_bytes, e.media_type)
        .join_from(evidence_attachments, evidence, a.evidence_id == e.evidence_id)
        .where(a.incident_id.in_([i.incident_id for i in found]))
        .order_by(a.attach_time, a.request_id)
    )
    return _merge_attachments(found, [tuple(r) for r in rows])


def _merge_attachments(found: builtins.list[Incident], rows: builtins.list[tuple[Any, ...]]) -> builtins.list[Incident]:
    """`found` with the attached evidence of `rows` (incident id, sha256, size, media type) added once each."""
    attached: dict[str, builtins.list[EvidenceRef]] = {}
    for incident_id, sha256, size_bytes, media_type in rows:
        attached.setdefault(incident_id, []).append(
            EvidenceRef(sha256=sha256, size_bytes=size_bytes, media_type=media_type)
        )
    result = []
    for incident in found:
        extra = attached.get(incident.incident_id)
        if extra:
            known = {r.sha256 for r in incident.input.evidence}
            refs = [*incident.input.evidence]
            for ref in extra:
                if ref.sha256 not in known:
                    known.add(ref.sha256)
                    refs.append(ref)
            incident = replace(incident, input=replace(incident.input, evidence=tuple(refs)))
        result.append(incident)
    return result


# --------------------------------------------------------------------------- rows ⇄ domain


def _subject(incident: Incident, report: AuthorityReport) -> Subject:
    return Subject(
        event_id=report.event_id,
        tenant_id=incident.tenant_id,
        subject_id=incident.incident_id,
        department=report.destination.removeprefix("authority:"),
        region_code=incident.input.region_code,
    )


def _ack_to_json(ack: Acknowledgement) -> dict[str, Any]:
    return {
        "department": ack.department,
        "region_code": ack.region_code,
        "acknowledged_by": ack.acknowledged_by,
        "acknowledge_time": ack.acknowledge_time.isoformat(),
        "note": ack.note,
        "request_id": ack.request_id,
    }


def _ack_from_json(raw: dict[str, Any]) -> Acknowledgement:
    return Acknowledgement(
        department=raw["department"],
        region_code=raw["region_code"],
        acknowledged_by=raw["acknowledged_by"],
        acknowledge_time=datetime.fromisoformat(raw["acknowledge_time"]),
        note=raw.get("note", ""),
        request_id=raw.get("request_id", ""),
    )


def _to_row(incident: Incident) -> dict[str, Any]:
    i = incident.input
    action = i.action
    return {
        "incident_id": incident.incident_id,
        "tenant_id": incident.tenant_id,
        "external_id": i.external_id,
        "content_hash": incident.content_hash,
        "source": i.source.value if i.source else "",
        "category": i.category.value if i.category else "",
        "prohibited_type": i.prohibited_type,
        "legal_basis": [b.to_json() for b in i.legal_basis],
        "facts": i.facts,
        "content": [
            {"content_id": c.content_id, "uri": c.uri, "sha256": c.sha256, "media_type": c.media_type}
            for c in i.content
        ],
        "user_id": i.user.user_id if i.user is not None else None,
        "action_type": action.type if action is not None else None,
        "action_time": action.action_time if action is not None else None,
        "action_until_time": action.until_time if action is not None else None,
        "action_detail": action.detail if action is not None else "",
        "enforcement_action_id": action.enforcement_action_id if action is not None else "",
        "automated_detection": i.automated_detection,
        "automated_decision": i.automated_decision,
        "detect_time": i.detect_time,
        "region_code": i.region_code,
        "evidence": [{"sha256": e.sha256, "size_bytes": e.size_bytes, "media_type": e.media_type} for e in i.evidence],
        "related": [{"kind": r.kind, "id": r.id} for r in i.related],
        "route_departments": list(incident.departments),
        "route_regions": list(incident.region_codes),
        "status": incident.status.value,
        "acknowledgements": [_ack_to_json(a) for a in incident.acknowledgements],
        "create_time": incident.create_time,
        "update_time": incident.update_time,
        "ledger_entry_id": incident.ledger_entry_id,
    }


def _from_row(row: Any) -> Incident:
    tenant_id = row["tenant_id"]
    incident_input = IncidentInput(
        external_id=row["external_id"],
        tenant_id=tenant_id,
        source=IncidentSource(row["source"]),
        category=IncidentCategory(row["category"]),
        prohibited_type=row["prohibited_type"],
        legal_basis=tuple(LegalBasis.from_json(b) for b in row["legal_basis"]),
        facts=row["facts"],
        content=tuple(ContentRef(tenant_id=tenant_id, **c) for c in row["content"]),
        user=UserRef(user_id=row["user_id"], tenant_id=tenant_id) if row["user_id"] is not None else None,
        action=ActionTaken(
            type=row["action_type"],
            action_time=row["action_time"],
            until_time=row["action_until_time"],
            detail=row["action_detail"],
            enforcement_action_id=row["enforcement_action_id"],
        )
        if row["action_type"] is not None
        else None,
        automated_detection=row["automated_detection"],
        automated_decision=row["automated_decision"],
        detect_time=row["detect_time"],
        region_code=row["region_code"],
        evidence=tuple(EvidenceRef(**e) for e in row["evidence"]),
        related=tuple(RelatedRecord(**r) for r in row["related"]),
    )
    return Incident(
        incident_id=row["incident_id"],
        tenant_id=tenant_id,
        content_hash=bytes(row["content_hash"]),
        input=incident_input,
        routes=tuple(Route(d, r) for d in row["route_departments"] for r in row["route_regions"]),
        status=IncidentStatus(row["status"]),
        create_time=row["create_time"],
        update_time=row["update_time"],
        ledger_entry_id=uuid.UUID(str(row["ledger_entry_id"])),
        acknowledgements=tuple(_ack_from_json(a) for a in row["acknowledgements"]),
    )
