"""Reports reach the authorities: incidents created over real gRPC, delivered
by reporting's own dispatcher (built from its settings) to a real local HTTP
server and to a file drop, signed with reporting's key, retried while an
authority is down (every report exactly once after it recovers, with the raw
attempts counted), and replayed from the dead-letter state by the CLI."""

from __future__ import annotations

import asyncio
import json
import pathlib
import threading
import time
import uuid
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler
from typing import Any

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey
from prometheus_client import CollectorRegistry

from avgate.cli.outbox import replay
from avgate.kernel.deliveries import verify_document
from avgate.kernel.keys import load_trusted_keys
from avgate.kernel.outbox import Dispatcher
from avgate.reporting.v1 import reporting_pb2_grpc
from services.reporting.__main__ import compose
from services.reporting.config import ReportingSettings
from services.reporting.incidents.domain import outbox_event_id
from services.reporting.wiring import authority_dispatcher
from tests.conftest import Database
from tests.support import incident_input, serve, signer
from tests.support.http import LocalHttpServer
from tests.support.reporting import Reporting, create

# PROHIBITED_CONTENT routes to cyberspace (HTTP here) and radio_television (a file drop here).
HTTP_DEPARTMENT = "cyberspace"
FILE_DEPARTMENT = "radio_television"


@dataclass
class Authority:
    """A real HTTP endpoint that fails with 503 while `failures_left` > 0 (or `down`)."""

    url: str = ""
    down: bool = False
    failures_left: int = 0
    attempts: list[tuple[str, dict[str, Any]]] = field(default_factory=list)  # (Idempotency-Key, document)
    accepted: list[tuple[str, dict[str, Any]]] = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock)

    def answer(self, key: str, document: dict[str, Any]) -> int:
        with self.lock:
            self.attempts.append((key, document))
            if self.down or self.failures_left > 0:
                self.failures_left = max(0, self.failures_left - 1)
                return 503
            self.accepted.append((key, document))
            return 200

    def accepted_for(self, event_id: uuid.UUID) -> list[dict[str, Any]]:
        return [d for _, d in self.accepted if d["event_id"] == str(event_id)]

    def attempts_for(self, event_id: uuid.UUID) -> list[str]:
        return [k for k, d in self.attempts if d["event_id"] == str(event_id)]


@pytest.fixture(scope="module")
def authority() -> Iterator[Authority]:
    state = Authority()

    class Handler(BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            body = self.rfile.read(int(self.headers["Content-Length"]))
            status = state.answer(self.headers.get("Idempotency-Key", ""), json.loads(body))
            answer = json.dumps({"ok": status == 200}).encode()
            self.send_response(status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(answer)))
            self.end_headers()
            self.wfile.write(answer)

        def log_message(self, *args: Any) -> None:
            pass

    server = LocalHttpServer(("127.0.0.1", 0), Handler)
    state.url = f"http://127.0.0.1:{server.server_address[1]}/reports"
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield state
    finally:
        server.shutdown()
        server.server_close()


@dataclass
class Setup:
    reporting: Reporting
    settings: ReportingSettings
    drops: pathlib.Path
    public_keys: dict[str, Ed25519PublicKey]


@pytest.fixture(scope="module")
async def setup(
    database: Database, keys_dir: pathlib.Path, authority: Authority, tmp_path_factory: pytest.TempPathFactory
) -> AsyncIterator[Setup]:
    drops = tmp_path_factory.mktemp("drops")
    settings = ReportingSettings(
        trusted_keys_dir=keys_dir,  # type: ignore[call-arg]
        generate_keys=False,  # type: ignore[call-arg]
        state_dir=tmp_path_factory.mktemp("state"),  # type: ignore[call-arg]
        metrics_port=-1,
        grpc_port=0,
        database_url=database.url_for("reporting"),
        sequencer_enabled=False,
        dispatcher_enabled=False,  # each test runs the dispatcher itself, with the settings below
        authorities={
            HTTP_DEPARTMENT: {"type": "http", "url": authority.url, "timeout": 5},
            FILE_DEPARTMENT: {"type": "file", "directory": str(drops)},
        },
        dispatcher_base_delay=0.05,
        dispatcher_max_delay=0.2,
    )
    async with serve(await compose(settings)) as served:
        yield Setup(
            Reporting(reporting_pb2_grpc.IncidentServiceStub(served.channel), signer(keys_dir), database),
            settings,
            drops,
            load_trusted_keys(keys_dir)["reporting"],
        )


@pytest.fixture
def tenant() -> str:
    return f"t-{uuid.uuid4().hex[:12]}"


