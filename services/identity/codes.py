"""One-time codes that prove control of a mobile number.

A code is 6 digits from `secrets`, bound to one verification flow and the
phone's blind index, valid for a short while (5 minutes by default), good
for one successful confirmation and a few wrong guesses (5 by default),
after which it is dead. Issuing a new code for a flow supersedes the
previous one. The code itself never reaches the database or a log: the
caller gets it once, to put in the SMS text.

Why HMAC-SHA256 with a configured key and not scrypt: a code has only 10^6
values, so any unkeyed hash, however slow, falls to an offline search over
all of them from a database dump (scrypt at 50 ms a guess is a few hours on
one core, minutes on a few dozen). What protects a code at rest is a secret
the database does not hold: with HMAC under a key from configuration, a
dump alone gives nothing, and confirming costs microseconds instead of an
scrypt per request that an attacker could use to burn CPU. The hash also
covers the flow id and the phone index, so a row copied onto another flow
or number does not verify. Keys carry an id (the row names its key), so a
key rotates by adding a line to the key file; old lines can go once the
codes hashed under them expired (minutes).

Functions take the caller's connection and never commit: the service step
that sends or confirms a code writes its ledger entry in the same
transaction. `confirm` returns an outcome rather than raising, so that the
caller commits a wrong guess's attempt count before answering.
"""

from __future__ import annotations

import enum
import hashlib
import hmac
import pathlib
import secrets
import uuid
from collections.abc import Callable
from dataclasses import dataclass, replace
from datetime import UTC, datetime, timedelta

from sqlalchemy import select, update
from sqlalchemy.ext.asyncio import AsyncConnection

from avgate.kernel.errors import FieldViolation, InvalidArgument
from avgate.kernel.keyring import KeyFile, parse_key_file
from services.identity.models import verification_codes

CODE_DIGITS = 6


@dataclass(frozen=True)
class HashKeyRing:
    """HMAC keys by id; `current_id` hashes new codes."""

    keys: dict[str, bytes]
    current_id: str

    @classmethod
    def from_key_file(cls, keys: KeyFile) -> HashKeyRing:
        return cls(dict(keys.keys), keys.current)

    @classmethod
    def load(cls, path: pathlib.Path) -> HashKeyRing:
        """Reads a key file (avgate.kernel.keyring's format); ValueError names the file and the line at fault."""
        try:
            return cls.from_key_file(parse_key_file(path.read_text(encoding="ascii")))
        except ValueError as exc:
            raise ValueError(f"{path}: {exc}") from exc

    def derive(self, purpose: str) -> bytes:
        """A key for another use of the current key (domain-separated), e.g. address keys for limits."""
        return hmac.new(self.keys[self.current_id], b"avgate-identity/" + purpose.encode(), hashlib.sha256).digest()


class CodeOutcome(enum.StrEnum):
    CONFIRMED = "confirmed"
    WRONG = "wrong"
    """Wrong code; `remaining_attempts` more guesses (0: the code is now dead)."""
    EXPIRED = "expired"
    NO_ACTIVE_CODE = "no_active_code"
    """None was sent, it was used, superseded, or died of too many wrong guesses."""


@dataclass(frozen=True)
class IssuedCode:
    code_id: uuid.UUID
    code: str
    """The digits, for the SMS text only: never store or log them."""
    expires_at: datetime

    def __repr__(self) -> str:  # keeps the code out of tracebacks and debug logs
        return f"IssuedCode(code_id={self.code_id}, expires_at={self.expires_at.isoformat()})"


@dataclass(frozen=True)
class ConfirmResult:
    outcome: CodeOutcome
    remaining_attempts: int
    code_id: uuid.UUID | None = None

    @property
    def confirmed(self) -> bool:
        return self.outcome is CodeOutcome.CONFIRMED


@dataclass(frozen=True)
class StoredCode:
    """A code as a store keeps it (a verification_codes row): its keyed hash, never the digits."""

    code_id: uuid.UUID
    flow_id: str
    phone_index: bytes
    key_id: str
    code_hash: bytes
    created_at: datetime
    expires_at: datetime
    max_attempts: int
    attempts: int = 0
    state: str = "active"
    """active, used, exhausted, expired or superseded."""
    finished_at: datetime | None = None

    def __repr__(self) -> str:
        return f"StoredCode(code_id={self.code_id}, flow_id={self.flow_id}, state={self.state})"


def check_code_format(code: str, field: str = "code") -> str:
    """The code as digits; InvalidArgument (without echoing it) when it is not 6 digits."""
    candidate = code.strip()
    if len(candidate) != CODE_DIGITS or not candidate.isascii() or not candidate.isdigit():
        raise InvalidArgument(FieldViolation(field, f"must be {CODE_DIGITS} digits", "CODE_FORMAT"))
    return candidate


