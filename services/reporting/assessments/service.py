"""Security-assessment use cases (Art. 10): record, get, list.

Who may do what:
- Providers (and avgate services acting for one) record assessments for
  their own tenant and see those; operators record for a tenant they name
  and see every assessment.
- Regulators see the assessments whose incident is routed into their
  departments and regions (the incidents' rule, services.reporting.domain
  `in_scope`); each read is recorded in the ledger.
- Something outside the caller's reach is reported as not found.

An assessment is "reportable like incidents": recording one also creates an
incident of category SECURITY_ASSESSMENT (source PROVIDER or OPERATOR, legal
basis Art. 10, facts summarising it, a related record of kind
SECURITY_ASSESSMENT pointing back), built and validated by IncidentService
and routed by its rules. The assessment with its ledger entry, and the
incident with its ledger entry and one outbox report per department, commit
in one transaction. Recording is idempotent by (tenant, request id): the
same content returns the assessment (and incident) recorded first, other
content is an IdempotencyConflict.
"""

from __future__ import annotations

import builtins
import uuid
from collections.abc import Callable
from dataclasses import replace
from datetime import UTC, datetime, timedelta

from avgate.kernel.errors import (
    DependencyUnavailable,
    FieldChecker,
    FieldViolation,
    IdempotencyConflict,
    InvalidArgument,
    NotFound,
)
from avgate.kernel.legal import navis
from avgate.kernel.paging import check_page_size, decode_page_token, encode_page_token, page_limit
from avgate.kernel.principal import TENANT_ID, Principal, Role
from avgate.ledger.entry import LedgerEntry
from services.reporting.access import page_entry, read_entry
from services.reporting.assessments.domain import (
    LEGAL_BASIS,
    MAX_ASSESSOR,
    MAX_CONCLUSION_TEXT,
    MAX_FEATURE,
    MAX_FEATURE_DESCRIPTION,
    MAX_REQUEST_ID,
    AssessedTrait,
    AssessmentConclusion,
    AssessmentInput,
    AssessmentQuery,
    RequestIdTaken,
    SecurityAssessment,
    incident_facts,
    new_assessment_id,
    request_hash,
)
from services.reporting.assessments.store import AssessmentStore
from services.reporting.domain import SHA256_HEX, in_scope
from services.reporting.incidents.domain import (
    IncidentCategory,
    IncidentFilter,
    IncidentInput,
    IncidentSource,
    NewIncident,
    RelatedRecord,
)
from services.reporting.incidents.service import MAX_FACTS, IncidentService

CLOCK_SKEW = timedelta(seconds=60)
"""How far in the future an assessment time may lie: the caller's clock may run ahead of ours."""


def _now() -> datetime:
    return datetime.now(UTC)


