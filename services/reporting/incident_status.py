"""The one place an incident's status changes after creation (other than an
acknowledgement, which records itself with the acknowledgement): delivery
outcomes and replays call `set_incident_status`.

It runs in the caller's transaction, so the status and its ledger entry
commit with whatever caused them (an outcome the dispatcher records, an
operator's replay).
"""

from __future__ import annotations

from collections.abc import Mapping
from datetime import UTC, datetime
from typing import Any

from avgate.kernel.db import transaction_driver
from avgate.kernel.principal import Principal
from avgate.ledger.append import append as ledger_append
from avgate.ledger.entry import LedgerEntry
from services.reporting.domain import IncidentStatus

# One statement: the previous status comes from the row as it was (the caller holds its lock).
_UPDATE = (
    "update reporting.incidents i set status = %s, update_time = %s "
    "from (select incident_id, status from reporting.incidents where incident_id = %s for update) p "
    "where i.incident_id = p.incident_id and p.status <> %s "
    "returning i.tenant_id, p.status"
)


async def set_incident_status(
    conn: Any,
    incident_id: str,
    status: IncidentStatus,
    *,
    actor: Principal,
    reason: str = "",
    data: Mapping[str, Any] | None = None,
    at: datetime | None = None,
) -> IncidentStatus | None:
    """Moves the incident to `status` with its ledger entry ("incident.status"); returns the
    status it had, or None when it had `status` already (or does not exist) and nothing was written.

    `conn` is a SQLAlchemy AsyncConnection or a psycopg AsyncConnection with a transaction begun.
    """
    driver = await transaction_driver(conn, "set_incident_status")
    when = at or datetime.now(UTC)
    cur = await driver.execute(_UPDATE, (status.value, when, incident_id, status.value))
    row = await cur.fetchone()
    if row is None:
        return None
    tenant_id, previous = str(row[0]), IncidentStatus(row[1])
    await ledger_append(
        driver,
        LedgerEntry(
            action="incident.status",
            subject_type="incident",
            subject_id=incident_id,
            actor=actor,
            legal_basis="NAVIS-2019 Art. 12",
            reason=reason,
            tenant_id=tenant_id,
            data={"from": previous.value, "to": status.value, **(data or {})},
            occurred_at=when,
        ),
    )
    return previous
