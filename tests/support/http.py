"""Local HTTP servers playing a third party's part (an authority, an SMS gateway, a verifier)."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from http.server import ThreadingHTTPServer
from typing import Any


class LocalHttpServer(ThreadingHTTPServer):
    """A threading HTTP server with a listen backlog that a test's concurrent clients cannot overflow.

    socketserver's default backlog is 5: dispatchers holding several kept-alive connections each
    overflow it on a loaded machine, and connects then time out unseen and are retried — a
    harness fault that tests must not mistake for the system's.
    """

    daemon_threads = True
    request_queue_size = 128


def serving(server: ThreadingHTTPServer) -> Iterator[Any]:
    """Serves `server` on a daemon thread for as long as the caller holds the yielded server
    (a fixture's `yield from serving(...)`), then shuts it down and closes its socket."""
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield server
    finally:
        server.shutdown()
        server.server_close()
