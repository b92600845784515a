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

Large ledgers (at least `_PARALLEL_MIN_ENTRIES` indexes, connection idle): hashlib keeps
the GIL for small inputs, so the windows' fast checks (fetch, parse, hash, compare) run
in `workers` processes (`_verify_worker`), each on its own connection in this
transaction's exported snapshot; this process feeds their leaf hashes into the tree in
order and redoes a failing window exactly itself. Should the workers fail to start or
break, the pass carries on in this process from the window it was at.
"""

from __future__ import annotations

import asyncio
import bisect
import contextlib
import json
import os
import pathlib
import sys
from collections import deque
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

import psycopg
from psycopg import errors as pg_errors
from psycopg.conninfo import make_conninfo
from psycopg.pq import TransactionStatus

from avgate.ledger import _verify_worker, merkle
from avgate.ledger.checkpoint import (
    Checkpoint,
    InvalidSignatureError,
    NoteError,
    NoteVerifier,
    UnverifiedNoteError,
    open_note,
    parse_unverified,
)

__all__ = [
    "ARCHIVE_UNCOVERED",
    "BAD_SIGNATURE",
    "ENTRY_WITHOUT_LEAF_NODE",
    "HEAD_BEYOND_LOG",
    "HEAD_ORDER",
    "HEAD_ROW_MISMATCH",
    "KEY_NOT_YET_VALID",
    "LEAF_HASH_MISMATCH",
    "MISSING_ENTRY",
    "MISSING_NODE",
    "ORIGIN_MISMATCH",
    "PAYLOAD_ID_MISMATCH",
    "PAYLOAD_NOT_JSON",
    "ROOT_MISMATCH",
    "SAVED_HEAD_BEYOND_LOG",
    "SAVED_HEAD_INVALID",
    "SAVED_HEAD_MISMATCH",
    "SIGNING_KEY_INVALID",
    "UNKNOWN_KEY",
    "UNSIGNED_ENTRIES",
    "Problem",
    "VerifyReport",
    "verify_database",
]

# Entry-level problems (they name a leaf index).
LEAF_HASH_MISMATCH = "leaf_hash_mismatch"
"""The stored payload does not hash to the stored level-0 node."""
MISSING_ENTRY = "missing_entry"
"""An index below the log's size has no entry (deleted), with or without its leaf node."""
ENTRY_WITHOUT_LEAF_NODE = "entry_without_leaf_node"
"""An entry has no level-0 node."""
PAYLOAD_NOT_JSON = "payload_not_json"
"""The payload is not a JSON object."""
PAYLOAD_ID_MISMATCH = "payload_id_mismatch"
"""The payload's "id" or "key" differs from the row's entry_id or idempotency_key."""
UNSIGNED_ENTRIES = "unsigned_entries"
"""Entries beyond the latest validly signed head."""
# Tree problems.
ROOT_MISMATCH = "root_mismatch"
"""The tree recomputed from the entries does not have the root a stored head signed."""
SAVED_HEAD_MISMATCH = "saved_head_mismatch"
"""The tree recomputed from the entries does not have the root of a saved head."""
HEAD_BEYOND_LOG = "head_beyond_log"
"""A stored head is larger than the log: entries at the tail are gone."""
SAVED_HEAD_BEYOND_LOG = "saved_head_beyond_log"
"""A saved head is larger than the log: the log shrank since it was saved."""
MISSING_NODE = "missing_node"
"""A stored perfect node the verification needs (at the pruning boundary) is absent."""
# Head and key problems.
BAD_SIGNATURE = "bad_signature"
"""A head's checkpoint is malformed or a known key's signature on it does not verify."""
UNKNOWN_KEY = "unknown_key"
"""A head is not signed by any trusted (or published) key of the log."""
KEY_NOT_YET_VALID = "key_not_yet_valid"
"""A head was signed before its key's valid_from."""
SIGNING_KEY_INVALID = "signing_key_invalid"
"""A row of ledger.signing_keys is not a valid vkey."""
HEAD_ROW_MISMATCH = "head_row_mismatch"
"""A head row's tree_size, root_hash or key_name differs from its signed checkpoint."""
HEAD_ORDER = "head_order"
"""Ordered by signed_at, a later head is smaller than an earlier one."""
ORIGIN_MISMATCH = "origin_mismatch"
"""A checkpoint names another log."""
SAVED_HEAD_INVALID = "saved_head_invalid"
"""A saved head does not open with the trusted (or published) keys."""
ARCHIVE_UNCOVERED = "archive_uncovered"
"""An archive's range is not covered by a validly signed head, or archives are not contiguous."""

