"""Delivery adapters for the outbox: an HTTP/JSON endpoint and a file drop.

Both carry the same signed document, so an authority checks either with
`verify_document`:

    {"event_id": ..., "destination": ..., "created_at": ..., "attempt": n,
     "payload_encoding": "base64" | "json", "payload": ...,
     "signature": base64 | null, "key_id": ... | null, "issuer": ... | null}

The signature covers the payload's exact bytes (see avgate.kernel.outbox).
With `embed_json` a payload that is RFC 8785 canonical JSON travels as JSON
(re-canonicalising it gives back the signed bytes); any other payload
travels as base64.

HTTP goes through the standard library's http.client in worker threads
with kept-alive connections: the environment has neither httpx nor aiohttp,
and one POST per event needs no more.
"""

from __future__ import annotations

import asyncio
import base64
import concurrent.futures
import hashlib
import http.client
import json
import os
import pathlib
import ssl
import threading
import urllib.parse
from collections.abc import Callable, Mapping
from datetime import UTC, datetime
from typing import Any

import rfc8785
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

from avgate.kernel.canonical import canonical_json
from avgate.kernel.outbox import (
    ClaimedEvent,
    InvalidDeliverySignature,
    PermanentDeliveryError,
    Receipt,
    RetryableDeliveryError,
    verify_delivery,
)

RETRYABLE_STATUSES = frozenset({408, 425, 429})


def delivery_document(event: ClaimedEvent, *, embed_json: bool = False) -> dict[str, Any]:
    """The JSON document both adapters deliver for `event`."""
    encoding, payload = "base64", base64.b64encode(event.payload).decode("ascii")
    if embed_json:
        embedded = _canonical_json(event.payload)
        if embedded is not None:
            encoding, payload = "json", embedded
    signature = event.signature
    return {
        "event_id": str(event.event_id),
        "destination": event.destination,
        "created_at": event.created_at.isoformat(),
        "attempt": event.attempt,
        "payload_encoding": encoding,
        "payload": payload,
        "signature": signature.signature_b64 if signature else None,
        "key_id": signature.key_id if signature else None,
        "issuer": signature.issuer if signature else None,
    }


def document_payload(document: Mapping[str, Any]) -> bytes:
    """The exact payload bytes a delivered document carries."""
    if document.get("payload_encoding") == "json":
        return rfc8785.dumps(document["payload"])
    return base64.b64decode(document["payload"], validate=True)


def verify_document(document: Mapping[str, Any], trusted: Mapping[str, Ed25519PublicKey]) -> bytes:
    """Checks a delivered document against keys by key id; returns its payload bytes.

    Raises InvalidDeliverySignature when it is unsigned, signed by an unknown
    key, or altered.
    """
    key = trusted.get(str(document.get("key_id")))
    if not document.get("signature") or key is None:
        raise InvalidDeliverySignature(f"delivery {document.get('event_id')}: unsigned or signed by an unknown key")
    payload = document_payload(document)
    signature = base64.b64decode(document["signature"], validate=True)
    verify_delivery(key, document["event_id"], document["destination"], payload, signature)
    return payload


def _canonical_json(payload: bytes) -> Any | None:
    """The payload as JSON when it is RFC 8785 canonical JSON, else None."""
    try:
        value = json.loads(payload)
    except (UnicodeDecodeError, ValueError):
        return None
    try:
        # The ledger's encoder: Python's own where provably the same as RFC 8785 (5x faster per report).
        canonical = canonical_json(value) if isinstance(value, dict) else rfc8785.dumps(value)
    except (rfc8785.CanonicalizationError, ValueError, TypeError):
        return None
    return value if canonical == payload else None


def _body(document: Mapping[str, Any]) -> bytes:
    return json.dumps(document, separators=(",", ":"), ensure_ascii=False).encode()


