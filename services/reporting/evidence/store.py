"""Where evidence records live: a small interface and its SQL implementation.

An attach writes the evidence (or extends the live one with the same bytes),
its attachment, its ledger entry, and whatever follows from the incident
having changed, in one transaction. A hold, a lift or a release locks the
evidence row, lets the use case decide on the locked state, and writes the
change with its ledger entry in one transaction, so a hold and a release
never cross. The sealed bytes are the blob store's; nothing here touches them.
"""

from __future__ import annotations

import uuid
from collections.abc import Awaitable, Callable
from typing import Any, Protocol

import sqlalchemy.exc
from sqlalchemy import func, insert, select, update
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from avgate.kernel.db import violated_constraint
from avgate.kernel.principal import Role
from avgate.ledger.append import append as ledger_append
from avgate.ledger.entry import LedgerEntry
from services.reporting.evidence.crypto import SealedKey
from services.reporting.evidence.domain import (
    Attachment,
    AttachPlan,
    Evidence,
    EvidenceChange,
    EvidenceHold,
    LiftHold,
    LinkedIncident,
    PlaceHold,
    Release,
    RequestIdTaken,
    StalePlan,
    routes_of,
)
from services.reporting.models import evidence, evidence_attachments, evidence_holds, incidents

Decide = Callable[[Evidence], EvidenceChange | None]


class EvidenceStore(Protocol):
    async def get(self, evidence_id: str) -> Evidence | None: ...

    async def find_live(self, tenant_id: str, sha256: str) -> Evidence | None:
        """The tenant's unreleased evidence with these bytes, if any."""
        ...

    async def find_attachment(self, tenant_id: str, request_id: str) -> Attachment | None: ...

    async def attach(self, plan: AttachPlan) -> Evidence:
        """Writes the plan with its ledger entry, or nothing; returns the evidence after.

        Raises RequestIdTaken when (tenant, request id) was taken meanwhile,
        StalePlan when the plan's evidence is no longer what it assumed.
        """
        ...

    async def change(self, evidence_id: str, decide: Decide) -> Evidence | None:
        """Locks the evidence, applies what `decide` returns (with its ledger entry)
        and returns the evidence after; None when there is no such evidence.

        `decide` sees the locked evidence; what it raises rolls everything back;
        returning None changes nothing.
        """
        ...

    async def record(self, audit: LedgerEntry) -> None:
        """Writes a ledger entry alone (a read)."""
        ...


IncidentChanged = Callable[[AsyncConnection, str], Awaitable[None]]


