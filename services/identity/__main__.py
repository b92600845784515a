"""Composition root of the identity process: settings → servicers → server."""

from __future__ import annotations

from avgate.kernel.grpc.server import GrpcProcess
from avgate.kernel.process import run, service_process
from services.identity.config import IdentitySettings
from services.identity.server import registrations


async def compose(settings: IdentitySettings) -> GrpcProcess:
    return service_process(settings, registrations())


if __name__ == "__main__":
    run(IdentitySettings, compose)
