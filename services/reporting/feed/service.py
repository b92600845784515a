"""The regulator feed's use cases: follow, list a page, get one item.

Who: regulators (only incidents routed to their departments and regions)
and operators (everything). Providers use ListIncidents for their own.

Order and resumption: see services.reporting.feed.cursor and
services.reporting.models.feed_items — the feed hands out only items whose
transactions are older than every running one, so a resumed reader misses
nothing and sees nothing twice.

Memory: a follower holds at most one page of items; it fetches the next page
only after the previous one was written to the stream, and gRPC flow control
makes a write wait for a slow reader. A slow reader therefore reads from the
database at its own pace ("catch-up") instead of an in-memory buffer growing.

Records (Art. 17 access trail): one ledger entry when a follow session
opens, one per range of items it delivered (every `range_items` items and
when it ends), one per listed page and one per item read with get — never one
per streamed incident.
"""

from __future__ import annotations

import asyncio
import builtins
import logging
from collections.abc import AsyncGenerator, Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Protocol

from avgate.kernel.errors import FieldChecker, FieldViolation, InvalidArgument, NotFound
from avgate.kernel.paging import check_page_size, page_limit
from avgate.kernel.principal import Principal, Role
from avgate.ledger.entry import LedgerEntry
from services.reporting.access import SUPERVISION
from services.reporting.feed.cursor import FeedCursor
from services.reporting.feed.store import FeedRow, FeedStore
from services.reporting.incidents.domain import IncidentFilter, IncidentQuery
from services.reporting.incidents.service import check_filter, scoped_query
from services.reporting.ledger.store import Head

log = logging.getLogger(__name__)

ACCESS_BASIS = SUPERVISION
MIN_HEARTBEAT = timedelta(seconds=1)
MAX_HEARTBEAT = timedelta(minutes=5)
DEFAULT_HEARTBEAT = timedelta(seconds=15)


class Heads(Protocol):
    async def latest_head(self) -> Head | None: ...

    async def head(self, tree_size: int) -> Head | None: ...


@dataclass(frozen=True)
class FeedItem:
    cursor: FeedCursor
    kind: str  # "incident_created" | "incident_updated" | "tree_head"
    publish_time: datetime
    payload: bytes = b""  # the serialized incident, for incident kinds
    head: Head | None = None  # for "tree_head"


@dataclass(frozen=True)
class Heartbeat:
    server_time: datetime
    cursor: FeedCursor


@dataclass(frozen=True)
class FeedRequest:
    incidents: IncidentFilter = field(default_factory=IncidentFilter)
    exclude_tree_heads: bool = False


def _now() -> datetime:
    return datetime.now(UTC)


