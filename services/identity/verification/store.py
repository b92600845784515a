"""Where verification flows, consents, erasures and the personal-data keys live.

A use case works in one transaction (`write()`) or one read (`read()`), and
asks the transaction for what it needs: records in and out as domain values
(`FlowRecord`, `ConsentRecord`), never rows. The one-time codes and the abuse
limits work in the same transaction, so a failed SMS send rolls back the code
and the count with the rest. Constraint violations the use cases act on come
back as `KeyTaken` (an idempotency key another request holds) or a False
claim (an identity another account holds), never as database errors.

The unit tests' store is InMemoryVerificationStore (memory.py); the contract
suite (tests/integration/test_verification_store_contract.py) holds both alike.
"""

from __future__ import annotations

import builtins
import contextlib
import uuid
from collections.abc import AsyncIterator, Callable, Sequence
from contextlib import AbstractAsyncContextManager
from datetime import datetime
from typing import Any, Protocol

import sqlalchemy.exc
from sqlalchemy import and_, delete, func, or_, select, update
from sqlalchemy.dialects.postgresql import insert as pg_insert
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from avgate.kernel.db import violated_constraint
from avgate.kernel.paging import Cursor
from avgate.ledger.append import append as ledger_append
from avgate.ledger.entry import LedgerEntry
from services.identity.codes import ConfirmResult, IssuedCode, OneTimeCodes
from services.identity.domain import AccountStatus, EnforcementAction, UserRef, VerificationLevel
from services.identity.limits import AbuseLimits, FailureRecorded, SendAllowance
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
from services.identity.store import active_actions
from services.identity.vault import BlindIndex, WrappedDataKey
from services.identity.verification.domain import (
    FINISHED,
    ConsentPurpose,
    ConsentRecord,
    Erasure,
    ErasureRecord,
    FailureReason,
    FlowRecord,
    FlowState,
    FlowUpdate,
    KeyTaken,
    VerifiedAccount,
)


