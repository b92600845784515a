"""`avgate ledger verify`: recompute the whole ledger from its stored bytes and check it.

One incremental pass over `ledger.entries` in leaf-index order (keyset windows of
`batch_size` indexes, binary transfer) does everything:

* every leaf hash is recomputed from the stored payload bytes and compared with the
  stored level-0 node; an index with an entry but no leaf node, or a leaf node but no
  entry (a deleted entry), or neither (a gap) is a problem;
* every payload must be JSON whose "id" and "key" equal the row's entry_id and
  idempotency_key (checked by the server in bulk, re-checked here when it disagrees);
* the tree is rebuilt with a compact range from those leaves and, at every stored
  head's size, its root is compared with the root inside the signed checkpoint (and
  with the head row's root_hash); because every root comes from the same leaves in
  one pass, consecutive heads that all match are consistent with each other;
* every head's checkpoint must carry a valid signature by the log's key — a
  `trusted` key when the caller gives them (a regulator pins the published vkeys),
  else a key in `ledger.signing_keys` whose valid_from is not after the head's
  signed_at; heads ordered by signed_at must not shrink;
* `saved_heads` (signed notes a regulator kept) are opened with the same keys and
  the recomputed root at their size must equal theirs: this catches a rewritten
  tail whose heads were re-signed with the log's own key;
* entries beyond the latest validly signed head are flagged.

Pruning: entries below `max(archives.last_index) + 1` may be absent. The pass then
starts at the first present entry (at most that boundary) from the stored perfect
nodes there (`CompactRange.from_hashes`); heads at or below the start are checked
against the stored nodes, since their leaves are archived.

`first_bad_index` names the first bad entry: the lowest index with an entry-level
problem (edited, missing, swapped, inserted, unsigned), or — when only a tree root
disagrees (the attacker recomputed the leaf nodes too) — the first index of the
range between the last head that still verified and the first that does not. Head
problems that implicate no entry (a forged signature) leave it None.

Everything runs in one REPEATABLE READ READ ONLY snapshot when the connection is
idle, so a sequencer integrating meanwhile cannot cause false alarms.

Large ledgers (at least `PARALLEL_MIN_ENTRIES` indexes, connection idle): hashlib keeps
the GIL for small inputs, so the windows' fast checks (fetch, parse, hash, compare) run
in `workers` processes (`_verify_worker`), each on its own connection in this
transaction's exported snapshot; this process feeds their leaf hashes into the tree in
order and redoes a failing window exactly itself. Should the workers fail to start or
break, the pass carries on in this process from the window it was at.

This module is the pass; the problem kinds and the report live in `verify_report`, the
keys, heads, saved heads and archives in `verify_heads`, the queries in `verify_sql` and
the worker processes' parent side in `verify_workers`.
"""

from __future__ import annotations

import asyncio
import json
from collections import deque
from collections.abc import Sequence
from typing import Any

import psycopg
from psycopg import errors as pg_errors
from psycopg.pq import TransactionStatus

from avgate.ledger import _verify_worker, merkle
from avgate.ledger.checkpoint import NoteVerifier
from avgate.ledger.verify_heads import Head, SavedHead, SignedHeads
from avgate.ledger.verify_report import (
    ENTRY_WITHOUT_LEAF_NODE,
    HEAD_BEYOND_LOG,
    LEAF_HASH_MISMATCH,
    MISSING_ENTRY,
    MISSING_NODE,
    PAYLOAD_ID_MISMATCH,
    PAYLOAD_NOT_JSON,
    ROOT_MISMATCH,
    SAVED_HEAD_BEYOND_LOG,
    SAVED_HEAD_MISMATCH,
    UNSIGNED_ENTRIES,
    Problem,
    ProblemCollector,
    VerifyReport,
)
from avgate.ledger.verify_sql import (
    SQL_FAST_ENTRIES,
    SQL_FAST_ENTRIES_JSON,
    SQL_FAST_LEAVES,
    SQL_NEXT_PRESENT,
    SQL_SLOW_ENTRIES,
    SQL_SLOW_LEAVES,
    fetch_rows,
    fetch_scalar,
)
from avgate.ledger.verify_workers import WorkerError, WorkerPool, WorkerProcess, default_workers

