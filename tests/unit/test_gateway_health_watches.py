"""The gateway's health watches: one poller per watched service, capped per peer and in total."""

from __future__ import annotations

import asyncio
import contextlib

import pytest

from avgate.kernel.grpc.server import GrpcProcess, ServerOptions
from gateway.health import NOT_SERVING, SERVING, GatewayHealthServicer, HealthWatches, WatchRefused


class CountingCheck:
    def __init__(self) -> None:
        self.asked: list[str] = []
        self.status = SERVING

    async def __call__(self, key: str) -> int:
        self.asked.append(key)
        return self.status


class TestHealthWatches:
    async def test_watchers_of_one_key_share_one_poller_that_stops_with_the_last(self) -> None:
        check = CountingCheck()
        watches = HealthWatches(check, interval_seconds=0.01, per_peer=10, total=10)
        async with contextlib.AsyncExitStack() as stack:
            topics = [await stack.enter_async_context(watches.watch("identity/", f"peer-{n}")) for n in range(5)]
            assert [await t.after(None) for t in topics] == [SERVING] * 5
            assert watches.pollers == 1 and watches.watching == 5
            await asyncio.sleep(0.1)
            assert len(check.asked) <= 15  # about ten intervals; five pollers would ask ~50 times
            check.status = NOT_SERVING
            assert [await asyncio.wait_for(t.after(SERVING), 1) for t in topics] == [NOT_SERVING] * 5
        assert watches.pollers == 0 and watches.watching == 0
        asked = len(check.asked)
        await asyncio.sleep(0.05)
        assert len(check.asked) == asked

    async def test_a_peer_over_its_share_is_refused(self) -> None:
        watches = HealthWatches(CountingCheck(), per_peer=2, total=10)
        async with watches.watch("a", "peer"), watches.watch("b", "peer"):
            with pytest.raises(WatchRefused, match="one client address"):
                async with watches.watch("a", "peer"):
                    pass
            async with watches.watch("a", "another peer"):
                assert watches.watching == 3
        await watches.close()

    async def test_watches_over_the_total_are_refused(self) -> None:
        watches = HealthWatches(CountingCheck(), per_peer=2, total=2)
        async with watches.watch("a", "one"), watches.watch("a", "two"):
            with pytest.raises(WatchRefused, match="on the gateway"):
                async with watches.watch("a", "three"):
                    pass
        assert watches.watching == 0


class TestWatchCapAgainstTheCallLimit:
    async def test_a_watch_cap_over_half_the_call_limit_refuses_to_start(self) -> None:
        process = GrpcProcess(
            name="gateway",
            registrations=[],
            options=ServerOptions(port=0, metrics_port=-1, max_concurrent_rpcs=100),
            auth_interceptor=None,
            health_servicer=GatewayHealthServicer([], [], watches_total=51),
        )
        with pytest.raises(ValueError, match="over half of the 100 concurrent calls"):
            await process.start()
