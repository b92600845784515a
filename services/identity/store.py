"""Where accounts, enforcement actions and eligibility policies live.

Every change commits with its ledger entry and, for enforcement, with the
incident handed to reporting through identity's outbox, in one transaction.
Changes to one account's actions serialise on the account's row lock, and
the status is recomputed under it, so the stored status always follows the
actions in force as the last committed change saw them.
"""

from __future__ import annotations

import builtins
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from datetime import datetime
from typing import Any, Protocol

import sqlalchemy.exc
from sqlalchemy import and_, literal, or_, select, tuple_, update
from sqlalchemy.dialects.postgresql import insert
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from avgate.kernel.db import violated_constraint
from avgate.kernel.legal import LegalBasis
from avgate.kernel.paging import Cursor
from avgate.kernel.principal import Principal
from avgate.ledger.append import append as ledger_append
from avgate.ledger.entry import LedgerEntry, canonical_bytes
from services.identity.domain import (
    Account,
    AccountFunction,
    AccountStatus,
    ActionFilter,
    EligibilityPolicy,
    EnforcementAction,
    EnforcementActionState,
    EnforcementActionType,
    EnforcementEvent,
    Lockout,
    MinorRule,
    NightWindow,
    SubjectType,
    UserRef,
    VerificationLevel,
    VerificationMethod,
    status_from,
)
from services.identity.handoff import report_enforcement
from services.identity.limits import AbuseLimits
from services.identity.models import accounts, eligibility_policies, enforcement_actions

EXPIRY_ACTOR = "identity/enforcement-expiry"
"""Who ends an action at its until_time: the expiry job (ended_by)."""


class IdempotencyKeyTaken(Exception):
    """Another action holds this (tenant, idempotency key) already (a concurrent issue)."""


class PolicyChangedConcurrently(Exception):
    """Another update created the tenant's policy first."""


@dataclass(frozen=True)
class Ended:
    """What ending an action writes: the action in its new state, its ledger entry, the event."""

    action: EnforcementAction
    audit: LedgerEntry
    event: EnforcementEvent


class IdentityStore(Protocol):
    async def account(self, user: UserRef) -> Account | None: ...

    async def eligibility_inputs(self, user: UserRef) -> tuple[Account | None, EligibilityPolicy]: ...

    async def policy(self, tenant_id: str) -> EligibilityPolicy: ...

    async def find_action_by_key(self, tenant_id: str, idempotency_key: str) -> EnforcementAction | None: ...

    async def get_action(self, action_id: str) -> EnforcementAction | None: ...

    async def issue(self, action: EnforcementAction, audit: LedgerEntry, origin: Principal, now: datetime) -> Account:
        """Writes the action (creating the account row if needed), the status, ledger entry and incident."""
        ...

    async def end_action(
        self,
        action_id: str,
        decide: Callable[[EnforcementAction], Ended | None],
        origin: Principal,
        now: datetime,
    ) -> tuple[EnforcementAction, Account] | None:
        """Locks the action, asks `decide` what to write (None: nothing), writes it; None when no such action."""
        ...

    async def list_actions(
        self, user: UserRef, action_filter: ActionFilter, *, after: Cursor | None, limit: int
    ) -> builtins.list[EnforcementAction]: ...

    async def unlock(self, user: UserRef, audit: LedgerEntry, now: datetime) -> Account: ...

    async def update_policy(
        self, tenant_id: str, decide: Callable[[EligibilityPolicy], tuple[EligibilityPolicy, LedgerEntry]]
    ) -> EligibilityPolicy: ...

    async def start_due(
        self, now: datetime, limit: int, audit_for: Callable[[UserRef, AccountStatus, AccountStatus], LedgerEntry]
    ) -> int:
        """Brings the stored status of up to `limit` accounts whose actions have started up to date."""
        ...

    async def expire_due(
        self,
        now: datetime,
        limit: int,
        audit_for: Callable[[EnforcementAction], LedgerEntry],
        origin_for: Callable[[EnforcementAction], Principal],
    ) -> builtins.list[EnforcementAction]:
        """Expires up to `limit` active actions past their end, in one transaction; returns them."""
        ...


# --------------------------------------------------------------------------- rows ⇄ domain


