"""The transactional outbox against a real PostgreSQL and a real local HTTP
endpoint: enqueue inside the business transaction, dispatch with retries,
dead letters and replay, replicas and crash recovery, signed deliveries.

The outbox lives in a scratch schema of the module's database, and the
tests connect as the superuser: the kernel's outbox belongs to no service
yet, and each service will get its table from its own migration.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import pathlib
import random
import threading
import time
import uuid
from collections import Counter as Tally
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime
from http.server import BaseHTTPRequestHandler
from typing import Any

import psycopg
import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from prometheus_client import CollectorRegistry
from psycopg.rows import dict_row
from sqlalchemy import text

from avgate.kernel.db import create_engine_for, libpq_url, sync_engine
from avgate.kernel.deliveries import FileDropDelivery, HttpJsonDelivery, document_payload, verify_document
from avgate.kernel.keys import SigningKey
from avgate.kernel.outbox import (
    AttemptOutcome,
    ClaimedEvent,
    Dispatcher,
    InvalidDeliverySignature,
    OutboxEvent,
    OutboxMetrics,
    PermanentDeliveryError,
    Receipt,
    RetryableDeliveryError,
    backoff_delay,
    enqueue,
    replay_dead,
    sign_delivery,
    verify_delivery,
)
from services.complaints.models import SCHEMA as COMPLAINTS_SCHEMA
from tests.conftest import Database, free_port
from tests.integration.authority_server import AuthorityServer
from tests.support.http import LocalHttpServer

# The outbox of a real service schema, built by its Alembic migrations and used with its own role,
# as in production: complaints' (it has nothing else yet, so no other rows are disturbed).
SCHEMA = COMPLAINTS_SCHEMA
OWNER = "complaints"
DESTINATION = "authority:cyberspace"


# --------------------------------------------------------------------------- a real HTTP endpoint


@dataclass
class Seen:
    at: float
    idempotency_key: str
    document: dict[str, Any]
    status: int


@dataclass
class Endpoint:
    """A local authority endpoint; `answer(event_id, nth call for it)` picks each status."""

    answer: Callable[[str, int], int] = lambda event_id, nth: 200
    latency: float = 0.0
    seen: list[Seen] = field(default_factory=list)
    url: str = ""
    _lock: threading.Lock = field(default_factory=threading.Lock)

    def record(self, key: str, document: dict[str, Any]) -> int:
        if self.latency:
            time.sleep(self.latency)
        with self._lock:
            nth = sum(1 for s in self.seen if s.document["event_id"] == document["event_id"]) + 1
            status = self.answer(document["event_id"], nth)
            self.seen.append(Seen(time.monotonic(), key, document, status))
            return status

    def accepted(self) -> Tally[str]:
        with self._lock:
            return Tally(s.document["event_id"] for s in self.seen if 200 <= s.status < 300)

    def calls_for(self, event_id: uuid.UUID) -> list[Seen]:
        with self._lock:
            return [s for s in self.seen if s.document["event_id"] == str(event_id)]


@pytest.fixture
def endpoint() -> Iterator[Endpoint]:
    state = Endpoint()

    class Handler(BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            body = self.rfile.read(int(self.headers["Content-Length"]))
            status = state.record(self.headers.get("Idempotency-Key", ""), json.loads(body))
            answer = json.dumps({"status": status}).encode()
            self.send_response(status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(answer)))
            self.end_headers()
            self.wfile.write(answer)

        def log_message(self, *args: Any) -> None:
            pass

    server = LocalHttpServer(("127.0.0.1", 0), Handler)
    server.daemon_threads = True
    state.url = f"http://127.0.0.1:{server.server_port}/reports"
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    thread.start()
    try:
        yield state
    finally:
        server.shutdown()
        server.server_close()


# --------------------------------------------------------------------------- the scratch schema


@pytest.fixture(scope="module")
def outbox_db(database: Database) -> Database:
    """The module's database (every schema migrated) with a stand-in business table beside
    complaints' migrated outbox, created by the complaints role itself: a change and its event
    commit together in the service's own schema, with the service's own privileges."""
    engine = sync_engine(database.url_for(OWNER))
    try:
        with engine.begin() as conn:
            conn.execute(text(f"create table {SCHEMA}.business (id uuid primary key, note text not null)"))
    finally:
        engine.dispose()
    return database


@pytest.fixture
async def db(outbox_db: Database) -> Database:
    async with await psycopg.AsyncConnection.connect(libpq_url(outbox_db.url_for(OWNER)), autocommit=True) as conn:
        await conn.execute(f"delete from {SCHEMA}.outbox")
        await conn.execute(f"delete from {SCHEMA}.business")
    return outbox_db


def url(db: Database) -> str:
    """The service role's URL: the dispatcher runs with the privileges it has in production."""
    return libpq_url(db.url_for(OWNER))


