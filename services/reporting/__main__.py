"""Composition root of the reporting process: settings → engine and ledger
reader → sequencer → outbox dispatcher to the authorities (recording each
delivery's attempts and its incident's status) → incident and delivery stores
and services → evidence key ring, blob store, store and service → refuted-rumour
and assessment stores and services → feed and exports → servicers → server."""

from __future__ import annotations

import logging
import os
import sys
from collections.abc import Callable
from datetime import UTC, datetime, timedelta

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
from services.reporting.assessments.server import AssessmentServicer
from services.reporting.assessments.service import AssessmentService
from services.reporting.assessments.store import SqlAssessmentStore
from services.reporting.config import FileAuthority, ReportingSettings
from services.reporting.deliveries.domain import AdapterKind
from services.reporting.deliveries.server import DeliveryServicer
from services.reporting.deliveries.service import DeliveryService
from services.reporting.deliveries.store import SqlDeliveryStore, record_outcomes
from services.reporting.domain import RoutingRules
from services.reporting.evidence.blobs import FilesystemBlobStore
from services.reporting.evidence.crypto import KeyRing
from services.reporting.evidence.server import EvidenceServicer
from services.reporting.evidence.service import EvidenceService
from services.reporting.evidence.store import SqlEvidenceStore
from services.reporting.feed.export_store import SqlExportStore
from services.reporting.feed.exports import ExportBuilder, ExportService
from services.reporting.feed.server import RegulatorFeedServicer
from services.reporting.feed.service import FeedService
from services.reporting.feed.store import SqlFeedStore
from services.reporting.incidents import IncidentService
from services.reporting.ledger.sequencer import Sequencer, SequencerMetrics
from services.reporting.ledger.server import AuditLedgerServicer
from services.reporting.ledger.store import LedgerReader
from services.reporting.rumors.server import RumorServicer
from services.reporting.rumors.service import RumorService
from services.reporting.rumors.store import SqlRumorStore
from services.reporting.server import IncidentServicer, incident_payload, registrations
from services.reporting.store import SCHEMA, FeedWriter, SqlIncidentStore

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


def evidence_keys(settings: ReportingSettings) -> KeyRing:
    """The evidence key-encryption keys.

    A missing file is generated when REPORTING_EVIDENCE_KEK_FILE is unset (its
    default place under the keys directory is a local stand-in, which the
    production profile refuses) or when AVGATE_GENERATE_KEYS allows it.
    """
    path = settings.own_evidence_kek_file
    if not path.exists() and (settings.generate_keys or settings.evidence_kek_file is None):
        path.parent.mkdir(parents=True, exist_ok=True)
        try:
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        except FileExistsError:
            pass  # another process of the local stack made it first
        else:
            with os.fdopen(fd, "w") as fh:
                fh.write("# Evidence key-encryption keys, generated for the local profile; the last line is current.\n")
                fh.write(KeyRing.new_key_line(f"local-{datetime.now(UTC):%Y%m%d%H%M%S}") + "\n")
    try:
        return KeyRing.parse(path.read_text())
    except (OSError, ValueError) as exc:
        sys.exit(f"reporting: REPORTING_EVIDENCE_KEK_FILE ({path}): {exc}")


def _now() -> datetime:
    return datetime.now(UTC)


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


async def compose(settings: ReportingSettings, *, clock: Callable[[], datetime] = _now) -> GrpcProcess:
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
    keys = evidence_keys(settings)
    engine = create_engine_for(url)
    incident_store = SqlIncidentStore(engine, FeedWriter(incident_payload))
    incidents = IncidentService(incident_store, routing)
    evidence = EvidenceService(
        SqlEvidenceStore(engine, incident_store.publish_update),
        incident_store,
        FilesystemBlobStore(settings.own_evidence_dir),
        keys,
        retention=settings.evidence_retention,
        max_bytes=settings.evidence_max_bytes,
        clock=clock,
    )
    rumors = RumorService(
        SqlRumorStore(engine),
        default_threshold=settings.rumor_match_threshold,
        refresh_seconds=settings.rumor_index_refresh_seconds,
    )
    assessments = AssessmentService(SqlAssessmentStore(engine, incident_store.write_new), incidents)
    deliveries = DeliveryService(SqlDeliveryStore(engine), adapters)
    pool: AsyncConnectionPool = AsyncConnectionPool(libpq_url(url), min_size=1, max_size=10, open=False)
    await pool.open()
    ledger_reader = LedgerReader(pool)
    ledger_servicer = AuditLedgerServicer(ledger_reader)
    export_store = SqlExportStore(engine)
    feed = RegulatorFeedServicer(
        FeedService(SqlFeedStore(engine), ledger_reader, clock=clock),
        ExportService(export_store, settings.own_export_dir, clock=clock),
        ledger_servicer,
    )
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
    if settings.export_builder_enabled:
        builder = ExportBuilder(
            export_store,
            incident_store,
            ledger_reader,
            delivery_signer(settings),
            settings.own_export_dir,
            ttl=timedelta(hours=settings.export_ttl_hours),
            clock=clock,
        )
        background.append(builder.run)

    async def close() -> None:
        await pool.close()
        await engine.dispose()

    return service_process(
        settings,
        registrations(
            ledger=ledger_servicer,
            incidents=IncidentServicer(incidents),
            deliveries=DeliveryServicer(deliveries),
            feed=feed,
            evidence=EvidenceServicer(evidence),
            rumors=RumorServicer(rumors),
            assessments=AssessmentServicer(assessments),
        ),
        background=background,
        on_shutdown=[close],
        registry=registry,
    )


if __name__ == "__main__":
    run(ReportingSettings, compose)
