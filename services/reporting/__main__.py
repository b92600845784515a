"""Composition root of the reporting process: settings → engine and ledger
reader → incident, delivery, evidence, refuted-rumour, assessment and feed
stores, use cases and servicers (services.reporting.wiring) → server; background
jobs: the ledger's sequencer, the outbox dispatcher to the authorities
(recording each delivery's attempts and its incident's status) and the
export builder."""

from __future__ import annotations

import asyncio
import sys
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime

from prometheus_client import CollectorRegistry
from psycopg_pool import AsyncConnectionPool

from avgate.kernel.db import create_engine_for, libpq_url
from avgate.kernel.grpc.server import GrpcProcess
from avgate.kernel.process import run, service_process
from services.reporting import wiring
from services.reporting.config import ReportingSettings


def _now() -> datetime:
    return datetime.now(UTC)


async def compose(settings: ReportingSettings, *, clock: Callable[[], datetime] = _now) -> GrpcProcess:
    url = settings.effective_database_url
    if not url:
        sys.exit("reporting: set REPORTING_DATABASE_URL or DATABASE_URL (`avgate run` sets them for the local stack)")
    registry = CollectorRegistry()
    try:
        routing = wiring.routing_rules(settings)
        adapters = wiring.authority_adapters(settings)
        keys = wiring.evidence_keys(settings)
        sequencer = wiring.sequencer(settings, registry) if settings.sequencer_enabled else None
        dispatcher = wiring.authority_dispatcher(settings, url, registry) if settings.dispatcher_enabled else None
    except (ValueError, OSError) as exc:
        sys.exit(f"reporting: {exc}")
    engine = create_engine_for(url)
    pool: AsyncConnectionPool = AsyncConnectionPool(libpq_url(url), min_size=1, max_size=10, open=False)
    await pool.open()
    parts = wiring.reporting(settings, engine, pool, routing=routing, adapters=adapters, keys=keys, clock=clock)
    background: list[Callable[[asyncio.Event], Awaitable[None]]] = [
        job.run for job in (sequencer, dispatcher) if job is not None
    ]
    if settings.export_builder_enabled:
        background.append(wiring.export_builder(settings, parts, clock=clock))

    async def close() -> None:
        await pool.close()
        await engine.dispose()

    return service_process(
        settings,
        wiring.registrations(parts),
        background=background,
        on_shutdown=[close],
        registry=registry,
    )


if __name__ == "__main__":
    run(ReportingSettings, compose)