class HttpJsonDelivery:
    """POSTs the signed document as JSON with the event id as the Idempotency-Key.

    2xx is a receipt (status, the SHA-256 of the body, and the authority's
    `receipt_id` when its JSON answer names one); 408, 425, 429, any 5xx,
    and failures to connect or to get an answer in `timeout` are retryable;
    any other status (a 3xx included: redirects are not followed, the URL is
    wrong) is permanent. Every outcome carries the HTTP status when there
    was an answer. Credentials are a bearer token, basic auth, or any headers.

    Connections are kept alive and reused (HTTP/1.1), at most
    `max_connections` at once, each used by one request at a time in this
    adapter's own worker threads: one adapter per destination per
    dispatcher, so a dispatcher holds a small, fixed set of sockets per
    authority instead of a TCP (and TLS) handshake per report. A request
    that fails on a reused connection before any answer arrived (the server
    closed it while idle) is sent once more on a fresh connection; the
    Idempotency-Key makes that safe. `keep_alive=False` opens a connection
    per request (kept for comparison in `avgate bench dispatcher`).
    """

    def __init__(
        self,
        url: str,
        *,
        headers: Mapping[str, str] | None = None,
        bearer_token: str | None = None,
        basic_auth: tuple[str, str] | None = None,
        timeout: float = 10.0,
        embed_json: bool = False,
        ssl_context: ssl.SSLContext | None = None,
        max_connections: int = 8,
        keep_alive: bool = True,
    ):
        split = urllib.parse.urlsplit(url)
        if split.scheme not in ("http", "https") or not split.hostname:
            raise ValueError(f"not an http(s) URL: {url!r}")
        if max_connections < 1:
            raise ValueError("max_connections must be positive")
        self._url = url
        self._https = split.scheme == "https"
        self._host = split.hostname
        self._port = split.port
        self._target = (split.path or "/") + (f"?{split.query}" if split.query else "")
        self._timeout = timeout
        self._embed_json = embed_json
        self._ssl_context = (
            ssl_context if ssl_context is not None else (ssl.create_default_context() if self._https else None)
        )
        self._keep_alive = keep_alive
        self._headers = {"Content-Type": "application/json", "Accept": "application/json", **(headers or {})}
        if not keep_alive:
            self._headers["Connection"] = "close"
        if bearer_token:
            self._headers["Authorization"] = f"Bearer {bearer_token}"
        elif basic_auth:
            token = base64.b64encode(f"{basic_auth[0]}:{basic_auth[1]}".encode()).decode("ascii")
            self._headers["Authorization"] = f"Basic {token}"
        self._max_connections = max_connections
        self._idle: list[http.client.HTTPConnection] = []
        self._lock = threading.Lock()
        self._executor: concurrent.futures.ThreadPoolExecutor | None = None
        self.connections_opened = 0
        """How many TCP connections this adapter has opened (the benchmark reports it)."""

    async def deliver(self, event: ClaimedEvent) -> Receipt:
        body = _body(delivery_document(event, embed_json=self._embed_json))
        headers = {**self._headers, "Idempotency-Key": event.idempotency_key}
        loop = asyncio.get_running_loop()
        status, answer = await loop.run_in_executor(self._workers(), self._post, body, headers)
        details: dict[str, Any] = {"status": status, "body_sha256": hashlib.sha256(answer).hexdigest()}
        if 200 <= status < 300:
            receipt_id = _receipt_id(answer)
            if receipt_id is not None:
                details["receipt_id"] = receipt_id
            return Receipt(details, http_status=status)
        excerpt = answer[:200].decode("utf-8", "replace")
        if status in RETRYABLE_STATUSES or status >= 500:
            raise RetryableDeliveryError(f"{self._url} answered {status}: {excerpt}", http_status=status)
        raise PermanentDeliveryError(f"{self._url} answered {status}: {excerpt}", http_status=status)

    def close(self) -> None:
        """Closes idle connections and stops the worker threads (a later delivery starts them again)."""
        with self._lock:
            idle, self._idle = self._idle, []
            executor, self._executor = self._executor, None
        for conn in idle:
            conn.close()
        if executor is not None:
            executor.shutdown(wait=False)

    def _workers(self) -> concurrent.futures.ThreadPoolExecutor:
        with self._lock:
            if self._executor is None:
                self._executor = concurrent.futures.ThreadPoolExecutor(
                    max_workers=self._max_connections, thread_name_prefix=f"http-delivery-{self._host}"
                )
            return self._executor

    def _connect(self) -> http.client.HTTPConnection:
        with self._lock:
            self.connections_opened += 1
        if self._https:
            return http.client.HTTPSConnection(self._host, self._port, timeout=self._timeout, context=self._ssl_context)
        return http.client.HTTPConnection(self._host, self._port, timeout=self._timeout)

    def _post(self, body: bytes, headers: Mapping[str, str]) -> tuple[int, bytes]:
        """One POST in a worker thread: (status, body), or RetryableDeliveryError when no answer came."""
        reused: http.client.HTTPConnection | None = None
        if self._keep_alive:
            with self._lock:
                reused = self._idle.pop() if self._idle else None
        if reused is not None:
            try:
                return self._exchange(reused, body, headers)
            except (http.client.RemoteDisconnected, ConnectionResetError, BrokenPipeError):
                pass  # closed by the server while idle: once more on a fresh connection
            except (http.client.HTTPException, OSError) as exc:
                raise RetryableDeliveryError(f"{self._url}: {exc}") from exc
        try:
            return self._exchange(self._connect(), body, headers)
        except (http.client.HTTPException, OSError) as exc:  # refused, reset, DNS, TLS, timeout
            raise RetryableDeliveryError(f"{self._url}: {exc}") from exc

    def _exchange(self, conn: http.client.HTTPConnection, body: bytes, headers: Mapping[str, str]) -> tuple[int, bytes]:
        try:
            conn.request("POST", self._target, body=body, headers=dict(headers))
            response = conn.getresponse()
            answer = response.read()
        except BaseException:
            conn.close()  # a half-used connection is never reused
            raise
        if not (self._keep_alive and not response.will_close and self._park(conn)):
            conn.close()
        return int(response.status), answer

    def _park(self, conn: http.client.HTTPConnection) -> bool:
        """Keeps `conn` for the next request; False when enough are idle already."""
        with self._lock:
            if len(self._idle) >= self._max_connections:
                return False
            self._idle.append(conn)
            return True


