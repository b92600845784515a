"""Pruning moves old entries from the left edge into a signed archive, and
nothing else: the tree, its heads and every later proof stay intact."""

from __future__ import annotations

import hashlib
import pathlib
import uuid
from collections.abc import AsyncIterator
from typing import Any

import psycopg
import pytest

from avgate.kernel.db import (
    LEDGER_PRUNER_ROLE,
    LEDGER_SEQUENCER_ROLE,
    create_database,
    drop_database,
    libpq_url,
    role_url,
)
from avgate.ledger import merkle
from avgate.ledger.append import append
from avgate.ledger.checkpoint import NoteSigner, open_note
from avgate.ledger.entry import LedgerEntry
from avgate.ledger.prune import MANIFEST_HEADER, prune
from services.reporting.ledger.sequencer import Sequencer
from tests.conftest import Database
from tests.support import operator

ORIGIN = "test.example/ledger"
ACTOR = operator("ops")


@pytest.fixture
async def ledger(server_admin_url: str, template_database: Database) -> AsyncIterator[tuple[Database, NoteSigner]]:
    """A fresh database holding 30 sequenced entries in three batches (three heads)."""
    name = f"avgate_prune_{uuid.uuid4().hex[:8]}"
    database = Database(name, create_database(server_admin_url, name, template=template_database.name))
    signer = NoteSigner.generate(ORIGIN)
    sequencer = Sequencer(libpq_url(role_url(database.admin_url, LEDGER_SEQUENCER_ROLE)), signer, ORIGIN)
    try:
        async with (
            await psycopg.AsyncConnection.connect(libpq_url(database.url_for("identity"))) as writer,
            await psycopg.AsyncConnection.connect(
                libpq_url(role_url(database.admin_url, LEDGER_SEQUENCER_ROLE)), autocommit=True
            ) as seq,
        ):
            for batch in range(3):
                for i in range(10):
                    entry = LedgerEntry(
                        action="test.event", subject_type="thing", subject_id=f"{batch}-{i}", actor=ACTOR
                    )
                    await append(writer, entry)
                    await writer.commit()
                await sequencer.integrate_once(seq)
        yield database, signer
    finally:
        drop_database(server_admin_url, name)


async def backdate(database: Database, below_index: int, months: int) -> None:
    """Makes entries older, as time would (superuser, guards off for this setup step only)."""
    async with await psycopg.AsyncConnection.connect(libpq_url(database.admin_url)) as conn:
        await conn.execute("alter table ledger.entries disable trigger all")
        await conn.execute(
            "update ledger.entries set integrated_at = integrated_at - make_interval(months => %s) "
            "where leaf_index < %s",
            (months, below_index),
        )
        await conn.execute("alter table ledger.entries enable trigger all")
        await conn.commit()


async def pruner(database: Database) -> psycopg.AsyncConnection[Any]:
    return await psycopg.AsyncConnection.connect(libpq_url(role_url(database.admin_url, LEDGER_PRUNER_ROLE)))


async def rows(database: Database, query: str) -> list[Any]:
    async with await psycopg.AsyncConnection.connect(libpq_url(database.admin_url)) as conn:
        return await (await conn.execute(query)).fetchall()


