"""The one call every service uses to record a change: `append`.

It runs inside the caller's own transaction, on the caller's connection, so
the change and its record commit together or not at all. It only inserts
into the ledger's queue; the sequencer integrates queued entries into the
tree later, so writers never wait for it. A retried append with the same
idempotency key inserts nothing (and the sequencer drops a duplicate that
slipped past the queue after its original was already integrated).

The statement goes straight to the psycopg connection under the caller's
SQLAlchemy connection: the layers above the driver cost more than the
insert itself (see docs/BENCHMARKS.md).
"""

from __future__ import annotations

from typing import Any

from avgate.kernel.db import transaction_driver
from avgate.ledger.entry import LedgerEntry, canonical_bytes

INSERT_QUEUE = (
    "insert into ledger.queue (entry_id, idempotency_key, payload) values (%s, %s, %s) "
    # No conflict target: naming one would need SELECT on the queue, which writers must not have.
    # The only unique keys are the idempotency key and the generated queue id.
    "on conflict do nothing"
)


async def append(conn: Any, entry: LedgerEntry) -> None:
    """Queues `entry` in the caller's open transaction on `conn`.

    `conn` is a SQLAlchemy AsyncConnection or a psycopg AsyncConnection with a
    transaction begun; committing it commits the entry with the change.
    """
    payload = canonical_bytes(entry)
    driver = await transaction_driver(conn, "append")
    await driver.execute(INSERT_QUEUE, (entry.entry_id, entry.key, payload))
