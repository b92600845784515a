"""The ledger's sequencer: one active at a time, it integrates queued
entries into the Merkle tree and signs a tree head for every batch.

Election: a session-level PostgreSQL advisory lock on the sequencer's own
connection. A standby retries every second; if the leader's connection
dies its lock goes with it. Order: queue rows in queue-id order as they are
visible at each poll; a row whose transaction commits late is simply
picked up by a later poll (it is consumed only once integrated), so no
entry is skipped. A duplicate idempotency key (a retried append that slipped
past the queue's unique index after its original was integrated) is
consumed without a second leaf, and so is a row reusing an entry id that is
already recorded (logged as an error: a poison row must not stop the log).

Each batch commits in one transaction: its entries, every perfect subtree
node it completes, the signed head, and the consumption of its queue rows.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import psycopg
from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

from avgate.ledger import merkle
from avgate.ledger.checkpoint import Checkpoint, NoteSigner, sign_checkpoint

log = logging.getLogger(__name__)

# pg_advisory_lock key: the first 8 bytes of SHA-256("avgate.ledger.sequencer"), as a signed bigint.
LOCK_KEY = int.from_bytes(bytes.fromhex("6b8e3b0f2c1d4a59"), "big", signed=True)

CLAIM = (
    "select queue_id, entry_id, idempotency_key, payload, writer, queued_at "
    "from ledger.queue order by queue_id limit %s"
)


class SequencerMetrics:
    """What an operator watches: leadership, tree size, how far integration lags."""

    def __init__(self, registry: CollectorRegistry):
        self.leader = Gauge("avgate_ledger_sequencer_leader", "1 while this replica leads.", registry=registry)
        self.tree_size = Gauge("avgate_ledger_tree_size", "Entries in the signed tree.", registry=registry)
        self.integrated = Counter("avgate_ledger_integrated_total", "Entries integrated.", registry=registry)
        self.lag = Histogram(
            "avgate_ledger_integration_lag_seconds",
            "From an entry's queueing to its signed head.",
            buckets=(0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60),
            registry=registry,
        )


@dataclass
class BatchResult:
    integrated: int
    consumed: int
    tree_size: int


def compact_range_nodes(size: int) -> list[tuple[int, int]]:
    """The perfect subtrees (level, index) whose hashes make the compact range of [0, size)."""
    refs = []
    start = 0
    for level in range(size.bit_length() - 1, -1, -1):
        if size & (1 << level):
            refs.append((level, start >> level))
            start += 1 << level
    return refs


async def fetch_nodes(conn: psycopg.AsyncConnection[Any], refs: list[tuple[int, int]]) -> dict[tuple[int, int], bytes]:
    if not refs:
        return {}
    cur = await conn.execute(
        "select n.level, n.idx, n.hash from ledger.nodes n "
        "join unnest(%s::smallint[], %s::bigint[]) as want(level, idx) using (level, idx)",
        ([r[0] for r in refs], [r[1] for r in refs]),
    )
    return {(int(level), int(idx)): bytes(h) for level, idx, h in await cur.fetchall()}


class Sequencer:
    def __init__(
        self,
        url: str,
        signer: NoteSigner,
        origin: str,
        *,
        batch_size: int = 2000,
        poll_interval: float = 0.1,
        clock: Callable[[], float] = time.time,
        metrics: SequencerMetrics | None = None,
    ):
        self._url = url
        self._signer = signer
        self._origin = origin
        self._batch_size = batch_size
        self._poll_interval = poll_interval
        self._clock = clock
        self._range: merkle.CompactRange | None = None
        self._metrics = metrics
        self.is_leader = False

    async def run(self, stop: asyncio.Event) -> None:
        """Campaigns for leadership, then integrates until `stop` is set."""
        while not stop.is_set():
            try:
                async with await psycopg.AsyncConnection.connect(self._url, autocommit=True) as conn:
                    if not await self._campaign(conn, stop):
                        return
                    self.is_leader = True
                    if self._metrics is not None:
                        self._metrics.leader.set(1)
                    log.info("ledger sequencer is leading")
                    await self._load(conn)
                    while not stop.is_set():
                        result = await self.integrate_once(conn)
                        if result.consumed < self._batch_size:
                            await _wait(stop, self._poll_interval)
            except (psycopg.OperationalError, psycopg.InterfaceError) as exc:
                log.warning("ledger sequencer lost its database connection: %s", exc)
                await _wait(stop, 1.0)
            finally:
                self.is_leader = False
                self._range = None
                if self._metrics is not None:
                    self._metrics.leader.set(0)

    async def _campaign(self, conn: psycopg.AsyncConnection[Any], stop: asyncio.Event) -> bool:
        while not stop.is_set():
            row = await (await conn.execute("select pg_try_advisory_lock(%s)", (LOCK_KEY,))).fetchone()
            if row and row[0]:
                return True
            await _wait(stop, 1.0)
        return False

    async def _load(self, conn: psycopg.AsyncConnection[Any]) -> None:
        """Resumes the compact range at the current size and registers the signing key."""
        row = await (
            await conn.execute("select coalesce(max(idx) + 1, 0) from ledger.nodes where level = 0")
        ).fetchone()
        size = int(row[0]) if row else 0
        nodes = await fetch_nodes(conn, compact_range_nodes(size))
        self._range = merkle.CompactRange.from_nodes(size, lambda level, index: nodes[(level, index)])
        await conn.execute(
            "insert into ledger.signing_keys (vkey) select %s "
            "where not exists (select 1 from ledger.signing_keys where vkey = %s)",
            (self._signer.vkey(), self._signer.vkey()),
        )

    async def integrate_once(self, conn: psycopg.AsyncConnection[Any]) -> BatchResult:
        """Integrates one batch; the caller must hold the sequencer lock on `conn`."""
        if self._range is None:
            await self._load(conn)
        assert self._range is not None
        async with conn.transaction():
            rows = await (await conn.execute(CLAIM, (self._batch_size,))).fetchall()
            if not rows:
                return BatchResult(0, 0, self._range.size)
            keys = [r[2] for r in rows]
            ids = [r[1] for r in rows]
            seen_keys: set[str] = set()
            seen_ids: set[Any] = set()
            for key, entry_id in await (
                await conn.execute(
                    # A union, not OR: each arm probes its own unique index.
                    "select idempotency_key, entry_id from ledger.entries where idempotency_key = any(%s) "
                    "union select idempotency_key, entry_id from ledger.entries where entry_id = any(%s)",
                    (keys, ids),
                )
            ).fetchall():
                seen_keys.add(key)
                seen_ids.add(entry_id)
            tree = self._range.copy()
            entry_rows = []
            node_rows: list[tuple[int, int, bytes]] = []
            for _queue_id, entry_id, key, payload, writer, queued_at in rows:
                if key in seen_keys:
                    continue  # a retried append: recorded once
                if entry_id in seen_ids:
                    # Another append reused an entry id: the first stays the record; this one
                    # is consumed rather than left to block every later entry.
                    log.error("ledger entry id %s was appended twice under different keys; kept the first", entry_id)
                    continue
                seen_keys.add(key)
                seen_ids.add(entry_id)
                index = tree.size
                leaf = merkle.leaf_hash(bytes(payload))
                entry_rows.append((index, entry_id, key, bytes(payload), writer, queued_at))
                node_rows.append((0, index, leaf))
                node_rows.extend(tree.append(leaf))
            if entry_rows:
                cur = conn.cursor()
                async with cur.copy(
                    "copy ledger.entries (leaf_index, entry_id, idempotency_key, payload, writer, queued_at) from stdin"
                ) as copy:
                    for entry in entry_rows:
                        await copy.write_row(entry)
                async with cur.copy("copy ledger.nodes (level, idx, hash) from stdin") as copy:
                    for node in node_rows:
                        await copy.write_row(node)
                checkpoint = Checkpoint(
                    origin=self._origin,
                    size=tree.size,
                    root_hash=tree.root(),
                    timestamp_ms=int(self._clock() * 1000),
                    extensions=(),
                )
                note = sign_checkpoint(checkpoint, self._signer)
                await conn.execute(
                    "insert into ledger.heads (tree_size, root_hash, checkpoint, key_name) values (%s, %s, %s, %s)",
                    (tree.size, checkpoint.root_hash, note, self._signer.name),
                )
            await conn.execute("delete from ledger.queue where queue_id = any(%s)", ([r[0] for r in rows],))
        self._range = tree
        if self._metrics is not None:
            self._metrics.tree_size.set(tree.size)
            self._metrics.integrated.inc(len(entry_rows))
            signed = self._clock()
            for entry in entry_rows:
                self._metrics.lag.observe(max(0.0, signed - entry[5].timestamp()))
        return BatchResult(len(entry_rows), len(rows), tree.size)


async def _wait(stop: asyncio.Event, seconds: float) -> None:
    with contextlib.suppress(TimeoutError):
        await asyncio.wait_for(stop.wait(), timeout=seconds)
