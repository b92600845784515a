"""identity, screening and complaints hand incidents to reporting through
their own outboxes: the real service processes (their dispatchers running as
background jobs) and a real reporting server, on real sockets, against a
real PostgreSQL. Reporting going down loses nothing; every incident arrives
once, under the origin's tenant, or waits as a dead letter an operator sees.

The delivery's mapping of reporting's answers, its token and its one channel
are checked against a scripted gRPC server on a real socket.
"""

from __future__ import annotations

import asyncio
import json
import pathlib
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable
from contextlib import AsyncExitStack, asynccontextmanager
from datetime import UTC, datetime
from typing import Any

import grpc
import psycopg
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from psycopg.rows import dict_row

from avgate.cli.outbox import replay
from avgate.kernel.db import libpq_url
from avgate.kernel.errors import InvalidArgument
from avgate.kernel.grpc.server import GrpcProcess
from avgate.kernel.keys import load_trusted_keys
from avgate.kernel.outbox import ClaimedEvent, PermanentDeliveryError, RetryableDeliveryError
from avgate.kernel.principal import TOKEN_METADATA_KEY, Principal, Role, TokenVerifier
from avgate.kernel.reporting_handoff import (
    CREATE_INCIDENT,
    DESTINATION,
    ReportingDelivery,
    decode_handoff,
    incident_event,
    report_incident,
)
from avgate.reporting.v1 import reporting_pb2, reporting_pb2_grpc
from services.complaints.__main__ import compose as compose_complaints
from services.complaints.config import ComplaintsSettings
from services.identity.__main__ import compose as compose_identity
from services.identity.config import IdentitySettings
from services.reporting.__main__ import compose as compose_reporting
from services.reporting.config import ReportingSettings
from services.screening.__main__ import compose as compose_screening
from services.screening.config import ScreeningSettings
from tests.conftest import Database, free_port_block
from tests.support import incident_input, signer, token_metadata

SENDERS = ("identity", "screening", "complaints")
COMPOSE = {
    "identity": (IdentitySettings, compose_identity),
    "screening": (ScreeningSettings, compose_screening),
    "complaints": (ComplaintsSettings, compose_complaints),
}
WAIT_SECONDS = 30.0


# --------------------------------------------------------------------------- helpers


def provider(tenant: str, *, client_address: str | None = None) -> Principal:
    return Principal(
        role=Role.PROVIDER,
        subject=f"key-{tenant}",
        tenant_id=tenant,
        client_address=client_address,
        request_id=f"req-{uuid.uuid4().hex[:8]}",
    )


@pytest.fixture
def tenant() -> str:
    return f"t-{uuid.uuid4().hex[:12]}"


async def enqueue_as(
    database: Database, service: str, incident: reporting_pb2.IncidentInput, origin: Principal
) -> uuid.UUID:
    """Queues the incident in `service`'s outbox as `service`'s own role, committed."""
    url = libpq_url(database.url_for(service))
    async with await psycopg.AsyncConnection.connect(url) as conn, conn.transaction():
        return await report_incident(conn, incident, schema=service, origin=origin)


async def query(database: Database, sql: str, *params: Any) -> list[dict[str, Any]]:
    async with await psycopg.AsyncConnection.connect(libpq_url(database.admin_url)) as conn:
        cur = conn.cursor(row_factory=dict_row)
        await cur.execute(sql, params)
        return list(await cur.fetchall())


async def outbox_row(database: Database, service: str, event_id: uuid.UUID) -> dict[str, Any]:
    rows = await query(database, f"select * from {service}.outbox where event_id = %s", event_id)
    assert len(rows) == 1, f"{service}.outbox holds {len(rows)} rows for {event_id}"
    return rows[0]


async def incidents_of(database: Database, tenant: str) -> list[dict[str, Any]]:
    return await query(database, "select * from reporting.incidents where tenant_id = %s", tenant)


async def wait_until(predicate: Callable[[], Awaitable[bool]], what: str) -> None:
    deadline = time.monotonic() + WAIT_SECONDS
    while not await predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {WAIT_SECONDS} s waiting for {what}")
        await asyncio.sleep(0.05)