class VerificationTransaction(Protocol):
    """One transaction (or one read) of a verification use case."""

    # accounts
    async def ensure_account(self, user: UserRef) -> None: ...

    async def lock_account(self, user: UserRef) -> None:
        """Creates the account row if needed and locks it until the transaction ends."""
        ...

    async def active_actions(self, user: UserRef) -> builtins.list[EnforcementAction]: ...

    async def set_sensitive_consent(self, user: UserRef, in_force: bool) -> None: ...

    async def refresh_sensitive_consent(self, user: UserRef) -> None:
        """Sets the account's flag from the sensitive-information consents not withdrawn."""
        ...

    async def set_guardian_consent_recorded(self, user: UserRef, recorded: bool) -> None: ...

    async def set_lockout(self, user: UserRef, until: datetime | None, level: int, failed_attempts: int) -> None: ...

    async def record_verification(self, user: UserRef, verified: VerifiedAccount, status: AccountStatus) -> None: ...

    async def one_identity_per_account(self, tenant_id: str) -> bool: ...

    # personal-data keys
    async def data_key(self, record_id: str) -> WrappedDataKey | None:
        """A record's wrapped data key; None once erased."""
        ...

    async def store_data_key(self, record_id: str, user: UserRef, wrapped: WrappedDataKey, now: datetime) -> None: ...

    # flows
    async def flow(self, flow_id: str, *, lock: bool = False) -> FlowRecord | None: ...

    async def flow_by_key(self, tenant_id: str, idempotency_key: str) -> FlowRecord | None: ...

    async def latest_completed_flow(self, user: UserRef) -> FlowRecord | None:
        """The user's latest completed flow that still holds its data (none after erasure)."""
        ...

    async def insert_flow(self, record: FlowRecord) -> None:
        """KeyTaken when another flow holds the (tenant, idempotency key)."""
        ...

    async def update_flow(self, flow_id: str, change: FlowUpdate) -> None: ...

    async def flows_to_reindex(self, current_version: str, limit: int) -> builtins.list[FlowRecord]:
        """Flows holding data indexed under another key, locked (SKIP LOCKED: replicas share them)."""
        ...

    async def set_flow_indexes(
        self, flow_id: str, version: str, id_index: bytes, phone_index: bytes | None
    ) -> None: ...

    # identity claims ("one identity per account")
    async def claim_identity(
        self, user: UserRef, kind: str, flow_id: str, indexes: Sequence[BlindIndex], now: datetime
    ) -> bool:
        """Replaces the user's claims of `kind` with one per index; False when another account holds one."""
        ...

    async def claim_of_flow(self, flow_id: str) -> tuple[str, datetime] | None:
        """(user id, create time) of a claim made by the flow, if any."""
        ...

    async def add_claim(
        self, tenant_id: str, kind: str, index: BlindIndex, user_id: str, flow_id: str, create_time: datetime
    ) -> None:
        """Adds a claim unless one is there already."""
        ...

    async def drop_claims_outside(self, versions: Sequence[str]) -> None:
        """Deletes claims under index keys no longer in the key file."""
        ...

    # consents
    async def consent(self, consent_id: str, *, lock: bool = False) -> ConsentRecord | None: ...

    async def consent_by_key(self, tenant_id: str, idempotency_key: str) -> ConsentRecord | None: ...

    async def list_consents(
        self, user: UserRef, *, after: Cursor | None, limit: int
    ) -> builtins.list[ConsentRecord]: ...

    async def insert_consent(self, record: ConsentRecord) -> None:
        """KeyTaken when another consent holds the (tenant, idempotency key)."""
        ...

    async def withdraw_consent(
        self, consent_id: str, withdraw_time: datetime, idempotency_key: str, erasure_id: str | None
    ) -> None: ...

    async def has_sensitive_consent(self, user: UserRef) -> bool: ...

    # erasure
    async def erase_personal_data(self, user: UserRef, now: datetime) -> int:
        """Crypto-shreds the user's personal data (account row locked); how many data keys it destroyed."""
        ...

    async def erasure(self, erasure_id: str) -> Erasure | None: ...

    async def erasure_by_key(self, tenant_id: str, idempotency_key: str) -> Erasure | None: ...

    async def insert_erasure(self, record: ErasureRecord) -> None: ...

    # one-time codes and abuse limits
    async def record_send(self, phone_key: bytes, client_address: str | None) -> SendAllowance: ...

    async def issue_code(self, flow_id: str, phone_index: bytes) -> IssuedCode: ...

    async def check_not_locked(self, user: UserRef, client_address: str | None) -> None: ...

    async def confirm_code(self, flow_id: str, phone_index: bytes, code: str) -> ConfirmResult: ...

    async def record_code_success(self, user: UserRef, client_address: str | None) -> None: ...

    async def record_code_failure(self, user: UserRef, client_address: str | None) -> FailureRecorded: ...

    # the ledger
    async def append(self, entry: LedgerEntry) -> None: ...


class VerificationStore(Protocol):
    def read(self) -> AbstractAsyncContextManager[VerificationTransaction]:
        """A read: nothing it does is kept."""
        ...

    def write(self) -> AbstractAsyncContextManager[VerificationTransaction]:
        """A transaction: commits when the block ends, rolls back when it raises."""
        ...


# --------------------------------------------------------------------------- rows ⇄ domain


def _bytes(value: Any) -> bytes | None:
    return bytes(value) if value is not None else None


