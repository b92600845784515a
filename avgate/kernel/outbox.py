"""The transactional outbox every service uses to hand events to the outside.

A service writes an event with `enqueue` in the same transaction as the
change that causes it, into the `outbox` table of its own schema (built by
`outbox_table` in that service's own migration). Its `Dispatcher` claims due
rows, hands each to the `Delivery` registered for the row's destination,
and records the outcome: delivered (with the receipt), retried later with
capped exponential backoff and full jitter, or dead after `max_attempts` or
a permanent refusal. `replay_dead` is the operator's way back from dead.

Claiming and crash recovery: a claim is a short committed transaction that
takes due rows with FOR UPDATE SKIP LOCKED, counts the attempt, and leases
the rows to this dispatcher (`claimed_by`, `claimed_until`). While a row is
leased its `next_attempt_at` is the lease's end, so a dispatcher that dies
mid-delivery simply lets the row become due again; no second predicate and
no sweeper is needed. Outcomes are written only where the row still carries
this dispatcher's claim on the same attempt, so a dispatcher that lost its
lease cannot overwrite what a later attempt recorded. Replicas therefore
never deliver the same attempt twice; an event may still be delivered more
than once (a crash between delivery and recording), which is why every
delivery carries the event id as its idempotency key.

The owning service's own bookkeeping (an attempt history, the state of the
thing delivered) goes in an `on_recorded` hook that the dispatcher runs in
the transaction recording the outcomes, so it commits with them or not at
all; the outbox table itself is the same in every service.

Origin: with a signer configured every delivery carries an Ed25519
signature over the text

    avgate-outbox-delivery/v1 \\n <event id> \\n <destination> \\n <hex SHA-256 of payload> \\n

which an authority checks with `verify_delivery` (or any Ed25519 library)
against the key published under the signature's key id.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import hashlib
import json
import logging
import os
import random
import socket
import time
import uuid
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from functools import lru_cache
from typing import Any, Literal, Protocol

import psycopg
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey
from prometheus_client import CollectorRegistry, Counter, Gauge
from psycopg import sql
from sqlalchemy import (
    BigInteger,
    CheckConstraint,
    Column,
    DateTime,
    Identity,
    Index,
    Integer,
    LargeBinary,
    MetaData,
    Table,
    Text,
    UniqueConstraint,
    Uuid,
    func,
    text,
)

from avgate.kernel.db import transaction_driver
from avgate.kernel.keys import SigningKey

log = logging.getLogger(__name__)

STATES = ("pending", "delivered", "dead")
EXHAUSTED_UNREPORTED = "attempts exhausted: the last attempt's dispatcher did not report before its lease ended"
SIGNATURE_CONTEXT = "avgate-outbox-delivery/v1"


# --------------------------------------------------------------------------- the table


def outbox_table(metadata: MetaData) -> Table:
    """The `outbox` table in `metadata`'s schema; each service adds it to its own models.

    Constraint and index names are explicit so every service's migration
    (and `alembic check`) sees the same names whatever naming convention its
    metadata has.
    """
    return Table(
        "outbox",
        metadata,
        Column("id", BigInteger, Identity(always=False), primary_key=True),
        Column("event_id", Uuid, nullable=False),
        Column("destination", Text, nullable=False),
        Column("payload", LargeBinary, nullable=False),
        Column("created_at", DateTime(timezone=True), nullable=False, server_default=func.now()),
        Column("state", Text, nullable=False, server_default=text("'pending'")),
        Column("attempts", Integer, nullable=False, server_default=text("0")),
        # Due time; while a row is leased, the lease's end (see the module docstring).
        Column("next_attempt_at", DateTime(timezone=True), nullable=False, server_default=func.now()),
        Column("last_error", Text),
        Column("delivered_at", DateTime(timezone=True)),
        Column("receipt", Text),  # the delivery's receipt as JSON
        Column("claimed_by", Text),
        Column("claimed_until", DateTime(timezone=True)),
        UniqueConstraint("event_id", name="outbox_event_id_key"),
        CheckConstraint("state in ('pending', 'delivered', 'dead')", name="outbox_state_check"),
        CheckConstraint("attempts >= 0", name="outbox_attempts_check"),
        # Claiming reads pending rows in due order; the gauges count pending and dead rows.
        Index("outbox_state_next_attempt_at_idx", "state", "next_attempt_at"),
    )


# --------------------------------------------------------------------------- events, receipts, errors


@dataclass(frozen=True)
class OutboxEvent:
    """What a service hands to the outbox: where it goes and the exact bytes."""

    destination: str
    payload: bytes
    event_id: uuid.UUID = field(default_factory=uuid.uuid4)

    def __post_init__(self) -> None:
        if not self.destination or any(c in self.destination for c in "\r\n\0"):
            raise ValueError("an outbox destination is a non-empty single line")
        if not isinstance(self.payload, bytes | bytearray | memoryview):
            raise TypeError("an outbox payload is bytes")


@dataclass(frozen=True)
class DeliverySignature:
    issuer: str
    key_id: str
    signature: bytes

    @property
    def signature_b64(self) -> str:
        return base64.b64encode(self.signature).decode("ascii")


@dataclass(frozen=True)
class ClaimedEvent:
    """A row leased to a dispatcher for one delivery attempt (1-based)."""

    id: int
    event_id: uuid.UUID
    destination: str
    payload: bytes
    attempt: int
    created_at: datetime
    signature: DeliverySignature | None = None

    @property
    def idempotency_key(self) -> str:
        return str(self.event_id)


@dataclass(frozen=True)
class Receipt:
    """What the destination answered, kept with the delivered row (as JSON)."""

    details: Mapping[str, Any] = field(default_factory=dict)
    http_status: int | None = None
    """The HTTP status of the accepting answer, for HTTP adapters (not part of the stored JSON)."""

    def to_json(self) -> str:
        return json.dumps(dict(self.details), sort_keys=True, separators=(",", ":"), default=str)


class DeliveryError(Exception):
    """A delivery that did not succeed; `http_status` is the answer's status when there was one."""

    def __init__(self, *args: object, http_status: int | None = None):
        super().__init__(*args)
        self.http_status = http_status


