"""The audit ledger's write path against a real PostgreSQL: `append` inside the
business transaction, and the sequencer that numbers, integrates and signs.

Every test gets a fresh database cloned from the migrated template, so each
log starts empty at size 0. Services append as their own role
(avgate_identity), the sequencer runs as avgate_ledger_sequencer, proofs are
read as avgate_reporting, and the tests inspect the tables as the superuser.
"""

from __future__ import annotations

import asyncio
import dataclasses
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from contextlib import asynccontextmanager
from typing import Any

import psycopg
import pytest
from psycopg_pool import AsyncConnectionPool

from avgate.kernel.db import (
    LEDGER_SEQUENCER_ROLE,
    create_database,
    create_engine_for,
    drop_database,
    libpq_url,
    role_url,
)
from avgate.ledger import merkle
from avgate.ledger.append import append
from avgate.ledger.checkpoint import NoteSigner, NoteVerifier, UnverifiedNoteError, open_checkpoint
from avgate.ledger.entry import LedgerEntry
from services.reporting.ledger.sequencer import LOCK_KEY, Sequencer
from services.reporting.ledger.store import LedgerReader
from tests.conftest import Database
from tests.support import service

pytestmark = pytest.mark.db

ORIGIN = "avgate.test/ledger"
ACTOR = service("identity", request_id="req-1")


# --------------------------------------------------------------------------- fixtures and helpers


@pytest.fixture
def fresh(server_admin_url: str, template_database: Database) -> Iterator[Database]:
    """An empty, migrated database of this test's own (the ledger starts at size 0)."""
    name = f"avgate_lq_{uuid.uuid4().hex[:8]}"
    url = create_database(server_admin_url, name, template=template_database.name)
    try:
        yield Database(name, url)
    finally:
        drop_database(server_admin_url, name)


def sequencer_url(db: Database) -> str:
    return libpq_url(role_url(db.admin_url, LEDGER_SEQUENCER_ROLE))


def service_url(db: Database) -> str:
    return libpq_url(db.url_for("identity"))


def entry(n: int | str, *, key: str = "") -> LedgerEntry:
    return LedgerEntry(
        action="test.record",
        subject_type="thing",
        subject_id=str(n),
        actor=ACTOR,
        legal_basis="NAVIS-2019 Art. 14",
        reason="integration test",
        tenant_id="tenant-1",
        data={"n": str(n)},
        idempotency_key=key,
    )


async def connect(url: str, *, autocommit: bool = True) -> psycopg.AsyncConnection[Any]:
    return await psycopg.AsyncConnection.connect(url, autocommit=autocommit)


async def append_committed(db: Database, *entries: LedgerEntry) -> None:
    """Appends each entry in its own committed transaction, as a service would."""
    async with await connect(service_url(db), autocommit=False) as conn:
        for e in entries:
            async with conn.transaction():
                await append(conn, e)


@asynccontextmanager
async def sequencer_conn(db: Database) -> AsyncIterator[psycopg.AsyncConnection[Any]]:
    """A sequencer-role connection holding the sequencer lock, as `Sequencer.run` would."""
    async with await connect(sequencer_url(db)) as conn:
        await conn.execute("select pg_advisory_lock(%s)", (LOCK_KEY,))
        yield conn


async def drain(seq: Sequencer, conn: psycopg.AsyncConnection[Any]) -> int:
    """Runs batches until the visible queue is empty; returns how many batches integrated something."""
    batches = 0
    while True:
        result = await seq.integrate_once(conn)
        if result.consumed == 0:
            return batches
        if result.integrated:
            batches += 1


@asynccontextmanager
async def reader_for(db: Database) -> AsyncIterator[LedgerReader]:
    pool: AsyncConnectionPool[Any] = AsyncConnectionPool(
        libpq_url(db.url_for("reporting")), min_size=1, max_size=2, open=False
    )
    await pool.open()
    try:
        yield LedgerReader(pool)
    finally:
        await pool.close()


