"""The gateway between callers and upstreams: breakers, retries, caps, sizes and stream timeouts.

A real gateway process (real PostgreSQL for its keys, real sockets) in front
of a scripted upstream: a gRPC server that answers identity's and reporting's
methods as each test tells it, and records what reached it. Time for the
breaker and stream maximums is a stepped clock handed to the gateway.
"""

from __future__ import annotations

import asyncio
import pathlib
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

import grpc
import pytest
from google.rpc import error_details_pb2

from avgate.common.v1 import common_pb2
from avgate.gateway.v1 import gateway_pb2, gateway_pb2_grpc
from avgate.identity.v1 import identity_pb2
from avgate.kernel.db import create_engine_for
from avgate.kernel.principal import TOKEN_METADATA_KEY, RegulatorScope, Role
from avgate.reporting.v1 import reporting_pb2
from gateway.__main__ import compose as compose_gateway
from gateway.config import GatewaySettings
from gateway.service import ApiKeyService
from gateway.store import SqlApiKeyStore
from tests.conftest import Database, free_port
from tests.support import details, operator, serve

GET_ACCOUNT = "/avgate.identity.v1.IdentityService/GetAccount"  # no side effects: retried
UNLOCK = "/avgate.identity.v1.IdentityService/UnlockAccount"  # no request id: never retried
ATTACH = "/avgate.reporting.v1.EvidenceService/AttachEvidence"  # an upload (client stream)
FOLLOW = "/avgate.reporting.v1.RegulatorFeedService/Follow"
IDLE_SECONDS = 0.5


class SteppedClock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


@dataclass
class Script:
    """What the scripted upstream does per method, and what reached it."""

    answers: dict[str, list[grpc.StatusCode]] = field(default_factory=dict)
    seen: dict[str, list[str]] = field(default_factory=dict)
    hold: asyncio.Event | None = None

    def next_code(self, method: str) -> grpc.StatusCode:
        queue = self.answers.get(method, [])
        return queue.pop(0) if queue else grpc.StatusCode.OK


def scripted_handlers(script: Script) -> list[grpc.GenericRpcHandler]:
    def token(context: grpc.aio.ServicerContext) -> str:
        return dict(context.invocation_metadata() or ()).get(TOKEN_METADATA_KEY, "")

    def unary(method: str) -> Callable[[bytes, grpc.aio.ServicerContext], Awaitable[bytes]]:
        async def handle(request: bytes, context: grpc.aio.ServicerContext) -> bytes:
            script.seen.setdefault(method, []).append(token(context))
            code = script.next_code(method)
            if code is not grpc.StatusCode.OK:
                await context.abort(code, "scripted")
            return b""

        return handle

    async def attach(requests: AsyncIterator[bytes], context: grpc.aio.ServicerContext) -> bytes:
        script.seen.setdefault(ATTACH, []).append(token(context))
        async for _ in requests:
            pass
        return b""

    async def follow(request: bytes, context: grpc.aio.ServicerContext) -> AsyncIterator[bytes]:
        script.seen.setdefault(FOLLOW, []).append(token(context))
        yield reporting_pb2.FollowResponse().SerializeToString()
        if script.hold is not None:
            await script.hold.wait()

    identity = {
        name: grpc.unary_unary_rpc_method_handler(unary(f"/avgate.identity.v1.IdentityService/{name}"))
        for name in ("GetAccount", "UnlockAccount")
    }
    return [
        grpc.method_handlers_generic_handler("avgate.identity.v1.IdentityService", identity),
        grpc.method_handlers_generic_handler(
            "avgate.reporting.v1.EvidenceService", {"AttachEvidence": grpc.stream_unary_rpc_method_handler(attach)}
        ),
        grpc.method_handlers_generic_handler(
            "avgate.reporting.v1.RegulatorFeedService", {"Follow": grpc.unary_stream_rpc_method_handler(follow)}
        ),
    ]


@dataclass
class Upstream:
    port: int
    script: Script
    server: grpc.aio.Server | None = None

    async def start(self) -> None:
        self.server = grpc.aio.server()
        self.server.add_generic_rpc_handlers(tuple(scripted_handlers(self.script)))
        assert self.server.add_insecure_port(f"127.0.0.1:{self.port}") == self.port
        await self.server.start()

    async def stop(self) -> None:
        if self.server is not None:
            await self.server.stop(0)
            self.server = None


@dataclass
class Front:
    channel: grpc.aio.Channel
    clock: SteppedClock
    upstream: Upstream
    keys: dict[str, str]

    def call(self, method: str, request: bytes = b"", key: str = "provider") -> Any:
        return self.channel.unary_unary(method)(request, metadata=bearer(self.keys[key]), timeout=10)

    async def health(self, name: str) -> gateway_pb2.ServiceHealth:
        reply = await gateway_pb2_grpc.GatewayServiceStub(self.channel).GetAggregateHealth(
            gateway_pb2.GetAggregateHealthRequest(), metadata=bearer(self.keys["operator"]), timeout=10
        )
        (found,) = [s for s in reply.services if s.name == name]
        return found


