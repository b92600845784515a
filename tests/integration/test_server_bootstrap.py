"""The gRPC server bootstrap on a real socket with a test-only servicer:
graceful drain, message-size limit, metrics, error mapping, open health and
reflection."""

from __future__ import annotations

import asyncio
import pathlib
import urllib.request
from collections.abc import AsyncIterator
from dataclasses import dataclass, field

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc
from prometheus_client.parser import text_string_to_metric_families

from avgate.common.v1 import common_pb2
from avgate.identity.v1 import identity_pb2, identity_pb2_grpc
from avgate.kernel.grpc.server import GrpcProcess, ServiceRegistration
from avgate.kernel.principal import TokenSigner
from avgate.kernel.process import service_process
from services.identity.config import IdentitySettings
from tests.support import Metadata, provider, serve, signer, token_metadata

SERVICE = "avgate.identity.v1.IdentityService"
CHECK_ELIGIBILITY = f"/{SERVICE}/CheckEligibility"
MAX_MESSAGE_BYTES = 64 * 1024
TRACE_ID = "4bf92f3577b34da6a3ce929d0e0e4736"


@dataclass
class Control:
    """What the test servicer does; reset for every test."""

    hold: asyncio.Event | None = None  # requests for user "slow" wait on it
    entered: asyncio.Event = field(default_factory=asyncio.Event)
    fail_with: str | None = None
    seen: list[identity_pb2.CheckEligibilityRequest] = field(default_factory=list)


CONTROL = Control()


class SlowIdentity(identity_pb2_grpc.IdentityServiceServicer):
    async def CheckEligibility(
        self, request: identity_pb2.CheckEligibilityRequest, context: grpc.aio.ServicerContext
    ) -> identity_pb2.CheckEligibilityResponse:
        CONTROL.seen.append(request)
        if CONTROL.fail_with is not None:
            raise RuntimeError(CONTROL.fail_with)
        if request.user.user_id == "slow" and CONTROL.hold is not None:
            CONTROL.entered.set()
            await CONTROL.hold.wait()
        return identity_pb2.CheckEligibilityResponse()


@dataclass
class Server:
    process: GrpcProcess
    channel: grpc.aio.Channel
    signer: TokenSigner

    @property
    def target(self) -> str:
        return f"127.0.0.1:{self.process.port}"

    def token(self) -> Metadata:
        principal = provider("tenant-a", subject="k", request_id="r")
        return token_metadata(self.signer, principal, audience="identity", method=CHECK_ELIGIBILITY)

    async def check(self, user_id: str = "u", *, channel: grpc.aio.Channel | None = None, **kwargs: object) -> object:
        stub = identity_pb2_grpc.IdentityServiceStub(channel or self.channel)
        request = identity_pb2.CheckEligibilityRequest(user=common_pb2.UserRef(tenant_id="tenant-a", user_id=user_id))
        return await stub.CheckEligibility(request, **kwargs)  # type: ignore[arg-type]


@pytest.fixture
def drain_delay() -> float:
    return 0.0


@pytest.fixture
async def server(keys_dir: pathlib.Path, drain_delay: float) -> AsyncIterator[Server]:
    global CONTROL
    CONTROL = Control()
    settings = IdentitySettings(
        trusted_keys_dir=keys_dir,
        generate_keys=False,
        grpc_port=0,
        metrics_port=0,
        max_message_bytes=MAX_MESSAGE_BYTES,
        shutdown_grace_seconds=5,
        drain_delay_seconds=drain_delay,
    )
    registration = ServiceRegistration(
        SlowIdentity(), identity_pb2_grpc.add_IdentityServiceServicer_to_server, [SERVICE]
    )
    async with serve(service_process(settings, [registration])) as served:
        try:
            yield Server(served.process, served.channel, signer(keys_dir))
        finally:
            if CONTROL.hold is not None:
                CONTROL.hold.set()


async def _refusal(call: asyncio.Future[object] | object) -> grpc.StatusCode:
    with pytest.raises(grpc.aio.AioRpcError) as refused:
        await call  # type: ignore[misc]
    return refused.value.code()


class TestGracefulDrain:
    async def test_in_flight_call_finishes_while_new_calls_are_turned_away(self, server: Server) -> None:
        CONTROL.hold = asyncio.Event()
        in_flight = asyncio.ensure_future(server.check("slow", metadata=server.token(), timeout=10))
        await asyncio.wait_for(CONTROL.entered.wait(), 5)
        health_channel = grpc.aio.insecure_channel(server.target)
        await asyncio.wait_for(health_channel.channel_ready(), 5)
        health = health_pb2_grpc.HealthStub(health_channel)
        assert (await health.Check(health_pb2.HealthCheckRequest())).status == health_pb2.HealthCheckResponse.SERVING

        stopping = asyncio.create_task(server.process.stop())
        await asyncio.sleep(0)  # stop() marks health NOT_SERVING before its first suspension
        own = await server.process.health_servicer.Check(health_pb2.HealthCheckRequest(), None)
        assert own.status == health_pb2.HealthCheckResponse.NOT_SERVING
        try:  # over the wire the answer races the shutdown that follows at once
            reply = await health.Check(health_pb2.HealthCheckRequest(), timeout=2)
            assert reply.status == health_pb2.HealthCheckResponse.NOT_SERVING
        except grpc.aio.AioRpcError as refused:
            assert refused.code() in {grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.CANCELLED}

        fresh = grpc.aio.insecure_channel(server.target)
        try:
            code = await _refusal(server.check(channel=fresh, metadata=server.token(), timeout=2))
        finally:
            await fresh.close()
        assert code in {grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.CANCELLED}
        assert [r.user.user_id for r in CONTROL.seen] == ["slow"], "no new call reached the servicer"

        assert not in_flight.done()
        CONTROL.hold.set()
        assert await in_flight == identity_pb2.CheckEligibilityResponse()
        await asyncio.wait_for(stopping, 5)
        await health_channel.close()


