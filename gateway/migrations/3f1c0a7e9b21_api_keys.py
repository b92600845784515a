"""API keys, stored hashed.

Revision ID: 3f1c0a7e9b21
Revises:
Create Date: 2026-11-29
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "3f1c0a7e9b21"
down_revision: str | Sequence[str] | None = None
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table(
        "api_keys",
        sa.Column("key_id", sa.String(32), primary_key=True),
        sa.Column("display_name", sa.Text(), nullable=False),
        sa.Column("role", sa.String(16), nullable=False),
        sa.Column("tenant_id", sa.String(64)),
        sa.Column("regulator_departments", sa.ARRAY(sa.String(32))),
        sa.Column("regulator_regions", sa.ARRAY(sa.String(6))),
        sa.Column("secret_hash", sa.LargeBinary(32), nullable=False),
        sa.Column("previous_secret_hash", sa.LargeBinary(32)),
        sa.Column("previous_secret_expire_time", sa.DateTime(timezone=True)),
        sa.Column("create_time", sa.DateTime(timezone=True), nullable=False),
        sa.Column("created_by", sa.Text(), nullable=False),
        sa.Column("expire_time", sa.DateTime(timezone=True)),
        sa.Column("revoke_time", sa.DateTime(timezone=True)),
        sa.Column("revoke_reason", sa.Text()),
        sa.Column("last_used_time", sa.DateTime(timezone=True)),
        sa.Column("development", sa.Boolean(), nullable=False, server_default="false"),
        sa.CheckConstraint("role in ('provider', 'regulator', 'public', 'operator')", name="api_keys_role_known"),
        sa.CheckConstraint("(role = 'provider') = (tenant_id is not null)", name="api_keys_tenant_iff_provider"),
        schema="gateway",
    )
    op.create_index("api_keys_tenant_created", "api_keys", ["tenant_id", "create_time", "key_id"], schema="gateway")


def downgrade() -> None:
    op.drop_index("api_keys_tenant_created", table_name="api_keys", schema="gateway")
    op.drop_table("api_keys", schema="gateway")
