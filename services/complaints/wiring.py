"""Builds the complaints process's parts from ComplaintsSettings (for the composition root in `__main__`)."""

from __future__ import annotations

import sys

from prometheus_client import CollectorRegistry

from avgate.kernel import reporting_handoff
from avgate.kernel.reporting_handoff import IncidentHandoff
from services.complaints.config import ComplaintsSettings
from services.complaints.models import SCHEMA


def incident_handoff(settings: ComplaintsSettings, registry: CollectorRegistry) -> IncidentHandoff | None:
    """The dispatcher of this schema's outbox of incidents for reporting (None when disabled);
    exits naming the setting at fault."""
    try:
        return reporting_handoff.incident_handoff(settings, SCHEMA, registry)
    except (ValueError, OSError) as exc:
        sys.exit(f"complaints: {exc}")
