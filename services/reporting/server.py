"""gRPC servicers of the reporting process: proto ⇄ domain translation only.

The audit ledger's, the incidents', the deliveries', the feed's, the evidence
store's, the refuted rumours' and the security assessments' servicers are real
(the others in their own packages); the rest answer UNIMPLEMENTED until their
issue lands, behind the same principal verification.
"""

from __future__ import annotations

from dataclasses import replace
from typing import TYPE_CHECKING

import grpc
from google.rpc import code_pb2, status_pb2

from avgate.common.v1 import common_pb2
from avgate.kernel.errors import FieldViolation, InvalidArgument
from avgate.kernel.grpc.errors import status_for
from avgate.kernel.grpc.server import ServiceRegistration
from avgate.kernel.grpc.unimplemented import unimplemented_registrations
from avgate.kernel.principal import current_principal
from avgate.reporting.v1 import reporting_pb2, reporting_pb2_grpc
from services.reporting.domain import (
    ActionTaken,
    ContentRef,
    EvidenceRef,
    IncidentCategory,
    IncidentFilter,
    IncidentInput,
    IncidentSource,
    IncidentStatus,
    LegalBasis,
    RelatedRecord,
    UserRef,
)
from services.reporting.evidence.server import EVIDENCE, EvidenceServicer
from services.reporting.incidents import IncidentService, ItemResult
from services.reporting.ledger.server import AuditLedgerServicer
from services.reporting.wire import (  # noqa: F401 - the enum helpers, for the servicers built on this module
    _ACTION,
    _CATEGORY,
    _DEPARTMENT,
    _PROHIBITED,
    _RELATED,
    _SOURCE,
    _STATUS,
    _domain_enum,
    _enum_list,
    _name_from,
    _number_of,
    _time_from,
    incident_payload,
    incident_to_proto,
)

if TYPE_CHECKING:  # deliveries' servicer imports this module's enum helpers
    from services.reporting.deliveries.server import DeliveryServicer

AUDIT_LEDGER = "avgate.reporting.v1.AuditLedgerService"
INCIDENTS = "avgate.reporting.v1.IncidentService"
FEED = "avgate.reporting.v1.RegulatorFeedService"
RUMORS = "avgate.reporting.v1.RumorService"
ASSESSMENTS = "avgate.reporting.v1.AssessmentService"
DELIVERIES = "avgate.reporting.v1.DeliveryService"

# --------------------------------------------------------------------------- proto → domain


def incident_input_from_proto(message: reporting_pb2.IncidentInput) -> IncidentInput:
    action = None
    if message.HasField("action"):
        a = message.action
        action = ActionTaken(
            type=_name_from(*_ACTION, a.type),
            action_time=_time_from(a, "action_time"),
            until_time=_time_from(a, "until_time"),
            detail=a.detail,
            enforcement_action_id=a.enforcement_action_id,
        )
    return IncidentInput(
        external_id=message.external_id,
        tenant_id=message.tenant_id,
        source=_domain_enum(IncidentSource, *_SOURCE, message.source),
        category=_domain_enum(IncidentCategory, *_CATEGORY, message.category),
        prohibited_type=_name_from(*_PROHIBITED, message.prohibited_type),
        legal_basis=tuple(
            LegalBasis(instrument=b.instrument, article=b.article, paragraph=b.paragraph, note=b.note)
            for b in message.legal_basis
        ),
        facts=message.facts,
        content=tuple(
            ContentRef(
                content_id=c.content_id, tenant_id=c.tenant_id, uri=c.uri, sha256=c.sha256, media_type=c.media_type
            )
            for c in message.content
        ),
        user=UserRef(user_id=message.user.user_id, tenant_id=message.user.tenant_id)
        if message.HasField("user")
        else None,
        action=action,
        automated_detection=message.automated_detection,
        automated_decision=message.automated_decision,
        detect_time=_time_from(message, "detect_time"),
        region_code=message.region_code,
        evidence=tuple(
            EvidenceRef(sha256=e.sha256, size_bytes=e.size_bytes, media_type=e.media_type) for e in message.evidence
        ),
        related=tuple(RelatedRecord(kind=_name_from(*_RELATED, r.kind), id=r.id) for r in message.related),
    )


def filter_from_proto(request: reporting_pb2.ListIncidentsRequest) -> IncidentFilter:
    return replace(
        incident_filter_from_proto(request.filter, "filter."),
        content_id=request.content_id,
        user_id=request.user.user_id if request.HasField("user") else "",
    )


def incident_filter_from_proto(f: reporting_pb2.IncidentFilter, prefix: str) -> IncidentFilter:
    departments = []
    for i, number in enumerate(f.departments):
        name = _name_from(*_DEPARTMENT, number)
        if name is None:
            raise InvalidArgument(FieldViolation(f"{prefix}departments[{i}]", "not a known department"))
        departments.append(name)
    time_range = f.create_time_range
    return IncidentFilter(
        categories=_enum_list(IncidentCategory, *_CATEGORY, f.categories, f"{prefix}categories"),
        departments=tuple(departments),
        region_codes=tuple(f.region_codes),
        tenant_ids=tuple(f.tenant_ids),
        statuses=_enum_list(IncidentStatus, *_STATUS, f.statuses, f"{prefix}statuses"),
        sources=_enum_list(IncidentSource, *_SOURCE, f.sources, f"{prefix}sources"),
        created_from=_time_from(time_range, "start_time") if f.HasField("create_time_range") else None,
        created_before=_time_from(time_range, "end_time") if f.HasField("create_time_range") else None,
    )


