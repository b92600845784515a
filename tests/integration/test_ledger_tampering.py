"""`avgate ledger verify` against a real PostgreSQL: what an attacker with superuser
rights can do to the ledger, and how the verifier names it.

Each mutation test gets a database of its own, cloned from the migrated template,
with a ledger of 40 entries appended by a service role (each in its own transaction)
and integrated by the sequencer in five batches, so there are signed heads at sizes
7, 16, 22, 32 and 40. The attacker then works as the superuser with the ledger's
triggers disabled (they are ENABLE ALWAYS, so session_replication_role = replica is
not enough) and `verify_database` must report the ledger as bad and name the first
bad entry. The guards that hold without such rights are shown on a shared ledger.
"""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import Any

import psycopg
import pytest

from avgate.kernel.db import LEDGER_SEQUENCER_ROLE, create_database, drop_database, libpq_url, role_url
from avgate.ledger import merkle
from avgate.ledger.append import append
from avgate.ledger.checkpoint import Checkpoint, NoteSigner, open_checkpoint, sign_checkpoint
from avgate.ledger.entry import LedgerEntry, canonical_bytes
from avgate.ledger.verify import verify_database
from avgate.ledger.verify_report import (
    BAD_SIGNATURE,
    ENTRY_WITHOUT_LEAF_NODE,
    LEAF_HASH_MISMATCH,
    MISSING_ENTRY,
    ROOT_MISMATCH,
    SAVED_HEAD_MISMATCH,
    UNKNOWN_KEY,
    UNSIGNED_ENTRIES,
    VerifyReport,
)
from services.reporting.ledger.sequencer import Sequencer
from tests.conftest import Database
from tests.support import provider, service

pytestmark = pytest.mark.db

ORIGIN = "test.example/ledger"
ACTOR = service("gateway", origin=provider("tenant-1", subject="key-1", request_id=""))
BATCHES = (7, 9, 6, 10, 8)
HEAD_SIZES = (7, 16, 22, 32, 40)
SIZE = 40
LEDGER_TABLES = ("entries", "nodes", "heads", "signing_keys")


@dataclass
class Ledger:
    db: Database
    signer: NoteSigner
    notes: dict[int, bytes]
    """Every signed head as the regulator's feed delivered it, by tree size."""


def make_entry(n: int) -> LedgerEntry:
    return LedgerEntry(
        action="api_key.revoke",
        subject_type="api_key",
        subject_id=f"key-{n}",
        actor=ACTOR,
        legal_basis="NAVIS-2019 Art. 14",
        reason="integration test",
        data={"n": n},
    )


async def connect(url: str, *, autocommit: bool = True) -> psycopg.AsyncConnection[Any]:
    return await psycopg.AsyncConnection.connect(libpq_url(url), autocommit=autocommit)


async def build_ledger(db: Database) -> Ledger:
    signer = NoteSigner.generate(ORIGIN)
    sequencer_url = libpq_url(role_url(db.admin_url, LEDGER_SEQUENCER_ROLE))
    sequencer = Sequencer(sequencer_url, signer, ORIGIN, batch_size=100)
    n = 0
    async with (
        await connect(db.url_for("gateway"), autocommit=False) as service,
        await connect(sequencer_url) as seq_conn,
    ):
        for batch in BATCHES:
            for _ in range(batch):
                async with service.transaction():
                    await append(service, make_entry(n))
                n += 1
            result = await sequencer.integrate_once(seq_conn)
            assert result.integrated == batch
    async with await connect(db.admin_url) as admin:
        rows = await (await admin.execute("select tree_size, checkpoint from ledger.heads order by 1")).fetchall()
    notes = {int(size): bytes(note) for size, note in rows}
    assert tuple(notes) == HEAD_SIZES
    return Ledger(db, signer, notes)


