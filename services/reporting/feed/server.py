"""gRPC servicer of avgate.reporting.v1.RegulatorFeedService: proto ⇄ domain only."""

from __future__ import annotations

from collections.abc import AsyncIterator

import grpc

from avgate.common.v1 import common_pb2
from avgate.kernel import convert
from avgate.kernel.principal import current_principal
from avgate.reporting.v1 import reporting_pb2, reporting_pb2_grpc
from services.reporting.feed.service import FeedItem, FeedRequest, FeedService, Heartbeat
from services.reporting.ledger.server import AuditLedgerServicer
from services.reporting.server import incident_filter_from_proto

_KINDS = {
    "incident_created": reporting_pb2.FEED_ITEM_KIND_INCIDENT_CREATED,
    "incident_updated": reporting_pb2.FEED_ITEM_KIND_INCIDENT_UPDATED,
    "tree_head": reporting_pb2.FEED_ITEM_KIND_TREE_HEAD,
}


def feed_request_from_proto(f: reporting_pb2.FeedFilter) -> FeedRequest:
    return FeedRequest(
        incidents=incident_filter_from_proto(f.incidents, "filter.incidents."),
        exclude_tree_heads=f.exclude_tree_heads,
    )


class RegulatorFeedServicer(reporting_pb2_grpc.RegulatorFeedServiceServicer):
    def __init__(self, feed: FeedService, ledger: AuditLedgerServicer):
        self._feed = feed
        self._ledger = ledger

    async def _item(self, item: FeedItem) -> reporting_pb2.FeedItem:
        message = reporting_pb2.FeedItem(
            cursor=item.cursor.encode(), kind=_KINDS[item.kind], publish_time=convert.timestamp(item.publish_time)
        )
        if item.head is not None:
            message.tree_head.CopyFrom(await self._ledger.head_proto(item.head))
        else:
            # Stored serialized: parsing into the field is the only conversion.
            message.incident.MergeFromString(item.payload)
        return message

    async def Follow(
        self, request: reporting_pb2.FollowRequest, context: grpc.aio.ServicerContext
    ) -> AsyncIterator[reporting_pb2.FollowResponse]:
        heartbeat = request.heartbeat_interval.ToTimedelta() if request.HasField("heartbeat_interval") else None
        events = await self._feed.follow(
            current_principal(), feed_request_from_proto(request.filter), cursor=request.cursor, heartbeat=heartbeat
        )
        async for event in events:
            if isinstance(event, Heartbeat):
                yield reporting_pb2.FollowResponse(
                    heartbeat=reporting_pb2.Heartbeat(
                        server_time=convert.timestamp(event.server_time), cursor=event.cursor.encode()
                    )
                )
            else:
                yield reporting_pb2.FollowResponse(item=await self._item(event))

    async def ListFeed(
        self, request: reporting_pb2.ListFeedRequest, context: grpc.aio.ServicerContext
    ) -> reporting_pb2.ListFeedResponse:
        items, next_token = await self._feed.list(
            current_principal(),
            feed_request_from_proto(request.filter),
            cursor=request.cursor,
            page_size=request.page.page_size,
            page_token=request.page.page_token,
        )
        return reporting_pb2.ListFeedResponse(
            items=[await self._item(i) for i in items], page=common_pb2.PageResponse(next_page_token=next_token)
        )

    async def GetFeedItem(
        self, request: reporting_pb2.GetFeedItemRequest, context: grpc.aio.ServicerContext
    ) -> reporting_pb2.GetFeedItemResponse:
        item = await self._feed.get(current_principal(), request.cursor)
        return reporting_pb2.GetFeedItemResponse(item=await self._item(item))
