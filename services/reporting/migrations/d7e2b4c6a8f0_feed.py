"""The regulator feed (one row per incident change, in visibility order) and signed exports.

Revision ID: d7e2b4c6a8f0
Revises: b3e5d1a7c902
Create Date: 2026-11-30
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

revision: str = "d7e2b4c6a8f0"
down_revision: str | Sequence[str] | None = "b3e5d1a7c902"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table(
        "feed_items",
        sa.Column("id", sa.BigInteger(), sa.Identity(always=False), primary_key=True),
        sa.Column(
            "txid", sa.BigInteger(), nullable=False, server_default=sa.text("(pg_current_xact_id()::text)::bigint")
        ),
        sa.Column("kind", sa.String(24), nullable=False),
        sa.Column("incident_id", sa.String(40), nullable=False),
        sa.Column("tenant_id", sa.String(64), nullable=False),
        sa.Column("category", sa.String(40), nullable=False),
        sa.Column("source", sa.String(32), nullable=False),
        sa.Column("status", sa.String(24), nullable=False),
        sa.Column("route_departments", postgresql.ARRAY(sa.String(32)), nullable=False),
        sa.Column("route_regions", postgresql.ARRAY(sa.String(6)), nullable=False),
        sa.Column("create_time", sa.DateTime(timezone=True), nullable=False),
        sa.Column("publish_time", sa.DateTime(timezone=True), nullable=False, server_default=sa.func.now()),
        sa.Column("payload", sa.LargeBinary(), nullable=False),
        sa.CheckConstraint("kind in ('incident_created', 'incident_updated')", name="feed_items_kind_known"),
        schema="reporting",
    )
    op.create_index("feed_items_order", "feed_items", ["txid", "id"], schema="reporting")
    op.create_index("feed_items_incident", "feed_items", ["incident_id", "id"], schema="reporting")

    op.create_table(
        "exports",
        sa.Column("export_id", sa.String(40), primary_key=True),
        sa.Column("requested_by", sa.Text(), nullable=False),
        sa.Column("request_id", sa.String(128), nullable=False),
        sa.Column("request_hash", sa.LargeBinary(32), nullable=False),
        sa.Column("principal", postgresql.JSONB(), nullable=False),
        sa.Column("filter", postgresql.JSONB(), nullable=False),
        sa.Column("state", sa.String(16), nullable=False),
        sa.Column("item_count", sa.BigInteger(), nullable=False, server_default=sa.text("0")),
        sa.Column("files", postgresql.JSONB(), nullable=False, server_default=sa.text("'[]'::jsonb")),
        sa.Column("manifest_signature", sa.LargeBinary()),
        sa.Column("signing_key_name", sa.Text(), nullable=False, server_default=""),
        sa.Column("tree_size", sa.BigInteger()),
        sa.Column("checkpoint", sa.LargeBinary()),
        sa.Column("error", sa.Text()),
        sa.Column("ledger_entry_id", sa.Uuid(), nullable=False),
        sa.Column("create_time", sa.DateTime(timezone=True), nullable=False),
        sa.Column("complete_time", sa.DateTime(timezone=True)),
        sa.Column("expire_time", sa.DateTime(timezone=True)),
        sa.Column("lease_until", sa.DateTime(timezone=True)),
        sa.UniqueConstraint("requested_by", "request_id", name="exports_requested_by_request_id_key"),
        sa.CheckConstraint("state in ('pending', 'ready', 'failed', 'expired')", name="exports_state_known"),
        schema="reporting",
    )
    op.create_index(
        "exports_pending",
        "exports",
        ["create_time"],
        schema="reporting",
        postgresql_where=sa.text("state = 'pending'"),
    )


def downgrade() -> None:
    op.drop_table("exports", schema="reporting")
    op.drop_table("feed_items", schema="reporting")
