"""Tables of the reporting schema: incidents, the regulator feed and exports, the outbox of reports
to the authorities, the evidence store's records (evidence, attachments, holds), refuted rumours
and security assessments."""

from __future__ import annotations

from sqlalchemy import (
    BigInteger,
    Boolean,
    CheckConstraint,
    Column,
    DateTime,
    Double,
    ForeignKey,
    ForeignKeyConstraint,
    Identity,
    Index,
    Integer,
    LargeBinary,
    MetaData,
    String,
    Table,
    Text,
    UniqueConstraint,
    Uuid,
    func,
    text,
)
from sqlalchemy.dialects.postgresql import ARRAY, JSONB

from avgate.kernel.outbox import outbox_table

SCHEMA = "reporting"
"""The schema every reporting table (and its outbox) lives in: named here once."""

metadata = MetaData(schema=SCHEMA)

incidents = Table(
    "incidents",
    metadata,
    Column("incident_id", String(40), primary_key=True),
    Column("tenant_id", String(64), nullable=False),
    Column("external_id", String(128), nullable=False),
    # SHA-256 of the canonical submitted content: a resubmission with another hash is a conflict.
    Column("content_hash", LargeBinary(32), nullable=False),
    Column("source", String(32), nullable=False),
    Column("category", String(40), nullable=False),
    Column("prohibited_type", String(40)),
    Column("legal_basis", JSONB, nullable=False),
    Column("facts", Text, nullable=False),
    # Content references and hashes, never the media: [{"content_id", "uri", "sha256", "media_type"}].
    Column("content", JSONB, nullable=False),
    Column("user_id", Text),
    Column("action_type", String(40)),
    Column("action_time", DateTime(timezone=True)),
    Column("action_until_time", DateTime(timezone=True)),
    Column("action_detail", Text, nullable=False, server_default=""),
    Column("enforcement_action_id", Text, nullable=False, server_default=""),
    Column("automated_detection", Boolean, nullable=False),
    Column("automated_decision", Boolean, nullable=False),
    Column("detect_time", DateTime(timezone=True)),
    Column("region_code", String(6), nullable=False),
    Column("evidence", JSONB, nullable=False),
    Column("related", JSONB, nullable=False),
    # Routes: every route department in every route region.
    Column("route_departments", ARRAY(String(32)), nullable=False),
    Column("route_regions", ARRAY(String(6)), nullable=False),
    Column("status", String(24), nullable=False),
    Column("acknowledgements", JSONB, nullable=False),
    Column("create_time", DateTime(timezone=True), nullable=False),
    Column("update_time", DateTime(timezone=True), nullable=False),
    Column("ledger_entry_id", Uuid, nullable=False),
    UniqueConstraint("tenant_id", "external_id", name="incidents_tenant_external_id_key"),
    CheckConstraint(
        "status in ('recorded', 'delivered', 'acknowledged', 'delivery_failed')", name="incidents_status_known"
    ),
    CheckConstraint("region_code ~ '^[0-9]{6}$'", name="incidents_region_code_format"),
    # Listings run newest first, within a tenant (providers) or across tenants (regulators).
    Index("incidents_tenant_create_time", "tenant_id", "create_time", "incident_id"),
    Index("incidents_create_time", "create_time", "incident_id"),
)

# The regulator feed: one row per incident change, written in the change's own
# transaction. Feed order is (txid, id): the writing transaction's id, then the
# row's. Readers return only rows of transactions older than every transaction
# still running (txid below the snapshot's xmin), so no row can later appear
# before a cursor already handed out: resuming after a cursor is exact.
# The incident is stored as it was at this change, as its serialized
# avgate.reporting.v1.Incident, so streaming it costs no conversion.
feed_items = Table(
    "feed_items",
    metadata,
    Column("id", BigInteger, Identity(always=False), primary_key=True),
    Column("txid", BigInteger, nullable=False, server_default=text("(pg_current_xact_id()::text)::bigint")),
    Column("kind", String(24), nullable=False),
    Column("incident_id", String(40), nullable=False),
    Column("tenant_id", String(64), nullable=False),
    Column("category", String(40), nullable=False),
    Column("source", String(32), nullable=False),
    Column("status", String(24), nullable=False),
    Column("route_departments", ARRAY(String(32)), nullable=False),
    Column("route_regions", ARRAY(String(6)), nullable=False),
    Column("create_time", DateTime(timezone=True), nullable=False),
    Column("publish_time", DateTime(timezone=True), nullable=False, server_default=func.now()),
    Column("payload", LargeBinary, nullable=False),
    CheckConstraint("kind in ('incident_created', 'incident_updated')", name="feed_items_kind_known"),
    Index("feed_items_order", "txid", "id"),
    Index("feed_items_incident", "incident_id", "id"),
)

