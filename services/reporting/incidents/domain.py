"""Incidents: what a provider (or one of avgate's services on its behalf)
reports, where it is routed, and who may see it.

Pure values and rules: no grpc, no SQL. Enumerations carry the proto enum
names without their prefix, in lower case (INCIDENT_CATEGORY_RUMOR is
"rumor"), so wire.py translates by name. Legal bases are the kernel's
(avgate.kernel.legal.LegalBasis); routes, evidence refs and the regulator-scope
rule are shared with the other reporting records (services.reporting.domain).
"""

from __future__ import annotations

import enum
import hashlib
import uuid
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from avgate.kernel.canonical import canonical_json
from avgate.kernel.legal import LegalBasis
from avgate.kernel.principal import DEPARTMENTS, NATIONAL
from avgate.ledger.entry import LedgerEntry
from services.reporting.domain import EvidenceRef, Route

# Fixed namespace so an incident's outbox event ids are the same on every retry.
_EVENT_NAMESPACE = uuid.UUID("6f0c8a52-1d0e-4f43-9a57-3e0b7c1d2a90")


class IncidentCategory(enum.Enum):
    PROHIBITED_CONTENT = "prohibited_content"
    UNMARKED_SYNTHETIC_CONTENT = "unmarked_synthetic_content"
    RUMOR = "rumor"
    FAKE_NEWS = "fake_news"
    ENFORCEMENT_ACTION = "enforcement_action"
    COMPLAINT_ESCALATION = "complaint_escalation"
    SECURITY_ASSESSMENT = "security_assessment"
    SECURITY_EVENT = "security_event"
    MINOR_PROTECTION = "minor_protection"
    OTHER = "other"


class IncidentSource(enum.Enum):
    SCREENING = "screening"
    IDENTITY = "identity"
    COMPLAINTS = "complaints"
    PROVIDER = "provider"
    OPERATOR = "operator"


class IncidentStatus(enum.Enum):
    RECORDED = "recorded"
    DELIVERED = "delivered"
    ACKNOWLEDGED = "acknowledged"
    DELIVERY_FAILED = "delivery_failed"


class IncidentChange(enum.Enum):
    """What happened to an incident, as the regulator feed records it (its stored `kind`)."""

    CREATED = "incident_created"
    UPDATED = "incident_updated"


@dataclass(frozen=True)
class ContentRef:
    content_id: str
    tenant_id: str = ""
    uri: str = ""
    sha256: str = ""
    media_type: str = ""


@dataclass(frozen=True)
class UserRef:
    user_id: str
    tenant_id: str = ""


@dataclass(frozen=True)
class ActionTaken:
    type: str | None
    """Proto ActionType name without prefix, lower case ("content_removed"); None when unset."""
    action_time: datetime | None = None
    until_time: datetime | None = None
    detail: str = ""
    enforcement_action_id: str = ""


@dataclass(frozen=True)
class RelatedRecord:
    kind: str | None
    """Proto RelatedRecordKind name without prefix, lower case; None when unset."""
    id: str


@dataclass(frozen=True)
class Acknowledgement:
    department: str
    region_code: str
    acknowledged_by: str
    acknowledge_time: datetime
    note: str = ""
    request_id: str = ""


@dataclass(frozen=True)
class IncidentInput:
    """What a caller sends to create an incident (before validation)."""

    external_id: str
    category: IncidentCategory | None
    source: IncidentSource | None
    facts: str
    tenant_id: str = ""
    prohibited_type: str | None = None
    legal_basis: tuple[LegalBasis, ...] = ()
    content: tuple[ContentRef, ...] = ()
    user: UserRef | None = None
    action: ActionTaken | None = None
    automated_detection: bool = False
    automated_decision: bool = False
    detect_time: datetime | None = None
    region_code: str = ""
    evidence: tuple[EvidenceRef, ...] = ()
    related: tuple[RelatedRecord, ...] = ()


@dataclass(frozen=True)
class Incident:
    incident_id: str
    tenant_id: str
    content_hash: bytes
    """SHA-256 of the canonical JSON of the submitted content: equal hashes, same submission."""
    input: IncidentInput
    routes: tuple[Route, ...]
    status: IncidentStatus
    create_time: datetime
    update_time: datetime
    ledger_entry_id: uuid.UUID
    acknowledgements: tuple[Acknowledgement, ...] = ()

    @property
    def external_id(self) -> str:
        return self.input.external_id

    @property
    def departments(self) -> tuple[str, ...]:
        return tuple(dict.fromkeys(r.department for r in self.routes))

    @property
    def region_codes(self) -> tuple[str, ...]:
        return tuple(dict.fromkeys(r.region_code for r in self.routes))


