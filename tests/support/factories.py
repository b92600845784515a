"""Valid request messages and ids that a test changes only where it matters."""

from __future__ import annotations

import uuid
from typing import Any

from avgate.common.v1 import common_pb2
from avgate.reporting.v1 import reporting_pb2


def new_tenant() -> str:
    """A tenant id no other test uses, so tests sharing a database do not see each other's records."""
    return f"t-{uuid.uuid4().hex[:12]}"


def incident_input(external_id: str = "ext-1", **changes: Any) -> reporting_pb2.IncidentInput:
    """A complete, valid incident (prohibited violent content, stopped; Beijing), with `changes` applied."""
    fields: dict[str, Any] = {
        "external_id": external_id,
        "source": reporting_pb2.INCIDENT_SOURCE_SCREENING,
        "category": reporting_pb2.INCIDENT_CATEGORY_PROHIBITED_CONTENT,
        "prohibited_type": common_pb2.PROHIBITED_CONTENT_TYPE_VIOLENCE,
        "legal_basis": [common_pb2.LegalBasis(instrument="NAVIS-2019", article="9")],
        "facts": "Video showed graphic violence; transmission stopped.",
        "content": [common_pb2.ContentRef(content_id="v-1", sha256="ab" * 32)],
        "action": common_pb2.ActionTaken(type=common_pb2.ACTION_TYPE_TRANSMISSION_STOPPED),
        "automated_detection": True,
        "region_code": "110105",
    }
    fields.update(changes)
    return reporting_pb2.IncidentInput(**fields)
