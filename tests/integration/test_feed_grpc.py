"""RegulatorFeedService on the real reporting server (real socket, real PostgreSQL,
its sequencer signing tree heads): resumption is exact, scope holds, the feed
follows live, carries verifiable tree heads, and regulator access is ledgered."""

from __future__ import annotations

import asyncio
import hashlib
import uuid
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from typing import Any

import grpc
import psycopg
import pytest
from google.protobuf import duration_pb2
from google.rpc import error_details_pb2

from avgate.common.v1 import common_pb2
from avgate.kernel import convert
from avgate.kernel.db import create_engine_for, libpq_url
from avgate.kernel.principal import Principal, Role
from avgate.ledger.checkpoint import open_checkpoint
from avgate.reporting.v1 import reporting_pb2
from services.reporting.feed.service import FeedRequest, FeedService
from services.reporting.feed.store import SqlFeedStore
from services.reporting.feed.writer import FeedWriter
from services.reporting.incidents.domain import IncidentFilter, IncidentStatus
from services.reporting.incidents.store import set_incident_status
from tests.support import details, provider, regulator
from tests.support.reporting import CYBERSPACE_BEIJING, OPERATOR, ORIGIN, Feed, create_many, only_tenant


async def listed(f: Feed, tenant: str, at_least: int) -> list[reporting_pb2.FeedItem]:
    """The tenant's feed once it serves at least `at_least` items (see create_many on why it can lag)."""
    async with asyncio.timeout(30):
        while len(items := await f.list_all(OPERATOR, filter=only_tenant(tenant))) < at_least:
            await asyncio.sleep(0.1)
    return items


def incident_ids(items: list[reporting_pb2.FeedItem]) -> list[str]:
    return [i.incident.incident_id for i in items if i.HasField("incident")]


