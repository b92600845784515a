"""The audit ledger refuses change, against a real PostgreSQL.

Privileges: a service role may only insert into the queue; the sequencer
only inserts the tree and consumes integrated queue rows; nobody may update
or truncate. Triggers (ENABLE ALWAYS) repeat the rules even for a superuser
under session_replication_role = replica. Retention: only the pruner deletes,
only archived left-edge ranges older than the retention period (never under
six months).

Privilege tests share one module database holding a small signed log; the
retention tests change state (archives, policy, pruned entries) and each
get a fresh database.
"""

from __future__ import annotations

import hashlib
import uuid
from collections.abc import AsyncIterator, Iterator
from typing import Any

import psycopg
import psycopg.errors
import pytest

from avgate.kernel.db import (
    LEDGER_PRUNER_ROLE,
    LEDGER_SEQUENCER_ROLE,
    create_database,
    drop_database,
    libpq_url,
    role_url,
)
from avgate.ledger.append import append
from avgate.ledger.checkpoint import NoteSigner
from avgate.ledger.entry import LedgerEntry
from services.reporting.ledger.sequencer import LOCK_KEY, Sequencer
from tests.conftest import Database
from tests.support import service

pytestmark = pytest.mark.db

ORIGIN = "avgate.test/ledger"
ACTOR = service("identity")
LOG_SIZE = 10
DENIED = psycopg.errors.InsufficientPrivilege
PERMISSION = "permission denied"
APPEND_ONLY = "append-only"


def entry(n: int) -> LedgerEntry:
    return LedgerEntry(action="test.record", subject_type="thing", subject_id=str(n), actor=ACTOR)


def url_as(db: Database, role: str) -> str:
    return libpq_url(role_url(db.admin_url, role))


async def connect(url: str) -> psycopg.AsyncConnection[Any]:
    return await psycopg.AsyncConnection.connect(url, autocommit=True)


async def scalar(conn: psycopg.AsyncConnection[Any], query: str, params: tuple[Any, ...] = ()) -> Any:
    row = await (await conn.execute(query, params)).fetchone()
    return row[0] if row else None


async def build_log(db: Database, size: int, *, batch_size: int = 4) -> None:
    """Appends `size` entries as avgate_identity and integrates them (one head per batch)."""
    async with await psycopg.AsyncConnection.connect(libpq_url(db.url_for("identity"))) as conn:
        for i in range(size):
            async with conn.transaction():
                await append(conn, entry(i))
    seq = Sequencer(url_as(db, LEDGER_SEQUENCER_ROLE), NoteSigner.generate(ORIGIN), ORIGIN, batch_size=batch_size)
    async with await connect(url_as(db, LEDGER_SEQUENCER_ROLE)) as conn:
        await conn.execute("select pg_advisory_lock(%s)", (LOCK_KEY,))
        while (await seq.integrate_once(conn)).consumed:
            pass


async def queue_one(db: Database) -> uuid.UUID:
    """Queues one entry as a service and leaves it unintegrated; returns its entry id."""
    e = entry(999)
    async with await psycopg.AsyncConnection.connect(libpq_url(db.url_for("identity"))) as conn:
        await append(conn, e)
        await conn.commit()
    return e.entry_id


@pytest.fixture(scope="module")
async def log(database: Database) -> Database:
    """The module database with a signed log of LOG_SIZE entries and one queued, unintegrated entry."""
    await build_log(database, LOG_SIZE)
    await queue_one(database)
    return database


@pytest.fixture
def fresh(server_admin_url: str, template_database: Database) -> Iterator[Database]:
    name = f"avgate_lg_{uuid.uuid4().hex[:8]}"
    url = create_database(server_admin_url, name, template=template_database.name)
    try:
        yield Database(name, url)
    finally:
        drop_database(server_admin_url, name)


@pytest.fixture
async def admin(log: Database) -> AsyncIterator[psycopg.AsyncConnection[Any]]:
    async with await connect(libpq_url(log.admin_url)) as conn:
        yield conn


async def counts(admin: psycopg.AsyncConnection[Any]) -> tuple[int, ...]:
    return tuple(
        [
            int(await scalar(admin, f"select count(*) from ledger.{table}"))
            for table in ("queue", "entries", "nodes", "heads", "signing_keys", "archives", "policy")
        ]
    )


