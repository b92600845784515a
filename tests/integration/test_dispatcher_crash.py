"""A dispatcher killed with SIGKILL mid-delivery loses nothing.

The dispatcher is the reporting process itself (`python -m services.reporting`,
its sequencer off, so the dispatcher is all it does), started as a separate
OS process against a real PostgreSQL and a real local HTTP authority. The
authority answers the first requests and then holds every further one open;
once it holds at least one request it has not answered, the process is
killed with SIGKILL. A second process is started; the test checks that every
report reached the authority, stored once per idempotency key by the
authority (which also counts the raw attempts), that the reports in flight at
the kill were delivered again, and that the outbox shows every one delivered.
"""

from __future__ import annotations

import asyncio
import json
import os
import pathlib
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import Callable, Iterator

import pytest
from sqlalchemy import text

from avgate.kernel.db import create_engine_for, sync_engine
from avgate.kernel.deliveries import verify_document
from avgate.kernel.keys import load_trusted_keys
from avgate.kernel.legal import LegalBasis
from services.reporting.feed.writer import FeedWriter
from services.reporting.incidents.domain import (
    IncidentCategory,
    IncidentInput,
    IncidentSource,
    IncidentStatus,
    outbox_event_id,
)
from services.reporting.incidents.service import IncidentService
from services.reporting.incidents.store import SqlIncidentStore
from tests.conftest import REPO, Database
from tests.integration.authority_server import AuthorityServer
from tests.support import provider

REPORTS = 40
ANSWERED_BEFORE_HOLDING = 10
LEASE_SECONDS = 3


@pytest.fixture
def authority() -> Iterator[AuthorityServer]:
    with AuthorityServer() as server:
        yield server


def start_dispatcher(
    database: Database, keys_dir: pathlib.Path, state_dir: pathlib.Path, authority: AuthorityServer, log_name: str
) -> subprocess.Popen[bytes]:
    """The reporting process with only its dispatcher working, configured by environment as in production."""
    env = {
        **os.environ,
        "AVGATE_STATE_DIR": str(state_dir),
        "AVGATE_TRUSTED_KEYS_DIR": str(keys_dir),
        "AVGATE_GENERATE_KEYS": "false",
        "REPORTING_DATABASE_URL": database.url_for("reporting"),
        "REPORTING_GRPC_PORT": "0",
        "REPORTING_METRICS_PORT": "-1",
        "REPORTING_SEQUENCER_ENABLED": "false",
        "REPORTING_AUTHORITIES": json.dumps({"cyberspace": {"type": "http", "url": authority.url, "timeout": 60}}),
        "REPORTING_DISPATCHER_LEASE_SECONDS": str(LEASE_SECONDS),
        "REPORTING_DISPATCHER_BASE_DELAY": "0.05",
        "REPORTING_DISPATCHER_MAX_DELAY": "0.2",
    }
    env.pop("DATABASE_URL", None)
    log = (state_dir / log_name).open("wb")
    return subprocess.Popen(
        [sys.executable, "-m", "services.reporting"], cwd=REPO, env=env, stdout=log, stderr=subprocess.STDOUT
    )


async def wait_for(
    condition: Callable[[], bool], what: str, process: subprocess.Popen[bytes], logs: pathlib.Path
) -> None:
    deadline = time.monotonic() + 60
    while not condition():
        if process.poll() is not None or time.monotonic() > deadline:
            raise AssertionError(
                f"{what}: not reached (process exit {process.poll()}); log:\n{logs.read_text()[-4000:]}"
            )
        await asyncio.sleep(0.01)


def outbox(database: Database, event_ids: list[uuid.UUID]) -> dict[uuid.UUID, tuple[str, str | None]]:
    engine = sync_engine(database.admin_url)
    try:
        with engine.connect() as conn:
            rows = conn.execute(
                text("select event_id, state, claimed_by from reporting.outbox where event_id = any(:ids)"),
                {"ids": event_ids},
            ).all()
    finally:
        engine.dispose()
    return {r.event_id: (r.state, r.claimed_by) for r in rows}


