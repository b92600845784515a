"""The SQL evidence store on a real PostgreSQL: an attach plan is written whole
or not at all, and what concurrent writers could change under it is caught
(the same bytes stored meanwhile, a request id taken, the evidence released)."""

from __future__ import annotations

import hashlib
import uuid
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta

import pytest
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncEngine

from avgate.kernel.db import create_engine_for, sync_engine
from avgate.kernel.errors import FailedPrecondition
from avgate.kernel.legal import LegalBasis
from avgate.kernel.principal import Principal, Role
from avgate.ledger.entry import LedgerEntry
from services.reporting.evidence.crypto import SealedKey
from services.reporting.evidence.domain import (
    Attachment,
    AttachPlan,
    Evidence,
    EvidenceHold,
    PlaceHold,
    Release,
    RequestIdTaken,
    StalePlan,
    new_blob_name,
    new_evidence_id,
    new_hold_id,
)
from services.reporting.evidence.store import SqlEvidenceStore
from services.reporting.feed.writer import FeedWriter
from services.reporting.incidents.domain import IncidentCategory, IncidentInput, IncidentSource
from services.reporting.incidents.service import IncidentService
from services.reporting.incidents.store import SqlIncidentStore
from services.reporting.incidents.wire import incident_payload
from tests.conftest import Database

T0 = datetime(2026, 12, 1, 9, 0, tzinfo=UTC)
YEAR = timedelta(days=365)
OPERATOR = Principal(role=Role.OPERATOR, subject="ops-1")


@pytest.fixture(scope="module")
async def engine(database: Database) -> AsyncIterator[AsyncEngine]:
    engine = create_engine_for(database.url_for("reporting"), pool_size=2)
    yield engine
    await engine.dispose()


@pytest.fixture
def store(engine: AsyncEngine) -> SqlEvidenceStore:
    return SqlEvidenceStore(engine)


@pytest.fixture
def tenant() -> str:
    return f"t-{uuid.uuid4().hex[:12]}"


async def new_incident(engine: AsyncEngine, tenant: str) -> str:
    incident, _ = await IncidentService(SqlIncidentStore(engine, FeedWriter(incident_payload))).create(
        OPERATOR,
        IncidentInput(
            external_id=uuid.uuid4().hex,
            tenant_id=tenant,
            category=IncidentCategory.OTHER,
            source=IncidentSource.OPERATOR,
            facts="Evidence store test.",
            legal_basis=(LegalBasis("NAVIS-2019", "12"),),
        ),
    )
    return incident.incident_id


def queued(database: Database, entry_id: uuid.UUID) -> int:
    engine = sync_engine(database.admin_url)
    try:
        with engine.connect() as conn:
            return int(
                conn.execute(
                    text("select count(*) from ledger.queue where entry_id = :e"), {"e": entry_id}
                ).scalar_one()
            )
    finally:
        engine.dispose()


def plan(
    tenant: str,
    incident_id: str,
    data: bytes,
    *,
    request_id: str | None = None,
    link_to: str | None = None,
    at: datetime = T0,
) -> AttachPlan:
    entry_id = uuid.uuid4()
    evidence_id = link_to or new_evidence_id()
    attachment = Attachment(
        tenant_id=tenant,
        request_id=request_id or uuid.uuid4().hex,
        evidence_id=evidence_id,
        incident_id=incident_id,
        request_hash=b"\x00" * 32,
        attached_by="key-1",
        attach_time=at,
        ledger_entry_id=entry_id,
    )
    audit = LedgerEntry(
        action="evidence.attach",
        subject_type="evidence",
        subject_id=evidence_id,
        actor=OPERATOR,
        tenant_id=tenant,
        entry_id=entry_id,
        occurred_at=at,
    )
    new = None
    if link_to is None:
        blob = new_blob_name()
        new = Evidence(
            evidence_id=evidence_id,
            tenant_id=tenant,
            sha256=hashlib.sha256(data).hexdigest(),
            size_bytes=len(data),
            media_type="image/png",
            file_name="",
            description="",
            retain_until=at + YEAR,
            attached_by="key-1",
            create_time=at,
            blob_name=blob,
            sealed_key=SealedKey("k1", b"wrapped"),
            ledger_entry_id=entry_id,
        )
    return AttachPlan(attachment, audit, at + YEAR, new)


