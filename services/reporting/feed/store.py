"""Reads of the regulator feed (writes happen in the changes' own transactions,
through services.reporting.feed.writer.FeedWriter)."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Protocol

from sqlalchemy import BigInteger, ColumnClause, and_, literal_column, select, tuple_
from sqlalchemy.ext.asyncio import AsyncEngine

from avgate.ledger.append import append as ledger_append
from avgate.ledger.entry import LedgerEntry
from services.reporting.incidents.domain import IncidentQuery
from services.reporting.incidents.store import query_conditions
from services.reporting.models import feed_items

# Transactions older than every running one are finished: their rows are final.
_FINISHED: ColumnClause[int] = literal_column(
    "(pg_snapshot_xmin(pg_current_snapshot())::text)::bigint", type_=BigInteger()
)


@dataclass(frozen=True)
class FeedRow:
    item_id: int
    txid: int
    kind: str
    incident_id: str
    publish_time: datetime
    payload: bytes


class FeedStore(Protocol):
    async def page(self, query: IncidentQuery, *, after: tuple[int, int], limit: int) -> list[FeedRow]:
        """Up to `limit` final items after `after` in feed order that `query` admits."""
        ...

    async def get(self, query: IncidentQuery, txid: int, item_id: int) -> FeedRow | None: ...

    async def record(self, audit: LedgerEntry) -> None:
        """Writes a ledger entry (a regulator's access) in its own transaction."""
        ...


_COLUMNS = (
    feed_items.c.id,
    feed_items.c.txid,
    feed_items.c.kind,
    feed_items.c.incident_id,
    feed_items.c.publish_time,
    feed_items.c.payload,
)


class SqlFeedStore:
    def __init__(self, engine: AsyncEngine):
        self._engine = engine

    async def page(self, query: IncidentQuery, *, after: tuple[int, int], limit: int) -> list[FeedRow]:
        c = feed_items.c
        statement = (
            select(*_COLUMNS)
            .where(
                tuple_(c.txid, c.id) > tuple_(*after),
                c.txid < _FINISHED,
                *query_conditions(feed_items, query),
            )
            .order_by(c.txid, c.id)
            .limit(limit)
        )
        async with self._engine.connect() as conn:
            rows = (await conn.execute(statement)).all()
        return [FeedRow(r[0], r[1], r[2], r[3], r[4], bytes(r[5])) for r in rows]

    async def get(self, query: IncidentQuery, txid: int, item_id: int) -> FeedRow | None:
        c = feed_items.c
        statement = select(*_COLUMNS).where(
            and_(c.id == item_id, c.txid == txid),
            c.txid < _FINISHED,
            *query_conditions(feed_items, query),
        )
        async with self._engine.connect() as conn:
            row = (await conn.execute(statement)).first()
        return FeedRow(row[0], row[1], row[2], row[3], row[4], bytes(row[5])) if row is not None else None

    async def record(self, audit: LedgerEntry) -> None:
        async with self._engine.begin() as conn:
            await ledger_append(conn, audit)