async def wait_for_state(database: Database, events: dict[str, uuid.UUID], state: str) -> dict[str, dict[str, Any]]:
    async def reached() -> bool:
        return all([(await outbox_row(database, s, e))["state"] == state for s, e in events.items()])

    await wait_until(reached, f"{sorted(events)} events to be {state}")
    return {s: await outbox_row(database, s, e) for s, e in events.items()}


@asynccontextmanager
async def reporting_on(database: Database, keys_dir: pathlib.Path, port: int) -> AsyncIterator[GrpcProcess]:
    settings = ReportingSettings(
        trusted_keys_dir=keys_dir,  # type: ignore[call-arg]
        generate_keys=False,  # type: ignore[call-arg]
        metrics_port=-1,
        grpc_port=port,
        database_url=database.url_for("reporting"),
        sequencer_enabled=False,  # entries stay in the ledger's queue, where the tests read them
        dispatcher_enabled=False,
    )
    process = await compose_reporting(settings)
    await process.start()
    try:
        yield process
    finally:
        await process.stop()


@asynccontextmanager
async def senders(
    database: Database,
    keys_dir: pathlib.Path,
    reporting_port: int,
    names: Iterable[str] = SENDERS,
    **overrides: Any,
) -> AsyncIterator[dict[str, GrpcProcess]]:
    """The named service processes, each dispatching its outbox to reporting on `reporting_port`."""
    async with AsyncExitStack() as stack:
        processes = {}
        for name in names:
            settings_cls, compose = COMPOSE[name]
            fields: dict[str, Any] = {
                "trusted_keys_dir": keys_dir,
                "generate_keys": False,
                "metrics_port": -1,
                "grpc_port": 0,
                "database_url": database.url_for(name),
                "reporting_target": f"127.0.0.1:{reporting_port}",
                "dispatcher_max_attempts": 1000,  # only a permanent refusal makes a dead letter here
                "dispatcher_base_delay": 0.05,
                "dispatcher_max_delay": 0.2,
                **overrides,
            }
            process = await compose(settings_cls(**fields))
            await process.start()
            stack.push_async_callback(process.stop)
            processes[name] = process
        yield processes


@pytest.fixture(scope="module")
async def reporting_port(database: Database, keys_dir: pathlib.Path) -> AsyncIterator[int]:
    """A reporting server that stays up for the module's tests that need one."""
    port = free_port_block(1)
    async with reporting_on(database, keys_dir, port):
        yield port


def get_incident(port: int, keys_dir: pathlib.Path, origin: Principal, incident_id: str) -> Awaitable[Any]:
    """GetIncident as the gateway would forward it for `origin`."""
    metadata = token_metadata(
        signer(keys_dir), origin, audience="reporting", method="/avgate.reporting.v1.IncidentService/GetIncident"
    )

    async def call() -> reporting_pb2.GetIncidentResponse:
        async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as channel:
            stub = reporting_pb2_grpc.IncidentServiceStub(channel)
            return await stub.GetIncident(reporting_pb2.GetIncidentRequest(incident_id=incident_id), metadata=metadata)

    return call()


def claimed(payload: bytes, attempt: int = 1) -> ClaimedEvent:
    return ClaimedEvent(
        id=0,
        event_id=uuid.uuid4(),
        destination=DESTINATION,
        payload=payload,
        attempt=attempt,
        created_at=datetime.now(UTC),
    )


# --------------------------------------------------------------------------- enqueueing


