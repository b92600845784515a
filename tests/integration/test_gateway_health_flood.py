"""An anonymous flood of health watches does not stop the gateway (issue 12, finding 6).

A real gateway process (real PostgreSQL for its keys, real sockets) in front
of a scripted upstream that answers grpc.health.v1 and identity's GetAccount
and counts the health checks it is asked. The gateway's call limit is
lowered to 16 and its watch caps to 2 per client address and 8 in all; the
test opens the flood from many client addresses (it is the gateway's
trusted proxy, so its `X-Forwarded-For` names them). Also here: idle
uploads of one key hold no more than that key's share of calls in flight.
"""

from __future__ import annotations

import asyncio
import pathlib
from collections import Counter
from collections.abc import AsyncIterator
from dataclasses import dataclass, field

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from avgate.gateway.v1 import gateway_pb2, gateway_pb2_grpc
from avgate.kernel.db import create_engine_for
from avgate.kernel.principal import Role
from gateway.__main__ import compose as compose_gateway
from gateway.config import GatewaySettings
from gateway.health import GatewayHealthServicer
from gateway.service import ApiKeyService
from gateway.store import SqlApiKeyStore
from tests.conftest import Database, free_port
from tests.support import operator, serve

GET_ACCOUNT = "/avgate.identity.v1.IdentityService/GetAccount"
ATTACH = "/avgate.reporting.v1.EvidenceService/AttachEvidence"
CALL_LIMIT = 16
PER_PEER = 2
TOTAL = 8
INTERVAL_SECONDS = 0.5
PRINCIPAL_SHARE = 2


@dataclass
class ScriptedUpstream:
    """Answers health checks (SERVING) and GetAccount, counts the checks, holds uploads open until they end."""

    port: int = field(default_factory=free_port)
    checks: Counter[str] = field(default_factory=Counter)
    uploads: int = 0
    server: grpc.aio.Server | None = None

    async def start(self) -> None:
        upstream = self

        class Health(health_pb2_grpc.HealthServicer):
            async def Check(
                self, request: health_pb2.HealthCheckRequest, context: grpc.aio.ServicerContext
            ) -> health_pb2.HealthCheckResponse:
                upstream.checks[request.service] += 1
                return health_pb2.HealthCheckResponse(status=health_pb2.HealthCheckResponse.SERVING)

        async def get_account(request: bytes, context: grpc.aio.ServicerContext) -> bytes:
            return b""

        async def attach(requests: AsyncIterator[bytes], context: grpc.aio.ServicerContext) -> bytes:
            upstream.uploads += 1
            async for _ in requests:
                pass
            return b""

        self.server = grpc.aio.server()
        health_pb2_grpc.add_HealthServicer_to_server(Health(), self.server)
        self.server.add_generic_rpc_handlers(
            (
                grpc.method_handlers_generic_handler(
                    "avgate.identity.v1.IdentityService",
                    {"GetAccount": grpc.unary_unary_rpc_method_handler(get_account)},
                ),
                grpc.method_handlers_generic_handler(
                    "avgate.reporting.v1.EvidenceService",
                    {"AttachEvidence": grpc.stream_unary_rpc_method_handler(attach)},
                ),
            )
        )
        assert self.server.add_insecure_port(f"127.0.0.1:{self.port}") == self.port
        await self.server.start()

    async def stop(self) -> None:
        if self.server is not None:
            await self.server.stop(0)


@dataclass
class Front:
    channel: grpc.aio.Channel
    upstream: ScriptedUpstream
    keys: dict[str, str]
    health: GatewayHealthServicer

    def watch(self, client_address: str, service: str = "identity") -> grpc.aio.UnaryStreamCall:
        """A keyless watch, as from `client_address` behind the gateway's trusted proxy."""
        return health_pb2_grpc.HealthStub(self.channel).Watch(
            health_pb2.HealthCheckRequest(service=service),
            metadata=(("x-forwarded-for", client_address),),
            timeout=60,
        )

    async def aggregate_health(self) -> gateway_pb2.GetAggregateHealthResponse:
        return await gateway_pb2_grpc.GatewayServiceStub(self.channel).GetAggregateHealth(
            gateway_pb2.GetAggregateHealthRequest(), metadata=bearer(self.keys["operator"]), timeout=10
        )

    async def get_account(self, key: str) -> None:
        await self.channel.unary_unary(GET_ACCOUNT)(b"", metadata=bearer(self.keys[key]), timeout=10)


def bearer(secret: str) -> tuple[tuple[str, str], ...]:
    return (("authorization", f"Bearer {secret}"),)


async def first_status(call: grpc.aio.UnaryStreamCall) -> grpc.StatusCode:
    """OK when the watch is held (its first status came), else the code it ended with."""
    try:
        reply = await asyncio.wait_for(call.read(), 10)
    except grpc.aio.AioRpcError as exc:
        return exc.code()
    assert reply.status == health_pb2.HealthCheckResponse.SERVING
    return grpc.StatusCode.OK


