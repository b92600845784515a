"""Tables of the identity schema: so far the outbox of incidents handed to reporting
(avgate.kernel.reporting_handoff); its issue adds the rest with migrations."""

from __future__ import annotations

from sqlalchemy import MetaData

from avgate.kernel.outbox import outbox_table

SCHEMA = "identity"

metadata = MetaData(schema=SCHEMA)

outbox = outbox_table(metadata)
