"""The identity store contract: the in-memory fake the unit tests use and the
SQL store identity runs on must behave alike (accounts, enforcement actions,
eligibility policies, and the ledger entries and reporting hand-offs they write).

Both run against one module database, so every test works in a tenant of its
own and looks only at it.
"""

from __future__ import annotations

import base64
import json
import uuid
from collections.abc import AsyncIterator
from dataclasses import replace
from datetime import UTC, datetime, timedelta

import psycopg
import pytest
from sqlalchemy.ext.asyncio import AsyncEngine

from avgate.kernel.db import create_engine_for, libpq_url
from avgate.kernel.legal import LegalBasis
from avgate.kernel.principal import Principal, Role
from avgate.ledger.entry import LedgerEntry
from avgate.reporting.v1 import reporting_pb2
from services.identity.domain import (
    AccountFunction,
    AccountStatus,
    ActionFilter,
    EligibilityPolicy,
    EnforcementAction,
    EnforcementActionState,
    EnforcementActionType,
    EnforcementEvent,
    UserRef,
    VerificationLevel,
    new_action_id,
)
from services.identity.handoff import external_id
from services.identity.service import expiry_audit, expiry_origin, status_audit
from services.identity.store import (
    EXPIRY_ACTOR,
    Ended,
    IdempotencyKeyTaken,
    IdentityStore,
    InMemoryIdentityStore,
    SqlIdentityStore,
)
from tests.conftest import Database

T0 = datetime(2026, 12, 1, 9, 0, tzinfo=UTC)
OPERATOR = Principal(role=Role.OPERATOR, subject="ops-1")


@pytest.fixture(scope="module")
async def engine(database: Database) -> AsyncIterator[AsyncEngine]:
    engine = create_engine_for(database.url_for("identity"), pool_size=2)
    yield engine
    await engine.dispose()


@pytest.fixture(params=["memory", pytest.param("postgres", marks=pytest.mark.db)])
def store(request: pytest.FixtureRequest) -> IdentityStore:
    if request.param == "memory":
        return InMemoryIdentityStore()
    return SqlIdentityStore(request.getfixturevalue("engine"))


@pytest.fixture
def user() -> UserRef:
    return UserRef(f"t-{uuid.uuid4().hex[:12]}", "u-1")


def action(
    user: UserRef,
    type: EnforcementActionType = EnforcementActionType.SUSPENSION_OF_UPDATING,
    *,
    key: str = "k-1",
    created: datetime = T0,
    start: datetime | None = None,
    until: datetime | None = None,
    functions: tuple[AccountFunction, ...] = (),
) -> EnforcementAction:
    return EnforcementAction(
        action_id=new_action_id(),
        user=user,
        type=type,
        restricted_functions=functions,
        start_time=start or created,
        until_time=until,
        reason="repeated spam",
        legal_basis=(LegalBasis("NAVIS-2019", "14", note="service agreement"),),
        evidence_incident_ids=("inc-1",),
        decided_by="moderator-7",
        automated=False,
        state=EnforcementActionState.ACTIVE,
        create_time=created,
        issued_by_subject="key-1",
        idempotency_key=key,
        request_hash=b"\x01" * 32,
    )


def audit(subject_id: str, name: str = "enforcement.issue", at: datetime = T0) -> LedgerEntry:
    return LedgerEntry(
        action=name,
        subject_type="enforcement_action",
        subject_id=subject_id,
        actor=OPERATOR,
        legal_basis="NAVIS-2019 Art. 14",
        idempotency_key=f"{name}:{uuid.uuid4().hex}",
        occurred_at=at,
    )


async def issue(store: IdentityStore, a: EnforcementAction) -> LedgerEntry:
    entry = audit(a.action_id)
    await store.issue(a, entry, OPERATOR, a.create_time)
    return entry


def lifted(current: EnforcementAction, at: datetime) -> Ended:
    ended = replace(
        current,
        state=EnforcementActionState.LIFTED,
        end_time=at,
        ended_by="moderator-7",
        end_reason="appeal upheld",
        lift_idempotency_key="lift-1",
        lift_request_hash=b"\x02" * 32,
    )
    return Ended(ended, audit(current.action_id, "enforcement.lift", at), EnforcementEvent.LIFT)