class TestAttachPlans:
    async def test_a_plan_is_written_with_its_attachment_and_ledger_entry(
        self, store: SqlEvidenceStore, engine: AsyncEngine, database: Database, tenant: str
    ) -> None:
        incident_id = await new_incident(engine, tenant)
        first = plan(tenant, incident_id, b"bytes")
        stored = await store.attach(first)
        assert stored.incident_ids == (incident_id,)
        assert stored.sealed_key == SealedKey("k1", b"wrapped")
        assert queued(database, first.audit.entry_id) == 1
        assert await store.find_live(tenant, stored.sha256) == stored

    async def test_the_same_bytes_stored_meanwhile_make_a_new_evidence_plan_stale(
        self, store: SqlEvidenceStore, engine: AsyncEngine, database: Database, tenant: str
    ) -> None:
        incident_id = await new_incident(engine, tenant)
        await store.attach(plan(tenant, incident_id, b"same"))
        late = plan(tenant, incident_id, b"same")
        with pytest.raises(StalePlan):
            await store.attach(late)
        assert await store.find_attachment(tenant, late.attachment.request_id) is None
        assert queued(database, late.audit.entry_id) == 0

    async def test_the_same_bytes_in_another_tenant_are_another_evidence(
        self, store: SqlEvidenceStore, engine: AsyncEngine, tenant: str
    ) -> None:
        other = f"{tenant}-b"
        mine = await store.attach(plan(tenant, await new_incident(engine, tenant), b"shared"))
        theirs = await store.attach(plan(other, await new_incident(engine, other), b"shared"))
        assert theirs.evidence_id != mine.evidence_id

    async def test_a_request_id_taken_meanwhile_is_reported_and_nothing_is_written(
        self, store: SqlEvidenceStore, engine: AsyncEngine, database: Database, tenant: str
    ) -> None:
        incident_id = await new_incident(engine, tenant)
        await store.attach(plan(tenant, incident_id, b"one", request_id="r-1"))
        again = plan(tenant, incident_id, b"two", request_id="r-1")
        with pytest.raises(RequestIdTaken):
            await store.attach(again)
        assert await store.get(again.attachment.evidence_id) is None
        assert queued(database, again.audit.entry_id) == 0

    async def test_linking_extends_the_period_and_never_shortens_it(
        self, store: SqlEvidenceStore, engine: AsyncEngine, tenant: str
    ) -> None:
        incident_id = await new_incident(engine, tenant)
        first = await store.attach(plan(tenant, incident_id, b"kept", at=T0))
        later = await store.attach(plan(tenant, incident_id, b"kept", link_to=first.evidence_id, at=T0 + YEAR))
        assert later.retain_until == T0 + 2 * YEAR
        earlier = await store.attach(plan(tenant, incident_id, b"kept", link_to=first.evidence_id, at=T0))
        assert earlier.retain_until == T0 + 2 * YEAR

    async def test_linking_to_evidence_released_meanwhile_is_stale(
        self, store: SqlEvidenceStore, engine: AsyncEngine, tenant: str
    ) -> None:
        incident_id = await new_incident(engine, tenant)
        first = await store.attach(plan(tenant, incident_id, b"gone"))
        audit = LedgerEntry(action="evidence.release", subject_type="evidence", subject_id="x", actor=OPERATOR)
        released = await store.change(first.evidence_id, lambda _: Release(T0 + 2 * YEAR, "over", "ops-1", audit))
        assert released is not None and released.sealed_key is None
        with pytest.raises(StalePlan):
            await store.attach(plan(tenant, incident_id, b"gone", link_to=first.evidence_id))


class TestChanges:
    async def test_a_decision_that_refuses_writes_nothing(
        self, store: SqlEvidenceStore, engine: AsyncEngine, database: Database, tenant: str
    ) -> None:
        stored = await store.attach(plan(tenant, await new_incident(engine, tenant), b"held"))

        def refuse(_: Evidence) -> PlaceHold:
            raise FailedPrecondition("no")

        with pytest.raises(FailedPrecondition):
            await store.change(stored.evidence_id, refuse)
        assert (await store.get(stored.evidence_id)) == stored

    async def test_a_hold_is_written_with_its_ledger_entry(
        self, store: SqlEvidenceStore, engine: AsyncEngine, database: Database, tenant: str
    ) -> None:
        stored = await store.attach(plan(tenant, await new_incident(engine, tenant), b"held"))
        hold = EvidenceHold(
            hold_id=new_hold_id(),
            evidence_id=stored.evidence_id,
            request_id="h-1",
            request_hash=b"\x01" * 32,
            reason="investigation",
            placed_by="ops-1",
            placed_by_role=Role.OPERATOR,
            create_time=T0,
            until_time=T0 + 2 * YEAR,
        )
        audit = LedgerEntry(action="evidence.hold", subject_type="evidence", subject_id="x", actor=OPERATOR)
        after = await store.change(stored.evidence_id, lambda _: PlaceHold(hold, audit))
        assert after is not None and after.holds == (hold,)
        assert queued(database, audit.entry_id) == 1

    async def test_changing_missing_evidence_is_none(self, store: SqlEvidenceStore) -> None:
        assert await store.change("evd-missing", lambda _: None) is None