_ZERO = bytes(merkle.HASH_SIZE)
# The fast pass, one window of leaf indexes [lo, hi) at a time: every payload in order with a
# cheap check that it names its row's entry_id, and all leaf hashes of the window as one value.
# PRIMARY KEYs make `count == hi - lo` mean "every index is present".
_SQL_FAST_ENTRIES = (
    "select payload, position(convert_to('\"id\":\"' || entry_id::text || '\"', 'UTF8') in payload) > 0"
    " from ledger.entries where leaf_index >= %s and leaf_index < %s order by leaf_index"
)
# With parse_json: the server parses every payload and compares "id" and "key" exactly (slower).
_SQL_FAST_ENTRIES_JSON = (
    "select payload,"
    " convert_from(payload, 'UTF8')::jsonb @> jsonb_build_object('id', entry_id::text, 'key', idempotency_key)"
    " from ledger.entries where leaf_index >= %s and leaf_index < %s order by leaf_index"
)
# (The subquery's order feeds the aggregate; were it ever not kept, the window would only
# fall back to the exact path.)
_SQL_FAST_LEAVES = (
    "select count(*), string_agg(hash, ''::bytea) from"
    " (select hash from ledger.nodes where level = 0 and idx >= %s and idx < %s order by idx) as window_leaves"
)
# A window that fails the fast checks is re-read index by index and checked exactly here.
_SQL_SLOW_ENTRIES = (
    "select leaf_index, payload, entry_id, idempotency_key from ledger.entries"
    " where leaf_index >= %s and leaf_index < %s order by leaf_index"
)
_SQL_SLOW_LEAVES = "select idx, hash from ledger.nodes where level = 0 and idx >= %s and idx < %s order by idx"
_SQL_NEXT_PRESENT = (
    "select least((select min(leaf_index) from ledger.entries where leaf_index >= %s),"
    " (select min(idx) from ledger.nodes where level = 0 and idx >= %s))"
)
# Below this many indexes the pass stays in this process (starting workers costs ~0.5 s).
_PARALLEL_MIN_ENTRIES = 200_000


def _default_workers() -> int:
    cpus = os.cpu_count() or 1
    return min(2, cpus) if cpus > 1 else 0


@dataclass(frozen=True)
class Problem:
    """One thing that does not verify. `leaf_index` names an entry, `tree_size` a head."""

    kind: str
    message: str
    leaf_index: int | None = None
    tree_size: int | None = None

    def __str__(self) -> str:
        return f"[{self.kind}] {self.message}"

    def to_json(self) -> dict[str, Any]:
        return {"kind": self.kind, "message": self.message, "leaf_index": self.leaf_index, "tree_size": self.tree_size}


@dataclass
class VerifyReport:
    """The outcome of `verify_database`: ok when `problems` is empty."""

    entries_checked: int
    heads_checked: int
    problems: list[Problem]
    first_bad_index: int | None
    tree_size: int = 0
    """The size of the recomputed tree (including archived leaves below the pruning start)."""
    start_index: int = 0
    """The first leaf index recomputed from an entry (above 0 when the log is pruned)."""
    saved_heads_checked: int = 0
    problems_omitted: int = 0
    """Problems found beyond `max_problems` and not listed (`ok` is False all the same)."""
    workers_used: int = 0
    """Worker processes that hashed windows (0: all in this process)."""

    @property
    def ok(self) -> bool:
        return not self.problems and not self.problems_omitted

    def to_json(self) -> dict[str, Any]:
        return {
            "ok": self.ok,
            "entries_checked": self.entries_checked,
            "heads_checked": self.heads_checked,
            "saved_heads_checked": self.saved_heads_checked,
            "tree_size": self.tree_size,
            "start_index": self.start_index,
            "first_bad_index": self.first_bad_index,
            "problems": [p.to_json() for p in self.problems],
            "problems_omitted": self.problems_omitted,
        }