async def rows(db: Database) -> dict[uuid.UUID, dict[str, Any]]:
    async with await psycopg.AsyncConnection.connect(url(db)) as conn:
        cur = conn.cursor(row_factory=dict_row)
        await cur.execute(f"select * from {SCHEMA}.outbox order by id")
        return {r["event_id"]: r for r in await cur.fetchall()}


async def enqueue_committed(db: Database, *events: OutboxEvent) -> None:
    async with await psycopg.AsyncConnection.connect(url(db)) as conn:
        for event in events:
            async with conn.transaction():
                await enqueue(conn, event, schema=SCHEMA)


def event(n: int | str = 0, destination: str = DESTINATION) -> OutboxEvent:
    return OutboxEvent(destination, json.dumps({"incident": str(n)}, separators=(",", ":")).encode())


def signer() -> SigningKey:
    return SigningKey("reporting", Ed25519PrivateKey.generate())


async def wait_until(predicate: Callable[[], Awaitable[bool]], timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not await predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout} s waiting for {what}")
        await asyncio.sleep(0.02)


async def state_is(db: Database, event_id: uuid.UUID, state: str) -> bool:
    row = (await rows(db)).get(event_id)
    return row is not None and row["state"] == state


@asynccontextmanager
async def running(*dispatchers: Dispatcher) -> AsyncIterator[None]:
    stop = asyncio.Event()
    tasks = [asyncio.create_task(d.run(stop)) for d in dispatchers]
    try:
        yield
    finally:
        stop.set()
        await asyncio.wait_for(asyncio.gather(*tasks), timeout=10)


def dispatcher(db: Database, endpoint: Endpoint, **options: Any) -> Dispatcher:
    settings: dict[str, Any] = {"base_delay": 0.01, "max_delay": 0.05, "poll_interval": 0.02, **options}
    return Dispatcher(url(db), SCHEMA, {"authority:": HttpJsonDelivery(endpoint.url, timeout=2)}, **settings)


class MaxJitter(random.Random):
    """Always the top of the jitter window, so the test can see the delays grow."""

    def uniform(self, a: float, b: float) -> float:
        return b


# --------------------------------------------------------------------------- enqueue


