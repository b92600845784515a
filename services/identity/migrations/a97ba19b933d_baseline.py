"""Baseline of the identity schema's history (the schema itself is created by
`avgate db bootstrap`, owned by the avgate_identity role).

Revision ID: a97ba19b933d
Revises:
Create Date: 2026-11-29
"""

from collections.abc import Sequence

revision: str = "a97ba19b933d"
down_revision: str | Sequence[str] | None = None
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    pass


def downgrade() -> None:
    pass