# --------------------------------------------------------------------------- privileges


class TestServiceRolesMayOnlyInsertIntoTheQueue:
    async def test_insert_is_allowed_and_nothing_else(self, log: Database, admin: psycopg.AsyncConnection[Any]) -> None:
        before = await counts(admin)
        async with await connect(libpq_url(log.url_for("identity"))) as conn:
            await conn.execute(
                "insert into ledger.queue (entry_id, idempotency_key, payload) values (%s, %s, %s)",
                (uuid.uuid4(), f"k-{uuid.uuid4()}", b"{}"),
            )
            for statement in (
                "select count(*) from ledger.queue",
                "select payload from ledger.queue where queue_id = 1",
                "update ledger.queue set payload = 'x'",
                "update ledger.queue set payload = 'x' where queue_id = 1",
                "delete from ledger.queue",
                "truncate ledger.queue",
            ):
                with pytest.raises(DENIED, match=PERMISSION):
                    await conn.execute(statement)
        assert await counts(admin) == (before[0] + 1, *before[1:])

    @pytest.mark.parametrize(
        ("column", "value"),
        [("writer", "avgate_gateway"), ("queued_at", "2020-01-01T00:00:00Z"), ("queue_id", "1")],
    )
    async def test_a_service_cannot_set_who_wrote_an_entry_when_or_its_place(
        self, log: Database, column: str, value: str
    ) -> None:
        async with await connect(libpq_url(log.url_for("identity"))) as conn:
            with pytest.raises(DENIED, match=PERMISSION):
                await conn.execute(
                    f"insert into ledger.queue (entry_id, idempotency_key, payload, {column}) values (%s, %s, %s, %s)",
                    (uuid.uuid4(), f"k-{uuid.uuid4()}", b"{}", value),
                )

    @pytest.mark.parametrize("role", ["identity", "gateway", "complaints"])
    @pytest.mark.parametrize("table", ["entries", "nodes", "heads"])
    async def test_the_tree_is_out_of_reach(self, log: Database, role: str, table: str) -> None:
        column = {"entries": "payload", "nodes": "hash", "heads": "checkpoint"}[table]
        async with await connect(libpq_url(log.url_for(role))) as conn:
            for statement in (
                f"select * from ledger.{table} limit 1",
                f"insert into ledger.{table} select * from ledger.{table} limit 0",
                f"update ledger.{table} set {column} = 'x'",
                f"delete from ledger.{table}",
                f"truncate ledger.{table}",
            ):
                with pytest.raises(DENIED, match=PERMISSION):
                    await conn.execute(statement)

    async def test_a_service_cannot_forge_rows_in_the_tree(self, log: Database) -> None:
        async with await connect(libpq_url(log.url_for("identity"))) as conn:
            with pytest.raises(DENIED, match=PERMISSION):
                await conn.execute(
                    "insert into ledger.heads (tree_size, root_hash, checkpoint, key_name) values (1000, %s, %s, 'x')",
                    (b"\0" * 32, b"forged"),
                )
            with pytest.raises(DENIED, match=PERMISSION):
                await conn.execute("insert into ledger.nodes (level, idx, hash) values (0, 1000, %s)", (b"\0" * 32,))
            with pytest.raises(DENIED, match=PERMISSION):
                await conn.execute(
                    "insert into ledger.entries (leaf_index, entry_id, idempotency_key, payload, writer, queued_at) "
                    "values (1000, %s, 'forged', '{}', 'x', now())",
                    (uuid.uuid4(),),
                )