async def scalar(db: Database, query: str, params: tuple[Any, ...] = ()) -> Any:
    async with await connect(libpq_url(db.admin_url)) as conn:
        row = await (await conn.execute(query, params)).fetchone()
        return row[0] if row else None


async def ledger_rows(db: Database) -> list[tuple[int, uuid.UUID, str, bytes]]:
    """(leaf_index, entry_id, idempotency_key, payload) of every sequenced entry, as the superuser sees them."""
    async with await connect(libpq_url(db.admin_url)) as conn:
        cur = await conn.execute(
            "select leaf_index, entry_id, idempotency_key, payload from ledger.entries order by leaf_index"
        )
        return [(int(i), e, k, bytes(p)) for i, e, k, p in await cur.fetchall()]


async def queue_count(db: Database) -> int:
    return int(await scalar(db, "select count(*) from ledger.queue"))


async def wait_until(predicate: Callable[[], Awaitable[bool]], timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not await predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout} s waiting for {what}")
        await asyncio.sleep(0.02)


async def check_log(db: Database, verifiers: list[NoteVerifier], *, expect_size: int) -> list[bytes]:
    """Checks the whole log from the outside; returns its leaf hashes.

    Entries are numbered 0..N-1 with no gap; every stored leaf hash is the
    RFC 6962 hash of the stored bytes; every head opens with the given keys
    and its root is the root of the leaves it covers; every leaf's inclusion
    proof verifies against every head that covers it; every pair of heads is
    consistent.
    """
    rows = await ledger_rows(db)
    assert [r[0] for r in rows] == list(range(expect_size)), "sequence numbers are not 0..N-1"
    leaves = [merkle.leaf_hash(r[3]) for r in rows]
    async with reader_for(db) as reader:
        for index, leaf in enumerate(leaves):
            assert await reader.leaf_hash(index) == leaf
        heads = await reader.heads()
        assert heads, "no signed tree head"
        assert heads[-1].tree_size == expect_size
        checkpoints = {}
        for head in heads:
            cp = open_checkpoint(head.checkpoint, verifiers)
            assert cp.origin == ORIGIN
            assert cp.size == head.tree_size
            assert cp.root_hash == head.root_hash == merkle.root_from_leaf_hashes(leaves[: head.tree_size])
            checkpoints[head.tree_size] = cp
        for head in heads:
            for index in range(head.tree_size):
                proof = await reader.inclusion_proof(index, head.tree_size)
                merkle.verify_inclusion(leaves[index], index, head.tree_size, proof, head.root_hash)
        for i, first in enumerate(heads):
            for second in heads[i + 1 :]:
                proof = await reader.consistency_proof(first.tree_size, second.tree_size)
                merkle.verify_consistency(first.tree_size, second.tree_size, proof, first.root_hash, second.root_hash)
    return leaves


@asynccontextmanager
async def running(seq: Sequencer) -> AsyncIterator[tuple[asyncio.Event, asyncio.Task[None]]]:
    stop = asyncio.Event()
    task = asyncio.create_task(seq.run(stop))
    try:
        yield stop, task
    finally:
        stop.set()
        await asyncio.wait_for(task, timeout=10)


# --------------------------------------------------------------------------- tests


