"""Operators set rate limits on keys and tenants: checked, ledgered, and cached like the keys."""

from __future__ import annotations

import pytest

from avgate.kernel.errors import InvalidArgument, NotFound, PermissionDenied
from avgate.kernel.principal import Role
from gateway.domain import RateLimit
from gateway.service import ApiKeyService
from gateway.store import InMemoryApiKeyStore
from tests.support import operator, provider

OPERATOR = operator("ops-1")
LIMIT = RateLimit(requests_per_second=10, burst=20)


class Elapsed:
    def __init__(self) -> None:
        self.seconds = 1000.0

    def __call__(self) -> float:
        return self.seconds


async def _key(service: ApiKeyService, tenant: str = "acme") -> str:
    created = await service.create(
        OPERATOR, display_name="uploader", role=Role.PROVIDER, tenant_id=tenant, regulator_scope=None, ttl=None
    )
    return created.key.key_id


class TestKeyLimits:
    async def test_an_operator_sets_and_clears_a_keys_limit(self) -> None:
        store = InMemoryApiKeyStore()
        service = ApiKeyService(store)
        key_id = await _key(service)
        assert (await service.set_key_rate_limit(OPERATOR, key_id=key_id, rate_limit=LIMIT)).rate_limit == LIMIT
        assert (await service.rate_limits(key_id, "acme"))[0] == LIMIT
        assert (await service.set_key_rate_limit(OPERATOR, key_id=key_id, rate_limit=None)).rate_limit is None
        assert (await service.rate_limits(key_id, "acme"))[0] is None

    async def test_each_change_is_a_ledger_entry(self) -> None:
        store = InMemoryApiKeyStore()
        service = ApiKeyService(store)
        key_id = await _key(service)
        await service.set_key_rate_limit(OPERATOR, key_id=key_id, rate_limit=LIMIT)
        await service.set_key_rate_limit(OPERATOR, key_id=key_id, rate_limit=None)
        entries = [(e.action, e.subject_id, e.tenant_id, e.data) for e in store.ledger[1:]]
        assert entries == [
            ("api_key.set_rate_limit", key_id, "acme", {"rate_limit": {"requests_per_second": 10, "burst": 20}}),
            ("api_key.set_rate_limit", key_id, "acme", {"rate_limit": None}),
        ]

    async def test_a_provider_may_not_set_its_own_keys_limit(self) -> None:
        service = ApiKeyService(InMemoryApiKeyStore())
        key_id = await _key(service)
        with pytest.raises(PermissionDenied):
            await service.set_key_rate_limit(provider("acme"), key_id=key_id, rate_limit=LIMIT)

    async def test_a_provider_may_not_create_a_key_with_a_limit(self) -> None:
        service = ApiKeyService(InMemoryApiKeyStore())
        with pytest.raises(PermissionDenied):
            await service.create(
                provider("acme"),
                display_name="mine",
                role=Role.PROVIDER,
                tenant_id="acme",
                regulator_scope=None,
                ttl=None,
                rate_limit=LIMIT,
            )

    async def test_an_operator_creates_a_key_with_a_limit(self) -> None:
        store = InMemoryApiKeyStore()
        service = ApiKeyService(store)
        created = await service.create(
            OPERATOR,
            display_name="bulk",
            role=Role.PROVIDER,
            tenant_id="acme",
            regulator_scope=None,
            ttl=None,
            rate_limit=LIMIT,
        )
        assert created.key.rate_limit == LIMIT
        assert store.ledger[0].data["rate_limit"] == {"requests_per_second": 10, "burst": 20}

    async def test_an_unknown_key_is_not_found(self) -> None:
        service = ApiKeyService(InMemoryApiKeyStore())
        with pytest.raises(NotFound):
            await service.set_key_rate_limit(OPERATOR, key_id="aknothere", rate_limit=LIMIT)

    @pytest.mark.parametrize(
        ("limit", "fields"),
        [
            (RateLimit(0, 1), {"rate_limit.requests_per_second"}),
            (RateLimit(float("nan"), 1), {"rate_limit.requests_per_second"}),
            (RateLimit(2_000_000, 1), {"rate_limit.requests_per_second"}),
            (RateLimit(1, 0), {"rate_limit.burst"}),
            (RateLimit(-1, -1), {"rate_limit.requests_per_second", "rate_limit.burst"}),
        ],
        ids=["zero-rate", "nan-rate", "rate-too-high", "zero-burst", "both-negative"],
    )
    async def test_a_limit_that_admits_nothing_or_is_absurd_is_refused(
        self, limit: RateLimit, fields: set[str]
    ) -> None:
        service = ApiKeyService(InMemoryApiKeyStore())
        key_id = await _key(service)
        with pytest.raises(InvalidArgument) as refused:
            await service.set_key_rate_limit(OPERATOR, key_id=key_id, rate_limit=limit)
        assert {v.field for v in refused.value.violations} == fields

    async def test_a_change_here_applies_at_once_despite_the_cache(self) -> None:
        service = ApiKeyService(InMemoryApiKeyStore(), cache_seconds=60, monotonic=Elapsed())
        key_id = await _key(service)
        assert (await service.rate_limits(key_id, "acme"))[0] is None  # now cached
        await service.set_key_rate_limit(OPERATOR, key_id=key_id, rate_limit=LIMIT)
        assert (await service.rate_limits(key_id, "acme"))[0] == LIMIT