class TestTheSequencerOnlyAppends:
    @pytest.mark.parametrize(
        "statement",
        [
            "update ledger.entries set payload = 'x' where leaf_index = 0",
            "update ledger.nodes set hash = sha256('x') where level = 0 and idx = 0",
            "update ledger.heads set checkpoint = 'x' where tree_size = 4",
            "delete from ledger.entries where leaf_index = 0",
            "delete from ledger.nodes where level = 0 and idx = 0",
            "delete from ledger.heads where tree_size = 4",
            "delete from ledger.signing_keys",
            "update ledger.signing_keys set vkey = 'x'",
            "insert into ledger.archives (first_index, last_index, sha256, covered_tree_size) "
            "values (0, 0, sha256('x'), 4)",
            "insert into ledger.policy (retention) values (interval '7 months')",
        ],
    )
    async def test_no_update_or_delete(
        self, log: Database, admin: psycopg.AsyncConnection[Any], statement: str
    ) -> None:
        before = await counts(admin)
        async with await connect(url_as(log, LEDGER_SEQUENCER_ROLE)) as conn:
            with pytest.raises(DENIED, match=PERMISSION):
                await conn.execute(statement)
        assert await counts(admin) == before

    @pytest.mark.parametrize("table", ["queue", "entries", "nodes", "heads", "signing_keys", "archives", "policy"])
    async def test_no_truncate(self, log: Database, admin: psycopg.AsyncConnection[Any], table: str) -> None:
        before = await counts(admin)
        async with await connect(url_as(log, LEDGER_SEQUENCER_ROLE)) as conn:
            with pytest.raises(DENIED, match=PERMISSION):
                await conn.execute(f"truncate ledger.{table}")
        assert await counts(admin) == before

    async def test_cannot_consume_a_queue_row_that_was_not_integrated(
        self, log: Database, admin: psycopg.AsyncConnection[Any]
    ) -> None:
        queued = int(await scalar(admin, "select count(*) from ledger.queue"))
        assert queued >= 1
        async with await connect(url_as(log, LEDGER_SEQUENCER_ROLE)) as conn:
            assert int(await scalar(conn, "select count(*) from ledger.queue")) == queued  # it may read them
            with pytest.raises(DENIED, match="only the sequencer may consume an integrated entry"):
                await conn.execute("delete from ledger.queue")
        assert int(await scalar(admin, "select count(*) from ledger.queue")) == queued

    async def test_cannot_consume_a_queue_row_as_a_superuser_either(self, admin: psycopg.AsyncConnection[Any]) -> None:
        queued = int(await scalar(admin, "select count(*) from ledger.queue"))
        with pytest.raises(DENIED, match="only the sequencer may consume"):
            await admin.execute("delete from ledger.queue")
        assert int(await scalar(admin, "select count(*) from ledger.queue")) == queued


class TestTriggersFireUnderReplication:
    """A superuser in replica mode skips ordinary triggers; the ledger's are ENABLE ALWAYS."""

    @pytest.mark.parametrize(
        "statement",
        [
            "update ledger.entries set payload = 'x' where leaf_index = 0",
            "update ledger.nodes set hash = sha256('x') where level = 0 and idx = 0",
            "update ledger.heads set root_hash = sha256('x')",
            "update ledger.queue set payload = 'x'",
            "update ledger.signing_keys set vkey = 'x'",
            "update ledger.policy set retention = interval '6 months'",
            "delete from ledger.heads",
            "delete from ledger.heads where tree_size = 4",
            "delete from ledger.nodes",
            "delete from ledger.signing_keys",
            "delete from ledger.policy",
            "truncate ledger.nodes",
            "truncate ledger.entries",
            "truncate ledger.heads",
            "truncate ledger.queue",
            "truncate ledger.policy",
            "truncate ledger.archives",
            "truncate ledger.signing_keys",
        ],
    )
    async def test_superuser_in_replica_mode_is_refused(
        self, admin: psycopg.AsyncConnection[Any], statement: str
    ) -> None:
        before = await counts(admin)
        await admin.execute("set session_replication_role = replica")
        try:
            with pytest.raises(DENIED, match=APPEND_ONLY):
                await admin.execute(statement)
        finally:
            await admin.execute("set session_replication_role = default")
        assert await counts(admin) == before

    async def test_superuser_in_replica_mode_cannot_delete_entries(self, admin: psycopg.AsyncConnection[Any]) -> None:
        await admin.execute("set session_replication_role = replica")
        try:
            with pytest.raises(DENIED, match="not an archived entry past retention"):
                await admin.execute("delete from ledger.entries where leaf_index = 0")
        finally:
            await admin.execute("set session_replication_role = default")
        assert int(await scalar(admin, "select count(*) from ledger.entries")) == LOG_SIZE

    async def test_every_ledger_trigger_is_enable_always(self, admin: psycopg.AsyncConnection[Any]) -> None:
        rows = await (
            await admin.execute(
                "select tgrelid::regclass::text, tgname, tgenabled from pg_trigger "
                "where tgrelid::regclass::text like 'ledger.%' and not tgisinternal"
            )
        ).fetchall()
        assert len(rows) >= 7 * 2 + 7
        assert {r[2] for r in rows} == {"A"}, rows


