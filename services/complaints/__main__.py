"""Composition root of the complaints process: settings → the dispatcher of its
outbox (incidents handed to reporting) → servicers → server."""

from __future__ import annotations

import sys

from prometheus_client import CollectorRegistry

from avgate.kernel.grpc.server import GrpcProcess
from avgate.kernel.process import run, service_process
from avgate.kernel.reporting_handoff import incident_handoff
from services.complaints.config import ComplaintsSettings
from services.complaints.models import SCHEMA
from services.complaints.server import registrations


async def compose(settings: ComplaintsSettings) -> GrpcProcess:
    registry = CollectorRegistry()
    try:
        handoff = incident_handoff(settings, SCHEMA, registry)
    except (ValueError, OSError) as exc:
        sys.exit(f"complaints: {exc}")
    return service_process(
        settings,
        registrations(),
        background=[handoff.run] if handoff is not None else [],
        registry=registry,
    )


if __name__ == "__main__":
    run(ComplaintsSettings, compose)