class RetryableDeliveryError(DeliveryError):
    """The destination may accept it later (down, overloaded, timed out)."""


class PermanentDeliveryError(DeliveryError):
    """The destination refused it; retrying the same bytes will not help."""


class InvalidDeliverySignature(ValueError):
    """A delivery's signature does not verify."""


class Delivery(Protocol):
    """An adapter that carries an event to one kind of destination."""

    async def deliver(self, event: ClaimedEvent) -> Receipt: ...


# --------------------------------------------------------------------------- signatures


def signed_message(event_id: uuid.UUID | str, destination: str, payload: bytes) -> bytes:
    """The exact bytes a delivery signature covers (see the module docstring)."""
    digest = hashlib.sha256(payload).hexdigest()
    return f"{SIGNATURE_CONTEXT}\n{uuid.UUID(str(event_id))}\n{destination}\n{digest}\n".encode()


def sign_delivery(signer: SigningKey, event_id: uuid.UUID | str, destination: str, payload: bytes) -> DeliverySignature:
    signature = signer.private_key.sign(signed_message(event_id, destination, payload))
    return DeliverySignature(issuer=signer.issuer, key_id=signer.kid, signature=signature)


def verify_delivery(
    public_key: Ed25519PublicKey, event_id: uuid.UUID | str, destination: str, payload: bytes, signature: bytes
) -> None:
    """Raises InvalidDeliverySignature unless `signature` is `public_key`'s over this delivery."""
    try:
        public_key.verify(signature, signed_message(event_id, destination, payload))
    except (InvalidSignature, ValueError) as exc:
        raise InvalidDeliverySignature(f"delivery {event_id} to {destination}: signature does not verify") from exc


