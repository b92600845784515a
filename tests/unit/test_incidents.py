"""Incident rules, against the in-memory store: idempotency, validation,
batches, tenancy, regulator scope, routing and what each change records."""

from __future__ import annotations

import json
from dataclasses import replace
from datetime import UTC, datetime, timedelta

import pytest

from avgate.kernel.errors import IdempotencyConflict, InvalidArgument, NotFound, PermissionDenied
from avgate.kernel.legal import LegalBasis
from avgate.kernel.principal import Principal, RegulatorScope, Role
from services.reporting.incidents.domain import (
    ContentRef,
    IncidentCategory,
    IncidentFilter,
    IncidentInput,
    IncidentQuery,
    IncidentSource,
    IncidentStatus,
    RoutingRules,
    UserRef,
)
from services.reporting.incidents.service import IncidentService
from services.reporting.incidents.store import InMemoryIncidentStore
from tests.support import FakeClock

T0 = datetime(2026, 12, 1, 9, 0, tzinfo=UTC)
PROVIDER_A = Principal(role=Role.PROVIDER, subject="key-a", tenant_id="tenant-a")
PROVIDER_B = Principal(role=Role.PROVIDER, subject="key-b", tenant_id="tenant-b")
OPERATOR = Principal(role=Role.OPERATOR, subject="ops")
SCREENING_FOR_A = Principal(role=Role.SERVICE, subject="screening", origin=PROVIDER_A)


def regulator(departments: tuple[str, ...], regions: tuple[str, ...], subject: str = "reg-1") -> Principal:
    return Principal(role=Role.REGULATOR, subject=subject, regulator_scope=RegulatorScope(departments, regions))


def incident(external_id: str = "ext-1", **changes: object) -> IncidentInput:
    base = IncidentInput(
        external_id=external_id,
        category=IncidentCategory.PROHIBITED_CONTENT,
        prohibited_type="violence",
        source=IncidentSource.SCREENING,
        facts="Video showed graphic violence; transmission stopped.",
        legal_basis=(LegalBasis("NAVIS-2019", "9"),),
        content=(ContentRef(content_id="v-1", sha256="ab" * 32),),
        region_code="110105",
    )
    return replace(base, **changes)  # type: ignore[arg-type]


@pytest.fixture
def store() -> InMemoryIncidentStore:
    return InMemoryIncidentStore()


@pytest.fixture
def service(store: InMemoryIncidentStore) -> IncidentService:
    return IncidentService(store, RoutingRules(), clock=FakeClock(T0, tick=timedelta(seconds=1)))


def fields(error: InvalidArgument) -> set[str]:
    return {v.field for v in error.violations}


class TestCreatingIncidents:
    async def test_a_provider_creates_for_its_own_tenant(self, service: IncidentService) -> None:
        created, is_new = await service.create(PROVIDER_A, incident())
        assert is_new
        assert created.tenant_id == "tenant-a"
        assert created.status is IncidentStatus.RECORDED
        assert created.input.content[0].tenant_id == "tenant-a"

    async def test_a_service_acts_for_its_origins_tenant(self, service: IncidentService) -> None:
        created, _ = await service.create(SCREENING_FOR_A, incident())
        assert created.tenant_id == "tenant-a"

    async def test_resubmitting_the_same_content_returns_the_first(
        self, service: IncidentService, store: InMemoryIncidentStore
    ) -> None:
        first, _ = await service.create(PROVIDER_A, incident())
        again, is_new = await service.create(PROVIDER_A, incident(tenant_id="tenant-a"))
        assert not is_new
        assert again == first
        assert len(store.ledger) == 1

    async def test_same_id_with_other_content_is_a_conflict(
        self, service: IncidentService, store: InMemoryIncidentStore
    ) -> None:
        await service.create(PROVIDER_A, incident())
        with pytest.raises(IdempotencyConflict) as conflict:
            await service.create(PROVIDER_A, incident(facts="Something else entirely."))
        assert conflict.value.reason == "ERROR_REASON_IDEMPOTENCY_CONFLICT"
        assert len(store.ledger) == 1

    async def test_the_same_external_id_in_two_tenants_is_two_incidents(self, service: IncidentService) -> None:
        a, _ = await service.create(PROVIDER_A, incident())
        b, created = await service.create(PROVIDER_B, incident())
        assert created and a.incident_id != b.incident_id

    async def test_bad_input_names_every_field_and_stores_nothing(
        self, service: IncidentService, store: InMemoryIncidentStore
    ) -> None:
        bad = incident(
            external_id="",
            category=None,
            prohibited_type="violence",
            facts="",
            legal_basis=(),
            region_code="11",
            tenant_id="tenant-b",
            content=(ContentRef(content_id="v", sha256="XYZ"),),
        )
        with pytest.raises(InvalidArgument) as refused:
            await service.create(PROVIDER_A, bad)
        assert fields(refused.value) == {
            "incident.external_id",
            "incident.category",
            "incident.prohibited_type",
            "incident.facts",
            "incident.legal_basis",
            "incident.region_code",
            "incident.tenant_id",
            "incident.content[0].sha256",
        }
        assert store.ledger == [] and store.outbox == []
        assert await store.list(IncidentQuery(), after=None, limit=10) == []

    @pytest.mark.parametrize(
        "changes",
        [
            {"facts": "Uploader 110101199003071234 posted it."},
            {"facts": "Call 13812345678 for more."},
            {"user": UserRef(user_id="13812345678")},
        ],
        ids=["resident-id-in-facts", "mobile-in-facts", "mobile-as-user-id"],
    )
    async def test_personal_data_in_clear_is_refused(self, service: IncidentService, changes: dict) -> None:  # type: ignore[type-arg]
        with pytest.raises(InvalidArgument) as refused:
            await service.create(PROVIDER_A, incident(**changes))
        assert any("ID or mobile" in v.description for v in refused.value.violations)

    async def test_regulators_cannot_create(self, service: IncidentService) -> None:
        with pytest.raises(PermissionDenied):
            await service.create(regulator(("cyberspace",), ("000000",)), incident())

    async def test_an_operator_must_name_the_tenant(self, service: IncidentService) -> None:
        with pytest.raises(InvalidArgument) as refused:
            await service.create(OPERATOR, incident())
        assert fields(refused.value) == {"incident.tenant_id"}
        created, _ = await service.create(OPERATOR, incident(tenant_id="tenant-c"))
        assert created.tenant_id == "tenant-c"


