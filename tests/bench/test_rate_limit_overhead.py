"""Benchmark: what the rate limiter costs a call at the gateway (issue 11).

Beside the stack that `avgate run` starts, two more gateway processes run
from the same code and settings, in front of the same identity, and differ
in one setting: GATEWAY_RATE_LIMITS_ENABLED. The limited one has its limits
out of reach, so every call pays for the check (key and tenant buckets,
operator-set limits from the key cache) and none is refused. The same unary
call as tests/bench/test_gateway_overhead.py (CheckEligibility with an empty
request, which identity refuses as INVALID_ARGUMENT past the principal check)
goes through each with 16 calls in flight, in alternating rounds so drift on
the shared machine falls on both alike; the figure is the median of the
rounds' on/off ratios. Because that ratio is noisy on a shared machine, the
limiter's own cost is also timed in-process (its scope around a keyed call,
cached key and tenant limits) and set against a call's time at the gateway.
Goal (set here, as issue 11 asks the limits to be measured): the limiter
costs at most 5% of a call's throughput.
"""

from __future__ import annotations

import asyncio
import os
import pathlib
import statistics
import subprocess
import sys
import time
from collections.abc import Iterator

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from avgate.bench.verdict import Verdict
from avgate.identity.v1 import identity_pb2, identity_pb2_grpc
from avgate.kernel.principal import Principal, Role, bind_principal, unbind_principal
from gateway.addresses import ClientAddresses
from gateway.domain import RateLimit
from gateway.limits import LimitDefaults, RateLimiter, RateLimitInterceptor
from gateway.service import ApiKeyService
from gateway.store import InMemoryApiKeyStore
from tests.conftest import REPO, Database, free_port
from tests.support import LIMITS_OUT_OF_REACH, RunningStack

pytestmark = pytest.mark.bench

CALLS = 2000
CONCURRENCY = 16
ROUNDS = 6
SCOPES = 50_000
GOAL_RATIO = 0.95


def _gateway_env(running: RunningStack, database: Database, port: int, limits: dict[str, str]) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.endswith("DATABASE_URL")}
    env.update(
        {
            "AVGATE_STATE_DIR": str(running.state_dir),
            "GATEWAY_GRPC_HOST": "127.0.0.1",
            "GATEWAY_GRPC_PORT": str(port),
            "GATEWAY_METRICS_PORT": "-1",
            "GATEWAY_DATABASE_URL": database.url_for("gateway"),
            **{
                f"GATEWAY_{name.upper()}_TARGET": running.description["processes"][name]["grpc"]
                for name in ("identity", "screening", "reporting", "complaints")
            },
            # Inside the stack every service takes mTLS only: these gateways present the stack's gateway
            # certificate, as the stack's own gateway does.
            "AVGATE_TLS_CA_FILE": str(running.tls["ca"]),
            "AVGATE_TLS_CERT_FILE": str(running.tls["processes"]["gateway"]["cert"]),
            "AVGATE_TLS_KEY_FILE": str(running.tls["processes"]["gateway"]["key"]),
            "GATEWAY_HEALTH_PORT": "-1",
            **limits,
        }
    )
    return env


def _wait_serving(target: str, process: subprocess.Popen[bytes], log: pathlib.Path) -> None:
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        if process.poll() is not None:
            pytest.fail(f"gateway exited:\n{log.read_text(errors='replace')[-2000:]}")
        try:
            with grpc.insecure_channel(target) as channel:
                reply = health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(), timeout=1)
                if reply.status == health_pb2.HealthCheckResponse.SERVING:
                    return
        except grpc.RpcError:
            pass
        time.sleep(0.2)
    pytest.fail(f"gateway at {target} did not come up:\n{log.read_text(errors='replace')[-2000:]}")