class TestTenantLimits:
    async def test_an_operator_sets_reads_and_clears_a_tenants_limit(self) -> None:
        store = InMemoryApiKeyStore()
        service = ApiKeyService(store)
        assert (await service.get_tenant_rate_limit(OPERATOR, tenant_id="acme")).rate_limit is None
        record = await service.set_tenant_rate_limit(OPERATOR, tenant_id="acme", rate_limit=LIMIT)
        assert record.updated_by == "operator:ops-1"
        assert (await service.get_tenant_rate_limit(OPERATOR, tenant_id="acme")).rate_limit == LIMIT
        assert (await service.rate_limits("any-key", "acme"))[1] == LIMIT
        await service.set_tenant_rate_limit(OPERATOR, tenant_id="acme", rate_limit=None)
        assert (await service.get_tenant_rate_limit(OPERATOR, tenant_id="acme")).rate_limit is None
        assert [(e.action, e.subject_type, e.subject_id) for e in store.ledger] == [
            ("tenant.set_rate_limit", "tenant", "acme"),
            ("tenant.set_rate_limit", "tenant", "acme"),
        ]

    async def test_a_provider_reads_its_own_tenants_limit_only(self) -> None:
        service = ApiKeyService(InMemoryApiKeyStore())
        await service.set_tenant_rate_limit(OPERATOR, tenant_id="acme", rate_limit=LIMIT)
        assert (await service.get_tenant_rate_limit(provider("acme"), tenant_id="acme")).rate_limit == LIMIT
        with pytest.raises(NotFound):
            await service.get_tenant_rate_limit(provider("globex"), tenant_id="acme")
        with pytest.raises(PermissionDenied):
            await service.set_tenant_rate_limit(provider("acme"), tenant_id="acme", rate_limit=LIMIT)

    async def test_a_tenant_limit_is_cached_and_a_change_here_applies_at_once(self) -> None:
        elapsed = Elapsed()
        store = InMemoryApiKeyStore()
        service = ApiKeyService(store, cache_seconds=5, monotonic=elapsed)
        other_replica = ApiKeyService(store)
        assert (await service.rate_limits("k", "acme"))[1] is None
        await other_replica.set_tenant_rate_limit(OPERATOR, tenant_id="acme", rate_limit=LIMIT)
        assert (await service.rate_limits("k", "acme"))[1] is None  # another replica's change: cached here
        elapsed.seconds += 5
        assert (await service.rate_limits("k", "acme"))[1] == LIMIT
        await service.set_tenant_rate_limit(OPERATOR, tenant_id="acme", rate_limit=None)
        assert (await service.rate_limits("k", "acme"))[1] is None

    async def test_a_malformed_tenant_is_refused(self) -> None:
        service = ApiKeyService(InMemoryApiKeyStore())
        with pytest.raises(InvalidArgument):
            await service.set_tenant_rate_limit(OPERATOR, tenant_id="Not A Tenant", rate_limit=LIMIT)