def _flow_from_row(r: Any) -> FlowRecord:
    return FlowRecord(
        flow_id=r.flow_id,
        tenant_id=r.tenant_id,
        user_id=r.user_id,
        idempotency_key=r.idempotency_key,
        request_digest=bytes(r.request_digest),
        subject_type=r.subject_type,
        id_kind=r.id_kind,
        state=r.state,
        level_reached=r.level_reached,
        methods=tuple(r.methods),
        name_ct=_bytes(r.name_ct),
        id_number_ct=_bytes(r.id_number_ct),
        mobile_ct=_bytes(r.mobile_ct),
        index_version=r.index_version,
        id_index=_bytes(r.id_index),
        phone_index=_bytes(r.phone_index),
        guardian_consent_required=r.guardian_consent_required,
        create_time=r.create_time,
        expire_time=r.expire_time,
        update_time=r.update_time,
        guardian_consent_id=r.guardian_consent_id,
        minor_until=r.minor_until,
        failure_reason=r.failure_reason,
        complete_idempotency_key=r.complete_idempotency_key,
        verifier_reference=r.verifier_reference,
        finish_time=r.finish_time,
    )


def _flow_to_row(f: FlowRecord) -> dict[str, Any]:
    return {
        "flow_id": f.flow_id,
        "tenant_id": f.tenant_id,
        "user_id": f.user_id,
        "idempotency_key": f.idempotency_key,
        "request_digest": f.request_digest,
        "subject_type": f.subject_type,
        "id_kind": f.id_kind,
        "state": f.state,
        "level_reached": f.level_reached,
        "methods": list(f.methods),
        "name_ct": f.name_ct,
        "id_number_ct": f.id_number_ct,
        "mobile_ct": f.mobile_ct,
        "index_version": f.index_version,
        "id_index": f.id_index,
        "phone_index": f.phone_index,
        "guardian_consent_required": f.guardian_consent_required,
        "guardian_consent_id": f.guardian_consent_id,
        "minor_until": f.minor_until,
        "failure_reason": f.failure_reason,
        "complete_idempotency_key": f.complete_idempotency_key,
        "verifier_reference": f.verifier_reference,
        "create_time": f.create_time,
        "expire_time": f.expire_time,
        "finish_time": f.finish_time,
        "update_time": f.update_time,
    }


def _consent_from_row(r: Any) -> ConsentRecord:
    return ConsentRecord(
        consent_id=r.consent_id,
        tenant_id=r.tenant_id,
        user_id=r.user_id,
        idempotency_key=r.idempotency_key,
        request_hash=bytes(r.request_hash),
        purpose=r.purpose,
        text_version=r.text_version,
        consent_time=r.consent_time,
        create_time=r.create_time,
        ledger_entry_id=r.ledger_entry_id,
        withdraw_time=r.withdraw_time,
        withdraw_idempotency_key=r.withdraw_idempotency_key,
        erasure_id=r.erasure_id,
        flow_id=r.flow_id,
        relationship=r.relationship,
        guardian_name_ct=_bytes(r.guardian_name_ct),
        guardian_id_number_ct=_bytes(r.guardian_id_number_ct),
        guardian_mobile_ct=_bytes(r.guardian_mobile_ct),
    )


def _consent_to_row(c: ConsentRecord) -> dict[str, Any]:
    return {
        "consent_id": c.consent_id,
        "tenant_id": c.tenant_id,
        "user_id": c.user_id,
        "idempotency_key": c.idempotency_key,
        "request_hash": c.request_hash,
        "purpose": c.purpose,
        "text_version": c.text_version,
        "consent_time": c.consent_time,
        "withdraw_time": c.withdraw_time,
        "withdraw_idempotency_key": c.withdraw_idempotency_key,
        "erasure_id": c.erasure_id,
        "flow_id": c.flow_id,
        "relationship": c.relationship,
        "guardian_name_ct": c.guardian_name_ct,
        "guardian_id_number_ct": c.guardian_id_number_ct,
        "guardian_mobile_ct": c.guardian_mobile_ct,
        "create_time": c.create_time,
        "ledger_entry_id": c.ledger_entry_id,
    }


def _erasure_from_row(r: Any) -> Erasure:
    return Erasure(r.erasure_id, UserRef(r.tenant_id, r.user_id), r.erase_time, str(r.ledger_entry_id))


def _of_account(user: UserRef) -> Any:
    return and_(accounts.c.tenant_id == user.tenant_id, accounts.c.user_id == user.user_id)


