"""The one place an incident's status changes after creation (other than an
acknowledgement, which records itself with the acknowledgement): delivery
outcomes and replays call `set_incident_status`.

It runs in the caller's transaction, so each status and its ledger entry
commit with whatever caused them (outcomes the dispatcher records, an
operator's replay). It takes many incidents at once: the dispatcher settles
a batch of outcomes in one statement plus one pipelined round of ledger
appends, not two round trips per incident.
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

# One statement: the previous status comes from the rows as they were (locked here, if the caller
# has not locked them already); an incident that has its new status already is left alone.
_UPDATE = (
    "update reporting.incidents i set status = v.status, update_time = %s "
    "from unnest(%s::text[], %s::text[]) as v(incident_id, status), "
    "(select incident_id, status from reporting.incidents where incident_id = any(%s) "
    "order by incident_id for update) as p "
    "where i.incident_id = v.incident_id and p.incident_id = v.incident_id and p.status <> v.status "
    "returning i.incident_id, i.tenant_id, p.status"
)


async def set_incident_status(
    conn: Any,
    changes: Mapping[str, IncidentStatus],
    *,
    actor: Principal,
    reason: str = "",
    data: Mapping[str, Mapping[str, Any]] | None = None,
    at: datetime | None = None,
) -> dict[str, IncidentStatus]:
    """Moves each incident of `changes` to its status, each with its ledger entry ("incident.status",
    with `data[incident_id]` added); returns the previous status of those that changed. An incident
    that has its status already, or does not exist, is left alone and gets no entry.

    `conn` is a SQLAlchemy AsyncConnection or a psycopg AsyncConnection with a transaction begun.
    """
    if not changes:
        return {}
    driver = await transaction_driver(conn, "set_incident_status")
    when = at or datetime.now(UTC)
    ids = list(changes)
    cur = await driver.execute(_UPDATE, (when, ids, [changes[i].value for i in ids], ids))
    changed = {str(r[0]): (str(r[1]), IncidentStatus(r[2])) for r in await cur.fetchall()}
    entries = [
        LedgerEntry(
            action="incident.status",
            subject_type="incident",
            subject_id=incident_id,
            actor=actor,
            legal_basis="NAVIS-2019 Art. 12",
            reason=reason,
            tenant_id=tenant_id,
            data={"from": previous.value, "to": changes[incident_id].value, **(data or {}).get(incident_id, {})},
            occurred_at=when,
        )
        for incident_id, (tenant_id, previous) in sorted(changed.items())
    ]
    if entries:
        async with driver.pipeline():  # the appends return nothing: one round trip for all of them
            for entry in entries:
                await ledger_append(driver, entry)
        # The regulator feed shows every status change, as the incident now is. (Imported here:
        # the incident store imports the deliveries' store, which imports this module.)
        from services.reporting.store import FeedKind, FeedWriter

        await FeedWriter().write_changed(driver, FeedKind.INCIDENT_UPDATED, sorted(changed))
    return {incident_id: previous for incident_id, (_, previous) in changed.items()}
