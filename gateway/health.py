"""grpc.health.v1 for the gateway: its own status, and each upstream's
status asked live from that upstream, so a stopped service shows NOT_SERVING.

A check names a full service ("avgate.identity.v1.IdentityService") or a
short upstream name ("identity"); "" is the gateway itself.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

from gateway.upstreams import Upstream

SERVING = health_pb2.HealthCheckResponse.SERVING
NOT_SERVING = health_pb2.HealthCheckResponse.NOT_SERVING
WATCH_INTERVAL_SECONDS = 1.0


class GatewayHealthServicer(health_pb2_grpc.HealthServicer):
    def __init__(self, upstreams: list[Upstream], own_services: list[str]):
        self._upstreams = upstreams
        self._by_name: dict[str, Upstream] = {}
        for up in upstreams:
            self._by_name[up.name] = up
            for service in up.service_names:
                self._by_name[service] = up
        self._own = {"", "gateway", *own_services}
        self._draining = False

    async def enter_graceful_shutdown(self) -> None:
        self._draining = True

    async def status_of(self, service: str) -> int | None:
        if service in self._own:
            return NOT_SERVING if self._draining else SERVING
        upstream = self._by_name.get(service)
        if upstream is None:
            return None
        status, _detail = await upstream.check(service if service != upstream.name else "")
        return status

    async def Check(
        self, request: health_pb2.HealthCheckRequest, context: grpc.aio.ServicerContext
    ) -> health_pb2.HealthCheckResponse:
        status = await self.status_of(request.service)
        if status is None:
            await context.abort(grpc.StatusCode.NOT_FOUND, f"unknown service {request.service!r}")
        return health_pb2.HealthCheckResponse(status=status)

    async def Watch(
        self, request: health_pb2.HealthCheckRequest, context: grpc.aio.ServicerContext
    ) -> AsyncIterator[health_pb2.HealthCheckResponse]:
        last: int | None = -1
        while True:
            status = await self.status_of(request.service)
            current = health_pb2.HealthCheckResponse.SERVICE_UNKNOWN if status is None else status
            if current != last:
                last = current
                yield health_pb2.HealthCheckResponse(status=current)
            await asyncio.sleep(WATCH_INTERVAL_SECONDS)
