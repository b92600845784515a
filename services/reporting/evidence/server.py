"""gRPC servicer of avgate.reporting.v1.EvidenceService: proto ⇄ domain translation only."""

from __future__ import annotations

from collections.abc import AsyncIterable, AsyncIterator

import grpc

from avgate.common.v1 import common_pb2
from avgate.kernel import convert
from avgate.kernel.errors import FieldViolation, InvalidArgument
from avgate.kernel.principal import current_principal
from avgate.reporting.v1 import reporting_pb2, reporting_pb2_grpc
from services.reporting.evidence.domain import EvidenceHold, EvidenceView, UploadMetadata
from services.reporting.evidence.service import EvidenceService, UploadPart


def metadata_from_proto(message: reporting_pb2.EvidenceUploadMetadata) -> UploadMetadata:
    return UploadMetadata(
        request_id=message.request_id,
        incident_id=message.incident_id,
        media_type=message.media_type,
        size_bytes=message.size_bytes,
        sha256=message.sha256,
        file_name=message.file_name,
        description=message.description,
    )


async def upload_parts(requests: AsyncIterable[reporting_pb2.AttachEvidenceRequest]) -> AsyncIterator[UploadPart]:
    async for request in requests:
        payload = request.WhichOneof("payload")
        if payload == "metadata":
            yield metadata_from_proto(request.metadata)
        elif payload == "chunk":
            yield request.chunk
        else:
            raise InvalidArgument(FieldViolation("payload", "each message carries metadata or a chunk"))


def hold_to_proto(hold: EvidenceHold) -> reporting_pb2.EvidenceHold:
    return reporting_pb2.EvidenceHold(
        hold_id=hold.hold_id,
        reason=hold.reason,
        placed_by=hold.placed_by,
        create_time=convert.timestamp(hold.create_time),
        until_time=convert.timestamp(hold.until_time),
        lift_time=convert.timestamp(hold.lift_time),
    )


def evidence_to_proto(seen: EvidenceView) -> reporting_pb2.Evidence:
    e = seen.evidence
    return reporting_pb2.Evidence(
        evidence_id=e.evidence_id,
        tenant_id=e.tenant_id,
        ref=common_pb2.EvidenceRef(sha256=e.sha256, size_bytes=e.size_bytes, media_type=e.media_type),
        incident_ids=list(seen.incident_ids),
        file_name=e.file_name,
        description=e.description,
        state=reporting_pb2.EvidenceState.Value(f"EVIDENCE_STATE_{seen.state.value.upper()}"),  # type: ignore[arg-type]
        retain_until=convert.timestamp(e.retain_until),
        holds=[hold_to_proto(h) for h in e.holds],
        attached_by=e.attached_by,
        create_time=convert.timestamp(e.create_time),
        release_time=convert.timestamp(e.release_time),
    )


class EvidenceServicer(reporting_pb2_grpc.EvidenceServiceServicer):
    def __init__(self, evidence: EvidenceService):
        self._evidence = evidence

    async def AttachEvidence(
        self,
        request_iterator: AsyncIterable[reporting_pb2.AttachEvidenceRequest],
        context: grpc.aio.ServicerContext,
    ) -> reporting_pb2.AttachEvidenceResponse:
        stored = await self._evidence.attach(current_principal(), upload_parts(request_iterator))
        return reporting_pb2.AttachEvidenceResponse(evidence=evidence_to_proto(stored))

    async def GetEvidence(
        self, request: reporting_pb2.GetEvidenceRequest, context: grpc.aio.ServicerContext
    ) -> reporting_pb2.GetEvidenceResponse:
        seen = await self._evidence.get(current_principal(), request.evidence_id)
        return reporting_pb2.GetEvidenceResponse(evidence=evidence_to_proto(seen))

    async def ReadEvidence(
        self, request: reporting_pb2.ReadEvidenceRequest, context: grpc.aio.ServicerContext
    ) -> AsyncIterator[reporting_pb2.ReadEvidenceResponse]:
        _, chunks = await self._evidence.read(current_principal(), request.evidence_id, request.offset)
        async for offset, chunk in chunks:
            yield reporting_pb2.ReadEvidenceResponse(offset=offset, chunk=chunk)

    async def HoldEvidence(
        self, request: reporting_pb2.HoldEvidenceRequest, context: grpc.aio.ServicerContext
    ) -> reporting_pb2.HoldEvidenceResponse:
        seen, hold = await self._evidence.hold(
            current_principal(),
            request.evidence_id,
            request_id=request.request_id,
            reason=request.reason,
            until_time=convert.time_from_proto(request, "until_time"),
        )
        return reporting_pb2.HoldEvidenceResponse(evidence=evidence_to_proto(seen), hold=hold_to_proto(hold))

    async def LiftEvidenceHold(
        self, request: reporting_pb2.LiftEvidenceHoldRequest, context: grpc.aio.ServicerContext
    ) -> reporting_pb2.LiftEvidenceHoldResponse:
        seen = await self._evidence.lift(
            current_principal(), request.evidence_id, request.hold_id, reason=request.reason
        )
        return reporting_pb2.LiftEvidenceHoldResponse(evidence=evidence_to_proto(seen))

    async def ReleaseEvidence(
        self, request: reporting_pb2.ReleaseEvidenceRequest, context: grpc.aio.ServicerContext
    ) -> reporting_pb2.ReleaseEvidenceResponse:
        seen = await self._evidence.release(current_principal(), request.evidence_id, reason=request.reason)
        return reporting_pb2.ReleaseEvidenceResponse(evidence=evidence_to_proto(seen))