@pytest.fixture
async def front(database: Database, keys_dir: pathlib.Path) -> AsyncIterator[Front]:
    upstream = ScriptedUpstream()
    await upstream.start()
    target = f"127.0.0.1:{upstream.port}"
    settings = GatewaySettings(
        trusted_keys_dir=keys_dir,
        generate_keys=False,
        metrics_port=-1,
        grpc_port=0,
        database_url=database.url_for("gateway"),
        identity_target=target,
        screening_target=target,
        reporting_target=target,
        complaints_target=target,
        trusted_proxies=["127.0.0.0/8"],
        principal_max_concurrent=PRINCIPAL_SHARE,
        health_watch_interval_seconds=INTERVAL_SECONDS,
        health_watches_per_peer=PER_PEER,
        health_watches_total=TOTAL,
    )
    process = await compose_gateway(settings)
    process.options.max_concurrent_rpcs = CALL_LIMIT  # lowered, so that a small flood would fill it
    async with serve(process) as gateway:
        engine = create_engine_for(database.url_for("gateway"), pool_size=1)
        service = ApiKeyService(SqlApiKeyStore(engine))
        keys = {}
        for name, role, tenant in (
            ("provider", Role.PROVIDER, "tenant-a"),
            ("other", Role.PROVIDER, "tenant-b"),
            ("operator", Role.OPERATOR, ""),
        ):
            created = await service.create(
                operator("test"), display_name=name, role=role, tenant_id=tenant, regulator_scope=None, ttl=None
            )
            keys[name] = created.secret
        await engine.dispose()
        try:
            yield Front(gateway.channel, upstream, keys, process.health_servicer)
        finally:
            await upstream.stop()


class TestHealthWatchFlood:
    async def test_a_flood_of_watches_is_capped_and_api_calls_are_still_answered(self, front: Front) -> None:
        held: list[grpc.aio.UnaryStreamCall] = []
        try:
            # One client address: its share, then refused at once.
            mine = [front.watch("203.0.113.1") for _ in range(PER_PEER)]
            held += mine
            assert [await first_status(c) for c in mine] == [grpc.StatusCode.OK] * PER_PEER
            over = front.watch("203.0.113.1")
            with pytest.raises(grpc.aio.AioRpcError) as refused:
                await over.read()
            assert refused.value.code() is grpc.StatusCode.RESOURCE_EXHAUSTED
            assert "one client address" in (refused.value.details() or "")

            # The flood: three watches from each of twenty addresses, more than the call limit.
            flood = [front.watch(f"198.51.100.{n}") for n in range(1, 21) for _ in range(3)]
            held += flood
            outcomes = Counter(await asyncio.gather(*(first_status(c) for c in flood)))
            assert outcomes == {
                grpc.StatusCode.OK: TOTAL - PER_PEER,
                grpc.StatusCode.RESOURCE_EXHAUSTED: len(flood) - (TOTAL - PER_PEER),
            }
            assert front.health.watches.watching == TOTAL
            with pytest.raises(grpc.aio.AioRpcError) as full:
                await front.watch("192.0.2.1").read()
            assert full.value.code() is grpc.StatusCode.RESOURCE_EXHAUSTED
            assert "health watches may be open on the gateway" in (full.value.details() or "")

            # While the flood is held, an operator and a provider are answered.
            reply = await front.aggregate_health()
            assert {s.name for s in reply.services} >= {"identity", "reporting"}
            await front.get_account("provider")

            # The upstream is asked once per interval, not once per watcher.
            before = front.upstream.checks[""]
            await asyncio.sleep(4 * INTERVAL_SECONDS)
            asked = front.upstream.checks[""] - before
            assert 2 <= asked <= 5, f"{asked} checks in four intervals for {TOTAL} watchers"
            assert front.health.watches.pollers == 1
        finally:
            for call in held:
                call.cancel()

        # Nobody watches: the poller stops, and the slots are free again.
        for _ in range(100):
            if front.health.watches.watching == 0:
                break
            await asyncio.sleep(0.05)
        assert front.health.watches.watching == 0 and front.health.watches.pollers == 0
        quiet = front.upstream.checks[""]
        await asyncio.sleep(3 * INTERVAL_SECONDS)
        assert front.upstream.checks[""] == quiet
        again = front.watch("203.0.113.1")
        assert await first_status(again) is grpc.StatusCode.OK
        again.cancel()

    async def test_watchers_of_one_service_share_its_status_changes(self, front: Front) -> None:
        watches = [front.watch("203.0.113.7", "avgate.identity.v1.IdentityService") for _ in range(PER_PEER)]
        try:
            assert [await first_status(c) for c in watches] == [grpc.StatusCode.OK] * PER_PEER
            await front.upstream.stop()  # the upstream goes away: every watcher hears NOT_SERVING
            for call in watches:
                reply = await asyncio.wait_for(call.read(), 10)
                assert reply.status == health_pb2.HealthCheckResponse.NOT_SERVING
        finally:
            for call in watches:
                call.cancel()


class TestIdleUploads:
    async def test_idle_uploads_of_one_key_hold_only_its_share(self, front: Front) -> None:
        quiet = asyncio.Event()  # never set: the uploader sends one chunk and goes silent

        async def idle_chunks() -> AsyncIterator[bytes]:
            yield b"first"
            await quiet.wait()

        provider = bearer(front.keys["provider"])
        idle = [front.channel.stream_unary(ATTACH)(idle_chunks(), metadata=provider, timeout=30)]
        idle += [front.channel.stream_unary(ATTACH)(idle_chunks(), metadata=provider, timeout=30)]
        try:
            for _ in range(500):  # until the gateway holds both upstream calls
                if front.upstream.uploads == PRINCIPAL_SHARE:
                    break
                await asyncio.sleep(0.01)
            assert front.upstream.uploads == PRINCIPAL_SHARE

            with pytest.raises(grpc.aio.AioRpcError) as refused:
                await front.channel.stream_unary(ATTACH)(idle_chunks(), metadata=provider, timeout=10)
            assert refused.value.code() is grpc.StatusCode.RESOURCE_EXHAUSTED
            assert front.upstream.uploads == PRINCIPAL_SHARE

            async def one_chunk() -> AsyncIterator[bytes]:
                yield b"whole"

            other = bearer(front.keys["other"])
            await front.channel.stream_unary(ATTACH)(one_chunk(), metadata=other, timeout=10)
            await front.get_account("other")
        finally:
            for call in idle:
                call.cancel()
