"""The ledger sequencer and a head watcher in a process of their own, for
`avgate bench ledger`: in production the sequencer runs in the reporting
process, not beside the writers, so the benchmark keeps them apart too.

    python -m avgate.bench.sequencer_process SEQUENCER_URL WATCH_URL SKEY_FILE ORIGIN OUT_JSON

Runs until SIGTERM, then writes the watcher's (time, signed size) samples to OUT_JSON.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import pathlib
import signal
import sys
import time

import psycopg

from avgate.ledger.checkpoint import NoteSigner
from services.reporting.ledger.sequencer import Sequencer


async def _watch(url: str, stop: asyncio.Event, seen: list[tuple[float, int]]) -> None:
    async with await psycopg.AsyncConnection.connect(url, autocommit=True) as conn:
        while not stop.is_set():
            row = await (await conn.execute("select coalesce(max(tree_size), 0) from ledger.heads")).fetchone()
            seen.append((time.time(), int(row[0]) if row else 0))
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), timeout=0.005)


async def main(sequencer_url: str, watch_url: str, skey_file: str, origin: str, out: str) -> None:
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    loop.add_signal_handler(signal.SIGTERM, stop.set)
    signer = NoteSigner.from_skey_file(pathlib.Path(skey_file))
    # As services.reporting.wiring.sequencer builds it: the production batch size and poll interval.
    sequencer = Sequencer(sequencer_url, signer, origin)
    seen: list[tuple[float, int]] = []
    print("ready", flush=True)
    await asyncio.gather(sequencer.run(stop), _watch(watch_url, stop, seen))
    pathlib.Path(out).write_text(json.dumps(seen))


if __name__ == "__main__":
    asyncio.run(main(*sys.argv[1:6]))
