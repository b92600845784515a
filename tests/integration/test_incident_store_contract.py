"""The incident store contract: the in-memory fake the unit tests use and the
SQL store reporting runs on must behave alike.

Both run against one module database, so every test works in tenants of its
own and looks only at them.
"""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator
from dataclasses import replace
from datetime import UTC, datetime, timedelta

import pytest
from sqlalchemy.ext.asyncio import AsyncEngine

from avgate.kernel.db import create_engine_for
from avgate.kernel.legal import LegalBasis
from avgate.kernel.principal import Principal, Role
from avgate.ledger.entry import LedgerEntry
from services.reporting.domain import EvidenceRef, Route
from services.reporting.feed.writer import FeedWriter
from services.reporting.incidents.domain import (
    Acknowledgement,
    ActionTaken,
    AuthorityReport,
    ContentRef,
    ExternalIdTaken,
    Incident,
    IncidentCategory,
    IncidentInput,
    IncidentQuery,
    IncidentSource,
    IncidentStatus,
    NewIncident,
    RelatedRecord,
    UserRef,
    content_hash,
    new_incident_id,
)
from services.reporting.incidents.store import IncidentStore, InMemoryIncidentStore, SqlIncidentStore
from services.reporting.incidents.wire import incident_payload
from tests.conftest import Database

T0 = datetime(2026, 12, 1, 9, 0, tzinfo=UTC)
OPERATOR = Principal(role=Role.OPERATOR, subject="ops-1")


@pytest.fixture(scope="module")
async def engine(database: Database) -> AsyncIterator[AsyncEngine]:
    engine = create_engine_for(database.url_for("reporting"), pool_size=2)
    yield engine
    await engine.dispose()


@pytest.fixture(params=["memory", pytest.param("postgres", marks=pytest.mark.db)])
def store(request: pytest.FixtureRequest) -> IncidentStore:
    if request.param == "memory":
        return InMemoryIncidentStore()
    return SqlIncidentStore(request.getfixturevalue("engine"), FeedWriter(incident_payload))


@pytest.fixture
def tenant() -> str:
    return f"t-{uuid.uuid4().hex[:12]}"


def new(
    tenant: str,
    external_id: str = "ext-1",
    *,
    created: datetime = T0,
    departments: tuple[str, ...] = ("cyberspace",),
    region: str = "110105",
    **changes: object,
) -> NewIncident:
    given = IncidentInput(
        external_id=external_id,
        tenant_id=tenant,
        category=IncidentCategory.ENFORCEMENT_ACTION,
        source=IncidentSource.IDENTITY,
        facts="Account warned for repeated violations.",
        legal_basis=(LegalBasis("NAVIS-2019", "14", "1", "warning"),),
        content=(ContentRef(content_id="c-1", tenant_id=tenant, uri="https://x/c-1", sha256="cd" * 32),),
        user=UserRef(user_id="u-1", tenant_id=tenant),
        action=ActionTaken(type="warning", action_time=T0, until_time=T0 + timedelta(days=1), detail="first"),
        automated_detection=True,
        detect_time=T0 - timedelta(hours=1),
        region_code=region,
        evidence=(EvidenceRef(sha256="ef" * 32, size_bytes=10, media_type="video/mp4"),),
        related=(RelatedRecord(kind="complaint", id="cmp-1"),),
    )
    given = replace(given, **changes)  # type: ignore[arg-type]
    incident = Incident(
        incident_id=new_incident_id(),
        tenant_id=tenant,
        content_hash=content_hash(given, tenant),
        input=given,
        routes=tuple(Route(d, region) for d in departments),
        status=IncidentStatus.RECORDED,
        create_time=created,
        update_time=created,
        ledger_entry_id=uuid.uuid4(),
    )
    audit = LedgerEntry(
        action="incident.test",
        subject_type="incident",
        subject_id=incident.incident_id,
        actor=OPERATOR,
        tenant_id=tenant,
        entry_id=incident.ledger_entry_id,
    )
    reports = tuple(AuthorityReport(uuid.uuid4(), f"authority:{d}", b"{}") for d in departments)
    return NewIncident(incident, audit, reports)


def audit(incident_id: str) -> LedgerEntry:
    return LedgerEntry(action="incident.test", subject_type="incident", subject_id=incident_id, actor=OPERATOR)