class TestOrderAndResumption:
    async def test_listing_pages_returns_every_item_once_in_creation_order(self, feed: Feed, tenant: str) -> None:
        created = await create_many(feed, tenant, 20)
        items = await feed.list_all(OPERATOR, filter=only_tenant(tenant))
        assert incident_ids(items) == created
        assert {i.kind for i in items} == {reporting_pb2.FEED_ITEM_KIND_INCIDENT_CREATED}

    async def test_listing_after_a_cursor_continues_exactly_after_it(self, feed: Feed, tenant: str) -> None:
        created = await create_many(feed, tenant, 12)
        items = await feed.list_all(OPERATOR, filter=only_tenant(tenant))
        after_fifth = await feed.list_all(OPERATOR, filter=only_tenant(tenant), cursor=items[4].cursor)
        assert incident_ids(after_fifth) == created[5:]

    async def test_follow_resumes_exactly_after_its_last_cursor_and_follows_live(self, feed: Feed, tenant: str) -> None:
        created = await create_many(feed, tenant, 6)
        request = reporting_pb2.FollowRequest(filter=only_tenant(tenant))
        call = feed.feed.Follow(request, metadata=feed.feed_auth(CYBERSPACE_BEIJING, "Follow"))
        seen: list[reporting_pb2.FeedItem] = []
        async for response in call:
            if response.HasField("item"):
                seen.append(response.item)
            if len(seen) == 4:
                break
        call.cancel()
        assert incident_ids(seen) == created[:4]

        later = await create_many(feed, tenant, 3)  # written while nobody follows
        resumed = feed.feed.Follow(
            reporting_pb2.FollowRequest(cursor=seen[-1].cursor, filter=only_tenant(tenant)),
            metadata=feed.feed_auth(CYBERSPACE_BEIJING, "Follow"),
        )
        rest: list[reporting_pb2.FeedItem] = []
        live: list[str] = []
        async for response in resumed:
            if response.HasField("item"):
                rest.append(response.item)
            if len(rest) == 5 and not live:
                live = await create_many(feed, tenant, 2)  # written while following
            if len(rest) == 7:
                break
        resumed.cancel()
        assert incident_ids(rest) == created[4:] + later + live

    async def test_an_item_of_a_transaction_still_running_holds_back_later_items(self, feed: Feed, tenant: str) -> None:
        """Cursor exactness: a reader must never pass an item that can still appear before it."""
        first = await create_many(feed, tenant, 1)
        async with await psycopg.AsyncConnection.connect(libpq_url(feed.database.url_for("reporting"))) as slow:
            # A transaction that started writing earlier (smaller txid) and commits later.
            await slow.execute(
                "insert into reporting.feed_items (kind, incident_id, tenant_id, category, source, status, "
                "route_departments, route_regions, create_time, payload) "
                "values ('incident_created', 'inc-slow', %s, 'other', 'provider', 'recorded', "
                "'{cyberspace}', '{110105}', now(), ''::bytea)",
                (tenant,),
            )
            later = await create_many(feed, tenant, 1, settle=False)
            before_commit = await feed.list_all(OPERATOR, filter=only_tenant(tenant))
            assert incident_ids(before_commit) == first, "the later commit must wait for the earlier transaction"
            await slow.commit()
        async with asyncio.timeout(30):
            while len(after_commit := await feed.list_all(OPERATOR, filter=only_tenant(tenant))) < 3:
                await asyncio.sleep(0.1)
        # The slow transaction's item (an empty payload) comes first: its transaction began first.
        assert incident_ids(after_commit) == [*first, "", *later]

    async def test_attached_evidence_is_an_update_item_carrying_the_evidence(self, feed: Feed, tenant: str) -> None:
        (incident_id,) = await create_many(feed, tenant, 1)
        data = b"frame dump " * 1000

        async def upload() -> AsyncIterator[reporting_pb2.AttachEvidenceRequest]:
            yield reporting_pb2.AttachEvidenceRequest(
                metadata=reporting_pb2.EvidenceUploadMetadata(
                    request_id="ev-1",
                    incident_id=incident_id,
                    media_type="application/octet-stream",
                    size_bytes=len(data),
                    sha256=hashlib.sha256(data).hexdigest(),
                    file_name="frames.bin",
                )
            )
            yield reporting_pb2.AttachEvidenceRequest(chunk=data)

        await feed.evidence.AttachEvidence(
            upload(), metadata=feed.auth(provider(tenant), "EvidenceService", "AttachEvidence")
        )
        items = await listed(feed, tenant, 2)
        assert [i.kind for i in items] == [
            reporting_pb2.FEED_ITEM_KIND_INCIDENT_CREATED,
            reporting_pb2.FEED_ITEM_KIND_INCIDENT_UPDATED,
        ]
        digest = hashlib.sha256(data).hexdigest()
        assert digest not in [e.sha256 for e in items[0].incident.evidence]
        assert digest in [e.sha256 for e in items[1].incident.evidence]

    async def test_a_status_change_after_delivery_is_an_update_item(self, feed: Feed, tenant: str) -> None:
        (incident_id,) = await create_many(feed, tenant, 1)
        engine = create_engine_for(feed.database.url_for("reporting"), pool_size=1)
        try:
            async with engine.begin() as conn:
                await set_incident_status(
                    conn,
                    {incident_id: IncidentStatus.DELIVERED},
                    actor=OPERATOR,
                    reason="delivered",
                    change_log=FeedWriter(),
                )
        finally:
            await engine.dispose()
        items = await listed(feed, tenant, 2)
        assert items[1].kind == reporting_pb2.FEED_ITEM_KIND_INCIDENT_UPDATED
        assert items[1].incident.incident_id == incident_id
        assert items[1].incident.status == reporting_pb2.INCIDENT_STATUS_DELIVERED

    async def test_an_acknowledgement_is_an_update_item_with_the_incident_as_of_then(
        self, feed: Feed, tenant: str
    ) -> None:
        (incident_id,) = await create_many(feed, tenant, 1)
        await feed.incidents.AcknowledgeIncident(
            reporting_pb2.AcknowledgeIncidentRequest(incident_id=incident_id, note="seen"),
            metadata=feed.auth(CYBERSPACE_BEIJING, "IncidentService", "AcknowledgeIncident"),
        )
        items = await listed(feed, tenant, 2)
        assert [i.kind for i in items] == [
            reporting_pb2.FEED_ITEM_KIND_INCIDENT_CREATED,
            reporting_pb2.FEED_ITEM_KIND_INCIDENT_UPDATED,
        ]
        assert items[0].incident.status == reporting_pb2.INCIDENT_STATUS_RECORDED
        assert items[1].incident.status == reporting_pb2.INCIDENT_STATUS_ACKNOWLEDGED
        assert items[1].incident.acknowledgements[0].note == "seen"


