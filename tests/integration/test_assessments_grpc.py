"""AssessmentService on the real reporting server, on a real socket, with
gateway-signed principal tokens and a real PostgreSQL: an assessment is
recorded with the incident that reports it, retried safely, and seen by the
regulators its incident is routed to."""

from __future__ import annotations

import asyncio
import json
import pathlib
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass, replace
from datetime import UTC, datetime, timedelta
from typing import Any

import grpc
import pytest
import sqlalchemy.exc
from google.protobuf import timestamp_pb2
from google.rpc import error_details_pb2

from avgate.common.v1 import common_pb2
from avgate.kernel.db import create_engine_for
from avgate.kernel.principal import Principal, TokenSigner
from avgate.reporting.v1 import reporting_pb2, reporting_pb2_grpc
from services.reporting.__main__ import compose
from services.reporting.assessments.domain import AssessedTrait, AssessmentConclusion, AssessmentInput
from services.reporting.assessments.service import AssessmentService
from services.reporting.assessments.store import SqlAssessmentStore
from services.reporting.config import ReportingSettings
from services.reporting.feed.writer import FeedWriter
from services.reporting.incidents.service import IncidentService
from services.reporting.incidents.store import InMemoryIncidentStore, SqlIncidentStore
from services.reporting.incidents.wire import incident_payload
from tests.conftest import Database
from tests.support import (
    Metadata,
    admin_sql,
    details,
    operator,
    provider,
    regulator,
    serve,
    signer,
    token_metadata,
    violated_fields,
)

pytestmark = pytest.mark.db

PACKAGE = "/avgate.reporting.v1."
OPERATOR = operator("ops-1", request_id="req-ops")
DOCUMENT = "ab" * 32


@dataclass
class Reporting:
    assessments: reporting_pb2_grpc.AssessmentServiceStub
    incidents: reporting_pb2_grpc.IncidentServiceStub
    signer: TokenSigner
    database: Database

    def auth(self, principal: Principal, method: str) -> Metadata:
        return token_metadata(self.signer, principal, audience="reporting", method=PACKAGE + method)

    async def record(
        self, caller: Principal, request_id: str = "asm-1", **changes: Any
    ) -> reporting_pb2.SecurityAssessment:
        reply = await self.assessments.RecordAssessment(
            reporting_pb2.RecordAssessmentRequest(request_id=request_id, assessment=assessment(**changes)),
            metadata=self.auth(caller, "AssessmentService/RecordAssessment"),
        )
        return reply.assessment

    async def get(self, caller: Principal, assessment_id: str) -> reporting_pb2.SecurityAssessment:
        reply = await self.assessments.GetAssessment(
            reporting_pb2.GetAssessmentRequest(assessment_id=assessment_id),
            metadata=self.auth(caller, "AssessmentService/GetAssessment"),
        )
        return reply.assessment

    async def list(self, caller: Principal, **fields: Any) -> reporting_pb2.ListAssessmentsResponse:
        return await self.assessments.ListAssessments(
            reporting_pb2.ListAssessmentsRequest(**fields),
            metadata=self.auth(caller, "AssessmentService/ListAssessments"),
        )

    async def incident(self, incident_id: str) -> reporting_pb2.Incident:
        reply = await self.incidents.GetIncident(
            reporting_pb2.GetIncidentRequest(incident_id=incident_id),
            metadata=self.auth(OPERATOR, "IncidentService/GetIncident"),
        )
        return reply.incident

    def sql(self, query: str, **params: Any) -> list[Any]:
        return admin_sql(self.database.admin_url, query, **params)


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
        yield Reporting(
            reporting_pb2_grpc.AssessmentServiceStub(served.channel),
            reporting_pb2_grpc.IncidentServiceStub(served.channel),
            signer(keys_dir),
            database,
        )


def timestamp(value: datetime) -> timestamp_pb2.Timestamp:
    ts = timestamp_pb2.Timestamp()
    ts.FromDatetime(value)
    return ts