# Signed export bundles for offline handover. The requester's scope is kept
# so the bundle is built with exactly what that regulator may see.
exports = Table(
    "exports",
    metadata,
    Column("export_id", String(40), primary_key=True),
    Column("requested_by", Text, nullable=False),
    Column("request_id", String(128), nullable=False),
    Column("request_hash", LargeBinary(32), nullable=False),
    Column("principal", JSONB, nullable=False),
    Column("filter", JSONB, nullable=False),
    Column("state", String(16), nullable=False),
    Column("item_count", BigInteger, nullable=False, server_default=text("0")),
    Column("files", JSONB, nullable=False, server_default=text("'[]'::jsonb")),
    Column("manifest_signature", LargeBinary),
    Column("signing_key_name", Text, nullable=False, server_default=""),
    Column("tree_size", BigInteger),
    Column("checkpoint", LargeBinary),
    Column("error", Text),
    Column("ledger_entry_id", Uuid, nullable=False),
    Column("create_time", DateTime(timezone=True), nullable=False),
    Column("complete_time", DateTime(timezone=True)),
    Column("expire_time", DateTime(timezone=True)),
    # A builder's lease (not a row lock: a transaction held open while building would hold back the feed).
    Column("lease_until", DateTime(timezone=True)),
    UniqueConstraint("requested_by", "request_id", name="exports_requested_by_request_id_key"),
    CheckConstraint("state in ('pending', 'ready', 'failed', 'expired')", name="exports_state_known"),
    Index("exports_pending", "create_time", postgresql_where=text("state = 'pending'")),
)

outbox = outbox_table(metadata)

# --- evidence
# The bytes live sealed in the blob store (services.reporting.evidence.blobs); these rows
# hold what they are, their wrapped data key, whom they are attached to and their holds.

evidence = Table(
    "evidence",
    metadata,
    Column("evidence_id", String(40), primary_key=True),
    Column("tenant_id", String(64), nullable=False),
    # Lower-case hex SHA-256 of the plaintext: the evidence's address within its tenant.
    Column("sha256", String(64), nullable=False),
    Column("size_bytes", BigInteger, nullable=False),
    Column("media_type", String(128), nullable=False),
    Column("file_name", String(255), nullable=False),
    Column("description", Text, nullable=False),
    # The sealed object's name in the blob store: random, never derived from the content.
    Column("blob_name", String(128), nullable=False),
    # The object's data key wrapped by key-encryption key `kek_id`; both destroyed on release.
    Column("kek_id", String(64)),
    Column("wrapped_key", LargeBinary),
    Column("retain_until", DateTime(timezone=True), nullable=False),
    Column("attached_by", Text, nullable=False),
    Column("create_time", DateTime(timezone=True), nullable=False),
    Column("ledger_entry_id", Uuid, nullable=False),
    Column("release_time", DateTime(timezone=True)),
    Column("release_reason", Text, nullable=False, server_default=""),
    Column("released_by", Text, nullable=False, server_default=""),
    UniqueConstraint("blob_name", name="evidence_blob_name_key"),
    CheckConstraint("sha256 ~ '^[0-9a-f]{64}$'", name="evidence_sha256_format"),
    CheckConstraint("size_bytes >= 0", name="evidence_size_not_negative"),
    # Crypto-shredding: a key while live, none once released.
    CheckConstraint(
        "(release_time is null) = (kek_id is not null and wrapped_key is not null)", name="evidence_key_until_released"
    ),
    # Identical bytes are stored once per tenant (never across tenants, which would tell
    # one tenant what another holds); released evidence no longer counts.
    Index(
        "evidence_live_tenant_sha256",
        "tenant_id",
        "sha256",
        unique=True,
        postgresql_where=text("release_time is null"),
    ),
)

