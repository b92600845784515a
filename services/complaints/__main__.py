"""Composition root of the complaints process: settings → the dispatcher of its
outbox (incidents handed to reporting) → servicers → server (the parts come from `wiring`)."""

from __future__ import annotations

from prometheus_client import CollectorRegistry

from avgate.kernel.grpc.server import GrpcProcess
from avgate.kernel.process import run, service_process
from services.complaints import wiring
from services.complaints.config import ComplaintsSettings
from services.complaints.server import registrations


async def compose(settings: ComplaintsSettings) -> GrpcProcess:
    registry = CollectorRegistry()
    handoff = wiring.incident_handoff(settings, registry)
    return service_process(
        settings,
        registrations(),
        background=[handoff.run] if handoff is not None else [],
        registry=registry,
    )


if __name__ == "__main__":
    run(ComplaintsSettings, compose)
