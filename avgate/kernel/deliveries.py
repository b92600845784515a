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

HTTP goes through the standard library's urllib in a worker thread: the
environment has neither httpx nor aiohttp, and one POST per event needs no
more.
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import json
import os
import pathlib
import ssl
import threading
import urllib.error
import urllib.request
from collections.abc import Callable, Mapping
from datetime import UTC, datetime
from typing import Any

import rfc8785
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

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
    try:
        value = json.loads(payload)
    except (UnicodeDecodeError, ValueError):
        return None
    try:
        return value if rfc8785.dumps(value) == payload else None
    except (rfc8785.CanonicalizationError, ValueError, TypeError):
        return None


def _body(document: Mapping[str, Any]) -> bytes:
    return json.dumps(document, separators=(",", ":"), ensure_ascii=False).encode()


class _NoRedirects(urllib.request.HTTPRedirectHandler):
    """A redirect is an answer, not a hop: urllib would turn the POST into a body-less GET."""

    def redirect_request(self, *args: Any, **kwargs: Any) -> None:
        return None


class HttpJsonDelivery:
    """POSTs the signed document as JSON with the event id as the Idempotency-Key.

    2xx is a receipt (status and the SHA-256 of the body); 408, 425, 429, any
    5xx, and failures to connect or to get an answer in `timeout` are
    retryable; any other status (a 3xx included: the URL is wrong) is
    permanent. Credentials are a bearer token, basic auth, or any headers.
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
    ):
        if not url.startswith(("http://", "https://")):
            raise ValueError(f"not an http(s) URL: {url!r}")
        self._url = url
        self._timeout = timeout
        self._embed_json = embed_json
        self._headers = {"Content-Type": "application/json", "Accept": "application/json", **(headers or {})}
        if bearer_token:
            self._headers["Authorization"] = f"Bearer {bearer_token}"
        elif basic_auth:
            token = base64.b64encode(f"{basic_auth[0]}:{basic_auth[1]}".encode()).decode("ascii")
            self._headers["Authorization"] = f"Basic {token}"
        handlers: list[urllib.request.BaseHandler] = [_NoRedirects()]
        if ssl_context is not None:
            handlers.append(urllib.request.HTTPSHandler(context=ssl_context))
        self._opener = urllib.request.build_opener(*handlers)

    async def deliver(self, event: ClaimedEvent) -> Receipt:
        body = _body(delivery_document(event, embed_json=self._embed_json))
        headers = {**self._headers, "Idempotency-Key": event.idempotency_key}
        status, answer = await asyncio.to_thread(self._post, body, headers)
        details = {"status": status, "body_sha256": hashlib.sha256(answer).hexdigest()}
        if 200 <= status < 300:
            return Receipt(details)
        excerpt = answer[:200].decode("utf-8", "replace")
        if status in RETRYABLE_STATUSES or status >= 500:
            raise RetryableDeliveryError(f"{self._url} answered {status}: {excerpt}")
        raise PermanentDeliveryError(f"{self._url} answered {status}: {excerpt}")

    def _post(self, body: bytes, headers: Mapping[str, str]) -> tuple[int, bytes]:
        request = urllib.request.Request(self._url, data=body, headers=dict(headers), method="POST")  # noqa: S310
        try:
            with self._opener.open(request, timeout=self._timeout) as response:
                return int(response.status), response.read()
        except urllib.error.HTTPError as exc:
            with exc:
                return int(exc.code), exc.read()
        except (urllib.error.URLError, OSError) as exc:  # refused, reset, DNS, TLS, timeout
            raise RetryableDeliveryError(f"{self._url}: {exc}") from exc


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
