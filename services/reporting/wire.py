"""The incident's wire form: proto enums by domain name, and domain → proto.

Shared by the servicers and by the regulator feed, which stores each
incident change in this form (services.reporting.store.FeedWriter).
"""

from __future__ import annotations

import enum
from datetime import UTC, datetime
from typing import Any, TypeVar

from google.protobuf import timestamp_pb2
from google.protobuf.internal.enum_type_wrapper import EnumTypeWrapper

from avgate.common.v1 import common_pb2
from avgate.kernel import convert
from avgate.kernel.errors import FieldViolation, InvalidArgument
from avgate.reporting.v1 import reporting_pb2
from services.reporting.domain import Incident

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


def incident_payload(incident: Incident) -> bytes:
    """The feed's stored form of an incident (services.reporting.store.FeedWriter)."""
    return incident_to_proto(incident).SerializeToString()
