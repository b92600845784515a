"""The API key store contract: the in-memory fake the unit tests use and the
SQL store the gateway runs on must behave alike.

Both run against one module database (shared across tests), so every test
works in tenants of its own and looks only at them.
"""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta, timezone

import pytest
import sqlalchemy.exc
from sqlalchemy.ext.asyncio import AsyncEngine

from avgate.kernel.db import create_engine_for
from avgate.kernel.principal import Principal, RegulatorScope, Role
from avgate.ledger.entry import LedgerEntry
from gateway.domain import ApiKey, RateLimit, StoredApiKey, TenantRateLimit, hash_secret, new_key_id
from gateway.store import ApiKeyStore, InMemoryApiKeyStore, SqlApiKeyStore
from tests.conftest import Database

T0 = datetime(2026, 12, 1, 9, 0, tzinfo=UTC)
BEIJING = timezone(timedelta(hours=8))


@pytest.fixture(scope="module")
async def engine(database: Database) -> AsyncIterator[AsyncEngine]:
    engine = create_engine_for(database.url_for("gateway"), pool_size=2)
    yield engine
    await engine.dispose()


@pytest.fixture(params=["memory", pytest.param("postgres", marks=pytest.mark.db)])
def store(request: pytest.FixtureRequest) -> ApiKeyStore:
    if request.param == "memory":
        return InMemoryApiKeyStore()
    return SqlApiKeyStore(request.getfixturevalue("engine"))


@pytest.fixture
def tenant() -> str:
    return f"t-{uuid.uuid4().hex[:12]}"


def provider_key(tenant: str, *, created: datetime = T0, key_id: str | None = None, **changes: object) -> StoredApiKey:
    key = ApiKey(
        key_id=key_id or new_key_id(),
        display_name="uploader",
        role=Role.PROVIDER,
        tenant_id=tenant,
        regulator_scope=None,
        create_time=created,
        created_by="operator:ops-1",
    )
    return StoredApiKey(key=key, secret_hash=hash_secret(f"secret-{key.key_id}")).with_key(**changes)


OPERATOR = Principal(role=Role.OPERATOR, subject="ops-1")


def audit(stored: StoredApiKey) -> LedgerEntry:
    return LedgerEntry(action="api_key.test", subject_type="api_key", subject_id=stored.key.key_id, actor=OPERATOR)


async def listed(
    store: ApiKeyStore,
    tenant: str,
    *,
    include_revoked: bool = False,
    after: tuple[datetime, str] | None = None,
    limit: int = 100,
) -> list[str]:
    keys = await store.list(tenant_id=tenant, include_revoked=include_revoked, after=after, limit=limit)
    return [k.key_id for k in keys]


class TestAddingAndGetting:
    async def test_provider_key_round_trips_every_field(self, store: ApiKeyStore, tenant: str) -> None:
        stored = provider_key(
            tenant,
            display_name="acme uploader 上传",
            created=T0.astimezone(BEIJING),
            expire_time=T0 + timedelta(days=90, microseconds=123),
            development=True,
        )

        await store.add(stored, audit(stored))
        fetched = await store.get(stored.key.key_id)

        assert fetched == stored
        assert fetched is not None
        assert fetched.key.create_time.tzinfo is not None
        assert fetched.key.expire_time is not None and fetched.key.expire_time.tzinfo is not None

    async def test_regulator_key_round_trips_its_scope(self, store: ApiKeyStore) -> None:
        key = ApiKey(
            key_id=new_key_id(),
            display_name="Beijing cyberspace office",
            role=Role.REGULATOR,
            tenant_id=None,
            regulator_scope=RegulatorScope(("cyberspace", "public_security"), ("110000", "110105")),
            create_time=T0,
            created_by="operator:ops-1",
        )
        stored = StoredApiKey(key=key, secret_hash=hash_secret("regulator secret"))

        await store.add(stored, audit(stored))

        assert await store.get(key.key_id) == stored

    async def test_rotated_and_revoked_key_round_trips(self, store: ApiKeyStore, tenant: str) -> None:
        stored = StoredApiKey(
            key=provider_key(
                tenant,
                revoke_time=T0 + timedelta(hours=1),
                revoke_reason="leaked",
                last_used_time=T0 + timedelta(minutes=5),
            ).key,
            secret_hash=hash_secret("new"),
            previous_secret_hash=hash_secret("old"),
            previous_secret_expire_time=T0 + timedelta(days=1),
        )

        await store.add(stored, audit(stored))

        assert await store.get(stored.key.key_id) == stored

    async def test_unknown_key_is_none(self, store: ApiKeyStore) -> None:
        assert await store.get(new_key_id()) is None