class TestEnqueueing:
    async def test_an_incident_without_external_id_is_refused_and_nothing_is_queued(
        self, database: Database, tenant: str
    ) -> None:
        before = await query(database, "select count(*) as n from identity.outbox")
        with pytest.raises(InvalidArgument) as refused:
            await enqueue_as(database, "identity", incident_input(""), provider(tenant))
        assert [v.field for v in refused.value.violations] == ["incident.external_id"]
        assert await query(database, "select count(*) as n from identity.outbox") == before

    async def test_the_event_commits_with_the_callers_transaction_or_not_at_all(
        self, database: Database, tenant: str
    ) -> None:
        async with await psycopg.AsyncConnection.connect(libpq_url(database.url_for("screening"))) as conn:
            await conn.execute("begin")
            event_id = await report_incident(
                conn, incident_input("rolled-back"), schema="screening", origin=provider(tenant)
            )
            await conn.execute("rollback")
        assert await query(database, "select 1 from screening.outbox where event_id = %s", event_id) == []

    def test_the_event_carries_the_request_and_the_origin_but_not_the_end_users_address(self, tenant: str) -> None:
        origin = provider(tenant, client_address="203.0.113.7")
        event = incident_event(incident_input("ext-1"), origin=origin)
        assert event.destination == "reporting:incidents"
        assert b"203.0.113.7" not in event.payload
        handoff = decode_handoff(event.payload)
        assert reporting_pb2.CreateIncidentRequest.FromString(handoff.request).incident == incident_input("ext-1")
        assert handoff.origin == Principal(
            role=Role.PROVIDER, subject=origin.subject, tenant_id=tenant, request_id=origin.request_id
        )

    def test_the_same_incident_for_the_same_tenant_is_the_same_event(self, tenant: str) -> None:
        first = incident_event(incident_input("ext-1"), origin=provider(tenant))
        again = incident_event(incident_input("ext-1"), origin=provider(tenant))
        changed = incident_event(incident_input("ext-1", facts="Other facts."), origin=provider(tenant))
        elsewhere = incident_event(incident_input("ext-1"), origin=provider(f"{tenant}-b"))
        assert first.event_id == again.event_id
        assert len({first.event_id, changed.event_id, elsewhere.event_id}) == 3


# --------------------------------------------------------------------------- through the processes


class TestReportingDown:
    async def test_incidents_wait_while_reporting_is_down_and_each_arrives_once_when_it_comes_up(
        self, database: Database, keys_dir: pathlib.Path, tenant: str
    ) -> None:
        port = free_port_block(1)  # nothing listens here yet
        origin = provider(tenant)
        async with senders(database, keys_dir, port):
            events = {s: await enqueue_as(database, s, incident_input(f"down-{s}"), origin) for s in SENDERS}

            async def retried() -> bool:
                rows = [await outbox_row(database, s, e) for s, e in events.items()]
                return all(r["state"] == "pending" and r["attempts"] >= 2 for r in rows)

            await wait_until(retried, "every event to be retried while reporting is down")
            for service, event_id in events.items():
                row = await outbox_row(database, service, event_id)
                assert "UNAVAILABLE" in row["last_error"], service
            assert await incidents_of(database, tenant) == []

            async with reporting_on(database, keys_dir, port):
                delivered = await wait_for_state(database, events, "delivered")

        stored = {r["external_id"]: r for r in await incidents_of(database, tenant)}
        assert sorted(stored) == sorted(f"down-{s}" for s in SENDERS)  # each exactly once
        for service, row in delivered.items():
            receipt = json.loads(row["receipt"])
            assert receipt == {"incident_id": stored[f"down-{service}"]["incident_id"], "created": True}
            assert row["delivered_at"] is not None
        async with reporting_on(database, keys_dir, port):
            for service in SENDERS:
                got = await get_incident(port, keys_dir, origin, stored[f"down-{service}"]["incident_id"])
                assert got.incident.tenant_id == tenant
                assert got.incident.external_id == f"down-{service}"


