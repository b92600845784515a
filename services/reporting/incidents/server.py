"""gRPC servicer of avgate.reporting.v1.IncidentService: proto ⇄ domain translation only
(the conversions are services.reporting.incidents.wire's)."""

from __future__ import annotations

import grpc
from google.rpc import code_pb2, status_pb2

from avgate.common.v1 import common_pb2
from avgate.kernel.grpc.errors import status_for
from avgate.kernel.principal import current_principal
from avgate.reporting.v1 import reporting_pb2, reporting_pb2_grpc
from services.reporting.incidents.service import IncidentService, ItemResult
from services.reporting.incidents.wire import incident_input_from_proto, incident_to_proto, list_filter_from_proto


def _aborted() -> status_pb2.Status:
    return status_pb2.Status(code=code_pb2.ABORTED, message="valid, but not applied because another item failed")


def batch_result_to_proto(result: ItemResult) -> reporting_pb2.BatchCreateIncidentsResult:
    if result.error is not None:
        return reporting_pb2.BatchCreateIncidentsResult(error=status_for(result.error))
    if result.incident is None:
        return reporting_pb2.BatchCreateIncidentsResult(error=_aborted())
    return reporting_pb2.BatchCreateIncidentsResult(incident=incident_to_proto(result.incident), created=result.created)


class IncidentServicer(reporting_pb2_grpc.IncidentServiceServicer):
    def __init__(self, incidents: IncidentService):
        self._incidents = incidents

    async def CreateIncident(
        self, request: reporting_pb2.CreateIncidentRequest, context: grpc.aio.ServicerContext
    ) -> reporting_pb2.CreateIncidentResponse:
        incident, created = await self._incidents.create(
            current_principal(), incident_input_from_proto(request.incident)
        )
        return reporting_pb2.CreateIncidentResponse(incident=incident_to_proto(incident), created=created)

    async def BatchCreateIncidents(
        self, request: reporting_pb2.BatchCreateIncidentsRequest, context: grpc.aio.ServicerContext
    ) -> reporting_pb2.BatchCreateIncidentsResponse:
        outcome = await self._incidents.batch_create(
            current_principal(),
            [incident_input_from_proto(item, f"incidents[{i}].") for i, item in enumerate(request.incidents)],
        )
        return reporting_pb2.BatchCreateIncidentsResponse(
            applied=outcome.applied, results=[batch_result_to_proto(r) for r in outcome.results]
        )

    async def GetIncident(
        self, request: reporting_pb2.GetIncidentRequest, context: grpc.aio.ServicerContext
    ) -> reporting_pb2.GetIncidentResponse:
        incident = await self._incidents.get(current_principal(), request.incident_id)
        return reporting_pb2.GetIncidentResponse(incident=incident_to_proto(incident))

    async def ListIncidents(
        self, request: reporting_pb2.ListIncidentsRequest, context: grpc.aio.ServicerContext
    ) -> reporting_pb2.ListIncidentsResponse:
        incidents, next_token = await self._incidents.list(
            current_principal(),
            list_filter_from_proto(request),
            page_size=request.page.page_size,
            page_token=request.page.page_token,
        )
        return reporting_pb2.ListIncidentsResponse(
            incidents=[incident_to_proto(i) for i in incidents],
            page=common_pb2.PageResponse(next_page_token=next_token),
        )

    async def AcknowledgeIncident(
        self, request: reporting_pb2.AcknowledgeIncidentRequest, context: grpc.aio.ServicerContext
    ) -> reporting_pb2.AcknowledgeIncidentResponse:
        incident = await self._incidents.acknowledge(
            current_principal(), request.incident_id, note=request.note, request_id=request.request_id
        )
        return reporting_pb2.AcknowledgeIncidentResponse(incident=incident_to_proto(incident))
