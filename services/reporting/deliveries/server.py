"""gRPC servicer of DeliveryService: proto ⇄ domain translation only."""

from __future__ import annotations

import grpc
from google.protobuf import duration_pb2
from google.rpc import code_pb2, status_pb2

from avgate.common.v1 import common_pb2
from avgate.kernel import convert
from avgate.kernel.convert import ProtoEnum, time_from_proto
from avgate.kernel.principal import current_principal
from avgate.reporting.v1 import reporting_pb2, reporting_pb2_grpc
from services.reporting.deliveries.domain import (
    AdapterKind,
    Attempt,
    AttemptResult,
    Delivery,
    DeliveryFilter,
    DeliveryState,
)
from services.reporting.deliveries.service import DeliveryService

DEPARTMENT = ProtoEnum(common_pb2.Department, "DEPARTMENT_", str)
STATE = ProtoEnum(reporting_pb2.DeliveryState, "DELIVERY_STATE_", DeliveryState)
ADAPTER = ProtoEnum(reporting_pb2.AdapterKind, "ADAPTER_KIND_", AdapterKind)


# google.rpc.Code's own HTTP mapping (google/rpc/code.proto), for an attempt the endpoint answered.
_CODE_FOR_HTTP = {
    400: code_pb2.INVALID_ARGUMENT,
    401: code_pb2.UNAUTHENTICATED,
    403: code_pb2.PERMISSION_DENIED,
    404: code_pb2.NOT_FOUND,
    408: code_pb2.DEADLINE_EXCEEDED,
    409: code_pb2.ABORTED,
    429: code_pb2.RESOURCE_EXHAUSTED,
    499: code_pb2.CANCELLED,
    501: code_pb2.UNIMPLEMENTED,
    503: code_pb2.UNAVAILABLE,
    504: code_pb2.DEADLINE_EXCEEDED,
}


def attempt_result(attempt: Attempt) -> status_pb2.Status:
    """OK for a delivered attempt; otherwise the endpoint's answer mapped to a code, with its message."""
    if attempt.outcome is AttemptResult.DELIVERED:
        return status_pb2.Status(code=code_pb2.OK)
    status = attempt.http_status
    if status is not None and status in _CODE_FOR_HTTP:
        code = _CODE_FOR_HTTP[status]
    elif status is not None and status >= 500:
        code = code_pb2.INTERNAL
    elif attempt.refused:
        code = code_pb2.FAILED_PRECONDITION
    else:  # no answer (refused connection, timeout) or one worth retrying
        code = code_pb2.UNAVAILABLE
    return status_pb2.Status(code=code, message=attempt.error or "")


def _duration(seconds: float) -> duration_pb2.Duration:
    value = duration_pb2.Duration()
    value.FromNanoseconds(round(max(0.0, seconds) * 1e9))
    return value


def delivery_to_proto(delivery: Delivery) -> reporting_pb2.Delivery:
    endpoint = delivery.endpoint
    message = reporting_pb2.Delivery(
        delivery_id=delivery.delivery_id,
        tenant_id=delivery.tenant_id,
        endpoint=reporting_pb2.AuthorityEndpoint(
            endpoint_id=endpoint.endpoint_id,
            department=DEPARTMENT.to_proto(endpoint.department),
            region_code=endpoint.region_code,
            adapter=ADAPTER.to_proto(endpoint.adapter),
        ),
        subject_id=delivery.subject_id,
        subject_kind=delivery.subject_kind,
        idempotency_key=delivery.idempotency_key,
        payload_sha256=delivery.payload_sha256,
        state=STATE.to_proto(delivery.state),
        attempt_count=delivery.attempt_count,
        next_attempt_time=convert.timestamp(delivery.next_attempt_time),
        attempts=[
            reporting_pb2.DeliveryAttempt(
                attempt=a.attempt,
                start_time=convert.timestamp(a.start_time),
                duration=_duration(a.duration_seconds),
                result=attempt_result(a),
                http_status=a.http_status or 0,
            )
            for a in delivery.attempts
        ],
        create_time=convert.timestamp(delivery.create_time),
        deliver_time=convert.timestamp(delivery.deliver_time),
        replay_count=delivery.replay_count,
    )
    if delivery.receipt is not None:
        message.receipt.CopyFrom(
            reporting_pb2.DeliveryReceipt(
                receipt_id=delivery.receipt.receipt_id,
                receive_time=convert.timestamp(delivery.receipt.receive_time),
                raw_sha256=delivery.receipt.raw_sha256,
            )
        )
    return message


def filter_from_proto(request: reporting_pb2.ListDeliveriesRequest) -> DeliveryFilter:
    ranged = request.HasField("create_time_range")
    time_range = request.create_time_range
    return DeliveryFilter(
        states=STATE.to_domain_list(request.states, "states"),
        incident_id=request.incident_id,
        endpoint_id=request.endpoint_id,
        created_from=time_from_proto(time_range, "start_time", "create_time_range.start_time") if ranged else None,
        created_before=time_from_proto(time_range, "end_time", "create_time_range.end_time") if ranged else None,
    )


class DeliveryServicer(reporting_pb2_grpc.DeliveryServiceServicer):
    def __init__(self, deliveries: DeliveryService):
        self._deliveries = deliveries

    async def ListDeliveries(
        self, request: reporting_pb2.ListDeliveriesRequest, context: grpc.aio.ServicerContext
    ) -> reporting_pb2.ListDeliveriesResponse:
        deliveries, next_token = await self._deliveries.list(
            current_principal(),
            filter_from_proto(request),
            page_size=request.page.page_size,
            page_token=request.page.page_token,
        )
        return reporting_pb2.ListDeliveriesResponse(
            deliveries=[delivery_to_proto(d) for d in deliveries],
            page=common_pb2.PageResponse(next_page_token=next_token),
        )

    async def GetDelivery(
        self, request: reporting_pb2.GetDeliveryRequest, context: grpc.aio.ServicerContext
    ) -> reporting_pb2.GetDeliveryResponse:
        delivery = await self._deliveries.get(current_principal(), request.delivery_id)
        return reporting_pb2.GetDeliveryResponse(delivery=delivery_to_proto(delivery))

    async def ListDeadLetters(
        self, request: reporting_pb2.ListDeadLettersRequest, context: grpc.aio.ServicerContext
    ) -> reporting_pb2.ListDeadLettersResponse:
        deliveries, next_token = await self._deliveries.list_dead_letters(
            current_principal(),
            request.endpoint_id,
            page_size=request.page.page_size,
            page_token=request.page.page_token,
        )
        return reporting_pb2.ListDeadLettersResponse(
            deliveries=[delivery_to_proto(d) for d in deliveries],
            page=common_pb2.PageResponse(next_page_token=next_token),
        )

    async def ReplayDeadLetters(
        self, request: reporting_pb2.ReplayDeadLettersRequest, context: grpc.aio.ServicerContext
    ) -> reporting_pb2.ReplayDeadLettersResponse:
        deliveries = await self._deliveries.replay(current_principal(), list(request.delivery_ids), request.reason)
        return reporting_pb2.ReplayDeadLettersResponse(deliveries=[delivery_to_proto(d) for d in deliveries])
