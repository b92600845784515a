"""The verification store contract: the in-memory store the unit tests run
VerificationService against and the SQL store identity runs on must behave
alike, method by method of VerificationTransaction: accounts, data keys,
flows and their idempotency keys, identity claims, consents, erasure
(crypto-shredding), one-time codes, send limits and lockouts, the ledger,
and a write that raises leaving nothing behind.

Both run against one module database, so every test works in a tenant of its
own (and a phone index and client address of its own) and looks only at them.
"""

from __future__ import annotations

import hashlib
import secrets
import uuid
from collections.abc import AsyncIterator
from dataclasses import replace
from datetime import date, timedelta
from typing import Any

import psycopg
import pytest
from sqlalchemy.ext.asyncio import AsyncEngine

from avgate.kernel import legal
from avgate.kernel.db import create_engine_for, libpq_url
from avgate.kernel.errors import InvalidArgument, ResourceExhausted
from avgate.kernel.keyring import new_key_line, parse_key_file
from avgate.kernel.legal import LegalBasis
from avgate.kernel.principal import Principal, Role
from avgate.ledger.entry import LedgerEntry
from services.identity.codes import CodeOutcome, HashKeyRing, OneTimeCodes
from services.identity.domain import (
    AccountStatus,
    EligibilityPolicy,
    EnforcementAction,
    EnforcementActionState,
    EnforcementActionType,
    Lockout,
    SubjectType,
    UserRef,
    VerificationLevel,
    VerificationMethod,
    new_action_id,
)
from services.identity.limits import AbuseLimits, LockoutPolicy, SendPolicy
from services.identity.store import IdentityStore, SqlIdentityStore
from services.identity.vault import BlindIndex, IndexKind, WrappedDataKey
from services.identity.verification.domain import (
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
from services.identity.verification.memory import InMemoryVerificationStore
from services.identity.verification.store import SqlVerificationStore, VerificationStore
from tests.conftest import Database
from tests.support import FakeClock

T0 = FakeClock().now
OPERATOR = Principal(role=Role.OPERATOR, subject="ops-1")


class Boom(Exception): ...


@pytest.fixture(scope="module")
async def engine(database: Database) -> AsyncIterator[AsyncEngine]:
    engine = create_engine_for(database.url_for("identity"), pool_size=2)
    yield engine
    await engine.dispose()


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


@pytest.fixture
def codes(clock: FakeClock) -> OneTimeCodes:
    keys = HashKeyRing.from_key_file(parse_key_file(new_key_line("otp-1") + "\n"))
    return OneTimeCodes(keys, ttl=timedelta(minutes=5), max_attempts=3, clock=clock)


@pytest.fixture
def limits(clock: FakeClock) -> AbuseLimits:
    return AbuseLimits(
        address_secret=secrets.token_bytes(32),
        sends=SendPolicy(phone_interval=timedelta(seconds=60), phone_per_hour=3, address_per_hour=5),
        lockouts=LockoutPolicy(
            per_address_threshold=3,
            per_account_threshold=5,
            durations=(timedelta(minutes=1), timedelta(minutes=5)),
        ),
        clock=clock,
    )


@pytest.fixture(params=["memory", pytest.param("postgres", marks=pytest.mark.db)])
def store(
    request: pytest.FixtureRequest, codes: OneTimeCodes, limits: AbuseLimits, clock: FakeClock
) -> VerificationStore:
    if request.param == "memory":
        return InMemoryVerificationStore(codes=codes, limits=limits, clock=clock)
    return SqlVerificationStore(request.getfixturevalue("engine"), codes=codes, limits=limits, clock=clock)


@pytest.fixture
def identity(store: VerificationStore, request: pytest.FixtureRequest) -> IdentityStore:
    """Where the accounts verification writes are read back (the store's own identity fake, or SQL)."""
    if isinstance(store, InMemoryVerificationStore):
        return store.identity
    return SqlIdentityStore(request.getfixturevalue("engine"))


@pytest.fixture
def user() -> UserRef:
    return UserRef(f"t-{uuid.uuid4().hex[:12]}", "u-1")


@pytest.fixture
def address() -> str:
    """A client address no other test uses (its own IPv6 /64)."""
    return f"2001:db8:{secrets.randbelow(0xFFFF):x}:{secrets.randbelow(0xFFFF):x}::1"


def digest() -> bytes:
    return hashlib.sha256(uuid.uuid4().bytes).digest()


def flow_record(user: UserRef, *, key: str = "fk-1", **changes: object) -> FlowRecord:
    record = FlowRecord(
        flow_id="vf" + uuid.uuid4().hex,
        tenant_id=user.tenant_id,
        user_id=user.user_id,
        idempotency_key=key,
        request_digest=digest(),
        subject_type=SubjectType.INDIVIDUAL.value,
        id_kind=IndexKind.RESIDENT_ID,
        state=FlowState.AWAITING_CODE.value,
        level_reached=VerificationLevel.FORMAT_CHECKED.value,
        methods=(VerificationMethod.FORMAT_CHECK.value,),
        name_ct=b"name-ct",
        id_number_ct=b"id-ct",
        mobile_ct=b"mobile-ct",
        index_version="idx-1",
        id_index=digest(),
        phone_index=digest(),
        guardian_consent_required=False,
        create_time=T0,
        expire_time=T0 + timedelta(days=1),
        update_time=T0,
    )
    return replace(record, **changes)  # type: ignore[arg-type]


def consent_record(
    user: UserRef,
    *,
    key: str = "ck-1",
    purpose: ConsentPurpose = ConsentPurpose.SENSITIVE_PERSONAL_INFORMATION,
    **changes: object,
) -> ConsentRecord:
    record = ConsentRecord(
        consent_id="cns" + uuid.uuid4().hex,
        tenant_id=user.tenant_id,
        user_id=user.user_id,
        idempotency_key=key,
        request_hash=digest(),
        purpose=purpose.value,
        text_version="2027-01",
        consent_time=T0,
        create_time=T0,
        ledger_entry_id=uuid.uuid4(),
    )
    return replace(record, **changes)  # type: ignore[arg-type]


def wrapped_key() -> WrappedDataKey:
    return WrappedDataKey("kek-1", 1, secrets.token_bytes(60))


def entry(user: UserRef, action: str = "verification.start", key: str | None = None) -> LedgerEntry:
    return LedgerEntry(
        action=action,
        subject_type="verification_flow",
        subject_id="vf-1",
        actor=OPERATOR,
        legal_basis=legal.ART_8,
        tenant_id=user.tenant_id,
        data={"user_id": user.user_id},
        idempotency_key=key or f"{action}:{uuid.uuid4().hex}",
        occurred_at=T0,
    )


async def ledger_keys(store: VerificationStore, keys: list[str], database: Database) -> list[str]:
    """The idempotency keys among `keys` that reached the ledger, once per entry."""
    if isinstance(store, InMemoryVerificationStore):
        return sorted(e.key for e in store.ledger if e.key in keys)
    async with await psycopg.AsyncConnection.connect(libpq_url(database.admin_url)) as conn:
        cur = await conn.execute("select idempotency_key from ledger.queue where idempotency_key = any(%s)", (keys,))
        return sorted(r[0] for r in await cur.fetchall())


async def new_flow(store: VerificationStore, user: UserRef, *, key: str = "fk-1", **changes: object) -> FlowRecord:
    record = flow_record(user, key=key, **changes)
    async with store.write() as tx:
        await tx.ensure_account(user)
        await tx.store_data_key(record.flow_id, user, wrapped_key(), T0)
        await tx.insert_flow(record)
    return record


class TestAccounts:
    async def test_ensuring_an_account_creates_it_unverified_once(
        self, store: VerificationStore, identity: IdentityStore, user: UserRef
    ) -> None:
        async with store.write() as tx:
            await tx.ensure_account(user)
            await tx.lock_account(user)
        async with store.write() as tx:
            await tx.ensure_account(user)

        account = await identity.account(user)

        assert account is not None
        assert (account.verification_level, account.status) == (VerificationLevel.NONE, AccountStatus.ACTIVE)
        assert account.sensitive_consent_in_force is False and account.lockout is None

    async def test_a_verification_is_recorded_on_the_account(
        self, store: VerificationStore, identity: IdentityStore, user: UserRef
    ) -> None:
        verified = VerifiedAccount(
            subject_type=SubjectType.INDIVIDUAL.value,
            level=VerificationLevel.PHONE_VERIFIED,
            methods=(VerificationMethod.FORMAT_CHECK.value, VerificationMethod.SMS_CODE.value),
            verify_time=T0,
            minor_until=date(2030, 6, 15),
            guardian_consent_recorded=True,
        )
        async with store.write() as tx:
            await tx.lock_account(user)
            await tx.record_verification(user, verified, AccountStatus.ACTIVE)

        account = await identity.account(user)

        assert account is not None
        assert account.subject_type is SubjectType.INDIVIDUAL
        assert account.verification_level is VerificationLevel.PHONE_VERIFIED
        assert account.methods == (VerificationMethod.FORMAT_CHECK, VerificationMethod.SMS_CODE)
        assert (account.verify_time, account.minor_until) == (T0, date(2030, 6, 15))
        assert account.guardian_consent_recorded is True

    async def test_flags_and_the_lockout_are_set_and_cleared(
        self, store: VerificationStore, identity: IdentityStore, user: UserRef
    ) -> None:
        until = T0 + timedelta(minutes=5)
        async with store.write() as tx:
            await tx.lock_account(user)
            await tx.set_sensitive_consent(user, True)
            await tx.set_guardian_consent_recorded(user, True)
            await tx.set_lockout(user, until, 2, 4)
        locked = await identity.account(user)
        async with store.write() as tx:
            await tx.set_guardian_consent_recorded(user, False)
            await tx.set_lockout(user, None, 0, 0)
        cleared = await identity.account(user)

        assert locked is not None and cleared is not None
        assert (locked.sensitive_consent_in_force, locked.guardian_consent_recorded) == (True, True)
        assert locked.lockout == Lockout(until, 2, 4)
        assert (cleared.guardian_consent_recorded, cleared.lockout) == (False, None)

    async def test_refreshing_the_consent_flag_follows_the_consents_in_force(
        self, store: VerificationStore, identity: IdentityStore, user: UserRef
    ) -> None:
        consent = consent_record(user)
        async with store.write() as tx:
            await tx.lock_account(user)
            await tx.insert_consent(consent)
            await tx.refresh_sensitive_consent(user)
        given = await identity.account(user)
        async with store.write() as tx:
            await tx.withdraw_consent(consent.consent_id, T0, "wk-1", None)
            await tx.refresh_sensitive_consent(user)
        withdrawn = await identity.account(user)

        assert given is not None and given.sensitive_consent_in_force is True
        assert withdrawn is not None and withdrawn.sensitive_consent_in_force is False

    async def test_active_actions_are_the_identity_stores(
        self, store: VerificationStore, identity: IdentityStore, user: UserRef
    ) -> None:
        action = EnforcementAction(
            action_id=new_action_id(),
            user=user,
            type=EnforcementActionType.SUSPENSION_OF_UPDATING,
            restricted_functions=(),
            start_time=T0,
            until_time=None,
            reason="repeated spam",
            legal_basis=(LegalBasis(legal.NAVIS, "14", note="service agreement"),),
            evidence_incident_ids=("inc-1",),
            decided_by="moderator-7",
            automated=False,
            state=EnforcementActionState.ACTIVE,
            create_time=T0,
            issued_by_subject="key-1",
            idempotency_key="ak-1",
            request_hash=b"\x01" * 32,
        )
        await identity.issue(action, entry(user, "enforcement.issue"), OPERATOR, T0)

        async with store.read() as tx:
            found = await tx.active_actions(user)
            nobody = await tx.active_actions(UserRef(user.tenant_id, "u-nobody"))

        assert [a.action_id for a in found] == [action.action_id]
        assert nobody == []

    async def test_one_identity_per_account_follows_the_tenants_policy(
        self, store: VerificationStore, identity: IdentityStore, user: UserRef
    ) -> None:
        async with store.read() as tx:
            before = await tx.one_identity_per_account(user.tenant_id)

        def decide(current: EligibilityPolicy) -> tuple[EligibilityPolicy, LedgerEntry]:
            changed = replace(current, one_identity_per_account=True, revision=current.revision + 1, update_time=T0)
            return changed, entry(user, "eligibility_policy.update")

        await identity.update_policy(user.tenant_id, decide)
        async with store.read() as tx:
            after = await tx.one_identity_per_account(user.tenant_id)

        assert (before, after) == (False, True)


class TestDataKeys:
    async def test_a_stored_key_is_read_back_and_an_unknown_one_is_none(
        self, store: VerificationStore, user: UserRef
    ) -> None:
        wrapped = wrapped_key()
        async with store.write() as tx:
            await tx.store_data_key("rec-" + user.tenant_id, user, wrapped, T0)
        async with store.read() as tx:
            found = await tx.data_key("rec-" + user.tenant_id)
            unknown = await tx.data_key("rec-unknown-" + user.tenant_id)

        assert found == wrapped
        assert unknown is None


class TestFlows:
    async def test_a_flow_is_read_back_by_id_and_by_key(self, store: VerificationStore, user: UserRef) -> None:
        record = await new_flow(store, user, minor_until=date(2031, 1, 2), guardian_consent_required=True)

        async with store.read() as tx:
            by_id = await tx.flow(record.flow_id)
            locked = await tx.flow(record.flow_id, lock=True)
            by_key = await tx.flow_by_key(user.tenant_id, "fk-1")
            other_tenant = await tx.flow_by_key(user.tenant_id + "-x", "fk-1")

        assert by_id == locked == by_key == record
        assert other_tenant is None

    async def test_a_taken_key_is_key_taken_and_the_transaction_goes_on(
        self, store: VerificationStore, user: UserRef
    ) -> None:
        first = await new_flow(store, user)
        second = flow_record(user)  # the same key
        third = flow_record(user, key="fk-2")

        async with store.write() as tx:
            with pytest.raises(KeyTaken):
                await tx.insert_flow(second)
            await tx.insert_flow(third)
        async with store.read() as tx:
            kept = await tx.flow_by_key(user.tenant_id, "fk-1")
            missing = await tx.flow(second.flow_id)
            inserted = await tx.flow(third.flow_id)

        assert kept == first and missing is None and inserted == third

    async def test_an_update_changes_the_fields_it_names_and_the_update_time(
        self, store: VerificationStore, user: UserRef, clock: FakeClock
    ) -> None:
        record = await new_flow(store, user)
        later = clock.advance(minutes=3)

        methods = (*record.methods, VerificationMethod.SMS_CODE.value)
        async with store.write() as tx:
            await tx.update_flow(record.flow_id, FlowUpdate(level_reached=VerificationLevel.PHONE_VERIFIED))
        async with store.write() as tx:
            await tx.update_flow(
                record.flow_id,
                FlowUpdate(
                    state=FlowState.FAILED,
                    methods=methods,
                    failure_reason=FailureReason.IDENTITY_MISMATCH,
                    finish_time=later,
                    complete_idempotency_key="done-1",
                    verifier_reference="ref-1",
                    guardian_consent_id="cns-1",
                ),
            )
            found = await tx.flow(record.flow_id)
        changed: dict[str, Any] = {
            "complete_idempotency_key": "done-1",
            "verifier_reference": "ref-1",
            "guardian_consent_id": "cns-1",
        }

        assert found == replace(
            record,
            state=FlowState.FAILED.value,
            level_reached=VerificationLevel.PHONE_VERIFIED.value,
            methods=methods,
            failure_reason=FailureReason.IDENTITY_MISMATCH.value,
            finish_time=later,
            update_time=later,
            **changed,
        )

    async def test_the_latest_completed_flow_holding_data_is_found(
        self, store: VerificationStore, user: UserRef
    ) -> None:
        done = FlowState.COMPLETED.value
        older = await new_flow(store, user, key="k-a", state=done, finish_time=T0 + timedelta(hours=1))
        newer = await new_flow(store, user, key="k-b", state=done, finish_time=T0 + timedelta(hours=2))
        await new_flow(store, user, key="k-c", state=FlowState.FAILED.value, finish_time=T0 + timedelta(hours=3))
        await new_flow(store, user, key="k-d", state=done, finish_time=T0 + timedelta(hours=4), name_ct=None)

        async with store.read() as tx:
            latest = await tx.latest_completed_flow(user)
            nobody = await tx.latest_completed_flow(UserRef(user.tenant_id, "u-nobody"))

        assert latest == newer != older
        assert nobody is None

    async def test_reindexing_finds_flows_under_another_key_and_moves_them(
        self, store: VerificationStore, user: UserRef
    ) -> None:
        old_version = "old-" + user.tenant_id
        current = "new-" + user.tenant_id
        stale = [await new_flow(store, user, key=f"k-{i}", index_version=old_version) for i in range(3)]
        await new_flow(store, user, key="k-now", index_version=current)
        await new_flow(store, user, key="k-erased", index_version=old_version, id_number_ct=None)
        mine = {f.flow_id for f in stale}
        new_id, new_phone = digest(), digest()

        async with store.write() as tx:
            found = [f for f in await tx.flows_to_reindex(current, 1000) if f.flow_id in mine]
            await tx.set_flow_indexes(stale[0].flow_id, current, new_id, new_phone)
        async with store.read() as tx:
            left = [f.flow_id for f in await tx.flows_to_reindex(current, 1000) if f.flow_id in mine]
            moved = await tx.flow(stale[0].flow_id)

        assert [f.flow_id for f in found] == sorted(mine)
        assert left == sorted(mine - {stale[0].flow_id})
        assert moved == replace(stale[0], index_version=current, id_index=new_id, phone_index=new_phone)


class TestIdentityClaims:
    async def test_an_identity_backs_one_account_only(self, store: VerificationStore, user: UserRef) -> None:
        other = UserRef(user.tenant_id, "u-2")
        index = BlindIndex("idx-1", digest())
        own = BlindIndex("idx-1", digest())
        async with store.write() as tx:
            await tx.ensure_account(other)
            assert await tx.claim_identity(other, IndexKind.RESIDENT_ID, "vf-b0", [own], T0)
        async with store.write() as tx:
            first = await tx.claim_identity(user, IndexKind.RESIDENT_ID, "vf-a", [index], T0)
        async with store.write() as tx:
            taken = await tx.claim_identity(other, IndexKind.RESIDENT_ID, "vf-b", [index], T0)
            again = await tx.claim_identity(user, IndexKind.RESIDENT_ID, "vf-a2", [index], T0)
            by_a = await tx.claim_of_flow("vf-a")
            by_a2 = await tx.claim_of_flow("vf-a2")
            other_before = await tx.claim_of_flow("vf-b0")
            # The same digest under another kind or in another tenant is another identity.
            other_kind = await tx.claim_identity(other, IndexKind.CREDIT_CODE, "vf-c", [index], T0)
            elsewhere = UserRef("x-" + user.tenant_id, "u-1")
            other_tenant = await tx.claim_identity(elsewhere, IndexKind.RESIDENT_ID, "vf-d", [index], T0)

        assert (first, taken, again, other_kind, other_tenant) == (True, False, True, True, True)
        assert by_a is None and by_a2 == ("u-1", T0)
        # A refused claim still drops the account's earlier claims of that kind.
        assert other_before is None

    async def test_added_claims_keep_the_first_holder_and_old_versions_are_dropped(
        self, store: VerificationStore, user: UserRef
    ) -> None:
        version = "v-" + user.tenant_id
        old = BlindIndex(version + "-old", digest())
        new = BlindIndex(version, digest())
        async with store.write() as tx:
            assert await tx.claim_identity(user, IndexKind.RESIDENT_ID, "vf-1", [old], T0)
            await tx.add_claim(user.tenant_id, IndexKind.RESIDENT_ID, new, "u-1", "vf-1", T0)
            await tx.add_claim(user.tenant_id, IndexKind.RESIDENT_ID, new, "u-9", "vf-9", T0 + timedelta(hours=1))
            await tx.drop_claims_outside([version])
            old_free = await tx.claim_identity(UserRef(user.tenant_id, "u-2"), IndexKind.RESIDENT_ID, "vf-2", [old], T0)
            new_taken = await tx.claim_identity(
                UserRef(user.tenant_id, "u-3"), IndexKind.RESIDENT_ID, "vf-3", [new], T0
            )
            holder = await tx.claim_of_flow("vf-1")
            nine = await tx.claim_of_flow("vf-9")

        assert (old_free, new_taken) == (True, False)
        assert holder == ("u-1", T0) and nine is None


class TestConsents:
    async def test_a_consent_is_read_back_by_id_and_key_and_a_taken_key_is_key_taken(
        self, store: VerificationStore, user: UserRef
    ) -> None:
        consent = consent_record(user)
        async with store.write() as tx:
            await tx.lock_account(user)
            await tx.insert_consent(consent)
            with pytest.raises(KeyTaken):
                await tx.insert_consent(consent_record(user))
        async with store.read() as tx:
            by_id = await tx.consent(consent.consent_id, lock=True)
            by_key = await tx.consent_by_key(user.tenant_id, "ck-1")
            in_force = await tx.has_sensitive_consent(user)

        assert by_id == by_key == consent
        assert in_force is True

    async def test_a_withdrawn_consent_is_no_longer_in_force(self, store: VerificationStore, user: UserRef) -> None:
        sensitive = consent_record(user)
        agreement = consent_record(user, key="ck-2", purpose=ConsentPurpose.SERVICE_AGREEMENT)
        async with store.write() as tx:
            await tx.lock_account(user)
            await tx.insert_consent(sensitive)
            await tx.insert_consent(agreement)
            await tx.withdraw_consent(sensitive.consent_id, T0 + timedelta(minutes=1), "wk-1", "era-1")
            await tx.withdraw_consent(agreement.consent_id, T0 + timedelta(minutes=2), "wk-2", None)
        async with store.read() as tx:
            withdrawn = await tx.consent(sensitive.consent_id)
            other = await tx.consent(agreement.consent_id)
            in_force = await tx.has_sensitive_consent(user)

        assert withdrawn == replace(
            sensitive, withdraw_time=T0 + timedelta(minutes=1), withdraw_idempotency_key="wk-1", erasure_id="era-1"
        )
        assert other == replace(agreement, withdraw_time=T0 + timedelta(minutes=2), withdraw_idempotency_key="wk-2")
        assert in_force is False

    async def test_consents_are_listed_newest_first_a_page_at_a_time(
        self, store: VerificationStore, user: UserRef
    ) -> None:
        made = [consent_record(user, key=f"ck-{i}", create_time=T0 + timedelta(minutes=i % 3)) for i in range(5)]
        async with store.write() as tx:
            await tx.lock_account(user)
            for consent in made:
                await tx.insert_consent(consent)
        expected = sorted(made, key=lambda c: (c.create_time, c.consent_id), reverse=True)

        async with store.read() as tx:
            first = await tx.list_consents(user, after=None, limit=3)
            last = first[-1]
            rest = await tx.list_consents(user, after=(last.create_time, last.consent_id), limit=3)
            nobody = await tx.list_consents(UserRef(user.tenant_id, "u-nobody"), after=None, limit=3)

        assert first + rest == expected
        assert nobody == []


class TestErasure:
    async def test_erasure_shreds_the_users_data_and_leaves_others_alone(
        self,
        store: VerificationStore,
        identity: IdentityStore,
        user: UserRef,
        clock: FakeClock,
        address: str,
    ) -> None:
        other = UserRef(user.tenant_id, "u-2")
        open_flow = await new_flow(store, user, key="k-open")
        minor = date(2031, 1, 1)
        done = await new_flow(
            store, user, key="k-done", state=FlowState.COMPLETED.value, finish_time=T0, minor_until=minor
        )
        kept = await new_flow(store, other, key="k-other")
        sealed: dict[str, Any] = {
            "guardian_name_ct": b"g-name",
            "guardian_id_number_ct": b"g-id",
            "guardian_mobile_ct": b"g-mobile",
        }
        guardian = consent_record(
            user, purpose=ConsentPurpose.GUARDIAN, flow_id=open_flow.flow_id, relationship="parent", **sealed
        )
        index = BlindIndex("idx-1", digest())
        assert open_flow.phone_index is not None
        async with store.write() as tx:
            await tx.store_data_key(guardian.consent_id, user, wrapped_key(), T0)
            await tx.insert_consent(guardian)
            assert await tx.claim_identity(user, IndexKind.RESIDENT_ID, done.flow_id, [index], T0)
            await tx.record_send(open_flow.phone_index, address)
            await tx.issue_code(open_flow.flow_id, open_flow.phone_index)
        now = clock.advance(seconds=10)

        async with store.write() as tx:
            destroyed = await tx.erase_personal_data(user, now)
        async with store.write() as tx:
            flows = [await tx.flow(f.flow_id) for f in (open_flow, done, kept)]
            keys = [await tx.data_key(r) for r in (open_flow.flow_id, done.flow_id, guardian.consent_id, kept.flow_id)]
            shredded_guardian = await tx.consent(guardian.consent_id)
            latest = await tx.latest_completed_flow(user)
            claim_free = await tx.claim_identity(other, IndexKind.RESIDENT_ID, kept.flow_id, [index], now)
            code = await tx.confirm_code(open_flow.flow_id, open_flow.phone_index, "123456")
            send = await tx.record_send(open_flow.phone_index, None)  # the phone's send history went too
        account = await identity.account(user)

        assert destroyed == 3
        assert keys[:3] == [None, None, None] and keys[3] is not None
        shredded = ("name_ct", "id_number_ct", "mobile_ct", "index_version", "id_index", "phone_index", "minor_until")
        cleared: dict[str, Any] = dict.fromkeys(shredded) | {"update_time": now}
        assert flows[0] == replace(
            open_flow,
            state=FlowState.FAILED.value,
            failure_reason=FailureReason.CONSENT_WITHDRAWN.value,
            finish_time=now,
            **cleared,
        )
        assert flows[1] == replace(done, **cleared)
        assert flows[2] == kept
        unsealed: dict[str, Any] = dict.fromkeys(sealed)
        assert shredded_guardian == replace(guardian, **unsealed)
        assert latest is None and claim_free is True
        assert code.outcome is CodeOutcome.NO_ACTIVE_CODE
        assert send.next_send_at == now + timedelta(seconds=60)
        assert account is not None
        assert (account.verification_level, account.status) == (VerificationLevel.NONE, AccountStatus.ERASED)
        assert (account.subject_type, account.methods, account.minor_until) == (None, (), None)

    async def test_an_erasure_is_read_back_by_id_and_key(self, store: VerificationStore, user: UserRef) -> None:
        erasure = Erasure("era" + uuid.uuid4().hex, user, T0, str(uuid.uuid4()))
        async with store.write() as tx:
            await tx.lock_account(user)
            await tx.insert_erasure(ErasureRecord(erasure, "ek-1", "request", "asked by the user"))
        async with store.read() as tx:
            by_id = await tx.erasure(erasure.erasure_id)
            by_key = await tx.erasure_by_key(user.tenant_id, "ek-1")
            unknown = await tx.erasure_by_key(user.tenant_id, "ek-2")

        assert by_id == by_key == erasure
        assert unknown is None


class TestOneTimeCodes:
    async def test_the_right_code_confirms_once(self, store: VerificationStore, user: UserRef) -> None:
        phone = digest()
        async with store.write() as tx:
            issued = await tx.issue_code("vf-" + user.tenant_id, phone)
        async with store.write() as tx:
            first = await tx.confirm_code("vf-" + user.tenant_id, phone, issued.code)
        async with store.write() as tx:
            again = await tx.confirm_code("vf-" + user.tenant_id, phone, issued.code)

        assert issued.expires_at == T0 + timedelta(minutes=5)
        assert (first.outcome, first.code_id) == (CodeOutcome.CONFIRMED, issued.code_id)
        assert again.outcome is CodeOutcome.NO_ACTIVE_CODE

    async def test_wrong_guesses_count_down_and_kill_the_code(self, store: VerificationStore, user: UserRef) -> None:
        flow, phone = "vf-" + user.tenant_id, digest()
        async with store.write() as tx:
            issued = await tx.issue_code(flow, phone)
        wrong = f"{(int(issued.code) + 1) % 1_000_000:06d}"
        results = []
        for _ in range(3):
            async with store.write() as tx:
                results.append(await tx.confirm_code(flow, phone, wrong))
        async with store.write() as tx:
            dead = await tx.confirm_code(flow, phone, issued.code)

        assert [(r.outcome, r.remaining_attempts) for r in results] == [(CodeOutcome.WRONG, n) for n in (2, 1, 0)]
        assert dead.outcome is CodeOutcome.NO_ACTIVE_CODE

    async def test_an_expired_code_is_refused(self, store: VerificationStore, user: UserRef, clock: FakeClock) -> None:
        flow, phone = "vf-" + user.tenant_id, digest()
        async with store.write() as tx:
            issued = await tx.issue_code(flow, phone)
        clock.advance(minutes=5)
        async with store.write() as tx:
            expired = await tx.confirm_code(flow, phone, issued.code)
            after = await tx.confirm_code(flow, phone, issued.code)

        assert (expired.outcome, expired.code_id) == (CodeOutcome.EXPIRED, issued.code_id)
        assert after.outcome is CodeOutcome.NO_ACTIVE_CODE

    async def test_a_new_code_supersedes_the_last_and_binds_to_the_phone(
        self, store: VerificationStore, user: UserRef
    ) -> None:
        flow, phone = "vf-" + user.tenant_id, digest()
        async with store.write() as tx:
            old = await tx.issue_code(flow, phone)
            new = await tx.issue_code(flow, phone)
        async with store.write() as tx:
            other_phone = await tx.confirm_code(flow, digest(), new.code)
            stale = await tx.confirm_code(flow, phone, old.code) if old.code != new.code else None
            with pytest.raises(InvalidArgument):
                await tx.confirm_code(flow, phone, "12a456")
            fresh = await tx.confirm_code(flow, phone, new.code)

        assert other_phone.outcome is CodeOutcome.NO_ACTIVE_CODE
        assert stale is None or stale.outcome is CodeOutcome.WRONG
        assert fresh.outcome is CodeOutcome.CONFIRMED


class TestSendLimits:
    async def test_a_phone_gets_one_code_a_minute_and_three_an_hour(
        self, store: VerificationStore, clock: FakeClock
    ) -> None:
        phone = digest()
        async with store.write() as tx:
            first = await tx.record_send(phone, None)
        async with store.write() as tx:
            with pytest.raises(ResourceExhausted) as too_soon:
                await tx.record_send(phone, None)
        clock.advance(seconds=60)
        async with store.write() as tx:
            await tx.record_send(phone, None)
        clock.advance(seconds=60)
        async with store.write() as tx:
            third = await tx.record_send(phone, None)
        clock.advance(seconds=60)
        async with store.write() as tx:
            with pytest.raises(ResourceExhausted) as hourly:
                await tx.record_send(phone, None)

        assert first.next_send_at == T0 + timedelta(seconds=60)
        assert too_soon.value.metadata["limit"] == "phone_interval"
        assert too_soon.value.retry_after_seconds == 60
        assert third.next_send_at == T0 + timedelta(hours=1)
        assert hourly.value.metadata["limit"] == "phone_hourly"
        assert hourly.value.retry_after_seconds == 3600 - 180

    async def test_a_client_address_is_limited_across_phones(
        self, store: VerificationStore, address: str, clock: FakeClock
    ) -> None:
        for _ in range(5):
            async with store.write() as tx:
                await tx.record_send(digest(), address)
            clock.advance(seconds=1)
        async with store.write() as tx:
            with pytest.raises(ResourceExhausted) as refused:
                await tx.record_send(digest(), address)
            allowed_elsewhere = await tx.record_send(digest(), None)

        assert refused.value.metadata["limit"] == "address_hourly"
        assert allowed_elsewhere.next_send_at > clock.now


class TestLockouts:
    async def test_failures_from_one_address_lock_that_address_and_escalate(
        self, store: VerificationStore, user: UserRef, address: str, clock: FakeClock
    ) -> None:
        async def fail() -> tuple[int, object]:
            async with store.write() as tx:
                recorded = await tx.record_code_failure(user, address)
            return recorded.remaining_before_lockout, recorded.locked_until

        first = [await fail() for _ in range(3)]
        async with store.read() as tx:
            with pytest.raises(ResourceExhausted) as locked:
                await tx.check_not_locked(user, address)
            await tx.check_not_locked(user, "198.51.100.7")  # another address is not locked out
        clock.advance(minutes=1)
        async with store.read() as tx:
            await tx.check_not_locked(user, address)
        second = [await fail() for _ in range(3)]

        assert first == [(2, None), (1, None), (0, T0 + timedelta(minutes=1))]
        assert locked.value.metadata["limit"] == "address_lockout"
        assert second[-1] == (0, clock.now + timedelta(minutes=5))

    async def test_many_addresses_lock_the_account_but_not_a_trusted_address(
        self, store: VerificationStore, user: UserRef
    ) -> None:
        trusted = "192.0.2.10"
        async with store.write() as tx:
            await tx.record_code_success(user, trusted)
        for n in range(5):
            async with store.write() as tx:
                recorded = await tx.record_code_failure(user, f"203.0.113.{n + 1}")
        async with store.read() as tx:
            with pytest.raises(ResourceExhausted) as locked:
                await tx.check_not_locked(user, "203.0.113.99")
            await tx.check_not_locked(user, trusted)

        assert recorded.account.locked_until == T0 + timedelta(minutes=1)
        assert locked.value.metadata["limit"] == "account_lockout"

    async def test_a_success_resets_the_counters(self, store: VerificationStore, user: UserRef, address: str) -> None:
        for _ in range(2):
            async with store.write() as tx:
                await tx.record_code_failure(user, address)
        async with store.write() as tx:
            await tx.record_code_success(user, address)
            recorded = await tx.record_code_failure(user, address)

        assert (recorded.address.failed_attempts, recorded.remaining_before_lockout) == (1, 2)


class TestLedger:
    async def test_entries_are_appended_once_per_idempotency_key(
        self, store: VerificationStore, user: UserRef, database: Database
    ) -> None:
        first = entry(user)
        retry = replace(entry(user), idempotency_key=first.idempotency_key)
        other = entry(user, "verification.code_sent")
        async with store.write() as tx:
            await tx.append(first)
            await tx.append(other)
        async with store.write() as tx:
            await tx.append(retry)

        assert await ledger_keys(store, [first.key, other.key], database) == sorted([first.key, other.key])


class TestTransactions:
    async def test_a_write_that_raises_leaves_nothing_behind(
        self,
        store: VerificationStore,
        identity: IdentityStore,
        user: UserRef,
        address: str,
        database: Database,
    ) -> None:
        existing = await new_flow(store, user)
        assert existing.phone_index is not None
        flow = flow_record(UserRef(user.tenant_id, "u-2"), key="fk-2")
        consent = consent_record(flow.user)
        audit = entry(user)
        index = BlindIndex("idx-1", digest())

        with pytest.raises(Boom):
            async with store.write() as tx:
                await tx.lock_account(flow.user)
                await tx.set_sensitive_consent(user, True)
                await tx.store_data_key(flow.flow_id, flow.user, wrapped_key(), T0)
                await tx.insert_flow(flow)
                await tx.insert_consent(consent)
                await tx.update_flow(existing.flow_id, FlowUpdate(state=FlowState.FAILED))
                assert await tx.claim_identity(user, IndexKind.RESIDENT_ID, existing.flow_id, [index], T0)
                await tx.record_send(existing.phone_index, address)
                await tx.issue_code(existing.flow_id, existing.phone_index)
                await tx.record_code_failure(user, address)
                await tx.erase_personal_data(user, T0)
                await tx.append(audit)
                raise Boom

        async with store.write() as tx:
            found = (await tx.flow(existing.flow_id), await tx.flow(flow.flow_id), await tx.consent(consent.consent_id))
            key = await tx.data_key(existing.flow_id)
            free = await tx.claim_identity(UserRef(user.tenant_id, "u-3"), IndexKind.RESIDENT_ID, "vf-x", [index], T0)
            code = await tx.confirm_code(existing.flow_id, existing.phone_index, "123456")
            send = await tx.record_send(existing.phone_index, address)
            failure = await tx.record_code_failure(user, address)
        account = await identity.account(user)

        assert found == (existing, None, None)
        assert key is not None and free is True
        assert code.outcome is CodeOutcome.NO_ACTIVE_CODE
        assert send.next_send_at == T0 + timedelta(seconds=60)
        assert failure.address.failed_attempts == 1
        assert await identity.account(flow.user) is None
        assert account is not None and account.status is AccountStatus.ACTIVE
        assert account.sensitive_consent_in_force is False
        assert await ledger_keys(store, [audit.key], database) == []

    async def test_what_a_read_does_is_not_kept(
        self, store: VerificationStore, identity: IdentityStore, user: UserRef, database: Database
    ) -> None:
        consent = consent_record(user)
        audit = entry(user)
        async with store.read() as tx:
            await tx.ensure_account(user)
            await tx.insert_consent(consent)
            await tx.append(audit)
            seen = await tx.consent(consent.consent_id)

        async with store.read() as tx:
            after = await tx.consent(consent.consent_id)

        assert seen == consent and after is None
        assert await identity.account(user) is None
        assert await ledger_keys(store, [audit.key], database) == []
