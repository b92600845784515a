"""Worker processes for `avgate.ledger.verify`: the fast checks of one window, off the main process.

hashlib keeps the GIL for small inputs, so hashing, row parsing and the tree updates of a
large ledger would share one core in one process. Each worker holds its own connection in
the verifying transaction's snapshot (`set transaction snapshot`), fetches a window of
leaf indexes, recomputes its leaf hashes and compares them with the stored level-0 nodes
and the server's id check, and hands back the window's leaf hashes as one blob. The main
process feeds them into the tree in order; a window that fails is redone there, exactly.

A worker is `python -m avgate.ledger._verify_worker` (not multiprocessing, which would
re-import the caller's main module in every child). Protocol on its stdin/stdout: one JSON
line of settings, answered by a frame; then one "lo hi" line per window, each answered by
a frame in order. A frame is a status byte, a 4-byte big-endian length and that many
bytes (leaf hashes, or an error message with ERROR). EOF on stdin ends the worker.
"""

from __future__ import annotations

import hashlib
import json
import os
import struct
import sys
from typing import Any, BinaryIO

import psycopg
from psycopg import errors as pg_errors
from psycopg import sql

OK = 0
"""Every index of the window is present and passes the fast checks; the blob holds its leaf hashes."""
FAIL = 1
"""Something in the window does not pass the fast checks: redo it exactly."""
EMPTY = 2
"""The window holds neither entries nor leaf nodes."""
ERROR = 3
"""The worker failed (the frame holds the message) and stops."""
FRAME = struct.Struct(">BI")

_conn: psycopg.Connection[Any] | None = None
_queries: tuple[str, str, bool] = ("", "", False)


def init(conninfo: str, snapshot: str, entries_sql: str, leaves_sql: str, parse_json: bool) -> None:
    """Process initializer: one connection in the exported snapshot, read only."""
    global _conn, _queries
    conn = psycopg.connect(conninfo, autocommit=True)
    conn.execute("begin isolation level repeatable read, read only")
    conn.execute(sql.SQL("set transaction snapshot {}").format(sql.Literal(snapshot)))
    _conn = conn
    _queries = (entries_sql, leaves_sql, parse_json)


def window(lo: int, hi: int) -> tuple[int, bytes]:
    """The fast checks of window [lo, hi): (OK, leaf hashes) or (FAIL | EMPTY, b"")."""
    conn = _conn
    if conn is None:
        raise RuntimeError("verify worker not initialised")
    entries_sql, leaves_sql, parse_json = _queries
    entries: list[Any]
    if parse_json:
        try:
            with conn.transaction():
                entries = conn.cursor(binary=True).execute(entries_sql, (lo, hi)).fetchall()
        except pg_errors.DataError:
            entries = []
        row = conn.cursor(binary=True).execute(leaves_sql, (lo, hi)).fetchone()
    else:
        with conn.pipeline():
            entries_cur = conn.cursor(binary=True).execute(entries_sql, (lo, hi))
            leaves_cur = conn.cursor(binary=True).execute(leaves_sql, (lo, hi))
        entries = entries_cur.fetchall()
        row = leaves_cur.fetchone()
    assert row is not None
    leaf_count, leaf_blob = int(row[0]), row[1]
    if not entries and not leaf_count:
        return EMPTY, b""
    n = hi - lo
    if len(entries) != n or leaf_count != n:
        return FAIL, b""
    payloads, named = zip(*entries, strict=True)
    if False in named or None in named:
        return FAIL, b""
    sha = hashlib.sha256
    computed = b"".join([sha(b"\x00" + p).digest() for p in payloads])
    if computed != leaf_blob:
        return FAIL, b""
    return OK, computed


def _send(out: BinaryIO, status: int, data: bytes) -> None:
    out.write(FRAME.pack(status, len(data)))
    out.write(data)
    out.flush()


def main() -> int:
    # Frames go to the real stdout only; anything printed by accident goes to stderr.
    out = os.fdopen(os.dup(1), "wb")
    os.dup2(2, 1)
    stdin = sys.stdin.buffer
    try:
        settings = json.loads(stdin.readline())
        init(
            settings["conninfo"],
            settings["snapshot"],
            settings["entries_sql"],
            settings["leaves_sql"],
            bool(settings["parse_json"]),
        )
        _send(out, OK, b"")
        for line in stdin:
            lo, hi = (int(v) for v in line.split())
            status, blob = window(lo, hi)
            _send(out, status, blob)
    except Exception as exc:  # noqa: BLE001 - reported to the main process, which carries on itself
        _send(out, ERROR, f"{type(exc).__name__}: {exc}".encode())
        return 1
    finally:
        if _conn is not None:
            _conn.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