class FeedService:
    def __init__(
        self,
        store: FeedStore,
        heads: Heads,
        *,
        clock: Callable[[], datetime] = _now,
        follow_page: int = 1000,
        poll_interval: float = 0.5,
        head_check_interval: float = 1.0,
        range_items: int = 10_000,
    ):
        self._store = store
        self._heads = heads
        self._clock = clock
        self.follow_page = follow_page
        self._poll = poll_interval
        self._head_check = head_check_interval
        self._range_items = range_items

    # ----------------------------------------------------------------------- access

    def _query(self, caller: Principal, request: FeedRequest) -> IncidentQuery | None:
        caller.require_role(Role.REGULATOR, Role.OPERATOR)
        check = FieldChecker()
        check_filter(check, request.incidents, "filter.incidents.")
        check.require(
            not request.incidents.content_id and not request.incidents.user_id,
            "filter.incidents",
            "the feed filters by category, department, region, tenant, status, source and time only",
        )
        check.raise_if_any()
        return scoped_query(caller, request.incidents)

    async def _audit(self, caller: Principal, action: str, subject_id: str, data: dict[str, object]) -> None:
        await self._store.record(
            LedgerEntry(
                action=action,
                subject_type="feed",
                subject_id=subject_id,
                actor=caller,
                legal_basis=ACCESS_BASIS,
                tenant_id="",
                data=data,
            )
        )

    # ----------------------------------------------------------------------- reads

    async def _next_items(self, query: IncidentQuery | None, cursor: FeedCursor, limit: int) -> builtins.list[FeedItem]:
        if query is None:  # nothing in the caller's reach
            return []
        rows = await self._store.page(query, after=cursor.position, limit=limit)
        return [self._incident_item(row, cursor.tree_size) for row in rows]

    @staticmethod
    def _incident_item(row: FeedRow, tree_size: int) -> FeedItem:
        return FeedItem(FeedCursor(row.txid, row.item_id, tree_size), row.kind, row.publish_time, payload=row.payload)

    async def _newer_head(self, cursor: FeedCursor) -> FeedItem | None:
        head = await self._heads.latest_head()
        if head is None or head.tree_size <= cursor.tree_size:
            return None
        return FeedItem(
            FeedCursor(cursor.txid, cursor.item_id, head.tree_size, is_head=True),
            "tree_head",
            head.signed_at,
            head=head,
        )

    async def list(
        self, caller: Principal, request: FeedRequest, *, cursor: str, page_size: int, page_token: str
    ) -> tuple[builtins.list[FeedItem], str]:
        """A page after `cursor` (or `page_token`, which continues a listing); the next token when full."""
        check = FieldChecker()
        check_page_size(check, page_size)
        check.raise_if_any()
        query = self._query(caller, request)
        start = FeedCursor.decode(page_token, "page.page_token") if page_token else FeedCursor.decode(cursor)
        limit = page_limit(page_size)
        items = await self._next_items(query, start, limit)
        position = items[-1].cursor if items else start
        if not request.exclude_tree_heads and len(items) < limit:
            head = await self._newer_head(position)
            if head is not None:
                items.append(head)
        next_token = items[-1].cursor.encode() if len(items) >= limit else ""
        if items:
            await self._audit(
                caller,
                "feed.list",
                f"{start.encode()}..{items[-1].cursor.encode()}",
                {"from": start.encode(), "to": items[-1].cursor.encode(), "count": len(items)},
            )
        return items, next_token

    async def get(self, caller: Principal, cursor_text: str) -> FeedItem:
        caller.require_role(Role.REGULATOR, Role.OPERATOR)
        if not cursor_text:
            raise InvalidArgument(FieldViolation("cursor", "must be set"))
        cursor = FeedCursor.decode(cursor_text)
        item: FeedItem | None = None
        if cursor.is_head:
            head = await self._heads.head(cursor.tree_size)
            if head is not None:
                item = FeedItem(cursor, "tree_head", head.signed_at, head=head)
        else:
            query = scoped_query(caller, IncidentFilter())
            row = await self._store.get(query, cursor.txid, cursor.item_id) if query is not None else None
            if row is not None:
                item = self._incident_item(row, cursor.tree_size)
        if item is None:
            raise NotFound("feed_item", cursor_text)
        await self._audit(caller, "feed.get", cursor_text, {"kind": item.kind})
        return item

    async def follow(
        self, caller: Principal, request: FeedRequest, *, cursor: str, heartbeat: timedelta | None = None
    ) -> AsyncGenerator[FeedItem | Heartbeat, None]:
        """Items after `cursor` in feed order, then new ones as they become final, with heartbeats when idle.

        Validation happens before the first item: an invalid request fails the call, not the stream.
        """
        interval = heartbeat or DEFAULT_HEARTBEAT
        if not MIN_HEARTBEAT <= interval <= MAX_HEARTBEAT:
            raise InvalidArgument(FieldViolation("heartbeat_interval", "must be 1 s to 5 min"))
        query = self._query(caller, request)
        start = FeedCursor.decode(cursor)
        await self._audit(caller, "feed.follow", start.encode(), {"from": start.encode()})
        return self._follow(caller, request, query, start, interval)

    async def _follow(
        self,
        caller: Principal,
        request: FeedRequest,
        query: IncidentQuery | None,
        position: FeedCursor,
        interval: timedelta,
    ) -> AsyncGenerator[FeedItem | Heartbeat, None]:
        range_start, sent = position, 0
        loop = asyncio.get_running_loop()
        last_sent = loop.time()
        next_head_check = 0.0
        try:
            while True:
                items = await self._next_items(query, position, self.follow_page)
                if not request.exclude_tree_heads and loop.time() >= next_head_check:
                    next_head_check = loop.time() + self._head_check
                    head = await self._newer_head(items[-1].cursor if items else position)
                    if head is not None:
                        items.append(head)
                for item in items:
                    yield item
                    position = item.cursor
                    sent += 1
                if items:
                    last_sent = loop.time()
                    if sent >= self._range_items:
                        await self._close_range(caller, range_start, position, sent)
                        range_start, sent = position, 0
                    if len(items) >= self.follow_page:
                        continue  # catching up: read on at the reader's pace
                if loop.time() - last_sent >= interval.total_seconds():
                    yield Heartbeat(self._clock(), position)
                    last_sent = loop.time()
                await asyncio.sleep(self._poll)
        finally:
            if sent:
                # The stream may be ending because the reader went away (cancellation): write the
                # last range anyway, shielded, so the access trail has no gap. A failure here is
                # logged, not raised: raising would replace the stream's own ending.
                try:
                    await asyncio.shield(self._close_range(caller, range_start, position, sent))
                except Exception:
                    log.exception("feed: could not record the last delivered range in the ledger")

    async def _close_range(self, caller: Principal, start: FeedCursor, end: FeedCursor, count: int) -> None:
        await self._audit(
            caller,
            "feed.range",
            f"{start.encode()}..{end.encode()}",
            {"from": start.encode(), "to": end.encode(), "count": count},
        )