# --------------------------------------------------------------------------- enqueue


@lru_cache(maxsize=32)
def _insert_statement(schema: str) -> sql.Composed:
    return sql.SQL(
        "insert into {}.outbox (event_id, destination, payload) values (%s, %s, %s) on conflict (event_id) do nothing"
    ).format(sql.Identifier(schema))


async def enqueue(conn: Any, event: OutboxEvent, *, schema: str) -> None:
    """Writes `event` to `schema`.outbox in the caller's open transaction on `conn`.

    `conn` is a SQLAlchemy AsyncConnection or a psycopg AsyncConnection with a
    transaction begun; the event commits with the change or not at all. A
    retried call with the same event id writes nothing.
    """
    driver = await transaction_driver(conn, "enqueue")
    await driver.execute(_insert_statement(schema), (event.event_id, event.destination, bytes(event.payload)))


# --------------------------------------------------------------------------- backoff


def backoff_delay(attempts: int, *, base: float, cap: float, rng: random.Random) -> float:
    """Seconds to wait after `attempts` earlier attempts: uniform in [0, min(cap, base * 2**attempts)].

    Full jitter (AWS Architecture Blog, "Exponential Backoff And Jitter"):
    replicas retrying a destination that just came back spread out instead of
    arriving together.
    """
    ceiling = min(cap, base * 2.0 ** min(max(attempts, 0), 64))
    return rng.uniform(0.0, ceiling)


# --------------------------------------------------------------------------- replay


async def replay_dead(
    conn_or_url: Any, schema: str, *, event_ids: Sequence[uuid.UUID] | None = None
) -> list[uuid.UUID]:
    """Moves dead rows (all, or those of `event_ids`) back to pending with attempts reset.

    With a URL it commits on its own connection; with a connection it runs in
    the caller's transaction, so an operator tool can record the replay in the
    ledger in the same commit. Returns the replayed event ids.
    """
    statement = sql.SQL(
        "update {}.outbox set state = 'pending', attempts = 0, next_attempt_at = now(), "
        "claimed_by = null, claimed_until = null "
        "where state = 'dead' and (%s::uuid[] is null or event_id = any(%s::uuid[])) returning event_id"
    ).format(sql.Identifier(schema))
    ids = list(event_ids) if event_ids is not None else None
    if isinstance(conn_or_url, str):
        async with await psycopg.AsyncConnection.connect(conn_or_url) as conn:
            cur = await conn.execute(statement, (ids, ids))
            replayed = [row[0] for row in await cur.fetchall()]
            await conn.commit()
    else:
        driver = await transaction_driver(conn_or_url, "replay_dead")
        cur = await driver.execute(statement, (ids, ids))
        replayed = [row[0] for row in await cur.fetchall()]
    log.info("replayed %d dead outbox events in %s", len(replayed), schema)
    return replayed


# --------------------------------------------------------------------------- the dispatcher


class OutboxMetrics:
    """What an operator watches: backlog, lag, dead letters, and outcomes per destination."""

    def __init__(self, registry: CollectorRegistry):
        self.pending = Gauge("avgate_outbox_pending", "Events waiting for delivery.", ["outbox"], registry=registry)
        self.lag = Gauge(
            "avgate_outbox_oldest_pending_age_seconds",
            "Age of the oldest event waiting for delivery (0 when none).",
            ["outbox"],
            registry=registry,
        )
        self.dead_letters = Gauge(
            "avgate_outbox_dead_letters",
            "Events in the dead-letter state, awaiting replay.",
            ["outbox"],
            registry=registry,
        )
        self.delivered = Counter(
            "avgate_outbox_delivered_total", "Events delivered.", ["outbox", "destination"], registry=registry
        )
        self.retried = Counter(
            "avgate_outbox_retried_total",
            "Failed attempts scheduled for another try.",
            ["outbox", "destination"],
            registry=registry,
        )
        self.dead = Counter(
            "avgate_outbox_dead_total",
            "Events moved to the dead-letter state.",
            ["outbox", "destination"],
            registry=registry,
        )


