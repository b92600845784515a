"""Benchmark: the outbox dispatcher's delivery rate with 1% injected 503s, side by side
(kept-alive connections vs a connection per request, one vs two replicas), through
`avgate bench dispatcher`'s own run on the test database server. Record the printed
figures, with the `avgate bench dispatcher` command, in docs/BENCHMARKS.md."""

from __future__ import annotations

import pytest

from avgate.bench.dispatcher import render, run

pytestmark = pytest.mark.bench

EVENTS = 3000
FAILURE_RATE = 0.01


async def test_dispatcher_delivery_rate(server_admin_url: str) -> None:
    results, settings = await run(server_admin_url, events=EVENTS, failure_rate=FAILURE_RATE)
    print()
    print(render(results, settings, f"avgate bench dispatcher --events {EVENTS}", FAILURE_RATE))
    for r in results:
        assert r.endpoint["accepted"] == EVENTS, r.configuration  # every report accepted, once per key
        assert r.delivered_incidents == EVENTS
        assert r.endpoint["raw"] == r.attempts  # every attempt the outbox counted reached the endpoint
        assert r.endpoint["failed"] > 0  # the failures were injected and retried