def _action_from_row(r: Any) -> EnforcementAction:
    return EnforcementAction(
        action_id=r["action_id"],
        user=UserRef(r["tenant_id"], r["user_id"]),
        type=EnforcementActionType(r["type"]),
        restricted_functions=tuple(AccountFunction(f) for f in r["restricted_functions"]),
        start_time=r["start_time"],
        until_time=r["until_time"],
        reason=r["reason"],
        legal_basis=tuple(LegalBasis.from_json(b) for b in r["legal_basis"]),
        evidence_incident_ids=tuple(r["evidence_incident_ids"]),
        decided_by=r["decided_by"],
        automated=r["automated"],
        state=EnforcementActionState(r["state"]),
        create_time=r["create_time"],
        issued_by_subject=r["issued_by_subject"],
        idempotency_key=r["idempotency_key"],
        request_hash=bytes(r["request_hash"]),
        end_time=r["end_time"],
        ended_by=r["ended_by"],
        end_reason=r["end_reason"],
        appeal_reference=r["appeal_reference"],
        lift_idempotency_key=r["lift_idempotency_key"] or "",
        lift_request_hash=bytes(r["lift_request_hash"] or b""),
    )


def _action_to_row(a: EnforcementAction, ledger_entry_id: Any) -> dict[str, Any]:
    return {
        "action_id": a.action_id,
        "tenant_id": a.user.tenant_id,
        "user_id": a.user.user_id,
        "idempotency_key": a.idempotency_key,
        "request_hash": a.request_hash,
        "type": a.type.value,
        "restricted_functions": [f.value for f in a.restricted_functions],
        "start_time": a.start_time,
        "until_time": a.until_time,
        "reason": a.reason,
        "legal_basis": [b.to_json() for b in a.legal_basis],
        "evidence_incident_ids": list(a.evidence_incident_ids),
        "decided_by": a.decided_by,
        "automated": a.automated,
        "state": a.state.value,
        "issued_by_subject": a.issued_by_subject,
        "create_time": a.create_time,
        "ledger_entry_id": ledger_entry_id,
    }


def _account_from_row(r: Any, actions: Sequence[EnforcementAction]) -> Account:
    lockout = None
    if r["lockout_until"] is not None:
        lockout = Lockout(r["lockout_until"], r["lockout_level"], r["failed_attempts"])
    return Account(
        user=UserRef(r["tenant_id"], r["user_id"]),
        subject_type=SubjectType(r["subject_type"]) if r["subject_type"] else None,
        verification_level=VerificationLevel(r["verification_level"]),
        methods=tuple(VerificationMethod(m) for m in r["verification_methods"]),
        verify_time=r["verify_time"],
        status=AccountStatus(r["status"]),
        minor_until=r["minor_until"],
        guardian_consent_recorded=r["guardian_consent_recorded"],
        sensitive_consent_in_force=r["sensitive_consent_in_force"],
        lockout=lockout,
        active_actions=tuple(actions),
    )


def _policy_from_row(r: Any) -> EligibilityPolicy:
    return EligibilityPolicy(
        tenant_id=r["tenant_id"],
        default_required_level=VerificationLevel(r["default_required_level"]),
        function_requirements=tuple(
            (AccountFunction(f), VerificationLevel(level)) for f, level in r["function_requirements"]
        ),
        one_identity_per_account=r["one_identity_per_account"],
        minor_rules=tuple(
            MinorRule(
                m["under_age_years"],
                tuple(AccountFunction(f) for f in m["denied_functions"]),
                tuple(AccountFunction(f) for f in m["night_denied_functions"]),
            )
            for m in r["minor_rules"]
        ),
        night_window=NightWindow(r["night_start_minute"], r["night_end_minute"]),
        time_zone=r["time_zone"],
        revision=r["revision"],
        update_time=r["update_time"],
    )


def _policy_to_row(p: EligibilityPolicy) -> dict[str, Any]:
    return {
        "tenant_id": p.tenant_id,
        "default_required_level": p.default_required_level.value,
        "function_requirements": [[f.value, level.value] for f, level in p.function_requirements],
        "one_identity_per_account": p.one_identity_per_account,
        "minor_rules": [
            {
                "under_age_years": m.under_age_years,
                "denied_functions": [f.value for f in m.denied_functions],
                "night_denied_functions": [f.value for f in m.night_denied_functions],
            }
            for m in p.minor_rules
        ],
        "night_start_minute": p.night_window.start_minute,
        "night_end_minute": p.night_window.end_minute,
        "time_zone": p.time_zone,
        "revision": p.revision,
        "update_time": p.update_time,
    }


