"""The local stand-in of the national identity verification service: a real
HTTP server speaking services.identity.verifier's protocol, its answers
driven by a test-data file. Local profile only: the production profile
refuses a verifier URL on this machine, and the adapter refuses answers
marked as the stand-in's.

Test data: JSON lines, fictitious identities only, e.g.
    {"kind": "individual", "name": "...", "id_number": "..."}
    {"kind": "organization", "credit_code": "...", "name": "..."}
An ID number or credit code in the file with the same name answers
"match", with another name "mismatch"; one not in the file "not_found". A
line with "answer": "unavailable" makes the stand-in answer 503 for that
number (to exercise the caller's holding). GET /stats returns the request
counts. Logs show masked numbers only.

    python -m services.identity.verifier_standin --port 50071 --data services/identity/standin_data/identities.jsonl
"""

from __future__ import annotations

import argparse
import json
import logging
import pathlib
import sys
import threading
import uuid
from collections import Counter
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

log = logging.getLogger("services.identity.verifier_standin")

DEFAULT_DATA = pathlib.Path(__file__).parent / "standin_data" / "identities.jsonl"


def mask_number(value: str) -> str:
    """First 3 and last 1 characters: 110**************X."""
    if len(value) <= 4:
        return "*" * len(value)
    return value[:3] + "*" * (len(value) - 4) + value[-1]


def load_data(path: pathlib.Path) -> dict[tuple[str, str], dict[str, Any]]:
    """Known identities by (kind, number)."""
    known: dict[tuple[str, str], dict[str, Any]] = {}
    for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), start=1):
        if not line.strip():
            continue
        entry = json.loads(line)
        kind = entry.get("kind")
        key = entry.get("id_number") if kind == "individual" else entry.get("credit_code")
        if kind not in ("individual", "organization") or not isinstance(key, str) or "name" not in entry:
            raise ValueError(f"{path}:{number}: not a known identity line")
        known[(kind, key.upper())] = entry
    return known


class VerifierStandIn(ThreadingHTTPServer):
    """The stand-in server; `requests` counts requests by path."""

    daemon_threads = True
    request_queue_size = 128  # socketserver's default backlog of 5 drops connects from concurrent callers

    def __init__(
        self,
        address: tuple[str, int],
        known: dict[tuple[str, str], dict[str, Any]],
        *,
        bearer_token: str | None = None,
    ):
        super().__init__(address, _Handler)
        self.known = known
        self.bearer_token = bearer_token
        self.requests: Counter[str] = Counter()
        self.lock = threading.Lock()

    @property
    def url(self) -> str:
        host, port = self.server_address[:2]
        return f"http://{host!s}:{port}"

    def answer(self, kind: str, number: str, name: str) -> tuple[int, dict[str, Any]]:
        entry = self.known.get((kind, number.strip().upper()))
        if entry is not None and entry.get("answer") == "unavailable":
            return 503, {"error": "unavailable"}
        result = "not_found" if entry is None else "match" if entry["name"] == name else "mismatch"
        return 200, {"result": result, "reference": f"standin-{uuid.uuid4()}"}


class _Handler(BaseHTTPRequestHandler):
    server: VerifierStandIn
    protocol_version = "HTTP/1.1"

    def log_message(self, format: str, *args: Any) -> None:
        pass  # the default line is unmasked request data's neighbour; this module logs its own

    def do_GET(self) -> None:
        if self.path == "/stats":
            with self.server.lock:
                self._reply(200, {"requests": dict(self.server.requests)})
        else:
            self._reply(404, {"error": "not found"})

    def do_POST(self) -> None:
        length = int(self.headers.get("Content-Length") or 0)
        body = self.rfile.read(length)
        with self.server.lock:
            self.server.requests[self.path] += 1
        if self.server.bearer_token and self.headers.get("Authorization") != f"Bearer {self.server.bearer_token}":
            self._reply(401, {"error": "unauthenticated"})
            return
        try:
            document = json.loads(body)
            name = str(document["name"])
            if self.path == "/v1/individuals:verify":
                kind, number = "individual", str(document["id_number"])
            elif self.path == "/v1/organizations:verify":
                kind, number = "organization", str(document["credit_code"])
            else:
                self._reply(404, {"error": "not found"})
                return
        except (ValueError, KeyError, TypeError):
            self._reply(400, {"error": "malformed request"})
            return
        status, answer = self.server.answer(kind, number, name)
        log.info("%s %s -> %s", kind, mask_number(number), answer.get("result", status))
        self._reply(status, answer)

    def _reply(self, status: int, document: dict[str, Any]) -> None:
        data = json.dumps(document).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.send_header("X-Avgate-Stand-In", "true")
        self.end_headers()
        self.wfile.write(data)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Local stand-in of the identity verification service")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--data", type=pathlib.Path, default=DEFAULT_DATA)
    parser.add_argument("--token-file", type=pathlib.Path, default=None, help="require this bearer token")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    token = args.token_file.read_text(encoding="utf-8").strip() if args.token_file else None
    server = VerifierStandIn((args.host, args.port), load_data(args.data), bearer_token=token)
    print(f"identity verifier stand-in listening on {server.url}", flush=True)
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        pass
    finally:
        server.server_close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