class TestAppendInsideTheBusinessTransaction:
    async def test_sqlalchemy_rollback_leaves_no_trace_and_commit_queues_the_entry(self, fresh: Database) -> None:
        engine = create_engine_for(fresh.url_for("identity"), pool_size=1)
        lost, kept = entry("lost"), entry("kept")
        try:
            with pytest.raises(RuntimeError, match="business change failed"):
                async with engine.begin() as conn:
                    await append(conn, lost)
                    raise RuntimeError("business change failed")
            async with engine.begin() as conn:
                await append(conn, kept)
        finally:
            await engine.dispose()
        await self._only_kept_reaches_the_ledger(fresh, lost, kept)

    async def test_psycopg_rollback_leaves_no_trace_and_commit_queues_the_entry(self, fresh: Database) -> None:
        lost, kept = entry("lost"), entry("kept")
        async with await connect(service_url(fresh), autocommit=False) as conn:
            async with conn.transaction():
                await append(conn, lost)
                raise psycopg.Rollback()
            async with conn.transaction():
                await append(conn, kept)
        await self._only_kept_reaches_the_ledger(fresh, lost, kept)

    async def _only_kept_reaches_the_ledger(self, db: Database, lost: LedgerEntry, kept: LedgerEntry) -> None:
        queued = await scalar(db, "select array_agg(entry_id) from ledger.queue")
        assert queued == [kept.entry_id]
        assert await scalar(db, "select writer from ledger.queue") == "avgate_identity"
        seq = Sequencer(sequencer_url(db), NoteSigner.generate(ORIGIN), ORIGIN)
        async with sequencer_conn(db) as conn:
            await drain(seq, conn)
        rows = await ledger_rows(db)
        assert [(r[0], r[1]) for r in rows] == [(0, kept.entry_id)]
        assert await queue_count(db) == 0


class TestIdempotency:
    async def test_a_retried_append_before_sequencing_yields_one_leaf(self, fresh: Database) -> None:
        first, retry = entry(1, key="order-42/revoke"), entry(1, key="order-42/revoke")
        await append_committed(fresh, first, retry)
        async with await connect(service_url(fresh), autocommit=False) as conn, conn.transaction():
            await append(conn, first)  # and once more, twice in one transaction
            await append(conn, first)
        assert await queue_count(fresh) == 1
        seq = Sequencer(sequencer_url(fresh), NoteSigner.generate(ORIGIN), ORIGIN)
        async with sequencer_conn(fresh) as conn:
            await drain(seq, conn)
        rows = await ledger_rows(fresh)
        assert [(r[0], r[1], r[2]) for r in rows] == [(0, first.entry_id, "order-42/revoke")]

    async def test_a_retried_append_after_integration_is_dropped_by_the_sequencer(self, fresh: Database) -> None:
        signer = NoteSigner.generate(ORIGIN)
        seq = Sequencer(sequencer_url(fresh), signer, ORIGIN)
        original = entry(1, key="order-7/issue")
        async with sequencer_conn(fresh) as conn:
            await append_committed(fresh, original)
            await drain(seq, conn)
            heads_before = await scalar(fresh, "select count(*) from ledger.heads")

            await append_committed(fresh, entry(1, key="order-7/issue"), entry(2))
            assert await queue_count(fresh) == 2
            result = await seq.integrate_once(conn)
            assert (result.integrated, result.consumed, result.tree_size) == (1, 2, 2)
            # A batch of nothing but a duplicate consumes it and signs nothing new.
            await append_committed(fresh, entry(1, key="order-7/issue"))
            result = await seq.integrate_once(conn)
            assert (result.integrated, result.consumed, result.tree_size) == (0, 1, 2)
        assert await queue_count(fresh) == 0
        rows = await ledger_rows(fresh)
        assert [r[2] for r in rows].count("order-7/issue") == 1
        assert rows[0][1] == original.entry_id
        assert await scalar(fresh, "select count(*) from ledger.heads") == heads_before + 1
        await check_log(fresh, [signer.verifier()], expect_size=2)


class TestPoisonRows:
    async def test_an_entry_id_reused_under_another_key_is_consumed_and_the_log_goes_on(self, fresh: Database) -> None:
        signer = NoteSigner.generate(ORIGIN)
        seq = Sequencer(sequencer_url(fresh), signer, ORIGIN)
        original = entry("a", key="first-key")
        reused = dataclasses.replace(entry("b", key="second-key"), entry_id=original.entry_id)
        async with sequencer_conn(fresh) as conn:
            await append_committed(fresh, original, reused, entry("c"))
            result = await seq.integrate_once(conn)
            assert (result.integrated, result.consumed) == (2, 3)
            await append_committed(fresh, dataclasses.replace(entry("d", key="third-key"), entry_id=original.entry_id))
            result = await seq.integrate_once(conn)
            assert (result.integrated, result.consumed) == (0, 1)
        assert await queue_count(fresh) == 0
        rows = await ledger_rows(fresh)
        assert [r[2] for r in rows][:1] == ["first-key"] and len(rows) == 2
        await check_log(fresh, [signer.verifier()], expect_size=2)


