"""Where deliveries are read and changed: a small interface and its SQL
implementation, plus the writes that ride in other transactions.

- `add_subjects` (services.reporting.incidents.delivery_subjects): in the incident's
  transaction, one row per report queued.
- `record_outcomes`: the kernel dispatcher's `on_recorded` hook, in the
  transaction that records outcomes: the attempt history, then the status
  of every incident concerned (`settle_incidents`).
- `apply_replays`: in a replay's transaction (the RPC's or the CLI's):
  replay counts and incident statuses.

Incident statuses are settled with the incidents' rows locked in id order,
then the outbox states read afresh: two dispatchers recording the last two
deliveries of one incident at once serialise on the lock, and the second
sees the first's committed outcome, so the incident does reach DELIVERED.
"""

from __future__ import annotations

import builtins
import json
import uuid
from collections import defaultdict
from collections.abc import Callable, Sequence
from typing import Any, Protocol

from sqlalchemy import Select, and_, case, func, literal_column, or_, select
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from avgate.kernel.db import transaction_driver
from avgate.kernel.outbox import AttemptOutcome as RecordedOutcome
from avgate.kernel.outbox import replay_dead
from avgate.kernel.paging import Cursor
from avgate.kernel.principal import Principal, Role
from avgate.ledger.append import append as ledger_append
from avgate.ledger.entry import LedgerEntry
from services.reporting.deliveries.domain import (
    MAX_ATTEMPTS_SHOWN,
    Attempt,
    AttemptResult,
    Delivery,
    DeliveryQuery,
    DeliveryState,
    Endpoint,
    Receipt,
    ReplayOutcome,
    incident_status_after,
)
from services.reporting.feed.writer import FeedWriter
from services.reporting.incidents.domain import IncidentStatus
from services.reporting.incidents.store import set_incident_status
from services.reporting.models import SCHEMA, delivery_attempts, delivery_subjects, outbox

DISPATCHER = Principal(role=Role.SERVICE, subject="reporting/dispatcher")
"""Who the ledger names for what delivering changes."""

# Every status a delivery settles is also a regulator-feed item, in the same transaction.
FEED = FeedWriter()


class DeliveryStore(Protocol):
    async def list(
        self, query: DeliveryQuery, *, after: Cursor | None, limit: int, oldest_first: bool = False
    ) -> builtins.list[Delivery]: ...

    async def get(self, event_id: uuid.UUID) -> Delivery | None: ...

    async def replay(
        self,
        event_ids: Sequence[uuid.UUID],
        audit: Callable[[Delivery], LedgerEntry],
        *,
        actor: Principal,
        reason: str,
    ) -> ReplayOutcome:
        """Replays every one of `event_ids` with `audit(delivery)` in the ledger for each, in one
        transaction, or changes nothing and says which are missing or not dead."""
        ...


# --------------------------------------------------------------------------- writes in other transactions


_INSERT_ATTEMPTS = (
    "insert into reporting.delivery_attempts "
    "(event_id, attempt, start_time, duration_seconds, outcome, refused, http_status, error) "
    "select * from unnest(%s::uuid[], %s::int[], %s::timestamptz[], %s::float8[], %s::text[], %s::bool[], "
    "%s::int[], %s::text[])"
)


async def record_outcomes(conn: Any, outcomes: Sequence[RecordedOutcome]) -> None:
    """The reporting dispatcher's `on_recorded` hook: attempt history, then incident statuses."""
    if not outcomes:
        return
    driver = await transaction_driver(conn, "record_outcomes")
    await driver.execute(
        _INSERT_ATTEMPTS,
        (
            [o.event_id for o in outcomes],
            [o.attempt for o in outcomes],
            [o.started_at for o in outcomes],
            [o.duration for o in outcomes],
            [o.kind for o in outcomes],
            [o.refused for o in outcomes],
            [o.http_status for o in outcomes],
            [o.error for o in outcomes],
        ),
    )
    await settle_incidents(driver, [o.event_id for o in outcomes], actor=DISPATCHER, reason="delivery outcome")


async def apply_replays(conn: Any, event_ids: Sequence[uuid.UUID], *, actor: Principal, reason: str) -> None:
    """What a replay means to reporting, in the replay's transaction: one more replay each,
    and incidents that failed only on these deliveries are RECORDED again."""
    if not event_ids:
        return
    driver = await transaction_driver(conn, "apply_replays")
    await driver.execute(
        "update reporting.delivery_subjects set replay_count = replay_count + 1 where event_id = any(%s)",
        (list(event_ids),),
    )
    await settle_incidents(driver, event_ids, actor=actor, reason=reason or "replayed")