# --------------------------------------------------------------------------- retention


class TestRetention:
    async def test_policy_refuses_less_than_six_months(self, fresh: Database) -> None:
        async with await connect(libpq_url(fresh.admin_url)) as admin:
            for too_short in ("5 months", "179 days", "6 months -1 second", "-7 months"):
                with pytest.raises(psycopg.errors.CheckViolation, match="six_months"):
                    await admin.execute("insert into ledger.policy (retention) values (%s::interval)", (too_short,))
            await admin.execute("insert into ledger.policy (retention) values (interval '6 months')")
            assert await scalar(admin, "select count(*) from ledger.policy") == 2

    async def test_six_calendar_months_hold_even_under_a_policy_counted_in_days(self, fresh: Database) -> None:
        # PostgreSQL compares intervals with 30-day months, so the CHECK takes '180 days' as six months;
        # six calendar months are always at least 181 days, so the guards must still keep these entries.
        await build_log(fresh, 4, batch_size=4)
        async with await connect(libpq_url(fresh.admin_url)) as admin:
            await admin.execute("insert into ledger.policy (retention) values (interval '180 days')")
            await admin.execute("alter table ledger.entries disable trigger entries_no_update")
            try:
                await admin.execute("update ledger.entries set integrated_at = now() - interval '180 days 1 hour'")
            finally:
                await admin.execute("alter table ledger.entries enable always trigger entries_no_update")
            assert await scalar(
                admin, "select bool_and(integrated_at > now() - interval '6 months') from ledger.entries"
            )
        async with await connect(url_as(fresh, LEDGER_PRUNER_ROLE)) as pruner:
            with pytest.raises(psycopg.errors.RaiseException, match="younger than the retention period"):
                await pruner.execute(
                    "insert into ledger.archives (first_index, last_index, sha256, covered_tree_size) "
                    "values (0, 3, %s, 4)",
                    (hashlib.sha256(b"archive").digest(),),
                )
            with pytest.raises(DENIED, match="not an archived entry past retention"):
                await pruner.execute("delete from ledger.entries")
            assert await scalar(pruner, "select count(*) from ledger.entries") == 4

    async def test_the_pruner_cannot_touch_young_or_unarchived_entries(self, fresh: Database) -> None:
        await build_log(fresh, 8)
        async with await connect(url_as(fresh, LEDGER_PRUNER_ROLE)) as pruner:
            with pytest.raises(DENIED, match="not an archived entry past retention"):
                await pruner.execute("delete from ledger.entries where leaf_index = 0")
            # Young entries cannot be archived, so they can never be covered by an archive.
            with pytest.raises(psycopg.errors.RaiseException, match="younger than the retention period"):
                await pruner.execute(
                    "insert into ledger.archives (first_index, last_index, sha256, covered_tree_size) "
                    "values (0, 3, %s, 4)",
                    (hashlib.sha256(b"archive").digest(),),
                )
            for statement in (
                "update ledger.entries set payload = 'x'",
                "delete from ledger.nodes",
                "delete from ledger.heads",
                "insert into ledger.heads (tree_size, root_hash, checkpoint, key_name) select 100, root_hash, "
                "checkpoint, key_name from ledger.heads limit 1",
                "delete from ledger.queue",
                "insert into ledger.policy (retention) values (interval '6 months')",
                "truncate ledger.entries",
            ):
                with pytest.raises(DENIED, match=PERMISSION):
                    await pruner.execute(statement)
            assert await scalar(pruner, "select count(*) from ledger.entries") == 8

    async def test_pruning_an_archived_left_edge_past_retention(self, fresh: Database) -> None:
        k = 6  # entries 0..5 are archived and pruned; 6 and 7 are old too but not archived
        await build_log(fresh, 14, batch_size=4)  # heads at 4, 8, 12, 14
        archive_hash = hashlib.sha256(b"signed export of entries 0..5").digest()
        insert_archive = (
            "insert into ledger.archives (first_index, last_index, sha256, covered_tree_size) values (%s, %s, %s, %s)"
        )

        async with await connect(libpq_url(fresh.admin_url)) as admin:
            # Setup only: backdate the first k + 2 entries by 8 months, with the update trigger off just for that.
            await admin.execute("alter table ledger.entries disable trigger entries_no_update")
            try:
                await admin.execute(
                    "update ledger.entries set integrated_at = integrated_at - interval '8 months' "
                    "where leaf_index < %s",
                    (k + 2,),
                )
            finally:
                await admin.execute("alter table ledger.entries enable always trigger entries_no_update")
            assert (
                await scalar(
                    admin,
                    "select tgenabled from pg_trigger where tgname = 'entries_no_update' "
                    "and tgrelid = 'ledger.entries'::regclass",
                )
                == "A"
            )

            async with await connect(url_as(fresh, LEDGER_PRUNER_ROLE)) as pruner:
                # Old, but not archived yet.
                with pytest.raises(DENIED, match="not an archived entry past retention"):
                    await pruner.execute("delete from ledger.entries where leaf_index = 0")
                # An archive must start at the left edge...
                with pytest.raises(psycopg.errors.RaiseException, match=r"left edge \(0\)"):
                    await pruner.execute(insert_archive, (1, k - 1, archive_hash, 8))
                with pytest.raises(psycopg.errors.RaiseException, match="left edge"):
                    await pruner.execute(insert_archive, (0, -1, archive_hash, 8))
                # ...be covered by a signed head (no head of size 7; head 4 does not cover index 5)...
                for size in (7, 4, 100):
                    with pytest.raises(psycopg.errors.RaiseException, match=f"no signed head of size {size}"):
                        await pruner.execute(insert_archive, (0, k - 1, archive_hash, size))
                # ...and hold only entries past retention (entry 8 is young).
                with pytest.raises(psycopg.errors.RaiseException, match="younger than the retention period"):
                    await pruner.execute(insert_archive, (0, 8, archive_hash, 12))
                await pruner.execute(insert_archive, (0, k - 1, archive_hash, 8))

                # A stricter policy makes the archived entries young again: nothing may go.
                await admin.execute("insert into ledger.policy (retention) values (interval '9 months')")
                with pytest.raises(DENIED, match="not an archived entry past retention"):
                    await pruner.execute("delete from ledger.entries where leaf_index < %s", (k,))
                await admin.execute("insert into ledger.policy (retention) values (interval '7 months')")

                await pruner.execute("delete from ledger.entries where leaf_index < %s", (k,))
                # Entry k is past retention but not archived.
                with pytest.raises(DENIED, match=f"entry {k} is not an archived entry past retention"):
                    await pruner.execute("delete from ledger.entries where leaf_index = %s", (k,))
                # The next archive must continue at k.
                for first in (0, k - 1, k + 1):
                    with pytest.raises(psycopg.errors.RaiseException, match=rf"left edge \({k}\)"):
                        await pruner.execute(insert_archive, (first, k + 1, archive_hash, 8))
                # The pruner cannot rewrite or drop its archives either.
                for statement in ("update ledger.archives set sha256 = sha256('x')", "delete from ledger.archives"):
                    with pytest.raises(DENIED):
                        await pruner.execute(statement)

            remaining = [r[0] for r in await (await admin.execute("select leaf_index from ledger.entries")).fetchall()]
            assert sorted(remaining) == list(range(k, 14))
            # Nodes and heads are never pruned: the pruned range stays covered by signed heads.
            assert await scalar(admin, "select count(*) from ledger.nodes where level = 0") == 14
            assert await scalar(admin, "select array_agg(tree_size order by tree_size) from ledger.heads") == [
                4,
                8,
                12,
                14,
            ]
            assert await scalar(admin, "select count(*) from ledger.archives") == 1
