"""The gateway reuses authenticated key records briefly, never past a revoke it made."""

from __future__ import annotations

import pytest

from avgate.kernel.errors import Unauthenticated
from avgate.kernel.principal import Principal, Role
from gateway.domain import StoredApiKey
from gateway.service import ApiKeyService
from gateway.store import InMemoryApiKeyStore

OPERATOR = Principal(role=Role.OPERATOR, subject="op")


class CountingStore(InMemoryApiKeyStore):
    def __init__(self) -> None:
        super().__init__()
        self.gets = 0

    async def get(self, key_id: str) -> StoredApiKey | None:
        self.gets += 1
        return await super().get(key_id)


class SteppedClock:
    """Monotonic seconds that move only when a test says so."""

    def __init__(self) -> None:
        self.seconds = 1000.0

    def __call__(self) -> float:
        return self.seconds


async def _service_with_key(
    cache_seconds: float, monotonic: SteppedClock | None = None
) -> tuple[ApiKeyService, CountingStore, str, str]:
    store = CountingStore()
    service = ApiKeyService(store, cache_seconds=cache_seconds, monotonic=monotonic or SteppedClock())
    created = await service.create(
        OPERATOR, display_name="k", role=Role.PROVIDER, tenant_id="acme", regulator_scope=None, ttl=None
    )
    return service, store, created.key.key_id, created.secret


class TestKeyCache:
    async def test_repeated_calls_read_the_key_once_within_the_cache_time(self) -> None:
        service, store, _, secret = await _service_with_key(cache_seconds=60)
        for _ in range(5):
            await service.authenticate(secret)
        assert store.gets == 1

    async def test_without_a_cache_every_call_reads_the_key(self) -> None:
        service, store, _, secret = await _service_with_key(cache_seconds=0)
        for _ in range(3):
            await service.authenticate(secret)
        assert store.gets == 3

    async def test_revoke_through_this_gateway_applies_at_once(self) -> None:
        service, _, key_id, secret = await _service_with_key(cache_seconds=60)
        await service.authenticate(secret)
        await service.revoke(OPERATOR, key_id=key_id, reason="leaked")
        with pytest.raises(Unauthenticated):
            await service.authenticate(secret)

    async def test_rotation_through_this_gateway_applies_at_once(self) -> None:
        service, _, key_id, secret = await _service_with_key(cache_seconds=60)
        await service.authenticate(secret)
        rotated = await service.rotate(OPERATOR, key_id=key_id, grace=None)
        assert (await service.authenticate(rotated.secret)).key_id == key_id

    async def test_revoke_by_another_replica_applies_once_the_cache_time_passes(self) -> None:
        elapsed = SteppedClock()
        service, store, key_id, secret = await _service_with_key(cache_seconds=5, monotonic=elapsed)
        other_replica = ApiKeyService(store)
        await service.authenticate(secret)
        await other_replica.revoke(OPERATOR, key_id=key_id, reason="leaked")
        elapsed.seconds += 4.9
        await service.authenticate(secret)  # still cached here, just inside the cache time
        elapsed.seconds += 0.1
        with pytest.raises(Unauthenticated):
            await service.authenticate(secret)

    async def test_the_cache_time_is_measured_from_the_read_not_from_each_use(self) -> None:
        elapsed = SteppedClock()
        service, store, _, secret = await _service_with_key(cache_seconds=5, monotonic=elapsed)
        for _ in range(4):
            await service.authenticate(secret)
            elapsed.seconds += 2
        assert store.gets == 2  # read at 0 s, reused at 2 and 4 s, read again at 6 s

    async def test_wrong_secret_for_a_cached_key_is_refused(self) -> None:
        service, _, key_id, secret = await _service_with_key(cache_seconds=60)
        await service.authenticate(secret)
        with pytest.raises(Unauthenticated):
            await service.authenticate(f"avgk_{key_id}_{'x' * 43}")