@pytest.fixture(scope="module")
def gateways(
    running: RunningStack, database: Database, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[dict[str, str]]:
    """'on' and 'off': the target of each extra gateway."""
    logs = tmp_path_factory.mktemp("gateways")
    settings = {"on": LIMITS_OUT_OF_REACH, "off": {"GATEWAY_RATE_LIMITS_ENABLED": "false"}}
    started: dict[str, tuple[str, subprocess.Popen[bytes]]] = {}
    try:
        for name, limits in settings.items():
            port = free_port()
            log = logs / f"gateway-{name}.log"
            with log.open("wb") as out:
                process = subprocess.Popen(
                    [sys.executable, "-m", "gateway"],
                    env=_gateway_env(running, database, port, limits),
                    stdout=out,
                    stderr=subprocess.STDOUT,
                    cwd=REPO,
                )
            started[name] = (f"127.0.0.1:{port}", process)
            _wait_serving(started[name][0], process, log)
        yield {name: target for name, (target, _) in started.items()}
    finally:
        for _, process in started.values():
            process.terminate()
            process.wait(timeout=30)


async def _round(target: str, key: str, calls: int) -> float:
    """Seconds for `calls` calls with CONCURRENCY in flight."""
    metadata = (("authorization", f"Bearer {key}"),)
    async with grpc.aio.insecure_channel(target) as channel:
        stub = identity_pb2_grpc.IdentityServiceStub(channel)
        request = identity_pb2.CheckEligibilityRequest()
        remaining = calls

        async def worker() -> None:
            nonlocal remaining
            while remaining > 0:
                remaining -= 1
                try:
                    await stub.CheckEligibility(request, metadata=metadata, timeout=10)
                except grpc.aio.AioRpcError as exc:
                    # An empty request stops at identity's validation: never at a rate limit.
                    assert exc.code() is grpc.StatusCode.INVALID_ARGUMENT, exc

        began = time.perf_counter()
        await asyncio.gather(*(worker() for _ in range(CONCURRENCY)))
        return time.perf_counter() - began


class _KeyedCall:
    def invocation_metadata(self) -> tuple[tuple[str, str], ...]:
        return (("authorization", "Bearer avgk_bench_secret"),)

    def peer(self) -> str:
        return "ipv4:127.0.0.1:5000"


async def _limiter_seconds_per_call() -> float:
    """The limiter's own time per admitted call, in-process: principal read, cached limits, two buckets."""
    store = InMemoryApiKeyStore()
    keys = ApiKeyService(store, cache_seconds=5.0)
    created = await keys.create(
        Principal(role=Role.OPERATOR, subject="bench"),
        display_name="bench",
        role=Role.PROVIDER,
        tenant_id="bench-tenant",
        regulator_scope=None,
        ttl=None,
    )
    out_of_reach = RateLimit(1e6, 1_000_000)
    limits = RateLimitInterceptor(
        RateLimiter(), LimitDefaults(out_of_reach, out_of_reach, out_of_reach), keys, ClientAddresses()
    )
    principal = Principal(role=Role.PROVIDER, subject=created.key.key_id, tenant_id="bench-tenant")
    context = _KeyedCall()
    bound = bind_principal(principal)
    try:
        began = time.perf_counter()
        for _ in range(SCOPES):
            async with limits.scope("/m", context):  # type: ignore[arg-type]
                pass
        return (time.perf_counter() - began) / SCOPES
    finally:
        unbind_principal(bound)


async def test_rate_limiter_overhead(running: RunningStack, gateways: dict[str, str]) -> None:
    key = running.description["development_api_keys"]["provider"]
    for target in gateways.values():
        await _round(target, key, CALLS // 4)  # warm-up: channels, key cache, buckets
    ratios = []
    seconds = {"on": 0.0, "off": 0.0}
    for i in range(ROUNDS):
        order = ("on", "off") if i % 2 == 0 else ("off", "on")
        took = {}
        for name in order:
            took[name] = await _round(gateways[name], key, CALLS)
            seconds[name] += took[name]
        ratios.append(took["off"] / took["on"])  # on/off throughput of this round
    rate = {name: ROUNDS * CALLS / s for name, s in seconds.items()}
    ratio = statistics.median(ratios)
    limiter = await _limiter_seconds_per_call()
    call = 1 / rate["off"]  # the gateway's time per call (one process, calls in flight overlap)
    print(
        f"\nunary call through the gateway, {ROUNDS} x {CALLS} calls per side, {CONCURRENCY} in flight\n"
        f"  limits on (out of reach): {rate['on']:8.0f} calls/s\n"
        f"  limits off              : {rate['off']:8.0f} calls/s\n"
        f"  on/off throughput, median of rounds: {ratio:.3f} (rounds {', '.join(f'{r:.2f}' for r in ratios)})\n"
        f"  the limiter alone, in-process: {limiter * 1e6:.1f} us per call"
        f" = {limiter / call:.1%} of a call's {call * 1e6:.0f} us at the gateway"
    )
    print(
        Verdict(
            "gateway with rate limits / without, unary call", f"≥ {GOAL_RATIO}x", f"{ratio:.3f}x", ratio >= GOAL_RATIO
        ).line()
    )
    print(
        Verdict(
            "rate limiter's own time / a call's time at the gateway",
            f"≤ {1 - GOAL_RATIO:.0%}",
            f"{limiter / call:.1%}",
            limiter / call <= 1 - GOAL_RATIO,
        ).line()
    )