class TestScopeAndFilters:
    async def test_a_regulator_sees_only_its_departments_and_regions(self, feed: Feed, tenant: str) -> None:
        beijing = await create_many(feed, tenant, 2, region_code="110105")
        shanghai = await create_many(feed, tenant, 2, region_code="310101")
        rumor = await create_many(
            feed,
            tenant,
            1,
            category=reporting_pb2.INCIDENT_CATEGORY_RUMOR,
            prohibited_type=0,
            region_code="110105",
        )
        # Prohibited content goes to cyberspace and radio/television; rumours to cyberspace only.
        assert incident_ids(await feed.list_all(CYBERSPACE_BEIJING, filter=only_tenant(tenant))) == beijing + rumor
        radio_shanghai = regulator(("radio_television",), ("310000",))
        assert incident_ids(await feed.list_all(radio_shanghai, filter=only_tenant(tenant))) == shanghai
        culture_national = regulator(("culture_tourism",), ("000000",))
        assert incident_ids(await feed.list_all(culture_national, filter=only_tenant(tenant))) == []

    async def test_get_of_an_item_outside_scope_is_not_found(self, feed: Feed, tenant: str) -> None:
        await create_many(feed, tenant, 1, region_code="310101")
        (item,) = await feed.list_all(OPERATOR, filter=only_tenant(tenant))
        got = await feed.feed.GetFeedItem(
            reporting_pb2.GetFeedItemRequest(cursor=item.cursor), metadata=feed.feed_auth(OPERATOR, "GetFeedItem")
        )
        assert got.item == item
        with pytest.raises(grpc.aio.AioRpcError) as caught:
            await feed.feed.GetFeedItem(
                reporting_pb2.GetFeedItemRequest(cursor=item.cursor),
                metadata=feed.feed_auth(CYBERSPACE_BEIJING, "GetFeedItem"),
            )
        assert caught.value.code() == grpc.StatusCode.NOT_FOUND

    async def test_providers_have_no_feed(self, feed: Feed, tenant: str) -> None:
        with pytest.raises(grpc.aio.AioRpcError) as caught:
            await feed.feed.ListFeed(
                reporting_pb2.ListFeedRequest(), metadata=feed.feed_auth(provider(tenant), "ListFeed")
            )
        assert caught.value.code() == grpc.StatusCode.PERMISSION_DENIED

    async def test_category_and_time_filters(self, feed: Feed, tenant: str) -> None:
        prohibited = await create_many(feed, tenant, 2)
        rumor = await create_many(feed, tenant, 1, category=reporting_pb2.INCIDENT_CATEGORY_RUMOR, prohibited_type=0)

        async def listed_ids(**fields: Any) -> list[str]:
            return incident_ids(await feed.list_all(OPERATOR, filter=only_tenant(tenant, **fields)))

        assert await listed_ids(categories=[reporting_pb2.INCIDENT_CATEGORY_RUMOR]) == rumor
        assert await listed_ids(categories=[reporting_pb2.INCIDENT_CATEGORY_PROHIBITED_CONTENT]) == prohibited
        everything = await feed.list_all(OPERATOR, filter=only_tenant(tenant))
        assert incident_ids(everything) == prohibited + rumor
        created = {i.incident.incident_id: i.incident.create_time for i in everything}
        middle = created[prohibited[1]]
        # start_time is inclusive, end_time exclusive: split at the second incident's creation time
        assert await listed_ids(create_time_range=common_pb2.TimeRange(start_time=middle)) == [prohibited[1], *rumor]
        assert await listed_ids(create_time_range=common_pb2.TimeRange(end_time=middle)) == [prohibited[0]]
        future = convert.timestamp(datetime.now(UTC) + timedelta(hours=1))
        assert await listed_ids(create_time_range=common_pb2.TimeRange(start_time=future)) == []

    async def test_a_cursor_not_handed_out_is_invalid_argument_naming_the_field(self, feed: Feed) -> None:
        with pytest.raises(grpc.aio.AioRpcError) as caught:
            await feed.feed.ListFeed(
                reporting_pb2.ListFeedRequest(cursor="bm90LWEtY3Vyc29y"), metadata=feed.feed_auth(OPERATOR, "ListFeed")
            )
        assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        (bad_request,) = details(caught.value, error_details_pb2.BadRequest)
        assert [v.field for v in bad_request.field_violations] == ["cursor"]


