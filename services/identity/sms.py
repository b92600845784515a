"""Sending one-time codes by SMS: the `SmsSender` interface, the HTTP adapter
for an SMS gateway, and the local stand-in that writes messages to a file.

Codes are sent directly, never through the durable outbox: a code must not
sit in a queue (or a dead letter) where an operator or a later delivery
could read it after it expired. A send that fails is the caller's to
report (DependencyUnavailable: the user asks for a new code).

Neither the phone number nor the text (which holds the code) is ever logged
or put in an error message; logs carry a masked number at most.

HTTP protocol of the adapter: POST <url> with
    {"to": "+8613800138000", "text": "...", "client_ref": "<uuid>"}
and the client_ref as Idempotency-Key, so a retried request is one message;
a 2xx answer may name {"message_id": "..."} (else the client_ref is the id).
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import pathlib
import threading
import uuid
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Protocol

from avgate.kernel.errors import DependencyUnavailable, FailedPrecondition
from services.identity.http_post import HttpUnavailable, JsonPoster

log = logging.getLogger(__name__)

SMS_DEPENDENCY = "sms gateway"


class SmsSender(Protocol):
    async def send(self, phone_e164: str, text: str) -> str:
        """Hands one message to the SMS gateway; returns its message id.

        Raises DependencyUnavailable when the gateway cannot be reached (after
        bounded retries) and SmsRejected when it refuses the message.
        """
        ...


class SmsRejected(FailedPrecondition):
    """The SMS gateway refused the message (a 4xx answer): retrying would not help."""

    reason = "ERROR_REASON_FAILED_PRECONDITION"


def mask_phone(phone_e164: str) -> str:
    """+8613812345678 → +86138****5678: enough for an operator to tell numbers apart in a log."""
    digits = phone_e164[-11:]
    if len(digits) < 11:
        return "*" * len(phone_e164)
    return f"{phone_e164[: len(phone_e164) - 11]}{digits[:3]}****{digits[-4:]}"


class HttpSmsSender:
    """The SMS gateway behind an HTTP/JSON endpoint, with bounded retries on 5xx and
    connection failures and none on 4xx (see module docstring for the protocol)."""

    def __init__(self, poster: JsonPoster):
        self._poster = poster

    async def send(self, phone_e164: str, text: str) -> str:
        client_ref = str(uuid.uuid4())
        document = {"to": phone_e164, "text": text, "client_ref": client_ref}
        try:
            answer = await self._poster.post("", document, idempotency_key=client_ref)
        except HttpUnavailable as exc:
            log.warning("SMS to %s not sent: %s", mask_phone(phone_e164), exc)
            raise DependencyUnavailable(SMS_DEPENDENCY, retry_after_seconds=5.0) from None
        if 200 <= answer.status < 300:
            body = answer.json()
            message_id = body.get("message_id") if isinstance(body, dict) else None
            message_id = str(message_id) if isinstance(message_id, str | int) and str(message_id) else client_ref
            log.info("SMS to %s accepted as %s", mask_phone(phone_e164), message_id)
            return message_id
        # The answer's body is not logged: a gateway may echo the number or the text.
        log.error("SMS to %s refused by %s: HTTP %d", mask_phone(phone_e164), self._poster.host, answer.status)
        raise SmsRejected(f"the SMS gateway refused the message (HTTP {answer.status})")


class FileSmsSink:
    """The local stand-in: appends each message, in full, as a JSON line to a file
    only its owner may read (mode 0600), so an operator of a local stack can
    read the code. Never in production (IdentitySettings.local_stand_ins)."""

    def __init__(self, path: pathlib.Path, *, clock: Callable[[], datetime] = lambda: datetime.now(UTC)):
        self.path = path
        self._clock = clock
        self._lock = threading.Lock()

    async def send(self, phone_e164: str, text: str) -> str:
        message_id = f"local-{uuid.uuid4()}"
        line = {"time": self._clock().isoformat(), "message_id": message_id, "to": phone_e164, "text": text}
        await asyncio.to_thread(self._append, json.dumps(line, ensure_ascii=False).encode() + b"\n")
        log.info("SMS to %s written to the local SMS file as %s", mask_phone(phone_e164), message_id)
        return message_id

    def _append(self, data: bytes) -> None:
        with self._lock:
            self.path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
            fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
            try:
                os.fchmod(fd, 0o600)  # also when the file existed with a looser mode
                view = memoryview(data)
                while view:
                    view = view[os.write(fd, view) :]
            finally:
                os.close(fd)