class TestListing:
    async def test_orders_by_create_time_then_key_id(self, store: ApiKeyStore, tenant: str) -> None:
        late = provider_key(tenant, created=T0 + timedelta(seconds=2), key_id=f"ak-0-{tenant}")
        tie_b = provider_key(tenant, created=T0, key_id=f"ak-b-{tenant}")
        tie_a = provider_key(tenant, created=T0, key_id=f"ak-a-{tenant}")
        middle = provider_key(tenant, created=T0 + timedelta(microseconds=1))
        for stored in (late, tie_b, tie_a, middle):
            await store.add(stored, audit(stored))

        assert await listed(store, tenant) == [k.key.key_id for k in (tie_a, tie_b, middle, late)]

    async def test_filters_by_tenant(self, store: ApiKeyStore, tenant: str) -> None:
        mine = provider_key(tenant)
        await store.add(mine, audit(mine))
        other = provider_key(f"{tenant}-other")
        await store.add(other, audit(other))

        assert await listed(store, tenant) == [mine.key.key_id]

    async def test_without_a_tenant_lists_every_tenant(self, store: ApiKeyStore, tenant: str) -> None:
        # Keys dated far in the future, so that the cursor skips whatever other tests stored.
        start = T0 + timedelta(days=365 * 50 + uuid.uuid4().int % 10_000)
        first = provider_key(tenant, created=start)
        second = provider_key(f"{tenant}-other", created=start + timedelta(seconds=1))
        for stored in (first, second):
            await store.add(stored, audit(stored))

        keys = await store.list(
            tenant_id=None, include_revoked=False, after=(start - timedelta(microseconds=1), ""), limit=2
        )

        assert [k.key_id for k in keys] == [first.key.key_id, second.key.key_id]

    async def test_hides_revoked_keys_unless_asked(self, store: ApiKeyStore, tenant: str) -> None:
        active = provider_key(tenant, created=T0)
        revoked = provider_key(tenant, created=T0 + timedelta(seconds=1), revoke_time=T0, revoke_reason="done")
        for stored in (active, revoked):
            await store.add(stored, audit(stored))

        assert await listed(store, tenant) == [active.key.key_id]
        assert await listed(store, tenant, include_revoked=True) == [active.key.key_id, revoked.key.key_id]

    async def test_lists_expired_keys(self, store: ApiKeyStore, tenant: str) -> None:
        expired = provider_key(tenant, expire_time=T0 - timedelta(days=1))
        await store.add(expired, audit(expired))

        assert await listed(store, tenant) == [expired.key.key_id]

    async def test_continues_after_the_cursor(self, store: ApiKeyStore, tenant: str) -> None:
        keys = [
            provider_key(tenant, created=T0, key_id=f"ak-1-{tenant}"),
            provider_key(tenant, created=T0, key_id=f"ak-2-{tenant}"),
            provider_key(tenant, created=T0 + timedelta(seconds=1), key_id=f"ak-0-{tenant}"),
        ]
        for stored in keys:
            await store.add(stored, audit(stored))
        first = keys[0].key

        after_first = await listed(store, tenant, after=(first.create_time, first.key_id))
        after_time = await listed(store, tenant, after=(T0, "~"))

        assert after_first == [keys[1].key.key_id, keys[2].key.key_id]
        assert after_time == [keys[2].key.key_id]

    async def test_honours_the_limit(self, store: ApiKeyStore, tenant: str) -> None:
        keys = [provider_key(tenant, created=T0 + timedelta(seconds=i)) for i in range(3)]
        for stored in keys:
            await store.add(stored, audit(stored))

        assert await listed(store, tenant, limit=2) == [k.key.key_id for k in keys[:2]]


