"""Baseline of the screening schema's history (the schema itself is created by
`avgate db bootstrap`, owned by the avgate_screening role).

Revision ID: e86746ae713d
Revises:
Create Date: 2026-11-29
"""

from collections.abc import Sequence

revision: str = "e86746ae713d"
down_revision: str | Sequence[str] | None = None
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    pass


def downgrade() -> None:
    pass
