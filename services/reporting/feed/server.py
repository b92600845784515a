"""gRPC servicer of avgate.reporting.v1.RegulatorFeedService: proto ⇄ domain only."""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator

import grpc
from google.rpc import code_pb2, status_pb2

from avgate.common.v1 import common_pb2
from avgate.kernel import convert
from avgate.kernel.principal import current_principal
from avgate.reporting.v1 import reporting_pb2, reporting_pb2_grpc
from services.reporting.feed.exports import Export, ExportService
from services.reporting.feed.service import FeedItem, FeedRequest, FeedService, Heartbeat
from services.reporting.incidents.wire import incident_filter_from_proto, incident_filter_to_proto
from services.reporting.ledger.server import AuditLedgerServicer

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


_STATES = {
    "pending": reporting_pb2.EXPORT_STATE_PENDING,
    "ready": reporting_pb2.EXPORT_STATE_READY,
    "failed": reporting_pb2.EXPORT_STATE_FAILED,
    "expired": reporting_pb2.EXPORT_STATE_EXPIRED,
}
_FILE_KINDS = {
    "jsonl": reporting_pb2.EXPORT_FILE_KIND_JSONL,
    "manifest": reporting_pb2.EXPORT_FILE_KIND_MANIFEST,
    "checkpoint": reporting_pb2.EXPORT_FILE_KIND_CHECKPOINT,
    "signature": reporting_pb2.EXPORT_FILE_KIND_SIGNATURE,
}
_FILE_KIND_NAMES = {number: name for name, number in _FILE_KINDS.items()}


def feed_filter_to_proto(request: FeedRequest) -> reporting_pb2.FeedFilter:
    return reporting_pb2.FeedFilter(
        incidents=incident_filter_to_proto(request.incidents), exclude_tree_heads=request.exclude_tree_heads
    )


class RegulatorFeedServicer(reporting_pb2_grpc.RegulatorFeedServiceServicer):
    def __init__(self, feed: FeedService, exports: ExportService, ledger: AuditLedgerServicer):
        self._feed = feed
        self._exports = exports
        self._ledger = ledger

    async def _export(self, export: Export) -> reporting_pb2.ExportBundle:
        message = reporting_pb2.ExportBundle(
            export_id=export.export_id,
            filter=feed_filter_to_proto(export.request),
            state=_STATES[export.state],
            files=[
                reporting_pb2.ExportFile(
                    kind=_FILE_KINDS[f.kind], name=f.name, sha256=f.sha256, size_bytes=f.size_bytes
                )
                for f in export.files
            ],
            item_count=export.item_count,
            manifest_signature=export.manifest_signature,
            signing_key_name=export.signing_key_name,
            requested_by=export.requested_by,
            create_time=convert.timestamp(export.create_time),
            complete_time=convert.timestamp(export.complete_time),
            expire_time=convert.timestamp(export.expire_time),
        )
        if export.checkpoint:
            head = await self._ledger.checkpoint_proto(export.checkpoint)
            message.tree_head.CopyFrom(head)
        if export.error:
            message.error.CopyFrom(status_pb2.Status(code=code_pb2.INTERNAL, message=export.error))
        return message

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
        # Closed here, not left to the garbage collector: closing writes the session's last range
        # to the ledger, also when the reader cancelled the call.
        async with contextlib.aclosing(events):
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

    async def CreateExport(
        self, request: reporting_pb2.CreateExportRequest, context: grpc.aio.ServicerContext
    ) -> reporting_pb2.CreateExportResponse:
        export = await self._exports.create(
            current_principal(), request.request_id, feed_request_from_proto(request.filter)
        )
        return reporting_pb2.CreateExportResponse(export=await self._export(export))

    async def GetExport(
        self, request: reporting_pb2.GetExportRequest, context: grpc.aio.ServicerContext
    ) -> reporting_pb2.GetExportResponse:
        export = await self._exports.get(current_principal(), request.export_id)
        return reporting_pb2.GetExportResponse(export=await self._export(export))

    async def DownloadExport(
        self, request: reporting_pb2.DownloadExportRequest, context: grpc.aio.ServicerContext
    ) -> AsyncIterator[reporting_pb2.DownloadExportResponse]:
        chunks = await self._exports.download(
            current_principal(), request.export_id, _FILE_KIND_NAMES.get(request.file), request.offset
        )
        async for offset, chunk in chunks:
            yield reporting_pb2.DownloadExportResponse(offset=offset, chunk=chunk)