class TestSequenceNumbers:
    async def test_contiguous_from_zero_across_several_batches(self, fresh: Database) -> None:
        signer = NoteSigner.generate(ORIGIN)
        seq = Sequencer(sequencer_url(fresh), signer, ORIGIN, batch_size=3)
        appended: list[LedgerEntry] = []
        async with sequencer_conn(fresh) as conn:
            for wave in (4, 1, 7, 2):
                batch = [entry(f"{len(appended) + i}") for i in range(wave)]
                await append_committed(fresh, *batch)
                appended.extend(batch)
                await drain(seq, conn)
        rows = await ledger_rows(fresh)
        assert [r[0] for r in rows] == list(range(len(appended)))
        assert [r[1] for r in rows] == [e.entry_id for e in appended], "single writer: queue order is kept"
        heads = int(await scalar(fresh, "select count(*) from ledger.heads"))
        assert heads == 2 + 1 + 3 + 1  # ceil(wave / batch_size) per wave: one head per batch
        await check_log(fresh, [signer.verifier()], expect_size=len(appended))

    async def test_an_entry_committing_late_is_integrated_at_the_next_index(self, fresh: Database) -> None:
        signer = NoteSigner.generate(ORIGIN)
        seq = Sequencer(sequencer_url(fresh), signer, ORIGIN)
        e1, e2 = entry("late"), entry("early")
        async with (
            sequencer_conn(fresh) as seq_conn,
            await connect(service_url(fresh), autocommit=False) as conn_a,
            await connect(service_url(fresh), autocommit=False) as conn_b,
        ):
            await append(conn_a, e1)  # transaction A takes the lower queue id, stays open
            await append(conn_b, e2)
            await conn_b.commit()

            result = await seq.integrate_once(seq_conn)
            assert (result.integrated, result.tree_size) == (1, 1)
            assert [(r[0], r[1]) for r in await ledger_rows(fresh)] == [(0, e2.entry_id)]

            await conn_a.commit()
            result = await seq.integrate_once(seq_conn)
            assert (result.integrated, result.tree_size) == (1, 2)
        rows = await ledger_rows(fresh)
        assert [(r[0], r[1]) for r in rows] == [(0, e2.entry_id), (1, e1.entry_id)]
        assert await queue_count(fresh) == 0
        await check_log(fresh, [signer.verifier()], expect_size=2)


class TestSignedHeadsAndProofs:
    async def test_every_batch_signs_a_head_and_every_proof_verifies(self, fresh: Database) -> None:
        signer = NoteSigner.generate(ORIGIN)
        seq = Sequencer(sequencer_url(fresh), signer, ORIGIN, batch_size=4)
        sizes = []
        total = 0
        async with sequencer_conn(fresh) as conn:
            for wave in (1, 1, 3, 5, 8, 1, 6):
                await append_committed(fresh, *(entry(total + i) for i in range(wave)))
                total += wave
                await drain(seq, conn)
                sizes.append(total)
        async with reader_for(fresh) as reader:
            head_sizes = [h.tree_size for h in await reader.heads()]
            latest = await reader.latest_head()
        assert head_sizes == [1, 2, 5, 9, 10, 14, 18, 19, 23, 25]
        assert set(sizes) <= set(head_sizes)
        assert latest is not None and latest.tree_size == total
        assert latest.key_name == ORIGIN
        await check_log(fresh, [signer.verifier()], expect_size=total)

    async def test_a_head_does_not_open_with_another_key(self, fresh: Database) -> None:
        seq = Sequencer(sequencer_url(fresh), NoteSigner.generate(ORIGIN), ORIGIN)
        await append_committed(fresh, entry(0))
        async with sequencer_conn(fresh) as conn:
            await drain(seq, conn)
        async with reader_for(fresh) as reader:
            head = await reader.latest_head()
        assert head is not None
        with pytest.raises(UnverifiedNoteError):
            open_checkpoint(head.checkpoint, [NoteSigner.generate(ORIGIN).verifier()])


