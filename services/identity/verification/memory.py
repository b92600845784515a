"""The in-memory verification store: what the unit tests run VerificationService
against, held to the SQL store by tests/integration/test_verification_store_contract.py.

It keeps what the SQL store keeps (flows, consents, erasures, wrapped data
keys, identity claims, one-time codes, send limits, failure counters) in
dictionaries of frozen values, and decides with the same rules: the codes'
hashing and judging (OneTimeCodes) and the limits' windows, lockouts and
trust (AbuseLimits) are their pure methods, so only the reading and writing
differs. Accounts live where identity's own fake keeps them (an
InMemoryIdentityStore, shared when given), as the SQL stores share the
accounts table: enforcement actions and the eligibility policy are read
from there, and what verification records on an account is written there.

A write works on a copy and swaps it in when the block ends: a block that
raises leaves nothing changed, as a rolled-back transaction. Writes take
one lock (the SQL store's row locks, coarser); reads see what was committed
when they began, and nothing a read does is kept. Ledger entries land in
`ledger`; an entry with an idempotency key already there is dropped, as
the ledger's queue drops it.
"""

from __future__ import annotations

import asyncio
import builtins
import contextlib
import uuid
from collections.abc import AsyncIterator, Callable, Sequence
from dataclasses import dataclass, field, replace
from datetime import datetime
from typing import Any

from avgate.kernel.paging import Cursor
from avgate.ledger.entry import LedgerEntry, canonical_bytes
from services.identity.codes import ConfirmResult, IssuedCode, OneTimeCodes, StoredCode, check_code_format
from services.identity.domain import (
    Account,
    AccountStatus,
    EnforcementAction,
    Lockout,
    SubjectType,
    UserRef,
    VerificationLevel,
    VerificationMethod,
)
from services.identity.limits import (
    ACCOUNT_WIDE,
    UNKNOWN_ADDRESS,
    AbuseLimits,
    FailureCounter,
    FailureRecorded,
    SendAllowance,
)
from services.identity.store import InMemoryIdentityStore
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
from services.identity.verification.store import VerificationTransaction

ClaimKey = tuple[str, str, str, bytes]
"""(tenant, kind, index version, digest): one identity claim, as identity_claims' primary key."""
FailureKey = tuple[str, str, bytes]
"""(tenant, user, address key): one row of failure counters."""


@dataclass(frozen=True)
class StoredDataKey:
    user: UserRef
    wrapped: WrappedDataKey
    create_time: datetime


@dataclass(frozen=True)
class StoredClaim:
    user_id: str
    flow_id: str
    create_time: datetime


@dataclass
class Tables:
    """Everything the store holds but the accounts; values are immutable, so a copy of the containers
    is a snapshot."""

    data_keys: dict[str, StoredDataKey] = field(default_factory=dict)
    flows: dict[str, FlowRecord] = field(default_factory=dict)
    claims: dict[ClaimKey, StoredClaim] = field(default_factory=dict)
    consents: dict[str, ConsentRecord] = field(default_factory=dict)
    erasures: dict[str, ErasureRecord] = field(default_factory=dict)
    codes: dict[uuid.UUID, StoredCode] = field(default_factory=dict)
    send_limits: dict[tuple[str, bytes], tuple[datetime, ...]] = field(default_factory=dict)
    failures: dict[FailureKey, FailureCounter] = field(default_factory=dict)
    ledger: list[LedgerEntry] = field(default_factory=list)

    def copy(self) -> Tables:
        return Tables(
            dict(self.data_keys),
            dict(self.flows),
            dict(self.claims),
            dict(self.consents),
            dict(self.erasures),
            dict(self.codes),
            dict(self.send_limits),
            dict(self.failures),
            list(self.ledger),
        )