def _sensitive_in_force(user: UserRef) -> Any:
    c = consents.c
    return and_(
        c.tenant_id == user.tenant_id,
        c.user_id == user.user_id,
        c.purpose == ConsentPurpose.SENSITIVE_PERSONAL_INFORMATION.value,
        c.withdraw_time.is_(None),
    )


# --------------------------------------------------------------------------- the SQL store


class SqlVerificationTransaction:
    def __init__(self, conn: AsyncConnection, codes: OneTimeCodes, limits: AbuseLimits, clock: Callable[[], datetime]):
        self._conn = conn
        self._codes = codes
        self._limits = limits
        self._clock = clock

    # ----------------------------------------------------------------- accounts

    async def ensure_account(self, user: UserRef) -> None:
        now = self._clock()
        await self._conn.execute(
            pg_insert(accounts)
            .values(tenant_id=user.tenant_id, user_id=user.user_id, create_time=now, update_time=now)
            .on_conflict_do_nothing(index_elements=["tenant_id", "user_id"])
        )

    async def lock_account(self, user: UserRef) -> None:
        await self.ensure_account(user)
        await self._conn.execute(select(accounts.c.tenant_id).where(_of_account(user)).with_for_update())

    async def active_actions(self, user: UserRef) -> builtins.list[EnforcementAction]:
        return await active_actions(self._conn, user)

    async def _update_account(self, user: UserRef, **values: Any) -> None:
        values["update_time"] = self._clock()
        await self._conn.execute(update(accounts).where(_of_account(user)).values(**values))

    async def set_sensitive_consent(self, user: UserRef, in_force: bool) -> None:
        await self._update_account(user, sensitive_consent_in_force=in_force)

    async def refresh_sensitive_consent(self, user: UserRef) -> None:
        count = (await self._conn.execute(select(func.count()).where(_sensitive_in_force(user)))).scalar_one()
        await self._update_account(user, sensitive_consent_in_force=count > 0)

    async def set_guardian_consent_recorded(self, user: UserRef, recorded: bool) -> None:
        await self._update_account(user, guardian_consent_recorded=recorded)

    async def set_lockout(self, user: UserRef, until: datetime | None, level: int, failed_attempts: int) -> None:
        await self._update_account(user, lockout_until=until, lockout_level=level, failed_attempts=failed_attempts)

    async def record_verification(self, user: UserRef, verified: VerifiedAccount, status: AccountStatus) -> None:
        await self._update_account(
            user,
            subject_type=verified.subject_type,
            verification_level=verified.level.value,
            verification_methods=list(verified.methods),
            verify_time=verified.verify_time,
            minor_until=verified.minor_until,
            guardian_consent_recorded=verified.guardian_consent_recorded,
            status=status.value,
        )

    async def one_identity_per_account(self, tenant_id: str) -> bool:
        p = eligibility_policies.c
        found = (await self._conn.execute(select(p.one_identity_per_account).where(p.tenant_id == tenant_id))).first()
        return bool(found and found[0])

    # ----------------------------------------------------------------- personal-data keys

    async def data_key(self, record_id: str) -> WrappedDataKey | None:
        k = personal_data_keys.c
        row = (await self._conn.execute(select(personal_data_keys).where(k.record_id == record_id))).first()
        return WrappedDataKey(row.kek_id, row.version, bytes(row.wrapped)) if row is not None else None

    async def store_data_key(self, record_id: str, user: UserRef, wrapped: WrappedDataKey, now: datetime) -> None:
        await self._conn.execute(
            personal_data_keys.insert().values(
                record_id=record_id,
                tenant_id=user.tenant_id,
                user_id=user.user_id,
                kek_id=wrapped.kek_id,
                version=wrapped.version,
                wrapped=wrapped.wrapped,
                create_time=now,
            )
        )

    # ----------------------------------------------------------------- flows

    async def flow(self, flow_id: str, *, lock: bool = False) -> FlowRecord | None:
        query = select(verification_flows).where(verification_flows.c.flow_id == flow_id)
        if lock:
            query = query.with_for_update()
        row = (await self._conn.execute(query)).first()
        return _flow_from_row(row) if row is not None else None

    async def flow_by_key(self, tenant_id: str, idempotency_key: str) -> FlowRecord | None:
        f = verification_flows.c
        query = select(verification_flows).where(f.tenant_id == tenant_id, f.idempotency_key == idempotency_key)
        row = (await self._conn.execute(query)).first()
        return _flow_from_row(row) if row is not None else None

    async def latest_completed_flow(self, user: UserRef) -> FlowRecord | None:
        f = verification_flows.c
        query = (
            select(verification_flows)
            .where(
                f.tenant_id == user.tenant_id,
                f.user_id == user.user_id,
                f.state == FlowState.COMPLETED.value,
                f.name_ct.is_not(None),
            )
            .order_by(f.finish_time.desc())
            .limit(1)
        )
        row = (await self._conn.execute(query)).first()
        return _flow_from_row(row) if row is not None else None

    async def insert_flow(self, record: FlowRecord) -> None:
        try:
            async with self._conn.begin_nested():
                await self._conn.execute(verification_flows.insert().values(**_flow_to_row(record)))
        except sqlalchemy.exc.IntegrityError as exc:
            if violated_constraint(exc) != "verification_flows_tenant_idempotency_key":
                raise
            raise KeyTaken(record.idempotency_key) from exc

    async def update_flow(self, flow_id: str, change: FlowUpdate) -> None:
        values: dict[str, Any] = {
            "state": change.state.value if change.state is not None else None,
            "level_reached": change.level_reached.value if change.level_reached is not None else None,
            "methods": list(change.methods) if change.methods is not None else None,
            "guardian_consent_id": change.guardian_consent_id,
            "failure_reason": change.failure_reason.value if change.failure_reason is not None else None,
            "finish_time": change.finish_time,
            "complete_idempotency_key": change.complete_idempotency_key,
            "verifier_reference": change.verifier_reference,
        }
        values = {k: v for k, v in values.items() if v is not None}
        values["update_time"] = self._clock()
        await self._conn.execute(
            update(verification_flows).where(verification_flows.c.flow_id == flow_id).values(**values)
        )

    async def flows_to_reindex(self, current_version: str, limit: int) -> builtins.list[FlowRecord]:
        f = verification_flows.c
        rows = (
            await self._conn.execute(
                select(verification_flows)
                .where(f.index_version.is_not(None), f.index_version != current_version, f.id_number_ct.is_not(None))
                .order_by(f.flow_id)
                .limit(limit)
                .with_for_update(skip_locked=True)
            )
        ).all()
        return [_flow_from_row(r) for r in rows]

    async def set_flow_indexes(self, flow_id: str, version: str, id_index: bytes, phone_index: bytes | None) -> None:
        await self._conn.execute(
            update(verification_flows)
            .where(verification_flows.c.flow_id == flow_id)
            .values(index_version=version, id_index=id_index, phone_index=phone_index)
        )

    # ----------------------------------------------------------------- identity claims

    async def claim_identity(
        self, user: UserRef, kind: str, flow_id: str, indexes: Sequence[BlindIndex], now: datetime
    ) -> bool:
        c = identity_claims.c
        await self._conn.execute(
            delete(identity_claims).where(c.tenant_id == user.tenant_id, c.user_id == user.user_id, c.kind == kind)
        )
        try:
            async with self._conn.begin_nested():
                await self._conn.execute(
                    identity_claims.insert(),
                    [
                        {
                            "tenant_id": user.tenant_id,
                            "kind": kind,
                            "version": index.version,
                            "digest": index.digest,
                            "user_id": user.user_id,
                            "flow_id": flow_id,
                            "create_time": now,
                        }
                        for index in indexes
                    ],
                )
        except sqlalchemy.exc.IntegrityError as exc:
            if violated_constraint(exc) != "identity_claims_pkey":
                raise
            return False
        return True

    async def claim_of_flow(self, flow_id: str) -> tuple[str, datetime] | None:
        c = identity_claims.c
        row = (await self._conn.execute(select(c.user_id, c.create_time).where(c.flow_id == flow_id).limit(1))).first()
        return (row.user_id, row.create_time) if row is not None else None

    async def add_claim(
        self, tenant_id: str, kind: str, index: BlindIndex, user_id: str, flow_id: str, create_time: datetime
    ) -> None:
        await self._conn.execute(
            pg_insert(identity_claims)
            .values(
                tenant_id=tenant_id,
                kind=kind,
                version=index.version,
                digest=index.digest,
                user_id=user_id,
                flow_id=flow_id,
                create_time=create_time,
            )
            .on_conflict_do_nothing(constraint="identity_claims_pkey")
        )

    async def drop_claims_outside(self, versions: Sequence[str]) -> None:
        await self._conn.execute(delete(identity_claims).where(identity_claims.c.version.not_in(list(versions))))

    # ----------------------------------------------------------------- consents

    async def consent(self, consent_id: str, *, lock: bool = False) -> ConsentRecord | None:
        query = select(consents).where(consents.c.consent_id == consent_id)
        if lock:
            query = query.with_for_update()
        row = (await self._conn.execute(query)).first()
        return _consent_from_row(row) if row is not None else None

    async def consent_by_key(self, tenant_id: str, idempotency_key: str) -> ConsentRecord | None:
        c = consents.c
        query = select(consents).where(c.tenant_id == tenant_id, c.idempotency_key == idempotency_key)
        row = (await self._conn.execute(query)).first()
        return _consent_from_row(row) if row is not None else None

    async def list_consents(self, user: UserRef, *, after: Cursor | None, limit: int) -> builtins.list[ConsentRecord]:
        c = consents.c
        query = (
            select(consents)
            .where(c.tenant_id == user.tenant_id, c.user_id == user.user_id)
            .order_by(c.create_time.desc(), c.consent_id.desc())
            .limit(limit)
        )
        if after is not None:
            query = query.where(or_(c.create_time < after[0], and_(c.create_time == after[0], c.consent_id < after[1])))
        return [_consent_from_row(r) for r in (await self._conn.execute(query)).all()]

    async def insert_consent(self, record: ConsentRecord) -> None:
        try:
            async with self._conn.begin_nested():
                await self._conn.execute(consents.insert().values(**_consent_to_row(record)))
        except sqlalchemy.exc.IntegrityError as exc:
            if violated_constraint(exc) != "consents_tenant_idempotency_key":
                raise
            raise KeyTaken(record.idempotency_key) from exc

    async def withdraw_consent(
        self, consent_id: str, withdraw_time: datetime, idempotency_key: str, erasure_id: str | None
    ) -> None:
        values: dict[str, Any] = {"withdraw_time": withdraw_time, "withdraw_idempotency_key": idempotency_key}
        if erasure_id is not None:
            values["erasure_id"] = erasure_id
        await self._conn.execute(update(consents).where(consents.c.consent_id == consent_id).values(**values))

    async def has_sensitive_consent(self, user: UserRef) -> bool:
        found = (await self._conn.execute(select(consents.c.consent_id).where(_sensitive_in_force(user)))).first()
        return found is not None

    # ----------------------------------------------------------------- erasure

    async def erase_personal_data(self, user: UserRef, now: datetime) -> int:
        f = verification_flows.c
        conn = self._conn
        of_user = and_(f.tenant_id == user.tenant_id, f.user_id == user.user_id)
        flows = (await conn.execute(select(f.flow_id, f.phone_index).where(of_user))).all()
        k = personal_data_keys.c
        destroyed = (
            await conn.execute(
                delete(personal_data_keys)
                .where(k.tenant_id == user.tenant_id, k.user_id == user.user_id)
                .returning(k.record_id)
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
            .where(consents.c.tenant_id == user.tenant_id, consents.c.user_id == user.user_id)
            .values(guardian_name_ct=None, guardian_id_number_ct=None, guardian_mobile_ct=None)
        )
        await conn.execute(
            delete(identity_claims).where(
                identity_claims.c.tenant_id == user.tenant_id, identity_claims.c.user_id == user.user_id
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
            user,
            subject_type=None,
            verification_level=VerificationLevel.NONE.value,
            verification_methods=[],
            verify_time=None,
            minor_until=None,
            guardian_consent_recorded=False,
            status=AccountStatus.ERASED.value,
        )
        return len(destroyed)

    async def erasure(self, erasure_id: str) -> Erasure | None:
        row = (await self._conn.execute(select(erasures).where(erasures.c.erasure_id == erasure_id))).first()
        return _erasure_from_row(row) if row is not None else None

    async def erasure_by_key(self, tenant_id: str, idempotency_key: str) -> Erasure | None:
        e = erasures.c
        query = select(erasures).where(e.tenant_id == tenant_id, e.idempotency_key == idempotency_key)
        row = (await self._conn.execute(query)).first()
        return _erasure_from_row(row) if row is not None else None

    async def insert_erasure(self, record: ErasureRecord) -> None:
        e = record.erasure
        await self._conn.execute(
            erasures.insert().values(
                erasure_id=e.erasure_id,
                tenant_id=e.user.tenant_id,
                user_id=e.user.user_id,
                idempotency_key=record.idempotency_key,
                cause=record.cause,
                reason=record.reason,
                erase_time=e.erase_time,
                ledger_entry_id=uuid.UUID(e.ledger_entry_id),
            )
        )

    # ----------------------------------------------------------------- codes and limits

    async def record_send(self, phone_key: bytes, client_address: str | None) -> SendAllowance:
        return await self._limits.check_and_record_send(self._conn, phone_key=phone_key, client_address=client_address)

    async def issue_code(self, flow_id: str, phone_index: bytes) -> IssuedCode:
        return await self._codes.issue(self._conn, flow_id=flow_id, phone_index=phone_index)

    async def check_not_locked(self, user: UserRef, client_address: str | None) -> None:
        await self._limits.check_not_locked(
            self._conn, tenant_id=user.tenant_id, user_id=user.user_id, client_address=client_address
        )

    async def confirm_code(self, flow_id: str, phone_index: bytes, code: str) -> ConfirmResult:
        return await self._codes.confirm(self._conn, flow_id=flow_id, phone_index=phone_index, code=code)

    async def record_code_success(self, user: UserRef, client_address: str | None) -> None:
        await self._limits.record_success(
            self._conn, tenant_id=user.tenant_id, user_id=user.user_id, client_address=client_address
        )

    async def record_code_failure(self, user: UserRef, client_address: str | None) -> FailureRecorded:
        return await self._limits.record_failure(
            self._conn, tenant_id=user.tenant_id, user_id=user.user_id, client_address=client_address
        )

    # ----------------------------------------------------------------- the ledger

    async def append(self, entry: LedgerEntry) -> None:
        await ledger_append(self._conn, entry)


class SqlVerificationStore:
    def __init__(self, engine: AsyncEngine, *, codes: OneTimeCodes, limits: AbuseLimits, clock: Callable[[], datetime]):
        self._engine = engine
        self._codes = codes
        self._limits = limits
        self._clock = clock

    @contextlib.asynccontextmanager
    async def read(self) -> AsyncIterator[VerificationTransaction]:
        async with self._engine.connect() as conn:
            yield SqlVerificationTransaction(conn, self._codes, self._limits, self._clock)

    @contextlib.asynccontextmanager
    async def write(self) -> AsyncIterator[VerificationTransaction]:
        async with self._engine.begin() as conn:
            yield SqlVerificationTransaction(conn, self._codes, self._limits, self._clock)
