"""Writes regulator-feed items inside the transaction that changed an incident.

The incident stores call it through their `ChangeLog` interface (a
creation, an acknowledgement, evidence attached, a status the deliveries
settled), so an item commits with its change or not at all; the composition
root hands it to them. Reading the feed is services.reporting.feed.store's.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

from sqlalchemy.ext.asyncio import AsyncConnection

from avgate.kernel.db import transaction_driver
from services.reporting.incidents.domain import Incident, IncidentChange
from services.reporting.incidents.wire import incident_payload
from services.reporting.models import feed_items


class FeedWriter:
    """Writes regulator-feed items inside the caller's transaction.

    `encode` turns an incident into the bytes the feed serves (the
    serialized avgate.reporting.v1.Incident), so the stores stay free of the
    wire format and the feed streams without converting. Every change of an
    incident that a regulator should see goes through `write` or `write_on_driver`.
    """

    def __init__(self, encode: Callable[[Incident], bytes] = incident_payload):
        self._encode = encode

    async def write(self, conn: AsyncConnection, kind: IncidentChange, changed: Sequence[Incident]) -> None:
        if not changed:
            return
        await conn.execute(feed_items.insert(), [self.row(kind, i) for i in changed])

    async def write_on_driver(self, conn: Any, kind: IncidentChange, changed: Sequence[Incident]) -> None:
        """`write` for a change made below the SQLAlchemy layer (statuses after delivery): `conn` is
        a SQLAlchemy or psycopg connection with its transaction begun."""
        if not changed:
            return
        driver = await transaction_driver(conn, "FeedWriter.write_on_driver")
        rows = [self.row(kind, i) for i in changed]
        columns = list(rows[0])
        async with driver.cursor() as cur:
            await cur.executemany(
                f"insert into reporting.feed_items ({', '.join(columns)}) values ({', '.join(['%s'] * len(columns))})",
                [tuple(r[c] for c in columns) for r in rows],
            )

    def row(self, kind: IncidentChange, incident: Incident) -> dict[str, Any]:
        return {
            "kind": kind.value,
            "incident_id": incident.incident_id,
            "tenant_id": incident.tenant_id,
            "category": incident.input.category.value if incident.input.category else "",
            "source": incident.input.source.value if incident.input.source else "",
            "status": incident.status.value,
            "route_departments": list(incident.departments),
            "route_regions": list(incident.region_codes),
            "create_time": incident.create_time,
            "payload": self._encode(incident),
        }