class TestSaving:
    async def test_persists_revocation(self, store: ApiKeyStore, tenant: str) -> None:
        stored = provider_key(tenant)
        await store.add(stored, audit(stored))

        revoked = stored.with_key(revoke_time=T0 + timedelta(hours=1), revoke_reason="leaked")
        await store.save(revoked, audit(revoked))

        assert await store.get(stored.key.key_id) == revoked

    async def test_persists_rotated_secrets(self, store: ApiKeyStore, tenant: str) -> None:
        stored = provider_key(tenant)
        await store.add(stored, audit(stored))

        rotated = StoredApiKey(
            key=stored.key,
            secret_hash=hash_secret("new"),
            previous_secret_hash=stored.secret_hash,
            previous_secret_expire_time=T0 + timedelta(hours=24),
        )
        await store.save(rotated, audit(rotated))

        assert await store.get(stored.key.key_id) == rotated

    async def test_leaves_last_use_to_record_use(self, store: ApiKeyStore, tenant: str) -> None:
        stored = provider_key(tenant)
        await store.add(stored, audit(stored))

        used = stored.with_key(last_used_time=T0 + timedelta(minutes=3))
        await store.save(used, audit(used))

        assert await store.get(stored.key.key_id) == stored

    async def test_recording_use_changes_only_the_last_use(self, store: ApiKeyStore, tenant: str) -> None:
        stored = provider_key(tenant)
        await store.add(stored, audit(stored))
        revoked = stored.with_key(revoke_time=T0 + timedelta(hours=1), revoke_reason="leaked")
        await store.save(revoked, audit(revoked))

        await store.record_use(stored.key.key_id, T0 + timedelta(minutes=3))

        assert await store.get(stored.key.key_id) == revoked.with_key(last_used_time=T0 + timedelta(minutes=3))

    async def test_recording_use_of_an_unknown_key_does_nothing(self, store: ApiKeyStore) -> None:
        key_id = new_key_id()

        await store.record_use(key_id, T0)

        assert await store.get(key_id) is None


class TestDevelopmentKeys:
    async def test_only_active_development_keys_are_returned(self, store: ApiKeyStore, tenant: str) -> None:
        now = T0 + timedelta(days=1)
        active = provider_key(tenant, development=True)
        expiring_later = provider_key(tenant, development=True, expire_time=now + timedelta(seconds=1))
        for stored in (
            active,
            expiring_later,
            provider_key(tenant, development=True, expire_time=now),
            provider_key(tenant, development=True, revoke_time=T0, revoke_reason="done"),
            provider_key(tenant),
        ):
            await store.add(stored, audit(stored))

        found = {k.key_id for k in await store.active_development_keys(now) if k.tenant_id == tenant}

        assert found == {active.key.key_id, expiring_later.key.key_id}


class TestDatabaseGuards:
    @pytest.mark.parametrize(
        ("role", "tenant_id"),
        [(Role.PROVIDER, None), (Role.PUBLIC, "acme"), (Role.SERVICE, None)],
        ids=["provider-without-tenant", "tenant-on-public-key", "unknown-role"],
    )
    async def test_database_refuses_a_key_the_service_would_refuse(
        self, engine: AsyncEngine, role: Role, tenant_id: str | None
    ) -> None:
        store = SqlApiKeyStore(engine)
        stored = provider_key("placeholder").with_key(role=role, tenant_id=tenant_id)

        with pytest.raises(sqlalchemy.exc.IntegrityError):
            await store.add(stored, audit(stored))

        assert await store.get(stored.key.key_id) is None