def new_incident_id() -> str:
    return "inc" + uuid.uuid4().hex


def outbox_event_id(incident_id: str, department: str) -> uuid.UUID:
    """The same incident and department always give the same event id (the delivery's idempotency key)."""
    return uuid.uuid5(_EVENT_NAMESPACE, f"{incident_id}/{department}")


# --------------------------------------------------------------------------- canonical forms


def _time(value: datetime | None) -> str | None:
    if value is None:
        return None
    return value.astimezone(UTC).isoformat(timespec="microseconds").replace("+00:00", "Z")


def _enum(value: enum.Enum | None) -> str | None:
    return value.value if value is not None else None


def input_document(incident: IncidentInput, tenant_id: str) -> dict[str, Any]:
    """The submitted content as plain JSON: what the idempotency hash and the report carry."""
    action = incident.action
    return {
        "external_id": incident.external_id,
        "tenant_id": tenant_id,
        "source": _enum(incident.source),
        "category": _enum(incident.category),
        "prohibited_type": incident.prohibited_type,
        "legal_basis": [b.to_json() for b in incident.legal_basis],
        "facts": incident.facts,
        "content": [
            {"content_id": c.content_id, "uri": c.uri, "sha256": c.sha256, "media_type": c.media_type}
            for c in incident.content
        ],
        "user_id": incident.user.user_id if incident.user is not None else None,
        "action": None
        if action is None
        else {
            "type": action.type,
            "action_time": _time(action.action_time),
            "until_time": _time(action.until_time),
            "detail": action.detail,
            "enforcement_action_id": action.enforcement_action_id,
        },
        "automated_detection": incident.automated_detection,
        "automated_decision": incident.automated_decision,
        "detect_time": _time(incident.detect_time),
        "region_code": incident.region_code,
        "evidence": [
            {"sha256": e.sha256, "size_bytes": e.size_bytes, "media_type": e.media_type} for e in incident.evidence
        ],
        "related": [{"kind": r.kind, "id": r.id} for r in incident.related],
    }


def content_hash(incident: IncidentInput, tenant_id: str) -> bytes:
    return hashlib.sha256(canonical_json(input_document(incident, tenant_id))).digest()


def report_document(incident: Incident) -> dict[str, Any]:
    """The incident report as the authorities receive it (canonical JSON via `report_bytes`)."""
    document = input_document(incident.input, incident.tenant_id)
    document.update(
        {
            "incident_id": incident.incident_id,
            "routes": [{"department": r.department, "region_code": r.region_code} for r in incident.routes],
            "create_time": _time(incident.create_time),
            "ledger_entry_id": str(incident.ledger_entry_id),
            "content_sha256": incident.content_hash.hex(),
        }
    )
    return document


def report_bytes(incident: Incident) -> bytes:
    return canonical_json(report_document(incident))


# --------------------------------------------------------------------------- routing


DEFAULT_ROUTING: Mapping[IncidentCategory, tuple[str, ...]] = {
    IncidentCategory.PROHIBITED_CONTENT: ("cyberspace", "radio_television"),
    IncidentCategory.UNMARKED_SYNTHETIC_CONTENT: ("cyberspace",),
    IncidentCategory.RUMOR: ("cyberspace",),
    IncidentCategory.ENFORCEMENT_ACTION: ("cyberspace", "culture_tourism"),
    IncidentCategory.COMPLAINT_ESCALATION: ("cyberspace",),
    # Assessment reports go to the cyberspace department and the public security organs (Provisions on
    # Security Assessment of Internet Information Services with Public-Opinion Attributes or
    # Social-Mobilisation Capacity, 2018, Art. 7).
    IncidentCategory.SECURITY_ASSESSMENT: ("cyberspace", "public_security"),
}
FALLBACK_DEPARTMENTS: tuple[str, ...] = ("cyberspace",)