LAST_WEEK = datetime.now(UTC) - timedelta(days=7)


def assessment(**changes: Any) -> reporting_pb2.SecurityAssessment:
    fields: dict[str, Any] = {
        "feature": "AI voice changer for live streams",
        "feature_description": "Real-time voice conversion with a deep-learning model.",
        "traits": [reporting_pb2.ASSESSED_TRAIT_DEEP_LEARNING, reporting_pb2.ASSESSED_TRAIT_SOCIAL_MOBILIZATION],
        "assessment_time": timestamp(LAST_WEEK),
        "assessor": "Security & Compliance Team",
        "conclusion": reporting_pb2.ASSESSMENT_CONCLUSION_PASSED_WITH_CONDITIONS,
        "conclusion_text": "Synthetic voices must carry an audible and an implicit label.",
        "document_sha256": DOCUMENT,
        "document": common_pb2.EvidenceRef(sha256=DOCUMENT, size_bytes=2048, media_type="application/pdf"),
        "launch_time": timestamp(LAST_WEEK + timedelta(days=30)),
    }
    fields.update(changes)
    return reporting_pb2.SecurityAssessment(**fields)


@pytest.fixture
def tenant() -> str:
    return f"t-{uuid.uuid4().hex[:12]}"


def ledger_entries(r: Reporting, action: str, subject_id: str) -> list[dict[str, Any]]:
    rows = r.sql(
        "select payload from ledger.queue where convert_from(payload, 'UTF8')::jsonb ->> 'action' = :a "
        "and convert_from(payload, 'UTF8')::jsonb #>> '{subject,id}' = :s",
        a=action,
        s=subject_id,
    )
    return [json.loads(bytes(row.payload)) for row in rows]