# One row per successful AttachEvidence call: the idempotency record of (tenant, request id)
# and the link of the evidence to an incident.
evidence_attachments = Table(
    "evidence_attachments",
    metadata,
    Column("tenant_id", String(64), primary_key=True),
    Column("request_id", String(128), primary_key=True),
    Column("evidence_id", String(40), ForeignKey("reporting.evidence.evidence_id"), nullable=False),
    Column("incident_id", String(40), ForeignKey("reporting.incidents.incident_id"), nullable=False),
    # SHA-256 of the upload's metadata: a retry must repeat it exactly.
    Column("request_hash", LargeBinary(32), nullable=False),
    Column("attached_by", Text, nullable=False),
    Column("attach_time", DateTime(timezone=True), nullable=False),
    Column("ledger_entry_id", Uuid, nullable=False),
    Index("evidence_attachments_evidence_id", "evidence_id"),
    Index("evidence_attachments_incident_id", "incident_id"),
)

evidence_holds = Table(
    "evidence_holds",
    metadata,
    Column("hold_id", String(40), primary_key=True),
    Column("evidence_id", String(40), ForeignKey("reporting.evidence.evidence_id"), nullable=False),
    Column("request_id", String(128), nullable=False),
    Column("request_hash", LargeBinary(32), nullable=False),
    Column("reason", Text, nullable=False),
    Column("placed_by", Text, nullable=False),
    Column("placed_by_role", String(16), nullable=False),
    Column("create_time", DateTime(timezone=True), nullable=False),
    Column("until_time", DateTime(timezone=True)),
    Column("lift_time", DateTime(timezone=True)),
    Column("lift_reason", Text, nullable=False, server_default=""),
    Column("lifted_by", Text, nullable=False, server_default=""),
    # A retried hold (same caller, same request id) finds the first.
    UniqueConstraint("evidence_id", "placed_by", "request_id", name="evidence_holds_request_key"),
)

# --- rumours and assessments

refuted_rumors = Table(
    "refuted_rumors",
    metadata,
    Column("rumor_id", String(40), primary_key=True),
    # The owner tenant; "" for an entry shared with every tenant.
    Column("tenant_id", String(64), nullable=False),
    Column("request_id", String(128), nullable=False),
    # SHA-256 of the canonical submitted content: a retry with another hash is a conflict.
    Column("request_hash", LargeBinary(32), nullable=False),
    Column("claim_text", Text, nullable=False),
    Column("refutation_text", Text, nullable=False),
    Column("refutation_url", Text, nullable=False),
    Column("issuing_authority", Text, nullable=False),
    Column("publish_time", DateTime(timezone=True), nullable=False),
    Column("create_time", DateTime(timezone=True), nullable=False),
    Column("retire_time", DateTime(timezone=True)),
    Column("retire_reason", Text, nullable=False, server_default=""),
    Column("ledger_entry_id", Uuid, nullable=False),
    UniqueConstraint("tenant_id", "request_id", name="refuted_rumors_tenant_request_id_key"),
    CheckConstraint("(retire_time is null) = (retire_reason = '')", name="refuted_rumors_retired_with_reason"),
    # Listings run newest first, within the caller's tenants (providers: shared + own) or across all.
    Index("refuted_rumors_tenant_create_time", "tenant_id", "create_time", "rumor_id"),
    Index("refuted_rumors_create_time", "create_time", "rumor_id"),
)

