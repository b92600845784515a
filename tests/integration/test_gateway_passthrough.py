"""The gateway and a service as real gRPC servers on real sockets, with a
real PostgreSQL: the front door, the principal hop, health and tracing."""

from __future__ import annotations

import pathlib
from collections.abc import AsyncIterator
from dataclasses import dataclass

import grpc
import pytest
from google.rpc import error_details_pb2
from grpc_health.v1 import health_pb2, health_pb2_grpc
from opentelemetry import trace
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

from avgate.common.v1 import common_pb2
from avgate.gateway.v1 import gateway_pb2, gateway_pb2_grpc
from avgate.identity.v1 import identity_pb2, identity_pb2_grpc
from avgate.kernel.db import create_engine_for
from avgate.kernel.grpc.server import GrpcProcess
from avgate.kernel.keys import SigningKey
from avgate.kernel.principal import Role, TokenSigner
from gateway.__main__ import compose as compose_gateway
from gateway.config import GatewaySettings
from gateway.service import ApiKeyService
from gateway.store import SqlApiKeyStore
from services.identity.__main__ import compose as compose_identity
from services.identity.config import IdentitySettings
from tests.conftest import Database, free_port
from tests.support import details, operator, provider, serve, signer, token_metadata

CHECK_ELIGIBILITY = "/avgate.identity.v1.IdentityService/CheckEligibility"
SPANS = InMemorySpanExporter()


@dataclass
class Stack:
    gateway: grpc.aio.Channel
    identity: grpc.aio.Channel
    keys: dict[Role, str]
    keys_dir: pathlib.Path


def _reason(error: grpc.aio.AioRpcError) -> str:
    (info,) = details(error, error_details_pb2.ErrorInfo)
    return str(info.reason)


@pytest.fixture(scope="module")
async def stack(database: Database, keys_dir: pathlib.Path) -> AsyncIterator[Stack]:
    if not isinstance(trace.get_tracer_provider(), TracerProvider):
        tracer_provider = TracerProvider()
        tracer_provider.add_span_processor(SimpleSpanProcessor(SPANS))
        trace.set_tracer_provider(tracer_provider)
    common = {"trusted_keys_dir": keys_dir, "generate_keys": False, "metrics_port": -1, "grpc_port": 0}
    # identity here is only an upstream: no outbox of incidents to dispatch, no expiry job.
    identity_process: GrpcProcess = await compose_identity(
        IdentitySettings(
            **common,  # type: ignore[arg-type]
            database_url=database.url_for("identity"),
            dispatcher_enabled=False,
            expiry_enabled=False,
        )
    )
    async with serve(identity_process) as identity:
        gateway_process: GrpcProcess = await compose_gateway(
            GatewaySettings(
                **common,  # type: ignore[arg-type]
                database_url=database.url_for("gateway"),
                identity_target=identity.target,
                screening_target=f"127.0.0.1:{free_port()}",  # nothing listens: a stopped service
            )
        )
        async with serve(gateway_process) as gateway:
            engine = create_engine_for(database.url_for("gateway"), pool_size=1)
            service = ApiKeyService(SqlApiKeyStore(engine))
            keys = {}
            for role, tenant in ((Role.PROVIDER, "tenant-a"), (Role.OPERATOR, "")):
                created = await service.create(
                    operator("test"),
                    display_name=f"{role.value} key",
                    role=role,
                    tenant_id=tenant,
                    regulator_scope=None,
                    ttl=None,
                )
                keys[role] = created.secret
            await engine.dispose()
            yield Stack(gateway.channel, identity.channel, keys, keys_dir)


def bearer(secret: str) -> tuple[tuple[str, str], ...]:
    return (("authorization", f"Bearer {secret}"),)


