"""gRPC servicer of avgate.gateway.v1.GatewayService: proto ⇄ domain only."""

from __future__ import annotations

import asyncio

import grpc
from grpc_health.v1 import health_pb2

from avgate.gateway.v1 import gateway_pb2, gateway_pb2_grpc
from avgate.kernel import convert
from avgate.kernel.grpc.server import ServiceRegistration
from avgate.kernel.principal import current_principal
from avgate.kernel.resilience import BreakerState
from gateway.domain import ApiKey, RateLimit, TenantRateLimit
from gateway.guards import Guards
from gateway.service import ApiKeyService
from gateway.upstreams import Upstream

_SERVING_STATUS = {
    health_pb2.HealthCheckResponse.SERVING: gateway_pb2.SERVING_STATUS_SERVING,
}


def rate_limit_from_proto(message: gateway_pb2.RateLimit, present: bool) -> RateLimit | None:
    return RateLimit(message.requests_per_second, message.burst) if present else None


def rate_limit_to_proto(limit: RateLimit | None) -> gateway_pb2.RateLimit | None:
    if limit is None:
        return None
    return gateway_pb2.RateLimit(requests_per_second=limit.requests_per_second, burst=limit.burst)


def tenant_rate_limit_to_proto(record: TenantRateLimit) -> gateway_pb2.TenantRateLimit:
    return gateway_pb2.TenantRateLimit(
        tenant_id=record.tenant_id,
        rate_limit=rate_limit_to_proto(record.rate_limit),
        update_time=convert.timestamp(record.update_time),
        updated_by=record.updated_by,
    )


def api_key_to_proto(key: ApiKey) -> gateway_pb2.ApiKey:
    return gateway_pb2.ApiKey(
        key_id=key.key_id,
        display_name=key.display_name,
        role=convert.role_to_proto(key.role),  # type: ignore[arg-type]
        tenant_id=key.tenant_id or "",
        regulator_scope=convert.scope_to_proto(key.regulator_scope),
        create_time=convert.timestamp(key.create_time),
        expire_time=convert.timestamp(key.expire_time),
        revoke_time=convert.timestamp(key.revoke_time),
        created_by=key.created_by,
        last_used_time=convert.timestamp(key.last_used_time),
        rate_limit=rate_limit_to_proto(key.rate_limit),
        client_certificate_sha256=key.client_certificate_sha256 or "",
    )


BREAKER = convert.ProtoEnum(gateway_pb2.BreakerState, "BREAKER_STATE_", BreakerState)


