"""IncidentService on the real reporting server, on a real socket, with
gateway-signed principal tokens and a real PostgreSQL."""

from __future__ import annotations

import json
import pathlib
import uuid
from collections.abc import AsyncIterator

import grpc
import pytest
from google.rpc import code_pb2, error_details_pb2

from avgate.common.v1 import common_pb2
from avgate.kernel.principal import Principal
from avgate.reporting.v1 import reporting_pb2, reporting_pb2_grpc
from services.reporting.__main__ import compose
from services.reporting.config import ReportingSettings
from tests.conftest import Database
from tests.support import (
    details,
    incident_input,
    provider,
    regulator,
    serve,
    signer,
    stored_rows,
    unpack,
)
from tests.support.reporting import Reporting, create


@pytest.fixture(scope="module")
async def reporting(database: Database, keys_dir: pathlib.Path) -> AsyncIterator[Reporting]:
    settings = ReportingSettings(
        trusted_keys_dir=keys_dir,  # type: ignore[call-arg]
        generate_keys=False,  # type: ignore[call-arg]
        metrics_port=-1,
        grpc_port=0,
        database_url=database.url_for("reporting"),
        sequencer_enabled=False,
        dispatcher_enabled=False,  # these tests read the reports pending in the outbox
    )
    async with serve(await compose(settings)) as served:
        yield Reporting(reporting_pb2_grpc.IncidentServiceStub(served.channel), signer(keys_dir), database)


@pytest.fixture
def tenant() -> str:
    return f"t-{uuid.uuid4().hex[:12]}"


class TestCreating:
    async def test_created_incident_can_be_read_back(self, reporting: Reporting, tenant: str) -> None:
        created = await create(reporting, tenant, incident_input())
        assert created.created
        got = await reporting.stub.GetIncident(
            reporting_pb2.GetIncidentRequest(incident_id=created.incident.incident_id),
            metadata=reporting.auth(provider(tenant), "GetIncident"),
        )
        assert got.incident == created.incident
        assert got.incident.tenant_id == tenant
        assert got.incident.status == reporting_pb2.INCIDENT_STATUS_RECORDED
        assert {r.department for r in got.incident.routes} == {
            common_pb2.DEPARTMENT_CYBERSPACE,
            common_pb2.DEPARTMENT_RADIO_TELEVISION,
        }

    async def test_resubmitting_returns_the_first(self, reporting: Reporting, tenant: str) -> None:
        first = await create(reporting, tenant, incident_input())
        again = await create(reporting, tenant, incident_input())
        assert not again.created
        assert again.incident == first.incident

    async def test_conflicting_resubmission_is_already_exists(self, reporting: Reporting, tenant: str) -> None:
        await create(reporting, tenant, incident_input())
        with pytest.raises(grpc.aio.AioRpcError) as refused:
            await create(reporting, tenant, incident_input(facts="Different facts."))
        assert refused.value.code() is grpc.StatusCode.ALREADY_EXISTS
        (info,) = details(refused.value, error_details_pb2.ErrorInfo)
        assert info.reason == "ERROR_REASON_IDEMPOTENCY_CONFLICT"

    async def test_invalid_input_names_the_fields_and_stores_nothing(self, reporting: Reporting, tenant: str) -> None:
        before = stored_rows(reporting.database.admin_url, tenant)
        with pytest.raises(grpc.aio.AioRpcError) as refused:
            await create(
                reporting,
                tenant,
                incident_input(facts="", region_code="11", category=reporting_pb2.INCIDENT_CATEGORY_RUMOR),
            )
        assert refused.value.code() is grpc.StatusCode.INVALID_ARGUMENT
        (bad,) = details(refused.value, error_details_pb2.BadRequest)
        assert {v.field for v in bad.field_violations} == {
            "incident.facts",
            "incident.region_code",
            "incident.prohibited_type",
        }
        assert stored_rows(reporting.database.admin_url, tenant) == before

    async def test_creation_queues_a_ledger_entry_and_outbox_reports_with_the_incident(
        self, reporting: Reporting, tenant: str
    ) -> None:
        created = (await create(reporting, tenant, incident_input())).incident
        (entry,) = reporting.sql(
            "select payload from ledger.queue where entry_id = cast(:e as uuid)", e=created.ledger_entry_id
        )
        recorded = json.loads(bytes(entry.payload))
        assert recorded["action"] == "incident.create"
        assert recorded["subject"] == {"type": "incident", "id": created.incident_id}
        assert recorded["tenant"] == tenant
        rows = reporting.sql(
            "select destination, payload, state from reporting.outbox "
            "where convert_from(payload, 'UTF8')::jsonb ->> 'incident_id' = :i",
            i=created.incident_id,
        )
        assert {r.destination for r in rows} == {"authority:cyberspace", "authority:radio_television"}
        assert {r.state for r in rows} == {"pending"}
        assert json.loads(bytes(rows[0].payload))["ledger_entry_id"] == created.ledger_entry_id