class InMemoryVerificationTransaction:
    """One write (or read) over a copy of the store's tables; `commit` makes it the store's."""

    def __init__(
        self,
        tables: Tables,
        identity: InMemoryIdentityStore,
        codes: OneTimeCodes,
        limits: AbuseLimits,
        clock: Callable[[], datetime],
    ):
        self.tables = tables
        self._identity = identity
        self._codes = codes
        self._limits = limits
        self._clock = clock
        self._created: set[UserRef] = set()
        self._account_changes: dict[UserRef, dict[str, Any]] = {}

    async def commit_accounts(self) -> None:
        """Writes what the transaction changed on accounts to the identity store."""
        now = self._clock()
        for user in self._created | self._account_changes.keys():
            account = await self._identity.account(user)
            if account is None:
                if user not in self._created:
                    continue  # an UPDATE of a row that is not there changes nothing
                account = Account(user)
            self._identity.put_account(replace(account, **self._account_changes.get(user, {})), now)

    async def _has_account(self, user: UserRef) -> bool:
        return user in self._created or await self._identity.account(user) is not None

    async def _require_account(self, user: UserRef) -> None:
        # The SQL tables reference accounts (…_account_fkey): a row for an unknown user is refused.
        if not await self._has_account(user):
            raise ValueError(f"no account {user.tenant_id}/{user.user_id}")

    def _change_account(self, user: UserRef, **values: Any) -> None:
        self._account_changes.setdefault(user, {}).update(values)

    # ----------------------------------------------------------------- accounts

    async def ensure_account(self, user: UserRef) -> None:
        self._created.add(user)

    async def lock_account(self, user: UserRef) -> None:
        await self.ensure_account(user)

    async def active_actions(self, user: UserRef) -> builtins.list[EnforcementAction]:
        account = await self._identity.account(user)
        return list(account.active_actions) if account is not None else []

    async def set_sensitive_consent(self, user: UserRef, in_force: bool) -> None:
        self._change_account(user, sensitive_consent_in_force=in_force)

    async def refresh_sensitive_consent(self, user: UserRef) -> None:
        self._change_account(user, sensitive_consent_in_force=await self.has_sensitive_consent(user))

    async def set_guardian_consent_recorded(self, user: UserRef, recorded: bool) -> None:
        self._change_account(user, guardian_consent_recorded=recorded)

    async def set_lockout(self, user: UserRef, until: datetime | None, level: int, failed_attempts: int) -> None:
        # The account shows a lockout only while it has an end (as the SQL store reads its row).
        self._change_account(user, lockout=Lockout(until, level, failed_attempts) if until is not None else None)

    async def record_verification(self, user: UserRef, verified: VerifiedAccount, status: AccountStatus) -> None:
        self._change_account(
            user,
            subject_type=SubjectType(verified.subject_type),
            verification_level=verified.level,
            methods=tuple(VerificationMethod(m) for m in verified.methods),
            verify_time=verified.verify_time,
            minor_until=verified.minor_until,
            guardian_consent_recorded=verified.guardian_consent_recorded,
            status=status,
        )

    async def one_identity_per_account(self, tenant_id: str) -> bool:
        return (await self._identity.policy(tenant_id)).one_identity_per_account

    # ----------------------------------------------------------------- personal-data keys

    async def data_key(self, record_id: str) -> WrappedDataKey | None:
        stored = self.tables.data_keys.get(record_id)
        return stored.wrapped if stored is not None else None

    async def store_data_key(self, record_id: str, user: UserRef, wrapped: WrappedDataKey, now: datetime) -> None:
        if record_id in self.tables.data_keys:
            raise ValueError(f"a data key for {record_id} exists already")
        self.tables.data_keys[record_id] = StoredDataKey(user, wrapped, now)

    # ----------------------------------------------------------------- flows

    async def flow(self, flow_id: str, *, lock: bool = False) -> FlowRecord | None:
        return self.tables.flows.get(flow_id)

    async def flow_by_key(self, tenant_id: str, idempotency_key: str) -> FlowRecord | None:
        return next(
            (
                f
                for f in self.tables.flows.values()
                if f.tenant_id == tenant_id and f.idempotency_key == idempotency_key
            ),
            None,
        )

    async def latest_completed_flow(self, user: UserRef) -> FlowRecord | None:
        done = [
            f
            for f in self.tables.flows.values()
            if f.user == user and f.state == FlowState.COMPLETED.value and f.name_ct is not None
        ]
        return max(done, key=lambda f: f.finish_time or f.update_time, default=None)

    async def insert_flow(self, record: FlowRecord) -> None:
        if await self.flow_by_key(record.tenant_id, record.idempotency_key) is not None:
            raise KeyTaken(record.idempotency_key)
        if record.flow_id in self.tables.flows:
            raise ValueError(f"flow {record.flow_id} exists already")
        await self._require_account(record.user)
        self.tables.flows[record.flow_id] = record

    async def update_flow(self, flow_id: str, change: FlowUpdate) -> None:
        current = self.tables.flows.get(flow_id)
        if current is None:
            return
        values: dict[str, Any] = {
            "state": change.state.value if change.state is not None else None,
            "level_reached": change.level_reached.value if change.level_reached is not None else None,
            "methods": change.methods,
            "guardian_consent_id": change.guardian_consent_id,
            "failure_reason": change.failure_reason.value if change.failure_reason is not None else None,
            "finish_time": change.finish_time,
            "complete_idempotency_key": change.complete_idempotency_key,
            "verifier_reference": change.verifier_reference,
        }
        values = {k: v for k, v in values.items() if v is not None}
        self.tables.flows[flow_id] = replace(current, **values, update_time=self._clock())

    async def flows_to_reindex(self, current_version: str, limit: int) -> builtins.list[FlowRecord]:
        found = [
            f
            for f in self.tables.flows.values()
            if f.index_version is not None and f.index_version != current_version and f.id_number_ct is not None
        ]
        return sorted(found, key=lambda f: f.flow_id)[:limit]

    async def set_flow_indexes(self, flow_id: str, version: str, id_index: bytes, phone_index: bytes | None) -> None:
        current = self.tables.flows.get(flow_id)
        if current is not None:
            self.tables.flows[flow_id] = replace(
                current, index_version=version, id_index=id_index, phone_index=phone_index
            )

    # ----------------------------------------------------------------- identity claims

    async def claim_identity(
        self, user: UserRef, kind: str, flow_id: str, indexes: Sequence[BlindIndex], now: datetime
    ) -> bool:
        claims = self.tables.claims
        for key in [
            k for k, c in claims.items() if k[0] == user.tenant_id and k[1] == kind and c.user_id == user.user_id
        ]:
            del claims[key]  # the user's earlier claims go, whether or not the new ones can be made
        keys = [(user.tenant_id, kind, index.version, index.digest) for index in indexes]
        if len(set(keys)) != len(keys) or any(k in claims for k in keys):
            return False
        for key in keys:
            claims[key] = StoredClaim(user.user_id, flow_id, now)
        return True

    async def claim_of_flow(self, flow_id: str) -> tuple[str, datetime] | None:
        found = next((c for c in self.tables.claims.values() if c.flow_id == flow_id), None)
        return (found.user_id, found.create_time) if found is not None else None

    async def add_claim(
        self, tenant_id: str, kind: str, index: BlindIndex, user_id: str, flow_id: str, create_time: datetime
    ) -> None:
        self.tables.claims.setdefault(
            (tenant_id, kind, index.version, index.digest), StoredClaim(user_id, flow_id, create_time)
        )

    async def drop_claims_outside(self, versions: Sequence[str]) -> None:
        kept = set(versions)
        self.tables.claims = {k: c for k, c in self.tables.claims.items() if k[2] in kept}

    # ----------------------------------------------------------------- consents

    async def consent(self, consent_id: str, *, lock: bool = False) -> ConsentRecord | None:
        return self.tables.consents.get(consent_id)

    async def consent_by_key(self, tenant_id: str, idempotency_key: str) -> ConsentRecord | None:
        return next(
            (
                c
                for c in self.tables.consents.values()
                if c.tenant_id == tenant_id and c.idempotency_key == idempotency_key
            ),
            None,
        )

    async def list_consents(self, user: UserRef, *, after: Cursor | None, limit: int) -> builtins.list[ConsentRecord]:
        found = [
            c
            for c in self.tables.consents.values()
            if c.user == user and (after is None or (c.create_time, c.consent_id) < after)
        ]
        return sorted(found, key=lambda c: (c.create_time, c.consent_id), reverse=True)[:limit]

    async def insert_consent(self, record: ConsentRecord) -> None:
        if await self.consent_by_key(record.tenant_id, record.idempotency_key) is not None:
            raise KeyTaken(record.idempotency_key)
        if record.consent_id in self.tables.consents:
            raise ValueError(f"consent {record.consent_id} exists already")
        await self._require_account(record.user)
        self.tables.consents[record.consent_id] = record

    async def withdraw_consent(
        self, consent_id: str, withdraw_time: datetime, idempotency_key: str, erasure_id: str | None
    ) -> None:
        current = self.tables.consents.get(consent_id)
        if current is None:
            return
        changed = replace(current, withdraw_time=withdraw_time, withdraw_idempotency_key=idempotency_key)
        if erasure_id is not None:
            changed = replace(changed, erasure_id=erasure_id)
        self.tables.consents[consent_id] = changed

    async def has_sensitive_consent(self, user: UserRef) -> bool:
        return any(
            c.user == user
            and c.purpose == ConsentPurpose.SENSITIVE_PERSONAL_INFORMATION.value
            and c.withdraw_time is None
            for c in self.tables.consents.values()
        )

    # ----------------------------------------------------------------- erasure

    async def erase_personal_data(self, user: UserRef, now: datetime) -> int:
        t = self.tables
        flows = [f for f in t.flows.values() if f.user == user]
        destroyed = [record_id for record_id, k in t.data_keys.items() if k.user == user]
        for record_id in destroyed:
            del t.data_keys[record_id]
        unfinished = {s.value for s in FlowState if s not in FINISHED}
        for f in flows:
            if f.state in unfinished:
                f = replace(
                    f,
                    state=FlowState.FAILED.value,
                    failure_reason=FailureReason.CONSENT_WITHDRAWN.value,
                    finish_time=now,
                )
            t.flows[f.flow_id] = replace(
                f,
                name_ct=None,
                id_number_ct=None,
                mobile_ct=None,
                index_version=None,
                id_index=None,
                phone_index=None,
                minor_until=None,
                update_time=now,
            )
        for c in [c for c in t.consents.values() if c.user == user]:
            t.consents[c.consent_id] = replace(
                c, guardian_name_ct=None, guardian_id_number_ct=None, guardian_mobile_ct=None
            )
        t.claims = {k: c for k, c in t.claims.items() if not (k[0] == user.tenant_id and c.user_id == user.user_id)}
        flow_ids = {f.flow_id for f in flows}
        t.codes = {i: c for i, c in t.codes.items() if c.flow_id not in flow_ids}
        phones = {f.phone_index for f in flows if f.phone_index is not None}
        t.send_limits = {k: v for k, v in t.send_limits.items() if not (k[0] == "phone" and k[1] in phones)}
        # ERASED outranks enforcement while no data is held (domain.status_from); a completed
        # verification recomputes the status from the actions in force.
        self._change_account(
            user,
            subject_type=None,
            verification_level=VerificationLevel.NONE,
            methods=(),
            verify_time=None,
            minor_until=None,
            guardian_consent_recorded=False,
            status=AccountStatus.ERASED,
        )
        return len(destroyed)

    async def erasure(self, erasure_id: str) -> Erasure | None:
        found = self.tables.erasures.get(erasure_id)
        return found.erasure if found is not None else None

    async def erasure_by_key(self, tenant_id: str, idempotency_key: str) -> Erasure | None:
        found = next(
            (
                r
                for r in self.tables.erasures.values()
                if r.erasure.user.tenant_id == tenant_id and r.idempotency_key == idempotency_key
            ),
            None,
        )
        return found.erasure if found is not None else None

    async def insert_erasure(self, record: ErasureRecord) -> None:
        # The SQL store's unique keys refuse these with an IntegrityError: callers look first.
        e = record.erasure
        if e.erasure_id in self.tables.erasures or await self.erasure_by_key(e.user.tenant_id, record.idempotency_key):
            raise ValueError(f"erasure {e.erasure_id} or its idempotency key exists already")
        self.tables.erasures[e.erasure_id] = record

    # ----------------------------------------------------------------- codes and limits

    async def record_send(self, phone_key: bytes, client_address: str | None) -> SendAllowance:
        if not phone_key:
            raise ValueError("phone_key must not be empty")
        now = self._clock()
        subjects = [("phone", phone_key)]
        address_key = self._limits.address_key(client_address)
        if address_key is not None:
            subjects.append(("address", address_key))
        recent = {scope: list(self.tables.send_limits.get((scope, subject), ())) for scope, subject in subjects}
        allowance, kept = self._limits.allow_send(recent, now)
        for scope, subject in subjects:
            self.tables.send_limits[(scope, subject)] = tuple(kept[scope])
        return allowance

    async def issue_code(self, flow_id: str, phone_index: bytes) -> IssuedCode:
        now = self._clock()
        for code_id, code in list(self.tables.codes.items()):
            if code.flow_id == flow_id and code.state == "active":
                self.tables.codes[code_id] = replace(code, state="superseded", finished_at=now)
        issued, stored = self._codes.draft(flow_id, phone_index, now)
        self.tables.codes[stored.code_id] = stored
        return issued

    def _failure_keys(self, user: UserRef, client_address: str | None) -> tuple[FailureKey, FailureKey]:
        address = self._limits.address_key(client_address) or UNKNOWN_ADDRESS
        return (user.tenant_id, user.user_id, address), (user.tenant_id, user.user_id, ACCOUNT_WIDE)

    async def check_not_locked(self, user: UserRef, client_address: str | None) -> None:
        pair, account = self._failure_keys(user, client_address)
        self._limits.refuse_if_locked(self.tables.failures.get(pair), self.tables.failures.get(account), self._clock())

    async def confirm_code(self, flow_id: str, phone_index: bytes, code: str) -> ConfirmResult:
        candidate = check_code_format(code)
        now = self._clock()
        active = next((c for c in self.tables.codes.values() if c.flow_id == flow_id and c.state == "active"), None)
        result, after = self._codes.judge(active, flow_id, phone_index, candidate, now)
        if after is not None:
            self.tables.codes[after.code_id] = after
        return result

    async def record_code_success(self, user: UserRef, client_address: str | None) -> None:
        now = self._clock()
        for key in self._failure_keys(user, client_address):
            self.tables.failures[key] = self._limits.succeeded(self.tables.failures.get(key), now)

    async def record_code_failure(self, user: UserRef, client_address: str | None) -> FailureRecorded:
        now = self._clock()
        pair_key, account_key = self._failure_keys(user, client_address)
        failures, lockouts = self.tables.failures, self._limits.lockouts
        pair_before = failures.get(pair_key, FailureCounter())
        pair = failures[pair_key] = self._limits.counted(pair_before, lockouts.per_address_threshold, now)
        account_before = failures.get(account_key, FailureCounter())
        account = failures[account_key] = self._limits.counted(account_before, lockouts.per_account_threshold, now)
        return self._limits.failure_recorded(pair_before, pair.state, account.state, now)

    # ----------------------------------------------------------------- the ledger

    async def append(self, entry: LedgerEntry) -> None:
        canonical_bytes(entry)  # refuses what the real ledger would refuse
        if all(e.key != entry.key for e in self.tables.ledger):
            self.tables.ledger.append(entry)