class TestAddingAndGetting:
    async def test_an_added_incident_reads_back_equal(self, store: IncidentStore, tenant: str) -> None:
        item = new(tenant)
        await store.add([item])
        assert await store.get(item.incident.incident_id) == item.incident

    async def test_unknown_id_is_none(self, store: IncidentStore) -> None:
        assert await store.get("inc-missing") is None

    async def test_found_by_external_id_within_the_tenant_only(self, store: IncidentStore, tenant: str) -> None:
        item = new(tenant)
        await store.add([item])
        assert await store.find_by_external_ids(tenant, ["ext-1", "ext-2"]) == {"ext-1": item.incident}
        assert await store.find_by_external_ids(f"{tenant}-x", ["ext-1"]) == {}

    async def test_a_taken_external_id_fails_the_whole_batch(self, store: IncidentStore, tenant: str) -> None:
        await store.add([new(tenant, "ext-1")])
        fresh = new(tenant, "ext-2")
        with pytest.raises(ExternalIdTaken):
            await store.add([fresh, new(tenant, "ext-1")])
        assert await store.get(fresh.incident.incident_id) is None


class TestListing:
    async def test_newest_first_with_a_cursor(self, store: IncidentStore, tenant: str) -> None:
        items = [new(tenant, f"e{i}", created=T0 + timedelta(minutes=i)) for i in range(4)]
        await store.add(items)
        query = IncidentQuery(tenant_ids=(tenant,))
        first = await store.list(query, after=None, limit=2)
        assert [i.external_id for i in first] == ["e3", "e2"]
        rest = await store.list(query, after=(first[-1].create_time, first[-1].incident_id), limit=10)
        assert [i.external_id for i in rest] == ["e1", "e0"]

    @pytest.mark.parametrize(
        ("query", "expected"),
        [
            (IncidentQuery(departments=("culture_tourism",)), {"bj-culture"}),
            (IncidentQuery(region_prefix_sets=(("11",),)), {"bj-cyber", "bj-culture"}),
            (IncidentQuery(region_prefix_sets=(("3101",),)), {"sh-cyber"}),
            (IncidentQuery(departments=("cyberspace",), region_prefix_sets=(("11", "31"), ("31",))), {"sh-cyber"}),
            (IncidentQuery(content_id="c-1"), {"bj-cyber", "bj-culture", "sh-cyber"}),
            (IncidentQuery(content_id="nope"), set()),
            (IncidentQuery(user_id="u-1", sources=(IncidentSource.IDENTITY,)), {"bj-cyber", "bj-culture", "sh-cyber"}),
            (IncidentQuery(categories=(IncidentCategory.RUMOR,)), set()),
            (
                IncidentQuery(statuses=(IncidentStatus.RECORDED,), created_before=T0 + timedelta(minutes=1)),
                {"bj-cyber"},
            ),
        ],
        ids=[
            "department",
            "province",
            "city",
            "department-and-two-region-sets",
            "content",
            "no-content",
            "user-source",
            "category",
            "status-time",
        ],
    )
    async def test_filters(self, store: IncidentStore, tenant: str, query: IncidentQuery, expected: set[str]) -> None:
        await store.add(
            [
                new(tenant, "bj-cyber", created=T0),
                new(tenant, "bj-culture", created=T0 + timedelta(minutes=1), departments=("culture_tourism",)),
                new(tenant, "sh-cyber", created=T0 + timedelta(minutes=2), region="310101"),
            ]
        )
        listed = await store.list(replace(query, tenant_ids=(tenant,)), after=None, limit=10)
        assert {i.external_id for i in listed} == expected


class TestAcknowledging:
    async def test_an_acknowledgement_is_kept_once_per_request_id(self, store: IncidentStore, tenant: str) -> None:
        item = new(tenant)
        await store.add([item])
        ack = Acknowledgement("cyberspace", "110000", "reg-1", T0 + timedelta(hours=1), "seen", "r-1")
        first = await store.acknowledge(item.incident.incident_id, ack, audit(item.incident.incident_id))
        again = await store.acknowledge(
            item.incident.incident_id, replace(ack, note="twice"), audit(item.incident.incident_id)
        )
        assert first is not None and first.status is IncidentStatus.ACKNOWLEDGED
        assert first.acknowledgements == (ack,) and again == first
        assert await store.get(item.incident.incident_id) == first

    async def test_acknowledging_a_missing_incident_is_none(self, store: IncidentStore) -> None:
        ack = Acknowledgement("cyberspace", "110000", "reg-1", T0)
        assert await store.acknowledge("inc-missing", ack, audit("inc-missing")) is None