_ACTIVE = enforcement_actions.c.state == EnforcementActionState.ACTIVE.value


def _of_user(user: UserRef) -> Any:
    c = enforcement_actions.c
    return and_(c.tenant_id == user.tenant_id, c.user_id == user.user_id)


async def active_actions(conn: AsyncConnection, user: UserRef) -> list[EnforcementAction]:
    """The user's ACTIVE actions in the order they were issued, in the caller's transaction."""
    c = enforcement_actions.c
    query = select(enforcement_actions).where(_of_user(user), _ACTIVE).order_by(c.create_time, c.action_id)
    rows = (await conn.execute(query)).mappings().all()
    return [_action_from_row(r) for r in rows]


# --------------------------------------------------------------------------- the SQL store


class SqlIdentityStore:
    def __init__(self, engine: AsyncEngine, limits: AbuseLimits | None = None):
        self._engine = engine
        # The verification lockouts an unlock clears with the account's own counters.
        self._limits = limits

    # ----------------------------------------------------------------- reads

    @classmethod
    async def _account(cls, conn: AsyncConnection, user: UserRef, *, lock: bool = False) -> Account | None:
        query = select(accounts).where(accounts.c.tenant_id == user.tenant_id, accounts.c.user_id == user.user_id)
        if lock:
            query = query.with_for_update()
        row = (await conn.execute(query)).mappings().first()
        if row is None:
            return None
        return _account_from_row(row, await active_actions(conn, user))

    async def account(self, user: UserRef) -> Account | None:
        async with self._engine.connect() as conn:
            return await self._account(conn, user)

    async def eligibility_inputs(self, user: UserRef) -> tuple[Account | None, EligibilityPolicy]:
        # The gate's fast path: the policy and the account in one indexed query, the active actions
        # (partial index) in a second, skipped for an account nobody has recorded yet.
        p, a = eligibility_policies, accounts
        one = select(literal(1).label("one")).subquery()
        query = select(
            *[c.label(f"p_{c.name}") for c in p.columns], *[c.label(f"a_{c.name}") for c in a.columns]
        ).select_from(
            one.outerjoin(p, p.c.tenant_id == user.tenant_id).outerjoin(
                a, and_(a.c.tenant_id == user.tenant_id, a.c.user_id == user.user_id)
            )
        )
        async with self._engine.connect() as conn:
            row = (await conn.execute(query)).mappings().one()
            policy_row = {c.name: row[f"p_{c.name}"] for c in p.columns}
            account_row = {c.name: row[f"a_{c.name}"] for c in a.columns}
            account = None
            if account_row["tenant_id"] is not None:
                account = _account_from_row(account_row, await active_actions(conn, user))
        if policy_row["tenant_id"] is None:
            return account, EligibilityPolicy(user.tenant_id)
        policy = _policy_from_row(policy_row)
        return account, policy

    async def policy(self, tenant_id: str) -> EligibilityPolicy:
        async with self._engine.connect() as conn:
            return await self._policy(conn, tenant_id)

    @staticmethod
    async def _policy(conn: AsyncConnection, tenant_id: str, *, lock: bool = False) -> EligibilityPolicy:
        query = select(eligibility_policies).where(eligibility_policies.c.tenant_id == tenant_id)
        if lock:
            query = query.with_for_update()
        row = (await conn.execute(query)).mappings().first()
        return _policy_from_row(row) if row is not None else EligibilityPolicy(tenant_id)

    async def find_action_by_key(self, tenant_id: str, idempotency_key: str) -> EnforcementAction | None:
        c = enforcement_actions.c
        query = select(enforcement_actions).where(c.tenant_id == tenant_id, c.idempotency_key == idempotency_key)
        async with self._engine.connect() as conn:
            row = (await conn.execute(query)).mappings().first()
        return _action_from_row(row) if row is not None else None

    async def get_action(self, action_id: str) -> EnforcementAction | None:
        query = select(enforcement_actions).where(enforcement_actions.c.action_id == action_id)
        async with self._engine.connect() as conn:
            row = (await conn.execute(query)).mappings().first()
        return _action_from_row(row) if row is not None else None

    async def list_actions(
        self, user: UserRef, action_filter: ActionFilter, *, after: Cursor | None, limit: int
    ) -> builtins.list[EnforcementAction]:
        c = enforcement_actions.c
        query = (
            select(enforcement_actions)
            .where(_of_user(user))
            .order_by(c.create_time.desc(), c.action_id.desc())
            .limit(limit)
        )
        if action_filter.states:
            query = query.where(c.state.in_([s.value for s in action_filter.states]))
        if action_filter.types:
            query = query.where(c.type.in_([t.value for t in action_filter.types]))
        if action_filter.created_from is not None:
            query = query.where(c.create_time >= action_filter.created_from)
        if action_filter.created_before is not None:
            query = query.where(c.create_time < action_filter.created_before)
        if after is not None:
            query = query.where(or_(c.create_time < after[0], and_(c.create_time == after[0], c.action_id < after[1])))
        async with self._engine.connect() as conn:
            rows = (await conn.execute(query)).mappings().all()
        return [_action_from_row(r) for r in rows]

    # ----------------------------------------------------------------- writes

    @staticmethod
    async def _ensure_account(conn: AsyncConnection, user: UserRef, now: datetime) -> None:
        await conn.execute(
            insert(accounts)
            .values(tenant_id=user.tenant_id, user_id=user.user_id, create_time=now, update_time=now)
            .on_conflict_do_nothing(index_elements=["tenant_id", "user_id"])
        )

    @classmethod
    async def _refresh_status(cls, conn: AsyncConnection, user: UserRef, now: datetime) -> Account:
        """Recomputes the status of an account whose row this transaction has locked."""
        account = await cls._account(conn, user)
        assert account is not None
        status = status_from(account.active_actions, now, erased=account.status is AccountStatus.ERASED)
        if status is not account.status:
            await conn.execute(
                update(accounts)
                .where(accounts.c.tenant_id == user.tenant_id, accounts.c.user_id == user.user_id)
                .values(status=status.value, update_time=now)
            )
            account = replace(account, status=status)
        return account

    async def issue(self, action: EnforcementAction, audit: LedgerEntry, origin: Principal, now: datetime) -> Account:
        try:
            async with self._engine.begin() as conn:
                await self._ensure_account(conn, action.user, now)
                await self._account(conn, action.user, lock=True)
                await conn.execute(enforcement_actions.insert().values(**_action_to_row(action, audit.entry_id)))
                account = await self._refresh_status(conn, action.user, now)
                await ledger_append(conn, audit)
                await report_enforcement(conn, action, EnforcementEvent.ISSUE, now, origin)
        except sqlalchemy.exc.IntegrityError as exc:
            # Only the idempotency key can collide: action ids are random.
            if violated_constraint(exc) != "enforcement_actions_tenant_idempotency_key":
                raise
            raise IdempotencyKeyTaken(action.idempotency_key) from exc
        return account

    async def end_action(
        self,
        action_id: str,
        decide: Callable[[EnforcementAction], Ended | None],
        origin: Principal,
        now: datetime,
    ) -> tuple[EnforcementAction, Account] | None:
        async with self._engine.begin() as conn:
            # The account's row lock first, as every change of its actions takes it, then the action's.
            c = enforcement_actions.c
            owner = (await conn.execute(select(c.tenant_id, c.user_id).where(c.action_id == action_id))).first()
            if owner is None:
                return None
            user = UserRef(owner[0], owner[1])
            await self._account(conn, user, lock=True)
            row = (
                (await conn.execute(select(enforcement_actions).where(c.action_id == action_id).with_for_update()))
                .mappings()
                .one()
            )
            current = _action_from_row(row)
            ended = decide(current)
            if ended is None:
                account = await self._account(conn, user)
                assert account is not None
                return current, account
            a = ended.action
            await conn.execute(
                update(enforcement_actions)
                .where(c.action_id == action_id)
                .values(
                    state=a.state.value,
                    end_time=a.end_time,
                    ended_by=a.ended_by,
                    end_reason=a.end_reason,
                    appeal_reference=a.appeal_reference,
                    lift_idempotency_key=a.lift_idempotency_key or None,
                    lift_request_hash=a.lift_request_hash or None,
                )
            )
            account = await self._refresh_status(conn, user, now)
            await ledger_append(conn, ended.audit)
            await report_enforcement(conn, a, ended.event, now, origin)
        return a, account

    async def unlock(self, user: UserRef, audit: LedgerEntry, now: datetime) -> Account:
        async with self._engine.begin() as conn:
            await self._ensure_account(conn, user, now)
            await conn.execute(
                update(accounts)
                .where(accounts.c.tenant_id == user.tenant_id, accounts.c.user_id == user.user_id)
                .values(lockout_until=None, lockout_level=0, failed_attempts=0, update_time=now)
            )
            if self._limits is not None:
                await self._limits.unlock(conn, tenant_id=user.tenant_id, user_id=user.user_id)
            await ledger_append(conn, audit)
            account = await self._account(conn, user)
        assert account is not None
        return account

    async def update_policy(
        self, tenant_id: str, decide: Callable[[EligibilityPolicy], tuple[EligibilityPolicy, LedgerEntry]]
    ) -> EligibilityPolicy:
        try:
            async with self._engine.begin() as conn:
                current = await self._policy(conn, tenant_id, lock=True)
                new, audit = decide(current)
                row = _policy_to_row(new)
                statement = insert(eligibility_policies).values(**row)
                if current.revision == 0:
                    # No row yet: a concurrent first update makes this insert collide.
                    await conn.execute(statement)
                else:
                    await conn.execute(
                        update(eligibility_policies)
                        .where(eligibility_policies.c.tenant_id == tenant_id)
                        .values(**{k: v for k, v in row.items() if k != "tenant_id"})
                    )
                await ledger_append(conn, audit)
        except sqlalchemy.exc.IntegrityError as exc:
            if violated_constraint(exc) != "eligibility_policies_pkey":
                raise
            raise PolicyChangedConcurrently(tenant_id) from exc
        return new

    async def start_due(
        self, now: datetime, limit: int, audit_for: Callable[[UserRef, AccountStatus, AccountStatus], LedgerEntry]
    ) -> int:
        """Applies actions whose start time has come to their accounts' stored status: accounts whose
        status was last worked out before an active action started. Returns how many accounts it
        looked at (each gets a ledger entry when its status changes)."""
        c, a = enforcement_actions.c, accounts.c
        started = (
            select(c.tenant_id, c.user_id)
            .where(_ACTIVE, c.start_time <= now, c.tenant_id == a.tenant_id, c.user_id == a.user_id)
            .where(c.start_time > a.update_time)
            .exists()
        )
        async with self._engine.begin() as conn:
            users = (
                await conn.execute(
                    select(a.tenant_id, a.user_id)
                    .where(started)
                    .order_by(a.tenant_id, a.user_id)
                    .limit(limit)
                    .with_for_update(skip_locked=True)
                )
            ).all()
            for tenant_id, user_id in users:
                user = UserRef(tenant_id, user_id)
                before = await self._account(conn, user)
                assert before is not None
                after = await self._refresh_status(conn, user, now)
                # Worked out now, whether or not it changed (a warning changes nothing): not again.
                await conn.execute(
                    update(accounts).where(a.tenant_id == tenant_id, a.user_id == user_id).values(update_time=now)
                )
                if after.status is not before.status:
                    await ledger_append(conn, audit_for(user, before.status, after.status))
        return len(users)

    async def expire_due(
        self,
        now: datetime,
        limit: int,
        audit_for: Callable[[EnforcementAction], LedgerEntry],
        origin_for: Callable[[EnforcementAction], Principal],
    ) -> builtins.list[EnforcementAction]:
        c = enforcement_actions.c
        due = and_(_ACTIVE, c.until_time.is_not(None), c.until_time <= now)
        async with self._engine.begin() as conn:
            candidates = (
                await conn.execute(
                    select(c.tenant_id, c.user_id).where(due).order_by(c.until_time, c.action_id).limit(limit)
                )
            ).all()
            if not candidates:
                return []
            # Every change of an account's actions takes the account's row lock first. SKIP LOCKED:
            # replicas running the job at once share the accounts instead of queueing behind each
            # other, and an account busy with an issue or a lift is expired on the next round.
            a = accounts.c
            locked = (
                await conn.execute(
                    select(a.tenant_id, a.user_id)
                    .where(tuple_(a.tenant_id, a.user_id).in_([tuple(r) for r in candidates]))
                    .order_by(a.tenant_id, a.user_id)
                    .with_for_update(skip_locked=True)
                )
            ).all()
            if not locked:
                return []
            rows = (
                (
                    await conn.execute(
                        select(enforcement_actions)
                        .where(due, tuple_(c.tenant_id, c.user_id).in_([tuple(r) for r in locked]))
                        .order_by(c.until_time, c.action_id)
                        .limit(limit)
                        .with_for_update()
                    )
                )
                .mappings()
                .all()
            )
            if not rows:
                return []
            expired = [
                replace(
                    _action_from_row(r),
                    state=EnforcementActionState.EXPIRED,
                    end_time=r["until_time"],
                    ended_by=EXPIRY_ACTOR,
                )
                for r in rows
            ]
            await conn.execute(
                update(enforcement_actions)
                .where(c.action_id.in_([x.action_id for x in expired]))
                .values(state=EnforcementActionState.EXPIRED.value, end_time=c.until_time, ended_by=EXPIRY_ACTOR)
            )
            for user in sorted({x.user for x in expired}, key=lambda u: (u.tenant_id, u.user_id)):
                await self._refresh_status(conn, user, now)
            for action in expired:
                await ledger_append(conn, audit_for(action))
                await report_enforcement(conn, action, EnforcementEvent.EXPIRE, now, origin_for(action))
        return expired


