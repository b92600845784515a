"""API keys bound to a client certificate: the certificate's SHA-256 on the key.

Revision ID: 7c2e5d19a4b8
Revises: 8d2e6b4a1c57
Create Date: 2026-12-03
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "7c2e5d19a4b8"
down_revision: str | Sequence[str] | None = "8d2e6b4a1c57"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.add_column("api_keys", sa.Column("client_certificate_sha256", sa.String(64)), schema="gateway")
    op.create_check_constraint(
        "api_keys_certificate_sha256_hex",
        "api_keys",
        "client_certificate_sha256 ~ '^[0-9a-f]{64}$'",
        schema="gateway",
    )


def downgrade() -> None:
    op.drop_constraint("api_keys_certificate_sha256_hex", "api_keys", type_="check", schema="gateway")
    op.drop_column("api_keys", "client_certificate_sha256", schema="gateway")
