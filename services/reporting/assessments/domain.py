"""Security assessments (Art. 10): the register's values and the incident that reports each one.

Pure values: no grpc, no SQL. Enumerations carry the proto enum names
without their prefix, in lower case (ASSESSED_TRAIT_DEEP_LEARNING is
"deep_learning"), so the servicer translates by name.
"""

from __future__ import annotations

import enum
import hashlib
import uuid
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from avgate.kernel.canonical import canonical_json
from avgate.kernel.legal import ART_10
from services.reporting.domain import EvidenceRef, Route
from services.reporting.incidents.domain import IncidentQuery

LEGAL_BASIS = ART_10
MAX_FEATURE = 200
MAX_FEATURE_DESCRIPTION = 5000
MAX_ASSESSOR = 200
MAX_CONCLUSION_TEXT = 10_000
MAX_REQUEST_ID = 128


class AssessedTrait(enum.Enum):
    DEEP_LEARNING = "deep_learning"
    VIRTUAL_REALITY = "virtual_reality"
    MEDIA_ATTRIBUTES = "media_attributes"
    SOCIAL_MOBILIZATION = "social_mobilization"


class AssessmentConclusion(enum.Enum):
    PASSED = "passed"
    PASSED_WITH_CONDITIONS = "passed_with_conditions"
    FAILED = "failed"


_TRAIT_WORDS = {
    AssessedTrait.DEEP_LEARNING: "built on deep learning",
    AssessedTrait.VIRTUAL_REALITY: "built on virtual reality",
    AssessedTrait.MEDIA_ATTRIBUTES: "has media attributes",
    AssessedTrait.SOCIAL_MOBILIZATION: "has social-mobilisation functions",
}
_CONCLUSION_WORDS = {
    AssessmentConclusion.PASSED: "passed: the feature may launch",
    AssessmentConclusion.PASSED_WITH_CONDITIONS: "passed with conditions: the feature may launch once they are met",
    AssessmentConclusion.FAILED: "failed: the feature may not launch",
}


@dataclass(frozen=True)
class AssessmentInput:
    """What a caller sends to record an assessment (before validation).

    Traits hold None for an unset or unknown value (the validation names it).
    """

    tenant_id: str
    feature: str
    feature_description: str
    traits: tuple[AssessedTrait | None, ...]
    assessment_time: datetime | None
    assessor: str
    conclusion: AssessmentConclusion | None
    conclusion_text: str
    document_sha256: str
    document: EvidenceRef | None = None
    launch_time: datetime | None = None


@dataclass(frozen=True)
class SecurityAssessment:
    assessment_id: str
    tenant_id: str
    feature: str
    feature_description: str
    traits: tuple[AssessedTrait, ...]
    assessment_time: datetime
    assessor: str
    conclusion: AssessmentConclusion
    conclusion_text: str
    document_sha256: str
    document: EvidenceRef | None
    launch_time: datetime | None
    incident_id: str
    create_time: datetime
    request_id: str
    request_hash: bytes
    """SHA-256 of the submitted content: a retry with another hash is a conflict."""
    ledger_entry_id: uuid.UUID
    routes: tuple[Route, ...] = ()
    """Where its incident is routed: who among the regulators sees it (not part of the record)."""


@dataclass(frozen=True)
class AssessmentQuery:
    """A listing as the store runs it: what the caller may see of the incidents, plus the time range."""

    incidents: IncidentQuery
    assessed_from: datetime | None = None
    assessed_before: datetime | None = None


class RequestIdTaken(Exception):
    """A store found (tenant, request id) taken while writing (a concurrent record)."""


def new_assessment_id() -> str:
    return "asm" + uuid.uuid4().hex


def _time(value: datetime | None) -> str | None:
    if value is None:
        return None
    return value.astimezone(UTC).isoformat(timespec="microseconds").replace("+00:00", "Z")


def request_document(item: AssessmentInput, tenant_id: str) -> dict[str, Any]:
    document = item.document
    return {
        "tenant_id": tenant_id,
        "feature": item.feature,
        "feature_description": item.feature_description,
        "traits": [t.value for t in item.traits if t is not None],
        "assessment_time": _time(item.assessment_time),
        "assessor": item.assessor,
        "conclusion": item.conclusion.value if item.conclusion is not None else None,
        "conclusion_text": item.conclusion_text,
        "document_sha256": item.document_sha256,
        "document": None
        if document is None
        else {"sha256": document.sha256, "size_bytes": document.size_bytes, "media_type": document.media_type},
        "launch_time": _time(item.launch_time),
    }


def request_hash(item: AssessmentInput, tenant_id: str) -> bytes:
    return hashlib.sha256(canonical_json(request_document(item, tenant_id))).digest()


def incident_facts(assessment: SecurityAssessment, max_length: int) -> str:
    """The statement of facts of the incident that reports an assessment, at most `max_length` characters."""
    lines = [
        f"Security assessment {assessment.assessment_id} (Art. 10) of the feature {assessment.feature!r}, "
        f"carried out by {assessment.assessor} on {_time(assessment.assessment_time)}.",
        "The feature " + ", ".join(_TRAIT_WORDS[t] for t in assessment.traits) + ".",
        f"Conclusion: {_CONCLUSION_WORDS[assessment.conclusion]}.",
        f"Assessment document SHA-256: {assessment.document_sha256}.",
    ]
    if assessment.launch_time is not None:
        lines.append(f"Planned or actual launch: {_time(assessment.launch_time)}.")
    facts = "\n".join(lines)
    if assessment.conclusion_text:
        room = max_length - len(facts) - len("\nConclusion text: ")
        text = assessment.conclusion_text
        if len(text) > room:
            text = text[: max(0, room - 1)] + "…"
        facts += f"\nConclusion text: {text}"
    return facts[:max_length]