class TestRecording:
    async def test_the_assessment_is_recorded_and_read_back(self, reporting: Reporting, tenant: str) -> None:
        recorded = await reporting.record(provider(tenant))
        assert recorded.assessment_id and recorded.incident_id and recorded.tenant_id == tenant
        assert list(recorded.traits) == [
            reporting_pb2.ASSESSED_TRAIT_DEEP_LEARNING,
            reporting_pb2.ASSESSED_TRAIT_SOCIAL_MOBILIZATION,
        ]
        assert recorded.document.sha256 == DOCUMENT and recorded.HasField("create_time")
        assert await reporting.get(provider(tenant), recorded.assessment_id) == recorded

    async def test_an_incident_reports_it(self, reporting: Reporting, tenant: str) -> None:
        recorded = await reporting.record(provider(tenant))
        incident = await reporting.incident(recorded.incident_id)
        assert incident.tenant_id == tenant
        assert incident.category == reporting_pb2.INCIDENT_CATEGORY_SECURITY_ASSESSMENT
        assert incident.source == reporting_pb2.INCIDENT_SOURCE_PROVIDER
        assert [(b.instrument, b.article) for b in incident.legal_basis] == [("NAVIS-2019", "10")]
        assert "AI voice changer for live streams" in incident.facts
        assert "passed with conditions" in incident.facts
        assert list(incident.related) == [
            reporting_pb2.RelatedRecord(
                kind=reporting_pb2.RELATED_RECORD_KIND_SECURITY_ASSESSMENT, id=recorded.assessment_id
            )
        ]
        assert [e.sha256 for e in incident.evidence] == [DOCUMENT]
        assert {r.department for r in incident.routes} == {
            common_pb2.DEPARTMENT_CYBERSPACE,
            common_pb2.DEPARTMENT_PUBLIC_SECURITY,
        }

    async def test_the_incident_is_queued_for_the_authorities_and_everything_is_ledgered(
        self, reporting: Reporting, tenant: str
    ) -> None:
        recorded = await reporting.record(provider(tenant))
        reports = reporting.sql(
            "select destination, payload, state from reporting.outbox "
            "where convert_from(payload, 'UTF8')::jsonb ->> 'incident_id' = :i",
            i=recorded.incident_id,
        )
        assert {r.destination for r in reports} == {"authority:cyberspace", "authority:public_security"}
        assert {r.state for r in reports} == {"pending"}
        assert json.loads(bytes(reports[0].payload))["category"] == "security_assessment"
        (record,) = ledger_entries(reporting, "security_assessment.record", recorded.assessment_id)
        assert record["tenant"] == tenant and record["basis"] == "NAVIS-2019 Art. 10"
        assert record["data"]["incident_id"] == recorded.incident_id
        assert record["data"]["document_sha256"] == DOCUMENT
        assert len(ledger_entries(reporting, "incident.create", recorded.incident_id)) == 1

    async def test_a_retry_returns_the_same_assessment_and_incident(self, reporting: Reporting, tenant: str) -> None:
        first = await reporting.record(provider(tenant), "asm-retry")
        again = await reporting.record(provider(tenant), "asm-retry")
        assert again == first
        assert (
            reporting.sql("select count(*) from reporting.security_assessments where tenant_id = :t", t=tenant)[0][0]
            == 1
        )
        assert reporting.sql("select count(*) from reporting.incidents where tenant_id = :t", t=tenant)[0][0] == 1

    async def test_the_same_traits_in_another_order_are_the_same_request(
        self, reporting: Reporting, tenant: str
    ) -> None:
        first = await reporting.record(provider(tenant), "asm-order")
        again = await reporting.record(
            provider(tenant),
            "asm-order",
            traits=[
                reporting_pb2.ASSESSED_TRAIT_SOCIAL_MOBILIZATION,
                reporting_pb2.ASSESSED_TRAIT_DEEP_LEARNING,
                reporting_pb2.ASSESSED_TRAIT_DEEP_LEARNING,
            ],
        )
        assert again == first

    async def test_the_same_request_id_with_other_content_is_a_conflict(
        self, reporting: Reporting, tenant: str
    ) -> None:
        await reporting.record(provider(tenant), "asm-conflict")
        with pytest.raises(grpc.aio.AioRpcError) as refused:
            await reporting.record(
                provider(tenant), "asm-conflict", conclusion=reporting_pb2.ASSESSMENT_CONCLUSION_FAILED
            )
        assert refused.value.code() is grpc.StatusCode.ALREADY_EXISTS
        (info,) = details(refused.value, error_details_pb2.ErrorInfo)
        assert info.reason == "ERROR_REASON_IDEMPOTENCY_CONFLICT"
        assert reporting.sql("select count(*) from reporting.incidents where tenant_id = :t", t=tenant)[0][0] == 1

    async def test_an_operator_records_for_a_named_tenant(self, reporting: Reporting, tenant: str) -> None:
        recorded = await reporting.record(OPERATOR, tenant_id=tenant)
        assert recorded.tenant_id == tenant
        incident = await reporting.incident(recorded.incident_id)
        assert incident.source == reporting_pb2.INCIDENT_SOURCE_OPERATOR
        with pytest.raises(grpc.aio.AioRpcError) as refused:
            await reporting.record(OPERATOR, "asm-no-tenant")
        assert violated_fields(refused.value) == {"assessment.tenant_id"}

    async def test_invalid_input_names_every_field_and_records_nothing(self, reporting: Reporting, tenant: str) -> None:
        with pytest.raises(grpc.aio.AioRpcError) as refused:
            await reporting.record(
                provider(tenant),
                feature="",
                traits=[reporting_pb2.ASSESSED_TRAIT_UNSPECIFIED],
                assessment_time=timestamp(datetime.now(UTC) + timedelta(days=1)),
                assessor="x" * 201,
                conclusion=reporting_pb2.ASSESSMENT_CONCLUSION_UNSPECIFIED,
                document_sha256=DOCUMENT.upper(),
                tenant_id=f"{tenant}-other",
            )
        assert violated_fields(refused.value) == {
            "assessment.feature",
            "assessment.traits[0]",
            "assessment.assessment_time",
            "assessment.assessor",
            "assessment.conclusion",
            "assessment.document_sha256",
            "assessment.document.sha256",
            "assessment.tenant_id",
        }
        assert reporting.sql("select 1 from reporting.security_assessments where tenant_id = :t", t=tenant) == []
        assert reporting.sql("select 1 from reporting.incidents where tenant_id = :t", t=tenant) == []

    @pytest.mark.parametrize(
        ("changes", "field"),
        [
            ({"traits": []}, "assessment.traits"),
            ({"assessment_time": None}, "assessment.assessment_time"),
            ({"conclusion_text": ""}, "assessment.conclusion_text"),
            ({"feature": "x" * 201}, "assessment.feature"),
            ({"assessor": "Contact 13812345678"}, "assessment.assessor"),
        ],
        ids=["no-traits", "no-time", "conditions-unstated", "feature-too-long", "personal-data"],
    )
    async def test_each_rule_is_named(
        self, reporting: Reporting, tenant: str, changes: dict[str, Any], field: str
    ) -> None:
        with pytest.raises(grpc.aio.AioRpcError) as refused:
            await reporting.record(provider(tenant), **changes)
        assert violated_fields(refused.value) == {field}