@dataclass
class _Head:
    size: int
    root_hash: bytes
    note: bytes
    key_name: str
    signed_at: datetime
    checkpoint: Checkpoint | None = None
    """Parsed from the note's body (signature checked separately)."""
    signed: bool = False
    """Opened with a trusted/published key named like the origin, valid at signed_at."""


@dataclass
class _Saved:
    position: int
    checkpoint: Checkpoint


@dataclass
class _Collector:
    max_problems: int
    problems: list[Problem] = field(default_factory=list)
    omitted: int = 0
    first_bad: int | None = None
    entry_problem_indexes: list[int] = field(default_factory=list)
    """Indexes with an entry-level problem, ascending (the pass reports them in order)."""
    _open_run: tuple[int, int, bool] | None = None
    """A run of missing entries (first, last, leaf nodes present) not yet reported."""

    def add(self, problem: Problem, *, names_entry: bool = False) -> None:
        if problem.leaf_index is not None and names_entry:
            self._bad(problem.leaf_index)
        if len(self.problems) < self.max_problems:
            self.problems.append(problem)
        else:
            self.omitted += 1

    def bad_index(self, index: int) -> None:
        """Counts `index` towards first_bad_index without an entry-level problem."""
        self._bad(index)

    def _bad(self, index: int) -> None:
        if self.first_bad is None or index < self.first_bad:
            self.first_bad = index

    def entry(self, kind: str, index: int, message: str) -> None:
        self.flush_missing()
        self._entry_index(index)
        self.add(Problem(kind, message, leaf_index=index), names_entry=True)

    def _entry_index(self, index: int) -> None:
        idx = self.entry_problem_indexes
        if not idx or idx[-1] < index:
            idx.append(index)
        elif idx[-1] != index:
            bisect.insort(idx, index)

    def missing(self, index: int, has_leaf_node: bool) -> None:
        """A missing entry; consecutive ones of the same sort are reported as one range."""
        self._entry_index(index)
        run = self._open_run
        if run is not None and run[1] == index - 1 and run[2] == has_leaf_node:
            self._open_run = (run[0], index, has_leaf_node)
            return
        self.flush_missing()
        self._open_run = (index, index, has_leaf_node)

    def flush_missing(self) -> None:
        run = self._open_run
        if run is None:
            return
        self._open_run = None
        first, last, has_leaf_node = run
        what = f"entry {first} is" if first == last else f"entries {first}..{last} are"
        why = "deleted: the leaf hash remains in ledger.nodes" if has_leaf_node else "absent, and so is the leaf node"
        self.add(Problem(MISSING_ENTRY, f"{what} {why}", leaf_index=first), names_entry=True)

    def first_entry_problem_in(self, begin: int, end: int) -> int | None:
        idx = self.entry_problem_indexes
        i = bisect.bisect_left(idx, begin)
        return idx[i] if i < len(idx) and idx[i] < end else None


_PACKAGE_ROOT = str(pathlib.Path(__file__).resolve().parents[2])
"""The directory holding the avgate package (the workers' PYTHONPATH)."""


class _WorkerError(Exception):
    """A worker process failed to start, reported an error or died."""


