"""gRPC servicer of avgate.gateway.v1.GatewayService: proto ⇄ domain only."""

from __future__ import annotations

import asyncio

import grpc
from grpc_health.v1 import health_pb2

from avgate.gateway.v1 import gateway_pb2, gateway_pb2_grpc
from avgate.kernel import convert
from avgate.kernel.grpc.server import ServiceRegistration
from avgate.kernel.principal import current_principal
from gateway.domain import ApiKey
from gateway.service import ApiKeyService
from gateway.upstreams import Upstream

_SERVING_STATUS = {
    health_pb2.HealthCheckResponse.SERVING: gateway_pb2.SERVING_STATUS_SERVING,
}


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
        client_certificate_sha256=key.client_certificate_sha256 or "",
    )


class GatewayServicer(gateway_pb2_grpc.GatewayServiceServicer):
    def __init__(self, keys: ApiKeyService, upstreams: list[Upstream]):
        self._keys = keys
        self._upstreams = upstreams

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

    async def GetAggregateHealth(
        self, request: gateway_pb2.GetAggregateHealthRequest, context: grpc.aio.ServicerContext
    ) -> gateway_pb2.GetAggregateHealthResponse:
        checks = await asyncio.gather(*(u.check() for u in self._upstreams))
        services = [
            gateway_pb2.ServiceHealth(
                name=u.name,
                grpc_services=u.service_names,
                target=u.target,
                status=_SERVING_STATUS.get(status, gateway_pb2.SERVING_STATUS_NOT_SERVING),  # type: ignore[arg-type]
                detail=detail,
            )
            for u, (status, detail) in zip(self._upstreams, checks, strict=True)
        ]
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
