"""Abuse limits on one-time codes, shared by every replica (they live in PostgreSQL).

Send limits. Sliding windows, exact: each limited subject has one row
holding its send times within the longest window. A send locks the rows of
its subjects (the phone's blind index and, when the gateway reported one,
the client address) with an upsert, in a fixed order so two sends cannot
deadlock, checks every limit, and records itself on all of them or on none.
Two replicas sending at once serialise on those row locks, so together they
cannot exceed a limit. A refused send is not recorded: a flood of refused
requests does not push the victim's next allowed send further away.

The phone arrives as the caller's blind index (bytes); this module never
sees the number. A client address is kept only as a keyed hash, and IPv6
addresses count per /64 (one subscriber's usual allocation), or a client
would get a fresh limit with every address of its prefix.

Lockouts after failed code confirmations, and why an attacker failing on
purpose cannot lock a victim out for good:
- failures count per (account, client address): 5 from one address lock
  that address out of that account, not the account. The victim, elsewhere,
  is not affected by someone else's failures;
- failures from all addresses also count per account, with a higher
  threshold (20): many addresses together still trip an account-wide lock,
  the defence against a distributed guesser;
- an address that confirmed a code for the account before (within 30 days)
  is exempt from the account-wide lock, so the victim's own device keeps
  working while an attacker elsewhere holds the account-wide lock;
- lockouts escalate (1 min, 5 min, 15 min) but are capped (1 h), decay (a
  level is forgotten after a day without a lockout, a count after an hour
  without a failure), and are not counted while locked (a locked-out
  address cannot extend its own lockout);
- success resets the address's counters and the account-wide ones; an
  admin unlock clears every counter of the account.
A per-code attempt limit (services.identity.codes) bounds guessing on top:
a code dies after 5 wrong guesses whatever the lockouts say.

Refusals raise ResourceExhausted with the retry-after; the message names the
limit, never the phone or the address. Functions take the caller's
connection and never commit; the service step writes the ledger entry.
"""

from __future__ import annotations

import hashlib
import hmac
import ipaddress
import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime, timedelta
from typing import Any

from sqlalchemy import and_, delete, select, update
from sqlalchemy.dialects.postgresql import insert as pg_insert
from sqlalchemy.ext.asyncio import AsyncConnection

from avgate.kernel.errors import ResourceExhausted
from avgate.kernel.principal import normalise_client_address
from services.identity.models import send_limits, verification_failures

ACCOUNT_WIDE = b""
"""The address key of an account's own failure counters."""
UNKNOWN_ADDRESS = b"\x00unknown"
"""Where failures without a reported client address count (all of them together)."""


@dataclass(frozen=True)
class SendPolicy:
    phone_interval: timedelta = timedelta(seconds=60)
    phone_per_hour: int = 5
    address_per_hour: int = 20


@dataclass(frozen=True)
class LockoutPolicy:
    per_address_threshold: int = 5
    per_account_threshold: int = 20
    durations: Sequence[timedelta] = field(
        default_factory=lambda: (timedelta(minutes=1), timedelta(minutes=5), timedelta(minutes=15), timedelta(hours=1))
    )
    failure_window: timedelta = timedelta(hours=1)
    level_reset_after: timedelta = timedelta(days=1)
    trusted_address_for: timedelta = timedelta(days=30)

    def duration(self, level: int) -> timedelta:
        """The length of the `level`-th lockout in a row (1-based); the last configured one is the cap."""
        return self.durations[min(level, len(self.durations)) - 1]


@dataclass(frozen=True)
class SendAllowance:
    """A send was allowed and recorded."""

    next_send_at: datetime
    """The earliest time another send to this phone would be allowed."""


@dataclass(frozen=True)
class LockoutState:
    """Failure counters of one (account, address) or of the account."""

    failed_attempts: int = 0
    level: int = 0
    locked_until: datetime | None = None

    def locked_at(self, now: datetime) -> bool:
        return self.locked_until is not None and self.locked_until > now