security_assessments = Table(
    "security_assessments",
    metadata,
    Column("assessment_id", String(40), primary_key=True),
    Column("tenant_id", String(64), nullable=False),
    Column("request_id", String(128), nullable=False),
    Column("request_hash", LargeBinary(32), nullable=False),
    Column("feature", Text, nullable=False),
    Column("feature_description", Text, nullable=False),
    Column("traits", ARRAY(String(32)), nullable=False),
    Column("assessment_time", DateTime(timezone=True), nullable=False),
    Column("assessor", Text, nullable=False),
    Column("conclusion", String(32), nullable=False),
    Column("conclusion_text", Text, nullable=False),
    Column("document_sha256", String(64), nullable=False),
    # {"sha256", "size_bytes", "media_type"} when the document is in the evidence store.
    Column("document", JSONB),
    Column("launch_time", DateTime(timezone=True)),
    # The incident that reports it, written in the same transaction.
    Column(
        "incident_id",
        String(40),
        ForeignKey("reporting.incidents.incident_id", name="security_assessments_incident_id_fkey"),
        nullable=False,
    ),
    Column("create_time", DateTime(timezone=True), nullable=False),
    Column("ledger_entry_id", Uuid, nullable=False),
    UniqueConstraint("tenant_id", "request_id", name="security_assessments_tenant_request_id_key"),
    UniqueConstraint("incident_id", name="security_assessments_incident_id_key"),
    CheckConstraint(
        "conclusion in ('passed', 'passed_with_conditions', 'failed')", name="security_assessments_conclusion_known"
    ),
    CheckConstraint("document_sha256 ~ '^[0-9a-f]{64}$'", name="security_assessments_document_sha256_format"),
    Index("security_assessments_tenant_create_time", "tenant_id", "create_time", "assessment_id"),
    Index("security_assessments_create_time", "create_time", "assessment_id"),
)

# --- deliveries
# The kernel's outbox table stays generic (every service has the same one); what reporting
# knows about each report to an authority lives beside it, keyed by the outbox event id.

# Written with each report's outbox event, in the incident's transaction.
delivery_subjects = Table(
    "delivery_subjects",
    metadata,
    Column("event_id", Uuid, primary_key=True),
    Column("tenant_id", String(64), nullable=False),
    # What is delivered: "incident" today; exports and tree heads later.
    Column("subject_kind", String(16), nullable=False),
    Column("subject_id", String(40), nullable=False),
    Column("department", String(32), nullable=False),
    Column("region_code", String(6), nullable=False),
    # The same transaction as the outbox row, so the same now() as its created_at.
    Column("create_time", DateTime(timezone=True), nullable=False, server_default=func.now()),
    Column("replay_count", Integer, nullable=False, server_default=text("0")),
    ForeignKeyConstraint(
        ["event_id"], ["reporting.outbox.event_id"], name="delivery_subjects_event_id_fkey", ondelete="CASCADE"
    ),
    CheckConstraint("subject_kind in ('incident', 'export', 'tree_head')", name="delivery_subjects_kind_known"),
    CheckConstraint("replay_count >= 0", name="delivery_subjects_replay_count_check"),
    # Listings run newest first (oldest first for dead letters), within a tenant or across tenants.
    Index("delivery_subjects_tenant_create_time", "tenant_id", "create_time", "event_id"),
    Index("delivery_subjects_create_time", "create_time", "event_id"),
    Index("delivery_subjects_subject", "subject_id"),
)

# One row per recorded attempt, written by the dispatcher in the transaction that records the outcome.
delivery_attempts = Table(
    "delivery_attempts",
    metadata,
    Column("id", BigInteger, Identity(always=False), primary_key=True),
    Column("event_id", Uuid, nullable=False),
    # 1-based; starts again at 1 after a replay (the outbox resets its count), so rows go by id.
    Column("attempt", Integer, nullable=False),
    # Unknown when the attempt's dispatcher died before reporting.
    Column("start_time", DateTime(timezone=True)),
    Column("duration_seconds", Double, nullable=False),
    Column("outcome", String(16), nullable=False),
    # The destination refused it (as opposed to: failed, may accept later).
    Column("refused", Boolean, nullable=False, server_default=text("false")),
    Column("http_status", Integer),
    Column("error", Text),
    ForeignKeyConstraint(
        ["event_id"], ["reporting.outbox.event_id"], name="delivery_attempts_event_id_fkey", ondelete="CASCADE"
    ),
    CheckConstraint("outcome in ('delivered', 'retry', 'dead')", name="delivery_attempts_outcome_known"),
    Index("delivery_attempts_event_id", "event_id", "id"),
)
