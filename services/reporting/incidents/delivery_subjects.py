"""What each queued report is about, written in the transaction that queues it.

The incident store (and so a security assessment's) writes one subject row
beside each outbox event when it queues an incident's reports;
services.reporting.deliveries reads them back to say which tenant, incident,
department and region a delivery is for.
"""

from __future__ import annotations

import uuid
from collections.abc import Sequence
from dataclasses import dataclass

from sqlalchemy.ext.asyncio import AsyncConnection

from services.reporting.models import delivery_subjects


@dataclass(frozen=True)
class Subject:
    """What one queued report is about; written with its outbox event."""

    event_id: uuid.UUID
    tenant_id: str
    subject_id: str
    department: str
    region_code: str
    subject_kind: str = "incident"


async def add_subjects(conn: AsyncConnection, subjects: Sequence[Subject]) -> None:
    """In the incident's transaction, beside the outbox events."""
    if subjects:
        await conn.execute(
            delivery_subjects.insert(),
            [
                {
                    "event_id": s.event_id,
                    "tenant_id": s.tenant_id,
                    "subject_kind": s.subject_kind,
                    "subject_id": s.subject_id,
                    "department": s.department,
                    "region_code": s.region_code,
                }
                for s in subjects
            ],
        )