@pytest.mark.db
class TestEnqueue:
    async def test_event_commits_with_the_business_change(self, db: Database) -> None:
        engine = create_engine_for(db.url_for(OWNER))
        ev = event(1)
        try:
            async with engine.connect() as conn, conn.begin():
                await conn.execute(text(f"insert into {SCHEMA}.business values (:id, 'changed')"), {"id": ev.event_id})
                await enqueue(conn, ev, schema=SCHEMA)
        finally:
            await engine.dispose()
        row = (await rows(db))[ev.event_id]
        assert (row["destination"], bytes(row["payload"]), row["state"], row["attempts"]) == (
            DESTINATION,
            ev.payload,
            "pending",
            0,
        )

    async def test_rolled_back_change_leaves_no_event(self, db: Database) -> None:
        async with await psycopg.AsyncConnection.connect(url(db)) as conn:
            with pytest.raises(RuntimeError, match="business failed"):
                async with conn.transaction():
                    await conn.execute(f"insert into {SCHEMA}.business values (%s, 'changed')", (uuid.uuid4(),))
                    await enqueue(conn, event(2), schema=SCHEMA)
                    raise RuntimeError("business failed")
        assert await rows(db) == {}

    async def test_retried_enqueue_is_recorded_once(self, db: Database) -> None:
        ev = event(3)
        await enqueue_committed(db, ev, ev, OutboxEvent(ev.destination, b"retried", ev.event_id))
        recorded = await rows(db)
        assert list(recorded) == [ev.event_id]
        assert bytes(recorded[ev.event_id]["payload"]) == ev.payload

    async def test_enqueue_outside_a_transaction_is_refused(self, db: Database) -> None:
        async with await psycopg.AsyncConnection.connect(url(db), autocommit=True) as conn:
            with pytest.raises(RuntimeError, match="open transaction"):
                await enqueue(conn, event(4), schema=SCHEMA)
        engine = create_engine_for(db.url_for(OWNER))
        try:
            async with engine.connect() as conn:
                with pytest.raises(RuntimeError, match="open transaction"):
                    await enqueue(conn, event(4), schema=SCHEMA)
        finally:
            await engine.dispose()
        assert await rows(db) == {}

    def test_destination_is_one_line(self) -> None:
        with pytest.raises(ValueError, match="single line"):
            OutboxEvent("authority:x\nforged", b"{}")


# --------------------------------------------------------------------------- dispatch


