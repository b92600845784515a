"""Composition root of the screening process: settings → servicers → server."""

from __future__ import annotations

from avgate.kernel.grpc.server import GrpcProcess
from avgate.kernel.process import run, service_process
from services.screening.config import ScreeningSettings
from services.screening.server import registrations


async def compose(settings: ScreeningSettings) -> GrpcProcess:
    return service_process(settings, registrations())


if __name__ == "__main__":
    run(ScreeningSettings, compose)