async def ledger_keys(store: IdentityStore, keys: list[str], database: Database) -> set[str]:
    """Idempotency keys of the given entries that reached the ledger (queue or integrated)."""
    if isinstance(store, InMemoryIdentityStore):
        return {e.key for e in store.ledger} & set(keys)
    async with await psycopg.AsyncConnection.connect(libpq_url(database.admin_url)) as conn:
        cur = await conn.execute(
            "select idempotency_key from ledger.queue where idempotency_key = any(%s) "
            "union select idempotency_key from ledger.entries where idempotency_key = any(%s)",
            (keys, keys),
        )
        return {r[0] for r in await cur.fetchall()}


async def ledger_entries_for(store: IdentityStore, subject_id: str, database: Database) -> list[str]:
    """The actions of the ledger entries about one subject."""
    if isinstance(store, InMemoryIdentityStore):
        return [e.action for e in store.ledger if e.subject_id == subject_id]
    async with await psycopg.AsyncConnection.connect(libpq_url(database.admin_url)) as conn:
        cur = await conn.execute(
            "select payload, queued_at from ledger.queue union all select payload, queued_at from ledger.entries"
        )
        entries = sorted(await cur.fetchall(), key=lambda r: r[1])
    documents = [json.loads(bytes(r[0])) for r in entries]
    return [d["action"] for d in documents if d["subject"]["id"] == subject_id]


async def reported(store: IdentityStore, external_ids: list[str], database: Database) -> set[str]:
    """Which of the incidents' external ids were handed to reporting."""
    if isinstance(store, InMemoryIdentityStore):
        return {external_id(r.action.action_id, r.event) for r in store.reported} & set(external_ids)
    async with await psycopg.AsyncConnection.connect(libpq_url(database.admin_url)) as conn:
        cur = await conn.execute("select payload from identity.outbox")
        payloads = [json.loads(bytes(r[0])) for r in await cur.fetchall()]
    requests = [reporting_pb2.CreateIncidentRequest.FromString(base64.b64decode(p["request"])) for p in payloads]
    return {r.incident.external_id for r in requests} & set(external_ids)


class TestAccounts:
    async def test_an_account_nobody_recorded_is_none(self, store: IdentityStore, user: UserRef) -> None:
        assert await store.account(user) is None

    async def test_issuing_creates_the_account_with_the_status_the_action_sets(
        self, store: IdentityStore, user: UserRef
    ) -> None:
        a = action(user)

        account = await store.issue(a, audit(a.action_id), OPERATOR, T0)

        assert account.status is AccountStatus.SUSPENDED
        assert account.verification_level is VerificationLevel.NONE
        assert [x.action_id for x in account.active_actions] == [a.action_id]
        assert await store.account(user) == account

    async def test_active_actions_come_in_the_order_they_were_issued(self, store: IdentityStore, user: UserRef) -> None:
        first = action(user, EnforcementActionType.WARNING, key="k-1", created=T0)
        second = action(user, EnforcementActionType.ACCOUNT_CLOSURE, key="k-2", created=T0 + timedelta(minutes=1))
        await issue(store, first)
        await issue(store, second)

        account = await store.account(user)

        assert account is not None
        assert [x.action_id for x in account.active_actions] == [first.action_id, second.action_id]
        assert account.status is AccountStatus.CLOSED

    async def test_unlock_clears_the_lockout_and_writes_its_ledger_entry(
        self, store: IdentityStore, user: UserRef, database: Database
    ) -> None:
        entry = audit(f"{user.tenant_id}/{user.user_id}", "account.unlock")

        account = await store.unlock(user, entry, T0)

        assert account.lockout is None
        assert await ledger_keys(store, [entry.key], database) == {entry.key}