class TestIdempotency:
    async def test_a_repeated_enqueue_of_the_same_incident_is_one_event_and_one_incident(
        self, database: Database, keys_dir: pathlib.Path, reporting_port: int, tenant: str
    ) -> None:
        origin = provider(tenant)
        first = await enqueue_as(database, "complaints", incident_input("dup"), origin)
        again = await enqueue_as(database, "complaints", incident_input("dup"), provider(tenant))
        assert first == again
        async with senders(database, keys_dir, reporting_port, ["complaints"]):
            await wait_for_state(database, {"complaints": first}, "delivered")
        assert [r["external_id"] for r in await incidents_of(database, tenant)] == ["dup"]

    async def test_a_redelivered_event_returns_the_incident_recorded_first(
        self, keys_dir: pathlib.Path, reporting_port: int, tenant: str, database: Database
    ) -> None:
        # A dispatcher that crashes between delivering and recording delivers the event again.
        event = incident_event(incident_input("again"), origin=provider(tenant))
        delivery = ReportingDelivery(f"127.0.0.1:{reporting_port}", signer(keys_dir, "screening"))
        try:
            first = await delivery.deliver(claimed(event.payload))
            second = await delivery.deliver(claimed(event.payload, attempt=2))
        finally:
            await delivery.close()
        assert first.details["created"] is True
        assert second.details == {"incident_id": first.details["incident_id"], "created": False}
        assert len(await incidents_of(database, tenant)) == 1


class TestDeadLetters:
    async def test_an_invalid_incident_is_dead_lettered_at_once_and_never_stored(
        self, database: Database, keys_dir: pathlib.Path, reporting_port: int, tenant: str
    ) -> None:
        event_id = await enqueue_as(database, "screening", incident_input("bad", facts=""), provider(tenant))
        async with senders(database, keys_dir, reporting_port, ["screening"]) as processes:
            (row,) = (await wait_for_state(database, {"screening": event_id}, "dead")).values()

            async def counted() -> bool:
                dead = processes["screening"].registry.get_sample_value(
                    "avgate_outbox_dead_letters", {"outbox": "screening"}
                )
                return bool(dead)

            await wait_until(counted, "the dead-letter gauge to count it")
        assert row["attempts"] == 1
        assert "INVALID_ARGUMENT" in row["last_error"]
        assert "incident.facts" in row["last_error"]
        assert await incidents_of(database, tenant) == []

    async def test_other_content_under_a_used_external_id_is_dead_lettered_as_a_conflict(
        self, database: Database, keys_dir: pathlib.Path, reporting_port: int, tenant: str
    ) -> None:
        origin = provider(tenant)
        first = await enqueue_as(database, "identity", incident_input("reused"), origin)
        async with senders(database, keys_dir, reporting_port, ["identity"]):
            await wait_for_state(database, {"identity": first}, "delivered")
            second = await enqueue_as(database, "identity", incident_input("reused", facts="Other facts."), origin)
            (row,) = (await wait_for_state(database, {"identity": second}, "dead")).values()
        assert row["attempts"] == 1
        assert "ALREADY_EXISTS" in row["last_error"]
        (stored,) = await incidents_of(database, tenant)
        assert stored["facts"] == incident_input("reused").facts


class TestNestedPrincipal:
    async def test_reporting_records_the_incident_under_the_origin_providers_tenant(
        self, database: Database, keys_dir: pathlib.Path, reporting_port: int, tenant: str
    ) -> None:
        origin = provider(tenant)
        # The incident names no tenant: reporting takes the origin's.
        event_id = await enqueue_as(database, "identity", incident_input("nested"), origin)
        async with senders(database, keys_dir, reporting_port, ["identity"]):
            await wait_for_state(database, {"identity": event_id}, "delivered")
        (stored,) = await incidents_of(database, tenant)
        (entry,) = await query(
            database, "select payload from ledger.queue where entry_id = %s", stored["ledger_entry_id"]
        )
        recorded = json.loads(bytes(entry["payload"]))
        assert recorded["tenant"] == tenant
        assert recorded["actor"] == {
            "role": "service",
            "subject": "identity",
            "request_id": origin.request_id,
            "on_behalf_of": {
                "role": "provider",
                "subject": origin.subject,
                "tenant": tenant,
                "request_id": origin.request_id,
            },
        }

    async def test_a_token_signed_by_an_untrusted_key_is_refused_and_the_replay_after_the_fix_arrives(
        self,
        database: Database,
        keys_dir: pathlib.Path,
        reporting_port: int,
        tenant: str,
        tmp_path: pathlib.Path,
    ) -> None:
        # identity started with a key reporting does not trust (a misconfigured deployment).
        rogue = tmp_path / "identity.key"
        rogue.write_bytes(
            Ed25519PrivateKey.generate().private_bytes(
                serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
            )
        )
        event_id = await enqueue_as(database, "identity", incident_input("untrusted"), provider(tenant))
        async with senders(database, keys_dir, reporting_port, ["identity"], signing_key_file=rogue):
            (row,) = (await wait_for_state(database, {"identity": event_id}, "dead")).values()
        assert row["attempts"] == 1
        assert "UNAUTHENTICATED" in row["last_error"]
        assert await incidents_of(database, tenant) == []

        # The operator mounts the right key and replays the dead letter.
        async with senders(database, keys_dir, reporting_port, ["identity"]):
            replayed = await replay(database.url_for("identity"), "identity", [event_id], reason="key fixed")
            assert replayed == [event_id]
            await wait_for_state(database, {"identity": event_id}, "delivered")
        assert [r["external_id"] for r in await incidents_of(database, tenant)] == ["untrusted"]