# --------------------------------------------------------------------------- the in-memory store


@dataclass(frozen=True)
class Reported:
    """An enforcement event the in-memory store handed to reporting (the SQL store queues an incident)."""

    action: EnforcementAction
    event: EnforcementEvent
    origin: Principal


@dataclass
class _AccountRecord:
    account: Account
    update_time: datetime


class InMemoryIdentityStore:
    """The fake the unit tests run the use cases against; the contract suite holds it to the SQL store.

    The ledger entries the SQL store appends land in `ledger`, the incidents it
    queues for reporting in `reported`.
    """

    def __init__(self) -> None:
        self._accounts: dict[UserRef, _AccountRecord] = {}
        self._actions: dict[str, EnforcementAction] = {}
        self._policies: dict[str, EligibilityPolicy] = {}
        self.ledger: builtins.list[LedgerEntry] = []
        self.reported: builtins.list[Reported] = []

    def put_account(self, account: Account, now: datetime) -> None:
        """Records an account as verification would have left it (for tests; its actions come from issue)."""
        self._accounts[account.user] = _AccountRecord(replace(account, active_actions=()), now)

    # ----------------------------------------------------------------- reads

    def _active(self, user: UserRef) -> builtins.list[EnforcementAction]:
        found = [a for a in self._actions.values() if a.user == user and a.state is EnforcementActionState.ACTIVE]
        return sorted(found, key=lambda a: (a.create_time, a.action_id))

    def _account(self, user: UserRef) -> Account | None:
        record = self._accounts.get(user)
        if record is None:
            return None
        return replace(record.account, active_actions=tuple(self._active(user)))

    async def account(self, user: UserRef) -> Account | None:
        return self._account(user)

    async def eligibility_inputs(self, user: UserRef) -> tuple[Account | None, EligibilityPolicy]:
        return self._account(user), self._policies.get(user.tenant_id, EligibilityPolicy(user.tenant_id))

    async def policy(self, tenant_id: str) -> EligibilityPolicy:
        return self._policies.get(tenant_id, EligibilityPolicy(tenant_id))

    async def find_action_by_key(self, tenant_id: str, idempotency_key: str) -> EnforcementAction | None:
        return next(
            (
                a
                for a in self._actions.values()
                if a.user.tenant_id == tenant_id and a.idempotency_key == idempotency_key
            ),
            None,
        )

    async def get_action(self, action_id: str) -> EnforcementAction | None:
        return self._actions.get(action_id)

    async def list_actions(
        self, user: UserRef, action_filter: ActionFilter, *, after: Cursor | None, limit: int
    ) -> builtins.list[EnforcementAction]:
        f = action_filter

        def wanted(a: EnforcementAction) -> bool:
            return (
                a.user == user
                and (not f.states or a.state in f.states)
                and (not f.types or a.type in f.types)
                and (f.created_from is None or a.create_time >= f.created_from)
                and (f.created_before is None or a.create_time < f.created_before)
                and (after is None or (a.create_time, a.action_id) < after)
            )

        found = sorted(filter(wanted, self._actions.values()), key=lambda a: (a.create_time, a.action_id), reverse=True)
        return found[:limit]

    # ----------------------------------------------------------------- writes

    def _ensure_account(self, user: UserRef, now: datetime) -> None:
        if user not in self._accounts:
            self._accounts[user] = _AccountRecord(Account(user), now)

    def _refresh_status(self, user: UserRef, now: datetime) -> Account:
        record = self._accounts[user]
        status = status_from(self._active(user), now, erased=record.account.status is AccountStatus.ERASED)
        if status is not record.account.status:
            record.account = replace(record.account, status=status)
            record.update_time = now
        account = self._account(user)
        assert account is not None
        return account

    def _record(self, audit: LedgerEntry) -> None:
        canonical_bytes(audit)  # refuses what the real ledger would refuse
        self.ledger.append(audit)

    async def issue(self, action: EnforcementAction, audit: LedgerEntry, origin: Principal, now: datetime) -> Account:
        if await self.find_action_by_key(action.user.tenant_id, action.idempotency_key) is not None:
            raise IdempotencyKeyTaken(action.idempotency_key)
        canonical_bytes(audit)
        self._ensure_account(action.user, now)
        self._actions[action.action_id] = action
        account = self._refresh_status(action.user, now)
        self._record(audit)
        self.reported.append(Reported(action, EnforcementEvent.ISSUE, origin))
        return account

    async def end_action(
        self,
        action_id: str,
        decide: Callable[[EnforcementAction], Ended | None],
        origin: Principal,
        now: datetime,
    ) -> tuple[EnforcementAction, Account] | None:
        current = self._actions.get(action_id)
        if current is None:
            return None
        self._ensure_account(current.user, now)
        ended = decide(current)
        if ended is None:
            account = self._account(current.user)
            assert account is not None
            return current, account
        canonical_bytes(ended.audit)
        self._actions[action_id] = ended.action
        account = self._refresh_status(current.user, now)
        self._record(ended.audit)
        self.reported.append(Reported(ended.action, ended.event, origin))
        return ended.action, account

    async def unlock(self, user: UserRef, audit: LedgerEntry, now: datetime) -> Account:
        canonical_bytes(audit)
        self._ensure_account(user, now)
        record = self._accounts[user]
        record.account = replace(record.account, lockout=None)
        record.update_time = now
        self._record(audit)
        account = self._account(user)
        assert account is not None
        return account

    async def update_policy(
        self, tenant_id: str, decide: Callable[[EligibilityPolicy], tuple[EligibilityPolicy, LedgerEntry]]
    ) -> EligibilityPolicy:
        new, audit = decide(await self.policy(tenant_id))
        canonical_bytes(audit)
        self._policies[tenant_id] = new
        self._record(audit)
        return new

    async def start_due(
        self, now: datetime, limit: int, audit_for: Callable[[UserRef, AccountStatus, AccountStatus], LedgerEntry]
    ) -> int:
        def started(user: UserRef, record: _AccountRecord) -> bool:
            return any(now >= a.start_time > record.update_time for a in self._active(user))

        users = sorted((u for u, r in self._accounts.items() if started(u, r)), key=lambda u: (u.tenant_id, u.user_id))[
            :limit
        ]
        for user in users:
            before = self._accounts[user].account.status
            after = self._refresh_status(user, now).status
            self._accounts[user].update_time = now  # worked out now, whether or not it changed: not again
            if after is not before:
                self._record(audit_for(user, before, after))
        return len(users)

    async def expire_due(
        self,
        now: datetime,
        limit: int,
        audit_for: Callable[[EnforcementAction], LedgerEntry],
        origin_for: Callable[[EnforcementAction], Principal],
    ) -> builtins.list[EnforcementAction]:
        due = sorted(
            (
                a
                for a in self._actions.values()
                if a.state is EnforcementActionState.ACTIVE and a.until_time is not None and a.until_time <= now
            ),
            key=lambda a: (a.until_time or now, a.action_id),
        )[:limit]
        expired = [
            replace(a, state=EnforcementActionState.EXPIRED, end_time=a.until_time, ended_by=EXPIRY_ACTOR) for a in due
        ]
        for action in expired:
            self._actions[action.action_id] = action
        for user in sorted({a.user for a in expired}, key=lambda u: (u.tenant_id, u.user_id)):
            self._refresh_status(user, now)
        for action in expired:
            self._record(audit_for(action))
            self.reported.append(Reported(action, EnforcementEvent.EXPIRE, origin_for(action)))
        return expired
