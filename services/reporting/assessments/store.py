"""Where security assessments live: a small interface and its SQL implementation.

Recording writes, in one transaction, the assessment and its ledger entry
and the incident that reports it with the incident's ledger entry and its
outbox reports (services.reporting.incidents.store.SqlIncidentStore.write_new). Reads join the
incident: its routes decide which regulators see the assessment.
"""

from __future__ import annotations

import builtins
import uuid
from collections.abc import Awaitable, Callable, Sequence
from typing import Any, Protocol

import sqlalchemy.exc
from sqlalchemy import and_, or_, select
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from avgate.kernel.db import violated_constraint
from avgate.kernel.paging import Cursor
from avgate.ledger.append import append as ledger_append
from avgate.ledger.entry import LedgerEntry
from services.reporting.assessments.domain import (
    AssessedTrait,
    AssessmentConclusion,
    AssessmentQuery,
    RequestIdTaken,
    SecurityAssessment,
)
from services.reporting.domain import EvidenceRef, Route
from services.reporting.incidents.domain import NewIncident
from services.reporting.incidents.store import incident_conditions
from services.reporting.models import incidents, security_assessments


class AssessmentStore(Protocol):
    async def add(self, assessment: SecurityAssessment, audit: LedgerEntry, incident: NewIncident) -> None:
        """Writes the assessment and its incident, each with its ledger entry, and the incident's reports.

        Raises RequestIdTaken when (tenant, request id) is taken already.
        """
        ...

    async def find_by_request(self, tenant_id: str, request_id: str) -> SecurityAssessment | None: ...

    async def get(self, assessment_id: str) -> SecurityAssessment | None: ...

    async def list(
        self, query: AssessmentQuery, *, after: Cursor | None, limit: int
    ) -> builtins.list[SecurityAssessment]: ...

    async def record(self, audit: LedgerEntry) -> None:
        """Writes a ledger entry alone (a regulator's read)."""
        ...


_COLUMNS = (security_assessments, incidents.c.route_departments, incidents.c.route_regions)


def _joined() -> Any:
    return select(*_COLUMNS).join(incidents, incidents.c.incident_id == security_assessments.c.incident_id)


IncidentWriter = Callable[[AsyncConnection, Sequence[NewIncident]], Awaitable[None]]


class SqlAssessmentStore:
    def __init__(self, engine: AsyncEngine, write_incidents: IncidentWriter):
        """`write_incidents` is SqlIncidentStore.write_new: the incident with its feed item, ledger entry and
        reports, in the assessment's transaction."""
        self._engine = engine
        self._write_incidents = write_incidents

    async def add(self, assessment: SecurityAssessment, audit: LedgerEntry, incident: NewIncident) -> None:
        try:
            async with self._engine.begin() as conn:
                # The incident first: the assessment row refers to it.
                await self._write_incidents(conn, [incident])
                await conn.execute(security_assessments.insert().values(**_to_row(assessment)))
                await ledger_append(conn, audit)
        except sqlalchemy.exc.IntegrityError as exc:
            # Assessment and incident ids are random, and the incident's external id derives from the
            # assessment id: only (tenant, request id) can collide.
            if violated_constraint(exc) != "security_assessments_tenant_request_id_key":
                raise
            raise RequestIdTaken(assessment.tenant_id, assessment.request_id) from exc

    async def find_by_request(self, tenant_id: str, request_id: str) -> SecurityAssessment | None:
        c = security_assessments.c
        return await self._one(_joined().where(c.tenant_id == tenant_id, c.request_id == request_id))

    async def get(self, assessment_id: str) -> SecurityAssessment | None:
        return await self._one(_joined().where(security_assessments.c.assessment_id == assessment_id))

    async def _one(self, statement: Any) -> SecurityAssessment | None:
        async with self._engine.connect() as conn:
            row = (await conn.execute(statement)).mappings().first()
        return _from_row(row) if row is not None else None

    async def list(
        self, query: AssessmentQuery, *, after: Cursor | None, limit: int
    ) -> builtins.list[SecurityAssessment]:
        c = security_assessments.c
        statement = (
            _joined()
            .where(*incident_conditions(query.incidents))
            .order_by(c.create_time.desc(), c.assessment_id.desc())
            .limit(limit)
        )
        if query.assessed_from is not None:
            statement = statement.where(c.assessment_time >= query.assessed_from)
        if query.assessed_before is not None:
            statement = statement.where(c.assessment_time < query.assessed_before)
        if after is not None:
            statement = statement.where(
                or_(c.create_time < after[0], and_(c.create_time == after[0], c.assessment_id < after[1]))
            )
        async with self._engine.connect() as conn:
            rows = (await conn.execute(statement)).mappings().all()
        return [_from_row(r) for r in rows]

    async def record(self, audit: LedgerEntry) -> None:
        async with self._engine.begin() as conn:
            await ledger_append(conn, audit)


def _to_row(assessment: SecurityAssessment) -> dict[str, Any]:
    document = assessment.document
    return {
        "assessment_id": assessment.assessment_id,
        "tenant_id": assessment.tenant_id,
        "request_id": assessment.request_id,
        "request_hash": assessment.request_hash,
        "feature": assessment.feature,
        "feature_description": assessment.feature_description,
        "traits": [t.value for t in assessment.traits],
        "assessment_time": assessment.assessment_time,
        "assessor": assessment.assessor,
        "conclusion": assessment.conclusion.value,
        "conclusion_text": assessment.conclusion_text,
        "document_sha256": assessment.document_sha256,
        "document": None
        if document is None
        else {"sha256": document.sha256, "size_bytes": document.size_bytes, "media_type": document.media_type},
        "launch_time": assessment.launch_time,
        "incident_id": assessment.incident_id,
        "create_time": assessment.create_time,
        "ledger_entry_id": assessment.ledger_entry_id,
    }


def _from_row(row: Any) -> SecurityAssessment:
    document = row["document"]
    return SecurityAssessment(
        assessment_id=row["assessment_id"],
        tenant_id=row["tenant_id"],
        feature=row["feature"],
        feature_description=row["feature_description"],
        traits=tuple(AssessedTrait(t) for t in row["traits"]),
        assessment_time=row["assessment_time"],
        assessor=row["assessor"],
        conclusion=AssessmentConclusion(row["conclusion"]),
        conclusion_text=row["conclusion_text"],
        document_sha256=row["document_sha256"],
        document=EvidenceRef(**document) if document is not None else None,
        launch_time=row["launch_time"],
        incident_id=row["incident_id"],
        create_time=row["create_time"],
        request_id=row["request_id"],
        request_hash=bytes(row["request_hash"]),
        ledger_entry_id=uuid.UUID(str(row["ledger_entry_id"])),
        routes=tuple(Route(d, r) for d in row["route_departments"] for r in row["route_regions"]),
    )
