"""Real-name verification flows, consents and erasure (Art. 8; PIPL Art. 29, 31, 47).

A flow: StartVerification (format rules, a current sensitive-information
consent required) → SendVerificationCode → ConfirmVerificationCode
(PHONE_VERIFIED) → [RecordGuardianConsent for an under-14] →
CompleteVerification (the authoritative verifier where configured) → the
level and method reached are recorded on the account.

Who may do what: as for accounts (services.identity.service): providers act
on their own tenant's users, a flow or consent of another tenant is
NOT_FOUND, operators act on any tenant.

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
"""

from __future__ import annotations

import builtins
import json
import uuid
from collections.abc import Callable
from dataclasses import replace
from datetime import datetime, timedelta
from typing import Any

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
from avgate.ledger.entry import LedgerEntry
from services.identity.codes import CodeOutcome, check_code_format
from services.identity.documents import age_on, parse_individual_name, parse_mobile, parse_resident_id
from services.identity.domain import (
    ADULT_AGE,
    GUARDIAN_CONSENT_AGE,
    SubjectType,
    UserRef,
    VerificationLevel,
    VerificationMethod,
    status_from,
)
from services.identity.service import MAX_KEY, iso, request_digest, request_user
from services.identity.sms import SmsSender
from services.identity.vault import (
    BlindIndexer,
    DataKey,
    IndexKind,
    Masked,
    Vault,
    mask_mobile,
    mask_name,
    mask_organization_name,
)
from services.identity.verification.domain import (
    ERASURE_BASIS,
    FINISHED,
    FLOW_TTL,
    GUARDIAN_CONSENT_BASIS,
    MAX_ERASURE_REASON,
    MAX_TEXT_VERSION,
    REINDEX_BASIS,
    SENSITIVE_CONSENT_BASIS,
    SMS_TEXT,
    VERIFICATION_BASIS,
    CodeSent,
    Consent,
    ConsentPurpose,
    ConsentRecord,
    Erasure,
    ErasureRecord,
    FailureReason,
    Flow,
    FlowRecord,
    FlowState,
    FlowUpdate,
    GuardianInput,
    IdentityInput,
    KeyTaken,
    VerifiedAccount,
    adult_on,
    mask_id,
    parse_subject,
)
from services.identity.verification.store import VerificationStore, VerificationTransaction
from services.identity.verifier import IdentityVerifier


