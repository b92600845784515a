"""Tables of the reporting schema: incidents, the outbox of reports to the authorities,
refuted rumours and security assessments."""

from __future__ import annotations

from sqlalchemy import (
    Boolean,
    CheckConstraint,
    Column,
    DateTime,
    ForeignKey,
    Index,
    LargeBinary,
    MetaData,
    String,
    Table,
    Text,
    UniqueConstraint,
    Uuid,
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