@pytest.fixture
def fresh_database(server_admin_url: str, template_database: Database) -> Iterator[Database]:
    name = f"avgate_tamper_{uuid.uuid4().hex[:8]}"
    url = create_database(server_admin_url, name, template=template_database.name)
    try:
        yield Database(name, url)
    finally:
        drop_database(server_admin_url, name)


@pytest.fixture
async def ledger(fresh_database: Database) -> Ledger:
    return await build_ledger(fresh_database)


@pytest.fixture(scope="module")
async def shared_ledger(database: Database) -> Ledger:
    return await build_ledger(database)


async def verify(db: Database, **kwargs: Any) -> VerifyReport:
    async with await connect(db.url_for("reporting"), autocommit=False) as conn:
        return await verify_database(conn, **kwargs)


@asynccontextmanager
async def tampering(db: Database) -> AsyncIterator[psycopg.AsyncConnection[Any]]:
    """A superuser connection with the ledger's triggers disabled; re-enabled (ALWAYS) after."""
    async with await connect(db.admin_url) as conn:
        for table in LEDGER_TABLES:
            await conn.execute(f"alter table ledger.{table} disable trigger all")
        try:
            yield conn
        finally:
            triggers = await (
                await conn.execute(
                    "select tgrelid::regclass::text, tgname from pg_trigger"
                    " where tgrelid::regclass::text like 'ledger.%' and not tgisinternal"
                )
            ).fetchall()
            for table, name in triggers:
                await conn.execute(f'alter table {table} enable always trigger "{name}"')


def kinds(report: VerifyReport) -> set[str]:
    return {p.kind for p in report.problems}


# ------------------------------------------------------------------------ the attacker's moves


async def payload_of(conn: psycopg.AsyncConnection[Any], index: int) -> bytes:
    row = await (await conn.execute("select payload from ledger.entries where leaf_index = %s", (index,))).fetchone()
    assert row is not None
    return bytes(row[0])


async def edit_one_byte(conn: psycopg.AsyncConnection[Any], index: int) -> None:
    payload = await payload_of(conn, index)
    edited = payload.replace(b"integration test", b"integration tesT")
    assert edited != payload and len(edited) == len(payload)
    await conn.execute("update ledger.entries set payload = %s where leaf_index = %s", (edited, index))


async def edit_payload(conn: psycopg.AsyncConnection[Any], _: Ledger) -> None:
    await edit_one_byte(conn, 12)


async def edit_payload_and_leaf_node(conn: psycopg.AsyncConnection[Any], _: Ledger) -> None:
    await edit_one_byte(conn, 12)
    leaf = merkle.leaf_hash(await payload_of(conn, 12))
    await conn.execute("update ledger.nodes set hash = %s where level = 0 and idx = 12", (leaf,))


async def delete_entry(conn: psycopg.AsyncConnection[Any], _: Ledger) -> None:
    await conn.execute("delete from ledger.entries where leaf_index = 20")


async def delete_entry_and_shift_down(conn: psycopg.AsyncConnection[Any], _: Ledger) -> None:
    await conn.execute("delete from ledger.entries where leaf_index = 20")
    await conn.execute("update ledger.entries set leaf_index = -leaf_index where leaf_index > 20")
    await conn.execute("update ledger.entries set leaf_index = -leaf_index - 1 where leaf_index < 0")


async def swap_entries(conn: psycopg.AsyncConnection[Any], _: Ledger) -> None:
    await conn.execute("update ledger.entries set leaf_index = -1 where leaf_index = 5")
    await conn.execute("update ledger.entries set leaf_index = 5 where leaf_index = 30")
    await conn.execute("update ledger.entries set leaf_index = 30 where leaf_index = -1")


async def insert_entry(conn: psycopg.AsyncConnection[Any], _: Ledger) -> None:
    """Shifts entries 10.. up by one and slips a new entry in at 10."""
    await conn.execute("update ledger.entries set leaf_index = -leaf_index where leaf_index >= 10")
    await conn.execute("update ledger.entries set leaf_index = -leaf_index + 1 where leaf_index <= -10")
    await insert_row(conn, 10, make_entry(1000))