__all__ = ["PARALLEL_MIN_ENTRIES", "verify_database"]

_ZERO = bytes(merkle.HASH_SIZE)
# Below this many indexes the pass stays in this process (starting workers costs ~0.5 s).
PARALLEL_MIN_ENTRIES = 200_000


def _json_problem(payload: bytes, entry_id: Any, key: Any) -> tuple[str, str] | None:
    """Why a payload is not the JSON of its row (kind, detail), or None if it is."""
    try:
        document = json.loads(payload)
    except ValueError as exc:
        return PAYLOAD_NOT_JSON, f"is not valid UTF-8 JSON ({exc})"
    if not isinstance(document, dict):
        return PAYLOAD_NOT_JSON, f"is JSON but not an object ({type(document).__name__})"
    if document.get("id") != str(entry_id):
        return PAYLOAD_ID_MISMATCH, f'has "id" {document.get("id")!r} but the row says entry_id {entry_id}'
    if document.get("key") != key:
        return PAYLOAD_ID_MISMATCH, f'has "key" {document.get("key")!r} but the row says idempotency_key {key!r}'
    return None


async def verify_database(
    conn: psycopg.AsyncConnection[Any],
    *,
    trusted: Sequence[NoteVerifier] | None = None,
    saved_heads: Sequence[bytes] = (),
    batch_size: int = 50_000,
    max_problems: int = 1000,
    parse_json: bool = False,
    workers: int | None = None,
) -> VerifyReport:
    """Verifies the ledger on `conn` (any role with SELECT on the ledger, e.g. avgate_reporting).

    `trusted`: the log keys to accept (the published vkeys a regulator pins); None means
    the keys in ledger.signing_keys, each from its valid_from. `saved_heads`: signed
    checkpoints kept outside the database; each must match the recomputed tree.
    At most `max_problems` problems are listed; the rest are counted. `workers`: processes
    for the fast checks of a large ledger (default min(2, CPUs), none on one CPU; 0 keeps
    everything in this process); used only when `conn` is idle, so the snapshot is ours.
    """
    if batch_size < 1:
        raise ValueError("batch_size must be positive")
    if workers is None:
        workers = default_workers()
    if conn.info.transaction_status == TransactionStatus.IDLE:
        async with conn.transaction():
            await conn.execute("set transaction isolation level repeatable read, read only")
            verification = _Verification(conn, trusted, saved_heads, batch_size, max_problems, parse_json)
            verification.workers = max(0, workers)
            return await verification.run()
    return await _Verification(conn, trusted, saved_heads, batch_size, max_problems, parse_json).run()


