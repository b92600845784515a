"""Rate limits an operator sets: per API key (two columns) and per tenant (a table).

Revision ID: 8d2e6b4a1c57
Revises: 3f1c0a7e9b21
Create Date: 2026-12-03
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "8d2e6b4a1c57"
down_revision: str | Sequence[str] | None = "3f1c0a7e9b21"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

KEY_LIMIT_SHAPE = (
    "(rate_limit_rps is null) = (rate_limit_burst is null)"
    " and (rate_limit_rps is null or (rate_limit_rps > 0 and rate_limit_burst >= 1))"
)


def upgrade() -> None:
    op.add_column("api_keys", sa.Column("rate_limit_rps", sa.Double()), schema="gateway")
    op.add_column("api_keys", sa.Column("rate_limit_burst", sa.Integer()), schema="gateway")
    op.create_check_constraint("api_keys_rate_limit", "api_keys", KEY_LIMIT_SHAPE, schema="gateway")
    op.create_table(
        "tenant_rate_limits",
        sa.Column("tenant_id", sa.String(64), primary_key=True),
        sa.Column("requests_per_second", sa.Double(), nullable=False),
        sa.Column("burst", sa.Integer(), nullable=False),
        sa.Column("update_time", sa.DateTime(timezone=True), nullable=False),
        sa.Column("updated_by", sa.Text(), nullable=False),
        sa.CheckConstraint("requests_per_second > 0 and burst >= 1", name="tenant_rate_limits_positive"),
        schema="gateway",
    )


def downgrade() -> None:
    op.drop_table("tenant_rate_limits", schema="gateway")
    op.drop_constraint("api_keys_rate_limit", "api_keys", schema="gateway", type_="check")
    op.drop_column("api_keys", "rate_limit_burst", schema="gateway")
    op.drop_column("api_keys", "rate_limit_rps", schema="gateway")
