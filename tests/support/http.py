"""Local HTTP servers playing a third party's part (an authority, an SMS gateway, a verifier)."""

from __future__ import annotations

from http.server import ThreadingHTTPServer


class LocalHttpServer(ThreadingHTTPServer):
    """A threading HTTP server with a listen backlog that a test's concurrent clients cannot overflow.

    socketserver's default backlog is 5: dispatchers holding several kept-alive connections each
    overflow it on a loaded machine, and connects then time out unseen and are retried — a
    harness fault that tests must not mistake for the system's.
    """

    daemon_threads = True
    request_queue_size = 128
