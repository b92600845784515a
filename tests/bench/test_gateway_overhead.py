"""Benchmark: what the gateway's front door adds to a call, side by side.

The whole stack runs as processes (`avgate run`). The same unary call
(IdentityService/CheckEligibility with an empty request, which identity refuses as
INVALID_ARGUMENT past the principal check, before its database) is made with 16 calls in flight:
directly to identity with a freshly signed principal token per call, then
through the gateway with an API key (key lookup, token signing, relay).
No issue sets a goal for the overhead: the ratio is tracked (NO GOAL). What
the test asserts is what every call got: identity's INVALID_ARGUMENT, through
either path. Run with `make bench`; record the printed figures in
docs/BENCHMARKS.md.
"""

from __future__ import annotations

import asyncio
import statistics
import time
from collections.abc import Callable

import grpc
import pytest

from avgate.bench.verdict import Verdict
from avgate.identity.v1 import identity_pb2, identity_pb2_grpc
from avgate.kernel.keys import SigningKey, load_private_key
from avgate.kernel.principal import TOKEN_METADATA_KEY, Principal, Role, TokenSigner
from tests.support import RunningStack
from tests.support.stack import aio_service_channel

pytestmark = pytest.mark.bench

CALLS = 3000
CONCURRENCY = 16
METHOD = "/avgate.identity.v1.IdentityService/CheckEligibility"


async def _load(open_channel: Callable[[], grpc.aio.Channel], metadata_for_call: object) -> tuple[float, list[float]]:
    latencies: list[float] = []
    async with open_channel() as channel:
        stub = identity_pb2_grpc.IdentityServiceStub(channel)
        request = identity_pb2.CheckEligibilityRequest()
        remaining = CALLS

        async def worker() -> None:
            nonlocal remaining
            while remaining > 0:
                remaining -= 1
                start = time.perf_counter()
                try:
                    await stub.CheckEligibility(request, metadata=metadata_for_call(), timeout=10)  # type: ignore[operator]
                except grpc.aio.AioRpcError as exc:
                    # An empty request stops at identity's validation, before its database.
                    assert exc.code() is grpc.StatusCode.INVALID_ARGUMENT, exc
                latencies.append(time.perf_counter() - start)

        began = time.perf_counter()
        await asyncio.gather(*(worker() for _ in range(CONCURRENCY)))
        elapsed = time.perf_counter() - began
    return CALLS / elapsed, sorted(latencies)


def _pct(sorted_values: list[float], q: float) -> float:
    return sorted_values[min(len(sorted_values) - 1, int(q * len(sorted_values)))] * 1000


async def test_gateway_pass_through_overhead(running: RunningStack) -> None:
    signer = TokenSigner(SigningKey("gateway", load_private_key(running.state_dir / "keys" / "gateway.key")))
    principal = Principal(role=Role.PROVIDER, subject="bench", tenant_id="dev-tenant", request_id="bench")

    def identity() -> grpc.aio.Channel:  # directly, over the stack's mTLS as the gateway would
        return aio_service_channel(running, "identity")

    def gateway() -> grpc.aio.Channel:
        return grpc.aio.insecure_channel(running.gateway)

    key = running.description["development_api_keys"]["provider"]

    def direct_metadata() -> tuple[tuple[str, str], ...]:
        return ((TOKEN_METADATA_KEY, signer.sign(principal, audience="identity", method=METHOD)),)

    def gateway_metadata() -> tuple[tuple[str, str], ...]:
        return (("authorization", f"Bearer {key}"),)

    await _load(identity, direct_metadata)  # warm-up both paths
    await _load(gateway, gateway_metadata)
    direct_rate, direct_lat = await _load(identity, direct_metadata)
    gateway_rate, gateway_lat = await _load(gateway, gateway_metadata)
    print(
        f"\nunary call, {CALLS} calls, {CONCURRENCY} in flight\n"
        f"  direct to identity : {direct_rate:8.0f} calls/s  p50 {_pct(direct_lat, 0.5):6.2f} ms"
        f"  p99 {_pct(direct_lat, 0.99):6.2f} ms\n"
        f"  through the gateway: {gateway_rate:8.0f} calls/s  p50 {_pct(gateway_lat, 0.5):6.2f} ms"
        f"  p99 {_pct(gateway_lat, 0.99):6.2f} ms\n"
        f"  gateway/direct throughput ratio: {gateway_rate / direct_rate:.2f}"
        f"  (median latency x{statistics.median(gateway_lat) / statistics.median(direct_lat):.2f})"
    )
    ratio = gateway_rate / direct_rate
    print(Verdict("gateway / direct throughput, unary call", "none set (tracked)", f"{ratio:.2f}x", None).line())
