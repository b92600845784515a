"""Baseline of the complaints schema's history (the schema itself is created by
`avgate db bootstrap`, owned by the avgate_complaints role).

Revision ID: 14c84d1eef90
Revises:
Create Date: 2026-11-29
"""

from collections.abc import Sequence

revision: str = "14c84d1eef90"
down_revision: str | Sequence[str] | None = None
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    pass


def downgrade() -> None:
    pass