async def settle_incidents(
    conn: Any, event_ids: Sequence[uuid.UUID], *, actor: Principal, reason: str
) -> dict[str, IncidentStatus]:
    """Brings the incidents these deliveries belong to to the status their deliveries imply
    (`incident_status_after`); returns the incidents changed with their new status."""
    driver = await transaction_driver(conn, "settle_incidents")
    # Locked in id order (no deadlock between replicas); the counts below are read after the lock.
    cur = await driver.execute(
        "select incident_id, status from reporting.incidents where incident_id in "
        "(select subject_id from reporting.delivery_subjects where event_id = any(%s) and subject_kind = 'incident') "
        "order by incident_id for update",
        (list(event_ids),),
    )
    current = {str(r[0]): IncidentStatus(r[1]) for r in await cur.fetchall()}
    if not current:
        return {}
    incident_ids = list(current)
    cur = await driver.execute(
        "select s.subject_id, o.state, count(*) from reporting.delivery_subjects s "
        "join reporting.outbox o on o.event_id = s.event_id "
        "where s.subject_id = any(%s) and s.subject_kind = 'incident' group by 1, 2",
        (incident_ids,),
    )
    counts: dict[str, dict[str, int]] = defaultdict(dict)
    for incident_id, state, n in await cur.fetchall():
        counts[str(incident_id)][str(state)] = int(n)
    wanted = {i: incident_status_after(status, counts[i]) for i, status in current.items()}
    changes = {i: status for i, status in wanted.items() if status is not current[i]}
    await set_incident_status(
        driver,
        changes,
        actor=actor,
        reason=reason,
        change_log=FEED,
        data={i: {"deliveries": dict(sorted(counts[i].items()))} for i in changes},
    )
    return changes


# --------------------------------------------------------------------------- the store


sub, box = delivery_subjects.c, outbox.c


def _state_condition(state: DeliveryState) -> Any:
    """The outbox rows in `state`: a pending row is in flight while a dispatcher's lease on it runs."""
    leased = and_(box.claimed_by.is_not(None), box.claimed_until.is_not(None), box.claimed_until > func.now())
    if state is DeliveryState.IN_FLIGHT:
        return and_(box.state == "pending", leased)
    if state is DeliveryState.PENDING:
        return and_(box.state == "pending", ~leased)
    if state is DeliveryState.DELIVERED:
        return box.state == "delivered"
    return box.state == "dead"


_STATE = case(
    (_state_condition(DeliveryState.IN_FLIGHT), DeliveryState.IN_FLIGHT.value),
    (box.state == "pending", DeliveryState.PENDING.value),
    (box.state == "delivered", DeliveryState.DELIVERED.value),
    else_=DeliveryState.DEAD_LETTER.value,
).label("delivery_state")
_COLUMNS = (
    sub.event_id,
    sub.tenant_id,
    sub.subject_kind,
    sub.subject_id,
    sub.department,
    sub.region_code,
    sub.create_time,
    sub.replay_count,
    func.encode(func.sha256(box.payload), literal_column("'hex'")).label("payload_sha256"),
    _STATE,
    box.attempts,
    box.next_attempt_at,
    box.delivered_at,
    box.receipt,
    box.last_error,
)


def _base() -> Select[Any]:
    return select(*_COLUMNS).select_from(delivery_subjects.join(outbox, box.event_id == sub.event_id))


