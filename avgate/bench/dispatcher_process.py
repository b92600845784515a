"""One reporting dispatcher replica in a process of its own, for `avgate bench dispatcher`.

    python -m avgate.bench.dispatcher_process

Builds the dispatcher exactly as the reporting process does
(`services.reporting.wiring.authority_dispatcher`, settings from the
REPORTING_* environment), prints "ready", starts delivering when a line
arrives on standard input, and stops at SIGTERM or when standard input
closes, finishing what it holds.
"""

from __future__ import annotations

import asyncio
import signal
import sys
import threading

from prometheus_client import CollectorRegistry

from services.reporting.config import ReportingSettings
from services.reporting.wiring import authority_dispatcher


async def main() -> None:
    settings = ReportingSettings()
    dispatcher = authority_dispatcher(settings, settings.effective_database_url or "", CollectorRegistry())
    loop = asyncio.get_running_loop()
    go, stop = asyncio.Event(), asyncio.Event()
    loop.add_signal_handler(signal.SIGTERM, stop.set)

    def follow_stdin() -> None:  # a daemon thread: a blocked read must not hold up the exit
        if sys.stdin.readline():
            loop.call_soon_threadsafe(go.set)
        while sys.stdin.readline():
            pass
        loop.call_soon_threadsafe(stop.set)

    threading.Thread(target=follow_stdin, daemon=True).start()
    print("ready", flush=True)
    await asyncio.wait(
        [asyncio.ensure_future(go.wait()), asyncio.ensure_future(stop.wait())], return_when=asyncio.FIRST_COMPLETED
    )
    if go.is_set() and not stop.is_set():
        await dispatcher.run(stop)


if __name__ == "__main__":
    asyncio.run(main())