# --------------------------------------------------------------------------- the delivery against a scripted server


class ScriptedReporting(grpc.GenericRpcHandler):
    """Plays reporting's CreateIncident: answers `code` (OK with an incident), after `delay` seconds."""

    def __init__(self) -> None:
        self.code = grpc.StatusCode.OK
        self.delay = 0.0
        self.peers: list[str] = []
        self.metadata: list[dict[str, str]] = []

    def service(self, handler_call_details: grpc.HandlerCallDetails) -> grpc.RpcMethodHandler | None:
        if handler_call_details.method != CREATE_INCIDENT:  # type: ignore[attr-defined]
            return None
        return grpc.unary_unary_rpc_method_handler(
            self._create,
            request_deserializer=reporting_pb2.CreateIncidentRequest.FromString,
            response_serializer=reporting_pb2.CreateIncidentResponse.SerializeToString,
        )

    async def _create(
        self, request: reporting_pb2.CreateIncidentRequest, context: grpc.aio.ServicerContext
    ) -> reporting_pb2.CreateIncidentResponse:
        self.peers.append(context.peer())
        self.metadata.append({k: v for k, v in context.invocation_metadata() or () if isinstance(v, str)})
        if self.delay:
            await asyncio.sleep(self.delay)
        if self.code is not grpc.StatusCode.OK:
            await context.abort(self.code, f"scripted {self.code.name}")
        incident = reporting_pb2.Incident(incident_id="inc-1", external_id=request.incident.external_id)
        return reporting_pb2.CreateIncidentResponse(incident=incident, created=True)


@pytest.fixture
async def scripted() -> AsyncIterator[tuple[ScriptedReporting, str]]:
    handler = ScriptedReporting()
    server = grpc.aio.server()
    server.add_generic_rpc_handlers((handler,))
    port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    try:
        yield handler, f"127.0.0.1:{port}"
    finally:
        await server.stop(None)


@pytest.fixture
async def delivery(scripted: tuple[ScriptedReporting, str], keys_dir: pathlib.Path) -> AsyncIterator[ReportingDelivery]:
    handoff = ReportingDelivery(scripted[1], signer(keys_dir, "complaints"), timeout=2.0)
    try:
        yield handoff
    finally:
        await handoff.close()


RETRYABLE = ["UNAVAILABLE", "DEADLINE_EXCEEDED", "RESOURCE_EXHAUSTED", "ABORTED", "INTERNAL", "UNIMPLEMENTED"]
PERMANENT = ["INVALID_ARGUMENT", "ALREADY_EXISTS", "PERMISSION_DENIED", "UNAUTHENTICATED"]