async def queued_keys(store: ApiKeyStore, keys: list[str], admin_url: str) -> set[str]:
    """Idempotency keys of the given entries that reached the ledger (queue or integrated)."""
    if isinstance(store, InMemoryApiKeyStore):
        return {e.key for e in store.ledger} & set(keys)
    import psycopg

    from avgate.kernel.db import libpq_url

    async with await psycopg.AsyncConnection.connect(libpq_url(admin_url)) as conn:
        cur = await conn.execute(
            "select idempotency_key from ledger.queue where idempotency_key = any(%s) "
            "union select idempotency_key from ledger.entries where idempotency_key = any(%s)",
            (keys, keys),
        )
        return {r[0] for r in await cur.fetchall()}


class TestRateLimits:
    async def test_a_keys_limit_round_trips_and_clears(self, store: ApiKeyStore, tenant: str) -> None:
        stored = provider_key(tenant, rate_limit=RateLimit(2.5, 7))
        await store.add(stored, audit(stored))
        assert await store.get(stored.key.key_id) == stored

        await store.save_rate_limit(stored.key.key_id, RateLimit(10, 20), audit(stored))
        fetched = await store.get(stored.key.key_id)
        assert fetched is not None and fetched.key.rate_limit == RateLimit(10, 20)

        await store.save_rate_limit(stored.key.key_id, None, audit(stored))
        fetched = await store.get(stored.key.key_id)
        assert fetched is not None and fetched.key.rate_limit is None

    async def test_a_revoke_does_not_undo_a_limit_set_meanwhile(self, store: ApiKeyStore, tenant: str) -> None:
        stored = provider_key(tenant)
        await store.add(stored, audit(stored))
        await store.save_rate_limit(stored.key.key_id, RateLimit(1, 1), audit(stored))
        await store.save(stored.with_key(revoke_time=T0, revoke_reason="leaked"), audit(stored))  # read before
        fetched = await store.get(stored.key.key_id)
        assert fetched is not None and fetched.key.rate_limit == RateLimit(1, 1)

    async def test_a_tenants_limit_is_set_replaced_and_removed(self, store: ApiKeyStore, tenant: str) -> None:
        entry = LedgerEntry(action="tenant.test", subject_type="tenant", subject_id=tenant, actor=OPERATOR)
        assert await store.get_tenant_rate_limit(tenant) is None
        first = TenantRateLimit(tenant, RateLimit(50, 100), T0, "operator:ops-1")
        await store.set_tenant_rate_limit(first, entry)
        assert await store.get_tenant_rate_limit(tenant) == first
        second = TenantRateLimit(tenant, RateLimit(0.5, 1), T0 + timedelta(hours=1), "operator:ops-2")
        await store.set_tenant_rate_limit(second, entry)
        assert await store.get_tenant_rate_limit(tenant) == second
        await store.set_tenant_rate_limit(TenantRateLimit(tenant, None, T0, "operator:ops-1"), entry)
        assert await store.get_tenant_rate_limit(tenant) is None


class TestAuditTrail:
    async def test_every_change_queues_its_ledger_entry(
        self, store: ApiKeyStore, tenant: str, database: Database
    ) -> None:
        stored = provider_key(tenant)
        created, revoked_audit = audit(stored), audit(stored)
        await store.add(stored, created)
        await store.save(stored.with_key(revoke_time=T0, revoke_reason="leaked"), revoked_audit)

        keys = [created.key, revoked_audit.key]
        assert await queued_keys(store, keys, database.admin_url) == set(keys)

    async def test_a_change_that_fails_queues_nothing(
        self, store: ApiKeyStore, tenant: str, database: Database
    ) -> None:
        stored = provider_key(tenant)
        await store.add(stored, audit(stored))
        duplicate = audit(stored)
        with pytest.raises((KeyError, sqlalchemy.exc.IntegrityError)):
            await store.add(stored, duplicate)

        assert await queued_keys(store, [duplicate.key], database.admin_url) == set()