class TestFrontDoor:
    async def test_call_without_a_key_is_refused(self, stack: Stack) -> None:
        stub = identity_pb2_grpc.IdentityServiceStub(stack.gateway)
        with pytest.raises(grpc.aio.AioRpcError) as refused:
            await stub.CheckEligibility(identity_pb2.CheckEligibilityRequest())
        assert refused.value.code() is grpc.StatusCode.UNAUTHENTICATED
        assert _reason(refused.value) == "ERROR_REASON_UNAUTHENTICATED"

    async def test_call_with_an_unknown_key_is_refused(self, stack: Stack) -> None:
        stub = identity_pb2_grpc.IdentityServiceStub(stack.gateway)
        forged = stack.keys[Role.PROVIDER][:-4] + "AAAA"
        with pytest.raises(grpc.aio.AioRpcError) as refused:
            await stub.CheckEligibility(identity_pb2.CheckEligibilityRequest(), metadata=bearer(forged))
        assert refused.value.code() is grpc.StatusCode.UNAUTHENTICATED

    async def test_a_valid_key_reaches_the_service_which_accepts_the_principal(self, stack: Stack) -> None:
        stub = identity_pb2_grpc.IdentityServiceStub(stack.gateway)
        call = stub.CheckEligibility(
            identity_pb2.CheckEligibilityRequest(
                user=common_pb2.UserRef(tenant_id="tenant-a", user_id="u-1"),
                action=identity_pb2.ACCOUNT_FUNCTION_PUBLISH,
            ),
            metadata=(*bearer(stack.keys[Role.PROVIDER]), ("x-request-id", "req-42")),
        )
        answer = await call
        # Identity accepted the key's tenant as the caller's: an unverified user may not publish.
        assert not answer.allowed
        assert [r.code for r in answer.reasons] == [identity_pb2.INELIGIBILITY_CODE_VERIFICATION_LEVEL_TOO_LOW]
        assert ("x-request-id", "req-42") in tuple(await call.initial_metadata() or ())

    async def test_malformed_request_to_the_gateway_gets_field_violations_and_changes_nothing(
        self, stack: Stack
    ) -> None:
        stub = gateway_pb2_grpc.GatewayServiceStub(stack.gateway)
        operator = bearer(stack.keys[Role.OPERATOR])
        before = await stub.ListApiKeys(gateway_pb2.ListApiKeysRequest(include_revoked=True), metadata=operator)
        with pytest.raises(grpc.aio.AioRpcError) as refused:
            await stub.CreateApiKey(
                gateway_pb2.CreateApiKeyRequest(display_name="", role=1, tenant_id="Not A Tenant!"),
                metadata=(*operator, ("x-request-id", "req-bad-1")),
            )
        assert refused.value.code() is grpc.StatusCode.INVALID_ARGUMENT
        assert _reason(refused.value) == "ERROR_REASON_INVALID_ARGUMENT"
        (bad_request,) = details(refused.value, error_details_pb2.BadRequest)
        assert {v.field for v in bad_request.field_violations} == {"display_name", "tenant_id"}
        (request_info,) = details(refused.value, error_details_pb2.RequestInfo)
        assert request_info.request_id == "req-bad-1"
        after = await stub.ListApiKeys(gateway_pb2.ListApiKeysRequest(include_revoked=True), metadata=operator)
        assert len(after.api_keys) == len(before.api_keys)

    async def test_provider_cannot_see_another_tenants_keys(self, stack: Stack) -> None:
        stub = gateway_pb2_grpc.GatewayServiceStub(stack.gateway)
        listed = await stub.ListApiKeys(gateway_pb2.ListApiKeysRequest(), metadata=bearer(stack.keys[Role.PROVIDER]))
        assert {k.tenant_id for k in listed.api_keys} == {"tenant-a"}

    async def test_revoked_key_is_refused_on_the_next_call(self, stack: Stack) -> None:
        stub = gateway_pb2_grpc.GatewayServiceStub(stack.gateway)
        operator = bearer(stack.keys[Role.OPERATOR])
        created = await stub.CreateApiKey(
            gateway_pb2.CreateApiKeyRequest(display_name="short-lived", role=1, tenant_id="tenant-b"), metadata=operator
        )
        await stub.ListApiKeys(gateway_pb2.ListApiKeysRequest(), metadata=bearer(created.secret))
        await stub.RevokeApiKey(
            gateway_pb2.RevokeApiKeyRequest(key_id=created.api_key.key_id, reason="test"), metadata=operator
        )
        with pytest.raises(grpc.aio.AioRpcError) as refused:
            await stub.ListApiKeys(gateway_pb2.ListApiKeysRequest(), metadata=bearer(created.secret))
        assert refused.value.code() is grpc.StatusCode.UNAUTHENTICATED