async def append_extra_entry(conn: psycopg.AsyncConnection[Any], _: Ledger) -> None:
    await insert_row(conn, SIZE, make_entry(1000))


async def append_extra_entry_and_leaf_node(conn: psycopg.AsyncConnection[Any], _: Ledger) -> None:
    entry = make_entry(1000)
    await insert_row(conn, SIZE, entry)
    await conn.execute(
        "insert into ledger.nodes (level, idx, hash) values (0, %s, %s)",
        (SIZE, merkle.leaf_hash(canonical_bytes(entry))),
    )


async def insert_row(conn: psycopg.AsyncConnection[Any], index: int, entry: LedgerEntry) -> None:
    await conn.execute(
        "insert into ledger.entries (leaf_index, entry_id, idempotency_key, payload, writer, queued_at)"
        " values (%s, %s, %s, %s, 'avgate_gateway', now())",
        (index, entry.entry_id, entry.key, canonical_bytes(entry)),
    )


async def edit_entry_id(conn: psycopg.AsyncConnection[Any], _: Ledger) -> None:
    await conn.execute("update ledger.entries set entry_id = %s where leaf_index = 3", (uuid.uuid4(),))


async def rewrite_tail(conn: psycopg.AsyncConnection[Any], ledger: Ledger) -> None:
    """Rewrites entries 25.. and, holding the log's own key, every node and head above them."""
    rows = await (await conn.execute("select leaf_index, payload from ledger.entries order by leaf_index")).fetchall()
    tree = merkle.CompactRange()
    nodes: list[tuple[int, int, bytes]] = []
    roots: dict[int, bytes] = {}
    for index, stored in rows:
        payload = bytes(stored)
        if index >= 25:
            payload = payload.replace(b"integration test", b"nothing happened")
            await conn.execute("update ledger.entries set payload = %s where leaf_index = %s", (payload, index))
        leaf = merkle.leaf_hash(payload)
        nodes.append((0, int(index), leaf))
        nodes.extend(tree.append(leaf))
        roots[tree.size] = tree.root()
    await conn.execute("delete from ledger.nodes")
    async with conn.cursor() as cur:
        await cur.executemany("insert into ledger.nodes (level, idx, hash) values (%s, %s, %s)", nodes)
    for size, note in ledger.notes.items():
        if size > 25:
            old = open_checkpoint(note, [ledger.signer.verifier()])
            new = Checkpoint(ORIGIN, size, roots[size], old.timestamp_ms, old.extensions)
            await conn.execute(
                "update ledger.heads set root_hash = %s, checkpoint = %s where tree_size = %s",
                (new.root_hash, sign_checkpoint(new, ledger.signer), size),
            )


async def edit_checkpoint_bytes(conn: psycopg.AsyncConnection[Any], ledger: Ledger) -> None:
    note = ledger.notes[16]
    edited = note.replace(b"\ntimestamp 1", b"\ntimestamp 2", 1)
    assert edited != note
    await conn.execute("update ledger.heads set checkpoint = %s where tree_size = 16", (edited,))


async def resign(conn: psycopg.AsyncConnection[Any], ledger: Ledger, size: int) -> None:
    """Signs head `size` again with a key of the same name that is not the log's."""
    forger = NoteSigner.generate(ORIGIN)
    old = open_checkpoint(ledger.notes[size], [ledger.signer.verifier()])
    await conn.execute(
        "update ledger.heads set checkpoint = %s where tree_size = %s", (sign_checkpoint(old, forger), size)
    )


async def forge_middle_head(conn: psycopg.AsyncConnection[Any], ledger: Ledger) -> None:
    await resign(conn, ledger, 22)


async def forge_latest_head(conn: psycopg.AsyncConnection[Any], ledger: Ledger) -> None:
    await resign(conn, ledger, 40)


Mutation = Callable[[psycopg.AsyncConnection[Any], Ledger], Awaitable[None]]