class _Verification:
    def __init__(
        self,
        conn: psycopg.AsyncConnection[Any],
        trusted: Sequence[NoteVerifier] | None,
        saved_heads: Sequence[bytes],
        batch_size: int,
        max_problems: int,
        parse_json: bool,
    ) -> None:
        self.conn = conn
        self.saved_notes = list(saved_heads)
        self.batch_size = batch_size
        self.out = ProblemCollector(max_problems)
        self.signed = SignedHeads(conn, trusted, self.out)
        self.entries_checked = 0
        self.parse_json = parse_json
        self._tree: merkle.CompactRange | None = None
        self._targets: dict[int, tuple[list[Head], list[SavedHead]]] = {}
        self._ahead: list[int] = []
        self._ti = 0
        self._last_head_ok = 0
        self._last_saved_ok = 0
        self.workers = 0
        self.workers_used = 0
        """Worker processes for the fast checks (set only when this transaction's snapshot is ours)."""
        self._pool = WorkerPool()

    # ------------------------------------------------------------------ driver

    async def run(self) -> VerifyReport:
        # Workers start while the keys and heads are checked.
        await self._start_pool()
        try:
            verifiers, valid_from = await self.signed.keys()
            await self.signed.load_heads(verifiers, valid_from)
            self.signed.open_saved(self.saved_notes, verifiers)
            boundary = await self.signed.archives()
            tree_size, start = await self._pass(boundary)
        except BaseException:
            await self._pool.stop(kill=True)
            raise
        await self._pool.stop()
        self.out.flush_missing()
        return VerifyReport(
            entries_checked=self.entries_checked,
            heads_checked=len(self.signed.heads),
            problems=self.out.problems,
            first_bad_index=self.out.first_bad,
            tree_size=tree_size,
            start_index=start,
            saved_heads_checked=len(self.signed.saved),
            problems_omitted=self.out.omitted,
            workers_used=self.workers_used,
        )

    # ------------------------------------------------------------------ worker processes

    async def _start_pool(self) -> None:
        """Starts the workers in this transaction's snapshot when the ledger is large enough."""
        if self.workers < 1:
            return
        span = await fetch_scalar(
            self.conn,
            "select (select max(leaf_index) from ledger.entries) - (select min(leaf_index) from ledger.entries)",
        )
        if span is None or int(span) + 1 < PARALLEL_MIN_ENTRIES:
            return
        await self._pool.start(self.conn, self.workers, parse_json=self.parse_json)
        self.workers_used = len(self._pool.workers)

    # ------------------------------------------------------------------ the pass

    async def _pass(self, boundary: int) -> tuple[int, int]:
        conn = self.conn
        out = self.out
        row = await fetch_rows(
            conn,
            "select (select min(leaf_index) from ledger.entries), (select max(leaf_index) from ledger.entries),"
            " (select min(idx) from ledger.nodes where level = 0), (select max(idx) from ledger.nodes where level = 0)",
            (),
        )
        min_entry, max_entry, min_leaf, max_leaf = row[0]
        lowest = min(v for v in (min_entry, min_leaf, 0) if v is not None)
        if lowest < 0:
            out.add(Problem(MISSING_ENTRY, f"entries or leaf nodes at negative indexes (from {lowest})", leaf_index=0))
            out.bad_index(0)
        end = max(v for v in (max_entry, max_leaf, -1) if v is not None) + 1
        # Start at the first present entry, but never above the pruning boundary.
        start = min(boundary, int(min_entry)) if min_entry is not None and min_entry >= 0 else boundary
        start = min(start, end) if end > 0 else 0

        # Every size to check: stored heads (signed roots) and saved heads.
        targets: dict[int, tuple[list[Head], list[SavedHead]]] = {}
        for head in self.signed.heads:
            targets.setdefault(head.size, ([], []))[0].append(head)
        for kept in self.signed.saved:
            targets.setdefault(kept.checkpoint.size, ([], []))[1].append(kept)

        tree = await self._resume(start, [s for s in targets if 0 < s <= start], targets)
        if tree is None:
            return start, start
        ahead = sorted(s for s in targets if s > start)
        self._ahead = ahead
        self._ti = 0
        self._targets = targets
        self._last_head_ok = start
        self._last_saved_ok = start
        self._tree = tree

        if self._pool.workers:
            await self._parallel_windows(start, end, boundary)
        else:
            await self._serial_windows(start, end, boundary)

        size = self._tree.size if self._tree is not None else end
        out.flush_missing()
        # Sizes the pass never reached: the log is shorter than a head says.
        for s in ahead[self._ti :]:
            heads, saved = targets[s]
            for head in heads:
                if head.signed:
                    out.add(
                        Problem(
                            HEAD_BEYOND_LOG,
                            f"head {s} is signed but the log has only {size} leaves: entries {size}..{s - 1} are gone",
                            leaf_index=size,
                            tree_size=s,
                        ),
                        names_entry=True,
                    )
            for sv in saved:
                out.add(
                    Problem(
                        SAVED_HEAD_BEYOND_LOG,
                        f"saved head #{sv.position + 1} has size {s} but the log has only {size} leaves",
                        leaf_index=size,
                        tree_size=s,
                    ),
                    names_entry=True,
                )
        last_entry = int(max_entry) if max_entry is not None else -1
        if last_entry >= self.signed.limit and last_entry >= start:
            first_unsigned = max(self.signed.limit, start)
            out.add(
                Problem(
                    UNSIGNED_ENTRIES,
                    f"entries {first_unsigned}..{last_entry} are beyond the latest validly signed head"
                    f" (size {self.signed.limit})",
                    leaf_index=first_unsigned,
                ),
                names_entry=True,
            )
        return size, start

    async def _next_present(self, hi: int, end: int) -> int:
        """The first index at or after `hi` holding an entry or a leaf node (`end` if none)."""
        nxt = await fetch_scalar(self.conn, SQL_NEXT_PRESENT, (hi, hi))
        return end if nxt is None else int(nxt)

    async def _serial_windows(self, lo: int, end: int, boundary: int) -> None:
        """The windows of [lo, end) in this process."""
        # Fetch window k + 1 while a worker thread hashes window k: the server's work and ours overlap
        # (hashlib and the event loop's waits let go of each other). A window that fails the fast
        # checks is redone index by index after the worker, before window k + 1 is fed.
        loop = asyncio.get_running_loop()
        batch = self.batch_size
        prefetched: tuple[int, Any] | None = None
        while lo < end:
            hi = min(lo + batch, end)
            if prefetched is not None and prefetched[0] == lo:
                data = prefetched[1]
            else:
                data = await self._fetch(lo, hi)
            prefetched = None
            entries, (leaf_count, _) = data
            if not entries and not leaf_count:
                nxt = await self._next_present(hi, end)
                self._gap(lo, nxt, boundary)
                lo = nxt
                continue
            worker = loop.run_in_executor(None, self._fast_window, lo, hi, data)
            try:
                if hi < end:
                    prefetched = (hi, await self._fetch(hi, min(hi + batch, end)))
            finally:
                done = await worker
            if not done:
                await self._slow_window(lo, hi, boundary)
            lo = hi

    async def _parallel_windows(self, lo: int, end: int, boundary: int) -> None:
        """The windows of [lo, end): fast checks in the worker processes (round robin), fed here in order."""
        pool = self._pool.workers
        batch = self.batch_size
        depth = 2 * len(pool)
        pending: deque[tuple[int, int, WorkerProcess]] = deque()
        submit_at = lo
        turn = 0
        try:
            if self._pool.ready is not None:
                await self._pool.ready
            while lo < end:
                while len(pending) < depth and submit_at < end:
                    w_hi = min(submit_at + batch, end)
                    worker = pool[turn % len(pool)]
                    turn += 1
                    worker.send(b"%d %d\n" % (submit_at, w_hi))
                    pending.append((submit_at, w_hi, worker))
                    submit_at = w_hi
                w_lo, hi, worker = pending.popleft()
                assert w_lo == lo
                status, blob = await worker.receive()
                if status == _verify_worker.EMPTY:
                    # Drop the answers for windows beyond the gap (each worker answers in order).
                    while pending:
                        await pending.popleft()[2].receive()
                    nxt = await self._next_present(hi, end)
                    self._gap(lo, nxt, boundary)
                    lo = submit_at = nxt
                    continue
                if status == _verify_worker.OK:
                    self.entries_checked += hi - lo
                    self._feed([blob[i : i + merkle.HASH_SIZE] for i in range(0, len(blob), merkle.HASH_SIZE)])
                else:
                    await self._slow_window(lo, hi, boundary)
                lo = hi
        except WorkerError:
            # The workers did not start or one broke: the rest of the pass runs here, exactly.
            await self._pool.stop(kill=True)
            await self._serial_windows(lo, end, boundary)

    async def _resume(
        self,
        start: int,
        pruned_sizes: list[int],
        targets: dict[int, tuple[list[Head], list[SavedHead]]],
    ) -> merkle.CompactRange | None:
        """The compact range at `start` from stored nodes, checking heads at or below it against them."""
        if start == 0:
            return merkle.CompactRange()
        wanted: dict[tuple[int, int], None] = dict.fromkeys(merkle.CompactRange.node_ids_for_size(start))
        for s in pruned_sizes:
            wanted.update(dict.fromkeys(merkle.range_node_ids(0, s)))
        ids = list(wanted)
        rows = await fetch_rows(
            self.conn,
            "select n.level, n.idx, n.hash from ledger.nodes n"
            " join unnest(%s::smallint[], %s::bigint[]) as want(level, idx) using (level, idx)",
            ([i[0] for i in ids], [i[1] for i in ids]),
        )
        got = {(int(lv), int(ix)): bytes(h) for lv, ix, h in rows}
        missing = [nid for nid in merkle.CompactRange.node_ids_for_size(start) if nid not in got]
        if missing:
            self.out.add(
                Problem(
                    MISSING_NODE,
                    f"stored nodes {missing} at the pruning boundary {start} are absent: the tree cannot be rebuilt",
                    leaf_index=start,
                ),
                names_entry=True,
            )
            return None
        for s in sorted(pruned_sizes):
            need = merkle.range_node_ids(0, s)
            if any(nid not in got for nid in need):
                self.out.add(Problem(MISSING_NODE, f"stored nodes for archived size {s} are absent", tree_size=s))
                continue
            root = merkle.CompactRange.from_hashes(s, [got[nid] for nid in need]).root()
            self._check_root(s, root, targets[s], pruned=True)
        return merkle.CompactRange.from_hashes(
            start, [got[nid] for nid in merkle.CompactRange.node_ids_for_size(start)]
        )

    async def _fetch(self, lo: int, hi: int) -> tuple[list[Any], tuple[int, bytes | None]]:
        """The window's (payload, names its entry_id) rows and (count, concatenation) of its leaf hashes."""
        conn = self.conn
        entries: list[Any]
        if self.parse_json:
            try:
                async with conn.transaction():
                    entries = await fetch_rows(conn, SQL_FAST_ENTRIES_JSON, (lo, hi))
            except pg_errors.DataError:
                # A payload is not UTF-8 JSON (or holds what jsonb refuses): the slow path names it.
                entries = []
        else:
            # Both queries in one round trip.
            async with conn.pipeline():
                entries_cur = conn.cursor(binary=True)
                leaves_cur = conn.cursor(binary=True)
                await entries_cur.execute(SQL_FAST_ENTRIES, (lo, hi))
                await leaves_cur.execute(SQL_FAST_LEAVES, (lo, hi))
            entries = await entries_cur.fetchall()
            leaf_row = await leaves_cur.fetchone()
            assert leaf_row is not None
            return entries, (int(leaf_row[0]), leaf_row[1])
        count, blob = (await fetch_rows(conn, SQL_FAST_LEAVES, (lo, hi)))[0]
        return entries, (int(count), blob)

    def _feed(self, leaves: list[bytes]) -> None:
        """Appends leaves to the tree, checking every target size reached on the way."""
        tree = self._tree
        if tree is None:
            return
        ahead = self._ahead
        ti = self._ti
        off = 0
        n = len(leaves)
        while ti < len(ahead) and ahead[ti] <= tree.size + (n - off):
            s = ahead[ti]
            k = s - tree.size
            tree.extend_quiet(leaves[off : off + k])
            off += k
            self._check_root(s, tree.root(), self._targets[s], pruned=False)
            ti += 1
        self._ti = ti
        tree.extend_quiet(leaves[off:] if off else leaves)

    def _check_root(self, size: int, root: bytes, found: tuple[list[Head], list[SavedHead]], *, pruned: bool) -> None:
        out = self.out
        heads, saved = found
        source = "the stored nodes (its leaves are archived)" if pruned else "the entries"
        for head in heads:
            claimed = head.checkpoint.root_hash if head.checkpoint is not None else head.root_hash
            if root == claimed:
                if head.signed and not pruned:
                    self._last_head_ok = max(self._last_head_ok, size)
                continue
            if pruned:
                index = None
            else:
                begin = self._last_head_ok
                index = out.first_entry_problem_in(begin, size)
                if index is None:
                    index = begin
                    out.bad_index(begin)
            where = f"; the first bad entry is at or after {index}" if index is not None else ""
            out.add(
                Problem(
                    ROOT_MISMATCH,
                    f"the tree of size {size} recomputed from {source} has root {root.hex()}, but head {size}"
                    f" signed {claimed.hex()}{where}",
                    leaf_index=index,
                    tree_size=size,
                )
            )
        for sv in saved:
            if root == sv.checkpoint.root_hash:
                if not pruned:
                    self._last_saved_ok = max(self._last_saved_ok, size)
                continue
            if pruned:
                index = None
            else:
                begin = self._last_saved_ok
                index = out.first_entry_problem_in(begin, size)
                if index is None:
                    index = begin
                    out.bad_index(begin)
            where = f" (entries {index}..{size - 1} were rewritten)" if index is not None else ""
            out.add(
                Problem(
                    SAVED_HEAD_MISMATCH,
                    f"saved head #{sv.position + 1} of size {size} has root {sv.checkpoint.root_hash.hex()}, but the"
                    f" tree recomputed from {source} has {root.hex()}{where}",
                    leaf_index=index,
                    tree_size=size,
                )
            )

    def _gap(self, lo: int, nxt: int, boundary: int) -> None:
        """Indexes [lo, nxt) hold neither entries nor leaf nodes."""
        out = self.out
        if lo < boundary:
            out.add(
                Problem(MISSING_NODE, f"leaf nodes {lo}..{min(nxt, boundary) - 1} of the archived range are absent"),
            )
        first = max(lo, boundary)
        if first < nxt:
            what = f"entry {first} is" if nxt - 1 == first else f"entries {first}..{nxt - 1} are"
            out.entry(MISSING_ENTRY, first, f"{what} absent, and so are their leaf nodes")
        # Keep positions aligned with placeholders, but only as far as a signed size reaches.
        tree = self._tree
        if tree is None:
            return
        fill_to = min(nxt, max(self.signed.limit, tree.size))
        if fill_to > tree.size:
            self._feed([_ZERO] * (fill_to - tree.size))
        if nxt > tree.size:
            self._tree = None  # beyond every signed size: nothing left to compare roots with

    def _fast_window(self, lo: int, hi: int, data: tuple[list[Any], tuple[int, bytes | None]]) -> bool:
        """Feeds window [lo, hi) if every index is present, every leaf matches and every payload
        names its entry_id; returns False (having changed nothing) otherwise. Runs in a worker thread."""
        entries, (leaf_count, leaf_blob) = data
        n = hi - lo
        if len(entries) != n or leaf_count != n:
            return False
        payloads, named = zip(*entries, strict=True)
        if False in named or None in named:
            return False
        computed = list(map(merkle.leaf_hash, payloads))
        if b"".join(computed) != leaf_blob:
            return False
        self.entries_checked += n
        self._feed(computed)
        return True

    async def _slow_window(self, lo: int, hi: int, boundary: int) -> None:
        """Index by index, naming every problem in [lo, hi); payloads are parsed as JSON here."""
        out = self.out
        by_index = {int(r[0]): r[1:] for r in await fetch_rows(self.conn, SQL_SLOW_ENTRIES, (lo, hi))}
        nodes = {int(i): bytes(h) for i, h in await fetch_rows(self.conn, SQL_SLOW_LEAVES, (lo, hi))}
        computed: list[bytes] = []
        add = computed.append
        leaf_hash = merkle.leaf_hash
        for i in range(lo, hi):
            found = by_index.get(i)
            stored = nodes.get(i)
            if found is None:
                if i < boundary:
                    if stored is None:
                        out.add(Problem(MISSING_NODE, f"leaf node {i} of the archived range is absent"))
                else:
                    out.missing(i, has_leaf_node=stored is not None)
                add(stored if stored is not None else _ZERO)
                continue
            payload, entry_id, key = bytes(found[0]), found[1], found[2]
            self.entries_checked += 1
            h = leaf_hash(payload)
            add(h)
            if stored is None:
                out.entry(ENTRY_WITHOUT_LEAF_NODE, i, f"entry {i} has no leaf node (level 0) in ledger.nodes")
            elif stored != h:
                out.entry(
                    LEAF_HASH_MISMATCH,
                    i,
                    f"entry {i}'s payload hashes to {h.hex()}, but its stored leaf hash is {stored.hex()}",
                )
            problem = _json_problem(payload, entry_id, key)
            if problem is not None:
                kind, detail = problem
                out.entry(kind, i, f"entry {i}'s payload {detail}")
        self._feed(computed)
