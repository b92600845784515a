"""The incident's wire form: proto ⇄ domain for incidents, their inputs and filters.

Shared by the incident servicer, the regulator feed's servicer (filters) and
the feed writer, which stores each incident change in this form
(services.reporting.feed.writer.FeedWriter). Enums convert by name through
avgate.kernel.convert.ProtoEnum: a domain value is the proto name without its
prefix, in lower case.
"""

from __future__ import annotations

from dataclasses import replace

from avgate.common.v1 import common_pb2
from avgate.kernel import convert
from avgate.kernel.convert import ProtoEnum, time_from_proto
from avgate.kernel.errors import FieldViolation, InvalidArgument
from avgate.kernel.legal import LegalBasis
from avgate.reporting.v1 import reporting_pb2
from services.reporting.domain import EvidenceRef
from services.reporting.incidents.domain import (
    ActionTaken,
    ContentRef,
    Incident,
    IncidentCategory,
    IncidentFilter,
    IncidentInput,
    IncidentSource,
    IncidentStatus,
    RelatedRecord,
    UserRef,
)

CATEGORY = ProtoEnum(reporting_pb2.IncidentCategory, "INCIDENT_CATEGORY_", IncidentCategory)
SOURCE = ProtoEnum(reporting_pb2.IncidentSource, "INCIDENT_SOURCE_", IncidentSource)
STATUS = ProtoEnum(reporting_pb2.IncidentStatus, "INCIDENT_STATUS_", IncidentStatus)
RELATED = ProtoEnum(reporting_pb2.RelatedRecordKind, "RELATED_RECORD_KIND_", str)
PROHIBITED = ProtoEnum(common_pb2.ProhibitedContentType, "PROHIBITED_CONTENT_TYPE_", str)
ACTION = ProtoEnum(common_pb2.ActionType, "ACTION_TYPE_", str)
DEPARTMENT = ProtoEnum(common_pb2.Department, "DEPARTMENT_", str)

# --------------------------------------------------------------------------- proto → domain


def incident_input_from_proto(message: reporting_pb2.IncidentInput, prefix: str = "incident.") -> IncidentInput:
    """Unset or unknown enum numbers become None (the use case names the field); `prefix` is
    where a timestamp out of range is reported."""
    action = None
    if message.HasField("action"):
        a = message.action
        action = ActionTaken(
            type=ACTION.name_of(a.type),
            action_time=time_from_proto(a, "action_time", f"{prefix}action.action_time"),
            until_time=time_from_proto(a, "until_time", f"{prefix}action.until_time"),
            detail=a.detail,
            enforcement_action_id=a.enforcement_action_id,
        )
    return IncidentInput(
        external_id=message.external_id,
        tenant_id=message.tenant_id,
        source=SOURCE.to_domain(message.source),
        category=CATEGORY.to_domain(message.category),
        prohibited_type=PROHIBITED.name_of(message.prohibited_type),
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
        detect_time=time_from_proto(message, "detect_time", f"{prefix}detect_time"),
        region_code=message.region_code,
        evidence=tuple(
            EvidenceRef(sha256=e.sha256, size_bytes=e.size_bytes, media_type=e.media_type) for e in message.evidence
        ),
        related=tuple(RelatedRecord(kind=RELATED.name_of(r.kind), id=r.id) for r in message.related),
    )


def list_filter_from_proto(request: reporting_pb2.ListIncidentsRequest) -> IncidentFilter:
    """ListIncidents' filter, content and user together."""
    return replace(
        incident_filter_from_proto(request.filter, "filter."),
        content_id=request.content_id,
        user_id=request.user.user_id if request.HasField("user") else "",
    )


def incident_filter_from_proto(f: reporting_pb2.IncidentFilter, prefix: str) -> IncidentFilter:
    """An incident filter (listings, the feed, exports); unknown values are violations under `prefix`."""
    departments = []
    for i, number in enumerate(f.departments):
        name = DEPARTMENT.name_of(number)
        if name is None:
            raise InvalidArgument(FieldViolation(f"{prefix}departments[{i}]", "not a known department"))
        departments.append(name)
    ranged = f.HasField("create_time_range")
    time_range = f.create_time_range
    return IncidentFilter(
        categories=CATEGORY.to_domain_list(f.categories, f"{prefix}categories"),
        departments=tuple(departments),
        region_codes=tuple(f.region_codes),
        tenant_ids=tuple(f.tenant_ids),
        statuses=STATUS.to_domain_list(f.statuses, f"{prefix}statuses"),
        sources=SOURCE.to_domain_list(f.sources, f"{prefix}sources"),
        created_from=time_from_proto(time_range, "start_time", f"{prefix}create_time_range.start_time")
        if ranged
        else None,
        created_before=time_from_proto(time_range, "end_time", f"{prefix}create_time_range.end_time")
        if ranged
        else None,
    )


# --------------------------------------------------------------------------- domain → proto


def incident_filter_to_proto(f: IncidentFilter) -> reporting_pb2.IncidentFilter:
    message = reporting_pb2.IncidentFilter(
        categories=[CATEGORY.to_proto(c) for c in f.categories],
        departments=[DEPARTMENT.to_proto(d) for d in f.departments],
        region_codes=list(f.region_codes),
        tenant_ids=list(f.tenant_ids),
        statuses=[STATUS.to_proto(s) for s in f.statuses],
        sources=[SOURCE.to_proto(s) for s in f.sources],
    )
    if f.created_from is not None or f.created_before is not None:
        message.create_time_range.CopyFrom(
            common_pb2.TimeRange(
                start_time=convert.timestamp(f.created_from), end_time=convert.timestamp(f.created_before)
            )
        )
    return message


def incident_to_proto(incident: Incident) -> reporting_pb2.Incident:
    i = incident.input
    message = reporting_pb2.Incident(
        incident_id=incident.incident_id,
        external_id=i.external_id,
        tenant_id=incident.tenant_id,
        source=SOURCE.to_proto(i.source),
        category=CATEGORY.to_proto(i.category),
        prohibited_type=PROHIBITED.to_proto(i.prohibited_type),
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
            reporting_pb2.Route(department=DEPARTMENT.to_proto(r.department), region_code=r.region_code)
            for r in incident.routes
        ],
        region_code=i.region_code,
        status=STATUS.to_proto(incident.status),
        evidence=[
            common_pb2.EvidenceRef(sha256=e.sha256, size_bytes=e.size_bytes, media_type=e.media_type)
            for e in i.evidence
        ],
        acknowledgements=[
            reporting_pb2.Acknowledgement(
                department=DEPARTMENT.to_proto(a.department),
                region_code=a.region_code,
                acknowledged_by=a.acknowledged_by,
                acknowledge_time=convert.timestamp(a.acknowledge_time),
                note=a.note,
            )
            for a in incident.acknowledgements
        ],
        related=[reporting_pb2.RelatedRecord(kind=RELATED.to_proto(r.kind), id=r.id) for r in i.related],
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
                type=ACTION.to_proto(a.type),
                action_time=convert.timestamp(a.action_time),
                until_time=convert.timestamp(a.until_time),
                detail=a.detail,
                enforcement_action_id=a.enforcement_action_id,
            )
        )
    return message


def incident_payload(incident: Incident) -> bytes:
    """The feed's stored form of an incident (services.reporting.feed.writer.FeedWriter)."""
    return incident_to_proto(incident).SerializeToString()