class TestVerifyNamesTheFirstBadEntry:
    @pytest.mark.parametrize(
        ("mutate", "first_bad", "expected"),
        [
            pytest.param(edit_payload, 12, {LEAF_HASH_MISMATCH, ROOT_MISMATCH}, id="edited-payload-one-byte"),
            # With the leaf node recomputed too, only the signed roots disagree: the first
            # bad entry is known to lie after the last head that verifies (7) and before 16.
            pytest.param(edit_payload_and_leaf_node, 7, {ROOT_MISMATCH}, id="edited-payload-and-its-leaf-node"),
            pytest.param(delete_entry, 20, {MISSING_ENTRY}, id="deleted-entry"),
            pytest.param(
                delete_entry_and_shift_down,
                20,
                {LEAF_HASH_MISMATCH, ROOT_MISMATCH, MISSING_ENTRY},
                id="deleted-entry-shifted-down",
            ),
            pytest.param(swap_entries, 5, {LEAF_HASH_MISMATCH, ROOT_MISMATCH}, id="two-entries-swapped"),
            pytest.param(
                insert_entry,
                10,
                {LEAF_HASH_MISMATCH, ROOT_MISMATCH, ENTRY_WITHOUT_LEAF_NODE, UNSIGNED_ENTRIES},
                id="inserted-entry-shifting-the-rest-up",
            ),
            pytest.param(
                append_extra_entry, SIZE, {ENTRY_WITHOUT_LEAF_NODE, UNSIGNED_ENTRIES}, id="appended-entry-without-head"
            ),
            pytest.param(append_extra_entry_and_leaf_node, SIZE, {UNSIGNED_ENTRIES}, id="appended-entry-and-leaf-node"),
            pytest.param(edit_entry_id, 3, {"payload_id_mismatch"}, id="edited-entry-id-column"),
        ],
    )
    async def test_mutation_is_caught(
        self, ledger: Ledger, mutate: Mutation, first_bad: int, expected: set[str]
    ) -> None:
        async with tampering(ledger.db) as conn:
            await mutate(conn, ledger)

        report = await verify(ledger.db)

        assert not report.ok
        assert report.first_bad_index == first_bad, report.problems
        assert kinds(report) == expected, report.problems

        # The worker processes a large ledger is verified with find exactly the same.
        with pytest.MonkeyPatch.context() as patch:
            patch.setattr("avgate.ledger.verify.PARALLEL_MIN_ENTRIES", 0)
            parallel = await verify(ledger.db, workers=2, batch_size=8)
        assert parallel.workers_used == 2
        assert (parallel.first_bad_index, kinds(parallel)) == (report.first_bad_index, kinds(report))


class TestVerifyChecksSignatures:
    @pytest.mark.parametrize(
        ("mutate", "kind", "tree_size", "first_bad"),
        [
            pytest.param(edit_checkpoint_bytes, BAD_SIGNATURE, 16, None, id="checkpoint-bytes-edited"),
            pytest.param(forge_middle_head, UNKNOWN_KEY, 22, None, id="middle-head-signed-by-another-key"),
            # The latest valid head is then 32: entries 32.. are no longer vouched for.
            pytest.param(forge_latest_head, UNKNOWN_KEY, 40, 32, id="latest-head-signed-by-another-key"),
        ],
    )
    async def test_forged_signature_is_caught(
        self, ledger: Ledger, mutate: Mutation, kind: str, tree_size: int, first_bad: int | None
    ) -> None:
        async with tampering(ledger.db) as conn:
            await mutate(conn, ledger)

        for trusted in (None, [ledger.signer.verifier()]):
            report = await verify(ledger.db, trusted=trusted)

            assert not report.ok
            assert [(p.kind, p.tree_size) for p in report.problems if p.kind == kind] == [(kind, tree_size)]
            assert report.first_bad_index == first_bad, report.problems

    async def test_untouched_ledger_verifies(self, ledger: Ledger) -> None:
        report = await verify(ledger.db)

        assert report.ok, report.problems
        assert (report.entries_checked, report.heads_checked, report.tree_size) == (SIZE, len(HEAD_SIZES), SIZE)
        assert report.first_bad_index is None
        assert report.to_json()["ok"] is True

    async def test_pinned_log_key_verifies_and_saved_heads_match(self, ledger: Ledger) -> None:
        report = await verify(ledger.db, trusted=[ledger.signer.verifier()], saved_heads=list(ledger.notes.values()))

        assert report.ok, report.problems
        assert report.saved_heads_checked == len(HEAD_SIZES)

    async def test_unrelated_pinned_key_fails_every_head(self, ledger: Ledger) -> None:
        report = await verify(ledger.db, trusted=[NoteSigner.generate(ORIGIN).verifier()])

        assert not report.ok
        assert sorted(p.tree_size for p in report.problems if p.kind == UNKNOWN_KEY) == list(HEAD_SIZES)
        assert report.first_bad_index == 0  # nothing in the log is vouched for by a trusted key


