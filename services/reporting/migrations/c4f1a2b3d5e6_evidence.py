"""The evidence store's records: evidence, its attachments to incidents, its holds.

Revision ID: c4f1a2b3d5e6
Revises: d7e2b4c6a8f0
Create Date: 2026-12-09
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "c4f1a2b3d5e6"
down_revision: str | Sequence[str] | None = "d7e2b4c6a8f0"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

# The tables belong to avgate_reporting, which runs these migrations and owns the
# schema: the service role needs no further grant (as for incidents and the outbox).


def upgrade() -> None:
    op.create_table(
        "evidence",
        sa.Column("evidence_id", sa.String(40), primary_key=True),
        sa.Column("tenant_id", sa.String(64), nullable=False),
        sa.Column("sha256", sa.String(64), nullable=False),
        sa.Column("size_bytes", sa.BigInteger(), nullable=False),
        sa.Column("media_type", sa.String(128), nullable=False),
        sa.Column("file_name", sa.String(255), nullable=False),
        sa.Column("description", sa.Text(), nullable=False),
        sa.Column("blob_name", sa.String(128), nullable=False),
        sa.Column("kek_id", sa.String(64)),
        sa.Column("wrapped_key", sa.LargeBinary()),
        sa.Column("retain_until", sa.DateTime(timezone=True), nullable=False),
        sa.Column("attached_by", sa.Text(), nullable=False),
        sa.Column("create_time", sa.DateTime(timezone=True), nullable=False),
        sa.Column("ledger_entry_id", sa.Uuid(), nullable=False),
        sa.Column("release_time", sa.DateTime(timezone=True)),
        sa.Column("release_reason", sa.Text(), nullable=False, server_default=""),
        sa.Column("released_by", sa.Text(), nullable=False, server_default=""),
        sa.UniqueConstraint("blob_name", name="evidence_blob_name_key"),
        sa.CheckConstraint("sha256 ~ '^[0-9a-f]{64}$'", name="evidence_sha256_format"),
        sa.CheckConstraint("size_bytes >= 0", name="evidence_size_not_negative"),
        sa.CheckConstraint(
            "(release_time is null) = (kek_id is not null and wrapped_key is not null)",
            name="evidence_key_until_released",
        ),
        schema="reporting",
    )
    op.create_index(
        "evidence_live_tenant_sha256",
        "evidence",
        ["tenant_id", "sha256"],
        unique=True,
        schema="reporting",
        postgresql_where=sa.text("release_time is null"),
    )

    op.create_table(
        "evidence_attachments",
        sa.Column("tenant_id", sa.String(64), primary_key=True),
        sa.Column("request_id", sa.String(128), primary_key=True),
        sa.Column("evidence_id", sa.String(40), sa.ForeignKey("reporting.evidence.evidence_id"), nullable=False),
        sa.Column("incident_id", sa.String(40), sa.ForeignKey("reporting.incidents.incident_id"), nullable=False),
        sa.Column("request_hash", sa.LargeBinary(32), nullable=False),
        sa.Column("attached_by", sa.Text(), nullable=False),
        sa.Column("attach_time", sa.DateTime(timezone=True), nullable=False),
        sa.Column("ledger_entry_id", sa.Uuid(), nullable=False),
        schema="reporting",
    )
    op.create_index("evidence_attachments_evidence_id", "evidence_attachments", ["evidence_id"], schema="reporting")
    op.create_index("evidence_attachments_incident_id", "evidence_attachments", ["incident_id"], schema="reporting")

    op.create_table(
        "evidence_holds",
        sa.Column("hold_id", sa.String(40), primary_key=True),
        sa.Column("evidence_id", sa.String(40), sa.ForeignKey("reporting.evidence.evidence_id"), nullable=False),
        sa.Column("request_id", sa.String(128), nullable=False),
        sa.Column("request_hash", sa.LargeBinary(32), nullable=False),
        sa.Column("reason", sa.Text(), nullable=False),
        sa.Column("placed_by", sa.Text(), nullable=False),
        sa.Column("placed_by_role", sa.String(16), nullable=False),
        sa.Column("create_time", sa.DateTime(timezone=True), nullable=False),
        sa.Column("until_time", sa.DateTime(timezone=True)),
        sa.Column("lift_time", sa.DateTime(timezone=True)),
        sa.Column("lift_reason", sa.Text(), nullable=False, server_default=""),
        sa.Column("lifted_by", sa.Text(), nullable=False, server_default=""),
        sa.UniqueConstraint("evidence_id", "placed_by", "request_id", name="evidence_holds_request_key"),
        schema="reporting",
    )


def downgrade() -> None:
    op.drop_table("evidence_holds", schema="reporting")
    op.drop_table("evidence_attachments", schema="reporting")
    op.drop_index("evidence_live_tenant_sha256", table_name="evidence", schema="reporting")
    op.drop_table("evidence", schema="reporting")