async def create_reports(database: Database, tenant: str) -> tuple[list[str], list[uuid.UUID]]:
    """REPORTS rumour incidents: each is one report, to the cyberspace department."""
    engine = create_engine_for(database.url_for("reporting"))
    incidents = IncidentService(SqlIncidentStore(engine, FeedWriter()))
    try:
        outcome = await incidents.batch_create(
            provider(tenant),
            [
                IncidentInput(
                    external_id=f"crash-{n}",
                    category=IncidentCategory.RUMOR,
                    source=IncidentSource.SCREENING,
                    facts="A refuted claim was spread in a live stream; transmission stopped.",
                    legal_basis=(LegalBasis("NAVIS-2019", "13"),),
                    region_code="110105",
                )
                for n in range(REPORTS)
            ],
        )
    finally:
        await engine.dispose()
    assert outcome.applied
    ids = [r.incident.incident_id for r in outcome.results if r.incident is not None]
    return ids, [outbox_event_id(i, "cyberspace") for i in ids]


def statuses(database: Database, incident_ids: list[str]) -> set[str]:
    engine = sync_engine(database.admin_url)
    try:
        with engine.connect() as conn:
            rows = conn.execute(
                text("select status from reporting.incidents where incident_id = any(:ids)"), {"ids": incident_ids}
            ).all()
    finally:
        engine.dispose()
    return {r.status for r in rows}


async def test_a_dispatcher_killed_mid_delivery_loses_nothing(
    database: Database, keys_dir: pathlib.Path, authority: AuthorityServer, tmp_path: pathlib.Path
) -> None:
    incident_ids, event_ids = await create_reports(database, f"t-{uuid.uuid4().hex[:12]}")
    keys = [str(e) for e in event_ids]
    authority.hold_after = ANSWERED_BEFORE_HOLDING

    first = start_dispatcher(database, keys_dir, tmp_path, authority, "first.log")
    try:
        await wait_for(lambda: len(authority.held()) >= 1, "a request held open", first, tmp_path / "first.log")
    finally:
        first.send_signal(signal.SIGKILL)
        first.wait(timeout=10)
    assert first.returncode == -signal.SIGKILL

    # Received and never answered to the process: this set is final, the process is gone.
    in_flight = {r.idempotency_key for r in authority.unanswered()}
    assert in_flight
    after_kill = outbox(database, event_ids)
    # The killed attempts were never recorded: their rows wait, leased to the dead process.
    assert all(after_kill[uuid.UUID(k)][0] == "pending" and after_kill[uuid.UUID(k)][1] for k in in_flight)
    authority.hold_after = None
    authority.release()  # the held requests are stored now (the body had arrived); their answers go nowhere

    second = start_dispatcher(database, keys_dir, tmp_path, authority, "second.log")
    try:
        await wait_for(
            lambda: {state for state, _ in outbox(database, event_ids).values()} == {"delivered"},
            "every report delivered",
            second,
            tmp_path / "second.log",
        )
    finally:
        second.send_signal(signal.SIGTERM)
        second.wait(timeout=30)

    # Every report reached the authority, stored once per idempotency key, signed by reporting.
    assert set(keys) <= set(authority.accepted)
    trusted = load_trusted_keys(keys_dir)["reporting"]
    for key in keys:
        document = authority.accepted[key]
        assert document["event_id"] == key
        assert json.loads(verify_document(document, trusted))["incident_id"] in incident_ids
    raw = authority.raw_counts()
    assert sum(raw[k] for k in keys) >= len(keys)
    # What was in flight at the kill was delivered again, by the second process, as a later attempt.
    for key in in_flight:
        attempts = authority.raw_for(key)
        assert len(attempts) >= 2, key
        assert attempts[-1].document["attempt"] >= 2
        assert authority.duplicates[key] >= 1  # the authority stored it once and recognised the repeat
    assert {state for state, _ in outbox(database, event_ids).values()} == {"delivered"}
    assert statuses(database, incident_ids) == {IncidentStatus.DELIVERED.value}