class TestVisibility:
    async def test_providers_see_only_their_own(self, reporting: Reporting, tenant: str) -> None:
        mine = await reporting.record(provider(tenant))
        theirs = await reporting.record(provider(f"{tenant}-other"))
        with pytest.raises(grpc.aio.AioRpcError) as refused:
            await reporting.get(provider(tenant), theirs.assessment_id)
        assert refused.value.code() is grpc.StatusCode.NOT_FOUND
        listed = await reporting.list(provider(tenant))
        assert [a.assessment_id for a in listed.assessments] == [mine.assessment_id]
        other_tenants = await reporting.list(provider(tenant), tenant_ids=[f"{tenant}-other"])
        assert list(other_tenants.assessments) == []

    @pytest.mark.parametrize(
        ("scope", "sees"),
        [
            (regulator(("cyberspace",), ("000000",)), True),
            (regulator(("public_security",), ("000000",)), True),
            (regulator(("culture_tourism",), ("000000",)), False),
            # Assessments carry no region: routed nationally, outside a provincial scope.
            (regulator(("cyberspace",), ("110000",)), False),
        ],
        ids=["cyberspace-national", "public-security-national", "culture-national", "cyberspace-beijing"],
    )
    async def test_regulators_see_what_their_scope_covers(
        self, reporting: Reporting, tenant: str, scope: Principal, sees: bool
    ) -> None:
        recorded = await reporting.record(provider(tenant))
        listed = await reporting.list(scope, tenant_ids=[tenant])
        assert [a.assessment_id for a in listed.assessments] == ([recorded.assessment_id] if sees else [])
        if sees:
            assert await reporting.get(scope, recorded.assessment_id) == recorded
        else:
            with pytest.raises(grpc.aio.AioRpcError) as refused:
                await reporting.get(scope, recorded.assessment_id)
            assert refused.value.code() is grpc.StatusCode.NOT_FOUND

    async def test_regulator_reads_are_ledgered_once_per_call(self, reporting: Reporting, tenant: str) -> None:
        recorded = await reporting.record(provider(tenant))
        national = regulator(("cyberspace",), ("000000",))
        await reporting.get(national, recorded.assessment_id)
        (read,) = ledger_entries(reporting, "security_assessment.read", recorded.assessment_id)
        assert read["actor"]["role"] == "regulator" and read["tenant"] == tenant
        await reporting.list(national, tenant_ids=[tenant])
        (page,) = ledger_entries(
            reporting, "security_assessment.list", f"{recorded.assessment_id}..{recorded.assessment_id}"
        )
        assert page["data"]["assessment_ids"] == [recorded.assessment_id]