class TestVerifyAgainstSavedHeads:
    async def test_rewritten_tail_with_resigned_heads_passes_alone(self, ledger: Ledger) -> None:
        async with tampering(ledger.db) as conn:
            await rewrite_tail(conn, ledger)

        # With the log's own key the rewrite is self-consistent: only heads kept outside show it.
        assert (await verify(ledger.db)).ok

    @pytest.mark.parametrize(
        ("saved_sizes", "first_bad"),
        [
            pytest.param((32,), 0, id="one-saved-head"),
            pytest.param(HEAD_SIZES, 22, id="every-head-from-the-feed"),
        ],
    )
    async def test_rewritten_tail_is_caught_by_an_earlier_saved_head(
        self, ledger: Ledger, saved_sizes: tuple[int, ...], first_bad: int
    ) -> None:
        async with tampering(ledger.db) as conn:
            await rewrite_tail(conn, ledger)

        report = await verify(
            ledger.db, trusted=[ledger.signer.verifier()], saved_heads=[ledger.notes[s] for s in saved_sizes]
        )

        assert not report.ok
        assert kinds(report) == {SAVED_HEAD_MISMATCH}
        assert {p.tree_size for p in report.problems} == {s for s in saved_sizes if s > 25}
        assert report.first_bad_index == first_bad


class TestLedgerRefusesChangeWithoutTamperingRights:
    STATEMENTS = {
        "update": "update ledger.{table} set {column} = {column}",
        "delete": "delete from ledger.{table}",
        "truncate": "truncate ledger.{table}",
    }
    COLUMNS = {"entries": "payload", "nodes": "hash", "heads": "checkpoint"}

    @pytest.mark.parametrize("statement", list(STATEMENTS))
    @pytest.mark.parametrize("table", list(COLUMNS))
    @pytest.mark.parametrize("role", ["sequencer", "service"])
    async def test_role_is_refused(self, shared_ledger: Ledger, role: str, table: str, statement: str) -> None:
        db = shared_ledger.db
        url = role_url(db.admin_url, LEDGER_SEQUENCER_ROLE) if role == "sequencer" else db.url_for("gateway")
        sql = self.STATEMENTS[statement].format(table=table, column=self.COLUMNS[table])
        async with await connect(url) as conn:
            with pytest.raises(psycopg.errors.InsufficientPrivilege):
                await conn.execute(sql)

    @pytest.mark.parametrize("statement", list(STATEMENTS))
    async def test_superuser_in_replica_mode_is_still_refused(self, shared_ledger: Ledger, statement: str) -> None:
        sql = self.STATEMENTS[statement].format(table="entries", column="payload")
        async with await connect(shared_ledger.db.admin_url) as conn:
            await conn.execute("set session_replication_role = replica")
            with pytest.raises(psycopg.errors.InsufficientPrivilege, match=r"append-only|not an archived entry"):
                await conn.execute(sql)

        assert (await verify(shared_ledger.db)).ok