@dataclass(frozen=True)
class FailureCounter:
    """One row of failure counters: an (account, address) pair's, or the account's own (ACCOUNT_WIDE)."""

    failed_attempts: int = 0
    level: int = 0
    locked_until: datetime | None = None
    last_failure_at: datetime | None = None
    last_success_at: datetime | None = None

    @classmethod
    def of(cls, row: Any) -> FailureCounter:
        """From a verification_failures row (a mapping)."""
        return cls(
            row["failed_attempts"], row["level"], row["locked_until"], row["last_failure_at"], row["last_success_at"]
        )

    @property
    def state(self) -> LockoutState:
        return LockoutState(self.failed_attempts, self.level, self.locked_until)

    def locked_at(self, now: datetime) -> bool:
        return self.state.locked_at(now)


@dataclass(frozen=True)
class FailureRecorded:
    address: LockoutState
    account: LockoutState
    locked_until: datetime | None
    """When confirmations from this address become possible again; None: not locked."""
    remaining_before_lockout: int
    """Failures this address may still make before a lockout (0 when locked now)."""


@dataclass(frozen=True)
class UnlockResult:
    """What an admin unlock changed (for the caller's ledger entry)."""

    was_locked: bool
    previous_account_state: LockoutState
    cleared_counters: int
    """How many (account, address) and account-wide counter rows were removed."""


def _retry_after(now: datetime, until: datetime) -> float:
    return float(max(1, math.ceil((until - now).total_seconds())))


def _exhausted(limit: str, message: str, now: datetime, until: datetime) -> ResourceExhausted:
    error = ResourceExhausted(message, retry_after_seconds=_retry_after(now, until))
    error.metadata["limit"] = limit
    return error