class TestListing:
    async def test_newest_first_in_pages_within_a_time_range(self, reporting: Reporting, tenant: str) -> None:
        recorded = [
            await reporting.record(
                provider(tenant), f"asm-{n}", assessment_time=timestamp(LAST_WEEK - timedelta(days=n))
            )
            for n in range(5)
        ]
        seen: list[str] = []
        token = ""
        while True:
            page = await reporting.list(provider(tenant), page=common_pb2.PageRequest(page_size=2, page_token=token))
            seen.extend(a.assessment_id for a in page.assessments)
            token = page.page.next_page_token
            if not token:
                break
        assert seen == [a.assessment_id for a in reversed(recorded)]
        ranged = await reporting.list(
            provider(tenant),
            assessment_time_range=common_pb2.TimeRange(
                start_time=timestamp(LAST_WEEK - timedelta(days=2)), end_time=timestamp(LAST_WEEK)
            ),
        )
        assert [a.assessment_id for a in ranged.assessments] == [recorded[2].assessment_id, recorded[1].assessment_id]

    async def test_operators_filter_by_tenant(self, reporting: Reporting, tenant: str) -> None:
        mine = await reporting.record(provider(tenant))
        await reporting.record(provider(f"{tenant}-other"))
        listed = await reporting.list(OPERATOR, tenant_ids=[tenant])
        assert [a.assessment_id for a in listed.assessments] == [mine.assessment_id]
        with pytest.raises(grpc.aio.AioRpcError) as refused:
            await reporting.list(OPERATOR, tenant_ids=["Not A Tenant"])
        assert violated_fields(refused.value) == {"tenant_ids[0]"}


class TestAtomicity:
    async def test_concurrent_retries_record_one_assessment_and_one_incident(
        self, reporting: Reporting, tenant: str
    ) -> None:
        results = await asyncio.gather(*(reporting.record(provider(tenant), "asm-race") for _ in range(4)))
        assert all(r == results[0] for r in results)
        assert reporting.sql("select count(*) from reporting.incidents where tenant_id = :t", t=tenant)[0][0] == 1

    async def test_an_assessment_that_cannot_be_written_leaves_no_incident_report_or_ledger_entry(
        self, reporting: Reporting, tenant: str
    ) -> None:
        engine = create_engine_for(reporting.database.url_for("reporting"), pool_size=1)
        writer = SqlIncidentStore(engine, FeedWriter(incident_payload)).write_new
        service = AssessmentService(SqlAssessmentStore(engine, writer), IncidentService(InMemoryIncidentStore()))
        caller = provider(tenant)
        item = AssessmentInput(
            tenant_id=tenant,
            feature="Virtual idol live rooms",
            feature_description="",
            traits=(AssessedTrait.VIRTUAL_REALITY,),
            assessment_time=LAST_WEEK,
            assessor="Security team",
            conclusion=AssessmentConclusion.PASSED,
            conclusion_text="",
            document_sha256=DOCUMENT,
        )
        new, audit, incident = service._new(caller, tenant, "asm-broken", item, b"\x00" * 32)
        # The database refuses the assessment row (the check constraint), after the incident was written.
        broken = replace(new, document_sha256="not a hash")
        try:
            with pytest.raises(sqlalchemy.exc.IntegrityError):
                await SqlAssessmentStore(engine, writer).add(broken, audit, incident)
        finally:
            await engine.dispose()
        incident_id = incident.incident.incident_id
        assert reporting.sql("select 1 from reporting.incidents where incident_id = :i", i=incident_id) == []
        assert (
            reporting.sql(
                "select 1 from reporting.outbox where convert_from(payload, 'UTF8')::jsonb ->> 'incident_id' = :i",
                i=incident_id,
            )
            == []
        )
        assert ledger_entries(reporting, "incident.create", incident_id) == []
        assert ledger_entries(reporting, "security_assessment.record", new.assessment_id) == []