class TestRestart:
    async def test_a_new_sequencer_resumes_the_tree_from_stored_nodes(self, fresh: Database) -> None:
        signer = NoteSigner.generate(ORIGIN)
        total = 0
        # Sizes chosen so the resumed compact range has several nodes (11 = 8 + 2 + 1, 13 = 8 + 4 + 1).
        for wave in (11, 2, 3, 1, 16):
            seq = Sequencer(sequencer_url(fresh), signer, ORIGIN, batch_size=5)
            await append_committed(fresh, *(entry(total + i) for i in range(wave)))
            total += wave
            async with sequencer_conn(fresh) as conn:
                await drain(seq, conn)
        leaves = await check_log(fresh, [signer.verifier()], expect_size=total)
        assert await scalar(fresh, "select root_hash from ledger.heads order by tree_size desc limit 1") == (
            merkle.root_from_leaf_hashes(leaves)
        )
        assert await scalar(fresh, "select count(*) from ledger.signing_keys") == 1


class TestElection:
    async def test_one_leader_integrates_and_a_standby_takes_over(self, fresh: Database) -> None:
        signer = NoteSigner.generate(ORIGIN)
        first = Sequencer(sequencer_url(fresh), signer, ORIGIN, batch_size=7, poll_interval=0.05)
        second = Sequencer(sequencer_url(fresh), signer, ORIGIN, batch_size=7, poll_interval=0.05)
        appended: list[LedgerEntry] = []

        async def integrated(n: int) -> bool:
            return int(await scalar(fresh, "select count(*) from ledger.entries")) >= n

        async def one_leader() -> bool:
            return first.is_leader or second.is_leader

        async with running(first) as (stop_first, task_first), running(second) as (stop_second, task_second):
            await wait_until(one_leader, 5, "a leader")
            await asyncio.sleep(1.5)  # long enough for the standby to campaign again
            assert [first.is_leader, second.is_leader].count(True) == 1
            leader, stop_leader, task_leader, standby = (
                (first, stop_first, task_first, second)
                if first.is_leader
                else (second, stop_second, task_second, first)
            )

            for round_ in range(3):
                batch = [entry(f"a{round_}-{i}") for i in range(10)]
                await asyncio.gather(*(append_committed(fresh, e) for e in batch))
                appended.extend(batch)
            await wait_until(lambda: integrated(len(appended)), 5, "the leader to integrate")
            assert leader.is_leader and not standby.is_leader

            stop_leader.set()
            await asyncio.wait_for(task_leader, timeout=5)
            assert not leader.is_leader
            started = time.monotonic()
            await wait_until(one_leader, 5, "the standby to take over")
            assert standby.is_leader and time.monotonic() - started < 3

            batch = [entry(f"b-{i}") for i in range(12)]
            await asyncio.gather(*(append_committed(fresh, e) for e in batch))
            appended.extend(batch)
            await wait_until(lambda: integrated(len(appended)), 5, "the new leader to integrate")

        rows = await ledger_rows(fresh)
        assert sorted(r[1] for r in rows) == sorted(e.entry_id for e in appended)
        assert await queue_count(fresh) == 0
        await check_log(fresh, [signer.verifier()], expect_size=len(appended))