@pytest.mark.db
class TestDispatch:
    async def test_delivers_and_records_the_receipt(self, db: Database, endpoint: Endpoint) -> None:
        ev = event(10)
        key = signer()
        await enqueue_committed(db, ev)
        registry = CollectorRegistry()
        async with running(dispatcher(db, endpoint, signer=key, metrics=OutboxMetrics(registry))):
            await wait_until(lambda: state_is(db, ev.event_id, "delivered"), 5, "delivery")
        row = (await rows(db))[ev.event_id]
        assert row["attempts"] == 1 and row["delivered_at"] is not None and row["claimed_by"] is None
        (call,) = endpoint.seen
        receipt = json.loads(row["receipt"])
        answered = json.dumps({"status": 200}).encode()
        assert receipt == {"status": 200, "body_sha256": hashlib.sha256(answered).hexdigest()}
        assert call.idempotency_key == str(ev.event_id) == call.document["event_id"]
        assert verify_document(call.document, {key.kid: key.private_key.public_key()}) == ev.payload
        labels = {"outbox": SCHEMA, "destination": DESTINATION}
        assert registry.get_sample_value("avgate_outbox_delivered_total", labels) == 1

    async def test_flaky_destination_is_retried_with_growing_delays_then_delivered_once(
        self, db: Database, endpoint: Endpoint
    ) -> None:
        endpoint.answer = lambda event_id, nth: 503 if nth <= 2 else 200
        ev = event(11)
        await enqueue_committed(db, ev)
        async with running(dispatcher(db, endpoint, base_delay=0.2, max_delay=5, rng=MaxJitter())):
            await wait_until(lambda: state_is(db, ev.event_id, "delivered"), 10, "delivery after two 503s")
        calls = endpoint.calls_for(ev.event_id)
        assert [c.status for c in calls] == [503, 503, 200]
        assert {c.idempotency_key for c in calls} == {str(ev.event_id)}
        first_gap, second_gap = calls[1].at - calls[0].at, calls[2].at - calls[1].at
        assert first_gap >= 0.2 and second_gap >= 0.4 and second_gap > first_gap
        assert [c.document["attempt"] for c in calls] == [1, 2, 3]
        assert endpoint.accepted() == {str(ev.event_id): 1}
        row = (await rows(db))[ev.event_id]
        assert row["attempts"] == 3 and row["last_error"] is None

    async def test_client_error_goes_dead_at_once(self, db: Database, endpoint: Endpoint) -> None:
        endpoint.answer = lambda event_id, nth: 400
        ev = event(12)
        await enqueue_committed(db, ev)
        registry = CollectorRegistry()
        async with running(dispatcher(db, endpoint, metrics=OutboxMetrics(registry))):
            await wait_until(lambda: state_is(db, ev.event_id, "dead"), 5, "dead letter")
            await wait_until(
                lambda: _sample(registry, "avgate_outbox_dead_letters", {"outbox": SCHEMA}, 1.0), 2, "dead-letter gauge"
            )
        row = (await rows(db))[ev.event_id]
        assert row["attempts"] == 1 and "answered 400" in row["last_error"]
        assert len(endpoint.calls_for(ev.event_id)) == 1
        assert registry.get_sample_value("avgate_outbox_dead_total", {"outbox": SCHEMA, "destination": DESTINATION})

    async def test_exhausted_attempts_go_dead(self, db: Database, endpoint: Endpoint) -> None:
        endpoint.answer = lambda event_id, nth: 503
        ev = event(13)
        await enqueue_committed(db, ev)
        async with running(dispatcher(db, endpoint, max_attempts=3)):
            await wait_until(lambda: state_is(db, ev.event_id, "dead"), 5, "dead letter")
        row = (await rows(db))[ev.event_id]
        assert row["attempts"] == 3 and "attempts exhausted" in row["last_error"]
        assert [c.status for c in endpoint.calls_for(ev.event_id)] == [503, 503, 503]

    async def test_replayed_dead_event_is_delivered(self, db: Database, endpoint: Endpoint) -> None:
        endpoint.answer = lambda event_id, nth: 400 if nth == 1 else 200
        replayed, left_dead = event(14), event(15)
        await enqueue_committed(db, replayed, left_dead)
        d = dispatcher(db, endpoint)
        async with running(d):
            await wait_until(lambda: state_is(db, left_dead.event_id, "dead"), 5, "dead letters")
            await wait_until(lambda: state_is(db, replayed.event_id, "dead"), 5, "dead letters")
            assert await replay_dead(url(db), SCHEMA, event_ids=[replayed.event_id]) == [replayed.event_id]
            await wait_until(lambda: state_is(db, replayed.event_id, "delivered"), 5, "replayed delivery")
        after = await rows(db)
        assert after[replayed.event_id]["attempts"] == 1
        assert after[left_dead.event_id]["state"] == "dead"
        assert endpoint.accepted() == {str(replayed.event_id): 1}

    async def test_replay_runs_in_the_callers_transaction(self, db: Database, endpoint: Endpoint) -> None:
        endpoint.answer = lambda event_id, nth: 400
        ev = event(16)
        await enqueue_committed(db, ev)
        async with running(dispatcher(db, endpoint)):
            await wait_until(lambda: state_is(db, ev.event_id, "dead"), 5, "dead letter")
        async with await psycopg.AsyncConnection.connect(url(db)) as conn:
            assert await replay_dead(conn, SCHEMA) == [ev.event_id]
            await conn.rollback()
        assert (await rows(db))[ev.event_id]["state"] == "dead"

    async def test_two_replicas_deliver_each_event_exactly_once(self, db: Database, endpoint: Endpoint) -> None:
        endpoint.latency = 0.005
        events = [event(n) for n in range(200)]
        await enqueue_committed(db, *events)
        counts: list[Tally[str]] = [Tally(), Tally()]

        def counted(i: int) -> Dispatcher:
            inner = HttpJsonDelivery(endpoint.url, timeout=5)

            class Counting:
                async def deliver(self, ev: ClaimedEvent) -> Receipt:
                    counts[i][str(ev.event_id)] += 1
                    return await inner.deliver(ev)

            return Dispatcher(url(db), SCHEMA, {"authority:": Counting()}, batch_size=20, poll_interval=0.02)

        async def all_delivered() -> bool:
            return all(r["state"] == "delivered" for r in (await rows(db)).values())

        async with running(counted(0), counted(1)):
            await wait_until(all_delivered, 20, "200 deliveries")
        assert endpoint.accepted() == {str(e.event_id): 1 for e in events}
        assert len(endpoint.seen) == 200
        assert counts[0] and counts[1], "both replicas should have delivered"
        assert not set(counts[0]) & set(counts[1])

    async def test_expired_lease_is_taken_over_by_another_replica(self, db: Database, endpoint: Endpoint) -> None:
        ev = event(17)
        await enqueue_committed(db, ev)
        # The lease is long against the 0.5 s look below, so a slow machine cannot let it expire meanwhile.
        crashed = dispatcher(db, endpoint, lease_seconds=3.0, name="crashed")
        async with await psycopg.AsyncConnection.connect(url(db), autocommit=True) as conn:
            (claimed,) = await crashed.claim(conn, 10)
        claimed_at = time.monotonic()
        row = (await rows(db))[ev.event_id]
        assert (row["claimed_by"], row["attempts"]) == ("crashed", 1)
        async with running(dispatcher(db, endpoint, name="survivor")):
            await asyncio.sleep(0.5)
            assert endpoint.seen == [], "a leased row must not be delivered by another replica"
            await wait_until(lambda: state_is(db, ev.event_id, "delivered"), 10, "takeover")
        (call,) = endpoint.seen
        assert call.at - claimed_at >= 2.9 and call.document["attempt"] == 2
        # The crashed dispatcher's late outcome does not overwrite the later attempt's.
        late = await crashed.attempt(claimed)
        async with await psycopg.AsyncConnection.connect(url(db), autocommit=True) as conn:
            assert await crashed.record(conn, [late]) == 0
        row = (await rows(db))[ev.event_id]
        assert (row["state"], row["attempts"]) == ("delivered", 2)

    async def test_exhausted_row_whose_dispatcher_crashed_goes_dead(self, db: Database, endpoint: Endpoint) -> None:
        ev = event(18)
        await enqueue_committed(db, ev)
        crashed = dispatcher(db, endpoint, lease_seconds=0.2, max_attempts=1)
        async with await psycopg.AsyncConnection.connect(url(db), autocommit=True) as conn:
            assert len(await crashed.claim(conn, 10)) == 1
            await asyncio.sleep(0.3)
            assert await crashed.claim(conn, 10) == []
        row = (await rows(db))[ev.event_id]
        assert (row["state"], row["attempts"]) == ("dead", 1) and "lease" in row["last_error"]
        assert endpoint.seen == []

    async def test_unknown_destination_is_retried_not_lost(self, db: Database, endpoint: Endpoint) -> None:
        ev = event(19, destination="reporting.CreateIncident")
        await enqueue_committed(db, ev)
        async with running(dispatcher(db, endpoint, max_attempts=2)):
            await wait_until(lambda: state_is(db, ev.event_id, "dead"), 5, "dead letter")
        assert "no delivery is configured" in (await rows(db))[ev.event_id]["last_error"]

    async def test_lag_gauge_reports_the_oldest_pending_event(self, db: Database, endpoint: Endpoint) -> None:
        endpoint.answer = lambda event_id, nth: 503
        await enqueue_committed(db, event(20), event(21))
        registry = CollectorRegistry()
        async with running(dispatcher(db, endpoint, base_delay=10, max_delay=10, metrics=OutboxMetrics(registry))):
            await wait_until(lambda: _sample(registry, "avgate_outbox_pending", {"outbox": SCHEMA}, 2.0), 5, "gauge")
            await asyncio.sleep(0.3)
        assert (registry.get_sample_value("avgate_outbox_oldest_pending_age_seconds", {"outbox": SCHEMA}) or 0) > 0.1


