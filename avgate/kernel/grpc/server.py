"""The gRPC server bootstrap every process uses.

grpc.aio server with message-size limits and back-pressure, the shared
interceptors (observability → error mapping → principal → request rules), grpc.health.v1,
reflection, a Prometheus endpoint, TLS listeners (credentials from
`avgate.kernel.tls`; plaintext when none are given), a plaintext listener
serving grpc.health.v1 alone for probes (a server of its own, with its own
call limit, so probes and API calls never take each other's slots; a health
servicer that caps its watches must leave API calls half the main server's
limit), and a graceful drain on SIGTERM/SIGINT:
health turns NOT_SERVING first and, for AVGATE_DRAIN_DELAY_SECONDS, the
server keeps answering so load balancers see it; then new calls are refused
and in-flight calls get the grace period to finish.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import signal
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import grpc
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection
from prometheus_client import CollectorRegistry

from avgate.kernel.grpc.errors import ErrorMappingInterceptor
from avgate.kernel.grpc.observability import ObservabilityInterceptor
from avgate.kernel.grpc.validation import RequestValidationInterceptor
from avgate.kernel.metrics import GrpcMetrics, MetricsEndpoint

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class ServiceRegistration:
    """One servicer, how to add it, and the full names of the services it serves."""

    servicer: Any
    add_to_server: Callable[[Any, grpc.aio.Server], None]
    service_names: Sequence[str]


@dataclass(frozen=True)
class Listener:
    """A further port of the same server (the gateway's mTLS listener), with its own credentials."""

    name: str
    port: int
    credentials: grpc.ServerCredentials


@dataclass
class ServerOptions:
    host: str = "127.0.0.1"
    port: int = 0
    metrics_host: str = "127.0.0.1"
    metrics_port: int = -1
    max_message_bytes: int = 16 * 1024 * 1024
    max_concurrent_rpcs: int | None = 2000
    shutdown_grace_seconds: float = 15.0
    drain_delay_seconds: float = 0.0
    extra_reflection_names: Sequence[str] = ()
    # The main port's credentials; None: plaintext.
    credentials: grpc.ServerCredentials | None = None
    listeners: Sequence[Listener] = ()
    # grpc.health.v1 alone, plaintext, on a server of its own (probes send no client certificate); negative: none.
    health_port: int = -1
    # The health port's own call limit: grpcio counts calls per server, so probes there never take an API call's slot.
    health_max_concurrent_rpcs: int | None = 1000


@dataclass
class GrpcProcess:
    """A running gRPC server with its health, reflection and metrics."""

    name: str
    registrations: Sequence[ServiceRegistration]
    options: ServerOptions
    auth_interceptor: grpc.aio.ServerInterceptor | None
    # Checks the peer's certificate before the principal (services over mTLS: avgate.kernel.tls).
    peer_interceptor: grpc.aio.ServerInterceptor | None = None
    health_servicer: Any = None
    generic_handlers: Sequence[grpc.GenericRpcHandler] = ()
    # Long-running work beside the server (a sequencer, a dispatcher): each gets
    # the stop event, is started after the server and awaited on shutdown.
    background: Sequence[Callable[[asyncio.Event], Awaitable[None]]] = ()
    on_shutdown: list[Callable[[], Awaitable[None]]] = field(default_factory=list)
    # How the drain delay is waited out; injected so a test holds the drain open instead of racing a timer.
    drain_wait: Callable[[float], Awaitable[None]] = asyncio.sleep
    registry: CollectorRegistry = field(default_factory=CollectorRegistry)
    port: int = 0
    metrics_port: int = 0
    health_port: int = -1
    # The bound port of each further listener, by name.
    listener_ports: dict[str, int] = field(default_factory=dict)
    _server: grpc.aio.Server | None = None
    _health_server: grpc.aio.Server | None = None
    _metrics: MetricsEndpoint | None = None
    _stop_background: asyncio.Event = field(default_factory=asyncio.Event)
    _tasks: list[asyncio.Task[None]] = field(default_factory=list)

    def _check_watch_cap(self) -> None:
        """A health servicer that caps its watches (`max_watches`, the gateway's) must leave API calls
        at least half of the server's call limit: grpcio counts a held Watch like any call."""
        max_watches = getattr(self.health_servicer, "max_watches", None)
        limit = self.options.max_concurrent_rpcs
        if max_watches is not None and limit is not None and 2 * max_watches > limit:
            raise ValueError(
                f"{self.name}: {max_watches} health watches would take over half of the {limit} concurrent calls"
            )

    async def start(self) -> int:
        self._check_watch_cap()
        interceptors: list[grpc.aio.ServerInterceptor] = [
            ObservabilityInterceptor(GrpcMetrics(self.registry)),
            ErrorMappingInterceptor(),
        ]
        if self.peer_interceptor is not None:
            interceptors.append(self.peer_interceptor)
        if self.auth_interceptor is not None:
            interceptors.append(self.auth_interceptor)
        # Innermost: only an authenticated call learns the request rules.
        interceptors.append(RequestValidationInterceptor())
        server = grpc.aio.server(
            interceptors=interceptors,
            options=[
                ("grpc.max_receive_message_length", self.options.max_message_bytes),
                ("grpc.max_send_message_length", self.options.max_message_bytes),
                # Accept client keepalive pings every 20 s without GOAWAY.
                ("grpc.http2.min_ping_interval_without_data_ms", 20_000),
                ("grpc.keepalive_permit_without_calls", 1),
            ],
            maximum_concurrent_rpcs=self.options.max_concurrent_rpcs,
        )
        if self.generic_handlers:
            server.add_generic_rpc_handlers(tuple(self.generic_handlers))
        names: list[str] = []
        for reg in self.registrations:
            reg.add_to_server(reg.servicer, server)
            names.extend(reg.service_names)
        if self.health_servicer is None:
            self.health_servicer = health.aio.HealthServicer()
        health_pb2_grpc.add_HealthServicer_to_server(self.health_servicer, server)
        reflection.enable_server_reflection(
            [*names, *self.options.extra_reflection_names, health.SERVICE_NAME, reflection.SERVICE_NAME], server
        )
        self.port = self._bind(server, self.options.port, self.options.credentials)
        for listener in self.options.listeners:
            self.listener_ports[listener.name] = self._bind(server, listener.port, listener.credentials)
        await server.start()
        self._server = server
        if self.options.health_port >= 0:
            self._health_server = grpc.aio.server(maximum_concurrent_rpcs=self.options.health_max_concurrent_rpcs)
            health_pb2_grpc.add_HealthServicer_to_server(self.health_servicer, self._health_server)
            self.health_port = self._bind(self._health_server, self.options.health_port, None)
            await self._health_server.start()
        if isinstance(self.health_servicer, health.aio.HealthServicer):
            for service_name in ["", *names]:
                await self.health_servicer.set(service_name, health_pb2.HealthCheckResponse.SERVING)
        self._metrics = MetricsEndpoint(self.registry, self.options.metrics_host, self.options.metrics_port)
        self.metrics_port = self._metrics.port
        self._tasks = [asyncio.create_task(_supervised(job, self._stop_background)) for job in self.background]
        log.info(
            "serving",
            extra={
                "grpc_port": self.port,
                "tls": self.options.credentials is not None,
                "health_port": self.health_port,
                **{f"{name}_port": port for name, port in self.listener_ports.items()},
                "metrics_port": self.metrics_port,
                "services": names,
            },
        )
        return self.port

    def _bind(self, server: grpc.aio.Server, port: int, credentials: grpc.ServerCredentials | None) -> int:
        address = f"{self.options.host}:{port}"
        bound = (
            server.add_insecure_port(address) if credentials is None else server.add_secure_port(address, credentials)
        )
        if bound == 0:
            raise RuntimeError(f"{self.name}: could not bind {address}")
        return bound

    async def stop(self) -> None:
        if self._server is None:
            return
        server, self._server = self._server, None
        if hasattr(self.health_servicer, "enter_graceful_shutdown"):
            await self.health_servicer.enter_graceful_shutdown()
        if self.options.drain_delay_seconds > 0:
            # Keep answering (NOT_SERVING on health) so balancers see it before the listener closes.
            await self.drain_wait(self.options.drain_delay_seconds)
        await server.stop(self.options.shutdown_grace_seconds)
        if self._health_server is not None:
            await self._health_server.stop(0)
            self._health_server = None
        self._stop_background.set()
        if self._tasks:
            await asyncio.wait(self._tasks, timeout=self.options.shutdown_grace_seconds)
        for hook in self.on_shutdown:
            await hook()
        if self._metrics is not None:
            self._metrics.close()
        log.info("stopped")

    async def run_until_signalled(self) -> None:
        """Starts, then serves until SIGTERM or SIGINT, then drains."""
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, stop.set)
        await self.start()
        await stop.wait()
        log.info("draining")
        await self.stop()


async def _supervised(job: Callable[[asyncio.Event], Awaitable[None]], stop: asyncio.Event) -> None:
    """Runs a background job; if it fails, logs and restarts it after a pause."""
    while not stop.is_set():
        try:
            await job(stop)
            return
        except Exception:
            log.exception("background job failed; restarting in 1 s")
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), timeout=1.0)