class TestRoutingAndRecords:
    @pytest.mark.parametrize(
        ("category", "departments"),
        [
            (IncidentCategory.PROHIBITED_CONTENT, ("cyberspace", "radio_television")),
            (IncidentCategory.UNMARKED_SYNTHETIC_CONTENT, ("cyberspace",)),
            (IncidentCategory.RUMOR, ("cyberspace",)),
            (IncidentCategory.ENFORCEMENT_ACTION, ("cyberspace", "culture_tourism")),
            (IncidentCategory.COMPLAINT_ESCALATION, ("cyberspace",)),
        ],
        ids=["prohibited", "unmarked-synthetic", "rumor", "enforcement", "complaint"],
    )
    async def test_default_routes(
        self, service: IncidentService, category: IncidentCategory, departments: tuple[str, ...]
    ) -> None:
        prohibited = "violence" if category is IncidentCategory.PROHIBITED_CONTENT else None
        created, _ = await service.create(PROVIDER_A, incident(category=category, prohibited_type=prohibited))
        assert created.departments == departments
        assert created.region_codes == ("110105",)

    async def test_without_a_region_the_incident_goes_national(self, service: IncidentService) -> None:
        created, _ = await service.create(PROVIDER_A, incident(region_code=""))
        assert created.region_codes == ("000000",)

    async def test_routing_rules_are_configurable(self, store: InMemoryIncidentStore) -> None:
        rules = RoutingRules.with_overrides({"prohibited_content": ["public_security"]})
        created, _ = await IncidentService(store, rules).create(PROVIDER_A, incident())
        assert created.departments == ("public_security",)

    async def test_creation_writes_a_ledger_entry_and_one_report_per_department(
        self, service: IncidentService, store: InMemoryIncidentStore
    ) -> None:
        created, _ = await service.create(PROVIDER_A, incident())
        (entry,) = store.ledger
        assert entry.action == "incident.create" and entry.subject_id == created.incident_id
        assert entry.entry_id == created.ledger_entry_id
        assert {e.destination for e in store.outbox} == {"authority:cyberspace", "authority:radio_television"}
        report = json.loads(store.outbox[0].payload)
        assert report["incident_id"] == created.incident_id and report["facts"] == created.input.facts


