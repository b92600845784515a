"""Composition root of the screening process: settings → the dispatcher of its
outbox (incidents handed to reporting) → servicers → server (the parts come from `wiring`)."""

from __future__ import annotations

from prometheus_client import CollectorRegistry

from avgate.kernel.grpc.server import GrpcProcess
from avgate.kernel.process import run, service_process
from services.screening import wiring
from services.screening.config import ScreeningSettings
from services.screening.server import registrations


async def compose(settings: ScreeningSettings) -> GrpcProcess:
    registry = CollectorRegistry()
    handoff = wiring.incident_handoff(settings, registry)
    return service_process(
        settings,
        registrations(),
        background=[handoff.run] if handoff is not None else [],
        registry=registry,
    )


if __name__ == "__main__":
    run(ScreeningSettings, compose)