class TestTreeHeadsHeartbeatsAndRecords:
    async def test_follow_carries_signed_tree_heads_that_verify(self, feed: Feed, tenant: str) -> None:
        await create_many(feed, tenant, 1)
        call = feed.feed.Follow(
            reporting_pb2.FollowRequest(
                filter=reporting_pb2.FeedFilter(incidents=reporting_pb2.IncidentFilter(tenant_ids=[tenant]))
            ),
            metadata=feed.feed_auth(OPERATOR, "Follow"),
        )
        head = None
        async with asyncio.timeout(30):
            async for response in call:
                if response.HasField("item") and response.item.HasField("tree_head"):
                    head = response.item.tree_head
                    if head.tree_size > 0:
                        break
        call.cancel()
        assert head is not None and head.tree_size > 0
        checkpoint = open_checkpoint(head.checkpoint, [feed.verifier])
        assert checkpoint.size == head.tree_size and checkpoint.origin == ORIGIN

    async def test_an_idle_follow_sends_heartbeats_with_its_cursor(self, feed: Feed, tenant: str) -> None:
        await create_many(feed, tenant, 1)
        call = feed.feed.Follow(
            reporting_pb2.FollowRequest(
                filter=only_tenant(tenant), heartbeat_interval=duration_pb2.Duration(seconds=1)
            ),
            metadata=feed.feed_auth(OPERATOR, "Follow"),
        )
        last_item = None
        async with asyncio.timeout(20):
            async for response in call:
                if response.HasField("item"):
                    last_item = response.item
                else:
                    heartbeat = response.heartbeat
                    break
        call.cancel()
        assert last_item is not None and heartbeat.cursor == last_item.cursor

    async def test_regulator_access_is_ledgered_per_session_range_page_and_get(self, feed: Feed, tenant: str) -> None:
        await create_many(feed, tenant, 3)
        reg_beijing = Principal(
            role=Role.REGULATOR,
            subject=f"reg-{uuid.uuid4().hex[:8]}",
            regulator_scope=CYBERSPACE_BEIJING.regulator_scope,
        )

        def mine(action: str) -> list[dict[str, Any]]:
            return [e for e in feed.ledger_actions(action) if e["actor"]["subject"] == reg_beijing.subject]

        follow = feed.feed.Follow(
            reporting_pb2.FollowRequest(filter=only_tenant(tenant)), metadata=feed.feed_auth(reg_beijing, "Follow")
        )
        streamed = 0
        async for response in follow:
            streamed += response.HasField("item")
            if streamed == 3:
                break
        follow.cancel()
        items = await feed.list_all(reg_beijing, filter=only_tenant(tenant))
        await feed.feed.GetFeedItem(
            reporting_pb2.GetFeedItemRequest(cursor=items[0].cursor),
            metadata=feed.feed_auth(reg_beijing, "GetFeedItem"),
        )

        async def recorded() -> bool:
            return bool(mine("feed.range"))

        async with asyncio.timeout(10):
            while not await recorded():
                await asyncio.sleep(0.1)
        assert len(mine("feed.follow")) == 1
        (ranged,) = mine("feed.range")
        assert ranged["data"]["count"] == 3
        assert len(mine("feed.list")) == 1  # 3 items fit one page of 7
        assert len(mine("feed.get")) == 1


class _CountingStore:
    """The real store, counting what the feed asked it for."""

    def __init__(self, inner: SqlFeedStore):
        self.inner = inner
        self.pages = 0
        self.rows = 0

    async def page(self, query: Any, *, after: tuple[int, int], limit: int) -> list[Any]:
        rows = await self.inner.page(query, after=after, limit=limit)
        self.pages += 1
        self.rows += len(rows)
        return rows

    async def get(self, query: Any, txid: int, item_id: int) -> Any:
        return await self.inner.get(query, txid, item_id)

    async def record(self, audit: Any) -> None:
        await self.inner.record(audit)


class _NoHeads:
    async def latest_head(self) -> None:
        return None

    async def head(self, tree_size: int) -> None:
        return None


async def test_a_slow_reader_holds_one_page_and_reads_on_at_its_own_pace(feed: Feed, tenant: str) -> None:
    await create_many(feed, tenant, 25)
    engine = create_engine_for(feed.database.url_for("reporting"), pool_size=2)
    try:
        store = _CountingStore(SqlFeedStore(engine))
        service = FeedService(store, _NoHeads(), follow_page=10, poll_interval=0.05)
        stream = await service.follow(OPERATOR, FeedRequest(IncidentFilter(tenant_ids=(tenant,))), cursor="")
        for _ in range(3):
            await anext(stream)
        await asyncio.sleep(0.3)  # the reader stalls: nothing more is fetched meanwhile
        assert (store.pages, store.rows) == (1, 10)
        for _ in range(10):
            await anext(stream)
        assert (store.pages, store.rows) == (2, 20)
        await stream.aclose()  # type: ignore[attr-defined]
    finally:
        await engine.dispose()
