"""One-time codes (hashed at rest), send limits and verification lockouts.

The tables belong to avgate_identity, which owns the schema and runs this
migration: no other role is granted anything on them.

Revision ID: a1b2c3d4e5f6
Revises: c41f7e2a9d06
Create Date: 2026-12-10
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

revision: str = "a1b2c3d4e5f6"
down_revision: str | Sequence[str] | None = "c41f7e2a9d06"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table(
        "verification_codes",
        sa.Column("code_id", sa.Uuid(), primary_key=True),
        sa.Column("flow_id", sa.Text(), nullable=False),
        sa.Column("phone_index", sa.LargeBinary(), nullable=False),
        sa.Column("key_id", sa.String(64), nullable=False),
        sa.Column("code_hash", sa.LargeBinary(32), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("expires_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("attempts", sa.Integer(), nullable=False, server_default=sa.text("0")),
        sa.Column("max_attempts", sa.Integer(), nullable=False),
        sa.Column("state", sa.String(16), nullable=False, server_default=sa.text("'active'")),
        sa.Column("finished_at", sa.DateTime(timezone=True)),
        sa.CheckConstraint(
            "state in ('active', 'used', 'exhausted', 'expired', 'superseded')",
            name="verification_codes_state_check",
        ),
        sa.CheckConstraint("attempts >= 0 and attempts <= max_attempts", name="verification_codes_attempts_check"),
        schema="identity",
    )
    op.create_index(
        "verification_codes_one_active_per_flow",
        "verification_codes",
        ["flow_id"],
        unique=True,
        schema="identity",
        postgresql_where=sa.text("state = 'active'"),
    )
    op.create_index("verification_codes_expires_at_idx", "verification_codes", ["expires_at"], schema="identity")

    op.create_table(
        "send_limits",
        sa.Column("scope", sa.String(16), nullable=False),
        sa.Column("subject", sa.LargeBinary(), nullable=False),
        sa.Column(
            "recent",
            postgresql.ARRAY(sa.DateTime(timezone=True)),
            nullable=False,
            server_default=sa.text("'{}'"),
        ),
        sa.Column("updated_at", sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("scope", "subject", name="send_limits_pkey"),
        sa.CheckConstraint("scope in ('phone', 'address')", name="send_limits_scope_check"),
        schema="identity",
    )
    op.create_index("send_limits_updated_at_idx", "send_limits", ["updated_at"], schema="identity")

    op.create_table(
        "verification_failures",
        sa.Column("tenant_id", sa.String(64), nullable=False),
        sa.Column("user_id", sa.Text(), nullable=False),
        sa.Column("address_key", sa.LargeBinary(), nullable=False),
        sa.Column("failed_attempts", sa.Integer(), nullable=False, server_default=sa.text("0")),
        sa.Column("level", sa.Integer(), nullable=False, server_default=sa.text("0")),
        sa.Column("locked_until", sa.DateTime(timezone=True)),
        sa.Column("last_failure_at", sa.DateTime(timezone=True)),
        sa.Column("last_success_at", sa.DateTime(timezone=True)),
        sa.PrimaryKeyConstraint("tenant_id", "user_id", "address_key", name="verification_failures_pkey"),
        sa.CheckConstraint("failed_attempts >= 0 and level >= 0", name="verification_failures_counts_check"),
        schema="identity",
    )


def downgrade() -> None:
    op.drop_table("verification_failures", schema="identity")
    op.drop_table("send_limits", schema="identity")
    op.drop_table("verification_codes", schema="identity")
