"""Composition root of the reporting process: settings → servicers → server."""

from __future__ import annotations

from avgate.kernel.grpc.server import GrpcProcess
from avgate.kernel.process import run, service_process
from services.reporting.config import ReportingSettings
from services.reporting.server import registrations


async def compose(settings: ReportingSettings) -> GrpcProcess:
    return service_process(settings, registrations())


if __name__ == "__main__":
    run(ReportingSettings, compose)
