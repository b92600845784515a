"""gRPC servicer of avgate.reporting.v1.AssessmentService: proto ⇄ domain translation only."""

from __future__ import annotations

import grpc

from avgate.common.v1 import common_pb2
from avgate.kernel import convert
from avgate.kernel.convert import ProtoEnum, time_from_proto
from avgate.kernel.principal import current_principal
from avgate.reporting.v1 import reporting_pb2, reporting_pb2_grpc
from services.reporting.assessments.domain import (
    AssessedTrait,
    AssessmentConclusion,
    AssessmentInput,
    SecurityAssessment,
)
from services.reporting.assessments.service import AssessmentService
from services.reporting.domain import EvidenceRef

TRAIT = ProtoEnum(reporting_pb2.AssessedTrait, "ASSESSED_TRAIT_", AssessedTrait)
CONCLUSION = ProtoEnum(reporting_pb2.AssessmentConclusion, "ASSESSMENT_CONCLUSION_", AssessmentConclusion)


def assessment_input_from_proto(message: reporting_pb2.SecurityAssessment) -> AssessmentInput:
    document = None
    if message.HasField("document"):
        d = message.document
        document = EvidenceRef(sha256=d.sha256, size_bytes=d.size_bytes, media_type=d.media_type)
    return AssessmentInput(
        tenant_id=message.tenant_id,
        feature=message.feature,
        feature_description=message.feature_description,
        traits=tuple(TRAIT.to_domain(t) for t in message.traits),
        assessment_time=time_from_proto(message, "assessment_time", "assessment.assessment_time"),
        assessor=message.assessor,
        conclusion=CONCLUSION.to_domain(message.conclusion),
        conclusion_text=message.conclusion_text,
        document_sha256=message.document_sha256,
        document=document,
        launch_time=time_from_proto(message, "launch_time", "assessment.launch_time"),
    )


def assessment_to_proto(assessment: SecurityAssessment) -> reporting_pb2.SecurityAssessment:
    message = reporting_pb2.SecurityAssessment(
        assessment_id=assessment.assessment_id,
        tenant_id=assessment.tenant_id,
        feature=assessment.feature,
        feature_description=assessment.feature_description,
        traits=[TRAIT.to_proto(t) for t in assessment.traits],
        assessment_time=convert.timestamp(assessment.assessment_time),
        assessor=assessment.assessor,
        conclusion=CONCLUSION.to_proto(assessment.conclusion),
        conclusion_text=assessment.conclusion_text,
        document_sha256=assessment.document_sha256,
        launch_time=convert.timestamp(assessment.launch_time),
        incident_id=assessment.incident_id,
        create_time=convert.timestamp(assessment.create_time),
    )
    if assessment.document is not None:
        d = assessment.document
        message.document.CopyFrom(
            common_pb2.EvidenceRef(sha256=d.sha256, size_bytes=d.size_bytes, media_type=d.media_type)
        )
    return message


class AssessmentServicer(reporting_pb2_grpc.AssessmentServiceServicer):
    def __init__(self, assessments: AssessmentService):
        self._assessments = assessments

    async def RecordAssessment(
        self, request: reporting_pb2.RecordAssessmentRequest, context: grpc.aio.ServicerContext
    ) -> reporting_pb2.RecordAssessmentResponse:
        assessment = await self._assessments.record(
            current_principal(), request.request_id, assessment_input_from_proto(request.assessment)
        )
        return reporting_pb2.RecordAssessmentResponse(assessment=assessment_to_proto(assessment))

    async def GetAssessment(
        self, request: reporting_pb2.GetAssessmentRequest, context: grpc.aio.ServicerContext
    ) -> reporting_pb2.GetAssessmentResponse:
        assessment = await self._assessments.get(current_principal(), request.assessment_id)
        return reporting_pb2.GetAssessmentResponse(assessment=assessment_to_proto(assessment))

    async def ListAssessments(
        self, request: reporting_pb2.ListAssessmentsRequest, context: grpc.aio.ServicerContext
    ) -> reporting_pb2.ListAssessmentsResponse:
        time_range = request.assessment_time_range
        ranged = request.HasField("assessment_time_range")
        assessments, next_token = await self._assessments.list(
            current_principal(),
            tenant_ids=tuple(request.tenant_ids),
            assessed_from=time_from_proto(time_range, "start_time", "assessment_time_range.start_time")
            if ranged
            else None,
            assessed_before=time_from_proto(time_range, "end_time", "assessment_time_range.end_time")
            if ranged
            else None,
            page_size=request.page.page_size,
            page_token=request.page.page_token,
        )
        return reporting_pb2.ListAssessmentsResponse(
            assessments=[assessment_to_proto(a) for a in assessments],
            page=common_pb2.PageResponse(next_page_token=next_token),
        )
