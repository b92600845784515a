"""The services behind the gateway: one channel per upstream, its gRPC
services (read from the compiled contracts) and a live health check."""

from __future__ import annotations

import importlib
from dataclasses import dataclass, field

import grpc
from google.protobuf.descriptor import MethodDescriptor, ServiceDescriptor
from grpc_health.v1 import health_pb2, health_pb2_grpc

from avgate.kernel.tls import process_identity, secure_or_plain

HEALTH_TIMEOUT_SECONDS = 1.0

CHANNEL_OPTIONS = [
    # Reconnect quickly after an upstream restarts (the default backoff reaches 120 s).
    ("grpc.initial_reconnect_backoff_ms", 200),
    ("grpc.max_reconnect_backoff_ms", 2000),
    ("grpc.keepalive_time_ms", 30_000),
    ("grpc.keepalive_timeout_ms", 10_000),
]


def service_descriptors(name: str) -> list[ServiceDescriptor]:
    """The gRPC services of `avgate.<name>.v1`, from its generated module."""
    pb2 = importlib.import_module(f"avgate.{name}.v1.{name}_pb2")
    return list(pb2.DESCRIPTOR.services_by_name.values())


@dataclass
class Upstream:
    name: str
    target: str
    max_message_bytes: int
    descriptors: list[ServiceDescriptor] = field(default_factory=list)
    channel: grpc.aio.Channel | None = None
    # The gateway's mTLS credentials inside (avgate.kernel.tls); None: plaintext.
    credentials: grpc.ChannelCredentials | None = None
    # One multicallable per method on this channel, made on first use (not per call).
    _unary: dict[str, grpc.aio.UnaryUnaryMultiCallable] = field(default_factory=dict, repr=False)

    @property
    def service_names(self) -> list[str]:
        return [d.full_name for d in self.descriptors]

    def methods(self) -> list[tuple[ServiceDescriptor, MethodDescriptor]]:
        return [(s, m) for s in self.descriptors for m in s.methods]

    def unary_unary(self, method: str) -> grpc.aio.UnaryUnaryMultiCallable:
        """The channel's raw-bytes multicallable for a unary method."""
        assert self.channel is not None, "upstream channels are created at start-up"
        callable_ = self._unary.get(method)
        if callable_ is None:
            callable_ = self._unary[method] = self.channel.unary_unary(method)
        return callable_

    def connect(self) -> None:
        """Creates the channel; call inside the running event loop. Over mTLS the upstream's certificate
        must name avgate-<name>, whatever address the target is."""
        self._unary.clear()
        self.channel = secure_or_plain(
            self.target,
            self.credentials,
            server_name=process_identity(self.name),
            options=[
                *CHANNEL_OPTIONS,
                ("grpc.max_receive_message_length", self.max_message_bytes),
                ("grpc.max_send_message_length", self.max_message_bytes),
            ],
        )

    async def close(self) -> None:
        if self.channel is not None:
            await self.channel.close()

    async def check(self, service: str = "") -> tuple[int, str]:
        """(grpc.health.v1 status, detail) of this upstream, asked now."""
        assert self.channel is not None
        stub = health_pb2_grpc.HealthStub(self.channel)
        try:
            response = await stub.Check(health_pb2.HealthCheckRequest(service=service), timeout=HEALTH_TIMEOUT_SECONDS)
        except grpc.aio.AioRpcError as exc:
            return health_pb2.HealthCheckResponse.NOT_SERVING, f"{exc.code().name}: {exc.details()}"
        return response.status, ""


def build_upstreams(
    targets: dict[str, str], max_message_bytes: int, credentials: grpc.ChannelCredentials | None = None
) -> list[Upstream]:
    return [
        Upstream(name, target, max_message_bytes, service_descriptors(name), credentials=credentials)
        for name, target in targets.items()
    ]
