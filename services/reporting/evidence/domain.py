"""Evidence, its holds and its preservation state; who may see it.

Pure values and rules: no grpc, no SQL. Enumerations carry the proto enum
names without their prefix, in lower case (EVIDENCE_STATE_HELD is "held").

The state is derived, never stored: from the release time, the end of the
preservation period (`retain_until`) and the holds, at a given instant.
"""

from __future__ import annotations

import enum
import hashlib
import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime

from avgate.kernel.canonical import canonical_json
from avgate.kernel.principal import Principal, Role
from avgate.ledger.entry import LedgerEntry
from services.reporting.domain import Route, in_scope
from services.reporting.evidence.crypto import SealedKey

MAX_CHUNK = 1024 * 1024
"""The most bytes one upload or read message carries."""


class EvidenceState(enum.Enum):
    # Never stored: evidence is recorded only once its upload is complete and verified.
    UPLOADING = "uploading"
    PRESERVED = "preserved"
    HELD = "held"
    RELEASABLE = "releasable"
    RELEASED = "released"


@dataclass(frozen=True)
class UploadMetadata:
    """The first message of an upload."""

    request_id: str
    incident_id: str
    media_type: str
    size_bytes: int
    sha256: str
    file_name: str = ""
    description: str = ""

    def fingerprint(self) -> bytes:
        """What a retry with the same request id must repeat exactly."""
        return _digest(
            {
                "incident_id": self.incident_id,
                "media_type": self.media_type,
                "size_bytes": self.size_bytes,
                "sha256": self.sha256,
                "file_name": self.file_name,
                "description": self.description,
            }
        )


@dataclass(frozen=True)
class EvidenceHold:
    hold_id: str
    evidence_id: str
    request_id: str
    request_hash: bytes
    reason: str
    placed_by: str
    placed_by_role: Role
    create_time: datetime
    until_time: datetime | None = None
    lift_time: datetime | None = None
    lift_reason: str = ""
    lifted_by: str = ""

    def active(self, now: datetime) -> bool:
        return self.lift_time is None and (self.until_time is None or now < self.until_time)


@dataclass(frozen=True)
class LinkedIncident:
    """An incident the evidence is attached to, with the routes that decide regulator scope."""

    incident_id: str
    routes: tuple[Route, ...]


@dataclass(frozen=True)
class Evidence:
    evidence_id: str
    tenant_id: str
    sha256: str
    """Lower-case hex SHA-256 of the plaintext: the evidence's address within its tenant."""
    size_bytes: int
    media_type: str
    file_name: str
    description: str
    retain_until: datetime
    attached_by: str
    create_time: datetime
    blob_name: str
    sealed_key: SealedKey | None
    """The wrapped data key; None once released (crypto-shredded)."""
    ledger_entry_id: uuid.UUID
    incidents: tuple[LinkedIncident, ...] = ()
    holds: tuple[EvidenceHold, ...] = ()
    release_time: datetime | None = None
    release_reason: str = ""
    released_by: str = ""

    @property
    def incident_ids(self) -> tuple[str, ...]:
        return tuple(i.incident_id for i in self.incidents)

    def state(self, now: datetime) -> EvidenceState:
        if self.release_time is not None:
            return EvidenceState.RELEASED
        if now < self.retain_until:
            return EvidenceState.PRESERVED
        if any(h.active(now) for h in self.holds):
            return EvidenceState.HELD
        return EvidenceState.RELEASABLE

    def release_blockers(self, now: datetime) -> list[str]:
        """Why it may not be released now (empty: it may)."""
        blockers = []
        if now < self.retain_until:
            blockers.append(f"it is preserved until {_time(self.retain_until)}")
        for hold in self.holds:
            if hold.active(now):
                until = f"until {_time(hold.until_time)}" if hold.until_time else "until lifted"
                blockers.append(f"hold {hold.hold_id} is active ({until})")
        return blockers


@dataclass(frozen=True)
class EvidenceView:
    """Evidence as one caller sees it at one instant."""

    evidence: Evidence
    state: EvidenceState
    incident_ids: tuple[str, ...]
    """The attached incidents this caller may see (a regulator: those in its scope)."""


@dataclass(frozen=True)
class Attachment:
    """One successful AttachEvidence call: the idempotency record of (tenant, request id)."""

    tenant_id: str
    request_id: str
    evidence_id: str
    incident_id: str
    request_hash: bytes
    attached_by: str
    attach_time: datetime
    ledger_entry_id: uuid.UUID


@dataclass(frozen=True)
class AttachPlan:
    """What one attach writes in one transaction.

    With `new_evidence`, the evidence is stored for the first time; without,
    the attachment links the live evidence `attachment.evidence_id` (the same
    bytes within the tenant) and extends its preservation to `retain_until`
    when that is later.
    """

    attachment: Attachment
    audit: LedgerEntry
    retain_until: datetime
    new_evidence: Evidence | None = None


@dataclass(frozen=True)
class PlaceHold:
    hold: EvidenceHold
    audit: LedgerEntry


@dataclass(frozen=True)
class LiftHold:
    hold_id: str
    lift_time: datetime
    reason: str
    lifted_by: str
    audit: LedgerEntry


@dataclass(frozen=True)
class Release:
    """Release: the wrapped data key is destroyed with the change; the object is deleted after commit."""

    release_time: datetime
    reason: str
    released_by: str
    audit: LedgerEntry


EvidenceChange = PlaceHold | LiftHold | Release


class RequestIdTaken(Exception):
    """A store found (tenant, request id) taken while writing (a concurrent retry)."""


class StalePlan(Exception):
    """What an attach plan assumed changed before it was written (a concurrent upload or release)."""


# --------------------------------------------------------------------------- who sees what


def may_see(caller: Principal, evidence: Evidence) -> bool:
    """Metadata: the owning provider, regulators whose scope covers an attached incident, operators."""
    effective = caller.effective
    if effective.role is Role.OPERATOR:
        return True
    if effective.role is Role.PROVIDER:
        return evidence.tenant_id == effective.tenant_id
    if effective.role is Role.REGULATOR:
        return any(in_scope(effective.regulator_scope, i.routes) for i in evidence.incidents)
    return False


def visible_incident_ids(caller: Principal, evidence: Evidence) -> tuple[str, ...]:
    effective = caller.effective
    if effective.role is Role.REGULATOR:
        return tuple(i.incident_id for i in evidence.incidents if in_scope(effective.regulator_scope, i.routes))
    return evidence.incident_ids


def view(caller: Principal, evidence: Evidence, now: datetime) -> EvidenceView:
    return EvidenceView(evidence, evidence.state(now), visible_incident_ids(caller, evidence))


# --------------------------------------------------------------------------- ids and digests


def new_evidence_id() -> str:
    return "evd" + uuid.uuid4().hex


def new_hold_id() -> str:
    return "hold" + uuid.uuid4().hex


def new_blob_name() -> str:
    """Random, so the store's names say nothing about the content or the tenant."""
    return uuid.uuid4().hex


def hold_fingerprint(reason: str, until_time: datetime | None) -> bytes:
    return _digest({"reason": reason, "until_time": _time(until_time) if until_time else None})


def _digest(document: dict[str, object]) -> bytes:
    return hashlib.sha256(canonical_json(document)).digest()


def _time(value: datetime) -> str:
    return value.astimezone(UTC).isoformat(timespec="seconds").replace("+00:00", "Z")


def routes_of(departments: Sequence[str], regions: Sequence[str]) -> tuple[Route, ...]:
    """Routes as incidents store them: every department in every region."""
    return tuple(Route(d, r) for d in departments for r in regions)
