"""Pruning the ledger's left edge into a signed archive.

Entries older than the retention period (at least six calendar months;
default seven, in ledger.policy) may leave the database — but only from the
left edge, only once exported, and only with the pruned range still covered
by a signed head. The export is the entries' exact canonical bytes, one per
line, plus a manifest signed with the ledger's key (a signed note naming
the range, the export's SHA-256 and the covering head). Tree nodes are never
pruned, so proofs for every later entry keep working, and an archived entry
still proves its inclusion against the heads.

The database enforces the same rules in triggers (see the ledger
migration); this module is the operator's path through them, run as the
avgate_ledger_pruner role.
"""

from __future__ import annotations

import base64
import hashlib
import os
import pathlib
from dataclasses import dataclass
from typing import Any

import psycopg

from avgate.ledger.checkpoint import NoteSigner, sign_note

MANIFEST_HEADER = "avgate ledger archive"


@dataclass(frozen=True)
class PruneResult:
    first_index: int
    last_index: int
    covered_tree_size: int
    export_path: pathlib.Path
    manifest_path: pathlib.Path
    sha256: bytes


async def prunable_range(conn: psycopg.AsyncConnection[Any]) -> tuple[int, int, int] | None:
    """(first, last, covering head size) of what may be pruned now, or None."""
    row = await (
        await conn.execute(
            """
            with edge as (select coalesce(max(last_index) + 1, 0) as first from ledger.archives),
                 -- Both cutoffs: intervals compare with 30-day months, so '180 days' passes the
                 -- policy's check yet would undercut six calendar months.
                 keep as (select least(now() - retention, now() - interval '6 months') as cutoff
                          from ledger.policy order by policy_id desc limit 1),
                 young as (select min(leaf_index) as first_young from ledger.entries, keep
                           where integrated_at >= keep.cutoff)
            select edge.first,
                   coalesce(young.first_young, (select coalesce(max(leaf_index) + 1, 0) from ledger.entries)) - 1
            from edge, young
            """
        )
    ).fetchone()
    if row is None:
        return None
    first, last = int(row[0]), int(row[1])
    if last < first:
        return None
    head = await (
        await conn.execute("select min(tree_size) from ledger.heads where tree_size > %s", (last,))
    ).fetchone()
    if head is None or head[0] is None:
        return None
    return first, last, int(head[0])


def manifest_body(origin: str, first: int, last: int, sha256: bytes, covered_size: int, covered_root: bytes) -> bytes:
    return (
        f"{MANIFEST_HEADER}\n{origin}\nfirst {first}\nlast {last}\nsha256 {sha256.hex()}\n"
        f"covered-by {covered_size} {base64.b64encode(covered_root).decode()}\n"
    ).encode()


async def prune(
    conn: psycopg.AsyncConnection[Any], signer: NoteSigner, archive_dir: pathlib.Path
) -> PruneResult | None:
    """Exports and prunes everything prunable now; returns None when nothing is.

    `conn` must be a connection of the avgate_ledger_pruner role (not in
    autocommit): the archive row and the deletions commit together.
    """
    found = await prunable_range(conn)
    if found is None:
        await conn.rollback()
        return None
    first, last, covered = found
    archive_dir.mkdir(parents=True, exist_ok=True)  # noqa: ASYNC240 - an operator command, nothing else runs
    stem = f"ledger-{first:012d}-{last:012d}"
    export_path = archive_dir / f"{stem}.jsonl"
    digest = hashlib.sha256()
    tmp = export_path.with_suffix(".partial")
    with open(tmp, "wb") as out:  # noqa: ASYNC230 - an operator command, nothing else runs
        expected = first
        async with conn.cursor(name="avgate_prune_export") as cur:
            await cur.execute(
                "select leaf_index, payload from ledger.entries where leaf_index between %s and %s order by leaf_index",
                (first, last),
            )
            async for index, payload in cur:
                if index != expected:
                    raise RuntimeError(f"ledger entry {expected} is missing; run `avgate ledger verify`")
                line = bytes(payload) + b"\n"
                digest.update(line)
                out.write(line)
                expected += 1
        if expected != last + 1:
            raise RuntimeError(f"ledger entries {expected}..{last} are missing; run `avgate ledger verify`")
        out.flush()
        os.fsync(out.fileno())
    os.replace(tmp, export_path)
    root = await (await conn.execute("select root_hash from ledger.heads where tree_size = %s", (covered,))).fetchone()
    assert root is not None
    sha256 = digest.digest()
    manifest = sign_note(manifest_body(signer.name, first, last, sha256, covered, bytes(root[0])), [signer])
    manifest_path = archive_dir / f"{stem}.manifest"
    manifest_path.write_bytes(manifest)
    await conn.execute(
        "insert into ledger.archives (first_index, last_index, sha256, covered_tree_size) values (%s, %s, %s, %s)",
        (first, last, sha256, covered),
    )
    await conn.execute("delete from ledger.entries where leaf_index between %s and %s", (first, last))
    await conn.commit()
    return PruneResult(first, last, covered, export_path, manifest_path, sha256)