class AbuseLimits:
    """Send limits and lockouts, in the caller's transaction."""

    def __init__(
        self,
        *,
        address_secret: bytes,
        sends: SendPolicy | None = None,
        lockouts: LockoutPolicy | None = None,
        clock: Callable[[], datetime] = lambda: datetime.now(UTC),
    ):
        if len(address_secret) < 16:
            raise ValueError("address_secret must be at least 16 bytes")
        self._secret = address_secret
        self.sends = sends or SendPolicy()
        self.lockouts = lockouts or LockoutPolicy()
        self._clock = clock

    def address_key(self, client_address: str | None) -> bytes | None:
        """A keyed hash of the address (IPv6: of its /64); None when there is no usable address."""
        normalised = normalise_client_address(client_address) if client_address else None
        if normalised is None:
            return None
        ip = ipaddress.ip_address(normalised)
        if ip.version == 6 and ip.ipv4_mapped is None:
            normalised = str(ipaddress.ip_network(f"{ip}/64", strict=False))
        elif ip.version == 6 and ip.ipv4_mapped is not None:
            normalised = str(ip.ipv4_mapped)
        return hmac.new(self._secret, b"client-address\x00" + normalised.encode(), hashlib.sha256).digest()

    # ------------------------------------------------------------------ send limits

    async def check_and_record_send(
        self, conn: AsyncConnection, *, phone_key: bytes, client_address: str | None
    ) -> SendAllowance:
        """Records one code send, or raises ResourceExhausted naming the limit (nothing recorded)."""
        if not phone_key:
            raise ValueError("phone_key must not be empty")
        now = self._clock()
        subjects = [("phone", phone_key)]
        address_key = self.address_key(client_address)
        if address_key is not None:
            subjects.append(("address", address_key))
        recent: dict[str, list[datetime]] = {}
        for scope, subject in sorted(subjects):
            recent[scope] = await self._lock_subject(conn, scope, subject, now)
        allowance, kept = self.allow_send(recent, now)
        for scope, subject in subjects:
            await conn.execute(
                update(send_limits)
                .where(send_limits.c.scope == scope, send_limits.c.subject == subject)
                .values(recent=kept[scope], updated_at=now)
            )
        return allowance

    def allow_send(
        self, recent: Mapping[str, Sequence[datetime]], now: datetime
    ) -> tuple[SendAllowance, dict[str, list[datetime]]]:
        """The send limits' rule, pure: given the send times each subject holds ("phone", and
        "address" when known), the allowance and the times each must hold afterwards; or
        ResourceExhausted naming the limit (then nothing is to be recorded)."""
        window = timedelta(hours=1)
        kept_before = {scope: sorted(t for t in times if t > now - window) for scope, times in recent.items()}
        phone_sends = kept_before["phone"]
        refusals: list[tuple[datetime, str, str]] = []
        if phone_sends and phone_sends[-1] + self.sends.phone_interval > now:
            refusals.append(
                (
                    phone_sends[-1] + self.sends.phone_interval,
                    "phone_interval",
                    f"a code was sent to this number less than {self.sends.phone_interval.total_seconds():.0f} s ago",
                )
            )
        if len(phone_sends) >= self.sends.phone_per_hour:
            refusals.append(
                (
                    phone_sends[len(phone_sends) - self.sends.phone_per_hour] + window,
                    "phone_hourly",
                    f"at most {self.sends.phone_per_hour} codes an hour may go to one number",
                )
            )
        if "address" in kept_before:
            address_sends = kept_before["address"]
            if len(address_sends) >= self.sends.address_per_hour:
                refusals.append(
                    (
                        address_sends[len(address_sends) - self.sends.address_per_hour] + window,
                        "address_hourly",
                        f"at most {self.sends.address_per_hour} codes an hour may be requested from one client address",
                    )
                )
        if refusals:
            until, limit, message = max(refusals)
            raise _exhausted(limit, f"code sending is rate limited: {message}", now, until)
        kept = {scope: [*times, now] for scope, times in kept_before.items()}
        phone_sends = kept["phone"]
        next_at = now + self.sends.phone_interval
        if len(phone_sends) >= self.sends.phone_per_hour:
            next_at = max(next_at, phone_sends[len(phone_sends) - self.sends.phone_per_hour] + window)
        return SendAllowance(next_send_at=next_at), kept

    async def _lock_subject(self, conn: AsyncConnection, scope: str, subject: bytes, now: datetime) -> list[datetime]:
        # The upsert takes the row lock (and creates the row when new) in one statement: a
        # concurrent sender for the same subject waits here until this transaction ends,
        # then sees what it recorded.
        insert = pg_insert(send_limits).values(scope=scope, subject=subject, recent=[], updated_at=now)
        stmt = insert.on_conflict_do_update(
            index_elements=[send_limits.c.scope, send_limits.c.subject],
            set_={"updated_at": send_limits.c.updated_at},
        ).returning(send_limits.c.recent)
        return list((await conn.execute(stmt)).scalar_one() or [])

    async def prune_send_limits(self, conn: AsyncConnection, *, idle_for: timedelta = timedelta(hours=2)) -> int:
        """Deletes subjects without a send inside any window; returns how many."""
        result = await conn.execute(delete(send_limits).where(send_limits.c.updated_at < self._clock() - idle_for))
        return result.rowcount or 0

    # ------------------------------------------------------------------ lockouts

    async def check_not_locked(
        self, conn: AsyncConnection, *, tenant_id: str, user_id: str, client_address: str | None
    ) -> None:
        """Raises ResourceExhausted while confirmations for this account from this address are locked."""
        now = self._clock()
        key = self.address_key(client_address) or UNKNOWN_ADDRESS
        rows = await self._rows(conn, tenant_id, user_id, [key, ACCOUNT_WIDE], lock=False)
        pair, account = rows.get(key), rows.get(ACCOUNT_WIDE)
        self.refuse_if_locked(
            FailureCounter.of(pair) if pair is not None else None,
            FailureCounter.of(account) if account is not None else None,
            now,
        )

    def refuse_if_locked(self, pair: FailureCounter | None, account: FailureCounter | None, now: datetime) -> None:
        """The lockout rule, pure: ResourceExhausted while the pair's lock or (for an address not
        trusted) the account's lock holds."""
        if pair is not None and pair.locked_until is not None and pair.locked_until > now:
            raise _exhausted(
                "address_lockout",
                "code confirmation is locked for this account from this client address after repeated failures",
                now,
                pair.locked_until,
            )
        if (
            account is not None
            and account.locked_until is not None
            and account.locked_until > now
            and not self.trusted(pair, now)
        ):
            raise _exhausted(
                "account_lockout",
                "code confirmation is locked for this account after repeated failures",
                now,
                account.locked_until,
            )

    async def record_failure(
        self, conn: AsyncConnection, *, tenant_id: str, user_id: str, client_address: str | None
    ) -> FailureRecorded:
        """Counts one failed confirmation; escalates to a lockout at a threshold."""
        now = self._clock()
        key = self.address_key(client_address) or UNKNOWN_ADDRESS
        pair_row = FailureCounter.of(await self._upsert_locked(conn, tenant_id, user_id, key, now))
        account_row = FailureCounter.of(await self._upsert_locked(conn, tenant_id, user_id, ACCOUNT_WIDE, now))
        pair = await self._count(conn, tenant_id, user_id, key, pair_row, self.lockouts.per_address_threshold, now)
        account = await self._count(
            conn, tenant_id, user_id, ACCOUNT_WIDE, account_row, self.lockouts.per_account_threshold, now
        )
        return self.failure_recorded(pair_row, pair.state, account.state, now)

    def failure_recorded(
        self, pair_before: FailureCounter, pair: LockoutState, account: LockoutState, now: datetime
    ) -> FailureRecorded:
        """What a failure did, from the pair's counters before it and both counters after it."""
        waits = [s.locked_until for s in (pair,) if s.locked_at(now)]
        if account.locked_at(now) and not self.trusted(pair_before, now):
            waits.append(account.locked_until)
        locked_until = max((w for w in waits if w is not None), default=None)
        remaining = 0 if locked_until else self.lockouts.per_address_threshold - pair.failed_attempts
        return FailureRecorded(pair, account, locked_until, max(0, remaining))

    def counted(self, counter: FailureCounter, threshold: int, now: datetime) -> FailureCounter:
        """One more failure on `counter`, pure: escalates at `threshold`; a locked counter does not count."""
        if counter.locked_at(now):
            return counter
        level, failed, until = counter.level, counter.failed_attempts, counter.locked_until
        last = counter.last_failure_at
        if last is None or last <= now - self.lockouts.failure_window:
            failed = 0
        if level and until is not None and until <= now - self.lockouts.level_reset_after:
            level = 0
        failed += 1
        if failed >= threshold:
            level += 1
            until = now + self.lockouts.duration(level)
            failed = 0
        return replace(counter, failed_attempts=failed, level=level, locked_until=until, last_failure_at=now)

    def succeeded(self, counter: FailureCounter | None, now: datetime) -> FailureCounter:
        """A counter after a confirmed code, pure: reset, and the address trusted from now."""
        return FailureCounter(last_failure_at=counter.last_failure_at if counter else None, last_success_at=now)

    async def record_success(
        self, conn: AsyncConnection, *, tenant_id: str, user_id: str, client_address: str | None
    ) -> None:
        """Resets this address's and the account-wide counters; trusts the address for the account."""
        now = self._clock()
        key = self.address_key(client_address) or UNKNOWN_ADDRESS
        for address_key in (key, ACCOUNT_WIDE):
            stmt = pg_insert(verification_failures).values(
                tenant_id=tenant_id, user_id=user_id, address_key=address_key, last_success_at=now
            )
            await conn.execute(
                stmt.on_conflict_do_update(
                    index_elements=[
                        verification_failures.c.tenant_id,
                        verification_failures.c.user_id,
                        verification_failures.c.address_key,
                    ],
                    set_={"failed_attempts": 0, "level": 0, "locked_until": None, "last_success_at": now},
                )
            )

    async def account_lockout(self, conn: AsyncConnection, *, tenant_id: str, user_id: str) -> LockoutState | None:
        """The account-wide counters (for Account.lockout); None when there are none."""
        rows = await self._rows(conn, tenant_id, user_id, [ACCOUNT_WIDE], lock=False)
        row = rows.get(ACCOUNT_WIDE)
        if row is None:
            return None
        return LockoutState(row["failed_attempts"], row["level"], row["locked_until"])

    async def unlock(self, conn: AsyncConnection, *, tenant_id: str, user_id: str) -> UnlockResult:
        """Clears every lockout and counter of the account (admin unlock).

        The caller checks who may do this and writes the ledger entry with who and why.
        """
        now = self._clock()
        c = verification_failures.c
        rows = (
            await conn.execute(
                delete(verification_failures)
                .where(c.tenant_id == tenant_id, c.user_id == user_id)
                .returning(c.address_key, c.failed_attempts, c.level, c.locked_until, c.last_success_at)
            )
        ).all()
        # Successes are kept: an address the user confirmed from stays trusted after an unlock.
        for row in rows:
            if row.last_success_at is not None:
                await conn.execute(
                    verification_failures.insert().values(
                        tenant_id=tenant_id,
                        user_id=user_id,
                        address_key=row.address_key,
                        last_success_at=row.last_success_at,
                    )
                )
        account = next((r for r in rows if bytes(r.address_key) == ACCOUNT_WIDE), None)
        previous = (
            LockoutState(account.failed_attempts, account.level, account.locked_until) if account else LockoutState()
        )
        was_locked = any(r.locked_until is not None and r.locked_until > now for r in rows)
        return UnlockResult(was_locked, previous, len(rows))

    # ------------------------------------------------------------------ helpers

    def trusted(self, pair: FailureCounter | None, now: datetime) -> bool:
        """Whether the pair's address confirmed a code for the account recently enough to pass its lock."""
        return (
            pair is not None
            and pair.last_success_at is not None
            and pair.last_success_at > now - self.lockouts.trusted_address_for
        )

    async def _rows(
        self, conn: AsyncConnection, tenant_id: str, user_id: str, keys: list[bytes], *, lock: bool
    ) -> dict[bytes, Any]:
        c = verification_failures.c
        stmt = select(verification_failures).where(
            and_(c.tenant_id == tenant_id, c.user_id == user_id, c.address_key.in_(keys))
        )
        if lock:
            stmt = stmt.with_for_update()
        return {bytes(r.address_key): r._mapping for r in (await conn.execute(stmt)).all()}

    async def _upsert_locked(
        self, conn: AsyncConnection, tenant_id: str, user_id: str, address_key: bytes, now: datetime
    ) -> Any:
        c = verification_failures.c
        insert = pg_insert(verification_failures).values(tenant_id=tenant_id, user_id=user_id, address_key=address_key)
        stmt = insert.on_conflict_do_update(
            index_elements=[c.tenant_id, c.user_id, c.address_key], set_={"level": c.level}
        ).returning(*verification_failures.c)
        return (await conn.execute(stmt)).one()._mapping

    async def _count(
        self,
        conn: AsyncConnection,
        tenant_id: str,
        user_id: str,
        address_key: bytes,
        before: FailureCounter,
        threshold: int,
        now: datetime,
    ) -> FailureCounter:
        if before.locked_at(now):
            return before  # locked: failures meanwhile do not count
        after = self.counted(before, threshold, now)
        c = verification_failures.c
        await conn.execute(
            update(verification_failures)
            .where(c.tenant_id == tenant_id, c.user_id == user_id, c.address_key == address_key)
            .values(
                failed_attempts=after.failed_attempts,
                level=after.level,
                locked_until=after.locked_until,
                last_failure_at=after.last_failure_at,
            )
        )
        return after