class TestPruning:
    async def test_nothing_younger_than_the_retention_period_is_pruned(
        self, ledger: tuple[Database, NoteSigner], tmp_path: pathlib.Path
    ) -> None:
        database, signer = ledger
        await backdate(database, 30, months=5)  # older than six months would be needed
        async with await pruner(database) as conn:
            assert await prune(conn, signer, tmp_path) is None
        assert (await rows(database, "select count(*) from ledger.entries"))[0][0] == 30
        assert list(tmp_path.iterdir()) == []

    async def test_old_left_edge_is_archived_signed_and_removed(
        self, ledger: tuple[Database, NoteSigner], tmp_path: pathlib.Path
    ) -> None:
        database, signer = ledger
        exported = [
            bytes(r[0])
            for r in await rows(
                database, "select payload from ledger.entries where leaf_index < 14 order by leaf_index"
            )
        ]
        await backdate(database, 14, months=8)
        async with await pruner(database) as conn:
            result = await prune(conn, signer, tmp_path)
        assert result is not None
        assert (result.first_index, result.last_index, result.covered_tree_size) == (0, 13, 20)
        # The export holds the exact canonical bytes, one per line, and its hash is in the manifest.
        data = result.export_path.read_bytes()
        assert data.splitlines() == exported
        assert hashlib.sha256(data).digest() == result.sha256
        body, signatures = open_note(result.manifest_path.read_bytes(), [signer.verifier()])
        assert body.decode().startswith(
            f"{MANIFEST_HEADER}\n{ORIGIN}\nfirst 0\nlast 13\nsha256 {result.sha256.hex()}\n"
        )
        assert signatures[0].verified
        # Entries are gone; nodes and heads are not; the archive covers the range.
        assert [r[0] for r in await rows(database, "select min(leaf_index) from ledger.entries")] == [14]
        assert (await rows(database, "select count(*) from ledger.nodes where level = 0"))[0][0] == 30
        assert (await rows(database, "select first_index, last_index, covered_tree_size from ledger.archives")) == [
            (0, 13, 20)
        ]
        # An archived entry still proves its inclusion against the covering head's root.
        head_root = bytes((await rows(database, "select root_hash from ledger.heads where tree_size = 20"))[0][0])
        nodes = {
            (int(lv), int(ix)): bytes(h)
            for lv, ix, h in await rows(database, "select level, idx, hash from ledger.nodes")
        }
        proof = merkle.build_inclusion_proof(5, 20, lambda ids: {i: nodes[i] for i in ids})
        merkle.verify_inclusion(merkle.leaf_hash(exported[5]), 5, 20, proof, head_root)

    async def test_pruning_again_continues_from_the_edge(
        self, ledger: tuple[Database, NoteSigner], tmp_path: pathlib.Path
    ) -> None:
        database, signer = ledger
        await backdate(database, 5, months=8)
        async with await pruner(database) as conn:
            first = await prune(conn, signer, tmp_path)
        await backdate(database, 12, months=8)
        async with await pruner(database) as conn:
            second = await prune(conn, signer, tmp_path)
        assert first is not None and second is not None
        assert (first.first_index, first.last_index) == (0, 4)
        assert (second.first_index, second.last_index) == (5, 11)

    async def test_the_whole_log_may_go_once_a_signed_head_covers_it(
        self, ledger: tuple[Database, NoteSigner], tmp_path: pathlib.Path
    ) -> None:
        database, signer = ledger
        await backdate(database, 30, months=8)
        async with await pruner(database) as conn:
            result = await prune(conn, signer, tmp_path)
        # The head of size 30 covers every entry, so all 30 may be archived.
        assert result is not None and result.covered_tree_size == 30 and result.last_index == 29


class TestPruneCommand:
    async def test_operator_prunes_with_the_command_line(
        self, ledger: tuple[Database, NoteSigner], tmp_path: pathlib.Path
    ) -> None:
        import json
        import subprocess
        import sys

        database, signer = ledger
        await backdate(database, 10, months=8)
        key_file = tmp_path / "ledger.skey"
        key_file.write_text(signer.skey() + "\n")
        archive = tmp_path / "archive"
        done = subprocess.run(
            [
                sys.executable, "-m", "avgate.cli.main", "ledger", "prune",
                "--database-url", role_url(database.admin_url, LEDGER_PRUNER_ROLE),
                "--archive-dir", str(archive), "--signing-key-file", str(key_file),
            ],
            capture_output=True, text=True, timeout=60,
        )  # fmt: skip
        assert done.returncode == 0, done.stderr
        report = json.loads(done.stdout)
        assert (report["first_index"], report["last_index"], report["covered_tree_size"]) == (0, 9, 10)
        assert pathlib.Path(report["manifest"]).exists()
        assert [r[0] for r in await rows(database, "select min(leaf_index) from ledger.entries")] == [10]


def test_keygen_writes_a_private_key_once_and_prints_the_verifier_key(tmp_path: pathlib.Path) -> None:
    import subprocess
    import sys

    out = tmp_path / "ledger.skey"
    command = [sys.executable, "-m", "avgate.cli.main", "ledger", "keygen", "--origin", ORIGIN, "--out", str(out)]
    done = subprocess.run(command, capture_output=True, text=True, timeout=30)
    assert done.returncode == 0, done.stderr
    signer = NoteSigner.from_skey(out.read_text().strip())
    assert done.stdout.strip() == signer.vkey() and signer.name == ORIGIN
    assert out.stat().st_mode & 0o777 == 0o600
    again = subprocess.run(command, capture_output=True, text=True, timeout=30)
    assert again.returncode == 1 and NoteSigner.from_skey(out.read_text().strip()).vkey() == signer.vkey()