class VerificationService:
    def __init__(
        self,
        store: VerificationStore,
        *,
        vault: Vault,
        indexer: BlindIndexer,
        sms: SmsSender,
        verifier: IdentityVerifier | None,
        clock: Callable[[], datetime],
        flow_ttl: timedelta = FLOW_TTL,
    ):
        self._store = store
        self._vault = vault
        self._indexer = indexer
        self._sms = sms
        self._verifier = verifier
        self._clock = clock
        self._flow_ttl = flow_ttl

    # ----------------------------------------------------------------- who

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
        basis: str = VERIFICATION_BASIS,
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

    # ----------------------------------------------------------------- records ⇄ views

    async def _data_key(self, tx: VerificationTransaction, record_id: str) -> DataKey | None:
        wrapped = await tx.data_key(record_id)
        return self._vault.open_data_key(record_id, wrapped) if wrapped is not None else None

    def _flow_view(self, r: FlowRecord, key: DataKey | None) -> Flow:
        masked_name = masked_id = masked_mobile = None
        subject_type = SubjectType(r.subject_type)
        if key is not None and r.name_ct is not None:
            assert r.id_number_ct is not None and r.mobile_ct is not None
            name = key.decrypt("name", r.name_ct)
            masked_name = mask_name(name) if subject_type is SubjectType.INDIVIDUAL else mask_organization_name(name)
            masked_id = mask_id(r.id_kind, key.decrypt("id_number", r.id_number_ct))
            masked_mobile = mask_mobile(key.decrypt("mobile", r.mobile_ct))
        state = FlowState(r.state)
        if state not in FINISHED and r.expire_time <= self._clock():
            state = FlowState.EXPIRED
        return Flow(
            flow_id=r.flow_id,
            user=r.user,
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

    async def _flow(self, tx: VerificationTransaction, flow_id: str) -> Flow:
        record = await tx.flow(flow_id)
        assert record is not None
        return self._flow_view(record, await self._data_key(tx, flow_id))

    async def _consent_view(self, tx: VerificationTransaction, r: ConsentRecord) -> Consent:
        masked = None
        if r.guardian_name_ct is not None:
            key = await self._data_key(tx, r.consent_id)
            if key is not None:
                masked = mask_name(key.decrypt("guardian_name", r.guardian_name_ct))
        return Consent(
            consent_id=r.consent_id,
            user=r.user,
            purpose=ConsentPurpose(r.purpose),
            text_version=r.text_version,
            consent_time=r.consent_time,
            withdraw_time=r.withdraw_time,
            masked_guardian_name=masked,
            create_time=r.create_time,
        )

    async def _visible_flow(
        self, tx: VerificationTransaction, caller: Principal, flow_id: str, *, lock: bool
    ) -> FlowRecord:
        caller.require_role(Role.PROVIDER, Role.OPERATOR)
        if not flow_id:
            raise InvalidArgument(FieldViolation("flow_id", "must be set"))
        record = await tx.flow(flow_id, lock=lock)
        if record is None or not self._may_see(caller, record.tenant_id):
            raise NotFound("verification_flow", flow_id)
        return record

    def _usable(self, record: FlowRecord) -> None:
        """FAILED_PRECONDITION for a finished or expired flow (expiry is read from expire_time)."""
        state = FlowState(record.state)
        if state not in FINISHED and record.expire_time <= self._clock():
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
        ref = request_user(caller, user, check)
        check.identifier(idempotency_key, "idempotency_key", max_length=MAX_KEY)
        if purpose is None:
            check.add("purpose", "must be set")
        elif purpose is ConsentPurpose.GUARDIAN:
            check.add("purpose", "a guardian's consent is recorded with RecordGuardianConsent")
        check.text(text_version, "text_version", max_length=MAX_TEXT_VERSION)
        if consent_time is not None and consent_time > now:
            check.add("consent_time", "must not be in the future")
        check.raise_if_any()
        assert purpose is not None
        at = consent_time or now
        digest = request_digest({"user": [ref.tenant_id, ref.user_id], "purpose": purpose.value, "v": text_version})
        consent_id = "cns" + uuid.uuid4().hex
        audit = self._entry(
            caller,
            "consent.record",
            "consent",
            consent_id,
            ref,
            {"purpose": purpose.value, "text_version": text_version, "consent_time": iso(at)},
            basis=SENSITIVE_CONSENT_BASIS,
            key=f"consent.record:{ref.tenant_id}:{idempotency_key}",
        )
        try:
            async with self._store.write() as tx:
                await tx.lock_account(ref)
                await tx.insert_consent(
                    ConsentRecord(
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
                    await tx.set_sensitive_consent(ref, True)
                await tx.append(audit)
        except KeyTaken:
            pass  # a retry (or a concurrent call) with this key: answered from what it recorded
        async with self._store.read() as tx:
            record = await tx.consent_by_key(ref.tenant_id, idempotency_key)
            assert record is not None
            if record.request_hash != digest:
                raise IdempotencyConflict(
                    "consent", idempotency_key, "this idempotency key was used with another request"
                )
            return await self._consent_view(tx, record)

    async def list_consents(
        self, caller: Principal, user: UserRef | None, *, page_size: int, page_token: str
    ) -> tuple[builtins.list[Consent], str]:
        check = FieldChecker()
        ref = request_user(caller, user, check)
        check_page_size(check, page_size)
        check.raise_if_any()
        limit = page_limit(page_size)
        after = decode_page_token(page_token) if page_token else None
        async with self._store.read() as tx:
            records = await tx.list_consents(ref, after=after, limit=limit + 1)
            found = [await self._consent_view(tx, r) for r in records]
        page = found[:limit]
        token = encode_page_token(page[-1].create_time, page[-1].consent_id) if len(found) > limit else ""
        return page, token

    async def withdraw_consent(
        self, caller: Principal, idempotency_key: str, consent_id: str, withdraw_time: datetime | None
    ) -> tuple[Consent, Erasure | None]:
        caller.require_role(Role.PROVIDER, Role.OPERATOR)
        now = self._clock()
        check = FieldChecker()
        check.identifier(idempotency_key, "idempotency_key", max_length=MAX_KEY)
        check.require(bool(consent_id), "consent_id", "must be set")
        if withdraw_time is not None and withdraw_time > now:
            check.add("withdraw_time", "must not be in the future")
        check.raise_if_any()
        async with self._store.write() as tx:
            record = await tx.consent(consent_id, lock=True)
            if record is None or not self._may_see(caller, record.tenant_id):
                raise NotFound("consent", consent_id)
            ref = record.user
            erasure = None
            if record.withdraw_time is None:
                purpose = ConsentPurpose(record.purpose)
                audit = self._entry(
                    caller,
                    "consent.withdraw",
                    "consent",
                    consent_id,
                    ref,
                    {"purpose": purpose.value},
                    basis=SENSITIVE_CONSENT_BASIS if purpose is not ConsentPurpose.GUARDIAN else GUARDIAN_CONSENT_BASIS,
                    key=f"consent.withdraw:{consent_id}",
                )
                await tx.lock_account(ref)
                if purpose is ConsentPurpose.SENSITIVE_PERSONAL_INFORMATION:
                    erasure = await self._erase(
                        tx, caller, ref, f"consent:{consent_id}", "consent_withdrawn", "sensitive consent withdrawn"
                    )
                elif purpose is ConsentPurpose.GUARDIAN:
                    await tx.set_guardian_consent_recorded(ref, False)
                await tx.withdraw_consent(
                    consent_id, withdraw_time or now, idempotency_key, erasure.erasure_id if erasure else None
                )
                if purpose is ConsentPurpose.SENSITIVE_PERSONAL_INFORMATION:
                    await tx.refresh_sensitive_consent(ref)
                await tx.append(audit)
                record = await tx.consent(consent_id)
                assert record is not None
            elif record.erasure_id:
                erasure = await tx.erasure(record.erasure_id)
            return await self._consent_view(tx, record), erasure

    # ----------------------------------------------------------------- erasure

    async def _erase(
        self, tx: VerificationTransaction, caller: Principal, ref: UserRef, key: str, cause: str, reason: str
    ) -> Erasure:
        """Crypto-shreds the user's personal data in the caller's transaction (account row locked)."""
        now = self._clock()
        destroyed = await tx.erase_personal_data(ref, now)
        erasure_id = "era" + uuid.uuid4().hex
        audit = self._entry(
            caller,
            "personal_data.erase",
            "account",
            f"{ref.tenant_id}/{ref.user_id}",
            ref,
            {"erasure_id": erasure_id, "cause": cause, "records_destroyed": destroyed},
            basis=ERASURE_BASIS,
            reason=reason,
            key=f"personal_data.erase:{erasure_id}",
        )
        erasure = Erasure(erasure_id, ref, now, str(audit.entry_id))
        await tx.insert_erasure(ErasureRecord(erasure, key, cause, reason))
        await tx.append(audit)
        return erasure

    async def request_erasure(
        self, caller: Principal, idempotency_key: str, user: UserRef | None, reason: str
    ) -> Erasure:
        check = FieldChecker()
        ref = request_user(caller, user, check)
        check.identifier(idempotency_key, "idempotency_key", max_length=MAX_KEY)
        check.text(reason, "reason", max_length=MAX_ERASURE_REASON)
        check.raise_if_any()
        async with self._store.write() as tx:
            await tx.lock_account(ref)
            earlier = await tx.erasure_by_key(ref.tenant_id, idempotency_key)
            if earlier is not None:
                return earlier
            return await self._erase(tx, caller, ref, idempotency_key, "request", reason)

    # ----------------------------------------------------------------- flows

    async def start(self, caller: Principal, idempotency_key: str, user: UserRef | None, raw: IdentityInput) -> Flow:
        now = self._clock()
        check = FieldChecker()
        ref = request_user(caller, user, check)
        check.identifier(idempotency_key, "idempotency_key", max_length=MAX_KEY)
        check.raise_if_any()
        subject = parse_subject(raw, "individual", now.date())
        tenant = ref.tenant_id
        request = json.dumps(
            [ref.user_id, subject.subject_type.value, subject.id_kind, subject.name, subject.id_number, subject.mobile]
        )
        # Keyed: an unkeyed hash of an ID number could be searched offline.
        digest = self._indexer.index("flow_request", tenant, request).digest
        async with self._store.read() as tx:
            earlier = await tx.flow_by_key(tenant, idempotency_key)
            if earlier is not None:
                if earlier.request_digest != digest:
                    raise IdempotencyConflict(
                        "verification_flow", idempotency_key, "this idempotency key was used with another request"
                    )
                return self._flow_view(earlier, await self._data_key(tx, earlier.flow_id))
            if not await tx.has_sensitive_consent(ref):
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
            minor_until = adult_on(subject.birth_date) if age < ADULT_AGE else None
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
        record = FlowRecord(
            flow_id=flow_id,
            tenant_id=tenant,
            user_id=ref.user_id,
            idempotency_key=idempotency_key,
            request_digest=digest,
            subject_type=subject.subject_type.value,
            id_kind=subject.id_kind,
            state=FlowState.AWAITING_CODE.value,
            level_reached=VerificationLevel.FORMAT_CHECKED.value,
            methods=(VerificationMethod.FORMAT_CHECK.value,),
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
        try:
            async with self._store.write() as tx:
                await tx.ensure_account(ref)
                await tx.store_data_key(flow_id, ref, wrapped, now)
                await tx.insert_flow(record)
                await tx.append(audit)
        except KeyTaken:
            return await self.start(caller, idempotency_key, user, raw)
        async with self._store.read() as tx:
            return await self._flow(tx, flow_id)

    async def get_flow(self, caller: Principal, flow_id: str) -> Flow:
        async with self._store.read() as tx:
            record = await self._visible_flow(tx, caller, flow_id, lock=False)
            return self._flow_view(record, await self._data_key(tx, record.flow_id))

    async def send_code(self, caller: Principal, flow_id: str) -> CodeSent:
        async with self._store.write() as tx:
            record = await self._visible_flow(tx, caller, flow_id, lock=True)
            self._usable(record)
            if FlowState(record.state) is not FlowState.AWAITING_CODE:
                raise FailedPrecondition(f"the verification flow is {record.state}; no code is needed")
            key = await self._data_key(tx, flow_id)
            assert key is not None and record.mobile_ct is not None and record.phone_index is not None
            mobile = key.decrypt("mobile", record.mobile_ct)
            allowance = await tx.record_send(record.phone_index, self._client_address(caller))
            issued = await tx.issue_code(flow_id, record.phone_index)
            await tx.append(
                self._entry(
                    caller,
                    "verification.code_sent",
                    "verification_flow",
                    flow_id,
                    record.user,
                    {"code_id": str(issued.code_id), "code_expire_time": iso(issued.expires_at)},
                ),
            )
            minutes = max(1, round((issued.expires_at - self._clock()).total_seconds() / 60))
            # Last, inside the transaction: a failed send rolls the code and the count back.
            await self._sms.send(mobile, SMS_TEXT.format(code=issued.code, minutes=minutes))
            flow = self._flow_view(record, key)
        return CodeSent(flow, issued.expires_at, allowance.next_send_at)

    async def confirm_code(self, caller: Principal, flow_id: str, code: str) -> tuple[Flow, int]:
        check_code_format(code)
        client_address = self._client_address(caller)
        async with self._store.write() as tx:
            record = await self._visible_flow(tx, caller, flow_id, lock=True)
            self._usable(record)
            if FlowState(record.state) is not FlowState.AWAITING_CODE:
                raise FailedPrecondition(f"the verification flow is {record.state}; no code is awaited")
            ref = record.user
            assert record.phone_index is not None
            await tx.check_not_locked(ref, client_address)
            result = await tx.confirm_code(flow_id, record.phone_index, code)
            data: dict[str, Any]
            if result.confirmed:
                await tx.record_code_success(ref, client_address)
                waiting = record.guardian_consent_required and record.guardian_consent_id is None
                state = FlowState.AWAITING_GUARDIAN_CONSENT if waiting else FlowState.CODE_CONFIRMED
                await tx.update_flow(
                    flow_id,
                    FlowUpdate(
                        state=state,
                        level_reached=VerificationLevel.PHONE_VERIFIED,
                        methods=(*record.methods, VerificationMethod.SMS_CODE.value),
                    ),
                )
                await tx.set_lockout(ref, None, 0, 0)
                data = {"code_id": str(result.code_id), "level": VerificationLevel.PHONE_VERIFIED.value}
                action, remaining = "verification.code_confirmed", 0
            else:
                failure = await tx.record_code_failure(ref, client_address)
                account_lock = failure.account
                await tx.set_lockout(
                    ref,
                    failure.locked_until or account_lock.locked_until,
                    max(account_lock.level, failure.address.level),
                    account_lock.failed_attempts,
                )
                remaining = min(result.remaining_attempts, failure.remaining_before_lockout)
                data = {
                    "outcome": result.outcome.value,
                    "remaining_attempts": remaining,
                    "locked_until": iso(failure.locked_until),
                }
                if result.code_id is not None:
                    data["code_id"] = str(result.code_id)
                action = "verification.code_failed"
                if result.outcome is not CodeOutcome.WRONG:
                    remaining = 0
            await tx.append(self._entry(caller, action, "verification_flow", flow_id, ref, data))
            flow = await self._flow(tx, flow_id)
        return flow, remaining

    async def complete(self, caller: Principal, flow_id: str, idempotency_key: str) -> Flow:
        check = FieldChecker()
        check.identifier(idempotency_key, "idempotency_key", max_length=MAX_KEY)
        check.raise_if_any()
        async with self._store.read() as tx:
            record = await self._visible_flow(tx, caller, flow_id, lock=False)
            state = FlowState(record.state)
            if state in FINISHED and record.complete_idempotency_key == idempotency_key:
                return await self._flow(tx, flow_id)
            self._usable(record)
            if state is FlowState.AWAITING_GUARDIAN_CONSENT or (
                record.guardian_consent_required and record.guardian_consent_id is None
            ):
                raise FailedPrecondition(
                    "the user is under 14: a guardian's consent must be recorded first (RecordGuardianConsent)"
                )
            key = await self._data_key(tx, flow_id)
            assert key is not None and record.name_ct is not None and record.id_number_ct is not None
            name = key.decrypt("name", record.name_ct)
            id_number = key.decrypt("id_number", record.id_number_ct)
        level = VerificationLevel(record.level_reached)
        methods = list(record.methods)
        reference = None
        matched: bool | None = None
        if (
            self._verifier is not None
            and state is FlowState.CODE_CONFIRMED
            and record.id_kind in (IndexKind.RESIDENT_ID, IndexKind.CREDIT_CODE)
        ):
            # Outside any transaction: DependencyUnavailable leaves the flow as it was.
            if record.id_kind == IndexKind.RESIDENT_ID:
                answer = await self._verifier.verify_individual(name=name, id_number=id_number)
            else:
                answer = await self._verifier.verify_organization(credit_code=id_number, name=name)
            matched, reference = answer.matched, answer.reference
            if matched:
                level = VerificationLevel.AUTHORITATIVELY_VERIFIED
                methods.append(VerificationMethod.AUTHORITATIVE_SERVICE.value)
        ref = record.user
        async with self._store.write() as tx:
            current = await tx.flow(flow_id, lock=True)
            assert current is not None
            if FlowState(current.state) is not state:
                raise FailedPrecondition("the verification flow changed meanwhile; read it and retry")
            await tx.lock_account(ref)
            now = self._clock()
            failure = FailureReason.IDENTITY_MISMATCH if matched is False else None
            if failure is None and await tx.one_identity_per_account(ref.tenant_id):
                # One claim under every index key in the file: while a rotation is under
                # way an identity claimed under the old key still collides with the new.
                indexes = self._indexer.index_all(record.id_kind, ref.tenant_id, id_number)
                if not await tx.claim_identity(ref, record.id_kind, flow_id, indexes, now):
                    failure = FailureReason.IDENTITY_IN_USE
            finish = FlowUpdate(complete_idempotency_key=idempotency_key, finish_time=now, verifier_reference=reference)
            if failure is not None:
                await tx.update_flow(flow_id, replace(finish, state=FlowState.FAILED, failure_reason=failure))
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
                await tx.update_flow(
                    flow_id,
                    replace(finish, state=FlowState.COMPLETED, level_reached=level, methods=tuple(methods)),
                )
                status = status_from(await tx.active_actions(ref), now)  # a new verification ends an erasure's ERASED
                verified = VerifiedAccount(
                    subject_type=record.subject_type,
                    level=level,
                    methods=tuple(methods),
                    verify_time=now,
                    minor_until=record.minor_until,
                    guardian_consent_recorded=record.guardian_consent_id is not None,
                )
                await tx.record_verification(ref, verified, status)
                audit = self._entry(
                    caller,
                    "verification.complete",
                    "verification_flow",
                    flow_id,
                    ref,
                    {
                        "subject_type": record.subject_type,
                        "level": level.value,
                        "methods": methods,
                        "minor": record.minor_until is not None,
                        "verifier_reference": reference or "",
                    },
                    key=f"verification.finish:{flow_id}",
                )
            await tx.append(audit)
            return await self._flow(tx, flow_id)

    async def masked_identity(self, ref: UserRef) -> tuple[Masked | None, Masked | None, Masked | None]:
        """The masked name, ID and mobile of the account's latest completed flow (none after erasure)."""
        async with self._store.read() as tx:
            record = await tx.latest_completed_flow(ref)
            if record is None:
                return None, None, None
            flow = self._flow_view(record, await self._data_key(tx, record.flow_id))
        return flow.masked_name, flow.masked_id_number, flow.masked_mobile

    # ----------------------------------------------------------------- guardians

    async def record_guardian_consent(self, caller: Principal, request: GuardianInput) -> tuple[Flow, Consent]:
        now = self._clock()
        check = FieldChecker()
        check.identifier(request.idempotency_key, "idempotency_key", max_length=MAX_KEY)
        check.require(bool(request.flow_id), "flow_id", "must be set")
        check.require(request.guardian is not None, "guardian", "must be set")
        check.require(request.relationship is not None, "relationship", "must be set")
        check.text(request.text_version, "consent_text_version", max_length=MAX_TEXT_VERSION)
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
        async with self._store.read() as tx:
            record = await self._visible_flow(tx, caller, request.flow_id, lock=False)
            earlier = await tx.consent_by_key(record.tenant_id, request.idempotency_key)
            if earlier is not None:
                if earlier.flow_id != request.flow_id:
                    raise IdempotencyConflict(
                        "consent", request.idempotency_key, "this idempotency key was used with another request"
                    )
                return await self._flow(tx, request.flow_id), await self._consent_view(tx, earlier)
            state = FlowState(record.state)
            if not record.guardian_consent_required or state not in (
                FlowState.AWAITING_CODE,
                FlowState.AWAITING_GUARDIAN_CONSENT,
            ):
                raise FailedPrecondition(f"the verification flow does not await a guardian's consent ({state.value})")
            if record.expire_time <= now:
                raise FailedPrecondition("the verification flow expired; start a new one")
        ref = record.user
        mismatch = False
        if self._verifier is not None:
            answer = await self._verifier.verify_individual(name=name, id_number=ric.value)
            mismatch = not answer.matched
        consent_id = "cns" + uuid.uuid4().hex
        at = request.consent_time or now
        if mismatch:
            async with self._store.write() as tx:
                await tx.update_flow(
                    request.flow_id,
                    FlowUpdate(
                        state=FlowState.FAILED, failure_reason=FailureReason.GUARDIAN_CONSENT_FAILED, finish_time=now
                    ),
                )
                await tx.append(
                    self._entry(
                        caller,
                        "verification.fail",
                        "verification_flow",
                        request.flow_id,
                        ref,
                        {"failure_reason": FailureReason.GUARDIAN_CONSENT_FAILED.value},
                        basis=GUARDIAN_CONSENT_BASIS,
                    ),
                )
            raise FailedPrecondition("the guardian's identity could not be verified; the flow failed")
        async with self._store.write() as tx:
            current = await tx.flow(request.flow_id, lock=True)
            assert current is not None
            if current.state != record.state:
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
                basis=GUARDIAN_CONSENT_BASIS,
                key=f"consent.record:{ref.tenant_id}:{request.idempotency_key}",
            )
            await tx.store_data_key(consent_id, ref, wrapped, now)
            await tx.insert_consent(
                ConsentRecord(
                    consent_id=consent_id,
                    tenant_id=ref.tenant_id,
                    user_id=ref.user_id,
                    idempotency_key=request.idempotency_key,
                    request_hash=request_digest({"flow_id": request.flow_id}),
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
            waiting = FlowState(record.state) is FlowState.AWAITING_GUARDIAN_CONSENT
            await tx.update_flow(
                request.flow_id,
                FlowUpdate(guardian_consent_id=consent_id, state=FlowState.CODE_CONFIRMED if waiting else None),
            )
            await tx.append(audit)
            consent = await tx.consent(consent_id)
            assert consent is not None
            return await self._flow(tx, request.flow_id), await self._consent_view(tx, consent)

    # ----------------------------------------------------------------- key rotation

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
        moved = 0
        async with self._store.write() as tx:
            for record in await tx.flows_to_reindex(current, limit):
                key = await self._data_key(tx, record.flow_id)
                if key is None:  # erased meanwhile: nothing to index
                    continue
                assert record.id_number_ct is not None
                id_number = key.decrypt("id_number", record.id_number_ct)
                mobile = key.decrypt("mobile", record.mobile_ct) if record.mobile_ct is not None else None
                id_index = self._indexer.index(record.id_kind, record.tenant_id, id_number)
                phone_index = (
                    self._indexer.index(IndexKind.MOBILE, record.tenant_id, mobile).digest
                    if mobile is not None
                    else None
                )
                await tx.set_flow_indexes(record.flow_id, current, id_index.digest, phone_index)
                claimed = await tx.claim_of_flow(record.flow_id)
                if claimed is not None:
                    user_id, create_time = claimed
                    await tx.add_claim(record.tenant_id, record.id_kind, id_index, user_id, record.flow_id, create_time)
                moved += 1
            await tx.drop_claims_outside(self._indexer.versions)
            if moved:
                await tx.append(
                    LedgerEntry(
                        action="identity.reindex",
                        subject_type="blind_index_key",
                        subject_id=current,
                        actor=Principal(role=Role.SERVICE, subject="identity"),
                        legal_basis=REINDEX_BASIS,
                        reason="blind indexes moved to the current index key",
                        tenant_id="",
                        data={"flows": moved},
                        occurred_at=self._clock(),
                    ),
                )
        return moved
