"""A real local authority endpoint for delivery tests: HTTP/1.1 on loopback.

It does what an authority's intake does with avgate's reports: it counts
every raw attempt that reaches it, accepts each idempotency key once (a
repeat is answered 200 again and counted as a duplicate, never stored
twice), and answers with a receipt id. `policy(event_id, nth)` picks the
status of the nth request for an event; `hold_after` keeps every request
from the (hold_after+1)th on open, unanswered, until `release()`.
"""

from __future__ import annotations

import hashlib
import json
import threading
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from tests.support.http import LocalHttpServer


@dataclass
class Request:
    idempotency_key: str
    document: dict[str, Any]
    received_at: float
    client_port: int
    status: int | None = None  # None until answered (held, or still being handled)
    answer_sha256: str = ""
    held: bool = False


@dataclass
class AuthorityServer:
    policy: Callable[[str, int], int] = lambda event_id, nth: 200
    hold_after: int | None = None
    raw: list[Request] = field(default_factory=list)
    accepted: dict[str, dict[str, Any]] = field(default_factory=dict)
    duplicates: Counter[str] = field(default_factory=Counter)
    url: str = ""
    _lock: threading.Lock = field(default_factory=threading.Lock)
    _released: threading.Event = field(default_factory=threading.Event)
    _server: ThreadingHTTPServer | None = None

    # ----------------------------------------------------------------- what it saw

    def raw_for(self, key: str) -> list[Request]:
        with self._lock:
            return [r for r in self.raw if r.idempotency_key == key]

    def raw_counts(self) -> Counter[str]:
        with self._lock:
            return Counter(r.idempotency_key for r in self.raw)

    def held(self) -> list[Request]:
        """Requests being held open, not answered (yet)."""
        with self._lock:
            return [r for r in self.raw if r.held and r.status is None]

    def unanswered(self) -> list[Request]:
        """Requests received and not answered (yet): held, or still being handled."""
        with self._lock:
            return [r for r in self.raw if r.status is None]

    def client_ports(self) -> set[int]:
        with self._lock:
            return {r.client_port for r in self.raw}

    def release(self) -> None:
        self._released.set()

    def reset(self) -> None:
        self.policy = lambda event_id, nth: 200
        self.hold_after = None
        self._released.clear()

    # ----------------------------------------------------------------- serving

    def _receive(self, key: str, document: dict[str, Any], client_port: int) -> tuple[Request, bool, int]:
        with self._lock:
            request = Request(key, document, time.monotonic(), client_port)
            nth = sum(1 for r in self.raw if r.document.get("event_id") == document.get("event_id")) + 1
            self.raw.append(request)
            request.held = self.hold_after is not None and len(self.raw) > self.hold_after
            return request, request.held, nth

    def _answer(self, request: Request, nth: int) -> tuple[int, bytes]:
        status = self.policy(request.document.get("event_id", ""), nth)
        with self._lock:
            if 200 <= status < 300:
                if request.idempotency_key in self.accepted:
                    self.duplicates[request.idempotency_key] += 1
                else:
                    self.accepted[request.idempotency_key] = request.document
                body = json.dumps({"receipt_id": f"rcpt-{request.idempotency_key[:8]}"}).encode()
            else:
                body = json.dumps({"error": f"status {status}"}).encode()
            request.status = status
            request.answer_sha256 = hashlib.sha256(body).hexdigest()
        return status, body

    def __enter__(self) -> AuthorityServer:
        state = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"  # connections are kept alive between requests
            # Headers and body go out as two writes: without this, Nagle's algorithm holds the body
            # back until the client's delayed ACK (40 ms) on a kept-alive connection.
            disable_nagle_algorithm = True

            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers["Content-Length"]))
                request, hold, nth = state._receive(
                    self.headers.get("Idempotency-Key", ""), json.loads(body), self.client_address[1]
                )
                if hold:
                    state._released.wait(timeout=120)
                status, answer = state._answer(request, nth)
                try:
                    self.send_response(status)
                    self.send_header("Content-Type", "application/json")
                    self.send_header("Content-Length", str(len(answer)))
                    self.end_headers()
                    self.wfile.write(answer)
                except OSError:
                    self.close_connection = True  # the client is gone (killed while we held its request)

            def log_message(self, *args: Any) -> None:
                pass

        self._server = LocalHttpServer(("127.0.0.1", 0), Handler)
        self._server.daemon_threads = True
        self.url = f"http://127.0.0.1:{self._server.server_port}/reports"
        threading.Thread(target=self._server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True).start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.release()
        assert self._server is not None
        self._server.shutdown()
        self._server.server_close()