def bearer(secret: str) -> tuple[tuple[str, str], ...]:
    return (("authorization", f"Bearer {secret}"),)


@pytest.fixture
async def front(database: Database, keys_dir: pathlib.Path) -> AsyncIterator[Front]:
    upstream = Upstream(free_port(), Script())
    clock = SteppedClock()
    settings = GatewaySettings(
        trusted_keys_dir=keys_dir,
        generate_keys=False,
        metrics_port=-1,
        grpc_port=0,
        database_url=database.url_for("gateway"),
        identity_target=f"127.0.0.1:{upstream.port}",
        reporting_target=f"127.0.0.1:{upstream.port}",
        breaker_failures=3,
        breaker_open_seconds=30,
        max_unary_request_bytes=2048,
        principal_max_concurrent=1,
        method_limits={ATTACH: {"idle_seconds": IDLE_SECONDS, "max_seconds": 60}},
    )
    async with serve(await compose_gateway(settings, clock)) as gateway:
        engine = create_engine_for(database.url_for("gateway"), pool_size=1)
        service = ApiKeyService(SqlApiKeyStore(engine))
        keys = {}
        for name, role, tenant, scope in (
            ("provider", Role.PROVIDER, "tenant-a", None),
            ("other", Role.PROVIDER, "tenant-b", None),
            ("operator", Role.OPERATOR, "", None),
            ("regulator", Role.REGULATOR, "", RegulatorScope(("cyberspace",), ("000000",))),
        ):
            created = await service.create(
                operator("test"), display_name=name, role=role, tenant_id=tenant, regulator_scope=scope, ttl=None
            )
            keys[name] = created.secret
        await engine.dispose()
        try:
            yield Front(gateway.channel, clock, upstream, keys)
        finally:
            await upstream.stop()


def reason(error: grpc.aio.AioRpcError) -> str:
    (info,) = details(error, error_details_pb2.ErrorInfo)
    return str(info.reason)


class TestBreaker:
    async def test_a_dead_upstream_trips_the_breaker_and_it_recovers(self, front: Front) -> None:
        # Nothing listens yet: each attempt fails in transport, and the third failure opens the breaker.
        with pytest.raises(grpc.aio.AioRpcError) as first:
            await front.call(GET_ACCOUNT)
        assert first.value.code() is grpc.StatusCode.UNAVAILABLE
        assert (await front.health("identity")).breaker_state == gateway_pb2.BREAKER_STATE_OPEN

        with pytest.raises(grpc.aio.AioRpcError) as refused:
            await front.call(GET_ACCOUNT)
        assert refused.value.code() is grpc.StatusCode.UNAVAILABLE
        assert reason(refused.value) == "ERROR_REASON_DEPENDENCY_UNAVAILABLE"
        (retry,) = details(refused.value, error_details_pb2.RetryInfo)
        assert 0 < retry.retry_delay.ToTimedelta().total_seconds() <= 30
        assert front.upstream.script.seen == {}, "while open, nothing is sent"

        await front.upstream.start()
        for _ in range(100):  # the gateway's channel reconnects (its health check dials it)
            if (await front.health("identity")).status == gateway_pb2.SERVING_STATUS_SERVING:
                break
            await asyncio.sleep(0.1)
        with pytest.raises(grpc.aio.AioRpcError):
            await front.call(GET_ACCOUNT)  # still open: the pause has not passed on the gateway's clock
        front.clock.now += 30
        assert (await front.health("identity")).breaker_state == gateway_pb2.BREAKER_STATE_HALF_OPEN
        await front.call(GET_ACCOUNT)  # the trial call succeeds
        health = await front.health("identity")
        assert health.breaker_state == gateway_pb2.BREAKER_STATE_CLOSED and health.breaker_trips == 1
        await front.call(GET_ACCOUNT)

    async def test_health_shows_the_breakers_only_to_operators(self, front: Front) -> None:
        with pytest.raises(grpc.aio.AioRpcError) as refused:
            await gateway_pb2_grpc.GatewayServiceStub(front.channel).GetAggregateHealth(
                gateway_pb2.GetAggregateHealthRequest(), metadata=bearer(front.keys["provider"])
            )
        assert refused.value.code() is grpc.StatusCode.PERMISSION_DENIED
        assert (await front.health("identity")).max_in_flight == 1024