class TestBatches:
    async def test_all_valid_items_are_applied(self, service: IncidentService, store: InMemoryIncidentStore) -> None:
        await service.create(PROVIDER_A, incident("ext-0"))
        outcome = await service.batch_create(PROVIDER_A, [incident("ext-0"), incident("ext-1"), incident("ext-2")])
        assert outcome.applied
        assert [r.created for r in outcome.results] == [False, True, True]
        assert len(store.ledger) == 3

    async def test_one_bad_item_applies_nothing_and_says_which(
        self, service: IncidentService, store: InMemoryIncidentStore
    ) -> None:
        await service.create(PROVIDER_A, incident("ext-0"))
        outcome = await service.batch_create(
            PROVIDER_A, [incident("ext-1"), incident("ext-2", facts=""), incident("ext-0", facts="changed")]
        )
        assert not outcome.applied
        first, second, third = outcome.results
        assert first.incident is None and first.error is None  # valid, aborted
        assert isinstance(second.error, InvalidArgument) and fields(second.error) == {"incidents[1].facts"}
        assert isinstance(third.error, IdempotencyConflict)
        assert len(store.ledger) == 1 and len(await store.find_by_external_ids("tenant-a", ["ext-1"])) == 0

    @pytest.mark.parametrize("size", [0, 101], ids=["empty", "over-100"])
    async def test_batch_size_is_1_to_100(self, service: IncidentService, size: int) -> None:
        with pytest.raises(InvalidArgument) as refused:
            await service.batch_create(PROVIDER_A, [incident(f"e{i}") for i in range(size)])
        assert fields(refused.value) == {"incidents"}


class TestWhoSeesWhat:
    async def test_another_tenant_gets_not_found(self, service: IncidentService) -> None:
        created, _ = await service.create(PROVIDER_A, incident())
        with pytest.raises(NotFound):
            await service.get(PROVIDER_B, created.incident_id)
        listed, _ = await service.list(PROVIDER_B, IncidentFilter(), page_size=10, page_token="")
        assert listed == []

    @pytest.mark.parametrize(
        ("departments", "regions", "visible"),
        [
            (("cyberspace",), ("110105",), True),
            (("cyberspace",), ("110000",), True),
            (("cyberspace",), ("000000",), True),
            (("radio_television",), ("110100",), True),
            (("culture_tourism",), ("000000",), False),
            (("cyberspace",), ("310000",), False),
        ],
        ids=["same-district", "province", "national", "city-other-department", "unrouted-department", "other-region"],
    )
    async def test_regulator_scope(
        self,
        service: IncidentService,
        store: InMemoryIncidentStore,
        departments: tuple[str, ...],
        regions: tuple[str, ...],
        visible: bool,
    ) -> None:
        created, _ = await service.create(PROVIDER_A, incident())
        reg = regulator(departments, regions)
        listed, _ = await service.list(reg, IncidentFilter(), page_size=10, page_token="")
        assert [i.incident_id for i in listed] == ([created.incident_id] if visible else [])
        if visible:
            assert (await service.get(reg, created.incident_id)).incident_id == created.incident_id
            assert store.ledger[-1].action == "incident.read"
        else:
            with pytest.raises(NotFound):
                await service.get(reg, created.incident_id)

    async def test_pages_run_newest_first_without_overlap(self, service: IncidentService) -> None:
        ids = [(await service.create(PROVIDER_A, incident(f"e{i}")))[0].incident_id for i in range(5)]
        page, token = await service.list(PROVIDER_A, IncidentFilter(), page_size=2, page_token="")
        seen = [i.incident_id for i in page]
        while token:
            page, token = await service.list(PROVIDER_A, IncidentFilter(), page_size=2, page_token=token)
            seen += [i.incident_id for i in page]
        assert seen == list(reversed(ids))


class TestAcknowledging:
    async def test_an_in_scope_regulator_acknowledges_once_per_request_id(
        self, service: IncidentService, store: InMemoryIncidentStore
    ) -> None:
        created, _ = await service.create(PROVIDER_A, incident())
        reg = regulator(("radio_television",), ("110000",))
        acked = await service.acknowledge(reg, created.incident_id, note="received", request_id="r-1")
        again = await service.acknowledge(reg, created.incident_id, note="received", request_id="r-1")
        assert acked.status is IncidentStatus.ACKNOWLEDGED
        assert again.acknowledgements == acked.acknowledgements
        (ack,) = acked.acknowledgements
        assert (ack.department, ack.region_code, ack.acknowledged_by) == ("radio_television", "110000", "reg-1")
        assert [e.action for e in store.ledger] == ["incident.create", "incident.acknowledge"]

    async def test_out_of_scope_regulator_gets_not_found(self, service: IncidentService) -> None:
        created, _ = await service.create(PROVIDER_A, incident())
        with pytest.raises(NotFound):
            await service.acknowledge(
                regulator(("cyberspace",), ("310000",)), created.incident_id, note="", request_id=""
            )

    async def test_providers_cannot_acknowledge(self, service: IncidentService) -> None:
        created, _ = await service.create(PROVIDER_A, incident())
        with pytest.raises(PermissionDenied):
            await service.acknowledge(PROVIDER_A, created.incident_id, note="", request_id="")
