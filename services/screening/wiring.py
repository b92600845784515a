"""Builds the screening process's parts from ScreeningSettings (for the composition root in `__main__`)."""

from __future__ import annotations

import sys

from prometheus_client import CollectorRegistry

from avgate.kernel import reporting_handoff
from avgate.kernel.reporting_handoff import IncidentHandoff
from services.screening.config import ScreeningSettings
from services.screening.models import SCHEMA


def incident_handoff(settings: ScreeningSettings, registry: CollectorRegistry) -> IncidentHandoff | None:
    """The dispatcher of this schema's outbox of incidents for reporting (None when disabled);
    exits naming the setting at fault."""
    try:
        return reporting_handoff.incident_handoff(settings, SCHEMA, registry)
    except (ValueError, OSError) as exc:
        sys.exit(f"screening: {exc}")
