"""Deliveries as callers see them, and the rule that turns delivery states
into an incident's status.

Pure values and rules: no grpc, no SQL. A delivery is one outbox event of
reporting's (one report to one department), seen together with what
reporting records about it: its subject, its attempts and its replays. Its
id is the outbox event id, which is also the idempotency key the authority
receives.
"""

from __future__ import annotations

import enum
import uuid
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from services.reporting.incidents.domain import IncidentStatus

MAX_ATTEMPTS_SHOWN = 20


class DeliveryState(enum.Enum):
    """Mirrors avgate.reporting.v1.DeliveryState (names without the prefix, lower case)."""

    PENDING = "pending"
    IN_FLIGHT = "in_flight"
    DELIVERED = "delivered"
    DEAD_LETTER = "dead_letter"


class AdapterKind(enum.Enum):
    """Mirrors avgate.reporting.v1.AdapterKind."""

    HTTP_JSON = "http_json"
    FILE_DROP = "file_drop"


class AttemptResult(enum.Enum):
    DELIVERED = "delivered"
    RETRY = "retry"
    DEAD = "dead"


@dataclass(frozen=True)
class Endpoint:
    """Where a delivery goes. Endpoints are configured per department
    (REPORTING_AUTHORITIES), so the department's name is the endpoint id."""

    department: str
    region_code: str
    adapter: AdapterKind | None = None

    @property
    def endpoint_id(self) -> str:
        return self.department


@dataclass(frozen=True)
class Attempt:
    attempt: int
    start_time: datetime | None
    """None when the attempt's dispatcher died before reporting it (found dead at the next claim)."""
    duration_seconds: float
    outcome: AttemptResult
    refused: bool = False
    """The destination refused it (a permanent answer), as opposed to a failure that may pass."""
    http_status: int | None = None
    error: str | None = None


@dataclass(frozen=True)
class Receipt:
    receipt_id: str
    receive_time: datetime | None
    raw_sha256: str

    @classmethod
    def from_details(cls, details: Mapping[str, Any], receive_time: datetime | None) -> Receipt:
        """From the adapter's stored receipt: HTTP gives the body's hash (and the authority's
        receipt id when it names one), a file drop the hash of the line it wrote."""
        raw = details.get("body_sha256") or details.get("line_sha256") or ""
        return cls(str(details.get("receipt_id", "")), receive_time, str(raw))


@dataclass(frozen=True)
class Delivery:
    event_id: uuid.UUID
    tenant_id: str
    endpoint: Endpoint
    subject_kind: str
    subject_id: str
    payload_sha256: str
    state: DeliveryState
    attempt_count: int
    create_time: datetime
    next_attempt_time: datetime | None = None
    attempts: tuple[Attempt, ...] = ()
    """The most recent attempts, oldest first (at most MAX_ATTEMPTS_SHOWN)."""
    receipt: Receipt | None = None
    deliver_time: datetime | None = None
    replay_count: int = 0
    last_error: str | None = None

    @property
    def delivery_id(self) -> str:
        return str(self.event_id)

    @property
    def idempotency_key(self) -> str:
        return str(self.event_id)


@dataclass(frozen=True)
class DeliveryQuery:
    """What a listing may return; None means no restriction on that axis."""

    tenant_id: str | None = None
    states: tuple[DeliveryState, ...] | None = None
    subject_id: str | None = None
    department: str | None = None
    created_from: datetime | None = None
    created_before: datetime | None = None


@dataclass(frozen=True)
class DeliveryFilter:
    """What a caller asks a listing for (the service narrows it to what the caller may see)."""

    states: tuple[DeliveryState, ...] = ()
    incident_id: str = ""
    endpoint_id: str = ""
    created_from: datetime | None = None
    created_before: datetime | None = None


@dataclass(frozen=True)
class ReplayOutcome:
    """What a replay found: nothing changes unless every delivery exists and is dead."""

    missing: tuple[uuid.UUID, ...] = ()
    not_dead: tuple[tuple[uuid.UUID, DeliveryState], ...] = ()
    replayed: tuple[Delivery, ...] = ()


def incident_status_after(current: IncidentStatus, outbox_states: Mapping[str, int]) -> IncidentStatus:
    """An incident's status given how many of its deliveries are in each outbox state.

    DELIVERY_FAILED while any is dead (an operator must act), DELIVERED once
    every one is delivered, RECORDED otherwise (still on its way, or replayed).
    ACKNOWLEDGED is the later state and stays: a regulator has it already.
    """
    if current is IncidentStatus.ACKNOWLEDGED or not any(outbox_states.values()):
        return current
    if outbox_states.get("dead", 0) > 0:
        return IncidentStatus.DELIVERY_FAILED
    if all(state == "delivered" for state, n in outbox_states.items() if n > 0):
        return IncidentStatus.DELIVERED
    return IncidentStatus.RECORDED
