"""Builds the reporting process's parts from ReportingSettings (for the
composition root, services.reporting.__main__): keys, the authorities'
adapters and the outbox dispatcher, the stores and use cases of every
sub-domain, their servicers and the background jobs.

Builders raise ValueError (or OSError) naming the setting at fault; the
composition root turns that into the process's exit message.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

from prometheus_client import CollectorRegistry
from psycopg_pool import AsyncConnectionPool
from sqlalchemy.ext.asyncio import AsyncEngine

from avgate.kernel.db import LEDGER_SEQUENCER_ROLE, libpq_url, role_url
from avgate.kernel.deliveries import FileDropDelivery, HttpJsonDelivery
from avgate.kernel.grpc.server import ServiceRegistration
from avgate.kernel.grpc.unimplemented import unimplemented_registrations
from avgate.kernel.keyring import create_key_file, create_secret_file
from avgate.kernel.keys import SigningKey, load_private_key
from avgate.kernel.outbox import Delivery, Dispatcher, OutboxMetrics
from avgate.kernel.settings import Environment
from avgate.ledger.checkpoint import NoteSigner
from avgate.reporting.v1 import reporting_pb2, reporting_pb2_grpc
from services.reporting.assessments.server import AssessmentServicer
from services.reporting.assessments.service import AssessmentService
from services.reporting.assessments.store import SqlAssessmentStore
from services.reporting.config import FileAuthority, ReportingSettings
from services.reporting.deliveries.domain import AdapterKind
from services.reporting.deliveries.server import DeliveryServicer
from services.reporting.deliveries.service import DeliveryService
from services.reporting.deliveries.store import SqlDeliveryStore, record_outcomes
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
from services.reporting.feed.writer import FeedWriter
from services.reporting.incidents.domain import RoutingRules
from services.reporting.incidents.server import IncidentServicer
from services.reporting.incidents.service import IncidentService
from services.reporting.incidents.store import SqlIncidentStore
from services.reporting.ledger.sequencer import Sequencer, SequencerMetrics
from services.reporting.ledger.server import AuditLedgerServicer
from services.reporting.ledger.store import LedgerReader, SqlRecordScopes
from services.reporting.models import SCHEMA
from services.reporting.rumors.server import RumorServicer
from services.reporting.rumors.service import RumorService
from services.reporting.rumors.store import SqlRumorStore

AUDIT_LEDGER = "avgate.reporting.v1.AuditLedgerService"
INCIDENTS = "avgate.reporting.v1.IncidentService"
DELIVERIES = "avgate.reporting.v1.DeliveryService"
FEED = "avgate.reporting.v1.RegulatorFeedService"
EVIDENCE = "avgate.reporting.v1.EvidenceService"
RUMORS = "avgate.reporting.v1.RumorService"
ASSESSMENTS = "avgate.reporting.v1.AssessmentService"


def _now() -> datetime:
    return datetime.now(UTC)


# --------------------------------------------------------------------------- settings → parts


def routing_rules(settings: ReportingSettings) -> RoutingRules:
    try:
        return RoutingRules.with_overrides(settings.routing_rules)
    except ValueError as exc:
        raise ValueError(f"REPORTING_ROUTING_RULES: {exc}") from exc


def ledger_signer(settings: ReportingSettings) -> NoteSigner:
    """The ledger's checkpoint signer; its key is generated when missing and AVGATE_GENERATE_KEYS allows it."""
    path = settings.own_ledger_key_file
    if not path.exists() and settings.generate_keys:
        create_secret_file(path, NoteSigner.generate(settings.ledger_origin).skey() + "\n")
    signer = NoteSigner.from_skey_file(path)
    if signer.name != settings.ledger_origin:
        raise ValueError(
            f"the ledger key is named {signer.name!r}, but REPORTING_LEDGER_ORIGIN is {settings.ledger_origin!r}"
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
        create_key_file(
            path,
            f"local-{datetime.now(UTC):%Y%m%d%H%M%S}",
            "Evidence key-encryption keys, generated for the local profile; the last line is current.",
        )
    try:
        return KeyRing.parse(path.read_text())
    except (OSError, ValueError) as exc:
        raise ValueError(f"REPORTING_EVIDENCE_KEK_FILE ({path}): {exc}") from exc


def sequencer_url(settings: ReportingSettings) -> str | None:
    if settings.sequencer_database_url:
        return settings.sequencer_database_url
    url = settings.effective_database_url
    if url and settings.env is Environment.LOCAL:
        return role_url(url, LEDGER_SEQUENCER_ROLE)  # local trust auth: same server, the sequencer's role
    return None


def sequencer(settings: ReportingSettings, registry: CollectorRegistry) -> Sequencer:
    """The ledger's sequencer, as the avgate_ledger_sequencer role."""
    target = sequencer_url(settings)
    if target is None:
        raise ValueError("set REPORTING_SEQUENCER_DATABASE_URL or REPORTING_SEQUENCER_ENABLED=false")
    return Sequencer(
        libpq_url(target), ledger_signer(settings), settings.ledger_origin, metrics=SequencerMetrics(registry)
    )


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


# --------------------------------------------------------------------------- stores, use cases, servicers


@dataclass(frozen=True)
class Reporting:
    """Every reporting servicer, and the incident store and ledger reader the export builder reads."""

    ledger: AuditLedgerServicer
    incidents: IncidentServicer
    deliveries: DeliveryServicer
    feed: RegulatorFeedServicer
    evidence: EvidenceServicer
    rumors: RumorServicer
    assessments: AssessmentServicer
    incident_store: SqlIncidentStore
    export_store: SqlExportStore
    ledger_reader: LedgerReader


def reporting(
    settings: ReportingSettings,
    engine: AsyncEngine,
    pool: AsyncConnectionPool,
    *,
    routing: RoutingRules,
    adapters: dict[str, AdapterKind],
    keys: KeyRing,
    clock: Callable[[], datetime] = _now,
) -> Reporting:
    """Stores → use cases → servicers, on one engine (and the ledger reader's pool)."""
    incident_store = SqlIncidentStore(engine, FeedWriter())
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
    ledger_reader = LedgerReader(pool)
    ledger = AuditLedgerServicer(ledger_reader, SqlRecordScopes(pool))
    export_store = SqlExportStore(engine)
    feed = RegulatorFeedServicer(
        FeedService(SqlFeedStore(engine), ledger_reader, clock=clock),
        ExportService(export_store, settings.own_export_dir, clock=clock),
        ledger,
    )
    return Reporting(
        ledger=ledger,
        incidents=IncidentServicer(incidents),
        deliveries=DeliveryServicer(DeliveryService(SqlDeliveryStore(engine), adapters)),
        feed=feed,
        evidence=EvidenceServicer(evidence),
        rumors=RumorServicer(rumors),
        assessments=AssessmentServicer(assessments),
        incident_store=incident_store,
        export_store=export_store,
        ledger_reader=ledger_reader,
    )


def export_builder(
    settings: ReportingSettings, parts: Reporting, *, clock: Callable[[], datetime] = _now
) -> Callable[[asyncio.Event], Awaitable[None]]:
    """The background job that builds requested export bundles and expires old ones."""
    builder = ExportBuilder(
        parts.export_store,
        parts.incident_store,
        parts.ledger_reader,
        delivery_signer(settings),
        settings.own_export_dir,
        ttl=timedelta(hours=settings.export_ttl_hours),
        clock=clock,
    )
    return builder.run


def registrations(parts: Reporting) -> list[ServiceRegistration]:
    """Every reporting service; those without a servicer yet answer UNIMPLEMENTED."""
    real = {AUDIT_LEDGER, INCIDENTS, DELIVERIES, FEED, EVIDENCE, RUMORS, ASSESSMENTS}
    others = [
        r for r in unimplemented_registrations(reporting_pb2, reporting_pb2_grpc) if not real & set(r.service_names)
    ]
    add = reporting_pb2_grpc
    return [
        ServiceRegistration(parts.ledger, add.add_AuditLedgerServiceServicer_to_server, [AUDIT_LEDGER]),
        ServiceRegistration(parts.incidents, add.add_IncidentServiceServicer_to_server, [INCIDENTS]),
        ServiceRegistration(parts.deliveries, add.add_DeliveryServiceServicer_to_server, [DELIVERIES]),
        ServiceRegistration(parts.feed, add.add_RegulatorFeedServiceServicer_to_server, [FEED]),
        ServiceRegistration(parts.evidence, add.add_EvidenceServiceServicer_to_server, [EVIDENCE]),
        ServiceRegistration(parts.rumors, add.add_RumorServiceServicer_to_server, [RUMORS]),
        ServiceRegistration(parts.assessments, add.add_AssessmentServiceServicer_to_server, [ASSESSMENTS]),
        *others,
    ]