class TestDrainDelay:
    @pytest.mark.parametrize("drain_delay", [1.0], ids=["one-second"])
    async def test_health_answers_not_serving_over_the_wire_before_the_listener_closes(self, server: Server) -> None:
        health = health_pb2_grpc.HealthStub(server.channel)
        assert (await health.Check(health_pb2.HealthCheckRequest())).status == health_pb2.HealthCheckResponse.SERVING
        stopping = asyncio.create_task(server.process.stop())
        await asyncio.sleep(0.2)
        reply = await health.Check(health_pb2.HealthCheckRequest(service=SERVICE))
        assert reply.status == health_pb2.HealthCheckResponse.NOT_SERVING
        await stopping

    async def test_metrics_endpoint_closes_with_the_process(self, server: Server) -> None:
        import urllib.error
        import urllib.request

        url = f"http://127.0.0.1:{server.process.metrics_port}/metrics"
        await asyncio.to_thread(lambda: urllib.request.urlopen(url, timeout=5).read())
        await server.process.stop()
        with pytest.raises(urllib.error.URLError):
            await asyncio.to_thread(lambda: urllib.request.urlopen(url, timeout=2).read())


class TestMessageSizeLimit:
    async def test_oversized_request_is_refused_before_the_servicer(self, server: Server) -> None:
        code = await _refusal(server.check("x" * (100 * 1024), metadata=server.token()))
        assert code is grpc.StatusCode.RESOURCE_EXHAUSTED
        assert CONTROL.seen == []
        await server.check(metadata=server.token())  # the connection still serves
        assert len(CONTROL.seen) == 1


class TestMetrics:
    async def test_handled_counts_and_latency_per_method_and_code(self, server: Server) -> None:
        calls = 3
        for _ in range(calls):
            await server.check(metadata=server.token())
        assert await _refusal(server.check()) is grpc.StatusCode.UNAUTHENTICATED

        url = f"http://127.0.0.1:{server.process.metrics_port}/metrics"
        assert server.process.metrics_port > 0
        text = await asyncio.to_thread(lambda: urllib.request.urlopen(url, timeout=5).read().decode())
        samples = [s for family in text_string_to_metric_families(text) for s in family.samples]

        def sample(name: str, **codes: str) -> float | None:
            labels = {"grpc_service": SERVICE, "grpc_method": "CheckEligibility", **codes}
            return next((s.value for s in samples if s.name == name and s.labels == labels), None)

        assert sample("grpc_server_handled_total", grpc_code="OK") == calls
        assert sample("grpc_server_handled_total", grpc_code="UNAUTHENTICATED") == 1
        assert sample("grpc_server_started_total") == calls + 1
        assert sample("grpc_server_handling_seconds_count") == calls + 1


class TestUnexpectedErrors:
    async def test_become_internal_with_the_trace_id_and_no_exception_text(self, server: Server) -> None:
        CONTROL.fail_with = "secret-db-password-in-exception"
        traceparent = ("traceparent", f"00-{TRACE_ID}-00f067aa0ba902b7-01")
        with pytest.raises(grpc.aio.AioRpcError) as failed:
            await server.check(metadata=(*server.token(), traceparent))
        error = failed.value
        assert error.code() is grpc.StatusCode.INTERNAL
        assert f"trace id {TRACE_ID}" in (error.details() or "")
        leaked = [error.details() or "", *(str(v) for _, v in error.trailing_metadata() or ())]
        assert not any("secret-db-password" in text for text in leaked)


class TestOpenEndpoints:
    async def test_health_needs_no_principal_token(self, server: Server) -> None:
        health = health_pb2_grpc.HealthStub(server.channel)
        for name in ("", SERVICE):
            reply = await health.Check(health_pb2.HealthCheckRequest(service=name))
            assert reply.status == health_pb2.HealthCheckResponse.SERVING

    async def test_reflection_needs_no_principal_token_and_lists_the_service(self, server: Server) -> None:
        stub = reflection_pb2_grpc.ServerReflectionStub(server.channel)
        call = stub.ServerReflectionInfo(iter([reflection_pb2.ServerReflectionRequest(list_services="")]))
        replies = [reply async for reply in call]
        names = {s.name for reply in replies for s in reply.list_services_response.service}
        assert {SERVICE, "grpc.health.v1.Health"} <= names
