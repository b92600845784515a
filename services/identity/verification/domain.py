"""Verification's domain: flow states, consents, erasures and the subject's
format rules, as plain values (no SQL, no proto).

`FlowRecord` and `ConsentRecord` are what the store keeps: personal data only
as field ciphertexts and blind-index digests. `Flow` and `Consent` are what
callers see: masked values computed on read from the decrypted fields.
"""

from __future__ import annotations

import enum
import uuid
from dataclasses import dataclass
from datetime import date, datetime, timedelta

from avgate.kernel import legal
from avgate.kernel.errors import FieldViolation, InvalidArgument
from avgate.kernel.legal import LegalBasis
from services.identity.documents import (
    parse_credit_code,
    parse_individual_name,
    parse_mobile,
    parse_organization_code,
    parse_organization_name,
    parse_resident_id,
)
from services.identity.domain import (
    ADULT_AGE,
    PIPL_29,
    PIPL_31,
    SubjectType,
    UserRef,
    VerificationLevel,
    VerificationMethod,
)
from services.identity.vault import (
    IndexKind,
    Masked,
    mask_credit_code,
    mask_organization_code,
    mask_resident_id,
)

FLOW_TTL = timedelta(days=1)
MAX_TEXT_VERSION = 64
MAX_ERASURE_REASON = 500
SMS_TEXT = "【avgate】您的验证码是 {code}, {minutes} 分钟内有效。请勿告知他人。"

# The citations verification's ledger entries carry.
VERIFICATION_BASIS = legal.ART_8
SENSITIVE_CONSENT_BASIS = PIPL_29.cite()
GUARDIAN_CONSENT_BASIS = PIPL_31.cite()
ERASURE_BASIS = LegalBasis(legal.PIPL, "47").cite()
REINDEX_BASIS = LegalBasis(legal.PIPL, "51").cite()  # security measures for personal information


class FlowState(enum.Enum):
    AWAITING_CODE = "awaiting_code"
    CODE_CONFIRMED = "code_confirmed"
    AWAITING_GUARDIAN_CONSENT = "awaiting_guardian_consent"
    COMPLETED = "completed"
    FAILED = "failed"
    EXPIRED = "expired"


FINISHED = (FlowState.COMPLETED, FlowState.FAILED, FlowState.EXPIRED)


class FailureReason(enum.Enum):
    IDENTITY_MISMATCH = "identity_mismatch"
    TOO_MANY_ATTEMPTS = "too_many_attempts"
    IDENTITY_IN_USE = "identity_in_use"
    GUARDIAN_CONSENT_FAILED = "guardian_consent_failed"
    CONSENT_WITHDRAWN = "consent_withdrawn"


class ConsentPurpose(enum.Enum):
    SENSITIVE_PERSONAL_INFORMATION = "sensitive_personal_information"
    SERVICE_AGREEMENT = "service_agreement"
    GUARDIAN = "guardian"


class GuardianRelationship(enum.Enum):
    PARENT = "parent"
    OTHER_LEGAL_GUARDIAN = "other_legal_guardian"


class KeyTaken(Exception):
    """Another request holds this (tenant, idempotency key) already (a concurrent retry)."""


# --------------------------------------------------------------------------- input


@dataclass(frozen=True)
class IdentityInput:
    """Raw input as the caller sent it (individual: name, resident ID, mobile;
    organisation: name, credit code or legacy code, contact mobile)."""

    subject_type: SubjectType | None
    name: str = ""
    id_number: str = ""
    legacy_code: bool = False
    mobile: str = ""


@dataclass(frozen=True)
class Subject:
    """Parsed and normalised; never logged (repr hides the values)."""

    subject_type: SubjectType
    id_kind: str
    name: str
    id_number: str
    mobile: str
    birth_date: date | None

    def __repr__(self) -> str:
        return f"Subject({self.subject_type.value}, {self.id_kind}, <redacted>)"


@dataclass(frozen=True)
class GuardianInput:
    idempotency_key: str
    flow_id: str
    guardian: IdentityInput | None
    relationship: GuardianRelationship | None
    text_version: str
    consent_time: datetime | None


# --------------------------------------------------------------------------- what callers see


@dataclass(frozen=True)
class Flow:
    flow_id: str
    user: UserRef
    subject_type: SubjectType
    state: FlowState
    level_reached: VerificationLevel
    methods: tuple[VerificationMethod, ...]
    masked_name: Masked | None
    masked_id_number: Masked | None
    masked_mobile: Masked | None
    guardian_consent_required: bool
    failure_reason: FailureReason | None
    create_time: datetime
    expire_time: datetime
    finish_time: datetime | None


@dataclass(frozen=True)
class Consent:
    consent_id: str
    user: UserRef
    purpose: ConsentPurpose
    text_version: str
    consent_time: datetime
    withdraw_time: datetime | None
    masked_guardian_name: Masked | None
    create_time: datetime