async def _sample(registry: CollectorRegistry, name: str, labels: dict[str, str], want: float) -> bool:
    return registry.get_sample_value(name, labels) == want


# --------------------------------------------------------------------------- the HTTP adapter's answers


@pytest.mark.db
class TestHttpJsonDelivery:
    @pytest.mark.parametrize(
        ("status", "error"),
        [
            (200, None),
            (202, None),
            (408, RetryableDeliveryError),
            (429, RetryableDeliveryError),
            (500, RetryableDeliveryError),
            (503, RetryableDeliveryError),
            (301, PermanentDeliveryError),
            (400, PermanentDeliveryError),
            (401, PermanentDeliveryError),
            (409, PermanentDeliveryError),
        ],
        ids=lambda v: str(v.__name__ if isinstance(v, type) else v),
    )
    async def test_status_decides_receipt_retry_or_refusal(
        self, endpoint: Endpoint, status: int, error: type[Exception] | None
    ) -> None:
        endpoint.answer = lambda event_id, nth: status
        delivery = HttpJsonDelivery(endpoint.url, bearer_token="t0ken", timeout=2)
        claimed = _claimed(event(30))
        if error is None:
            assert (await delivery.deliver(claimed)).details["status"] == status
        else:
            with pytest.raises(error, match=str(status)):
                await delivery.deliver(claimed)

    async def test_unreachable_endpoint_is_retryable(self) -> None:
        delivery = HttpJsonDelivery(f"http://127.0.0.1:{free_port()}/reports", timeout=2)
        with pytest.raises(RetryableDeliveryError):
            await delivery.deliver(_claimed(event(31)))

    async def test_slow_endpoint_is_retryable(self, endpoint: Endpoint) -> None:
        endpoint.latency = 0.5
        with pytest.raises(RetryableDeliveryError):
            await HttpJsonDelivery(endpoint.url, timeout=0.1).deliver(_claimed(event(32)))