class OneTimeCodes:
    """Issues and confirms one-time codes in the caller's transaction."""

    def __init__(
        self,
        keys: HashKeyRing,
        *,
        ttl: timedelta = timedelta(minutes=5),
        max_attempts: int = 5,
        clock: Callable[[], datetime] = lambda: datetime.now(UTC),
    ):
        if max_attempts < 1:
            raise ValueError("max_attempts must be at least 1")
        self._keys = keys
        self._ttl = ttl
        self._max_attempts = max_attempts
        self._clock = clock

    def code_hash(self, key_id: str, flow_id: str, phone_index: bytes, code: str) -> bytes:
        """The keyed hash a code is kept as (empty under a key no longer in the ring: it cannot verify)."""
        key = self._keys.keys.get(key_id)
        if key is None:
            return b""
        message = b"\x00".join([b"otp-v1", flow_id.encode(), phone_index, code.encode()])
        return hmac.new(key, message, hashlib.sha256).digest()

    def draft(self, flow_id: str, phone_index: bytes, now: datetime) -> tuple[IssuedCode, StoredCode]:
        """A fresh code (for the SMS) and what a store keeps of it; pure: the caller stores it."""
        code = f"{secrets.randbelow(10**CODE_DIGITS):0{CODE_DIGITS}d}"
        code_id = uuid.uuid4()
        key_id = self._keys.current_id
        stored = StoredCode(
            code_id=code_id,
            flow_id=flow_id,
            phone_index=phone_index,
            key_id=key_id,
            code_hash=self.code_hash(key_id, flow_id, phone_index, code),
            created_at=now,
            expires_at=now + self._ttl,
            max_attempts=self._max_attempts,
        )
        return IssuedCode(code_id, code, stored.expires_at), stored

    def judge(
        self, active: StoredCode | None, flow_id: str, phone_index: bytes, candidate: str, now: datetime
    ) -> tuple[ConfirmResult, StoredCode | None]:
        """The outcome of `candidate` (format-checked) against the flow's active code, and the code as
        it must be stored afterwards (None: unchanged). Pure: the caller reads and writes the code."""
        if active is None:
            return ConfirmResult(CodeOutcome.NO_ACTIVE_CODE, 0), None
        if not hmac.compare_digest(active.phone_index, phone_index):
            # The flow's number changed since the code was sent: the code proves nothing about this one.
            return ConfirmResult(CodeOutcome.NO_ACTIVE_CODE, 0), None
        if active.expires_at <= now:
            return ConfirmResult(CodeOutcome.EXPIRED, 0, active.code_id), replace(
                active, state="expired", finished_at=now
            )
        if hmac.compare_digest(self.code_hash(active.key_id, flow_id, phone_index, candidate), active.code_hash):
            return ConfirmResult(CodeOutcome.CONFIRMED, 0, active.code_id), replace(
                active, state="used", finished_at=now
            )
        attempts = active.attempts + 1
        remaining = active.max_attempts - attempts
        after = replace(active, attempts=attempts)
        if remaining <= 0:
            after = replace(after, state="exhausted", finished_at=now)
        return ConfirmResult(CodeOutcome.WRONG, max(remaining, 0), active.code_id), after

    async def issue(self, conn: AsyncConnection, *, flow_id: str, phone_index: bytes) -> IssuedCode:
        """A fresh code for the flow; the flow's previous active code is superseded."""
        now = self._clock()
        await conn.execute(
            update(verification_codes)
            .where(verification_codes.c.flow_id == flow_id, verification_codes.c.state == "active")
            .values(state="superseded", finished_at=now)
        )
        issued, stored = self.draft(flow_id, phone_index, now)
        await conn.execute(
            verification_codes.insert().values(
                code_id=stored.code_id,
                flow_id=stored.flow_id,
                phone_index=stored.phone_index,
                key_id=stored.key_id,
                code_hash=stored.code_hash,
                created_at=stored.created_at,
                expires_at=stored.expires_at,
                max_attempts=stored.max_attempts,
            )
        )
        return issued

    async def confirm(self, conn: AsyncConnection, *, flow_id: str, phone_index: bytes, code: str) -> ConfirmResult:
        """Checks `code` against the flow's active code (row-locked: concurrent guesses count one by one).

        A malformed code is InvalidArgument and costs no attempt.
        """
        candidate = check_code_format(code)
        now = self._clock()
        c = verification_codes.c
        row = (
            await conn.execute(
                select(verification_codes).where(c.flow_id == flow_id, c.state == "active").with_for_update()
            )
        ).first()
        active = None
        if row is not None:
            active = StoredCode(
                code_id=row.code_id,
                flow_id=row.flow_id,
                phone_index=bytes(row.phone_index),
                key_id=row.key_id,
                code_hash=bytes(row.code_hash),
                created_at=row.created_at,
                expires_at=row.expires_at,
                max_attempts=row.max_attempts,
                attempts=row.attempts,
                state=row.state,
                finished_at=row.finished_at,
            )
        result, after = self.judge(active, flow_id, phone_index, candidate, now)
        if after is not None:
            await conn.execute(
                update(verification_codes)
                .where(c.code_id == after.code_id)
                .values(attempts=after.attempts, state=after.state, finished_at=after.finished_at)
            )
        return result

    async def purge_finished(self, conn: AsyncConnection, *, older_than: timedelta = timedelta(days=1)) -> int:
        """Deletes codes that expired or finished more than `older_than` ago; returns how many."""
        cutoff = self._clock() - older_than
        result = await conn.execute(verification_codes.delete().where(verification_codes.c.expires_at < cutoff))
        return result.rowcount or 0