class TestLatency:
    async def test_a_committed_entry_is_in_a_signed_head_within_a_second(self, fresh: Database) -> None:
        signer = NoteSigner.generate(ORIGIN)
        seq = Sequencer(sequencer_url(fresh), signer, ORIGIN, poll_interval=0.1)
        latencies = []
        async with (
            running(seq),
            await connect(service_url(fresh), autocommit=False) as writer,
            await connect(libpq_url(fresh.admin_url)) as watcher,
        ):
            await wait_until(lambda: _true(seq.is_leader), 5, "the sequencer to lead")
            for i in range(20):
                e = entry(i)
                async with writer.transaction():
                    await append(writer, e)
                committed = time.monotonic()
                while True:
                    row = await (
                        await watcher.execute(
                            "select 1 from ledger.entries e join ledger.heads h on h.tree_size > e.leaf_index "
                            "where e.entry_id = %s limit 1",
                            (e.entry_id,),
                        )
                    ).fetchone()
                    if row:
                        break
                    assert time.monotonic() - committed < 5, f"entry {i} not in a signed head after 5 s"
                    await asyncio.sleep(0.005)
                latencies.append(time.monotonic() - committed)
                await asyncio.sleep(0.03)  # commits land at different points of the poll cycle
        assert max(latencies) < 1.0, f"commit → signed head latencies: {sorted(latencies)}"
        await check_log(fresh, [signer.verifier()], expect_size=20)


async def _true(value: bool) -> bool:
    return value


class TestSigningKeyRotation:
    async def test_old_heads_stay_verifiable_with_the_old_key(self, fresh: Database) -> None:
        key_a, key_b = NoteSigner.generate(ORIGIN), NoteSigner.generate(ORIGIN)
        assert key_a.key_hash != key_b.key_hash
        async with sequencer_conn(fresh) as conn:
            await append_committed(fresh, *(entry(i) for i in range(5)))
            await drain(Sequencer(sequencer_url(fresh), key_a, ORIGIN, batch_size=3), conn)
        await asyncio.sleep(0.01)  # distinct valid_from timestamps
        async with sequencer_conn(fresh) as conn:
            await append_committed(fresh, *(entry(i) for i in range(5, 9)))
            await drain(Sequencer(sequencer_url(fresh), key_b, ORIGIN, batch_size=3), conn)

        async with reader_for(fresh) as reader:
            keys = await reader.signing_keys()
            heads = await reader.heads()
        assert [k.vkey for k in keys] == [key_a.vkey(), key_b.vkey()]
        assert keys[0].valid_until == keys[1].valid_from
        assert keys[0].valid_from < keys[1].valid_from
        assert keys[1].valid_until is None

        assert [h.tree_size for h in heads] == [3, 5, 8, 9]
        for head in heads:
            signed_by, other = (key_a, key_b) if head.tree_size <= 5 else (key_b, key_a)
            assert open_checkpoint(head.checkpoint, [signed_by.verifier()]).size == head.tree_size
            with pytest.raises(UnverifiedNoteError):
                open_checkpoint(head.checkpoint, [other.verifier()])
            if head.tree_size > 5:
                assert head.signed_at >= keys[1].valid_from
            else:
                assert keys[0].valid_from <= head.signed_at <= keys[1].valid_from
        # Verifiers built from the published keys open every head, old and new.
        await check_log(fresh, [NoteVerifier.from_vkey(k.vkey) for k in keys], expect_size=9)


class TestAppendNeedsTheCallersTransaction:
    async def test_an_autocommit_connection_is_refused_and_nothing_is_queued(self, fresh: Database) -> None:
        async with await connect(service_url(fresh), autocommit=True) as conn:
            with pytest.raises(RuntimeError, match="open transaction"):
                await append(conn, entry("alone"))
        assert await queue_count(fresh) == 0

    async def test_a_sqlalchemy_connection_without_a_transaction_is_refused(self, fresh: Database) -> None:
        engine = create_engine_for(fresh.url_for("identity"), pool_size=1)
        try:
            async with engine.connect() as conn:
                with pytest.raises(RuntimeError, match="begin one first"):
                    await append(conn, entry("alone"))
        finally:
            await engine.dispose()
        assert await queue_count(fresh) == 0
