"""The outbox of incidents handed to reporting (avgate.kernel.reporting_handoff).

The table belongs to avgate_complaints, which owns the schema and runs this
migration: only the complaints process writes and dispatches it, so no other
role is granted anything on it.

Revision ID: f63b9c4a2e18
Revises: 14c84d1eef90
Create Date: 2026-12-04
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "f63b9c4a2e18"
down_revision: str | Sequence[str] | None = "14c84d1eef90"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
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
        schema="complaints",
    )
    op.create_index("outbox_state_next_attempt_at_idx", "outbox", ["state", "next_attempt_at"], schema="complaints")


def downgrade() -> None:
    op.drop_table("outbox", schema="complaints")