class TestHttpConnections:
    async def test_deliveries_reuse_kept_alive_connections(self) -> None:
        with AuthorityServer() as authority:
            delivery = HttpJsonDelivery(authority.url, timeout=2)
            receipts = [await delivery.deliver(_claimed(event(60 + n))) for n in range(20)]
        assert len(authority.raw) == 20
        assert len(authority.client_ports()) == 1 and delivery.connections_opened == 1
        assert {r.http_status for r in receipts} == {200}
        first = receipts[0].details
        assert first["receipt_id"] == f"rcpt-{authority.raw[0].idempotency_key[:8]}"
        assert first["body_sha256"] == authority.raw[0].answer_sha256

    async def test_without_keep_alive_every_delivery_connects_anew(self) -> None:
        with AuthorityServer() as authority:
            delivery = HttpJsonDelivery(authority.url, timeout=2, keep_alive=False)
            for n in range(5):
                await delivery.deliver(_claimed(event(80 + n)))
        assert len(authority.client_ports()) == 5 and delivery.connections_opened == 5

    async def test_a_connection_the_server_dropped_while_idle_is_replaced(self) -> None:
        """The server keeps nothing alive but does not say so: each reuse finds a closed socket."""
        requests: list[str] = []

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def do_POST(self) -> None:
                self.rfile.read(int(self.headers["Content-Length"]))
                requests.append(self.headers["Idempotency-Key"])
                self.send_response(200)
                self.send_header("Content-Length", "2")
                self.end_headers()
                self.wfile.write(b"{}")
                self.close_connection = True  # without "Connection: close"

            def log_message(self, *args: Any) -> None:
                pass

        server = LocalHttpServer(("127.0.0.1", 0), Handler)
        server.daemon_threads = True
        threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True).start()
        try:
            delivery = HttpJsonDelivery(f"http://127.0.0.1:{server.server_port}/r", timeout=2)
            events = [event(90 + n) for n in range(5)]
            for ev in events:
                await delivery.deliver(_claimed(ev))
                await asyncio.sleep(0.02)  # let the server's close arrive
        finally:
            server.shutdown()
            server.server_close()
        assert requests == [str(ev.event_id) for ev in events]  # each sent once, none lost
        assert delivery.connections_opened == 5

    @pytest.mark.parametrize(("status", "error"), [(503, RetryableDeliveryError), (400, PermanentDeliveryError)])
    async def test_a_failed_attempt_carries_its_http_status(
        self, status: int, error: type[RetryableDeliveryError | PermanentDeliveryError]
    ) -> None:
        with AuthorityServer(policy=lambda event_id, nth: status) as authority, pytest.raises(error) as failed:
            await HttpJsonDelivery(authority.url, timeout=2).deliver(_claimed(event(70)))
        assert failed.value.http_status == status

    async def test_no_answer_has_no_http_status(self) -> None:
        with pytest.raises(RetryableDeliveryError) as failed:
            await HttpJsonDelivery(f"http://127.0.0.1:{free_port()}/r", timeout=2).deliver(_claimed(event(71)))
        assert failed.value.http_status is None


