"""Tables of the complaints schema (none yet: its issue adds them with migrations)."""

from __future__ import annotations

from sqlalchemy import MetaData

metadata = MetaData(schema="complaints")