def _aborted() -> status_pb2.Status:
    return status_pb2.Status(code=code_pb2.ABORTED, message="valid, but not applied because another item failed")


def batch_result_to_proto(result: ItemResult) -> reporting_pb2.BatchCreateIncidentsResult:
    if result.error is not None:
        return reporting_pb2.BatchCreateIncidentsResult(error=status_for(result.error))
    if result.incident is None:
        return reporting_pb2.BatchCreateIncidentsResult(error=_aborted())
    return reporting_pb2.BatchCreateIncidentsResult(incident=incident_to_proto(result.incident), created=result.created)


# --------------------------------------------------------------------------- servicer


class IncidentServicer(reporting_pb2_grpc.IncidentServiceServicer):
    def __init__(self, incidents: IncidentService):
        self._incidents = incidents

    async def CreateIncident(
        self, request: reporting_pb2.CreateIncidentRequest, context: grpc.aio.ServicerContext
    ) -> reporting_pb2.CreateIncidentResponse:
        incident, created = await self._incidents.create(
            current_principal(), incident_input_from_proto(request.incident)
        )
        return reporting_pb2.CreateIncidentResponse(incident=incident_to_proto(incident), created=created)

    async def BatchCreateIncidents(
        self, request: reporting_pb2.BatchCreateIncidentsRequest, context: grpc.aio.ServicerContext
    ) -> reporting_pb2.BatchCreateIncidentsResponse:
        outcome = await self._incidents.batch_create(
            current_principal(), [incident_input_from_proto(i) for i in request.incidents]
        )
        return reporting_pb2.BatchCreateIncidentsResponse(
            applied=outcome.applied, results=[batch_result_to_proto(r) for r in outcome.results]
        )

    async def GetIncident(
        self, request: reporting_pb2.GetIncidentRequest, context: grpc.aio.ServicerContext
    ) -> reporting_pb2.GetIncidentResponse:
        incident = await self._incidents.get(current_principal(), request.incident_id)
        return reporting_pb2.GetIncidentResponse(incident=incident_to_proto(incident))

    async def ListIncidents(
        self, request: reporting_pb2.ListIncidentsRequest, context: grpc.aio.ServicerContext
    ) -> reporting_pb2.ListIncidentsResponse:
        incidents, next_token = await self._incidents.list(
            current_principal(),
            filter_from_proto(request),
            page_size=request.page.page_size,
            page_token=request.page.page_token,
        )
        return reporting_pb2.ListIncidentsResponse(
            incidents=[incident_to_proto(i) for i in incidents],
            page=common_pb2.PageResponse(next_page_token=next_token),
        )

    async def AcknowledgeIncident(
        self, request: reporting_pb2.AcknowledgeIncidentRequest, context: grpc.aio.ServicerContext
    ) -> reporting_pb2.AcknowledgeIncidentResponse:
        incident = await self._incidents.acknowledge(
            current_principal(), request.incident_id, note=request.note, request_id=request.request_id
        )
        return reporting_pb2.AcknowledgeIncidentResponse(incident=incident_to_proto(incident))


def registrations(
    ledger: AuditLedgerServicer,
    incidents: IncidentServicer,
    deliveries: DeliveryServicer,
    feed: reporting_pb2_grpc.RegulatorFeedServiceServicer,
    evidence: EvidenceServicer,
    rumors: reporting_pb2_grpc.RumorServiceServicer,
    assessments: reporting_pb2_grpc.AssessmentServiceServicer,
) -> list[ServiceRegistration]:
    """Every reporting service; the feed's, rumours' and assessments' servicers are typed by
    their generated bases (their modules build on this one)."""
    real = {AUDIT_LEDGER, INCIDENTS, DELIVERIES, FEED, EVIDENCE, RUMORS, ASSESSMENTS}
    others = [
        r for r in unimplemented_registrations(reporting_pb2, reporting_pb2_grpc) if not real & set(r.service_names)
    ]
    return [
        ServiceRegistration(ledger, reporting_pb2_grpc.add_AuditLedgerServiceServicer_to_server, [AUDIT_LEDGER]),
        ServiceRegistration(incidents, reporting_pb2_grpc.add_IncidentServiceServicer_to_server, [INCIDENTS]),
        ServiceRegistration(deliveries, reporting_pb2_grpc.add_DeliveryServiceServicer_to_server, [DELIVERIES]),
        ServiceRegistration(feed, reporting_pb2_grpc.add_RegulatorFeedServiceServicer_to_server, [FEED]),
        ServiceRegistration(evidence, reporting_pb2_grpc.add_EvidenceServiceServicer_to_server, [EVIDENCE]),
        ServiceRegistration(rumors, reporting_pb2_grpc.add_RumorServiceServicer_to_server, [RUMORS]),
        ServiceRegistration(assessments, reporting_pb2_grpc.add_AssessmentServiceServicer_to_server, [ASSESSMENTS]),
        *others,
    ]