class AssessmentService:
    def __init__(self, store: AssessmentStore, incidents: IncidentService, clock: Callable[[], datetime] = _now):
        self._store = store
        self._incidents = incidents
        self._clock = clock

    # ----------------------------------------------------------------------- record

    async def record(self, caller: Principal, request_id: str, item: AssessmentInput) -> SecurityAssessment:
        caller.require_role(Role.PROVIDER, Role.OPERATOR)
        tenant, normalised = self._validate(caller, request_id, item)
        digest = request_hash(normalised, tenant)
        # Two rounds: a concurrent record with the same request id makes the first write fail;
        # the second round finds that assessment and answers as a retry would.
        for _ in range(2):
            earlier = await self._store.find_by_request(tenant, request_id)
            if earlier is not None:
                if earlier.request_hash != digest:
                    raise IdempotencyConflict(
                        "security_assessment",
                        request_id,
                        f"request {request_id!r} recorded an assessment with different content",
                    )
                return earlier
            assessment, audit, incident = self._new(caller, tenant, request_id, normalised, digest)
            try:
                await self._store.add(assessment, audit, incident)
            except RequestIdTaken:
                continue
            return assessment
        raise DependencyUnavailable("assessment store", message="concurrent records with the same request id; retry")

    def _validate(self, caller: Principal, request_id: str, item: AssessmentInput) -> tuple[str, AssessmentInput]:
        check = FieldChecker()
        check.identifier(request_id, "request_id", max_length=MAX_REQUEST_ID)
        if caller.effective.role is Role.PROVIDER:
            tenant = caller.require_tenant()
            check.require(item.tenant_id in ("", tenant), "assessment.tenant_id", "must be the caller's own tenant")
        else:
            tenant = item.tenant_id
            check.require(bool(TENANT_ID.fullmatch(tenant)), "assessment.tenant_id", "required: 2-63 of a-z, 0-9, '-'")
        check.text(item.feature, "assessment.feature", required=True, max_length=MAX_FEATURE)
        check.text(
            item.feature_description,
            "assessment.feature_description",
            required=False,
            max_length=MAX_FEATURE_DESCRIPTION,
        )
        if not item.traits:
            check.add("assessment.traits", "must name at least one trait that required the assessment")
        for i, trait in enumerate(item.traits):
            check.require(trait is not None, f"assessment.traits[{i}]", "must be a known trait")
        now = self._clock()
        if item.assessment_time is None:
            check.add("assessment.assessment_time", "must be set")
        elif item.assessment_time > now + CLOCK_SKEW:
            check.add("assessment.assessment_time", "must not be in the future")
        check.text(item.assessor, "assessment.assessor", required=True, max_length=MAX_ASSESSOR)
        check.require(item.conclusion is not None, "assessment.conclusion", "must be set")
        check.text(item.conclusion_text, "assessment.conclusion_text", required=False, max_length=MAX_CONCLUSION_TEXT)
        if item.conclusion is AssessmentConclusion.PASSED_WITH_CONDITIONS and not item.conclusion_text.strip():
            check.add("assessment.conclusion_text", "must state the conditions of a conditional pass")
        check.require(
            bool(SHA256_HEX.fullmatch(item.document_sha256)),
            "assessment.document_sha256",
            "must be 64 lower-case hex digits",
        )
        if item.document is not None:
            check.require(
                item.document.sha256 == item.document_sha256,
                "assessment.document.sha256",
                "must equal document_sha256",
            )
            check.require(item.document.size_bytes >= 0, "assessment.document.size_bytes", "must not be negative")
        check.raise_if_any()
        # The same traits in another order or repeated are the same assessment.
        order = list(AssessedTrait)
        traits = tuple(sorted({t for t in item.traits if t is not None}, key=order.index))
        return tenant, replace(item, tenant_id=tenant, traits=traits)

    def _new(
        self, caller: Principal, tenant: str, request_id: str, item: AssessmentInput, digest: bytes
    ) -> tuple[SecurityAssessment, LedgerEntry, NewIncident]:
        assert item.assessment_time is not None and item.conclusion is not None
        assessment_id = new_assessment_id()
        draft = SecurityAssessment(
            assessment_id=assessment_id,
            tenant_id=tenant,
            feature=item.feature,
            feature_description=item.feature_description,
            traits=tuple(t for t in item.traits if t is not None),
            assessment_time=item.assessment_time,
            assessor=item.assessor,
            conclusion=item.conclusion,
            conclusion_text=item.conclusion_text,
            document_sha256=item.document_sha256,
            document=item.document,
            launch_time=item.launch_time,
            incident_id="",  # the incident's, once it is built
            create_time=self._clock(),
            request_id=request_id,
            request_hash=digest,
            ledger_entry_id=uuid.uuid4(),
        )
        operator = caller.effective.role is Role.OPERATOR
        incident = self._incidents.prepare(
            caller,
            IncidentInput(
                # Derived from the random assessment id: no provider's own external id can take it first.
                external_id=f"security-assessment:{assessment_id}",
                tenant_id=tenant,
                source=IncidentSource.OPERATOR if operator else IncidentSource.PROVIDER,
                category=IncidentCategory.SECURITY_ASSESSMENT,
                legal_basis=(navis("10"),),
                facts=incident_facts(draft, MAX_FACTS),
                detect_time=item.assessment_time,
                evidence=(item.document,) if item.document is not None else (),
                related=(RelatedRecord("security_assessment", assessment_id),),
            ),
        )
        assessment = replace(
            draft,
            incident_id=incident.incident.incident_id,
            create_time=incident.incident.create_time,
            routes=incident.incident.routes,
        )
        audit = LedgerEntry(
            action="security_assessment.record",
            subject_type="security_assessment",
            subject_id=assessment_id,
            actor=caller,
            legal_basis=LEGAL_BASIS,
            tenant_id=tenant,
            data={
                "incident_id": assessment.incident_id,
                "traits": [t.value for t in assessment.traits],
                "conclusion": assessment.conclusion.value,
                "document_sha256": assessment.document_sha256,
                "request_sha256": digest.hex(),
            },
            idempotency_key=f"security_assessment.record:{tenant}:{request_id}",
            entry_id=assessment.ledger_entry_id,
            occurred_at=assessment.create_time,
        )
        return assessment, audit, incident

    # ----------------------------------------------------------------------- read

    async def get(self, caller: Principal, assessment_id: str) -> SecurityAssessment:
        caller.require_role(Role.PROVIDER, Role.REGULATOR, Role.OPERATOR)
        if not assessment_id:
            raise InvalidArgument(FieldViolation("assessment_id", "must be set"))
        assessment = await self._store.get(assessment_id)
        if assessment is None or not self._may_see(caller, assessment):
            raise NotFound("security_assessment", assessment_id)
        if caller.effective.role is Role.REGULATOR:
            await self._store.record(read_entry(caller, "security_assessment", assessment_id, assessment.tenant_id))
        return assessment

    @staticmethod
    def _may_see(caller: Principal, assessment: SecurityAssessment) -> bool:
        effective = caller.effective
        if effective.role is Role.OPERATOR:
            return True
        if effective.role is Role.PROVIDER:
            return assessment.tenant_id == effective.tenant_id
        return effective.role is Role.REGULATOR and in_scope(effective.regulator_scope, assessment.routes)

    async def list(
        self,
        caller: Principal,
        *,
        tenant_ids: tuple[str, ...],
        assessed_from: datetime | None,
        assessed_before: datetime | None,
        page_size: int,
        page_token: str,
    ) -> tuple[builtins.list[SecurityAssessment], str]:
        caller.require_role(Role.PROVIDER, Role.REGULATOR, Role.OPERATOR)
        check = FieldChecker()
        check_page_size(check, page_size)
        for i, tenant in enumerate(tenant_ids):
            check.require(bool(TENANT_ID.fullmatch(tenant)), f"tenant_ids[{i}]", "2-63 of a-z, 0-9, '-'")
        check.raise_if_any()
        after = decode_page_token(page_token) if page_token else None
        visible = self._incidents.visible(caller, IncidentFilter(tenant_ids=tenant_ids))
        if visible is None:
            return [], ""
        limit = page_limit(page_size)
        query = AssessmentQuery(visible, assessed_from=assessed_from, assessed_before=assessed_before)
        found = await self._store.list(query, after=after, limit=limit + 1)
        page = found[:limit]
        next_token = encode_page_token(page[-1].create_time, page[-1].assessment_id) if len(found) > limit else ""
        if caller.effective.role is Role.REGULATOR and page:
            # One entry per page read, not one per assessment.
            await self._store.record(
                page_entry(caller, "security_assessment", "assessment_id", [a.assessment_id for a in page])
            )
        return page, next_token