@dataclass(frozen=True)
class Erasure:
    erasure_id: str
    user: UserRef
    erase_time: datetime
    ledger_entry_id: str


@dataclass(frozen=True)
class CodeSent:
    flow: Flow
    code_expire_time: datetime
    next_send_time: datetime


# --------------------------------------------------------------------------- what the store keeps


@dataclass(frozen=True)
class FlowRecord:
    """A stored flow: the subject's fields sealed with the flow's data key, looked up by blind indexes."""

    flow_id: str
    tenant_id: str
    user_id: str
    idempotency_key: str
    request_digest: bytes
    subject_type: str
    id_kind: str
    state: str
    level_reached: str
    methods: tuple[str, ...]
    name_ct: bytes | None
    id_number_ct: bytes | None
    mobile_ct: bytes | None
    index_version: str | None
    id_index: bytes | None
    phone_index: bytes | None
    guardian_consent_required: bool
    create_time: datetime
    expire_time: datetime
    update_time: datetime
    guardian_consent_id: str | None = None
    minor_until: date | None = None
    failure_reason: str | None = None
    complete_idempotency_key: str | None = None
    verifier_reference: str | None = None
    finish_time: datetime | None = None

    @property
    def user(self) -> UserRef:
        return UserRef(self.tenant_id, self.user_id)


@dataclass(frozen=True)
class FlowUpdate:
    """The fields of a flow one step changes; None leaves a field as it is."""

    state: FlowState | None = None
    level_reached: VerificationLevel | None = None
    methods: tuple[str, ...] | None = None
    guardian_consent_id: str | None = None
    failure_reason: FailureReason | None = None
    finish_time: datetime | None = None
    complete_idempotency_key: str | None = None
    verifier_reference: str | None = None


@dataclass(frozen=True)
class ConsentRecord:
    """A stored consent; a guardian's consent holds the guardian's fields sealed with its own data key."""

    consent_id: str
    tenant_id: str
    user_id: str
    idempotency_key: str
    request_hash: bytes
    purpose: str
    text_version: str
    consent_time: datetime
    create_time: datetime
    ledger_entry_id: uuid.UUID
    withdraw_time: datetime | None = None
    withdraw_idempotency_key: str | None = None
    erasure_id: str | None = None
    flow_id: str | None = None
    relationship: str | None = None
    guardian_name_ct: bytes | None = None
    guardian_id_number_ct: bytes | None = None
    guardian_mobile_ct: bytes | None = None

    @property
    def user(self) -> UserRef:
        return UserRef(self.tenant_id, self.user_id)


@dataclass(frozen=True)
class ErasureRecord:
    erasure: Erasure
    idempotency_key: str
    cause: str
    reason: str


@dataclass(frozen=True)
class VerifiedAccount:
    """What a completed verification records on the account."""

    subject_type: str
    level: VerificationLevel
    methods: tuple[str, ...]
    verify_time: datetime
    minor_until: date | None
    guardian_consent_recorded: bool


# --------------------------------------------------------------------------- rules


def adult_on(birth: date) -> date:
    """The day someone born on `birth` turns 18."""
    try:
        return birth.replace(year=birth.year + ADULT_AGE)
    except ValueError:  # 29 February: 1 March of the common year (documents.age_on)
        return date(birth.year + ADULT_AGE, 3, 1)


def parse_subject(raw: IdentityInput, prefix: str, today: date) -> Subject:
    """Format rules of documents.py; InvalidArgument naming the first bad field (never its value)."""
    if raw.subject_type is SubjectType.INDIVIDUAL:
        name = parse_individual_name(raw.name, f"{prefix}.name").value
        ric = parse_resident_id(raw.id_number, f"{prefix}.resident_id_number", today=today)
        mobile = parse_mobile(raw.mobile, f"{prefix}.mobile").e164
        return Subject(SubjectType.INDIVIDUAL, IndexKind.RESIDENT_ID, name, ric.value, mobile, ric.birth_date)
    if raw.subject_type is SubjectType.ORGANIZATION:
        if raw.legacy_code:
            code = parse_organization_code(raw.id_number, "organization.legacy_organization_code").value
            kind = IndexKind.ORGANIZATION_CODE
        else:
            code = parse_credit_code(raw.id_number, "organization.unified_social_credit_code").value
            kind = IndexKind.CREDIT_CODE
        name = parse_organization_name(raw.name, "organization.organization_name").value
        mobile = parse_mobile(raw.mobile, "organization.contact_mobile").e164
        return Subject(SubjectType.ORGANIZATION, kind, name, code, mobile, None)
    raise InvalidArgument(FieldViolation("subject", "exactly one of individual or organization is required"))


def mask_id(kind: str, value: str) -> Masked:
    if kind == IndexKind.CREDIT_CODE:
        return mask_credit_code(value)
    if kind == IndexKind.ORGANIZATION_CODE:
        return mask_organization_code(value)
    return mask_resident_id(value)