class _WorkerProcess:
    """One `python -m avgate.ledger._verify_worker` child and its pipes."""

    def __init__(self, proc: asyncio.subprocess.Process) -> None:
        self.proc = proc

    @classmethod
    async def start(cls) -> _WorkerProcess:
        env = dict(os.environ)
        # The child imports avgate from wherever this process did.
        env["PYTHONPATH"] = os.pathsep.join(p for p in (_PACKAGE_ROOT, env.get("PYTHONPATH")) if p)
        proc = await asyncio.create_subprocess_exec(
            sys.executable,
            "-m",
            "avgate.ledger._verify_worker",
            stdin=asyncio.subprocess.PIPE,
            stdout=asyncio.subprocess.PIPE,
            env=env,
        )
        return cls(proc)

    def send(self, data: bytes) -> None:
        stdin = self.proc.stdin
        if stdin is None or stdin.is_closing():
            raise _WorkerError("verify worker's stdin is closed")
        stdin.write(data)

    async def receive(self) -> tuple[int, bytes]:
        stdout = self.proc.stdout
        assert stdout is not None
        try:
            header = await stdout.readexactly(_verify_worker.FRAME.size)
            status, length = _verify_worker.FRAME.unpack(header)
            data = await stdout.readexactly(length) if length else b""
        except (asyncio.IncompleteReadError, OSError) as exc:
            raise _WorkerError(f"verify worker died: {exc}") from exc
        if status == _verify_worker.ERROR:
            raise _WorkerError(data.decode(errors="replace"))
        return status, data

    async def expect_ready(self) -> None:
        status, _ = await self.receive()
        if status != _verify_worker.OK:
            raise _WorkerError(f"verify worker answered {status} at start")

    async def stop(self, *, kill: bool = False) -> None:
        """Ends the worker: EOF on its stdin (it has answered everything), or kill (it may be mid-window)."""
        proc = self.proc
        if proc.returncode is not None:
            return
        if kill:
            proc.kill()
            await proc.wait()
            return
        if proc.stdin is not None:
            proc.stdin.close()
        try:
            await asyncio.wait_for(proc.wait(), 5)
        except TimeoutError:
            proc.kill()
            await proc.wait()


def _parse_unverified(note: bytes) -> Checkpoint | None:
    try:
        return parse_unverified(note)
    except NoteError:
        return None


def _open(note: bytes, verifiers: Sequence[NoteVerifier]) -> tuple[Checkpoint, list[tuple[str, int]]]:
    """Opens a checkpoint; returns it and the (name, key hash) of the log's verified signatures."""
    body, signatures = open_note(note, verifiers)
    checkpoint = Checkpoint.parse(body)
    log_keys = [(s.name, s.key_hash) for s in signatures if s.verified and s.name == checkpoint.origin]
    if not log_keys:
        raise UnverifiedNoteError(
            f"no verified signature by a key named like the origin {checkpoint.origin!r}", signatures
        )
    return checkpoint, log_keys


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


async def _rows(conn: psycopg.AsyncConnection[Any], query: str, params: tuple[Any, ...]) -> list[Any]:
    cur = conn.cursor(binary=True)
    await cur.execute(query, params)
    return await cur.fetchall()


