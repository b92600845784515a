"""Composition root of the complaints process: settings → servicers → server."""

from __future__ import annotations

from avgate.kernel.grpc.server import GrpcProcess
from avgate.kernel.process import run, service_process
from services.complaints.config import ComplaintsSettings
from services.complaints.server import registrations


async def compose(settings: ComplaintsSettings) -> GrpcProcess:
    return service_process(settings, registrations())


if __name__ == "__main__":
    run(ComplaintsSettings, compose)