class SqlEvidenceStore:
    def __init__(self, engine: AsyncEngine, on_incident_changed: IncidentChanged | None = None):
        self._engine = engine
        self._incident_changed = on_incident_changed

    async def get(self, evidence_id: str) -> Evidence | None:
        async with self._engine.connect() as conn:
            return await self._load(conn, evidence_id)

    async def find_live(self, tenant_id: str, sha256: str) -> Evidence | None:
        query = select(evidence.c.evidence_id).where(
            evidence.c.tenant_id == tenant_id, evidence.c.sha256 == sha256, evidence.c.release_time.is_(None)
        )
        async with self._engine.connect() as conn:
            evidence_id = (await conn.execute(query)).scalar_one_or_none()
            return await self._load(conn, evidence_id) if evidence_id is not None else None

    async def find_attachment(self, tenant_id: str, request_id: str) -> Attachment | None:
        c = evidence_attachments.c
        query = select(evidence_attachments).where(c.tenant_id == tenant_id, c.request_id == request_id)
        async with self._engine.connect() as conn:
            row = (await conn.execute(query)).mappings().first()
        return _attachment_from_row(row) if row is not None else None

    async def attach(self, plan: AttachPlan) -> Evidence:
        attachment = plan.attachment
        try:
            async with self._engine.begin() as conn:
                if plan.new_evidence is not None:
                    await conn.execute(insert(evidence).values(_evidence_row(plan.new_evidence)))
                else:
                    # The row lock also orders this attach after a concurrent release or hold.
                    extended = await conn.execute(
                        update(evidence)
                        .where(evidence.c.evidence_id == attachment.evidence_id, evidence.c.release_time.is_(None))
                        .values(retain_until=func.greatest(evidence.c.retain_until, plan.retain_until))
                        .returning(evidence.c.evidence_id)
                    )
                    if extended.first() is None:
                        raise StalePlan(f"evidence {attachment.evidence_id} was released meanwhile")
                await conn.execute(insert(evidence_attachments).values(_attachment_row(attachment)))
                await ledger_append(conn, plan.audit)
                await self._on_incident_changed(conn, attachment.incident_id)
                stored = await self._load(conn, attachment.evidence_id)
        except sqlalchemy.exc.IntegrityError as exc:
            problem = violated_constraint(exc)
            if problem == "evidence_live_tenant_sha256":
                raise StalePlan("the same bytes were stored meanwhile") from exc
            if problem == "evidence_attachments_pkey":
                raise RequestIdTaken(attachment.tenant_id, attachment.request_id) from exc
            raise
        assert stored is not None
        return stored

    async def _on_incident_changed(self, conn: AsyncConnection, incident_id: str) -> None:
        """The one place where attaching evidence changes an incident, in the attach's transaction.

        Evidence attached to an incident changes what the incident is: the
        regulator feed shows it as INCIDENT_UPDATED (the composition root
        passes SqlIncidentStore.publish_update), on `conn`, so the feed item
        commits with the attachment or not at all. The incidents table and
        its content hash stay as created: attachments live in
        evidence_attachments, and incident reads add them to the evidence refs.
        """
        if self._incident_changed is not None:
            await self._incident_changed(conn, incident_id)

    async def change(self, evidence_id: str, decide: Decide) -> Evidence | None:
        async with self._engine.begin() as conn:
            current = await self._load(conn, evidence_id, lock=True)
            if current is None:
                return None
            change = decide(current)
            if change is None:
                return current
            if isinstance(change, PlaceHold):
                await conn.execute(insert(evidence_holds).values(_hold_row(change.hold)))
            elif isinstance(change, LiftHold):
                await conn.execute(
                    update(evidence_holds)
                    .where(evidence_holds.c.hold_id == change.hold_id, evidence_holds.c.evidence_id == evidence_id)
                    .values(lift_time=change.lift_time, lift_reason=change.reason, lifted_by=change.lifted_by)
                )
            elif isinstance(change, Release):
                # Crypto-shredding: with the wrapped data key gone, no copy of the object opens again.
                await conn.execute(
                    update(evidence)
                    .where(evidence.c.evidence_id == evidence_id)
                    .values(
                        release_time=change.release_time,
                        release_reason=change.reason,
                        released_by=change.released_by,
                        kek_id=None,
                        wrapped_key=None,
                    )
                )
            await ledger_append(conn, change.audit)
            return await self._load(conn, evidence_id)

    async def record(self, audit: LedgerEntry) -> None:
        async with self._engine.begin() as conn:
            await ledger_append(conn, audit)

    @staticmethod
    async def _load(conn: AsyncConnection, evidence_id: str, *, lock: bool = False) -> Evidence | None:
        query = select(evidence).where(evidence.c.evidence_id == evidence_id)
        if lock:
            query = query.with_for_update()
        row = (await conn.execute(query)).mappings().first()
        if row is None:
            return None
        a = evidence_attachments.c
        first_attached = func.min(a.attach_time)
        linked = await conn.execute(
            select(a.incident_id, incidents.c.route_departments, incidents.c.route_regions)
            .join(incidents, incidents.c.incident_id == a.incident_id)
            .where(a.evidence_id == evidence_id)
            .group_by(a.incident_id, incidents.c.route_departments, incidents.c.route_regions)
            .order_by(first_attached, a.incident_id)
        )
        holds = await conn.execute(
            select(evidence_holds)
            .where(evidence_holds.c.evidence_id == evidence_id)
            .order_by(evidence_holds.c.create_time, evidence_holds.c.hold_id)
        )
        return _evidence_from_row(
            row,
            tuple(LinkedIncident(r.incident_id, routes_of(r.route_departments, r.route_regions)) for r in linked.all()),
            tuple(_hold_from_row(h) for h in holds.mappings().all()),
        )


