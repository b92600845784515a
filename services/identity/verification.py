"""Real-name verification flows, consents and erasure (Art. 8; PIPL Art. 29, 31, 47).

A flow: StartVerification (format rules, a current sensitive-information
consent required) → SendVerificationCode → ConfirmVerificationCode
(PHONE_VERIFIED) → [RecordGuardianConsent for an under-14] →
CompleteVerification (the authoritative verifier where configured) → the
level and method reached are recorded on the account.

Personal data. Each flow's subject and each guardian is one vault record
with its own data key (record id = flow id / consent id): names, ID numbers
and mobiles are stored only as field ciphertexts, looked up by blind indexes
(per tenant), and shown only masked (computed on read). "One identity per
account" is a primary key over the blind-index digest (identity_claims), so
the DETAIL of the unique violation PostgreSQL logs holds a digest, never a
clear value. Erasure (consent withdrawn, or on request) deletes the wrapped
data keys (crypto-shredding), clears ciphertexts and blind indexes (flows,
guardians, claims, the codes' and send limits' phone digests), resets the
account to level NONE / status ERASED and writes the ledger entry in the
same transaction; the ledger never held the data and stays verifiable.

Decisions:
- A code is sent inside the transaction that issues it and records the send
  limits: when the SMS gateway fails the transaction rolls back, so no
  usable code exists, the send is not counted and no ledger entry claims a
  send (the caller gets UNAVAILABLE and asks again). Holding the limit rows
  during the bounded SMS call serialises sends to one phone, as intended.
- A wrong code is answered OK with remaining_attempts (the attempt and the
  failure count are committed); a lockout answers RESOURCE_EXHAUSTED with
  RetryInfo on the next confirmation.
- The verifier is asked only for a flow whose code was confirmed, and only
  for resident IDs and credit codes (legacy organisation codes have no
  authoritative check): outside any transaction, so a verifier that is down
  leaves the flow as it was (UNAVAILABLE), never verified.
- Flows expire FLOW_TTL after they start.

This module holds its SQL next to the use cases: the one-time codes and the
abuse limits it composes work in the caller's transaction.
"""

from __future__ import annotations

import builtins
import enum
import hashlib
import json
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, date, datetime, timedelta
from typing import Any

import sqlalchemy.exc
from sqlalchemy import and_, delete, func, or_, select, update
from sqlalchemy.dialects.postgresql import insert as pg_insert
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from avgate.kernel.errors import (
    FailedPrecondition,
    FieldChecker,
    FieldViolation,
    IdempotencyConflict,
    InvalidArgument,
    NotFound,
)
from avgate.kernel.paging import check_page_size, decode_page_token, encode_page_token, page_limit
from avgate.kernel.principal import Principal, Role
from avgate.ledger.append import append as ledger_append
from avgate.ledger.entry import LedgerEntry
from services.identity.codes import CodeOutcome, OneTimeCodes, check_code_format
from services.identity.documents import (
    age_on,
    parse_credit_code,
    parse_individual_name,
    parse_mobile,
    parse_organization_code,
    parse_organization_name,
    parse_resident_id,
)
from services.identity.domain import (
    ADULT_AGE,
    GUARDIAN_CONSENT_AGE,
    AccountStatus,
    SubjectType,
    UserRef,
    VerificationLevel,
    VerificationMethod,
    status_from,
)
from services.identity.limits import AbuseLimits
from services.identity.models import (
    accounts,
    consents,
    eligibility_policies,
    erasures,
    identity_claims,
    personal_data_keys,
    send_limits,
    verification_codes,
    verification_flows,
)
from services.identity.service import MAX_KEY, IdentityService, _identifier, _text
from services.identity.sms import SmsSender
from services.identity.vault import (
    BlindIndexer,
    DataKey,
    IndexKind,
    Masked,
    Vault,
    WrappedDataKey,
    mask_credit_code,
    mask_mobile,
    mask_name,
    mask_organization_code,
    mask_organization_name,
    mask_resident_id,
)
from services.identity.verifier import IdentityVerifier

FLOW_TTL = timedelta(days=1)
MAX_TEXT_VERSION = 64
MAX_ERASURE_REASON = 500
ART_8 = "NAVIS-2019 Art. 8"
PIPL_29 = "PIPL-2021 Art. 29"
PIPL_31 = "PIPL-2021 Art. 31"
PIPL_47 = "PIPL-2021 Art. 47"
SMS_TEXT = "【avgate】您的验证码是 {code}, {minutes} 分钟内有效。请勿告知他人。"


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


# --------------------------------------------------------------------------- values


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


@dataclass(frozen=True)
class GuardianInput:
    idempotency_key: str
    flow_id: str
    guardian: IdentityInput | None
    relationship: GuardianRelationship | None
    text_version: str
    consent_time: datetime | None


def _digest(document: dict[str, Any]) -> bytes:
    return hashlib.sha256(json.dumps(document, sort_keys=True, separators=(",", ":")).encode()).digest()


def _iso(value: datetime | None) -> str | None:
    return value.astimezone(UTC).isoformat() if value is not None else None


def _adult_on(birth: date) -> date:
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


def _mask_id(kind: str, value: str) -> Masked:
    if kind == IndexKind.CREDIT_CODE:
        return mask_credit_code(value)
    if kind == IndexKind.ORGANIZATION_CODE:
        return mask_organization_code(value)
    return mask_resident_id(value)


# --------------------------------------------------------------------------- the use cases