@dataclass(frozen=True)
class RoutingRules:
    """Which departments receive which categories; the region comes from the incident.

    Categories without a rule go to `fallback` (the cyberspace department
    coordinates online content, so nothing is left unrouted).
    """

    departments: Mapping[IncidentCategory, tuple[str, ...]] = field(default_factory=lambda: dict(DEFAULT_ROUTING))
    fallback: tuple[str, ...] = FALLBACK_DEPARTMENTS

    def __post_init__(self) -> None:
        for departments in (*self.departments.values(), self.fallback):
            if not departments:
                raise ValueError("every routing rule names at least one department")
            unknown = [d for d in departments if d not in DEPARTMENTS]
            if unknown:
                raise ValueError(f"unknown departments in routing rules: {', '.join(unknown)}")

    @classmethod
    def with_overrides(cls, overrides: Mapping[str, Sequence[str]]) -> RoutingRules:
        """The defaults with some categories (by name, "rumor") routed elsewhere."""
        rules = dict(DEFAULT_ROUTING)
        for name, departments in overrides.items():
            try:
                category = IncidentCategory(name)
            except ValueError as exc:
                raise ValueError(f"unknown incident category in routing rules: {name!r}") from exc
            rules[category] = tuple(departments)
        return cls(rules)

    def routes(self, category: IncidentCategory, region_code: str) -> tuple[Route, ...]:
        region = region_code or NATIONAL
        return tuple(Route(d, region) for d in self.departments.get(category, self.fallback))


# --------------------------------------------------------------------------- listings


@dataclass(frozen=True)
class IncidentQuery:
    """What a listing may return; None means no restriction on that axis.

    Departments and region prefixes are each a set of alternatives; every
    axis must hold (routes are every department in every region, so checking them
    separately is the same as checking them per route).
    """

    tenant_ids: tuple[str, ...] | None = None
    departments: tuple[str, ...] | None = None
    region_prefix_sets: tuple[tuple[str, ...], ...] = ()
    categories: tuple[IncidentCategory, ...] | None = None
    statuses: tuple[IncidentStatus, ...] | None = None
    sources: tuple[IncidentSource, ...] | None = None
    created_from: datetime | None = None
    created_before: datetime | None = None
    content_id: str | None = None
    user_id: str | None = None

    def matches(self, incident: Incident) -> bool:
        """The rule the SQL store implements in SQL; the in-memory store uses it as is."""
        if self.tenant_ids is not None and incident.tenant_id not in self.tenant_ids:
            return False
        if self.departments is not None and not set(self.departments) & set(incident.departments):
            return False
        for prefixes in self.region_prefix_sets:
            if not any(code.startswith(p) for code in incident.region_codes for p in prefixes):
                return False
        if self.categories is not None and incident.input.category not in self.categories:
            return False
        if self.statuses is not None and incident.status not in self.statuses:
            return False
        if self.sources is not None and incident.input.source not in self.sources:
            return False
        if self.created_from is not None and incident.create_time < self.created_from:
            return False
        if self.created_before is not None and incident.create_time >= self.created_before:
            return False
        if self.content_id is not None and all(c.content_id != self.content_id for c in incident.input.content):
            return False
        user = incident.input.user
        return self.user_id is None or (user is not None and user.user_id == self.user_id)


@dataclass(frozen=True)
class IncidentFilter:
    """What a caller asks a listing for (the service narrows it to what the caller may see)."""

    categories: tuple[IncidentCategory, ...] = ()
    departments: tuple[str, ...] = ()
    region_codes: tuple[str, ...] = ()
    tenant_ids: tuple[str, ...] = ()
    statuses: tuple[IncidentStatus, ...] = ()
    sources: tuple[IncidentSource, ...] = ()
    created_from: datetime | None = None
    created_before: datetime | None = None
    content_id: str = ""
    user_id: str = ""


@dataclass(frozen=True)
class AuthorityReport:
    """One report to hand to an authority; the store writes it to the outbox."""

    event_id: uuid.UUID
    destination: str
    payload: bytes


@dataclass(frozen=True)
class NewIncident:
    """An incident with everything its creation writes in the same transaction."""

    incident: Incident
    audit: LedgerEntry
    reports: tuple[AuthorityReport, ...]


class ExternalIdTaken(Exception):
    """A store found the (tenant, external id) already taken while writing (a concurrent create)."""

    def __init__(self, tenant_id: str, external_id: str):
        super().__init__(f"incident {external_id!r} of tenant {tenant_id!r} exists already")
        self.tenant_id = tenant_id
        self.external_id = external_id
