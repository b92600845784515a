"""Baseline of the reporting schema's history (the schema itself is created by
`avgate db bootstrap`, owned by the avgate_reporting role).

Revision ID: 79d23459c14a
Revises:
Create Date: 2026-11-29
"""

from collections.abc import Sequence

revision: str = "79d23459c14a"
down_revision: str | Sequence[str] | None = None
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    pass


def downgrade() -> None:
    pass