class TestEnforcementActions:
    async def test_an_issued_action_is_found_by_id_and_by_key(self, store: IdentityStore, user: UserRef) -> None:
        a = action(user)
        await issue(store, a)

        assert await store.get_action(a.action_id) == a
        assert await store.find_action_by_key(user.tenant_id, "k-1") == a
        assert await store.find_action_by_key(user.tenant_id, "k-2") is None
        assert await store.find_action_by_key("other-tenant", "k-1") is None

    async def test_issuing_writes_the_ledger_entry_and_hands_the_incident_to_reporting(
        self, store: IdentityStore, user: UserRef, database: Database
    ) -> None:
        a = action(user)
        entry = await issue(store, a)

        assert await ledger_keys(store, [entry.key], database) == {entry.key}
        issued = external_id(a.action_id, EnforcementEvent.ISSUE)
        assert await reported(store, [issued], database) == {issued}

    async def test_a_second_action_under_the_same_key_is_refused_and_writes_nothing(
        self, store: IdentityStore, user: UserRef, database: Database
    ) -> None:
        first = action(user)
        await issue(store, first)
        again = action(user, EnforcementActionType.ACCOUNT_CLOSURE)
        entry = audit(again.action_id)

        with pytest.raises(IdempotencyKeyTaken):
            await store.issue(again, entry, OPERATOR, T0)

        assert await store.get_action(again.action_id) is None
        assert await ledger_keys(store, [entry.key], database) == set()
        account = await store.account(user)
        assert account is not None and account.status is AccountStatus.SUSPENDED

    async def test_the_same_key_in_another_tenant_is_another_action(self, store: IdentityStore, user: UserRef) -> None:
        await issue(store, action(user))
        elsewhere = action(UserRef(f"{user.tenant_id}-b", "u-1"))

        await issue(store, elsewhere)

        assert await store.get_action(elsewhere.action_id) == elsewhere

    async def test_lifting_ends_the_action_and_recomputes_the_status(
        self, store: IdentityStore, user: UserRef, database: Database
    ) -> None:
        a = action(user)
        await issue(store, a)
        at = T0 + timedelta(hours=1)
        decision = lifted(a, at)

        result = await store.end_action(a.action_id, lambda current: decision, OPERATOR, at)

        assert result is not None
        ended, account = result
        assert ended == decision.action
        assert await store.get_action(a.action_id) == decision.action
        assert account.status is AccountStatus.ACTIVE and account.active_actions == ()
        assert await ledger_keys(store, [decision.audit.key], database) == {decision.audit.key}
        lift = external_id(a.action_id, EnforcementEvent.LIFT)
        assert await reported(store, [lift], database) == {lift}

    async def test_a_decision_to_change_nothing_writes_nothing(
        self, store: IdentityStore, user: UserRef, database: Database
    ) -> None:
        a = action(user)
        await issue(store, a)
        seen: list[EnforcementAction] = []

        def decide(current: EnforcementAction) -> Ended | None:
            seen.append(current)
            return None

        result = await store.end_action(a.action_id, decide, OPERATOR, T0)

        assert seen == [a]
        assert result is not None and result[0] == a and result[1].status is AccountStatus.SUSPENDED
        assert await ledger_entries_for(store, a.action_id, database) == ["enforcement.issue"]

    async def test_ending_an_unknown_action_is_none(self, store: IdentityStore) -> None:
        assert await store.end_action("enf-missing", lambda current: None, OPERATOR, T0) is None

    async def test_listing_is_newest_first_filtered_and_paged(self, store: IdentityStore, user: UserRef) -> None:
        made = [
            action(user, EnforcementActionType.WARNING, key=f"k-{i}", created=T0 + timedelta(minutes=i))
            for i in range(3)
        ]
        made.append(action(user, EnforcementActionType.ACCOUNT_CLOSURE, key="k-c", created=T0 + timedelta(hours=1)))
        for a in made:
            await issue(store, a)
        everything = ActionFilter()

        first = await store.list_actions(user, everything, after=None, limit=2)
        rest = await store.list_actions(user, everything, after=(first[-1].create_time, first[-1].action_id), limit=10)
        warnings = await store.list_actions(
            user, ActionFilter(types=(EnforcementActionType.WARNING,)), after=None, limit=10
        )
        window = await store.list_actions(
            user,
            ActionFilter(created_from=T0 + timedelta(minutes=1), created_before=T0 + timedelta(minutes=2)),
            after=None,
            limit=10,
        )

        newest_first = [a.action_id for a in reversed(made)]
        assert [a.action_id for a in first + rest] == newest_first
        assert [a.action_id for a in warnings] == newest_first[1:]
        assert [a.action_id for a in window] == [made[1].action_id]
        assert await store.list_actions(UserRef(user.tenant_id, "u-2"), everything, after=None, limit=10) == []


