"""Rate limits at a real gateway on a real socket, with a real PostgreSQL: the
default per-key limit, and the limits operators set on a key and on a tenant
through the contract."""

from __future__ import annotations

import pathlib
from collections.abc import AsyncIterator
from dataclasses import dataclass

import grpc
import pytest
from google.rpc import error_details_pb2

from avgate.gateway.v1 import gateway_pb2, gateway_pb2_grpc
from avgate.identity.v1 import identity_pb2, identity_pb2_grpc
from avgate.kernel.db import create_engine_for
from avgate.kernel.grpc.server import GrpcProcess
from avgate.kernel.principal import Role
from gateway.__main__ import compose as compose_gateway
from gateway.config import GatewaySettings
from gateway.domain import RateLimit
from gateway.service import ApiKeyService
from gateway.store import SqlApiKeyStore
from tests.conftest import Database, free_port
from tests.support import details, new_tenant, operator, serve

KEY_BURST = 4
ADDRESS_BURST = 3
OPEN_TO_ANYONE = "/avgate.reporting.v1.AuditLedgerService/ListSigningKeys"


@dataclass
class Gateway:
    channel: grpc.aio.Channel
    service: ApiKeyService
    operator_key: str

    async def provider_key(self, tenant: str) -> tuple[str, str]:
        created = await self.service.create(
            operator("test"), display_name="k", role=Role.PROVIDER, tenant_id=tenant, regulator_scope=None, ttl=None
        )
        return created.key.key_id, created.secret


@pytest.fixture(scope="module")
async def gateway(database: Database, keys_dir: pathlib.Path) -> AsyncIterator[Gateway]:
    nowhere = f"127.0.0.1:{free_port()}"  # no upstream listens: refused calls must not get that far
    process: GrpcProcess = await compose_gateway(
        GatewaySettings(
            trusted_keys_dir=keys_dir,
            generate_keys=False,
            metrics_port=-1,
            grpc_port=0,
            database_url=database.url_for("gateway"),
            identity_target=nowhere,
            screening_target=nowhere,
            reporting_target=nowhere,
            complaints_target=nowhere,
            key_requests_per_second=0.01,  # one token per 100 s: nothing refills during the test
            key_burst=KEY_BURST,
            tenant_requests_per_second=0.01,
            tenant_burst=100,
            address_requests_per_second=0.01,
            address_burst=ADDRESS_BURST,
        )
    )
    async with serve(process) as served:
        engine = create_engine_for(database.url_for("gateway"), pool_size=1)
        service = ApiKeyService(SqlApiKeyStore(engine))
        created = await service.create(
            operator("test"),
            display_name="ops",
            role=Role.OPERATOR,
            tenant_id="",
            regulator_scope=None,
            ttl=None,
            rate_limit=RateLimit(1000, 1000),  # the operator's own calls stay clear of the tiny default
        )
        yield Gateway(served.channel, service, created.secret)
        await engine.dispose()


def bearer(secret: str) -> tuple[tuple[str, str], ...]:
    return (("authorization", f"Bearer {secret}"),)


async def list_keys(gateway: Gateway, secret: str, tenant: str) -> grpc.StatusCode:
    stub = gateway_pb2_grpc.GatewayServiceStub(gateway.channel)
    try:
        await stub.ListApiKeys(gateway_pb2.ListApiKeysRequest(tenant_id=tenant), metadata=bearer(secret), timeout=5)
    except grpc.aio.AioRpcError as exc:
        return exc.code()
    return grpc.StatusCode.OK


async def refusal(gateway: Gateway, secret: str, tenant: str) -> grpc.aio.AioRpcError:
    stub = gateway_pb2_grpc.GatewayServiceStub(gateway.channel)
    with pytest.raises(grpc.aio.AioRpcError) as refused:
        await stub.ListApiKeys(gateway_pb2.ListApiKeysRequest(tenant_id=tenant), metadata=bearer(secret), timeout=5)
    return refused.value


def limit_of(error: grpc.aio.AioRpcError) -> tuple[str, str, float]:
    (info,) = details(error, error_details_pb2.ErrorInfo)
    (retry,) = details(error, error_details_pb2.RetryInfo)
    return info.reason, info.metadata["limit"], retry.retry_delay.ToMilliseconds() / 1000


class TestDefaultLimits:
    async def test_a_key_over_its_burst_is_refused_with_retry_info(self, gateway: Gateway) -> None:
        tenant = new_tenant()
        _, secret = await gateway.provider_key(tenant)
        codes = [await list_keys(gateway, secret, tenant) for _ in range(KEY_BURST)]
        assert codes == [grpc.StatusCode.OK] * KEY_BURST

        refused = await refusal(gateway, secret, tenant)

        assert refused.code() is grpc.StatusCode.RESOURCE_EXHAUSTED
        reason, limit, retry_seconds = limit_of(refused)
        assert (reason, limit) == ("ERROR_REASON_RATE_LIMITED", "api_key")
        assert 0 < retry_seconds <= 100  # one token at 0.01/s

    async def test_pass_through_calls_are_limited_before_they_are_forwarded(self, gateway: Gateway) -> None:
        _, secret = await gateway.provider_key(new_tenant())
        stub = identity_pb2_grpc.IdentityServiceStub(gateway.channel)
        codes = []
        for _ in range(KEY_BURST + 1):
            try:
                await stub.CheckEligibility(identity_pb2.CheckEligibilityRequest(), metadata=bearer(secret), timeout=5)
            except grpc.aio.AioRpcError as exc:
                codes.append(exc.code())
        # The upstream is down: admitted calls fail there; the one over the limit never leaves the gateway.
        assert codes == [grpc.StatusCode.UNAVAILABLE] * KEY_BURST + [grpc.StatusCode.RESOURCE_EXHAUSTED]


