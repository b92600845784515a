"""One JSON POST with bounded retries, for the SMS gateway and the identity verifier.

Both carry personal data (a phone number and a code; a name and an ID
number), so nothing here logs or raises with a request or answer body: an
outcome names the URL's host and the HTTP status only. The standard
library's http.client runs in a worker thread (the environment has neither
httpx nor aiohttp; see avgate.kernel.deliveries), one connection per attempt:
a few requests per verification need no pool.

Retried: connection failures and timeouts, 408, 425, 429 and any 5xx, up to
`max_attempts` in all with jittered exponential backoff. Anything else is
the answer, for the adapter to interpret.
"""

from __future__ import annotations

import asyncio
import http.client
import json
import logging
import pathlib
import random
import ssl
import urllib.parse
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from typing import Any

log = logging.getLogger(__name__)

RETRYABLE_STATUSES = frozenset({408, 425, 429})


@dataclass(frozen=True)
class HttpAnswer:
    status: int
    body: bytes
    headers: Mapping[str, str]

    def json(self) -> Any:
        """The body as JSON, or None when it is not JSON."""
        try:
            return json.loads(self.body)
        except (UnicodeDecodeError, ValueError):
            return None


class HttpUnavailable(Exception):
    """No usable answer after every attempt: the last status (None: no answer at all)."""

    def __init__(self, message: str, status: int | None = None):
        super().__init__(message)
        self.status = status


def read_secret_file(path: pathlib.Path | None) -> str | None:
    """A bearer token or credential kept in a file (a mounted Secret), stripped."""
    if path is None:
        return None
    token = path.read_text(encoding="utf-8").strip()
    if not token:
        raise ValueError(f"{path} is empty")
    return token


class JsonPoster:
    """POSTs JSON documents to paths under one base URL."""

    def __init__(
        self,
        base_url: str,
        *,
        bearer_token: str | None = None,
        timeout: float = 5.0,
        max_attempts: int = 3,
        base_delay: float = 0.2,
        max_delay: float = 2.0,
        ssl_context: ssl.SSLContext | None = None,
        sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
    ):
        split = urllib.parse.urlsplit(base_url)
        if split.scheme not in ("http", "https") or not split.hostname:
            raise ValueError(f"not an http(s) URL: {base_url!r}")
        if max_attempts < 1:
            raise ValueError("max_attempts must be at least 1")
        self.host = split.hostname
        self._https = split.scheme == "https"
        self._port = split.port
        self._prefix = split.path.rstrip("/")
        self._timeout = timeout
        self._max_attempts = max_attempts
        self._base_delay = base_delay
        self._max_delay = max_delay
        self._ssl_context = (
            ssl_context if ssl_context is not None else (ssl.create_default_context() if self._https else None)
        )
        self._headers = {"Content-Type": "application/json", "Accept": "application/json"}
        if bearer_token:
            self._headers["Authorization"] = f"Bearer {bearer_token}"
        self._sleep = sleep
        self.attempts_made = 0
        """Every attempt this poster has made (tests and metrics read it)."""

    async def post(self, path: str, document: Mapping[str, Any], *, idempotency_key: str | None = None) -> HttpAnswer:
        """The first non-retryable answer; HttpUnavailable when every attempt failed."""
        body = json.dumps(document, separators=(",", ":"), ensure_ascii=False).encode()
        headers = dict(self._headers)
        if idempotency_key:
            headers["Idempotency-Key"] = idempotency_key
        target = f"{self._prefix}/{path.lstrip('/')}"
        last_status: int | None = None
        for attempt in range(1, self._max_attempts + 1):
            self.attempts_made += 1
            try:
                answer = await asyncio.to_thread(self._exchange, target, body, headers)
            except (http.client.HTTPException, OSError) as exc:  # refused, reset, DNS, TLS, timeout
                log.warning("POST %s%s attempt %d: no answer (%s)", self.host, target, attempt, type(exc).__name__)
                last_status = None
            else:
                if not (answer.status in RETRYABLE_STATUSES or answer.status >= 500):
                    return answer
                log.warning("POST %s%s attempt %d: HTTP %d", self.host, target, attempt, answer.status)
                last_status = answer.status
            if attempt < self._max_attempts:
                ceiling = min(self._max_delay, self._base_delay * 2 ** (attempt - 1))
                await self._sleep(random.uniform(ceiling / 2, ceiling))  # noqa: S311 - jitter, not secrets
        what = f"HTTP {last_status}" if last_status is not None else "no answer"
        raise HttpUnavailable(f"{self.host}: {what} after {self._max_attempts} attempts", last_status)

    def _exchange(self, target: str, body: bytes, headers: Mapping[str, str]) -> HttpAnswer:
        conn: http.client.HTTPConnection
        if self._https:
            conn = http.client.HTTPSConnection(self.host, self._port, timeout=self._timeout, context=self._ssl_context)
        else:
            conn = http.client.HTTPConnection(self.host, self._port, timeout=self._timeout)
        try:
            conn.request("POST", target, body=body, headers=dict(headers))
            response = conn.getresponse()
            data = response.read()
            return HttpAnswer(int(response.status), data, {k.lower(): v for k, v in response.getheaders()})
        finally:
            conn.close()