class TestTheExpiryJob:
    async def test_actions_past_their_end_expire_with_their_ledger_entry_and_incident(
        self, store: IdentityStore, user: UserRef, database: Database
    ) -> None:
        a = action(user, until=T0 + timedelta(days=1))
        await issue(store, a)
        now = T0 + timedelta(days=2)

        expired = [x for x in await store.expire_due(now, 100, expiry_audit, expiry_origin) if x.user == user]

        assert [x.action_id for x in expired] == [a.action_id]
        assert expired[0].state is EnforcementActionState.EXPIRED
        assert expired[0].end_time == a.until_time and expired[0].ended_by == EXPIRY_ACTOR
        assert await store.get_action(a.action_id) == expired[0]
        account = await store.account(user)
        assert account is not None and account.status is AccountStatus.ACTIVE
        assert await ledger_entries_for(store, a.action_id, database) == ["enforcement.issue", "enforcement.expire"]
        expire = external_id(a.action_id, EnforcementEvent.EXPIRE)
        assert await reported(store, [expire], database) == {expire}

    async def test_actions_still_running_are_left_alone(self, store: IdentityStore, user: UserRef) -> None:
        a = action(user, until=T0 + timedelta(days=3))
        await issue(store, a)

        expired = await store.expire_due(T0 + timedelta(days=2), 100, expiry_audit, expiry_origin)

        assert a.action_id not in {x.action_id for x in expired}
        assert await store.get_action(a.action_id) == a

    async def test_an_action_issued_for_later_sets_the_status_once_it_starts(
        self, store: IdentityStore, user: UserRef, database: Database
    ) -> None:
        later = T0 + timedelta(hours=2)
        a = action(user, EnforcementActionType.ACCOUNT_CLOSURE, start=later)
        account = await store.issue(a, audit(a.action_id), OPERATOR, T0)
        assert account.status is AccountStatus.ACTIVE
        subject = f"{user.tenant_id}/{user.user_id}"

        def status_entry(u: UserRef, before: AccountStatus, after: AccountStatus) -> LedgerEntry:
            return status_audit(u, before, after, later + timedelta(minutes=1))

        await store.start_due(T0 + timedelta(hours=1), 1000, status_entry)
        assert (await store.account(user)).status is AccountStatus.ACTIVE  # type: ignore[union-attr]
        await store.start_due(later + timedelta(minutes=1), 1000, status_entry)
        await store.start_due(later + timedelta(minutes=2), 1000, status_entry)

        account = await store.account(user)
        assert account is not None and account.status is AccountStatus.CLOSED
        assert await ledger_entries_for(store, subject, database) == ["account.status"]


class TestEligibilityPolicy:
    async def test_a_tenant_without_a_policy_has_the_defaults_at_etag_0(
        self, store: IdentityStore, user: UserRef
    ) -> None:
        policy = await store.policy(user.tenant_id)

        assert policy == EligibilityPolicy(user.tenant_id)
        assert policy.etag == "0"
        assert await store.eligibility_inputs(user) == (None, EligibilityPolicy(user.tenant_id))

    async def test_each_update_is_kept_with_a_new_etag_and_its_ledger_entry(
        self, store: IdentityStore, user: UserRef, database: Database
    ) -> None:
        tenant = user.tenant_id
        entries: list[LedgerEntry] = []

        def decide(current: EligibilityPolicy) -> tuple[EligibilityPolicy, LedgerEntry]:
            new = replace(
                current,
                default_required_level=VerificationLevel.PHONE_VERIFIED,
                function_requirements=((AccountFunction.COMMENT, VerificationLevel.FORMAT_CHECKED),),
                one_identity_per_account=True,
                revision=current.revision + 1,
                update_time=T0 + timedelta(minutes=current.revision),
            )
            entries.append(replace(audit(tenant, "eligibility_policy.update"), subject_type="eligibility_policy"))
            return new, entries[-1]

        first = await store.update_policy(tenant, decide)
        second = await store.update_policy(tenant, decide)

        assert (first.etag, second.etag) == ("1", "2")
        assert await store.policy(tenant) == second
        assert second.required_level(AccountFunction.COMMENT) is VerificationLevel.FORMAT_CHECKED
        assert second.required_level(AccountFunction.PUBLISH) is VerificationLevel.PHONE_VERIFIED
        assert await ledger_keys(store, [e.key for e in entries], database) == {e.key for e in entries}

    async def test_the_gate_reads_the_account_and_the_policy_together(
        self, store: IdentityStore, user: UserRef
    ) -> None:
        a = action(user, EnforcementActionType.FUNCTION_RESTRICTION, functions=(AccountFunction.COMMENT,))
        await issue(store, a)

        account, policy = await store.eligibility_inputs(user)

        assert account == await store.account(user)
        assert account is not None and account.status is AccountStatus.RESTRICTED
        assert policy == EligibilityPolicy(user.tenant_id)
