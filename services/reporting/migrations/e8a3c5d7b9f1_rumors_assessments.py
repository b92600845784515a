"""Refuted rumours (Art. 13) and security assessments (Art. 10).

The reporting role owns the schema, so its own tables need no grants (as
for the incidents in b3e5d1a7c902).

Revision ID: e8a3c5d7b9f1
Revises: c4f1a2b3d5e6
Create Date: 2026-12-05
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

revision: str = "e8a3c5d7b9f1"
down_revision: str | Sequence[str] | None = "c4f1a2b3d5e6"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table(
        "refuted_rumors",
        sa.Column("rumor_id", sa.String(40), primary_key=True),
        sa.Column("tenant_id", sa.String(64), nullable=False),
        sa.Column("request_id", sa.String(128), nullable=False),
        sa.Column("request_hash", sa.LargeBinary(32), nullable=False),
        sa.Column("claim_text", sa.Text(), nullable=False),
        sa.Column("refutation_text", sa.Text(), nullable=False),
        sa.Column("refutation_url", sa.Text(), nullable=False),
        sa.Column("issuing_authority", sa.Text(), nullable=False),
        sa.Column("publish_time", sa.DateTime(timezone=True), nullable=False),
        sa.Column("create_time", sa.DateTime(timezone=True), nullable=False),
        sa.Column("retire_time", sa.DateTime(timezone=True)),
        sa.Column("retire_reason", sa.Text(), nullable=False, server_default=""),
        sa.Column("ledger_entry_id", sa.Uuid(), nullable=False),
        sa.UniqueConstraint("tenant_id", "request_id", name="refuted_rumors_tenant_request_id_key"),
        sa.CheckConstraint("(retire_time is null) = (retire_reason = '')", name="refuted_rumors_retired_with_reason"),
        schema="reporting",
    )
    op.create_index(
        "refuted_rumors_tenant_create_time",
        "refuted_rumors",
        ["tenant_id", "create_time", "rumor_id"],
        schema="reporting",
    )
    op.create_index("refuted_rumors_create_time", "refuted_rumors", ["create_time", "rumor_id"], schema="reporting")

    op.create_table(
        "security_assessments",
        sa.Column("assessment_id", sa.String(40), primary_key=True),
        sa.Column("tenant_id", sa.String(64), nullable=False),
        sa.Column("request_id", sa.String(128), nullable=False),
        sa.Column("request_hash", sa.LargeBinary(32), nullable=False),
        sa.Column("feature", sa.Text(), nullable=False),
        sa.Column("feature_description", sa.Text(), nullable=False),
        sa.Column("traits", postgresql.ARRAY(sa.String(32)), nullable=False),
        sa.Column("assessment_time", sa.DateTime(timezone=True), nullable=False),
        sa.Column("assessor", sa.Text(), nullable=False),
        sa.Column("conclusion", sa.String(32), nullable=False),
        sa.Column("conclusion_text", sa.Text(), nullable=False),
        sa.Column("document_sha256", sa.String(64), nullable=False),
        sa.Column("document", postgresql.JSONB()),
        sa.Column("launch_time", sa.DateTime(timezone=True)),
        sa.Column("incident_id", sa.String(40), nullable=False),
        sa.Column("create_time", sa.DateTime(timezone=True), nullable=False),
        sa.Column("ledger_entry_id", sa.Uuid(), nullable=False),
        sa.ForeignKeyConstraint(
            ["incident_id"], ["reporting.incidents.incident_id"], name="security_assessments_incident_id_fkey"
        ),
        sa.UniqueConstraint("tenant_id", "request_id", name="security_assessments_tenant_request_id_key"),
        sa.UniqueConstraint("incident_id", name="security_assessments_incident_id_key"),
        sa.CheckConstraint(
            "conclusion in ('passed', 'passed_with_conditions', 'failed')",
            name="security_assessments_conclusion_known",
        ),
        sa.CheckConstraint("document_sha256 ~ '^[0-9a-f]{64}$'", name="security_assessments_document_sha256_format"),
        schema="reporting",
    )
    op.create_index(
        "security_assessments_tenant_create_time",
        "security_assessments",
        ["tenant_id", "create_time", "assessment_id"],
        schema="reporting",
    )
    op.create_index(
        "security_assessments_create_time",
        "security_assessments",
        ["create_time", "assessment_id"],
        schema="reporting",
    )


def downgrade() -> None:
    op.drop_table("security_assessments", schema="reporting")
    op.drop_table("refuted_rumors", schema="reporting")
