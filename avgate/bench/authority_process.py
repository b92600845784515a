"""A local authority endpoint in a process of its own, for `avgate bench dispatcher`.

    python -m avgate.bench.authority_process FAILURE_RATE SEED

Serves HTTP/1.1 (keep-alive) on a free loopback port and prints the port.
Each POST is answered 503 with probability FAILURE_RATE (a retryable
failure), else 200 with a receipt; an idempotency key seen before is
answered 200 and counted as a duplicate. GET /stats answers the counts
(raw requests, accepted keys, duplicates, 503s, connections that carried reports). It stops by
itself: on SIGTERM, when its standard input closes (the benchmark is gone),
or after ten idle minutes.
"""

from __future__ import annotations

import json
import random
import signal
import sys
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

IDLE_LIMIT_SECONDS = 600


class Intake:
    def __init__(self, failure_rate: float, seed: int):
        self.failure_rate = failure_rate
        self.rng = random.Random(seed)  # noqa: S311 - injected failures need spread, not secrecy
        self.lock = threading.Lock()
        self.accepted: set[str] = set()
        self.raw = 0
        self.failed = 0
        self.duplicates = 0
        self.connections = 0
        self.last_seen = time.monotonic()

    def connected(self) -> None:
        with self.lock:
            self.connections += 1

    def answer(self, key: str) -> tuple[int, bytes]:
        with self.lock:
            self.last_seen = time.monotonic()
            self.raw += 1
            if self.rng.random() < self.failure_rate:
                self.failed += 1
                return 503, b'{"error":"injected failure"}'
            if key in self.accepted:
                self.duplicates += 1
            else:
                self.accepted.add(key)
            return 200, json.dumps({"receipt_id": key[:8]}).encode()

    def stats(self) -> dict[str, int]:
        with self.lock:
            return {
                "raw": self.raw,
                "accepted": len(self.accepted),
                "duplicates": self.duplicates,
                "failed": self.failed,
                "connections": self.connections,
            }


def serve(failure_rate: float, seed: int) -> None:
    intake = Intake(failure_rate, seed)

    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"
        # Headers and body go out as two writes: without this, Nagle's algorithm holds the body
        # back until the client's delayed ACK (40 ms) on a kept-alive connection.
        disable_nagle_algorithm = True

        counted = False  # per connection: the handler lives as long as its connection

        def do_POST(self) -> None:
            if not self.counted:
                self.counted = True
                intake.connected()
            self.rfile.read(int(self.headers["Content-Length"]))
            status, body = intake.answer(self.headers.get("Idempotency-Key", ""))
            self._send(status, body)

        def do_GET(self) -> None:
            self._send(200, json.dumps(intake.stats()).encode())

        def _send(self, status: int, body: bytes) -> None:
            self.send_response(status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args: Any) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    server.daemon_threads = True
    server.request_queue_size = 128
    done = threading.Event()

    def stop_when_abandoned() -> None:
        while sys.stdin.read(1):  # EOF: the benchmark closed our stdin, or died
            pass
        done.set()

    signal.signal(signal.SIGTERM, lambda *_: done.set())
    threading.Thread(target=stop_when_abandoned, daemon=True).start()
    threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.1}, daemon=True).start()
    print(server.server_port, flush=True)
    while not done.wait(timeout=5):
        if time.monotonic() - intake.last_seen > IDLE_LIMIT_SECONDS:
            break
    server.shutdown()
    server.server_close()


if __name__ == "__main__":
    serve(float(sys.argv[1]), int(sys.argv[2]))