def dispatcher(setup: Setup, **changes: Any) -> Dispatcher:
    settings = setup.settings.model_copy(update=changes)
    return authority_dispatcher(settings, setup.settings.effective_database_url or "", CollectorRegistry())


def states(setup: Setup, event_ids: list[uuid.UUID]) -> dict[uuid.UUID, tuple[str, int]]:
    rows = setup.reporting.sql(
        "select event_id, state, attempts from reporting.outbox where event_id = any(:ids)", ids=event_ids
    )
    return {r.event_id: (r.state, r.attempts) for r in rows}


async def dispatch_until_settled(setup: Setup, d: Dispatcher, event_ids: list[uuid.UUID], timeout: float = 15) -> None:
    """Runs `d` until none of `event_ids` is pending any more."""
    stop = asyncio.Event()
    task = asyncio.create_task(d.run(stop))
    deadline = time.monotonic() + timeout
    try:
        while any(state == "pending" for state, _ in states(setup, event_ids).values()):
            assert time.monotonic() < deadline, f"still pending: {states(setup, event_ids)}"
            assert not task.done(), task.exception()
            await asyncio.sleep(0.05)
    finally:
        stop.set()
        await asyncio.wait_for(task, timeout=10)


async def create_incident(setup: Setup, tenant: str) -> tuple[str, uuid.UUID, uuid.UUID]:
    created = await create(setup.reporting, tenant, incident_input(f"ext-{uuid.uuid4().hex[:8]}"))
    incident_id = created.incident.incident_id
    return incident_id, outbox_event_id(incident_id, HTTP_DEPARTMENT), outbox_event_id(incident_id, FILE_DEPARTMENT)


def incident(setup: Setup, incident_id: str) -> tuple[str, int]:
    """The incident's status and how often its cyberspace report was replayed."""
    (row,) = setup.reporting.sql(
        "select i.status, s.replay_count from reporting.incidents i join reporting.delivery_subjects s "
        "on s.subject_id = i.incident_id and s.department = :d where i.incident_id = :i",
        i=incident_id,
        d=HTTP_DEPARTMENT,
    )
    return row.status, row.replay_count


def dropped(setup: Setup, event_id: uuid.UUID) -> list[dict[str, Any]]:
    lines = [json.loads(line) for path in sorted(setup.drops.glob("*.jsonl")) for line in path.read_text().splitlines()]
    return [d for d in lines if d["event_id"] == str(event_id)]


def check_report(setup: Setup, document: dict[str, Any], incident_id: str, department: str) -> None:
    payload = verify_document(document, setup.public_keys)  # raises unless reporting's key signed these bytes
    assert document["issuer"] == "reporting"
    assert document["destination"] == f"authority:{department}"
    report = json.loads(payload)
    assert report["incident_id"] == incident_id
    stored = setup.reporting.sql(
        "select payload from reporting.outbox where event_id = :id", id=uuid.UUID(document["event_id"])
    )
    assert bytes(stored[0].payload) == payload