class TestOperatorSetLimits:
    async def test_a_limit_set_on_a_key_applies_at_once(self, gateway: Gateway) -> None:
        tenant = new_tenant()
        key_id, secret = await gateway.provider_key(tenant)
        stub = gateway_pb2_grpc.GatewayServiceStub(gateway.channel)
        reply = await stub.SetApiKeyRateLimit(
            gateway_pb2.SetApiKeyRateLimitRequest(
                key_id=key_id, rate_limit=gateway_pb2.RateLimit(requests_per_second=0.001, burst=2)
            ),
            metadata=bearer(gateway.operator_key),
        )
        assert reply.api_key.rate_limit.burst == 2

        assert [await list_keys(gateway, secret, tenant) for _ in range(2)] == [grpc.StatusCode.OK] * 2
        refused = await refusal(gateway, secret, tenant)
        assert refused.code() is grpc.StatusCode.RESOURCE_EXHAUSTED
        _, limit, retry_seconds = limit_of(refused)
        assert limit == "api_key"
        assert 900 < retry_seconds <= 1000  # a token per 1,000 s, not the default's per 100 s

    async def test_a_limit_set_on_a_tenant_binds_all_its_keys_together(self, gateway: Gateway) -> None:
        tenant = new_tenant()
        (_, first), (_, second) = await gateway.provider_key(tenant), await gateway.provider_key(tenant)
        stub = gateway_pb2_grpc.GatewayServiceStub(gateway.channel)
        await stub.SetTenantRateLimit(
            gateway_pb2.SetTenantRateLimitRequest(
                tenant_id=tenant, rate_limit=gateway_pb2.RateLimit(requests_per_second=0.01, burst=3)
            ),
            metadata=bearer(gateway.operator_key),
        )
        read = await stub.GetTenantRateLimit(
            gateway_pb2.GetTenantRateLimitRequest(tenant_id=tenant), metadata=bearer(first)
        )
        assert read.tenant_rate_limit.rate_limit.burst == 3  # the provider reads its own (one call of three)

        assert await list_keys(gateway, first, tenant) == grpc.StatusCode.OK
        assert await list_keys(gateway, second, tenant) == grpc.StatusCode.OK
        refused = await refusal(gateway, second, tenant)
        assert refused.code() is grpc.StatusCode.RESOURCE_EXHAUSTED
        assert limit_of(refused)[1] == "tenant"

    async def test_a_provider_cannot_set_limits(self, gateway: Gateway) -> None:
        tenant = new_tenant()
        key_id, secret = await gateway.provider_key(tenant)
        stub = gateway_pb2_grpc.GatewayServiceStub(gateway.channel)
        with pytest.raises(grpc.aio.AioRpcError) as refused:
            await stub.SetApiKeyRateLimit(
                gateway_pb2.SetApiKeyRateLimitRequest(
                    key_id=key_id, rate_limit=gateway_pb2.RateLimit(requests_per_second=1e6, burst=1_000_000)
                ),
                metadata=bearer(secret),
            )
        assert refused.value.code() is grpc.StatusCode.PERMISSION_DENIED

    async def test_a_malformed_limit_names_its_field(self, gateway: Gateway) -> None:
        key_id, _ = await gateway.provider_key(new_tenant())
        stub = gateway_pb2_grpc.GatewayServiceStub(gateway.channel)
        with pytest.raises(grpc.aio.AioRpcError) as refused:
            await stub.SetApiKeyRateLimit(
                gateway_pb2.SetApiKeyRateLimitRequest(
                    key_id=key_id, rate_limit=gateway_pb2.RateLimit(requests_per_second=5, burst=0)
                ),
                metadata=bearer(gateway.operator_key),
            )
        assert refused.value.code() is grpc.StatusCode.INVALID_ARGUMENT
        (bad,) = details(refused.value, error_details_pb2.BadRequest)
        assert [v.field for v in bad.field_violations] == ["rate_limit.burst"]


class TestKeylessCallers:
    async def test_a_keyless_address_over_its_burst_is_refused_before_forwarding(self, gateway: Gateway) -> None:
        """Anyone may ask for the ledger's signing keys without a key, but one address only so often;
        reporting is not running here, so the calls let through end UNAVAILABLE at the upstream."""
        call = gateway.channel.unary_unary(OPEN_TO_ANYONE)
        codes = []
        for _ in range(ADDRESS_BURST + 1):
            try:
                await call(b"", timeout=10)
                codes.append(grpc.StatusCode.OK)
            except grpc.aio.AioRpcError as exc:
                codes.append(exc.code())
                last = exc
        assert codes[:ADDRESS_BURST] == [grpc.StatusCode.UNAVAILABLE] * ADDRESS_BURST
        assert codes[-1] is grpc.StatusCode.RESOURCE_EXHAUSTED
        assert limit_of(last)[1] == "address"