class TestServicesTrustOnlyTheGateway:
    async def test_direct_call_without_a_principal_token_is_refused(self, stack: Stack) -> None:
        stub = identity_pb2_grpc.IdentityServiceStub(stack.identity)
        with pytest.raises(grpc.aio.AioRpcError) as refused:
            await stub.CheckEligibility(identity_pb2.CheckEligibilityRequest())
        assert refused.value.code() is grpc.StatusCode.UNAUTHENTICATED
        assert _reason(refused.value) == "ERROR_REASON_INVALID_PRINCIPAL_TOKEN"

    async def test_forged_principal_token_is_refused(self, stack: Stack) -> None:
        from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

        forger = TokenSigner(SigningKey("gateway", Ed25519PrivateKey.generate()))
        forged = token_metadata(forger, operator("me", request_id="x"), audience="identity", method=CHECK_ELIGIBILITY)
        stub = identity_pb2_grpc.IdentityServiceStub(stack.identity)
        with pytest.raises(grpc.aio.AioRpcError) as refused:
            await stub.CheckEligibility(identity_pb2.CheckEligibilityRequest(), metadata=forged)
        assert refused.value.code() is grpc.StatusCode.UNAUTHENTICATED
        assert _reason(refused.value) == "ERROR_REASON_INVALID_PRINCIPAL_TOKEN"

    async def test_replayed_principal_token_is_refused(self, stack: Stack) -> None:
        metadata = token_metadata(
            signer(stack.keys_dir),
            provider("tenant-a", subject="k", request_id="r"),
            audience="identity",
            method=CHECK_ELIGIBILITY,
        )
        stub = identity_pb2_grpc.IdentityServiceStub(stack.identity)
        with pytest.raises(grpc.aio.AioRpcError) as first:
            await stub.CheckEligibility(identity_pb2.CheckEligibilityRequest(), metadata=metadata)
        # Accepted once: past the principal check identity validates the (empty) request.
        assert first.value.code() is grpc.StatusCode.INVALID_ARGUMENT
        with pytest.raises(grpc.aio.AioRpcError) as replay:
            await stub.CheckEligibility(identity_pb2.CheckEligibilityRequest(), metadata=metadata)
        assert replay.value.code() is grpc.StatusCode.UNAUTHENTICATED
        assert "already used" in (replay.value.details() or "")


class TestHealthThroughTheGateway:
    @pytest.mark.parametrize(
        ("service", "expected"),
        [
            ("", health_pb2.HealthCheckResponse.SERVING),
            ("avgate.identity.v1.IdentityService", health_pb2.HealthCheckResponse.SERVING),
            ("identity", health_pb2.HealthCheckResponse.SERVING),
            ("avgate.screening.v1.ScreeningService", health_pb2.HealthCheckResponse.NOT_SERVING),
            ("screening", health_pb2.HealthCheckResponse.NOT_SERVING),
        ],
        ids=["gateway", "identity-full-name", "identity-short", "screening-stopped-full", "screening-stopped-short"],
    )
    async def test_status_comes_from_the_upstream(self, stack: Stack, service: str, expected: int) -> None:
        reply = await health_pb2_grpc.HealthStub(stack.gateway).Check(health_pb2.HealthCheckRequest(service=service))
        assert reply.status == expected

    async def test_unknown_service_is_not_found(self, stack: Stack) -> None:
        with pytest.raises(grpc.aio.AioRpcError) as refused:
            await health_pb2_grpc.HealthStub(stack.gateway).Check(health_pb2.HealthCheckRequest(service="nope"))
        assert refused.value.code() is grpc.StatusCode.NOT_FOUND

    async def test_aggregate_health_names_the_stopped_service(self, stack: Stack) -> None:
        stub = gateway_pb2_grpc.GatewayServiceStub(stack.gateway)
        reply = await stub.GetAggregateHealth(
            gateway_pb2.GetAggregateHealthRequest(), metadata=bearer(stack.keys[Role.OPERATOR])
        )
        by_name = {s.name: s.status for s in reply.services}
        assert by_name["identity"] == gateway_pb2.SERVING_STATUS_SERVING
        assert by_name["screening"] == gateway_pb2.SERVING_STATUS_NOT_SERVING
        assert reply.status == gateway_pb2.SERVING_STATUS_NOT_SERVING


class TestTracing:
    async def test_trace_context_crosses_the_gateway_hop(self, stack: Stack) -> None:
        SPANS.clear()
        stub = identity_pb2_grpc.IdentityServiceStub(stack.gateway)
        with pytest.raises(grpc.aio.AioRpcError):
            await stub.CheckEligibility(
                identity_pb2.CheckEligibilityRequest(), metadata=bearer(stack.keys[Role.PROVIDER])
            )
        spans = [s for s in SPANS.get_finished_spans() if s.name == CHECK_ELIGIBILITY.lstrip("/")]
        assert len(spans) == 2, "one server span in the gateway, one in identity"
        upstream, edge = sorted(spans, key=lambda s: s.parent is None)
        assert edge.parent is None
        assert upstream.parent is not None and upstream.parent.span_id == edge.context.span_id
        assert upstream.context.trace_id == edge.context.trace_id
