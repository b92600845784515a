"""Incidents and the outbox of reports to the authorities.

Revision ID: b3e5d1a7c902
Revises: 79d23459c14a
Create Date: 2026-12-02
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

revision: str = "b3e5d1a7c902"
down_revision: str | Sequence[str] | None = "79d23459c14a"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table(
        "incidents",
        sa.Column("incident_id", sa.String(40), primary_key=True),
        sa.Column("tenant_id", sa.String(64), nullable=False),
        sa.Column("external_id", sa.String(128), nullable=False),
        sa.Column("content_hash", sa.LargeBinary(32), nullable=False),
        sa.Column("source", sa.String(32), nullable=False),
        sa.Column("category", sa.String(40), nullable=False),
        sa.Column("prohibited_type", sa.String(40)),
        sa.Column("legal_basis", postgresql.JSONB(), nullable=False),
        sa.Column("facts", sa.Text(), nullable=False),
        sa.Column("content", postgresql.JSONB(), nullable=False),
        sa.Column("user_id", sa.Text()),
        sa.Column("action_type", sa.String(40)),
        sa.Column("action_time", sa.DateTime(timezone=True)),
        sa.Column("action_until_time", sa.DateTime(timezone=True)),
        sa.Column("action_detail", sa.Text(), nullable=False, server_default=""),
        sa.Column("enforcement_action_id", sa.Text(), nullable=False, server_default=""),
        sa.Column("automated_detection", sa.Boolean(), nullable=False),
        sa.Column("automated_decision", sa.Boolean(), nullable=False),
        sa.Column("detect_time", sa.DateTime(timezone=True)),
        sa.Column("region_code", sa.String(6), nullable=False),
        sa.Column("evidence", postgresql.JSONB(), nullable=False),
        sa.Column("related", postgresql.JSONB(), nullable=False),
        sa.Column("route_departments", postgresql.ARRAY(sa.String(32)), nullable=False),
        sa.Column("route_regions", postgresql.ARRAY(sa.String(6)), nullable=False),
        sa.Column("status", sa.String(24), nullable=False),
        sa.Column("acknowledgements", postgresql.JSONB(), nullable=False),
        sa.Column("create_time", sa.DateTime(timezone=True), nullable=False),
        sa.Column("update_time", sa.DateTime(timezone=True), nullable=False),
        sa.Column("ledger_entry_id", sa.Uuid(), nullable=False),
        sa.UniqueConstraint("tenant_id", "external_id", name="incidents_tenant_external_id_key"),
        sa.CheckConstraint(
            "status in ('recorded', 'delivered', 'acknowledged', 'delivery_failed')", name="incidents_status_known"
        ),
        sa.CheckConstraint("region_code ~ '^[0-9]{6}$'", name="incidents_region_code_format"),
        schema="reporting",
    )
    op.create_index(
        "incidents_tenant_create_time",
        "incidents",
        ["tenant_id", "create_time", "incident_id"],
        schema="reporting",
    )
    op.create_index("incidents_create_time", "incidents", ["create_time", "incident_id"], schema="reporting")

    op.create_table(
        "outbox",
        sa.Column("id", sa.BigInteger(), sa.Identity(always=False), primary_key=True),
        sa.Column("event_id", sa.Uuid(), nullable=False),
        sa.Column("destination", sa.Text(), nullable=False),
        sa.Column("payload", sa.LargeBinary(), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False, server_default=sa.func.now()),
        sa.Column("state", sa.Text(), nullable=False, server_default=sa.text("'pending'")),
        sa.Column("attempts", sa.Integer(), nullable=False, server_default=sa.text("0")),
        sa.Column("next_attempt_at", sa.DateTime(timezone=True), nullable=False, server_default=sa.func.now()),
        sa.Column("last_error", sa.Text()),
        sa.Column("delivered_at", sa.DateTime(timezone=True)),
        sa.Column("receipt", sa.Text()),
        sa.Column("claimed_by", sa.Text()),
        sa.Column("claimed_until", sa.DateTime(timezone=True)),
        sa.UniqueConstraint("event_id", name="outbox_event_id_key"),
        sa.CheckConstraint("state in ('pending', 'delivered', 'dead')", name="outbox_state_check"),
        sa.CheckConstraint("attempts >= 0", name="outbox_attempts_check"),
        schema="reporting",
    )
    op.create_index("outbox_state_next_attempt_at_idx", "outbox", ["state", "next_attempt_at"], schema="reporting")


def downgrade() -> None:
    op.drop_table("outbox", schema="reporting")
    op.drop_table("incidents", schema="reporting")