class VerificationService:
    def __init__(
        self,
        engine: AsyncEngine,
        accounts_service: IdentityService,
        *,
        vault: Vault,
        indexer: BlindIndexer,
        codes: OneTimeCodes,
        limits: AbuseLimits,
        sms: SmsSender,
        verifier: IdentityVerifier | None,
        clock: Callable[[], datetime],
        flow_ttl: timedelta = FLOW_TTL,
    ):
        self._engine = engine
        self._accounts = accounts_service
        self._vault = vault
        self._indexer = indexer
        self._codes = codes
        self._limits = limits
        self._sms = sms
        self._verifier = verifier
        self._clock = clock
        self._flow_ttl = flow_ttl

    # ----------------------------------------------------------------- who

    @staticmethod
    def _user(caller: Principal, user: UserRef | None, check: FieldChecker, path: str = "user") -> UserRef:
        if user is None:
            check.add(path, "must be set")
            check.raise_if_any()
            raise AssertionError("unreachable")
        tenant = IdentityService._tenant(caller, user.tenant_id, f"{path}.tenant_id")
        _identifier(check, user.user_id, f"{path}.user_id", max_length=256)
        return UserRef(tenant, user.user_id)

    @staticmethod
    def _may_see(caller: Principal, tenant_id: str) -> bool:
        effective = caller.effective
        if effective.role is Role.OPERATOR:
            return True
        return effective.role is Role.PROVIDER and effective.tenant_id == tenant_id

    @staticmethod
    def _client_address(caller: Principal) -> str | None:
        return caller.effective.client_address or caller.client_address

    def _entry(
        self,
        caller: Principal,
        action: str,
        subject_type: str,
        subject_id: str,
        user: UserRef,
        data: dict[str, Any],
        basis: str = ART_8,
        reason: str = "",
        key: str = "",
    ) -> LedgerEntry:
        return LedgerEntry(
            action=action,
            subject_type=subject_type,
            subject_id=subject_id,
            actor=caller,
            legal_basis=basis,
            reason=reason,
            tenant_id=user.tenant_id,
            data={"user_id": user.user_id, **data},
            idempotency_key=key,
            occurred_at=self._clock(),
        )

    # ----------------------------------------------------------------- rows

    def _open_key(self, key_row: Any) -> DataKey | None:
        if key_row is None:
            return None
        wrapped = WrappedDataKey(key_row.kek_id, key_row.version, bytes(key_row.wrapped))
        return self._vault.open_data_key(key_row.record_id, wrapped)

    async def _key_row(self, conn: AsyncConnection, record_id: str) -> Any:
        return (
            await conn.execute(select(personal_data_keys).where(personal_data_keys.c.record_id == record_id))
        ).first()

    def _flow_from_row(self, r: Any, key: DataKey | None) -> Flow:
        masked_name = masked_id = masked_mobile = None
        subject_type = SubjectType(r.subject_type)
        if key is not None and r.name_ct is not None:
            name = key.decrypt("name", bytes(r.name_ct))
            masked_name = mask_name(name) if subject_type is SubjectType.INDIVIDUAL else mask_organization_name(name)
            masked_id = _mask_id(r.id_kind, key.decrypt("id_number", bytes(r.id_number_ct)))
            masked_mobile = mask_mobile(key.decrypt("mobile", bytes(r.mobile_ct)))
        state = FlowState(r.state)
        if state not in FINISHED and r.expire_time <= self._clock():
            state = FlowState.EXPIRED
        return Flow(
            flow_id=r.flow_id,
            user=UserRef(r.tenant_id, r.user_id),
            subject_type=subject_type,
            state=state,
            level_reached=VerificationLevel(r.level_reached),
            methods=tuple(VerificationMethod(m) for m in r.methods),
            masked_name=masked_name,
            masked_id_number=masked_id,
            masked_mobile=masked_mobile,
            guardian_consent_required=r.guardian_consent_required,
            failure_reason=FailureReason(r.failure_reason) if r.failure_reason else None,
            create_time=r.create_time,
            expire_time=r.expire_time,
            finish_time=r.finish_time,
        )

    async def _flow_row(self, conn: AsyncConnection, flow_id: str, *, lock: bool = False) -> Any:
        query = select(verification_flows).where(verification_flows.c.flow_id == flow_id)
        if lock:
            query = query.with_for_update()
        return (await conn.execute(query)).first()

    async def _flow(self, conn: AsyncConnection, flow_id: str) -> Flow:
        row = await self._flow_row(conn, flow_id)
        return self._flow_from_row(row, self._open_key(await self._key_row(conn, flow_id)))

    async def _visible_flow_row(self, conn: AsyncConnection, caller: Principal, flow_id: str, *, lock: bool) -> Any:
        caller.require_role(Role.PROVIDER, Role.OPERATOR)
        if not flow_id:
            raise InvalidArgument(FieldViolation("flow_id", "must be set"))
        row = await self._flow_row(conn, flow_id, lock=lock)
        if row is None or not self._may_see(caller, row.tenant_id):
            raise NotFound("verification_flow", flow_id)
        return row

    async def _update_flow(self, conn: AsyncConnection, flow_id: str, **values: Any) -> None:
        values["update_time"] = self._clock()
        await conn.execute(update(verification_flows).where(verification_flows.c.flow_id == flow_id).values(**values))

    async def _ensure_account(self, conn: AsyncConnection, user: UserRef) -> None:
        now = self._clock()
        await conn.execute(
            pg_insert(accounts)
            .values(tenant_id=user.tenant_id, user_id=user.user_id, create_time=now, update_time=now)
            .on_conflict_do_nothing(index_elements=["tenant_id", "user_id"])
        )

    async def _lock_account(self, conn: AsyncConnection, user: UserRef) -> Any:
        await self._ensure_account(conn, user)
        return (
            await conn.execute(
                select(accounts)
                .where(accounts.c.tenant_id == user.tenant_id, accounts.c.user_id == user.user_id)
                .with_for_update()
            )
        ).one()

    async def _update_account(self, conn: AsyncConnection, user: UserRef, **values: Any) -> None:
        values["update_time"] = self._clock()
        await conn.execute(
            update(accounts)
            .where(accounts.c.tenant_id == user.tenant_id, accounts.c.user_id == user.user_id)
            .values(**values)
        )

    def _usable(self, row: Any) -> None:
        """FAILED_PRECONDITION for a finished or expired flow (expiry is read from expire_time)."""
        state = FlowState(row.state)
        if state not in FINISHED and row.expire_time <= self._clock():
            raise FailedPrecondition("the verification flow expired; start a new one")
        if state in FINISHED:
            raise FailedPrecondition(f"the verification flow is {state.value}")

    # ----------------------------------------------------------------- consents

    async def record_consent(
        self,
        caller: Principal,
        idempotency_key: str,
        user: UserRef | None,
        purpose: ConsentPurpose | None,
        text_version: str,
        consent_time: datetime | None,
    ) -> Consent:
        now = self._clock()
        check = FieldChecker()
        ref = self._user(caller, user, check)
        _identifier(check, idempotency_key, "idempotency_key", max_length=MAX_KEY)
        if purpose is None:
            check.add("purpose", "must be set")
        elif purpose is ConsentPurpose.GUARDIAN:
            check.add("purpose", "a guardian's consent is recorded with RecordGuardianConsent")
        _text(check, text_version, "text_version", max_length=MAX_TEXT_VERSION)
        if consent_time is not None and consent_time > now:
            check.add("consent_time", "must not be in the future")
        check.raise_if_any()
        assert purpose is not None
        at = consent_time or now
        digest = _digest({"user": [ref.tenant_id, ref.user_id], "purpose": purpose.value, "v": text_version})
        consent_id = "cns" + uuid.uuid4().hex
        audit = self._entry(
            caller,
            "consent.record",
            "consent",
            consent_id,
            ref,
            {"purpose": purpose.value, "text_version": text_version, "consent_time": _iso(at)},
            basis=PIPL_29,
            key=f"consent.record:{ref.tenant_id}:{idempotency_key}",
        )
        try:
            async with self._engine.begin() as conn:
                await self._lock_account(conn, ref)
                await conn.execute(
                    consents.insert().values(
                        consent_id=consent_id,
                        tenant_id=ref.tenant_id,
                        user_id=ref.user_id,
                        idempotency_key=idempotency_key,
                        request_hash=digest,
                        purpose=purpose.value,
                        text_version=text_version,
                        consent_time=at,
                        create_time=now,
                        ledger_entry_id=audit.entry_id,
                    )
                )
                if purpose is ConsentPurpose.SENSITIVE_PERSONAL_INFORMATION:
                    await self._update_account(conn, ref, sensitive_consent_in_force=True)
                await ledger_append(conn, audit)
        except sqlalchemy.exc.IntegrityError as exc:
            if "consents_tenant_idempotency_key" not in str(exc.orig):
                raise
        async with self._engine.connect() as conn:
            row = (
                await conn.execute(
                    select(consents).where(
                        consents.c.tenant_id == ref.tenant_id, consents.c.idempotency_key == idempotency_key
                    )
                )
            ).one()
            if bytes(row.request_hash) != digest:
                raise IdempotencyConflict(
                    "consent", idempotency_key, "this idempotency key was used with another request"
                )
            return await self._consent_from_row(conn, row)

    async def _consent_from_row(self, conn: AsyncConnection, r: Any) -> Consent:
        masked = None
        if r.guardian_name_ct is not None:
            key = self._open_key(await self._key_row(conn, r.consent_id))
            if key is not None:
                masked = mask_name(key.decrypt("guardian_name", bytes(r.guardian_name_ct)))
        return Consent(
            consent_id=r.consent_id,
            user=UserRef(r.tenant_id, r.user_id),
            purpose=ConsentPurpose(r.purpose),
            text_version=r.text_version,
            consent_time=r.consent_time,
            withdraw_time=r.withdraw_time,
            masked_guardian_name=masked,
            create_time=r.create_time,
        )

    async def list_consents(
        self, caller: Principal, user: UserRef | None, *, page_size: int, page_token: str
    ) -> tuple[builtins.list[Consent], str]:
        check = FieldChecker()
        ref = self._user(caller, user, check)
        check_page_size(check, page_size)
        check.raise_if_any()
        limit = page_limit(page_size)
        c = consents.c
        query = (
            select(consents)
            .where(c.tenant_id == ref.tenant_id, c.user_id == ref.user_id)
            .order_by(c.create_time.desc(), c.consent_id.desc())
            .limit(limit + 1)
        )
        if page_token:
            after = decode_page_token(page_token)
            query = query.where(or_(c.create_time < after[0], and_(c.create_time == after[0], c.consent_id < after[1])))
        async with self._engine.connect() as conn:
            rows = (await conn.execute(query)).all()
            found = [await self._consent_from_row(conn, r) for r in rows]
        page = found[:limit]
        token = encode_page_token(page[-1].create_time, page[-1].consent_id) if len(found) > limit else ""
        return page, token

    async def withdraw_consent(
        self, caller: Principal, idempotency_key: str, consent_id: str, withdraw_time: datetime | None
    ) -> tuple[Consent, Erasure | None]:
        caller.require_role(Role.PROVIDER, Role.OPERATOR)
        now = self._clock()
        check = FieldChecker()
        _identifier(check, idempotency_key, "idempotency_key", max_length=MAX_KEY)
        check.require(bool(consent_id), "consent_id", "must be set")
        if withdraw_time is not None and withdraw_time > now:
            check.add("withdraw_time", "must not be in the future")
        check.raise_if_any()
        async with self._engine.begin() as conn:
            row = (
                await conn.execute(select(consents).where(consents.c.consent_id == consent_id).with_for_update())
            ).first()
            if row is None or not self._may_see(caller, row.tenant_id):
                raise NotFound("consent", consent_id)
            ref = UserRef(row.tenant_id, row.user_id)
            erasure = None
            if row.withdraw_time is None:
                purpose = ConsentPurpose(row.purpose)
                audit = self._entry(
                    caller,
                    "consent.withdraw",
                    "consent",
                    consent_id,
                    ref,
                    {"purpose": purpose.value},
                    basis=PIPL_29 if purpose is not ConsentPurpose.GUARDIAN else PIPL_31,
                    key=f"consent.withdraw:{consent_id}",
                )
                await self._lock_account(conn, ref)
                values: dict[str, Any] = {
                    "withdraw_time": withdraw_time or now,
                    "withdraw_idempotency_key": idempotency_key,
                }
                if purpose is ConsentPurpose.SENSITIVE_PERSONAL_INFORMATION:
                    erasure = await self._erase(
                        conn, caller, ref, f"consent:{consent_id}", "consent_withdrawn", "sensitive consent withdrawn"
                    )
                    values["erasure_id"] = erasure.erasure_id
                elif purpose is ConsentPurpose.GUARDIAN:
                    await self._update_account(conn, ref, guardian_consent_recorded=False)
                await conn.execute(update(consents).where(consents.c.consent_id == consent_id).values(**values))
                if purpose is ConsentPurpose.SENSITIVE_PERSONAL_INFORMATION:
                    await self._refresh_consent_flag(conn, ref)
                await ledger_append(conn, audit)
                row = (await conn.execute(select(consents).where(consents.c.consent_id == consent_id))).one()
            elif row.erasure_id:
                erasure = await self._erasure(conn, row.erasure_id)
            return await self._consent_from_row(conn, row), erasure

    async def _refresh_consent_flag(self, conn: AsyncConnection, ref: UserRef) -> None:
        c = consents.c
        in_force = (
            await conn.execute(
                select(func.count()).where(
                    c.tenant_id == ref.tenant_id,
                    c.user_id == ref.user_id,
                    c.purpose == ConsentPurpose.SENSITIVE_PERSONAL_INFORMATION.value,
                    c.withdraw_time.is_(None),
                )
            )
        ).scalar_one()
        await self._update_account(conn, ref, sensitive_consent_in_force=in_force > 0)

    async def _has_sensitive_consent(self, conn: AsyncConnection, ref: UserRef) -> bool:
        c = consents.c
        found = (
            await conn.execute(
                select(c.consent_id).where(
                    c.tenant_id == ref.tenant_id,
                    c.user_id == ref.user_id,
                    c.purpose == ConsentPurpose.SENSITIVE_PERSONAL_INFORMATION.value,
                    c.withdraw_time.is_(None),
                )
            )
        ).first()
        return found is not None

    # ----------------------------------------------------------------- erasure

    async def _erasure(self, conn: AsyncConnection, erasure_id: str) -> Erasure:
        r = (await conn.execute(select(erasures).where(erasures.c.erasure_id == erasure_id))).one()
        return Erasure(r.erasure_id, UserRef(r.tenant_id, r.user_id), r.erase_time, str(r.ledger_entry_id))

    async def _erase(
        self, conn: AsyncConnection, caller: Principal, ref: UserRef, key: str, cause: str, reason: str
    ) -> Erasure:
        """Crypto-shreds the user's personal data in the caller's transaction (account row locked)."""
        now = self._clock()
        f = verification_flows.c
        of_user = and_(f.tenant_id == ref.tenant_id, f.user_id == ref.user_id)
        flows = (await conn.execute(select(f.flow_id, f.phone_index).where(of_user))).all()
        destroyed = (
            await conn.execute(
                delete(personal_data_keys)
                .where(personal_data_keys.c.tenant_id == ref.tenant_id, personal_data_keys.c.user_id == ref.user_id)
                .returning(personal_data_keys.c.record_id)
            )
        ).all()
        await conn.execute(
            update(verification_flows)
            .where(of_user, f.state.in_([s.value for s in FlowState if s not in FINISHED]))
            .values(state=FlowState.FAILED.value, failure_reason=FailureReason.CONSENT_WITHDRAWN.value, finish_time=now)
        )
        await conn.execute(
            update(verification_flows)
            .where(of_user)
            .values(
                name_ct=None,
                id_number_ct=None,
                mobile_ct=None,
                index_version=None,
                id_index=None,
                phone_index=None,
                minor_until=None,
                update_time=now,
            )
        )
        await conn.execute(
            update(consents)
            .where(consents.c.tenant_id == ref.tenant_id, consents.c.user_id == ref.user_id)
            .values(guardian_name_ct=None, guardian_id_number_ct=None, guardian_mobile_ct=None)
        )
        await conn.execute(
            delete(identity_claims).where(
                identity_claims.c.tenant_id == ref.tenant_id, identity_claims.c.user_id == ref.user_id
            )
        )
        if flows:
            await conn.execute(
                delete(verification_codes).where(verification_codes.c.flow_id.in_([r.flow_id for r in flows]))
            )
            phones = [bytes(r.phone_index) for r in flows if r.phone_index is not None]
            if phones:
                await conn.execute(
                    delete(send_limits).where(send_limits.c.scope == "phone", send_limits.c.subject.in_(phones))
                )
        # ERASED outranks enforcement while no data is held (domain.status_from); a completed
        # verification recomputes the status from the actions in force.
        await self._update_account(
            conn,
            ref,
            subject_type=None,
            verification_level=VerificationLevel.NONE.value,
            verification_methods=[],
            verify_time=None,
            minor_until=None,
            guardian_consent_recorded=False,
            status=AccountStatus.ERASED.value,
        )
        erasure_id = "era" + uuid.uuid4().hex
        audit = self._entry(
            caller,
            "personal_data.erase",
            "account",
            f"{ref.tenant_id}/{ref.user_id}",
            ref,
            {"erasure_id": erasure_id, "cause": cause, "records_destroyed": len(destroyed)},
            basis=PIPL_47,
            reason=reason,
            key=f"personal_data.erase:{erasure_id}",
        )
        await conn.execute(
            erasures.insert().values(
                erasure_id=erasure_id,
                tenant_id=ref.tenant_id,
                user_id=ref.user_id,
                idempotency_key=key,
                cause=cause,
                reason=reason,
                erase_time=now,
                ledger_entry_id=audit.entry_id,
            )
        )
        await ledger_append(conn, audit)
        return Erasure(erasure_id, ref, now, str(audit.entry_id))

    async def request_erasure(
        self, caller: Principal, idempotency_key: str, user: UserRef | None, reason: str
    ) -> Erasure:
        check = FieldChecker()
        ref = self._user(caller, user, check)
        _identifier(check, idempotency_key, "idempotency_key", max_length=MAX_KEY)
        _text(check, reason, "reason", max_length=MAX_ERASURE_REASON)
        check.raise_if_any()
        async with self._engine.begin() as conn:
            await self._lock_account(conn, ref)
            e = erasures.c
            earlier = (
                await conn.execute(
                    select(e.erasure_id).where(e.tenant_id == ref.tenant_id, e.idempotency_key == idempotency_key)
                )
            ).first()
            if earlier is not None:
                return await self._erasure(conn, earlier.erasure_id)
            return await self._erase(conn, caller, ref, idempotency_key, "request", reason)

    # ----------------------------------------------------------------- flows

    async def start(self, caller: Principal, idempotency_key: str, user: UserRef | None, raw: IdentityInput) -> Flow:
        now = self._clock()
        check = FieldChecker()
        ref = self._user(caller, user, check)
        _identifier(check, idempotency_key, "idempotency_key", max_length=MAX_KEY)
        check.raise_if_any()
        subject = parse_subject(raw, "individual", now.date())
        tenant = ref.tenant_id
        request = json.dumps(
            [ref.user_id, subject.subject_type.value, subject.id_kind, subject.name, subject.id_number, subject.mobile]
        )
        # Keyed: an unkeyed hash of an ID number could be searched offline.
        digest = self._indexer.index("flow_request", tenant, request).digest
        async with self._engine.connect() as conn:
            earlier = await self._flow_by_key(conn, tenant, idempotency_key)
            if earlier is not None:
                if bytes(earlier.request_digest) != digest:
                    raise IdempotencyConflict(
                        "verification_flow", idempotency_key, "this idempotency key was used with another request"
                    )
                return await self._flow(conn, earlier.flow_id)
            if not await self._has_sensitive_consent(conn, ref):
                raise FailedPrecondition(
                    "a current consent to processing sensitive personal information is required (RecordConsent)"
                )
        flow_id = "vf" + uuid.uuid4().hex
        wrapped, key = self._vault.new_data_key(flow_id)
        guardian_required = False
        minor_until = None
        if subject.birth_date is not None:
            age = age_on(subject.birth_date, now.date())
            guardian_required = age < GUARDIAN_CONSENT_AGE
            minor_until = _adult_on(subject.birth_date) if age < ADULT_AGE else None
        audit = self._entry(
            caller,
            "verification.start",
            "verification_flow",
            flow_id,
            ref,
            {
                "subject_type": subject.subject_type.value,
                "id_kind": subject.id_kind,
                "level": VerificationLevel.FORMAT_CHECKED.value,
                "method": VerificationMethod.FORMAT_CHECK.value,
                "guardian_consent_required": guardian_required,
            },
            key=f"verification.start:{tenant}:{idempotency_key}",
        )
        try:
            async with self._engine.begin() as conn:
                await self._ensure_account(conn, ref)
                await _store_data_key(conn, flow_id, UserRef(tenant, ref.user_id), wrapped, now)
                await conn.execute(
                    verification_flows.insert().values(
                        flow_id=flow_id,
                        tenant_id=tenant,
                        user_id=ref.user_id,
                        idempotency_key=idempotency_key,
                        request_digest=digest,
                        subject_type=subject.subject_type.value,
                        id_kind=subject.id_kind,
                        state=FlowState.AWAITING_CODE.value,
                        level_reached=VerificationLevel.FORMAT_CHECKED.value,
                        methods=[VerificationMethod.FORMAT_CHECK.value],
                        name_ct=key.encrypt("name", subject.name),
                        id_number_ct=key.encrypt("id_number", subject.id_number),
                        mobile_ct=key.encrypt("mobile", subject.mobile),
                        index_version=self._indexer.current_version,
                        id_index=self._indexer.index(subject.id_kind, tenant, subject.id_number).digest,
                        phone_index=self._indexer.index(IndexKind.MOBILE, tenant, subject.mobile).digest,
                        guardian_consent_required=guardian_required,
                        minor_until=minor_until,
                        create_time=now,
                        expire_time=now + self._flow_ttl,
                        update_time=now,
                    )
                )
                await ledger_append(conn, audit)
        except sqlalchemy.exc.IntegrityError as exc:
            if "verification_flows_tenant_idempotency_key" not in str(exc.orig):
                raise
            return await self.start(caller, idempotency_key, user, raw)
        async with self._engine.connect() as conn:
            return await self._flow(conn, flow_id)

    @staticmethod
    async def _flow_by_key(conn: AsyncConnection, tenant: str, idempotency_key: str) -> Any:
        f = verification_flows.c
        return (
            await conn.execute(
                select(f.flow_id, f.request_digest).where(f.tenant_id == tenant, f.idempotency_key == idempotency_key)
            )
        ).first()

    async def get_flow(self, caller: Principal, flow_id: str) -> Flow:
        async with self._engine.connect() as conn:
            row = await self._visible_flow_row(conn, caller, flow_id, lock=False)
            return self._flow_from_row(row, self._open_key(await self._key_row(conn, row.flow_id)))

    async def send_code(self, caller: Principal, flow_id: str) -> CodeSent:
        async with self._engine.begin() as conn:
            row = await self._visible_flow_row(conn, caller, flow_id, lock=True)
            self._usable(row)
            if FlowState(row.state) is not FlowState.AWAITING_CODE:
                raise FailedPrecondition(f"the verification flow is {row.state}; no code is needed")
            key = self._open_key(await self._key_row(conn, flow_id))
            assert key is not None and row.mobile_ct is not None
            mobile = key.decrypt("mobile", bytes(row.mobile_ct))
            phone_index = bytes(row.phone_index)
            allowance = await self._limits.check_and_record_send(
                conn, phone_key=phone_index, client_address=self._client_address(caller)
            )
            issued = await self._codes.issue(conn, flow_id=flow_id, phone_index=phone_index)
            ref = UserRef(row.tenant_id, row.user_id)
            await ledger_append(
                conn,
                self._entry(
                    caller,
                    "verification.code_sent",
                    "verification_flow",
                    flow_id,
                    ref,
                    {"code_id": str(issued.code_id), "code_expire_time": _iso(issued.expires_at)},
                ),
            )
            minutes = max(1, round((issued.expires_at - self._clock()).total_seconds() / 60))
            # Last, inside the transaction: a failed send rolls the code and the count back.
            await self._sms.send(mobile, SMS_TEXT.format(code=issued.code, minutes=minutes))
            flow = self._flow_from_row(row, key)
        return CodeSent(flow, issued.expires_at, allowance.next_send_at)

    async def confirm_code(self, caller: Principal, flow_id: str, code: str) -> tuple[Flow, int]:
        check_code_format(code)
        client_address = self._client_address(caller)
        async with self._engine.begin() as conn:
            row = await self._visible_flow_row(conn, caller, flow_id, lock=True)
            self._usable(row)
            if FlowState(row.state) is not FlowState.AWAITING_CODE:
                raise FailedPrecondition(f"the verification flow is {row.state}; no code is awaited")
            ref = UserRef(row.tenant_id, row.user_id)
            await self._limits.check_not_locked(
                conn, tenant_id=ref.tenant_id, user_id=ref.user_id, client_address=client_address
            )
            result = await self._codes.confirm(conn, flow_id=flow_id, phone_index=bytes(row.phone_index), code=code)
            if result.confirmed:
                await self._limits.record_success(
                    conn, tenant_id=ref.tenant_id, user_id=ref.user_id, client_address=client_address
                )
                waiting = row.guardian_consent_required and row.guardian_consent_id is None
                state = FlowState.AWAITING_GUARDIAN_CONSENT if waiting else FlowState.CODE_CONFIRMED
                await self._update_flow(
                    conn,
                    flow_id,
                    state=state.value,
                    level_reached=VerificationLevel.PHONE_VERIFIED.value,
                    methods=[*row.methods, VerificationMethod.SMS_CODE.value],
                )
                await self._update_account(conn, ref, lockout_until=None, lockout_level=0, failed_attempts=0)
                data: dict[str, Any] = {"code_id": str(result.code_id), "level": VerificationLevel.PHONE_VERIFIED.value}
                action, remaining = "verification.code_confirmed", 0
            else:
                failure = await self._limits.record_failure(
                    conn, tenant_id=ref.tenant_id, user_id=ref.user_id, client_address=client_address
                )
                account_lock = failure.account
                await self._update_account(
                    conn,
                    ref,
                    lockout_until=failure.locked_until or account_lock.locked_until,
                    lockout_level=max(account_lock.level, failure.address.level),
                    failed_attempts=account_lock.failed_attempts,
                )
                remaining = min(result.remaining_attempts, failure.remaining_before_lockout)
                data = {
                    "outcome": result.outcome.value,
                    "remaining_attempts": remaining,
                    "locked_until": _iso(failure.locked_until),
                }
                if result.code_id is not None:
                    data["code_id"] = str(result.code_id)
                action = "verification.code_failed"
                if result.outcome is not CodeOutcome.WRONG:
                    remaining = 0
            await ledger_append(conn, self._entry(caller, action, "verification_flow", flow_id, ref, data))
            flow = await self._flow(conn, flow_id)
        return flow, remaining

    async def _one_identity(self, conn: AsyncConnection, tenant: str) -> bool:
        found = (
            await conn.execute(
                select(eligibility_policies.c.one_identity_per_account).where(
                    eligibility_policies.c.tenant_id == tenant
                )
            )
        ).first()
        return bool(found and found[0])

    async def reindex(self, *, limit: int = 200) -> int:
        """Brings the blind indexes of one batch of flows made under an older index key to the
        current key; returns how many flows it moved (0: nothing left under an old key).

        Rotating the index key: append a new line to IDENTITY_BLIND_INDEX_KEY_FILE (it becomes
        current) and restart; new flows index under it at once, identity claims are written under
        every key in the file, and this job (IndexRotation, in every identity replica) decrypts each
        older flow with its subject's data key, recomputes its indexes and adds its claims under the
        current key. When it reports nothing left, the old line may be removed from the file; claims
        under keys no longer in the file are then deleted by the next run. Erased flows hold no
        data and are left alone. Rows are taken with SKIP LOCKED, so replicas share the work.
        """
        current = self._indexer.current_version
        f, c = verification_flows.c, identity_claims.c
        moved = 0
        async with self._engine.begin() as conn:
            rows = (
                await conn.execute(
                    select(verification_flows)
                    .where(f.index_version.is_not(None), f.index_version != current, f.id_number_ct.is_not(None))
                    .order_by(f.flow_id)
                    .limit(limit)
                    .with_for_update(skip_locked=True)
                )
            ).all()
            for row in rows:
                key = self._open_key(await self._key_row(conn, row.flow_id))
                if key is None:  # erased meanwhile: nothing to index
                    continue
                id_number = key.decrypt("id_number", bytes(row.id_number_ct))
                mobile = key.decrypt("mobile", bytes(row.mobile_ct)) if row.mobile_ct is not None else None
                await conn.execute(
                    update(verification_flows)
                    .where(f.flow_id == row.flow_id)
                    .values(
                        index_version=current,
                        id_index=self._indexer.index(row.id_kind, row.tenant_id, id_number).digest,
                        phone_index=self._indexer.index(IndexKind.MOBILE, row.tenant_id, mobile).digest
                        if mobile is not None
                        else None,
                    )
                )
                claimed = (
                    await conn.execute(select(c.user_id, c.create_time).where(c.flow_id == row.flow_id).limit(1))
                ).first()
                if claimed is not None:
                    await conn.execute(
                        pg_insert(identity_claims)
                        .values(
                            tenant_id=row.tenant_id,
                            kind=row.id_kind,
                            version=current,
                            digest=self._indexer.index(row.id_kind, row.tenant_id, id_number).digest,
                            user_id=claimed.user_id,
                            flow_id=row.flow_id,
                            create_time=claimed.create_time,
                        )
                        .on_conflict_do_nothing(constraint="identity_claims_pkey")
                    )
                moved += 1
            await conn.execute(delete(identity_claims).where(c.version.not_in(self._indexer.versions)))
            if moved:
                await ledger_append(
                    conn,
                    LedgerEntry(
                        action="identity.reindex",
                        subject_type="blind_index_key",
                        subject_id=current,
                        actor=Principal(role=Role.SERVICE, subject="identity"),
                        legal_basis="PIPL Art. 51",
                        reason="blind indexes moved to the current index key",
                        tenant_id="",
                        data={"flows": moved},
                        occurred_at=self._clock(),
                    ),
                )
        return moved

    async def complete(self, caller: Principal, flow_id: str, idempotency_key: str) -> Flow:
        check = FieldChecker()
        _identifier(check, idempotency_key, "idempotency_key", max_length=MAX_KEY)
        check.raise_if_any()
        async with self._engine.begin() as conn:
            row = await self._visible_flow_row(conn, caller, flow_id, lock=False)
            state = FlowState(row.state)
            if state in FINISHED and row.complete_idempotency_key == idempotency_key:
                return await self._flow(conn, flow_id)
            self._usable(row)
            if state is FlowState.AWAITING_GUARDIAN_CONSENT or (
                row.guardian_consent_required and row.guardian_consent_id is None
            ):
                raise FailedPrecondition(
                    "the user is under 14: a guardian's consent must be recorded first (RecordGuardianConsent)"
                )
            key = self._open_key(await self._key_row(conn, flow_id))
            assert key is not None
            name = key.decrypt("name", bytes(row.name_ct))
            id_number = key.decrypt("id_number", bytes(row.id_number_ct))
        level = VerificationLevel(row.level_reached)
        methods = list(row.methods)
        reference = None
        matched: bool | None = None
        if (
            self._verifier is not None
            and state is FlowState.CODE_CONFIRMED
            and row.id_kind in (IndexKind.RESIDENT_ID, IndexKind.CREDIT_CODE)
        ):
            # Outside any transaction: DependencyUnavailable leaves the flow as it was.
            if row.id_kind == IndexKind.RESIDENT_ID:
                answer = await self._verifier.verify_individual(name=name, id_number=id_number)
            else:
                answer = await self._verifier.verify_organization(credit_code=id_number, name=name)
            matched, reference = answer.matched, answer.reference
            if matched:
                level = VerificationLevel.AUTHORITATIVELY_VERIFIED
                methods.append(VerificationMethod.AUTHORITATIVE_SERVICE.value)
        ref = UserRef(row.tenant_id, row.user_id)
        async with self._engine.begin() as conn:
            current = await self._flow_row(conn, flow_id, lock=True)
            if FlowState(current.state) is not state:
                raise FailedPrecondition("the verification flow changed meanwhile; read it and retry")
            await self._lock_account(conn, ref)
            now = self._clock()
            failure = FailureReason.IDENTITY_MISMATCH if matched is False else None
            if failure is None and await self._one_identity(conn, ref.tenant_id):
                await conn.execute(
                    delete(identity_claims).where(
                        identity_claims.c.tenant_id == ref.tenant_id,
                        identity_claims.c.user_id == ref.user_id,
                        identity_claims.c.kind == row.id_kind,
                    )
                )
                try:
                    async with conn.begin_nested():
                        # One claim under every index key in the file: while a rotation is under
                        # way an identity claimed under the old key still collides with the new.
                        await conn.execute(
                            identity_claims.insert(),
                            [
                                {
                                    "tenant_id": ref.tenant_id,
                                    "kind": row.id_kind,
                                    "version": index.version,
                                    "digest": index.digest,
                                    "user_id": ref.user_id,
                                    "flow_id": flow_id,
                                    "create_time": now,
                                }
                                for index in self._indexer.index_all(row.id_kind, ref.tenant_id, id_number)
                            ],
                        )
                except sqlalchemy.exc.IntegrityError as exc:
                    if "identity_claims_pkey" not in str(exc.orig):
                        raise
                    failure = FailureReason.IDENTITY_IN_USE
            common = {"complete_idempotency_key": idempotency_key, "finish_time": now, "verifier_reference": reference}
            if failure is not None:
                await self._update_flow(
                    conn, flow_id, state=FlowState.FAILED.value, failure_reason=failure.value, **common
                )
                audit = self._entry(
                    caller,
                    "verification.fail",
                    "verification_flow",
                    flow_id,
                    ref,
                    {"failure_reason": failure.value, "verifier_reference": reference or ""},
                    key=f"verification.finish:{flow_id}",
                )
            else:
                await self._update_flow(
                    conn, flow_id, state=FlowState.COMPLETED.value, level_reached=level.value, methods=methods, **common
                )
                actions = await self._accounts_store_actions(conn, ref)
                status = status_from(actions, now)  # a new verification ends an erasure's ERASED
                await self._update_account(
                    conn,
                    ref,
                    subject_type=row.subject_type,
                    verification_level=level.value,
                    verification_methods=methods,
                    verify_time=now,
                    minor_until=row.minor_until,
                    guardian_consent_recorded=row.guardian_consent_id is not None,
                    status=status.value,
                )
                audit = self._entry(
                    caller,
                    "verification.complete",
                    "verification_flow",
                    flow_id,
                    ref,
                    {
                        "subject_type": row.subject_type,
                        "level": level.value,
                        "methods": methods,
                        "minor": row.minor_until is not None,
                        "verifier_reference": reference or "",
                    },
                    key=f"verification.finish:{flow_id}",
                )
            await ledger_append(conn, audit)
            return await self._flow(conn, flow_id)

    @staticmethod
    async def _accounts_store_actions(conn: AsyncConnection, ref: UserRef) -> builtins.list[Any]:
        from services.identity.store import SqlIdentityStore

        return await SqlIdentityStore._active_actions(conn, ref)

    async def masked_identity(self, ref: UserRef) -> tuple[Masked | None, Masked | None, Masked | None]:
        """The masked name, ID and mobile of the account's latest completed flow (none after erasure)."""
        f = verification_flows.c
        async with self._engine.connect() as conn:
            row = (
                await conn.execute(
                    select(verification_flows)
                    .where(
                        f.tenant_id == ref.tenant_id,
                        f.user_id == ref.user_id,
                        f.state == FlowState.COMPLETED.value,
                        f.name_ct.is_not(None),
                    )
                    .order_by(f.finish_time.desc())
                    .limit(1)
                )
            ).first()
            if row is None:
                return None, None, None
            flow = self._flow_from_row(row, self._open_key(await self._key_row(conn, row.flow_id)))
        return flow.masked_name, flow.masked_id_number, flow.masked_mobile

    # ----------------------------------------------------------------- guardians

    async def record_guardian_consent(self, caller: Principal, request: GuardianInput) -> tuple[Flow, Consent]:
        now = self._clock()
        check = FieldChecker()
        _identifier(check, request.idempotency_key, "idempotency_key", max_length=MAX_KEY)
        check.require(bool(request.flow_id), "flow_id", "must be set")
        check.require(request.guardian is not None, "guardian", "must be set")
        check.require(request.relationship is not None, "relationship", "must be set")
        _text(check, request.text_version, "consent_text_version", max_length=MAX_TEXT_VERSION)
        if request.consent_time is not None and request.consent_time > now:
            check.add("consent_time", "must not be in the future")
        check.raise_if_any()
        assert request.guardian is not None and request.relationship is not None
        raw = request.guardian
        name = parse_individual_name(raw.name, "guardian.name").value
        ric = parse_resident_id(raw.id_number, "guardian.resident_id_number", today=now.date())
        mobile = parse_mobile(raw.mobile, "guardian.mobile").e164
        if age_on(ric.birth_date, now.date()) < ADULT_AGE:
            raise InvalidArgument(FieldViolation("guardian.resident_id_number", "the guardian must be 18 or older"))
        async with self._engine.connect() as conn:
            row = await self._visible_flow_row(conn, caller, request.flow_id, lock=False)
            c = consents.c
            earlier = (
                await conn.execute(
                    select(consents).where(c.tenant_id == row.tenant_id, c.idempotency_key == request.idempotency_key)
                )
            ).first()
            if earlier is not None:
                if earlier.flow_id != request.flow_id:
                    raise IdempotencyConflict(
                        "consent", request.idempotency_key, "this idempotency key was used with another request"
                    )
                return await self._flow(conn, request.flow_id), await self._consent_from_row(conn, earlier)
            state = FlowState(row.state)
            if not row.guardian_consent_required or state not in (
                FlowState.AWAITING_CODE,
                FlowState.AWAITING_GUARDIAN_CONSENT,
            ):
                raise FailedPrecondition(f"the verification flow does not await a guardian's consent ({state.value})")
            if row.expire_time <= now:
                raise FailedPrecondition("the verification flow expired; start a new one")
        ref = UserRef(row.tenant_id, row.user_id)
        mismatch = False
        if self._verifier is not None:
            answer = await self._verifier.verify_individual(name=name, id_number=ric.value)
            mismatch = not answer.matched
        consent_id = "cns" + uuid.uuid4().hex
        at = request.consent_time or now
        if mismatch:
            async with self._engine.begin() as conn:
                await self._update_flow(
                    conn,
                    request.flow_id,
                    state=FlowState.FAILED.value,
                    failure_reason=FailureReason.GUARDIAN_CONSENT_FAILED.value,
                    finish_time=now,
                )
                await ledger_append(
                    conn,
                    self._entry(
                        caller,
                        "verification.fail",
                        "verification_flow",
                        request.flow_id,
                        ref,
                        {"failure_reason": FailureReason.GUARDIAN_CONSENT_FAILED.value},
                        basis=PIPL_31,
                    ),
                )
            raise FailedPrecondition("the guardian's identity could not be verified; the flow failed")
        async with self._engine.begin() as conn:
            current = await self._flow_row(conn, request.flow_id, lock=True)
            if current.state != row.state:
                raise FailedPrecondition("the verification flow changed meanwhile; read it and retry")
            wrapped, key = self._vault.new_data_key(consent_id)
            audit = self._entry(
                caller,
                "consent.guardian_record",
                "consent",
                consent_id,
                ref,
                {
                    "flow_id": request.flow_id,
                    "relationship": request.relationship.value,
                    "text_version": request.text_version,
                    "guardian_verified": self._verifier is not None,
                },
                basis=PIPL_31,
                key=f"consent.record:{ref.tenant_id}:{request.idempotency_key}",
            )
            await _store_data_key(conn, consent_id, ref, wrapped, now)
            await conn.execute(
                consents.insert().values(
                    consent_id=consent_id,
                    tenant_id=ref.tenant_id,
                    user_id=ref.user_id,
                    idempotency_key=request.idempotency_key,
                    request_hash=_digest({"flow_id": request.flow_id}),
                    purpose=ConsentPurpose.GUARDIAN.value,
                    text_version=request.text_version,
                    consent_time=at,
                    flow_id=request.flow_id,
                    relationship=request.relationship.value,
                    guardian_name_ct=key.encrypt("guardian_name", name),
                    guardian_id_number_ct=key.encrypt("guardian_id_number", ric.value),
                    guardian_mobile_ct=key.encrypt("guardian_mobile", mobile),
                    create_time=now,
                    ledger_entry_id=audit.entry_id,
                )
            )
            next_state = (
                FlowState.CODE_CONFIRMED if FlowState(row.state) is FlowState.AWAITING_GUARDIAN_CONSENT else None
            )
            values: dict[str, Any] = {"guardian_consent_id": consent_id}
            if next_state is not None:
                values["state"] = next_state.value
            await self._update_flow(conn, request.flow_id, **values)
            await ledger_append(conn, audit)
            consent_row = (await conn.execute(select(consents).where(consents.c.consent_id == consent_id))).one()
            return await self._flow(conn, request.flow_id), await self._consent_from_row(conn, consent_row)


async def _store_data_key(
    conn: AsyncConnection, record_id: str, ref: UserRef, wrapped: WrappedDataKey, now: datetime
) -> None:
    """Keeps a record's wrapped data key; destroying it (erasure) leaves the record's fields unreadable."""
    await conn.execute(
        personal_data_keys.insert().values(
            record_id=record_id,
            tenant_id=ref.tenant_id,
            user_id=ref.user_id,
            kek_id=wrapped.kek_id,
            version=wrapped.version,
            wrapped=wrapped.wrapped,
            create_time=now,
        )
    )
