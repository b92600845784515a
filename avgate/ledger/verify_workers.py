"""The parent's side of the verify worker processes (`python -m avgate.ledger._verify_worker`):
start them in the verifying transaction's exported snapshot, hand them windows, read their frames."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import pathlib
import sys
from typing import Any

import psycopg
from psycopg.conninfo import make_conninfo

from avgate.ledger import _verify_worker
from avgate.ledger.verify_sql import SQL_FAST_ENTRIES, SQL_FAST_ENTRIES_JSON, SQL_FAST_LEAVES, fetch_scalar


def default_workers() -> int:
    """Worker processes when the caller names none: min(2, CPUs), none on one CPU."""
    cpus = os.cpu_count() or 1
    return min(2, cpus) if cpus > 1 else 0


PACKAGE_ROOT = str(pathlib.Path(__file__).resolve().parents[2])
"""The directory holding the avgate package (the workers' PYTHONPATH)."""


class WorkerError(Exception):
    """A worker process failed to start, reported an error or died."""


class WorkerProcess:
    """One `python -m avgate.ledger._verify_worker` child and its pipes."""

    def __init__(self, proc: asyncio.subprocess.Process) -> None:
        self.proc = proc

    @classmethod
    async def start(cls) -> WorkerProcess:
        env = dict(os.environ)
        # The child imports avgate from wherever this process did.
        env["PYTHONPATH"] = os.pathsep.join(p for p in (PACKAGE_ROOT, env.get("PYTHONPATH")) if p)
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
            raise WorkerError("verify worker's stdin is closed")
        stdin.write(data)

    async def receive(self) -> tuple[int, bytes]:
        stdout = self.proc.stdout
        assert stdout is not None
        try:
            header = await stdout.readexactly(_verify_worker.FRAME.size)
            status, length = _verify_worker.FRAME.unpack(header)
            data = await stdout.readexactly(length) if length else b""
        except (asyncio.IncompleteReadError, OSError) as exc:
            raise WorkerError(f"verify worker died: {exc}") from exc
        if status == _verify_worker.ERROR:
            raise WorkerError(data.decode(errors="replace"))
        return status, data

    async def expect_ready(self) -> None:
        status, _ = await self.receive()
        if status != _verify_worker.OK:
            raise WorkerError(f"verify worker answered {status} at start")

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


class WorkerPool:
    """The worker processes of one verification; empty when they could not start."""

    def __init__(self) -> None:
        self.workers: list[WorkerProcess] = []
        self.ready: asyncio.Future[Any] | None = None

    async def start(self, conn: psycopg.AsyncConnection[Any], count: int, *, parse_json: bool) -> None:
        """Starts `count` workers in the snapshot of `conn`'s (top-level) transaction."""
        # Not in a savepoint: PostgreSQL exports snapshots only from a top-level transaction.
        snapshot = await fetch_scalar(conn, "select pg_export_snapshot()")
        info = conn.info
        settings = {
            "conninfo": make_conninfo(info.dsn, password=info.password) if info.password else info.dsn,
            "snapshot": snapshot,
            "entries_sql": SQL_FAST_ENTRIES_JSON if parse_json else SQL_FAST_ENTRIES,
            "leaves_sql": SQL_FAST_LEAVES,
            "parse_json": parse_json,
        }
        line = json.dumps(settings).encode() + b"\n"
        for _ in range(count):
            try:
                worker = await WorkerProcess.start()
            except OSError:
                break
            worker.send(line)
            self.workers.append(worker)
        if self.workers:
            # Each answers once connected in the snapshot; meanwhile the keys and heads are checked.
            self.ready = asyncio.gather(*(w.expect_ready() for w in self.workers))

    async def stop(self, *, kill: bool = False) -> None:
        """Ends every worker (see `WorkerProcess.stop`); the pool is empty afterwards."""
        pool, ready = self.workers, self.ready
        self.workers, self.ready = [], None
        if ready is not None:
            if not ready.done():
                ready.cancel()
            with contextlib.suppress(BaseException):
                await ready
        for worker in pool:
            await worker.stop(kill=kill)