class TestDelivery:
    async def test_each_routed_department_gets_one_signed_report(
        self, setup: Setup, authority: Authority, tenant: str
    ) -> None:
        incident_id, http_event, file_event = await create_incident(setup, tenant)

        await dispatch_until_settled(setup, dispatcher(setup), [http_event, file_event])

        assert states(setup, [http_event, file_event]) == {http_event: ("delivered", 1), file_event: ("delivered", 1)}
        [sent] = authority.accepted_for(http_event)
        assert authority.attempts_for(http_event) == [str(http_event)]  # the event id is the Idempotency-Key
        check_report(setup, sent, incident_id, HTTP_DEPARTMENT)
        [line] = dropped(setup, file_event)
        check_report(setup, line, incident_id, FILE_DEPARTMENT)
        assert not dropped(setup, http_event) and not authority.accepted_for(file_event)

    async def test_a_failing_authority_is_retried_then_delivered(
        self, setup: Setup, authority: Authority, tenant: str
    ) -> None:
        authority.failures_left = 3
        incident_id, http_event, file_event = await create_incident(setup, tenant)

        await dispatch_until_settled(setup, dispatcher(setup), [http_event, file_event])

        assert states(setup, [http_event])[http_event] == ("delivered", 4)
        assert authority.attempts_for(http_event) == [str(http_event)] * 4  # three 503s, then accepted
        [sent] = authority.accepted_for(http_event)
        check_report(setup, sent, incident_id, HTTP_DEPARTMENT)
        assert len(dropped(setup, file_event)) == 1

    async def test_an_authority_down_for_a_period_gets_every_report_once_after_recovery(
        self, setup: Setup, authority: Authority, tenant: str
    ) -> None:
        authority.down = True
        created = [await create_incident(setup, tenant) for _ in range(8)]
        http_events = [http for _, http, _ in created]
        every_event = [e for _, http, file in created for e in (http, file)]
        stop = asyncio.Event()
        task = asyncio.create_task(dispatcher(setup).run(stop))
        try:
            # Down: every report is offered and refused at least twice.
            deadline = time.monotonic() + 15
            while not all(len(authority.attempts_for(e)) >= 2 for e in http_events):
                assert time.monotonic() < deadline and not task.done()
                await asyncio.sleep(0.02)
            assert not any(authority.accepted_for(e) for e in http_events)
            assert {state for state, _ in states(setup, http_events).values()} == {"pending"}
            authority.down = False
            while any(state == "pending" for state, _ in states(setup, every_event).values()):
                assert time.monotonic() < deadline + 15 and not task.done()
                await asyncio.sleep(0.02)
        finally:
            authority.down = False
            stop.set()
            await asyncio.wait_for(task, timeout=10)

        recorded = states(setup, http_events)
        assert {state for state, _ in recorded.values()} == {"delivered"}
        # Exactly once by idempotency key, after recovery.
        for event_id in http_events:
            [sent] = authority.accepted_for(event_id)
            assert sent["event_id"] == str(event_id)
        # The raw attempts: at least two refused while down plus the accepted one, each under the
        # event's own key, and each one the outbox counted (none lost, none extra).
        raw = {e: authority.attempts_for(e) for e in http_events}
        assert all(keys == [str(e)] * len(keys) for e, keys in raw.items())
        assert all(len(keys) >= 3 for keys in raw.values())
        assert sum(len(keys) for keys in raw.values()) > len(http_events)
        assert {e: len(keys) for e, keys in raw.items()} == {e: attempts for e, (_, attempts) in recorded.items()}

    async def test_a_dead_letter_replayed_by_the_cli_is_delivered(
        self, setup: Setup, authority: Authority, tenant: str
    ) -> None:
        authority.down = True
        try:
            incident_id, http_event, file_event = await create_incident(setup, tenant)
            await dispatch_until_settled(setup, dispatcher(setup, dispatcher_max_attempts=2), [http_event, file_event])
            assert states(setup, [http_event])[http_event] == ("dead", 2)
            assert not authority.accepted_for(http_event)
            assert incident(setup, incident_id) == ("delivery_failed", 0)
        finally:
            authority.down = False

        url = setup.settings.effective_database_url or ""
        assert await replay(url, "reporting", [http_event], reason="authority back up") == [http_event]
        replays = setup.reporting.sql(
            "select payload from ledger.queue where convert_from(payload, 'UTF8') like :pattern",
            pattern=f"%{http_event}%",
        )
        assert [json.loads(bytes(r.payload))["action"] for r in replays] == ["outbox.replay"]
        # The same transaction counted the replay and put the incident back to RECORDED.
        assert incident(setup, incident_id) == ("recorded", 1)

        await dispatch_until_settled(setup, dispatcher(setup), [http_event])
        assert incident(setup, incident_id) == ("delivered", 1)

        assert states(setup, [http_event])[http_event] == ("delivered", 1)
        [sent] = authority.accepted_for(http_event)
        check_report(setup, sent, incident_id, HTTP_DEPARTMENT)
        assert len(authority.attempts_for(http_event)) == 3
        # Nothing else was dead, so nothing else was replayed.
        assert await replay(url, "reporting", [http_event]) == []


class TestSettings:
    def test_a_bad_spec_names_the_department(self, tmp_path: pathlib.Path) -> None:
        settings = ReportingSettings(
            state_dir=tmp_path,  # type: ignore[call-arg]
            authorities={"culture_tourism": {"type": "http", "url": "ftp://nope"}},
        )
        with pytest.raises(ValueError, match=r"culture_tourism.*url"):
            settings.authority_specs()
        with pytest.raises(ValueError, match=r"'police'.*not a department"):
            ReportingSettings(authorities={"police": {"type": "file", "directory": "/x"}}).authority_specs()

    def test_every_department_defaults_to_a_local_file_drop(self, tmp_path: pathlib.Path) -> None:
        specs = ReportingSettings(state_dir=tmp_path).authority_specs()  # type: ignore[call-arg]
        assert {d: getattr(s, "directory", None) for d, s in specs.items()} == {
            d: tmp_path / "authority-drops" / d for d in specs
        }