class InMemoryVerificationStore:
    """A VerificationStore in memory (see the module docstring).

    `codes` and `limits` are built as the composition root builds them (same
    settings) and with the same `clock`: the SQL store lets them read their
    own clocks, this store reads `clock`.
    """

    def __init__(
        self,
        *,
        codes: OneTimeCodes,
        limits: AbuseLimits,
        clock: Callable[[], datetime],
        identity: InMemoryIdentityStore | None = None,
    ):
        self.identity = identity if identity is not None else InMemoryIdentityStore()
        self._codes = codes
        self._limits = limits
        self._clock = clock
        self._tables = Tables()
        self._lock = asyncio.Lock()

    @property
    def tables(self) -> Tables:
        """What is committed (for tests to look at; change it only through transactions)."""
        return self._tables

    @property
    def ledger(self) -> builtins.list[LedgerEntry]:
        return self._tables.ledger

    def _transaction(self) -> InMemoryVerificationTransaction:
        return InMemoryVerificationTransaction(
            self._tables.copy(), self.identity, self._codes, self._limits, self._clock
        )

    @contextlib.asynccontextmanager
    async def read(self) -> AsyncIterator[VerificationTransaction]:
        yield self._transaction()

    @contextlib.asynccontextmanager
    async def write(self) -> AsyncIterator[VerificationTransaction]:
        async with self._lock:
            tx = self._transaction()
            yield tx
            await tx.commit_accounts()
            self._tables = tx.tables
