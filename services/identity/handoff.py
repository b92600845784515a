"""Enforcement actions handed to reporting: one incident per event (issue,
lift, reverse, expire), queued in identity's outbox in the transaction that
records the event (avgate.kernel.reporting_handoff).

The incident's external id is "<action id>:<event>", so a retried event is
the same incident at reporting. Its facts name the action, the provider's
user id and the reason, which the service refused to accept with personal
data in it.
"""

from __future__ import annotations

import uuid
from datetime import datetime
from typing import Any

from avgate.common.v1 import common_pb2
from avgate.kernel import convert
from avgate.kernel.principal import Principal
from avgate.kernel.reporting_handoff import report_incident
from avgate.reporting.v1 import reporting_pb2
from services.identity.domain import EnforcementAction, EnforcementActionType, EnforcementEvent
from services.identity.models import SCHEMA

_ACTION_TYPE = {
    EnforcementActionType.WARNING: common_pb2.ACTION_TYPE_WARNING,
    EnforcementActionType.FUNCTION_RESTRICTION: common_pb2.ACTION_TYPE_FUNCTION_RESTRICTION,
    EnforcementActionType.SUSPENSION_OF_UPDATING: common_pb2.ACTION_TYPE_SUSPENSION_OF_UPDATING,
    EnforcementActionType.ACCOUNT_CLOSURE: common_pb2.ACTION_TYPE_ACCOUNT_CLOSURE,
}


def external_id(action_id: str, event: EnforcementEvent) -> str:
    return f"{action_id}:{event.value}"


def enforcement_incident(
    action: EnforcementAction, event: EnforcementEvent, at: datetime
) -> reporting_pb2.IncidentInput:
    """The incident reporting records for `event` on `action` (which is already in its new state)."""
    functions = ", ".join(f.value for f in action.restricted_functions)
    what = action.type.value.replace("_", " ") + (f" ({functions})" if functions else "")
    if event is EnforcementEvent.ISSUE:
        facts = f"Enforcement action {action.action_id}: {what} on account {action.user.user_id}. {action.reason}"
        taken = common_pb2.ActionTaken(
            type=_ACTION_TYPE[action.type],  # type: ignore[arg-type]
            action_time=convert.timestamp(action.start_time),
            until_time=convert.timestamp(action.until_time),
            detail=action.reason,
            enforcement_action_id=action.action_id,
        )
        automated = action.automated
    else:
        ended = {
            EnforcementEvent.LIFT: "lifted early",
            EnforcementEvent.REVERSE: "reversed as wrong",
            EnforcementEvent.EXPIRE: "expired at its end time",
        }[event]
        facts = f"Enforcement action {action.action_id} ({what} on account {action.user.user_id}) {ended}."
        if action.end_reason:
            facts += f" {action.end_reason}"
        taken = common_pb2.ActionTaken(
            type=common_pb2.ACTION_TYPE_ENFORCEMENT_LIFTED,
            action_time=convert.timestamp(at),
            detail=action.end_reason or ended,
            enforcement_action_id=action.action_id,
        )
        automated = event is EnforcementEvent.EXPIRE
    return reporting_pb2.IncidentInput(
        external_id=external_id(action.action_id, event),
        tenant_id=action.user.tenant_id,
        source=reporting_pb2.INCIDENT_SOURCE_IDENTITY,
        category=reporting_pb2.INCIDENT_CATEGORY_ENFORCEMENT_ACTION,
        legal_basis=[
            common_pb2.LegalBasis(instrument=b.instrument, article=b.article, paragraph=b.paragraph, note=b.note)
            for b in action.legal_basis
        ],
        facts=facts,
        user=common_pb2.UserRef(tenant_id=action.user.tenant_id, user_id=action.user.user_id),
        action=taken,
        automated_detection=automated,
        automated_decision=automated,
        detect_time=convert.timestamp(at),
        related=[
            reporting_pb2.RelatedRecord(kind=reporting_pb2.RELATED_RECORD_KIND_INCIDENT, id=incident_id)
            for incident_id in action.evidence_incident_ids
        ],
    )


async def report_enforcement(
    conn: Any, action: EnforcementAction, event: EnforcementEvent, at: datetime, origin: Principal
) -> uuid.UUID:
    """Queues the incident for `event` in the caller's open transaction; returns the outbox event id."""
    return await report_incident(conn, enforcement_incident(action, event, at), schema=SCHEMA, origin=origin)