def _claimed(ev: OutboxEvent, key: SigningKey | None = None) -> ClaimedEvent:
    return ClaimedEvent(
        id=1,
        event_id=ev.event_id,
        destination=ev.destination,
        payload=ev.payload,
        attempt=1,
        created_at=datetime.now(UTC),
        signature=sign_delivery(key, ev.event_id, ev.destination, ev.payload) if key else None,
    )


# --------------------------------------------------------------------------- the owning service's hook


@pytest.mark.db
class TestOnRecorded:
    async def test_the_hook_sees_each_written_outcome_inside_the_recording_transaction(
        self, db: Database, endpoint: Endpoint
    ) -> None:
        endpoint.answer = lambda event_id, nth: 503 if nth == 1 else 200
        ev = event(50)
        await enqueue_committed(db, ev)
        seen: list[tuple[Any, ...]] = []

        async def hook(conn: psycopg.AsyncConnection[Any], outcomes: Sequence[AttemptOutcome]) -> None:
            for o in outcomes:
                cur = await conn.execute(f"select state from {SCHEMA}.outbox where event_id = %s", (o.event_id,))
                (state,) = await cur.fetchone() or ("?",)
                in_transaction = conn.info.transaction_status is psycopg.pq.TransactionStatus.INTRANS
                seen.append((o.attempt, o.kind, o.http_status, state, in_transaction))
                assert o.started_at is not None and o.duration > 0 and o.destination == DESTINATION

        async with running(dispatcher(db, endpoint, on_recorded=hook)):
            await wait_until(lambda: state_is(db, ev.event_id, "delivered"), 5, "delivery")
        assert seen == [(1, "retry", 503, "pending", True), (2, "delivered", 200, "delivered", True)]

    async def test_a_failing_hook_records_nothing(self, db: Database, endpoint: Endpoint) -> None:
        ev = event(51)
        await enqueue_committed(db, ev)

        async def failing(conn: psycopg.AsyncConnection[Any], outcomes: Sequence[AttemptOutcome]) -> None:
            raise RuntimeError("bookkeeping failed")

        d = dispatcher(db, endpoint, on_recorded=failing, name="hooked")
        async with await psycopg.AsyncConnection.connect(url(db), autocommit=True) as conn:
            (claimed,) = await d.claim(conn, 10)
            outcome = await d.attempt(claimed)
            assert outcome.kind == "delivered"
            with pytest.raises(RuntimeError, match="bookkeeping failed"):
                await d.record(conn, [outcome])
        row = (await rows(db))[ev.event_id]
        # Still leased to the attempt: after the lease it is delivered again, under the same key.
        assert (row["state"], row["claimed_by"], row["receipt"]) == ("pending", "hooked", None)

    async def test_a_row_found_exhausted_at_claim_reaches_the_hook_as_dead(
        self, db: Database, endpoint: Endpoint
    ) -> None:
        ev = event(52)
        await enqueue_committed(db, ev)
        passed: list[AttemptOutcome] = []

        async def hook(conn: psycopg.AsyncConnection[Any], outcomes: Sequence[AttemptOutcome]) -> None:
            passed.extend(outcomes)

        crashed = dispatcher(db, endpoint, lease_seconds=0.2, max_attempts=1, on_recorded=hook)
        async with await psycopg.AsyncConnection.connect(url(db), autocommit=True) as conn:
            assert len(await crashed.claim(conn, 10)) == 1
            assert passed == []
            await asyncio.sleep(0.3)
            assert await crashed.claim(conn, 10) == []
        (dead,) = passed
        assert (dead.event_id, dead.kind, dead.attempt, dead.started_at) == (ev.event_id, "dead", 1, None)
        assert "lease" in (dead.error or "")
        assert (await rows(db))[ev.event_id]["state"] == "dead"


# --------------------------------------------------------------------------- signatures