def _receipt_id(answer: bytes) -> str | None:
    """The authority's receipt id, when its JSON answer carries one as "receipt_id"."""
    try:
        document = json.loads(answer)
    except (UnicodeDecodeError, ValueError):
        return None
    value = document.get("receipt_id") if isinstance(document, dict) else None
    if isinstance(value, str | int) and not isinstance(value, bool):
        text = str(value)
        if 0 < len(text) <= 128 and text.isprintable():
            return text
    return None


class FileDropDelivery:
    """Appends signed JSON lines to `<directory>/<prefix>-<UTC date>.jsonl`, synced to disk.

    For authorities that take exports. A crash between writing a line and
    recording the delivery writes the event again on retry: readers keep the
    first line per event_id. One dispatcher replica per directory (or a
    prefix per replica): appends are serialised only within a process.
    """

    def __init__(
        self,
        directory: pathlib.Path | str,
        *,
        prefix: str = "outbox",
        embed_json: bool = True,
        clock: Callable[[], datetime] = lambda: datetime.now(UTC),
    ):
        self._directory = pathlib.Path(directory)
        self._prefix = prefix
        self._embed_json = embed_json
        self._clock = clock
        self._lock = threading.Lock()

    def path_for(self, day: datetime) -> pathlib.Path:
        return self._directory / f"{self._prefix}-{day.astimezone(UTC):%Y-%m-%d}.jsonl"

    async def deliver(self, event: ClaimedEvent) -> Receipt:
        line = _body(delivery_document(event, embed_json=self._embed_json)) + b"\n"
        try:
            path, offset = await asyncio.to_thread(self._append, line)
        except OSError as exc:  # a full or missing volume may come back
            raise RetryableDeliveryError(f"file drop {self._directory}: {exc}") from exc
        return Receipt({"file": path.name, "offset": offset, "line_sha256": hashlib.sha256(line).hexdigest()})

    def _append(self, line: bytes) -> tuple[pathlib.Path, int]:
        with self._lock:
            self._directory.mkdir(parents=True, exist_ok=True)
            path = self.path_for(self._clock())
            created = not path.exists()
            fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o640)
            try:
                offset = os.fstat(fd).st_size
                view = memoryview(line)
                while view:
                    view = view[os.write(fd, view) :]
                os.fsync(fd)
            finally:
                os.close(fd)
            if created:  # the new file's name must survive a crash too
                dir_fd = os.open(self._directory, os.O_RDONLY)
                try:
                    os.fsync(dir_fd)
                finally:
                    os.close(dir_fd)
            return path, offset