@dataclass(frozen=True)
class AttemptOutcome:
    """How one delivery attempt ended, as the dispatcher records it.

    `kind`: delivered (with `receipt`, its JSON), retry (after `delay`
    seconds) or dead. `refused` marks a permanent refusal by the destination
    (as opposed to attempts exhausted). `started_at` is the wall clock when
    the attempt began and `duration` its length in seconds; `http_status` is
    the destination's answer for HTTP adapters.
    """

    event: ClaimedEvent
    kind: Literal["delivered", "retry", "dead"]
    receipt: str | None = None
    error: str | None = None
    delay: float = 0.0
    started_at: datetime | None = None
    """None when unknown: the attempt's dispatcher never reported (see `EXHAUSTED_UNREPORTED`)."""
    duration: float = 0.0
    http_status: int | None = None
    refused: bool = False

    @property
    def event_id(self) -> uuid.UUID:
        return self.event.event_id

    @property
    def destination(self) -> str:
        return self.event.destination

    @property
    def attempt(self) -> int:
        return self.event.attempt


OnRecorded = Callable[[psycopg.AsyncConnection[Any], Sequence[AttemptOutcome]], Awaitable[None]]
"""A service's own bookkeeping, run in the transaction that records outcomes (see `Dispatcher`)."""


class Dispatcher:
    """Delivers one schema's outbox; run as many replicas as you like.

    `deliveries` maps destination prefixes to adapters; the longest matching
    prefix wins. A destination nobody serves is retried (a newer replica may
    serve it) until it goes dead like any other failure. `batch_size` bounds
    the rows this replica holds at once: a row is claimed only when a
    delivery can start on it, so leases time deliveries, not queueing.

    `on_recorded(conn, outcomes)`, when given, runs inside the transaction
    that records outcomes, on the same psycopg connection, with exactly the
    outcomes that were written (an attempt whose lease was lost is not
    among them): the owning service writes its own rows (attempt history,
    the state of what was delivered) so they commit with the outcome or
    not at all. A row found dead at claim time (its last attempt's
    dispatcher never reported) is passed too, as a dead outcome without a
    start time. If the hook raises, nothing of the batch is recorded; the
    dispatcher reconnects on database errors and tries the batch again.
    """

    def __init__(
        self,
        url: str,
        schema: str,
        deliveries: Mapping[str, Delivery],
        *,
        max_attempts: int = 10,
        base_delay: float = 0.5,
        max_delay: float = 300.0,
        lease_seconds: float = 60.0,
        batch_size: int = 50,
        poll_interval: float = 0.2,
        signer: SigningKey | None = None,
        metrics: OutboxMetrics | None = None,
        rng: random.Random | None = None,
        name: str | None = None,
        on_recorded: OnRecorded | None = None,
    ):
        if max_attempts < 1 or batch_size < 1 or lease_seconds <= 0:
            raise ValueError("max_attempts and batch_size must be positive, and so must the lease")
        self._url = url
        self._schema = schema
        self._routes = sorted(deliveries.items(), key=lambda item: len(item[0]), reverse=True)
        self._max_attempts = max_attempts
        self._base_delay = base_delay
        self._max_delay = max_delay
        self._lease_seconds = lease_seconds
        self._batch_size = batch_size
        self._poll_interval = poll_interval
        self._signer = signer
        self._metrics = metrics
        self._on_recorded = on_recorded
        # Jitter needs spread, not secrecy.
        self._rng = rng or random.Random()  # noqa: S311
        self.name = name or f"{socket.gethostname()}/{os.getpid()}/{uuid.uuid4().hex[:8]}"
        self._inflight: set[asyncio.Task[AttemptOutcome]] = set()
        self._finished: list[AttemptOutcome] = []
        self._gauges_at = 0.0
        s = sql.Identifier(schema)
        self._sql_claim = sql.SQL(
            "select id, event_id, destination, payload, attempts, created_at from {}.outbox "
            "where state = 'pending' and next_attempt_at <= now() "
            "order by next_attempt_at limit %s for update skip locked"
        ).format(s)
        self._sql_lease = sql.SQL(
            "update {}.outbox set attempts = attempts + 1, claimed_by = %s, "
            "claimed_until = now() + %s * interval '1 second', next_attempt_at = now() + %s * interval '1 second' "
            "where id = any(%s)"
        ).format(s)
        self._sql_exhausted = sql.SQL(
            "update {}.outbox set state = 'dead', claimed_by = null, claimed_until = null, last_error = %s "
            "where id = any(%s) returning id"
        ).format(s)
        fence = "o.id = v.id and o.attempts = v.attempts and o.claimed_by = %s and o.state = 'pending'"
        self._sql_delivered = sql.SQL(
            "update {}.outbox o set state = 'delivered', delivered_at = now(), receipt = v.receipt, "
            "last_error = null, claimed_by = null, claimed_until = null "
            "from unnest(%s::bigint[], %s::int[], %s::text[]) as v(id, attempts, receipt) "
            "where " + fence + " returning o.id"
        ).format(s)
        self._sql_retry = sql.SQL(
            "update {}.outbox o set next_attempt_at = now() + v.delay * interval '1 second', last_error = v.error, "
            "claimed_by = null, claimed_until = null "
            "from unnest(%s::bigint[], %s::int[], %s::float8[], %s::text[]) as v(id, attempts, delay, error) "
            "where " + fence + " returning o.id"
        ).format(s)
        self._sql_dead = sql.SQL(
            "update {}.outbox o set state = 'dead', last_error = v.error, claimed_by = null, claimed_until = null "
            "from unnest(%s::bigint[], %s::int[], %s::text[]) as v(id, attempts, error) "
            "where " + fence + " returning o.id"
        ).format(s)
        self._sql_gauges = sql.SQL(
            "select count(*) filter (where state = 'pending'), "
            "coalesce(extract(epoch from now() - min(created_at) filter (where state = 'pending')), 0), "
            "count(*) filter (where state = 'dead') "
            "from {}.outbox where state in ('pending', 'dead')"
        ).format(s)

    # ----------------------------------------------------------------- the loop

    async def run(self, stop: asyncio.Event) -> None:
        """Claims, delivers and records until `stop` is set, then finishes what it holds."""
        try:
            while True:
                try:
                    async with await psycopg.AsyncConnection.connect(self._url, autocommit=True) as conn:
                        await self._serve(conn, stop)
                        return
                except (psycopg.OperationalError, psycopg.InterfaceError) as exc:
                    log.warning("outbox dispatcher %s lost its database connection: %s", self._schema, exc)
                    if stop.is_set() and not self._inflight:
                        # Unrecorded outcomes are not lost: their leases end and the rows are tried again.
                        return
                    await _wait(stop, 1.0)
        finally:
            for task in self._inflight:
                task.cancel()
            self._inflight.clear()

    async def _serve(self, conn: psycopg.AsyncConnection[Any], stop: asyncio.Event) -> None:
        while True:
            await self._collect(conn)
            if stop.is_set():
                if not self._inflight:
                    return
            else:
                await self._refresh_gauges(conn)
                free = self._batch_size - len(self._inflight)
                # Claim in sizeable bites: a claim per finished delivery would cost a round trip each.
                if free > 0 and (not self._inflight or 2 * free >= self._batch_size):
                    for event in await self.claim(conn, free):
                        task = asyncio.create_task(self.attempt(event))
                        self._inflight.add(task)
            await self._wait_for_progress(stop)

    async def _wait_for_progress(self, stop: asyncio.Event) -> None:
        """Until a delivery finishes, `stop` is set, or a poll interval passes."""
        waiters: set[asyncio.Future[Any]] = set(self._inflight)
        stopper: asyncio.Task[bool] | None = None
        if not stop.is_set():
            stopper = asyncio.create_task(stop.wait())
            waiters.add(stopper)
        if not waiters:  # stopped while claiming, with nothing in flight
            return
        try:
            await asyncio.wait(waiters, timeout=self._poll_interval, return_when=asyncio.FIRST_COMPLETED)
        finally:
            if stopper is not None:
                stopper.cancel()

    async def _collect(self, conn: psycopg.AsyncConnection[Any]) -> None:
        done = [task for task in self._inflight if task.done()]
        for task in done:
            self._inflight.discard(task)
            self._finished.append(task.result())
        if self._finished:
            outcomes, self._finished = self._finished, []
            try:
                await self.record(conn, outcomes)
            except BaseException:
                self._finished = outcomes + self._finished  # try again after reconnecting
                raise

    async def _refresh_gauges(self, conn: psycopg.AsyncConnection[Any]) -> None:
        if self._metrics is None or time.monotonic() - self._gauges_at < self._poll_interval:
            return
        self._gauges_at = time.monotonic()
        row = await (await conn.execute(self._sql_gauges)).fetchone()
        if row is not None:
            self._metrics.pending.labels(self._schema).set(int(row[0]))
            self._metrics.lag.labels(self._schema).set(float(row[1]))
            self._metrics.dead_letters.labels(self._schema).set(int(row[2]))

    # ----------------------------------------------------------------- the steps, public for tools and tests

    async def claim(self, conn: psycopg.AsyncConnection[Any], limit: int) -> list[ClaimedEvent]:
        """Leases up to `limit` due rows to this dispatcher and commits; returns the attempts to make."""
        async with conn.transaction():
            rows = await (await conn.execute(self._sql_claim, (limit,))).fetchall()
            if not rows:
                return []
            live = [r for r in rows if r[4] < self._max_attempts]
            exhausted = [r[0] for r in rows if r[4] >= self._max_attempts]
            if live:
                lease = self._lease_seconds
                await conn.execute(self._sql_lease, (self.name, lease, lease, [r[0] for r in live]))
            if exhausted:
                # The final attempt's dispatcher died (or max_attempts was lowered): dead, not one more try.
                cur = await conn.execute(self._sql_exhausted, (EXHAUSTED_UNREPORTED, exhausted))
                gone = {int(r[0]) for r in await cur.fetchall()}
                outcomes = [
                    AttemptOutcome(
                        ClaimedEvent(int(r[0]), r[1], r[2], bytes(r[3]), int(r[4]), r[5]),
                        "dead",
                        error=EXHAUSTED_UNREPORTED,
                    )
                    for r in rows
                    if int(r[0]) in gone
                ]
                if self._on_recorded is not None and outcomes:
                    await self._on_recorded(conn, outcomes)
                for o in outcomes:
                    if self._metrics is not None:
                        self._metrics.dead.labels(self._schema, o.destination).inc()
        return [
            ClaimedEvent(
                id=int(r[0]),
                event_id=r[1],
                destination=r[2],
                payload=bytes(r[3]),
                attempt=int(r[4]) + 1,
                created_at=r[5],
                signature=sign_delivery(self._signer, r[1], r[2], bytes(r[3])) if self._signer else None,
            )
            for r in live
        ]

    def delivery_for(self, destination: str) -> Delivery | None:
        for prefix, delivery in self._routes:
            if destination.startswith(prefix):
                return delivery
        return None

    async def attempt(self, event: ClaimedEvent) -> AttemptOutcome:
        """One delivery attempt; never raises (an outcome says what happened)."""
        delivery = self.delivery_for(event.destination)
        started_at = datetime.now(UTC)
        began = time.perf_counter()

        def ended(kind: Literal["delivered", "retry", "dead"], **details: Any) -> AttemptOutcome:
            return AttemptOutcome(event, kind, started_at=started_at, duration=time.perf_counter() - began, **details)

        try:
            if delivery is None:
                raise RetryableDeliveryError(f"no delivery is configured for {event.destination!r}")
            receipt = await delivery.deliver(event)
        except PermanentDeliveryError as exc:
            return ended("dead", error=_describe(exc), http_status=exc.http_status, refused=True)
        except asyncio.CancelledError:
            raise
        except Exception as exc:  # an adapter's bug must cost a retry, not the dispatcher
            if not isinstance(exc, RetryableDeliveryError):
                log.exception("outbox delivery to %s failed unexpectedly", event.destination)
            status = exc.http_status if isinstance(exc, DeliveryError) else None
            if event.attempt >= self._max_attempts:
                return ended("dead", error=f"attempts exhausted; last: {_describe(exc)}", http_status=status)
            delay = backoff_delay(event.attempt - 1, base=self._base_delay, cap=self._max_delay, rng=self._rng)
            return ended("retry", error=_describe(exc), delay=delay, http_status=status)
        return ended("delivered", receipt=receipt.to_json(), http_status=receipt.http_status)

    async def record(self, conn: psycopg.AsyncConnection[Any], outcomes: Sequence[AttemptOutcome]) -> int:
        """Writes outcomes where this dispatcher still holds the attempt; returns how many were written."""
        delivered = [o for o in outcomes if o.kind == "delivered"]
        retried = [o for o in outcomes if o.kind == "retry"]
        dead = [o for o in outcomes if o.kind == "dead"]
        written: set[int] = set()
        async with conn.transaction():
            if delivered:
                cur = await conn.execute(
                    self._sql_delivered,
                    (_ids(delivered), _attempts(delivered), [o.receipt for o in delivered], self.name),
                )
                written.update(r[0] for r in await cur.fetchall())
            if retried:
                cur = await conn.execute(
                    self._sql_retry,
                    (
                        _ids(retried),
                        _attempts(retried),
                        [o.delay for o in retried],
                        [o.error for o in retried],
                        self.name,
                    ),
                )
                written.update(r[0] for r in await cur.fetchall())
            if dead:
                cur = await conn.execute(
                    self._sql_dead, (_ids(dead), _attempts(dead), [o.error for o in dead], self.name)
                )
                written.update(r[0] for r in await cur.fetchall())
            if self._on_recorded is not None and written:
                await self._on_recorded(conn, [o for o in outcomes if o.event.id in written])
        for o in outcomes:
            if o.event.id not in written:
                log.warning(
                    "outbox %s: attempt %d of event %s ended after its lease; its outcome (%s) is not recorded",
                    self._schema,
                    o.event.attempt,
                    o.event.event_id,
                    o.kind,
                )
                continue
            if o.kind == "dead":
                log.error("outbox %s: event %s is dead: %s", self._schema, o.event.event_id, o.error)
            if self._metrics is not None:
                counter = {
                    "delivered": self._metrics.delivered,
                    "retry": self._metrics.retried,
                    "dead": self._metrics.dead,
                }
                counter[o.kind].labels(self._schema, o.event.destination).inc()
        return len(written)


def _ids(outcomes: Sequence[AttemptOutcome]) -> list[int]:
    return [o.event.id for o in outcomes]


def _attempts(outcomes: Sequence[AttemptOutcome]) -> list[int]:
    return [o.event.attempt for o in outcomes]


def _describe(exc: BaseException) -> str:
    return f"{type(exc).__name__}: {exc}"[:2000]


async def _wait(stop: asyncio.Event, seconds: float) -> None:
    with contextlib.suppress(TimeoutError):
        await asyncio.wait_for(stop.wait(), timeout=seconds)