async def _scalar(conn: psycopg.AsyncConnection[Any], query: str, params: tuple[Any, ...] = ()) -> Any:
    rows = await _rows(conn, query, params)
    return rows[0][0] if rows else None


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
        workers = _default_workers()
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
        self.trusted = list(trusted) if trusted is not None else None
        self.saved_notes = list(saved_heads)
        self.batch_size = batch_size
        self.out = _Collector(max_problems)
        self.entries_checked = 0
        self.heads: list[_Head] = []
        self.saved: list[_Saved] = []
        self.origin: str | None = None
        self.signed_limit = 0
        """The largest size vouched for by a valid signature (stored or saved head)."""
        self.parse_json = parse_json
        self._tree: merkle.CompactRange | None = None
        self._targets: dict[int, tuple[list[_Head], list[_Saved]]] = {}
        self._ahead: list[int] = []
        self._ti = 0
        self._last_head_ok = 0
        self._last_saved_ok = 0
        self.workers = 0
        self.workers_used = 0
        """Worker processes for the fast checks (set only when this transaction's snapshot is ours)."""
        self._pool: list[_WorkerProcess] = []
        self._pool_ready: asyncio.Future[Any] | None = None

    # ------------------------------------------------------------------ driver

    async def run(self) -> VerifyReport:
        # Workers start while the keys and heads are checked.
        await self._start_pool()
        try:
            verifiers, valid_from = await self._keys()
            await self._load_heads(verifiers, valid_from)
            self._open_saved(verifiers)
            boundary = await self._archives()
            tree_size, start = await self._pass(boundary)
        except BaseException:
            await self._stop_pool(kill=True)
            raise
        await self._stop_pool()
        self.out.flush_missing()
        return VerifyReport(
            entries_checked=self.entries_checked,
            heads_checked=len(self.heads),
            problems=self.out.problems,
            first_bad_index=self.out.first_bad,
            tree_size=tree_size,
            start_index=start,
            saved_heads_checked=len(self.saved),
            problems_omitted=self.out.omitted,
            workers_used=self.workers_used,
        )

    # ------------------------------------------------------------------ worker processes

    async def _start_pool(self) -> None:
        """Starts the workers in this transaction's snapshot when the ledger is large enough."""
        if self.workers < 1:
            return
        span = await _scalar(
            self.conn,
            "select (select max(leaf_index) from ledger.entries) - (select min(leaf_index) from ledger.entries)",
        )
        if span is None or int(span) + 1 < _PARALLEL_MIN_ENTRIES:
            return
        # Not in a savepoint: PostgreSQL exports snapshots only from a top-level transaction.
        snapshot = await _scalar(self.conn, "select pg_export_snapshot()")
        info = self.conn.info
        settings = {
            "conninfo": make_conninfo(info.dsn, password=info.password) if info.password else info.dsn,
            "snapshot": snapshot,
            "entries_sql": _SQL_FAST_ENTRIES_JSON if self.parse_json else _SQL_FAST_ENTRIES,
            "leaves_sql": _SQL_FAST_LEAVES,
            "parse_json": self.parse_json,
        }
        line = json.dumps(settings).encode() + b"\n"
        for _ in range(self.workers):
            try:
                worker = await _WorkerProcess.start()
            except OSError:
                break
            worker.send(line)
            self._pool.append(worker)
        self.workers_used = len(self._pool)
        if self._pool:
            # Each answers once connected in the snapshot; meanwhile the keys and heads are checked.
            self._pool_ready = asyncio.gather(*(w.expect_ready() for w in self._pool))

    async def _stop_pool(self, *, kill: bool = False) -> None:
        pool, ready = self._pool, self._pool_ready
        self._pool, self._pool_ready = [], None
        if ready is not None:
            if not ready.done():
                ready.cancel()
            with contextlib.suppress(BaseException):
                await ready
        for worker in pool:
            await worker.stop(kill=kill)

    # ------------------------------------------------------------------ keys and heads

    async def _keys(self) -> tuple[list[NoteVerifier], dict[tuple[str, int], datetime]]:
        rows = await _rows(self.conn, "select key_id, vkey, valid_from from ledger.signing_keys order by key_id", ())
        published: list[NoteVerifier] = []
        valid_from: dict[tuple[str, int], datetime] = {}
        for key_id, vkey, since in rows:
            try:
                verifier = NoteVerifier.from_vkey(vkey)
            except (NoteError, TypeError) as exc:
                self.out.add(Problem(SIGNING_KEY_INVALID, f"ledger.signing_keys key_id {key_id}: {exc}"))
                continue
            published.append(verifier)
            ident = (verifier.name, verifier.key_hash)
            if ident not in valid_from or since < valid_from[ident]:
                valid_from[ident] = since
        return (self.trusted if self.trusted is not None else published), valid_from

    async def _load_heads(self, verifiers: list[NoteVerifier], valid_from: dict[tuple[str, int], datetime]) -> None:
        rows = await _rows(
            self.conn,
            "select tree_size, root_hash, checkpoint, key_name, signed_at from ledger.heads order by tree_size",
            (),
        )
        out = self.out
        for size, root_hash, note, key_name, signed_at in rows:
            head = _Head(int(size), bytes(root_hash), bytes(note), key_name, signed_at)
            self.heads.append(head)
            try:
                checkpoint, log_keys = _open(head.note, verifiers)
            except InvalidSignatureError as exc:
                head.checkpoint = _parse_unverified(head.note)
                out.add(Problem(BAD_SIGNATURE, f"head {head.size}: {exc}", tree_size=head.size))
            except UnverifiedNoteError as exc:
                head.checkpoint = _parse_unverified(head.note)
                whose = "trusted" if self.trusted is not None else "published"
                out.add(
                    Problem(
                        UNKNOWN_KEY, f"head {head.size} is not signed by a {whose} log key: {exc}", tree_size=head.size
                    )
                )
            except NoteError as exc:
                head.checkpoint = _parse_unverified(head.note)
                out.add(Problem(BAD_SIGNATURE, f"head {head.size}: malformed checkpoint: {exc}", tree_size=head.size))
            else:
                head.checkpoint = checkpoint
                known = [valid_from[k] for k in log_keys if k in valid_from]
                if known and not any(since <= head.signed_at for since in known):
                    out.add(
                        Problem(
                            KEY_NOT_YET_VALID,
                            f"head {head.size} was signed at {head.signed_at.isoformat()}, before its key became"
                            f" valid ({min(known).isoformat()})",
                            tree_size=head.size,
                        )
                    )
                else:
                    head.signed = True
            self._check_head_row(head)
        # Sizes must grow with signing time.
        largest: _Head | None = None
        for head in sorted(self.heads, key=lambda h: (h.signed_at, h.size)):
            if largest is not None and head.size < largest.size:
                out.add(
                    Problem(
                        HEAD_ORDER,
                        f"head {head.size} signed at {head.signed_at.isoformat()} is smaller than head {largest.size}"
                        f" signed earlier ({largest.signed_at.isoformat()})",
                        tree_size=head.size,
                    )
                )
            elif largest is None or head.size > largest.size:
                largest = head
        self.signed_limit = max((h.size for h in self.heads if h.signed), default=0)

    def _check_head_row(self, head: _Head) -> None:
        cp = head.checkpoint
        if cp is None:
            return
        if self.origin is None and head.signed:
            self.origin = cp.origin
        if self.origin is not None and cp.origin != self.origin:
            self.out.add(
                Problem(
                    ORIGIN_MISMATCH,
                    f"head {head.size} is for origin {cp.origin!r}, not {self.origin!r}",
                    tree_size=head.size,
                )
            )
        mismatched = [
            what
            for what, differs in (
                ("tree_size", cp.size != head.size),
                ("root_hash", cp.root_hash != head.root_hash),
                ("key_name", cp.origin != head.key_name),
            )
            if differs
        ]
        if mismatched:
            self.out.add(
                Problem(
                    HEAD_ROW_MISMATCH,
                    f"head row {head.size}: {', '.join(mismatched)} differ(s) from its signed checkpoint"
                    f" (size {cp.size}, root {cp.root_hash.hex()}, origin {cp.origin!r})",
                    tree_size=head.size,
                )
            )

    def _open_saved(self, verifiers: list[NoteVerifier]) -> None:
        for position, note in enumerate(self.saved_notes):
            try:
                checkpoint, _ = _open(bytes(note), verifiers)
            except NoteError as exc:
                self.out.add(Problem(SAVED_HEAD_INVALID, f"saved head #{position + 1} does not open: {exc}"))
                continue
            if self.origin is not None and checkpoint.origin != self.origin:
                self.out.add(
                    Problem(
                        ORIGIN_MISMATCH,
                        f"saved head #{position + 1} is for origin {checkpoint.origin!r}, not {self.origin!r}",
                        tree_size=checkpoint.size,
                    )
                )
                continue
            self.saved.append(_Saved(position, checkpoint))
            self.signed_limit = max(self.signed_limit, checkpoint.size)

    async def _archives(self) -> int:
        """Checks the archive rows; returns the pruning boundary (first unarchived index)."""
        rows = await _rows(
            self.conn, "select first_index, last_index, covered_tree_size from ledger.archives order by first_index", ()
        )
        signed_sizes = {h.size for h in self.heads if h.signed}
        expected = 0
        for first, last, covered in rows:
            if first != expected or last < first:
                self.out.add(
                    Problem(
                        ARCHIVE_UNCOVERED, f"archive [{first}, {last}] does not continue the left edge at {expected}"
                    )
                )
            if covered not in signed_sizes or covered <= last:
                self.out.add(
                    Problem(
                        ARCHIVE_UNCOVERED,
                        f"archive [{first}, {last}] claims head {covered}, not a validly signed head that covers it",
                        tree_size=covered,
                    )
                )
            expected = max(expected, last + 1)
        return expected

    # ------------------------------------------------------------------ the pass

    async def _pass(self, boundary: int) -> tuple[int, int]:
        conn = self.conn
        out = self.out
        row = await _rows(
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
        targets: dict[int, tuple[list[_Head], list[_Saved]]] = {}
        for head in self.heads:
            targets.setdefault(head.size, ([], []))[0].append(head)
        for kept in self.saved:
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

        if self._pool:
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
        if last_entry >= self.signed_limit and last_entry >= start:
            first_unsigned = max(self.signed_limit, start)
            out.add(
                Problem(
                    UNSIGNED_ENTRIES,
                    f"entries {first_unsigned}..{last_entry} are beyond the latest validly signed head"
                    f" (size {self.signed_limit})",
                    leaf_index=first_unsigned,
                ),
                names_entry=True,
            )
        return size, start

    async def _next_present(self, hi: int, end: int) -> int:
        """The first index at or after `hi` holding an entry or a leaf node (`end` if none)."""
        nxt = await _scalar(self.conn, _SQL_NEXT_PRESENT, (hi, hi))
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
        pool = self._pool
        batch = self.batch_size
        depth = 2 * len(pool)
        pending: deque[tuple[int, int, _WorkerProcess]] = deque()
        submit_at = lo
        turn = 0
        try:
            if self._pool_ready is not None:
                await self._pool_ready
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
        except _WorkerError:
            # The workers did not start or one broke: the rest of the pass runs here, exactly.
            await self._stop_pool(kill=True)
            await self._serial_windows(lo, end, boundary)

    async def _resume(
        self,
        start: int,
        pruned_sizes: list[int],
        targets: dict[int, tuple[list[_Head], list[_Saved]]],
    ) -> merkle.CompactRange | None:
        """The compact range at `start` from stored nodes, checking heads at or below it against them."""
        if start == 0:
            return merkle.CompactRange()
        wanted: dict[tuple[int, int], None] = dict.fromkeys(merkle.CompactRange.node_ids_for_size(start))
        for s in pruned_sizes:
            wanted.update(dict.fromkeys(merkle.range_node_ids(0, s)))
        ids = list(wanted)
        rows = await _rows(
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
                    entries = await _rows(conn, _SQL_FAST_ENTRIES_JSON, (lo, hi))
            except pg_errors.DataError:
                # A payload is not UTF-8 JSON (or holds what jsonb refuses): the slow path names it.
                entries = []
        else:
            # Both queries in one round trip.
            async with conn.pipeline():
                entries_cur = conn.cursor(binary=True)
                leaves_cur = conn.cursor(binary=True)
                await entries_cur.execute(_SQL_FAST_ENTRIES, (lo, hi))
                await leaves_cur.execute(_SQL_FAST_LEAVES, (lo, hi))
            entries = await entries_cur.fetchall()
            leaf_row = await leaves_cur.fetchone()
            assert leaf_row is not None
            return entries, (int(leaf_row[0]), leaf_row[1])
        count, blob = (await _rows(conn, _SQL_FAST_LEAVES, (lo, hi)))[0]
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

    def _check_root(self, size: int, root: bytes, found: tuple[list[_Head], list[_Saved]], *, pruned: bool) -> None:
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
        fill_to = min(nxt, max(self.signed_limit, tree.size))
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
        by_index = {int(r[0]): r[1:] for r in await _rows(self.conn, _SQL_SLOW_ENTRIES, (lo, hi))}
        nodes = {int(i): bytes(h) for i, h in await _rows(self.conn, _SQL_SLOW_LEAVES, (lo, hi))}
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