class SqlDeliveryStore:
    def __init__(self, engine: AsyncEngine):
        self._engine = engine

    async def list(
        self, query: DeliveryQuery, *, after: Cursor | None, limit: int, oldest_first: bool = False
    ) -> builtins.list[Delivery]:
        statement = _base().limit(limit)
        if oldest_first:
            statement = statement.order_by(sub.create_time.asc(), sub.event_id.asc())
        else:
            statement = statement.order_by(sub.create_time.desc(), sub.event_id.desc())
        if query.tenant_id is not None:
            statement = statement.where(sub.tenant_id == query.tenant_id)
        if query.states is not None:
            statement = statement.where(or_(*(_state_condition(x) for x in query.states)))
        if query.subject_id is not None:
            statement = statement.where(sub.subject_id == query.subject_id)
        if query.department is not None:
            statement = statement.where(sub.department == query.department)
        if query.created_from is not None:
            statement = statement.where(sub.create_time >= query.created_from)
        if query.created_before is not None:
            statement = statement.where(sub.create_time < query.created_before)
        if after is not None:
            created, last_id = after[0], uuid.UUID(after[1])
            if oldest_first:
                statement = statement.where(
                    or_(sub.create_time > created, and_(sub.create_time == created, sub.event_id > last_id))
                )
            else:
                statement = statement.where(
                    or_(sub.create_time < created, and_(sub.create_time == created, sub.event_id < last_id))
                )
        async with self._engine.connect() as conn:
            rows = (await conn.execute(statement)).mappings().all()
            return await _with_attempts(conn, rows)

    async def get(self, event_id: uuid.UUID) -> Delivery | None:
        async with self._engine.connect() as conn:
            rows = (await conn.execute(_base().where(sub.event_id == event_id))).mappings().all()
            found = await _with_attempts(conn, rows)
        return found[0] if found else None

    async def replay(
        self,
        event_ids: Sequence[uuid.UUID],
        audit: Callable[[Delivery], LedgerEntry],
        *,
        actor: Principal,
        reason: str,
    ) -> ReplayOutcome:
        wanted = list(dict.fromkeys(event_ids))
        async with self._engine.connect() as conn:
            transaction = await conn.begin()
            try:
                # The rows stay locked until the commit: no dispatcher or other replay moves them meanwhile.
                locked = await conn.execute(
                    select(box.event_id, box.state)
                    .select_from(outbox.join(delivery_subjects, sub.event_id == box.event_id))
                    .where(box.event_id.in_(wanted))
                    .with_for_update(of=outbox)
                )
                states = {r.event_id: r.state for r in locked}
                missing = tuple(e for e in wanted if e not in states)
                not_dead = tuple((e, DeliveryState.PENDING) for e in wanted if states.get(e) not in (None, "dead"))
                if missing or not_dead:
                    await transaction.rollback()
                    current = {d.event_id: d.state for d in await self._read(conn, [e for e, _ in not_dead])}
                    return ReplayOutcome(
                        missing=missing, not_dead=tuple((e, current.get(e, state)) for e, state in not_dead)
                    )
                replayed = await replay_dead(conn, SCHEMA, event_ids=wanted)
                if set(replayed) != set(wanted):  # the lock above makes this impossible
                    raise RuntimeError("replay found fewer dead letters than it locked")
                await apply_replays(conn, wanted, actor=actor, reason=reason)
                deliveries = await self._read(conn, wanted)
                for delivery in deliveries:
                    await ledger_append(conn, audit(delivery))
                await transaction.commit()
            except BaseException:
                if transaction.is_active:
                    await transaction.rollback()
                raise
        return ReplayOutcome(replayed=tuple(deliveries))

    @staticmethod
    async def _read(conn: AsyncConnection, event_ids: Sequence[uuid.UUID]) -> builtins.list[Delivery]:
        if not event_ids:
            return []
        rows = (await conn.execute(_base().where(sub.event_id.in_(list(event_ids))))).mappings().all()
        by_id = {d.event_id: d for d in await _with_attempts(conn, rows)}
        return [by_id[e] for e in event_ids if e in by_id]


async def _with_attempts(conn: AsyncConnection, rows: Sequence[Any]) -> builtins.list[Delivery]:
    """Rows → deliveries, each with its latest attempts (one query for the page)."""
    if not rows:
        return []
    a = delivery_attempts.c
    ranked = (
        select(
            delivery_attempts,
            func.row_number().over(partition_by=a.event_id, order_by=a.id.desc()).label("newest"),
        )
        .where(a.event_id.in_([r["event_id"] for r in rows]))
        .subquery()
    )
    recent = await conn.execute(
        select(ranked).where(ranked.c.newest <= MAX_ATTEMPTS_SHOWN).order_by(ranked.c.event_id, ranked.c.id)
    )
    attempts: dict[uuid.UUID, list[Attempt]] = defaultdict(list)
    for r in recent.mappings():
        attempts[r["event_id"]].append(
            Attempt(
                attempt=r["attempt"],
                start_time=r["start_time"],
                duration_seconds=r["duration_seconds"],
                outcome=AttemptResult(r["outcome"]),
                refused=r["refused"],
                http_status=r["http_status"],
                error=r["error"],
            )
        )
    return [_from_row(r, tuple(attempts.get(r["event_id"], ()))) for r in rows]


def _from_row(row: Any, attempts: tuple[Attempt, ...]) -> Delivery:
    state = DeliveryState(row["delivery_state"])
    receipt = None
    if row["receipt"] is not None:
        receipt = Receipt.from_details(json.loads(row["receipt"]), row["delivered_at"])
    return Delivery(
        event_id=row["event_id"],
        tenant_id=row["tenant_id"],
        endpoint=Endpoint(department=row["department"], region_code=row["region_code"]),
        subject_kind=row["subject_kind"],
        subject_id=row["subject_id"],
        payload_sha256=row["payload_sha256"],
        state=state,
        attempt_count=row["attempts"],
        create_time=row["create_time"],
        next_attempt_time=row["next_attempt_at"] if state is DeliveryState.PENDING else None,
        attempts=attempts,
        receipt=receipt,
        deliver_time=row["delivered_at"],
        replay_count=row["replay_count"],
        last_error=row["last_error"],
    )
