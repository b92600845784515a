"""gRPC servicers of the reporting process: proto ⇄ domain translation only.

The audit ledger's, the incidents' and the deliveries' servicers are real; the rest answer
UNIMPLEMENTED until their issue lands, behind the same principal verification.
"""

from __future__ import annotations

import enum
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any, TypeVar

import grpc
from google.protobuf import timestamp_pb2
from google.protobuf.internal.enum_type_wrapper import EnumTypeWrapper
from google.rpc import code_pb2, status_pb2

from avgate.common.v1 import common_pb2
from avgate.kernel import convert
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
    Incident,
    IncidentCategory,
    IncidentFilter,
    IncidentInput,
    IncidentSource,
    IncidentStatus,
    LegalBasis,
    RelatedRecord,
    UserRef,
)
from services.reporting.incidents import IncidentService, ItemResult
from services.reporting.ledger.server import AuditLedgerServicer

if TYPE_CHECKING:  # deliveries' servicer imports this module's enum helpers
    from services.reporting.deliveries.server import DeliveryServicer

AUDIT_LEDGER = "avgate.reporting.v1.AuditLedgerService"
INCIDENTS = "avgate.reporting.v1.IncidentService"
DELIVERIES = "avgate.reporting.v1.DeliveryService"

E = TypeVar("E", bound=enum.Enum)

# --------------------------------------------------------------------------- enums by name
# Domain enum values are the proto names without their prefix, in lower case.


def _name_from(wrapper: EnumTypeWrapper, prefix: str, number: int) -> str | None:
    """The domain name of a proto enum number; None for *_UNSPECIFIED or a number this build does not know."""
    try:
        name = wrapper.Name(number)  # type: ignore[arg-type]
    except ValueError:
        return None
    suffix = name.removeprefix(prefix).lower()
    return None if suffix == "unspecified" else suffix


def _number_of(wrapper: EnumTypeWrapper, prefix: str, name: str | None) -> int:
    return int(wrapper.Value(f"{prefix}{name.upper()}")) if name else 0


def _domain_enum(cls: type[E], wrapper: EnumTypeWrapper, prefix: str, number: int) -> E | None:
    name = _name_from(wrapper, prefix, number)
    return cls(name) if name is not None else None


def _enum_list(cls: type[E], wrapper: EnumTypeWrapper, prefix: str, numbers: Any, field: str) -> tuple[E, ...]:
    """Filter values: UNSPECIFIED is ignored, an unknown number is a field violation."""
    values = []
    for i, number in enumerate(numbers):
        if number == 0:
            continue
        value = _domain_enum(cls, wrapper, prefix, number)
        if value is None:
            raise InvalidArgument(FieldViolation(f"{field}[{i}]", "not a known value"))
        values.append(value)
    return tuple(values)


_CATEGORY = (reporting_pb2.IncidentCategory, "INCIDENT_CATEGORY_")
_SOURCE = (reporting_pb2.IncidentSource, "INCIDENT_SOURCE_")
_STATUS = (reporting_pb2.IncidentStatus, "INCIDENT_STATUS_")
_RELATED = (reporting_pb2.RelatedRecordKind, "RELATED_RECORD_KIND_")
_PROHIBITED = (common_pb2.ProhibitedContentType, "PROHIBITED_CONTENT_TYPE_")
_ACTION = (common_pb2.ActionType, "ACTION_TYPE_")
_DEPARTMENT = (common_pb2.Department, "DEPARTMENT_")


def _time_from(message: Any, field: str) -> datetime | None:
    if not message.HasField(field):
        return None
    value: timestamp_pb2.Timestamp = getattr(message, field)
    return value.ToDatetime(tzinfo=UTC)


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
    f = request.filter
    departments = []
    for i, number in enumerate(f.departments):
        name = _name_from(*_DEPARTMENT, number)
        if name is None:
            raise InvalidArgument(FieldViolation(f"filter.departments[{i}]", "not a known department"))
        departments.append(name)
    time_range = f.create_time_range
    return IncidentFilter(
        categories=_enum_list(IncidentCategory, *_CATEGORY, f.categories, "filter.categories"),
        departments=tuple(departments),
        region_codes=tuple(f.region_codes),
        tenant_ids=tuple(f.tenant_ids),
        statuses=_enum_list(IncidentStatus, *_STATUS, f.statuses, "filter.statuses"),
        sources=_enum_list(IncidentSource, *_SOURCE, f.sources, "filter.sources"),
        created_from=_time_from(time_range, "start_time") if f.HasField("create_time_range") else None,
        created_before=_time_from(time_range, "end_time") if f.HasField("create_time_range") else None,
        content_id=request.content_id,
        user_id=request.user.user_id if request.HasField("user") else "",
    )


