"""gRPC servicer of avgate.reporting.v1.RumorService: proto ⇄ domain translation only."""

from __future__ import annotations

import grpc

from avgate.common.v1 import common_pb2
from avgate.kernel import convert
from avgate.kernel.convert import ProtoEnum, time_from_proto
from avgate.kernel.principal import current_principal
from avgate.reporting.v1 import reporting_pb2, reporting_pb2_grpc
from services.reporting.rumors.domain import MatchRequest, RefutedRumor, RumorFilter, RumorInput, RumorMatch
from services.reporting.rumors.service import RumorService

TEXT_FIELD = ProtoEnum(reporting_pb2.TextField, "TEXT_FIELD_", str)


def rumor_to_proto(rumor: RefutedRumor) -> reporting_pb2.RefutedRumor:
    return reporting_pb2.RefutedRumor(
        rumor_id=rumor.rumor_id,
        tenant_id=rumor.tenant_id,
        claim_text=rumor.claim_text,
        refutation_text=rumor.refutation_text,
        refutation_url=rumor.refutation_url,
        issuing_authority=rumor.issuing_authority,
        publish_time=convert.timestamp(rumor.publish_time),
        create_time=convert.timestamp(rumor.create_time),
        retire_time=convert.timestamp(rumor.retire_time),
        retire_reason=rumor.retire_reason,
    )


def rumor_input_from_proto(message: reporting_pb2.RefutedRumor) -> RumorInput:
    return RumorInput(
        tenant_id=message.tenant_id,
        claim_text=message.claim_text,
        refutation_text=message.refutation_text,
        refutation_url=message.refutation_url,
        issuing_authority=message.issuing_authority,
        publish_time=time_from_proto(message, "publish_time", "rumor.publish_time"),
    )


def match_to_proto(found: RumorMatch) -> reporting_pb2.RumorMatch:
    return reporting_pb2.RumorMatch(
        rumor=rumor_to_proto(found.rumor),
        score=found.score,
        field=TEXT_FIELD.to_proto(found.field),
        matched_text=found.matched_text,
        method=found.method,
    )


class RumorServicer(reporting_pb2_grpc.RumorServiceServicer):
    def __init__(self, rumors: RumorService):
        self._rumors = rumors

    async def AddRefutedRumor(
        self, request: reporting_pb2.AddRefutedRumorRequest, context: grpc.aio.ServicerContext
    ) -> reporting_pb2.AddRefutedRumorResponse:
        rumor = await self._rumors.add(current_principal(), request.request_id, rumor_input_from_proto(request.rumor))
        return reporting_pb2.AddRefutedRumorResponse(rumor=rumor_to_proto(rumor))

    async def GetRefutedRumor(
        self, request: reporting_pb2.GetRefutedRumorRequest, context: grpc.aio.ServicerContext
    ) -> reporting_pb2.GetRefutedRumorResponse:
        rumor = await self._rumors.get(current_principal(), request.rumor_id)
        return reporting_pb2.GetRefutedRumorResponse(rumor=rumor_to_proto(rumor))

    async def ListRefutedRumors(
        self, request: reporting_pb2.ListRefutedRumorsRequest, context: grpc.aio.ServicerContext
    ) -> reporting_pb2.ListRefutedRumorsResponse:
        time_range = request.publish_time_range
        ranged = request.HasField("publish_time_range")
        rumors, next_token = await self._rumors.list(
            current_principal(),
            RumorFilter(
                include_retired=request.include_retired,
                issuing_authority=request.issuing_authority,
                published_from=time_from_proto(time_range, "start_time", "publish_time_range.start_time")
                if ranged
                else None,
                published_before=time_from_proto(time_range, "end_time", "publish_time_range.end_time")
                if ranged
                else None,
            ),
            page_size=request.page.page_size,
            page_token=request.page.page_token,
        )
        return reporting_pb2.ListRefutedRumorsResponse(
            rumors=[rumor_to_proto(r) for r in rumors], page=common_pb2.PageResponse(next_page_token=next_token)
        )

    async def RetireRefutedRumor(
        self, request: reporting_pb2.RetireRefutedRumorRequest, context: grpc.aio.ServicerContext
    ) -> reporting_pb2.RetireRefutedRumorResponse:
        rumor = await self._rumors.retire(current_principal(), request.rumor_id, request.reason)
        return reporting_pb2.RetireRefutedRumorResponse(rumor=rumor_to_proto(rumor))

    async def MatchText(
        self, request: reporting_pb2.MatchTextRequest, context: grpc.aio.ServicerContext
    ) -> reporting_pb2.MatchTextResponse:
        matches, threshold = await self._rumors.match(
            current_principal(),
            MatchRequest(
                title=request.title,
                description=request.description,
                transcript=request.transcript,
                threshold=request.threshold,
                max_results=request.max_results,
                content_tenant_id=request.content.tenant_id,
                content_id=request.content.content_id,
            ),
        )
        return reporting_pb2.MatchTextResponse(matches=[match_to_proto(m) for m in matches], threshold=threshold)
