"""A gRPC server for the length of a test: started on a free port, reached
through one channel, closed and stopped (drained) afterwards."""

from __future__ import annotations

from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass

import grpc

from avgate.kernel.grpc.access import AccessTable
from avgate.kernel.grpc.auth import PrincipalInterceptor
from avgate.kernel.grpc.server import GrpcProcess, ServerOptions, ServiceRegistration
from avgate.kernel.principal import TokenVerifier


@dataclass(frozen=True)
class Served:
    """A started process and a channel to it."""

    process: GrpcProcess
    channel: grpc.aio.Channel

    @property
    def port(self) -> int:
        return self.process.port

    @property
    def target(self) -> str:
        return f"127.0.0.1:{self.process.port}"


@asynccontextmanager
async def serve(
    server: GrpcProcess | Sequence[ServiceRegistration],
    *,
    verifier: TokenVerifier | None = None,
    options: ServerOptions | None = None,
    name: str = "test",
) -> AsyncIterator[Served]:
    """Starts `server`, yields it with an open channel, then closes the channel and stops it.

    `server` is either a process a composition root built (`await compose(settings)`,
    listening where its settings say, port 0 for a free one), or the registrations of
    servicers to serve on a free port with the shared interceptors, verifying principal
    tokens with `verifier` (none: every call is let through unauthenticated).
    """
    if isinstance(server, GrpcProcess):
        if verifier is not None or options is not None:
            raise TypeError("a composed process brings its own verifier and options")
        process = server
    else:
        process = GrpcProcess(
            name=name,
            registrations=server,
            options=options or ServerOptions(port=0, metrics_port=-1),
            auth_interceptor=PrincipalInterceptor(verifier, AccessTable.from_contracts())
            if verifier is not None
            else None,
        )
    await process.start()
    try:
        channel = grpc.aio.insecure_channel(f"127.0.0.1:{process.port}")
        try:
            yield Served(process, channel)
        finally:
            await channel.close()
    finally:
        await process.stop()