class TestRetries:
    async def test_a_call_without_side_effects_is_retried_with_a_fresh_token(self, front: Front) -> None:
        await front.upstream.start()
        front.upstream.script.answers[GET_ACCOUNT] = [grpc.StatusCode.UNAVAILABLE]
        await front.call(GET_ACCOUNT)
        tokens = front.upstream.script.seen[GET_ACCOUNT]
        assert len(tokens) == 2 and tokens[0] != tokens[1]

    async def test_a_call_the_contract_does_not_mark_safe_is_not_retried(self, front: Front) -> None:
        await front.upstream.start()
        front.upstream.script.answers[UNLOCK] = [grpc.StatusCode.UNAVAILABLE]
        with pytest.raises(grpc.aio.AioRpcError) as failed:
            await front.call(UNLOCK)
        assert failed.value.code() is grpc.StatusCode.UNAVAILABLE
        assert len(front.upstream.script.seen[UNLOCK]) == 1

    async def test_only_unavailable_is_retried(self, front: Front) -> None:
        await front.upstream.start()
        front.upstream.script.answers[GET_ACCOUNT] = [grpc.StatusCode.INTERNAL]
        with pytest.raises(grpc.aio.AioRpcError) as failed:
            await front.call(GET_ACCOUNT)
        assert failed.value.code() is grpc.StatusCode.INTERNAL
        assert len(front.upstream.script.seen[GET_ACCOUNT]) == 1

    async def test_attempts_stop_at_the_limit(self, front: Front) -> None:
        await front.upstream.start()
        front.upstream.script.answers[GET_ACCOUNT] = [grpc.StatusCode.UNAVAILABLE] * 5
        with pytest.raises(grpc.aio.AioRpcError):
            await front.call(GET_ACCOUNT)
        assert len(front.upstream.script.seen[GET_ACCOUNT]) == 3  # GATEWAY_MAX_ATTEMPTS' default


class TestSizes:
    async def test_a_request_over_its_methods_limit_is_refused_before_forwarding(self, front: Front) -> None:
        await front.upstream.start()
        big = identity_pb2.GetAccountRequest(user=common_pb2.UserRef(tenant_id="tenant-a", user_id="u" * 4000))
        with pytest.raises(grpc.aio.AioRpcError) as refused:
            await front.call(GET_ACCOUNT, big.SerializeToString())
        assert refused.value.code() is grpc.StatusCode.INVALID_ARGUMENT
        (bad,) = details(refused.value, error_details_pb2.BadRequest)
        assert [v.field for v in bad.field_violations] == ["request"]
        assert "2048 bytes" in bad.field_violations[0].description
        assert GET_ACCOUNT not in front.upstream.script.seen

    async def test_each_message_of_an_upload_is_held_to_the_limit(self, front: Front) -> None:
        await front.upstream.start()

        async def chunks() -> AsyncIterator[bytes]:
            yield b"x" * 100
            yield b"x" * (3 * 1024 * 1024)

        call = front.channel.stream_unary(ATTACH)(chunks(), metadata=bearer(front.keys["provider"]), timeout=10)
        with pytest.raises(grpc.aio.AioRpcError) as refused:
            await call
        assert refused.value.code() is grpc.StatusCode.INVALID_ARGUMENT
        (bad,) = details(refused.value, error_details_pb2.BadRequest)
        assert [v.field for v in bad.field_violations] == ["request[1]"]


class TestStreams:
    async def test_an_upload_that_goes_quiet_is_ended(self, front: Front) -> None:
        await front.upstream.start()
        quiet = asyncio.Event()

        async def chunks() -> AsyncIterator[bytes]:
            yield b"first"
            await quiet.wait()  # never set: the uploader went silent

        call = front.channel.stream_unary(ATTACH)(chunks(), metadata=bearer(front.keys["provider"]), timeout=30)
        with pytest.raises(grpc.aio.AioRpcError) as ended:
            await call
        assert ended.value.code() is grpc.StatusCode.DEADLINE_EXCEEDED
        assert "idle" in (ended.value.details() or "")

    async def test_an_upload_past_its_maximum_time_is_ended(self, front: Front) -> None:
        await front.upstream.start()

        async def chunks() -> AsyncIterator[bytes]:
            yield b"first"
            for _ in range(500):  # until the gateway has opened the upstream call: its stream has started
                if ATTACH in front.upstream.script.seen:
                    break
                await asyncio.sleep(0.01)
            front.clock.now += 61  # the method's maximum is 60 s on the gateway's clock
            yield b"second"

        call = front.channel.stream_unary(ATTACH)(chunks(), metadata=bearer(front.keys["provider"]), timeout=30)
        with pytest.raises(grpc.aio.AioRpcError) as ended:
            await call
        assert ended.value.code() is grpc.StatusCode.DEADLINE_EXCEEDED
        assert "maximum" in (ended.value.details() or "")


class TestConcurrency:
    async def test_one_caller_cannot_hold_more_than_its_share(self, front: Front) -> None:
        await front.upstream.start()
        front.upstream.script.hold = asyncio.Event()
        regulator = bearer(front.keys["regulator"])
        held = front.channel.unary_stream(FOLLOW)(
            reporting_pb2.FollowRequest().SerializeToString(), metadata=regulator, timeout=30
        )
        await held.read()  # the first item: the call is in flight
        with pytest.raises(grpc.aio.AioRpcError) as refused:
            await front.channel.unary_stream(FOLLOW)(
                reporting_pb2.FollowRequest().SerializeToString(), metadata=regulator, timeout=10
            ).read()
        assert refused.value.code() is grpc.StatusCode.RESOURCE_EXHAUSTED
        assert details(refused.value, error_details_pb2.RetryInfo)
        await front.call(GET_ACCOUNT, key="other")  # another caller is not held back
        front.upstream.script.hold.set()
        held.cancel()