class TestSignatures:
    def test_signature_verifies_and_fails_on_any_change(self) -> None:
        key = signer()
        public = key.private_key.public_key()
        ev = event(40)
        sig = sign_delivery(key, ev.event_id, ev.destination, ev.payload)
        assert sig.key_id == key.kid and sig.issuer == "reporting"
        verify_delivery(public, ev.event_id, ev.destination, ev.payload, sig.signature)
        for changed in [
            (ev.event_id, ev.destination, ev.payload + b" "),
            (ev.event_id, "authority:culture", ev.payload),
            (uuid.uuid4(), ev.destination, ev.payload),
        ]:
            with pytest.raises(InvalidDeliverySignature):
                verify_delivery(public, *changed, sig.signature)
        with pytest.raises(InvalidDeliverySignature):
            verify_delivery(
                Ed25519PrivateKey.generate().public_key(), ev.event_id, ev.destination, ev.payload, sig.signature
            )

    async def test_file_drop_writes_verifiable_signed_lines(self, tmp_path: pathlib.Path) -> None:
        key = signer()
        trusted = {key.kid: key.private_key.public_key()}
        day = datetime(2025, 3, 1, 23, 59, tzinfo=UTC)
        drop = FileDropDelivery(tmp_path / "exports", clock=lambda: day)
        binary = OutboxEvent(DESTINATION, b"\x00\xffnot json")
        events = [event(41), event(42), binary]
        receipts = [await drop.deliver(_claimed(e, key)) for e in events]
        path = tmp_path / "exports" / "outbox-2025-03-01.jsonl"
        lines = path.read_bytes().splitlines(keepends=True)
        assert [r.details["offset"] for r in receipts] == [0, len(lines[0]), len(lines[0]) + len(lines[1])]
        assert [r.details["line_sha256"] for r in receipts] == [hashlib.sha256(line).hexdigest() for line in lines]
        documents = [json.loads(line) for line in lines]
        assert [d["payload_encoding"] for d in documents] == ["json", "json", "base64"]
        assert documents[0]["payload"] == {"incident": "41"}
        for document, ev in zip(documents, events, strict=True):
            assert verify_document(document, trusted) == ev.payload
            assert document_payload(document) == ev.payload
        altered = {**documents[0], "payload": {"incident": "666"}}
        with pytest.raises(InvalidDeliverySignature):
            verify_document(altered, trusted)
        with pytest.raises(InvalidDeliverySignature):
            verify_document({**documents[1], "signature": None}, trusted)

    @pytest.mark.db
    async def test_dispatcher_signs_file_drops(self, db: Database, tmp_path: pathlib.Path) -> None:
        key = signer()
        ev = event(43, destination="authority:export")
        await enqueue_committed(db, ev)
        d = Dispatcher(
            url(db), SCHEMA, {"authority:export": FileDropDelivery(tmp_path)}, poll_interval=0.02, signer=key
        )
        async with running(d):
            await wait_until(lambda: state_is(db, ev.event_id, "delivered"), 5, "file drop")
        (path,) = tmp_path.glob("outbox-*.jsonl")
        (document,) = [json.loads(line) for line in path.read_text().splitlines()]
        assert verify_document(document, {key.kid: key.private_key.public_key()}) == ev.payload
        assert json.loads((await rows(db))[ev.event_id]["receipt"])["file"] == path.name


# --------------------------------------------------------------------------- backoff


class TestBackoff:
    @pytest.mark.parametrize("attempts", [0, 1, 2, 5, 10, 30, 2000])
    def test_delay_is_full_jitter_under_a_capped_exponential(self, attempts: int) -> None:
        rng = random.Random(attempts)
        ceiling = min(300.0, 0.5 * 2 ** min(attempts, 64))
        delays = [backoff_delay(attempts, base=0.5, cap=300.0, rng=rng) for _ in range(500)]
        assert all(0 <= d <= ceiling for d in delays)
        # Full jitter spreads over the whole window, not just near its top.
        assert min(delays) < ceiling * 0.1 and max(delays) > ceiling * 0.9

    def test_seeded_rng_repeats_its_delays(self) -> None:
        first = [backoff_delay(n, base=0.01, cap=1.0, rng=random.Random(7)) for n in range(8)]
        second = [backoff_delay(n, base=0.01, cap=1.0, rng=random.Random(7)) for n in range(8)]
        assert first == second
