"""Deliveries: what each report to an authority is about, and its attempts.

The kernel's outbox table keeps its columns; reporting's own knowledge of a
delivery (tenant, incident, department, region, replays) and its attempt
history live in two tables keyed by the outbox event id. Reports queued
before this revision get their subject rows from the incidents they carry.

Revision ID: f9b4d6e8c0a2
Revises: e8a3c5d7b9f1
Create Date: 2026-11-30
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "f9b4d6e8c0a2"
down_revision: str | Sequence[str] | None = "e8a3c5d7b9f1"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table(
        "delivery_subjects",
        sa.Column("event_id", sa.Uuid(), primary_key=True),
        sa.Column("tenant_id", sa.String(64), nullable=False),
        sa.Column("subject_kind", sa.String(16), nullable=False),
        sa.Column("subject_id", sa.String(40), nullable=False),
        sa.Column("department", sa.String(32), nullable=False),
        sa.Column("region_code", sa.String(6), nullable=False),
        sa.Column("create_time", sa.DateTime(timezone=True), nullable=False, server_default=sa.func.now()),
        sa.Column("replay_count", sa.Integer(), nullable=False, server_default=sa.text("0")),
        sa.ForeignKeyConstraint(
            ["event_id"],
            ["reporting.outbox.event_id"],
            name="delivery_subjects_event_id_fkey",
            ondelete="CASCADE",
        ),
        sa.CheckConstraint("subject_kind in ('incident', 'export', 'tree_head')", name="delivery_subjects_kind_known"),
        sa.CheckConstraint("replay_count >= 0", name="delivery_subjects_replay_count_check"),
        schema="reporting",
    )
    op.create_index(
        "delivery_subjects_tenant_create_time",
        "delivery_subjects",
        ["tenant_id", "create_time", "event_id"],
        schema="reporting",
    )
    op.create_index(
        "delivery_subjects_create_time", "delivery_subjects", ["create_time", "event_id"], schema="reporting"
    )
    op.create_index("delivery_subjects_subject", "delivery_subjects", ["subject_id"], schema="reporting")

    op.create_table(
        "delivery_attempts",
        sa.Column("id", sa.BigInteger(), sa.Identity(always=False), primary_key=True),
        sa.Column("event_id", sa.Uuid(), nullable=False),
        sa.Column("attempt", sa.Integer(), nullable=False),
        sa.Column("start_time", sa.DateTime(timezone=True)),
        sa.Column("duration_seconds", sa.Double(), nullable=False),
        sa.Column("outcome", sa.String(16), nullable=False),
        sa.Column("refused", sa.Boolean(), nullable=False, server_default=sa.text("false")),
        sa.Column("http_status", sa.Integer()),
        sa.Column("error", sa.Text()),
        sa.ForeignKeyConstraint(
            ["event_id"],
            ["reporting.outbox.event_id"],
            name="delivery_attempts_event_id_fkey",
            ondelete="CASCADE",
        ),
        sa.CheckConstraint("outcome in ('delivered', 'retry', 'dead')", name="delivery_attempts_outcome_known"),
        schema="reporting",
    )
    op.create_index("delivery_attempts_event_id", "delivery_attempts", ["event_id", "id"], schema="reporting")

    # Reports queued before this revision: their subject is the incident their payload names.
    op.execute(
        """
        insert into reporting.delivery_subjects
            (event_id, tenant_id, subject_kind, subject_id, department, region_code, create_time)
        select o.event_id, i.tenant_id, 'incident', i.incident_id,
               substr(o.destination, length('authority:') + 1), i.region_code, o.created_at
        from reporting.outbox o
        join reporting.incidents i
          on i.incident_id = convert_from(o.payload, 'UTF8')::jsonb ->> 'incident_id'
        where o.destination like 'authority:%'
        on conflict do nothing
        """
    )


def downgrade() -> None:
    op.drop_table("delivery_attempts", schema="reporting")
    op.drop_table("delivery_subjects", schema="reporting")