# --------------------------------------------------------------------------- rows ⇄ domain


def _evidence_row(e: Evidence) -> dict[str, Any]:
    return {
        "evidence_id": e.evidence_id,
        "tenant_id": e.tenant_id,
        "sha256": e.sha256,
        "size_bytes": e.size_bytes,
        "media_type": e.media_type,
        "file_name": e.file_name,
        "description": e.description,
        "blob_name": e.blob_name,
        "kek_id": e.sealed_key.kek_id if e.sealed_key is not None else None,
        "wrapped_key": e.sealed_key.wrapped if e.sealed_key is not None else None,
        "retain_until": e.retain_until,
        "attached_by": e.attached_by,
        "create_time": e.create_time,
        "ledger_entry_id": e.ledger_entry_id,
        "release_time": e.release_time,
        "release_reason": e.release_reason,
        "released_by": e.released_by,
    }


def _evidence_from_row(row: Any, linked: tuple[LinkedIncident, ...], holds: tuple[EvidenceHold, ...]) -> Evidence:
    sealed = None
    if row["wrapped_key"] is not None:
        sealed = SealedKey(row["kek_id"], bytes(row["wrapped_key"]))
    return Evidence(
        evidence_id=row["evidence_id"],
        tenant_id=row["tenant_id"],
        sha256=row["sha256"],
        size_bytes=row["size_bytes"],
        media_type=row["media_type"],
        file_name=row["file_name"],
        description=row["description"],
        retain_until=row["retain_until"],
        attached_by=row["attached_by"],
        create_time=row["create_time"],
        blob_name=row["blob_name"],
        sealed_key=sealed,
        ledger_entry_id=uuid.UUID(str(row["ledger_entry_id"])),
        incidents=linked,
        holds=holds,
        release_time=row["release_time"],
        release_reason=row["release_reason"],
        released_by=row["released_by"],
    )


def _attachment_row(a: Attachment) -> dict[str, Any]:
    return {
        "tenant_id": a.tenant_id,
        "request_id": a.request_id,
        "evidence_id": a.evidence_id,
        "incident_id": a.incident_id,
        "request_hash": a.request_hash,
        "attached_by": a.attached_by,
        "attach_time": a.attach_time,
        "ledger_entry_id": a.ledger_entry_id,
    }


def _attachment_from_row(row: Any) -> Attachment:
    return Attachment(
        tenant_id=row["tenant_id"],
        request_id=row["request_id"],
        evidence_id=row["evidence_id"],
        incident_id=row["incident_id"],
        request_hash=bytes(row["request_hash"]),
        attached_by=row["attached_by"],
        attach_time=row["attach_time"],
        ledger_entry_id=uuid.UUID(str(row["ledger_entry_id"])),
    )


def _hold_row(h: EvidenceHold) -> dict[str, Any]:
    return {
        "hold_id": h.hold_id,
        "evidence_id": h.evidence_id,
        "request_id": h.request_id,
        "request_hash": h.request_hash,
        "reason": h.reason,
        "placed_by": h.placed_by,
        "placed_by_role": h.placed_by_role.value,
        "create_time": h.create_time,
        "until_time": h.until_time,
        "lift_time": h.lift_time,
        "lift_reason": h.lift_reason,
        "lifted_by": h.lifted_by,
    }


def _hold_from_row(row: Any) -> EvidenceHold:
    return EvidenceHold(
        hold_id=row["hold_id"],
        evidence_id=row["evidence_id"],
        request_id=row["request_id"],
        request_hash=bytes(row["request_hash"]),
        reason=row["reason"],
        placed_by=row["placed_by"],
        placed_by_role=Role(row["placed_by_role"]),
        create_time=row["create_time"],
        until_time=row["until_time"],
        lift_time=row["lift_time"],
        lift_reason=row["lift_reason"],
        lifted_by=row["lifted_by"],
    )