class GatewayServicer(gateway_pb2_grpc.GatewayServiceServicer):
    def __init__(self, keys: ApiKeyService, upstreams: list[Upstream], guards: Guards):
        self._keys = keys
        self._upstreams = upstreams
        self._guards = guards

    async def CreateApiKey(
        self, request: gateway_pb2.CreateApiKeyRequest, context: grpc.aio.ServicerContext
    ) -> gateway_pb2.CreateApiKeyResponse:
        created = await self._keys.create(
            current_principal(),
            display_name=request.display_name,
            role=convert.role_from_proto(request.role),
            tenant_id=request.tenant_id,
            regulator_scope=convert.scope_from_proto(request.regulator_scope, request.HasField("regulator_scope")),
            ttl=convert.duration_from_proto(request.ttl, request.HasField("ttl"), "ttl"),
            rate_limit=rate_limit_from_proto(request.rate_limit, request.HasField("rate_limit")),
            client_certificate_sha256=request.client_certificate_sha256,
        )
        return gateway_pb2.CreateApiKeyResponse(api_key=api_key_to_proto(created.key), secret=created.secret)

    async def ListApiKeys(
        self, request: gateway_pb2.ListApiKeysRequest, context: grpc.aio.ServicerContext
    ) -> gateway_pb2.ListApiKeysResponse:
        keys, next_token = await self._keys.list(
            current_principal(),
            tenant_id=request.tenant_id,
            include_revoked=request.include_revoked,
            page_size=request.page.page_size,
            page_token=request.page.page_token,
        )
        return gateway_pb2.ListApiKeysResponse(
            api_keys=[api_key_to_proto(k) for k in keys], page={"next_page_token": next_token}
        )

    async def RevokeApiKey(
        self, request: gateway_pb2.RevokeApiKeyRequest, context: grpc.aio.ServicerContext
    ) -> gateway_pb2.RevokeApiKeyResponse:
        key = await self._keys.revoke(current_principal(), key_id=request.key_id, reason=request.reason)
        return gateway_pb2.RevokeApiKeyResponse(api_key=api_key_to_proto(key))

    async def RotateApiKey(
        self, request: gateway_pb2.RotateApiKeyRequest, context: grpc.aio.ServicerContext
    ) -> gateway_pb2.RotateApiKeyResponse:
        rotated = await self._keys.rotate(
            current_principal(),
            key_id=request.key_id,
            grace=convert.duration_from_proto(request.grace_period, request.HasField("grace_period"), "grace_period"),
        )
        return gateway_pb2.RotateApiKeyResponse(
            api_key=api_key_to_proto(rotated.key),
            secret=rotated.secret,
            previous_secret_expire_time=convert.timestamp(rotated.previous_secret_expire_time),
        )

    async def SetApiKeyRateLimit(
        self, request: gateway_pb2.SetApiKeyRateLimitRequest, context: grpc.aio.ServicerContext
    ) -> gateway_pb2.SetApiKeyRateLimitResponse:
        key = await self._keys.set_key_rate_limit(
            current_principal(),
            key_id=request.key_id,
            rate_limit=rate_limit_from_proto(request.rate_limit, request.HasField("rate_limit")),
        )
        return gateway_pb2.SetApiKeyRateLimitResponse(api_key=api_key_to_proto(key))

    async def SetTenantRateLimit(
        self, request: gateway_pb2.SetTenantRateLimitRequest, context: grpc.aio.ServicerContext
    ) -> gateway_pb2.SetTenantRateLimitResponse:
        record = await self._keys.set_tenant_rate_limit(
            current_principal(),
            tenant_id=request.tenant_id,
            rate_limit=rate_limit_from_proto(request.rate_limit, request.HasField("rate_limit")),
        )
        return gateway_pb2.SetTenantRateLimitResponse(tenant_rate_limit=tenant_rate_limit_to_proto(record))

    async def GetTenantRateLimit(
        self, request: gateway_pb2.GetTenantRateLimitRequest, context: grpc.aio.ServicerContext
    ) -> gateway_pb2.GetTenantRateLimitResponse:
        record = await self._keys.get_tenant_rate_limit(current_principal(), tenant_id=request.tenant_id)
        return gateway_pb2.GetTenantRateLimitResponse(tenant_rate_limit=tenant_rate_limit_to_proto(record))

    async def GetAggregateHealth(
        self, request: gateway_pb2.GetAggregateHealthRequest, context: grpc.aio.ServicerContext
    ) -> gateway_pb2.GetAggregateHealthResponse:
        checks = await asyncio.gather(*(u.check() for u in self._upstreams))
        services = []
        for u, (status, detail) in zip(self._upstreams, checks, strict=True):
            guard = self._guards.upstreams[u.name]
            breaker = guard.snapshot()
            services.append(
                gateway_pb2.ServiceHealth(
                    name=u.name,
                    grpc_services=u.service_names,
                    target=u.target,
                    status=_SERVING_STATUS.get(status, gateway_pb2.SERVING_STATUS_NOT_SERVING),  # type: ignore[arg-type]
                    detail=detail,
                    breaker_state=BREAKER.to_proto(breaker.state),
                    consecutive_failures=breaker.consecutive_failures,
                    breaker_trips=breaker.trips,
                    in_flight=guard.in_flight.in_flight,
                    max_in_flight=guard.in_flight.limit,
                )
            )
        overall = (
            gateway_pb2.SERVING_STATUS_SERVING
            if all(s.status == gateway_pb2.SERVING_STATUS_SERVING for s in services)
            else gateway_pb2.SERVING_STATUS_NOT_SERVING
        )
        return gateway_pb2.GetAggregateHealthResponse(status=overall, services=services)


def registration(servicer: GatewayServicer) -> ServiceRegistration:
    return ServiceRegistration(
        servicer,
        gateway_pb2_grpc.add_GatewayServiceServicer_to_server,
        [gateway_pb2.DESCRIPTOR.services_by_name["GatewayService"].full_name],
    )
