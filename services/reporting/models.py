"""Tables of the reporting schema: incidents and the outbox of reports to the authorities."""

from __future__ import annotations

from sqlalchemy import (
    BigInteger,
    Boolean,
    CheckConstraint,
    Column,
    DateTime,
    Double,
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

metadata = MetaData(schema="reporting")

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

outbox = outbox_table(metadata)

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