class TestDeliveryOutcomes:
    async def test_ok_is_delivered_with_a_receipt_naming_the_incident(
        self, scripted: tuple[ScriptedReporting, str], delivery: ReportingDelivery
    ) -> None:
        receipt = await delivery.deliver(claimed(incident_event(incident_input("ok"), origin=provider("t-a")).payload))
        assert receipt.details == {"incident_id": "inc-1", "created": True}

    @pytest.mark.parametrize("code", RETRYABLE, ids=RETRYABLE)
    async def test_a_passing_failure_is_retried(
        self, code: str, scripted: tuple[ScriptedReporting, str], delivery: ReportingDelivery
    ) -> None:
        scripted[0].code = grpc.StatusCode[code]
        with pytest.raises(RetryableDeliveryError, match=code):
            await delivery.deliver(claimed(incident_event(incident_input("r"), origin=provider("t-a")).payload))

    @pytest.mark.parametrize("code", PERMANENT, ids=PERMANENT)
    async def test_a_refusal_is_permanent(
        self, code: str, scripted: tuple[ScriptedReporting, str], delivery: ReportingDelivery
    ) -> None:
        scripted[0].code = grpc.StatusCode[code]
        with pytest.raises(PermanentDeliveryError, match=code):
            await delivery.deliver(claimed(incident_event(incident_input("p"), origin=provider("t-a")).payload))

    async def test_no_answer_within_the_timeout_is_retried(
        self, scripted: tuple[ScriptedReporting, str], keys_dir: pathlib.Path
    ) -> None:
        scripted[0].delay = 2.0
        impatient = ReportingDelivery(scripted[1], signer(keys_dir, "identity"), timeout=0.2)
        try:
            with pytest.raises(RetryableDeliveryError, match="DEADLINE_EXCEEDED"):
                await impatient.deliver(claimed(incident_event(incident_input("slow"), origin=provider("t-a")).payload))
        finally:
            await impatient.close()

    @pytest.mark.parametrize(
        "payload",
        [
            b"\xff not json",
            b'{"version": 2, "request": "", "origin": {"role": "provider", "sub": "k"}}',
            b'{"version": 1, "request": "not base64!", "origin": {"role": "provider", "sub": "k"}}',
            b'{"version": 1, "request": "", "origin": {"role": "king", "sub": "k"}}',
            b'{"version": 1, "request": "", "origin": {"role": "provider", "sub": "k", "scope": []}}',
            b'{"version": 1, "request": ""}',
        ],
        ids=["not-json", "unknown-version", "bad-base64", "unknown-role", "bad-scope", "no-origin"],
    )
    async def test_a_payload_that_is_not_a_handoff_is_permanent_and_never_sent(
        self, payload: bytes, scripted: tuple[ScriptedReporting, str], delivery: ReportingDelivery
    ) -> None:
        with pytest.raises(PermanentDeliveryError, match="malformed incident handoff"):
            await delivery.deliver(claimed(payload))
        assert scripted[0].peers == []


class TestDeliveryCall:
    async def test_the_token_names_the_service_with_the_origin_nested_and_carries_the_request_id(
        self, scripted: tuple[ScriptedReporting, str], delivery: ReportingDelivery, keys_dir: pathlib.Path
    ) -> None:
        origin = provider("t-a", client_address="198.51.100.9")
        await delivery.deliver(claimed(incident_event(incident_input("tok"), origin=origin).payload))
        (metadata,) = scripted[0].metadata
        verifier = TokenVerifier(audience="reporting", trusted_keys=load_trusted_keys(keys_dir))
        caller = verifier.verify(metadata[TOKEN_METADATA_KEY], method=CREATE_INCIDENT)
        assert caller.role is Role.SERVICE and caller.subject == "complaints"
        assert caller.origin == Principal(
            role=Role.PROVIDER, subject=origin.subject, tenant_id="t-a", request_id=origin.request_id
        )
        assert caller.effective.tenant_id == "t-a"
        assert metadata["x-request-id"] == origin.request_id

    async def test_every_delivery_of_a_dispatcher_shares_one_connection(
        self, scripted: tuple[ScriptedReporting, str], delivery: ReportingDelivery
    ) -> None:
        for n in range(5):
            await delivery.deliver(claimed(incident_event(incident_input(f"c-{n}"), origin=provider("t-a")).payload))
        assert len(scripted[0].peers) == 5
        assert len(set(scripted[0].peers)) == 1  # one client address and port: one channel, one connection
