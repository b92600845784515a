"""Composition root of the reporting process: settings → engine and ledger
reader → sequencer → outbox dispatcher to the authorities (recording each
delivery's attempts and its incident's status) → incident and delivery
stores and services → servicers → server."""

from __future__ import annotations

import logging
import os
import sys

from prometheus_client import CollectorRegistry
from psycopg_pool import AsyncConnectionPool

from avgate.kernel.db import LEDGER_SEQUENCER_ROLE, create_engine_for, libpq_url, role_url
from avgate.kernel.deliveries import FileDropDelivery, HttpJsonDelivery
from avgate.kernel.grpc.server import GrpcProcess
from avgate.kernel.keys import SigningKey, load_private_key
from avgate.kernel.outbox import Delivery, Dispatcher, OutboxMetrics
from avgate.kernel.process import run, service_process
from avgate.kernel.settings import Environment
from avgate.ledger.checkpoint import NoteSigner
from services.reporting.config import FileAuthority, ReportingSettings
from services.reporting.deliveries.domain import AdapterKind
from services.reporting.deliveries.server import DeliveryServicer
from services.reporting.deliveries.service import DeliveryService
from services.reporting.deliveries.store import SqlDeliveryStore, record_outcomes
from services.reporting.domain import RoutingRules
from services.reporting.incidents import IncidentService
from services.reporting.ledger.sequencer import Sequencer, SequencerMetrics
from services.reporting.ledger.server import AuditLedgerServicer
from services.reporting.ledger.store import LedgerReader
from services.reporting.server import IncidentServicer, registrations
from services.reporting.store import SCHEMA, SqlIncidentStore

log = logging.getLogger(__name__)


def ledger_signer(settings: ReportingSettings) -> NoteSigner:
    path = settings.own_ledger_key_file
    if not path.exists() and settings.generate_keys:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "w") as fh:
            fh.write(NoteSigner.generate(settings.ledger_origin).skey() + "\n")
    signer = NoteSigner.from_skey(path.read_text().strip())
    if signer.name != settings.ledger_origin:
        sys.exit(
            f"reporting: the ledger key is named {signer.name!r}, "
            f"but REPORTING_LEDGER_ORIGIN is {settings.ledger_origin!r}"
        )
    return signer


def sequencer_url(settings: ReportingSettings) -> str | None:
    if settings.sequencer_database_url:
        return settings.sequencer_database_url
    url = settings.effective_database_url
    if url and settings.env is Environment.LOCAL:
        return role_url(url, LEDGER_SEQUENCER_ROLE)  # local trust auth: same server, the sequencer's role
    return None


def authority_deliveries(settings: ReportingSettings) -> dict[str, Delivery]:
    """{"authority:<department>": adapter} from the settings; ValueError names the department at fault."""
    deliveries: dict[str, Delivery] = {}
    for department, spec in settings.authority_specs().items():
        destination = f"authority:{department}"
        if isinstance(spec, FileAuthority):
            deliveries[destination] = FileDropDelivery(spec.directory, prefix=department)
            continue
        token = None
        if spec.bearer_token_file is not None:
            try:
                token = spec.bearer_token_file.read_text().strip()
            except OSError as exc:
                raise ValueError(
                    f"REPORTING_AUTHORITIES: department {department!r}: cannot read bearer_token_file: {exc}"
                ) from exc
        deliveries[destination] = HttpJsonDelivery(
            spec.url, bearer_token=token, timeout=spec.timeout, embed_json=True, keep_alive=spec.keep_alive
        )
    return deliveries


def delivery_signer(settings: ReportingSettings) -> SigningKey:
    """Reporting's own Ed25519 key: authorities check deliveries against reporting's public key."""
    return SigningKey(settings.process_name, load_private_key(settings.own_signing_key_file))


def authority_adapters(settings: ReportingSettings) -> dict[str, AdapterKind]:
    """The adapter kind each department's endpoint is configured with (what DeliveryService shows)."""
    return {
        department: AdapterKind.FILE_DROP if isinstance(spec, FileAuthority) else AdapterKind.HTTP_JSON
        for department, spec in settings.authority_specs().items()
    }


def authority_dispatcher(settings: ReportingSettings, url: str, registry: CollectorRegistry) -> Dispatcher:
    """The dispatcher of reporting.outbox (reports to the authorities), on reporting's own URL.

    Each recorded outcome also writes the delivery's attempt history and settles its
    incident's status, in the same transaction (`record_outcomes`).
    """
    return Dispatcher(
        libpq_url(url),
        SCHEMA,
        authority_deliveries(settings),
        max_attempts=settings.dispatcher_max_attempts,
        base_delay=settings.dispatcher_base_delay,
        max_delay=settings.dispatcher_max_delay,
        lease_seconds=settings.dispatcher_lease_seconds,
        signer=delivery_signer(settings),
        metrics=OutboxMetrics(registry),
        on_recorded=record_outcomes,
    )


async def compose(settings: ReportingSettings) -> GrpcProcess:
    url = settings.effective_database_url
    if not url:
        sys.exit("reporting: set REPORTING_DATABASE_URL or DATABASE_URL (`avgate run` sets them for the local stack)")
    try:
        routing = RoutingRules.with_overrides(settings.routing_rules)
    except ValueError as exc:
        sys.exit(f"reporting: REPORTING_ROUTING_RULES: {exc}")
    registry = CollectorRegistry()
    dispatcher = None
    if settings.dispatcher_enabled:
        try:
            dispatcher = authority_dispatcher(settings, url, registry)
        except (ValueError, OSError) as exc:
            sys.exit(f"reporting: {exc}")
    try:
        adapters = authority_adapters(settings)
    except ValueError as exc:
        sys.exit(f"reporting: {exc}")
    engine = create_engine_for(url)
    incidents = IncidentService(SqlIncidentStore(engine), routing)
    deliveries = DeliveryService(SqlDeliveryStore(engine), adapters)
    pool: AsyncConnectionPool = AsyncConnectionPool(libpq_url(url), min_size=1, max_size=10, open=False)
    await pool.open()
    background = []
    if settings.sequencer_enabled:
        target = sequencer_url(settings)
        if target is None:
            sys.exit("reporting: set REPORTING_SEQUENCER_DATABASE_URL or REPORTING_SEQUENCER_ENABLED=false")
        sequencer = Sequencer(
            libpq_url(target),
            ledger_signer(settings),
            settings.ledger_origin,
            metrics=SequencerMetrics(registry),
        )
        background.append(sequencer.run)
    if dispatcher is not None:
        background.append(dispatcher.run)

    async def close() -> None:
        await pool.close()
        await engine.dispose()

    return service_process(
        settings,
        registrations(
            AuditLedgerServicer(LedgerReader(pool)), IncidentServicer(incidents), DeliveryServicer(deliveries)
        ),
        background=background,
        on_shutdown=[close],
        registry=registry,
    )


if __name__ == "__main__":
    run(ReportingSettings, compose)