# --------------------------------------------------------------------------- domain → proto


def incident_to_proto(incident: Incident) -> reporting_pb2.Incident:
    i = incident.input
    message = reporting_pb2.Incident(
        incident_id=incident.incident_id,
        external_id=i.external_id,
        tenant_id=incident.tenant_id,
        source=_number_of(*_SOURCE, i.source.value if i.source else None),  # type: ignore[arg-type]
        category=_number_of(*_CATEGORY, i.category.value if i.category else None),  # type: ignore[arg-type]
        prohibited_type=_number_of(*_PROHIBITED, i.prohibited_type),  # type: ignore[arg-type]
        legal_basis=[
            common_pb2.LegalBasis(instrument=b.instrument, article=b.article, paragraph=b.paragraph, note=b.note)
            for b in i.legal_basis
        ],
        facts=i.facts,
        content=[
            common_pb2.ContentRef(
                tenant_id=c.tenant_id, content_id=c.content_id, uri=c.uri, sha256=c.sha256, media_type=c.media_type
            )
            for c in i.content
        ],
        automated_detection=i.automated_detection,
        automated_decision=i.automated_decision,
        detect_time=convert.timestamp(i.detect_time),
        routes=[
            reporting_pb2.Route(
                department=_number_of(*_DEPARTMENT, r.department),  # type: ignore[arg-type]
                region_code=r.region_code,
            )
            for r in incident.routes
        ],
        region_code=i.region_code,
        status=_number_of(*_STATUS, incident.status.value),  # type: ignore[arg-type]
        evidence=[
            common_pb2.EvidenceRef(sha256=e.sha256, size_bytes=e.size_bytes, media_type=e.media_type)
            for e in i.evidence
        ],
        acknowledgements=[
            reporting_pb2.Acknowledgement(
                department=_number_of(*_DEPARTMENT, a.department),  # type: ignore[arg-type]
                region_code=a.region_code,
                acknowledged_by=a.acknowledged_by,
                acknowledge_time=convert.timestamp(a.acknowledge_time),
                note=a.note,
            )
            for a in incident.acknowledgements
        ],
        related=[
            reporting_pb2.RelatedRecord(kind=_number_of(*_RELATED, r.kind), id=r.id)  # type: ignore[arg-type]
            for r in i.related
        ],
        create_time=convert.timestamp(incident.create_time),
        update_time=convert.timestamp(incident.update_time),
        ledger_entry_id=str(incident.ledger_entry_id),
    )
    if i.user is not None:
        message.user.CopyFrom(common_pb2.UserRef(tenant_id=i.user.tenant_id, user_id=i.user.user_id))
    if i.action is not None:
        a = i.action
        message.action.CopyFrom(
            common_pb2.ActionTaken(
                type=_number_of(*_ACTION, a.type),  # type: ignore[arg-type]
                action_time=convert.timestamp(a.action_time),
                until_time=convert.timestamp(a.until_time),
                detail=a.detail,
                enforcement_action_id=a.enforcement_action_id,
            )
        )
    return message


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
    ledger: AuditLedgerServicer, incidents: IncidentServicer, deliveries: DeliveryServicer
) -> list[ServiceRegistration]:
    real = {AUDIT_LEDGER, INCIDENTS, DELIVERIES}
    others = [
        r for r in unimplemented_registrations(reporting_pb2, reporting_pb2_grpc) if not real & set(r.service_names)
    ]
    return [
        ServiceRegistration(ledger, reporting_pb2_grpc.add_AuditLedgerServiceServicer_to_server, [AUDIT_LEDGER]),
        ServiceRegistration(incidents, reporting_pb2_grpc.add_IncidentServiceServicer_to_server, [INCIDENTS]),
        ServiceRegistration(deliveries, reporting_pb2_grpc.add_DeliveryServiceServicer_to_server, [DELIVERIES]),
        *others,
    ]