class TestBatches:
    async def test_a_valid_batch_is_applied(self, reporting: Reporting, tenant: str) -> None:
        reply = await reporting.stub.BatchCreateIncidents(
            reporting_pb2.BatchCreateIncidentsRequest(incidents=[incident_input("b-1"), incident_input("b-2")]),
            metadata=reporting.auth(provider(tenant), "BatchCreateIncidents"),
        )
        assert reply.applied
        assert [r.created for r in reply.results] == [True, True]
        assert [r.incident.external_id for r in reply.results] == ["b-1", "b-2"]

    async def test_one_bad_item_applies_nothing_with_per_item_errors(self, reporting: Reporting, tenant: str) -> None:
        await create(reporting, tenant, incident_input("b-0"))
        before = stored_rows(reporting.database.admin_url, tenant)
        reply = await reporting.stub.BatchCreateIncidents(
            reporting_pb2.BatchCreateIncidentsRequest(
                incidents=[incident_input("b-1"), incident_input("b-2", facts=""), incident_input("b-0", facts="x")]
            ),
            metadata=reporting.auth(provider(tenant), "BatchCreateIncidents"),
        )
        assert not reply.applied
        aborted, invalid, conflict = reply.results
        assert aborted.WhichOneof("result") == "error" and aborted.error.code == code_pb2.ABORTED
        assert invalid.error.code == code_pb2.INVALID_ARGUMENT
        (bad,) = unpack(invalid.error.details, error_details_pb2.BadRequest)
        assert [v.field for v in bad.field_violations] == ["incidents[1].facts"]
        assert conflict.error.code == code_pb2.ALREADY_EXISTS
        (info,) = unpack(conflict.error.details, error_details_pb2.ErrorInfo)
        assert info.reason == "ERROR_REASON_IDEMPOTENCY_CONFLICT"
        stored = reporting.sql("select external_id from reporting.incidents where tenant_id = :t", t=tenant)
        assert [r.external_id for r in stored] == ["b-0"]
        assert stored_rows(reporting.database.admin_url, tenant) == before


class TestVisibility:
    async def test_another_tenant_gets_not_found(self, reporting: Reporting, tenant: str) -> None:
        created = await create(reporting, tenant, incident_input())
        with pytest.raises(grpc.aio.AioRpcError) as refused:
            await reporting.stub.GetIncident(
                reporting_pb2.GetIncidentRequest(incident_id=created.incident.incident_id),
                metadata=reporting.auth(provider(f"{tenant}-other"), "GetIncident"),
            )
        assert refused.value.code() is grpc.StatusCode.NOT_FOUND

    async def test_regulators_list_only_what_their_scope_covers(self, reporting: Reporting, tenant: str) -> None:
        beijing = (await create(reporting, tenant, incident_input("bj", region_code="110105"))).incident
        shanghai = (await create(reporting, tenant, incident_input("sh", region_code="310101"))).incident
        rumor = (
            await create(
                reporting,
                tenant,
                incident_input(
                    "rumor-bj",
                    category=reporting_pb2.INCIDENT_CATEGORY_RUMOR,
                    prohibited_type=0,
                    region_code="110101",
                ),
            )
        ).incident
        request = reporting_pb2.ListIncidentsRequest(filter=reporting_pb2.IncidentFilter(tenant_ids=[tenant]))

        async def visible_to(scope: Principal) -> set[str]:
            reply = await reporting.stub.ListIncidents(request, metadata=reporting.auth(scope, "ListIncidents"))
            return {i.incident_id for i in reply.incidents}

        assert await visible_to(regulator(("radio_television",), ("110000",))) == {beijing.incident_id}
        assert await visible_to(regulator(("cyberspace",), ("110000",))) == {beijing.incident_id, rumor.incident_id}
        assert await visible_to(regulator(("cyberspace",), ("000000",))) == {
            beijing.incident_id,
            shanghai.incident_id,
            rumor.incident_id,
        }
        assert await visible_to(regulator(("culture_tourism",), ("000000",))) == set()


class TestAcknowledging:
    async def test_an_in_scope_regulator_acknowledges(self, reporting: Reporting, tenant: str) -> None:
        created = (await create(reporting, tenant, incident_input())).incident
        regulator_bj = regulator(("radio_television",), ("110000",))
        request = reporting_pb2.AcknowledgeIncidentRequest(
            incident_id=created.incident_id, note="received", request_id="ack-1"
        )
        acked = await reporting.stub.AcknowledgeIncident(
            request, metadata=reporting.auth(regulator_bj, "AcknowledgeIncident")
        )
        again = await reporting.stub.AcknowledgeIncident(
            request, metadata=reporting.auth(regulator_bj, "AcknowledgeIncident")
        )
        assert acked.incident.status == reporting_pb2.INCIDENT_STATUS_ACKNOWLEDGED
        (ack,) = again.incident.acknowledgements
        assert ack.department == common_pb2.DEPARTMENT_RADIO_TELEVISION and ack.region_code == "110000"
        assert ack.acknowledged_by == "reg-1" and ack.note == "received"
        entries = reporting.sql(
            "select payload from ledger.queue where convert_from(payload, 'UTF8')::jsonb #>> '{subject,id}' = :i "
            "and convert_from(payload, 'UTF8')::jsonb ->> 'action' = 'incident.acknowledge'",
            i=created.incident_id,
        )
        assert len(entries) == 1

    async def test_out_of_scope_regulator_cannot_acknowledge(self, reporting: Reporting, tenant: str) -> None:
        created = (await create(reporting, tenant, incident_input())).incident
        with pytest.raises(grpc.aio.AioRpcError) as refused:
            await reporting.stub.AcknowledgeIncident(
                reporting_pb2.AcknowledgeIncidentRequest(incident_id=created.incident_id),
                metadata=reporting.auth(regulator(("cyberspace",), ("310000",)), "AcknowledgeIncident"),
            )
        assert refused.value.code() is grpc.StatusCode.NOT_FOUND
