"""One-time codes and abuse limits against a real PostgreSQL (the identity
role, its migrated schema): expiry, single use, the attempt limit, the hash
at rest, sliding-window send limits per phone and per client address with
retry-after, escalating and capped lockouts, unlock, and two replicas
sending at once."""

from __future__ import annotations

import asyncio
import base64
import hashlib
import logging
import pathlib
import secrets
import uuid
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta

import pytest
from sqlalchemy import func, select, text
from sqlalchemy.ext.asyncio import AsyncEngine

from avgate.kernel.db import create_engine_for
from avgate.kernel.errors import InvalidArgument, ResourceExhausted
from services.identity.codes import CodeOutcome, HashKeyRing, OneTimeCodes
from services.identity.housekeeping import Housekeeping
from services.identity.limits import AbuseLimits, LockoutPolicy, SendPolicy
from services.identity.models import send_limits, verification_codes
from tests.conftest import Database
from tests.support import FakeClock

PHONE = "+8613812345678"


@pytest.fixture(scope="module")
async def engine(database: Database) -> AsyncIterator[AsyncEngine]:
    engine = create_engine_for(database.url_for("identity"), pool_size=4)
    yield engine
    await engine.dispose()


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock(datetime(2026, 12, 10, 8, 0, tzinfo=UTC))


@pytest.fixture
def keys(tmp_path: pathlib.Path) -> HashKeyRing:
    path = tmp_path / "codes.key"
    path.write_text(f"k1 {base64.b64encode(secrets.token_bytes(32)).decode()}\n")
    return HashKeyRing.load(path)


@pytest.fixture
def codes(keys: HashKeyRing, clock: FakeClock) -> OneTimeCodes:
    return OneTimeCodes(keys, ttl=timedelta(minutes=5), max_attempts=5, clock=clock)


def phone_index() -> bytes:
    # Stands for the vault's blind index of a number: fresh per test so tests do not share limits.
    return hashlib.sha256(uuid.uuid4().bytes).digest()


def wrong(code: str) -> str:
    return f"{(int(code) + 1) % 1_000_000:06d}"


class TestOneTimeCodes:
    async def test_the_right_code_confirms_once(self, engine: AsyncEngine, codes: OneTimeCodes) -> None:
        flow, index = str(uuid.uuid4()), phone_index()
        async with engine.begin() as conn:
            issued = await codes.issue(conn, flow_id=flow, phone_index=index)
        assert len(issued.code) == 6 and issued.code.isdigit()
        async with engine.begin() as conn:
            first = await codes.confirm(conn, flow_id=flow, phone_index=index, code=issued.code)
        async with engine.begin() as conn:
            again = await codes.confirm(conn, flow_id=flow, phone_index=index, code=issued.code)
        assert first.outcome is CodeOutcome.CONFIRMED
        assert again.outcome is CodeOutcome.NO_ACTIVE_CODE

    async def test_an_expired_code_is_refused(self, engine: AsyncEngine, codes: OneTimeCodes, clock: FakeClock) -> None:
        flow, index = str(uuid.uuid4()), phone_index()
        async with engine.begin() as conn:
            issued = await codes.issue(conn, flow_id=flow, phone_index=index)
        clock.advance(minutes=5, seconds=1)
        async with engine.begin() as conn:
            result = await codes.confirm(conn, flow_id=flow, phone_index=index, code=issued.code)
        assert result.outcome is CodeOutcome.EXPIRED

    async def test_a_code_dies_after_its_attempts(self, engine: AsyncEngine, codes: OneTimeCodes) -> None:
        flow, index = str(uuid.uuid4()), phone_index()
        async with engine.begin() as conn:
            issued = await codes.issue(conn, flow_id=flow, phone_index=index)
        remaining = []
        for _ in range(5):
            async with engine.begin() as conn:
                result = await codes.confirm(conn, flow_id=flow, phone_index=index, code=wrong(issued.code))
            assert result.outcome is CodeOutcome.WRONG
            remaining.append(result.remaining_attempts)
        assert remaining == [4, 3, 2, 1, 0]
        async with engine.begin() as conn:
            late = await codes.confirm(conn, flow_id=flow, phone_index=index, code=issued.code)
        assert late.outcome is CodeOutcome.NO_ACTIVE_CODE

    async def test_a_new_code_supersedes_the_previous_one(self, engine: AsyncEngine, codes: OneTimeCodes) -> None:
        flow, index = str(uuid.uuid4()), phone_index()
        async with engine.begin() as conn:
            old = await codes.issue(conn, flow_id=flow, phone_index=index)
            new = await codes.issue(conn, flow_id=flow, phone_index=index)
        if old.code != new.code:
            async with engine.begin() as conn:
                stale = await codes.confirm(conn, flow_id=flow, phone_index=index, code=old.code)
            assert stale.outcome is CodeOutcome.WRONG
        async with engine.begin() as conn:
            fresh = await codes.confirm(conn, flow_id=flow, phone_index=index, code=new.code)
        assert fresh.outcome is CodeOutcome.CONFIRMED

    async def test_a_code_is_bound_to_its_phone(self, engine: AsyncEngine, codes: OneTimeCodes) -> None:
        flow = str(uuid.uuid4())
        async with engine.begin() as conn:
            issued = await codes.issue(conn, flow_id=flow, phone_index=phone_index())
        async with engine.begin() as conn:
            result = await codes.confirm(conn, flow_id=flow, phone_index=phone_index(), code=issued.code)
        assert result.outcome is CodeOutcome.NO_ACTIVE_CODE

    async def test_a_malformed_code_is_invalid_and_costs_no_attempt(
        self, engine: AsyncEngine, codes: OneTimeCodes
    ) -> None:
        flow, index = str(uuid.uuid4()), phone_index()
        async with engine.begin() as conn:
            issued = await codes.issue(conn, flow_id=flow, phone_index=index)
        with pytest.raises(InvalidArgument) as refused:
            async with engine.begin() as conn:
                await codes.confirm(conn, flow_id=flow, phone_index=index, code="12a4567")
        assert refused.value.violations[0].field == "code"
        assert "12a4567" not in str(refused.value)
        async with engine.begin() as conn:
            result = await codes.confirm(conn, flow_id=flow, phone_index=index, code=wrong(issued.code))
        assert result.remaining_attempts == 4

    async def test_only_a_keyed_hash_is_at_rest(self, engine: AsyncEngine, codes: OneTimeCodes) -> None:
        flow, index = str(uuid.uuid4()), phone_index()
        async with engine.begin() as conn:
            issued = await codes.issue(conn, flow_id=flow, phone_index=index)
            row = (
                await conn.execute(
                    text(
                        "select c::text as whole, c.code_hash from identity.verification_codes c where c.flow_id = :f"
                    ),
                    {"f": flow},
                )
            ).one()
        assert issued.code not in row.whole
        assert bytes(row.code_hash) != hashlib.sha256(issued.code.encode()).digest()
        assert issued.code not in repr(issued)

    async def test_a_code_hashed_under_a_rotated_key_still_confirms(
        self, engine: AsyncEngine, keys: HashKeyRing, clock: FakeClock
    ) -> None:
        flow, index = str(uuid.uuid4()), phone_index()
        async with engine.begin() as conn:
            issued = await OneTimeCodes(keys, clock=clock).issue(conn, flow_id=flow, phone_index=index)
        rotated = HashKeyRing({**keys.keys, "k2": secrets.token_bytes(32)}, "k2")
        async with engine.begin() as conn:
            result = await OneTimeCodes(rotated, clock=clock).confirm(
                conn, flow_id=flow, phone_index=index, code=issued.code
            )
        assert result.confirmed

    async def test_concurrent_wrong_guesses_each_count(self, engine: AsyncEngine, codes: OneTimeCodes) -> None:
        flow, index = str(uuid.uuid4()), phone_index()
        async with engine.begin() as conn:
            issued = await codes.issue(conn, flow_id=flow, phone_index=index)

        async def guess() -> int:
            async with engine.begin() as conn:
                return (
                    await codes.confirm(conn, flow_id=flow, phone_index=index, code=wrong(issued.code))
                ).remaining_attempts

        remaining = await asyncio.gather(*(guess() for _ in range(4)))
        assert sorted(remaining) == [1, 2, 3, 4]


@pytest.fixture
def limits(clock: FakeClock) -> AbuseLimits:
    return AbuseLimits(
        address_secret=secrets.token_bytes(32),
        sends=SendPolicy(phone_interval=timedelta(seconds=60), phone_per_hour=5, address_per_hour=20),
        lockouts=LockoutPolicy(per_address_threshold=5, per_account_threshold=20),
        clock=clock,
    )


def a_client_address() -> str:
    return f"2001:db8:{secrets.randbelow(65535):x}::1"


class TestSendLimits:
    async def test_one_send_a_minute_per_phone_with_retry_after(
        self, engine: AsyncEngine, limits: AbuseLimits, clock: FakeClock
    ) -> None:
        index = phone_index()
        async with engine.begin() as conn:
            allowed = await limits.check_and_record_send(conn, phone_key=index, client_address=a_client_address())
        assert allowed.next_send_at == clock.now + timedelta(seconds=60)
        clock.advance(seconds=20)
        with pytest.raises(ResourceExhausted) as refused:
            async with engine.begin() as conn:
                await limits.check_and_record_send(conn, phone_key=index, client_address=a_client_address())
        assert refused.value.retry_after_seconds == 40
        assert refused.value.metadata["limit"] == "phone_interval"
        assert PHONE not in str(refused.value)
        clock.advance(seconds=40)
        async with engine.begin() as conn:
            await limits.check_and_record_send(conn, phone_key=index, client_address=a_client_address())

    async def test_five_an_hour_per_phone(self, engine: AsyncEngine, limits: AbuseLimits, clock: FakeClock) -> None:
        index = phone_index()
        start = clock.now
        for _ in range(5):
            async with engine.begin() as conn:
                await limits.check_and_record_send(conn, phone_key=index, client_address=a_client_address())
            clock.advance(minutes=2)
        with pytest.raises(ResourceExhausted) as refused:
            async with engine.begin() as conn:
                await limits.check_and_record_send(conn, phone_key=index, client_address=a_client_address())
        assert refused.value.metadata["limit"] == "phone_hourly"
        assert refused.value.retry_after_seconds == (start + timedelta(hours=1) - clock.now).total_seconds()
        clock.now = start + timedelta(hours=1, seconds=1)
        async with engine.begin() as conn:
            await limits.check_and_record_send(conn, phone_key=index, client_address=a_client_address())

    async def test_twenty_an_hour_per_client_address(
        self, engine: AsyncEngine, limits: AbuseLimits, clock: FakeClock
    ) -> None:
        address = a_client_address()
        for _ in range(20):
            async with engine.begin() as conn:
                await limits.check_and_record_send(conn, phone_key=phone_index(), client_address=address)
        with pytest.raises(ResourceExhausted) as refused:
            async with engine.begin() as conn:
                await limits.check_and_record_send(conn, phone_key=phone_index(), client_address=address)
        assert refused.value.metadata["limit"] == "address_hourly"
        assert refused.value.retry_after_seconds == 3600
        assert address not in str(refused.value)

    async def test_an_ipv6_prefix_counts_as_one_address(self, limits: AbuseLimits) -> None:
        assert limits.address_key("2001:db8:1:2::1") == limits.address_key("2001:db8:1:2:ffff::9")
        assert limits.address_key("2001:db8:1:2::1") != limits.address_key("2001:db8:1:3::1")
        assert limits.address_key("::ffff:198.51.100.7") == limits.address_key("198.51.100.7")
        assert limits.address_key("not an address") is None

    async def test_a_refused_send_is_not_recorded(
        self, engine: AsyncEngine, limits: AbuseLimits, clock: FakeClock
    ) -> None:
        index = phone_index()
        async with engine.begin() as conn:
            await limits.check_and_record_send(conn, phone_key=index, client_address=None)
        for _ in range(10):
            clock.advance(seconds=5)
            with pytest.raises(ResourceExhausted):
                async with engine.begin() as conn:
                    await limits.check_and_record_send(conn, phone_key=index, client_address=None)
        clock.advance(seconds=10)  # 60 s after the one recorded send
        async with engine.begin() as conn:
            await limits.check_and_record_send(conn, phone_key=index, client_address=None)

    async def test_no_phone_or_address_in_the_table(self, engine: AsyncEngine, limits: AbuseLimits) -> None:
        address = "203.0.113.77"
        async with engine.begin() as conn:
            await limits.check_and_record_send(conn, phone_key=phone_index(), client_address=address)
            dump = (
                await conn.execute(text("select string_agg(s::text, ' ') from identity.send_limits s"))
            ).scalar_one()
        assert address not in dump and address.encode().hex() not in dump

    async def test_two_replicas_sending_at_once_cannot_exceed_the_limit(
        self, database: Database, limits: AbuseLimits
    ) -> None:
        index = phone_index()
        replicas = [create_engine_for(database.url_for("identity"), pool_size=5) for _ in range(2)]
        try:

            async def send(engine: AsyncEngine) -> bool:
                try:
                    async with engine.begin() as conn:
                        await limits.check_and_record_send(conn, phone_key=index, client_address=a_client_address())
                        await asyncio.sleep(0.05)  # widen the window a check-then-insert race would need
                    return True
                except ResourceExhausted:
                    return False

            results = await asyncio.gather(*(send(replicas[i % 2]) for i in range(10)))
        finally:
            for engine in replicas:
                await engine.dispose()
        assert results.count(True) == 1


class TestLockouts:
    async def fail(self, engine: AsyncEngine, limits: AbuseLimits, user: str, address: str | None, times: int = 1):
        recorded = None
        for _ in range(times):
            async with engine.begin() as conn:
                await limits.check_not_locked(conn, tenant_id="t1", user_id=user, client_address=address)
                recorded = await limits.record_failure(conn, tenant_id="t1", user_id=user, client_address=address)
        return recorded

    async def check(self, engine: AsyncEngine, limits: AbuseLimits, user: str, address: str | None) -> None:
        async with engine.begin() as conn:
            await limits.check_not_locked(conn, tenant_id="t1", user_id=user, client_address=address)

    async def test_lockouts_escalate_and_are_capped(
        self, engine: AsyncEngine, limits: AbuseLimits, clock: FakeClock
    ) -> None:
        user, address = str(uuid.uuid4()), a_client_address()
        lengths = []
        for _ in range(6):
            recorded = await self.fail(engine, limits, user, address, times=5)
            assert recorded is not None and recorded.locked_until is not None
            lengths.append((recorded.locked_until - clock.now).total_seconds())
            with pytest.raises(ResourceExhausted) as refused:
                await self.check(engine, limits, user, address)
            assert refused.value.retry_after_seconds == lengths[-1]
            assert refused.value.metadata["limit"] == "address_lockout"
            clock.now = recorded.locked_until
        assert lengths == [60, 300, 900, 3600, 3600, 3600]

    async def test_remaining_attempts_count_down(self, engine: AsyncEngine, limits: AbuseLimits) -> None:
        user, address = str(uuid.uuid4()), a_client_address()
        seen = [(await self.fail(engine, limits, user, address)).remaining_before_lockout for _ in range(5)]  # type: ignore[union-attr]
        assert seen == [4, 3, 2, 1, 0]

    async def test_someone_elses_failures_do_not_lock_the_victim_out(
        self, engine: AsyncEngine, limits: AbuseLimits
    ) -> None:
        user = str(uuid.uuid4())
        await self.fail(engine, limits, user, "203.0.113.10", times=5)
        with pytest.raises(ResourceExhausted):
            await self.check(engine, limits, user, "203.0.113.10")
        await self.check(engine, limits, user, "198.51.100.20")  # the victim's own address

    async def test_many_addresses_lock_the_account_but_not_a_trusted_address(
        self, engine: AsyncEngine, limits: AbuseLimits
    ) -> None:
        user = str(uuid.uuid4())
        async with engine.begin() as conn:
            await limits.record_success(conn, tenant_id="t1", user_id=user, client_address="198.51.100.20")
        for n in range(5):
            await self.fail(engine, limits, user, f"203.0.113.{n + 1}", times=4)  # 20 failures, no address at 5
        with pytest.raises(ResourceExhausted) as refused:
            await self.check(engine, limits, user, "192.0.2.99")
        assert refused.value.metadata["limit"] == "account_lockout"
        await self.check(engine, limits, user, "198.51.100.20")
        async with engine.begin() as conn:
            state = await limits.account_lockout(conn, tenant_id="t1", user_id=user)
        assert state is not None and state.level == 1

    async def test_success_resets_the_count(self, engine: AsyncEngine, limits: AbuseLimits) -> None:
        user, address = str(uuid.uuid4()), a_client_address()
        await self.fail(engine, limits, user, address, times=4)
        async with engine.begin() as conn:
            await limits.record_success(conn, tenant_id="t1", user_id=user, client_address=address)
        recorded = await self.fail(engine, limits, user, address)
        assert recorded is not None and recorded.remaining_before_lockout == 4

    async def test_admin_unlock_clears_the_lockout_and_says_what_changed(
        self, engine: AsyncEngine, limits: AbuseLimits
    ) -> None:
        user, address = str(uuid.uuid4()), a_client_address()
        await self.fail(engine, limits, user, address, times=5)
        async with engine.begin() as conn:
            result = await limits.unlock(conn, tenant_id="t1", user_id=user)
        assert result.was_locked and result.cleared_counters == 2
        assert result.previous_account_state.failed_attempts == 5
        await self.check(engine, limits, user, address)
        async with engine.begin() as conn:
            again = await limits.unlock(conn, tenant_id="t1", user_id=user)
        assert not again.was_locked and again.cleared_counters == 0

    async def test_lockouts_are_per_tenant(self, engine: AsyncEngine, limits: AbuseLimits) -> None:
        user, address = str(uuid.uuid4()), a_client_address()
        await self.fail(engine, limits, user, address, times=5)
        async with engine.begin() as conn:
            await limits.check_not_locked(conn, tenant_id="t2", user_id=user, client_address=address)

    async def test_refusals_log_no_address(
        self, engine: AsyncEngine, limits: AbuseLimits, caplog: pytest.LogCaptureFixture
    ) -> None:
        caplog.set_level(logging.DEBUG)
        user, address = str(uuid.uuid4()), "203.0.113.55"
        with pytest.raises(ResourceExhausted) as refused:
            await self.fail(engine, limits, user, address, times=6)
        assert address not in caplog.text and address not in str(refused.value)


class TestHousekeeping:
    async def test_finished_codes_and_idle_counters_are_deleted_on_schedule(
        self, engine: AsyncEngine, codes: OneTimeCodes, limits: AbuseLimits, clock: FakeClock
    ) -> None:
        flow, index = str(uuid.uuid4()), phone_index()
        async with engine.begin() as conn:
            await codes.issue(conn, flow_id=flow, phone_index=index)
            await limits.check_and_record_send(conn, phone_key=index, client_address=a_client_address())
        housekeeping = Housekeeping(engine, codes, limits)

        async def kept() -> tuple[int, int]:
            async with engine.connect() as conn:
                code_rows = await conn.execute(
                    select(func.count()).select_from(verification_codes).where(verification_codes.c.flow_id == flow)
                )
                limit_rows = await conn.execute(
                    select(func.count()).select_from(send_limits).where(send_limits.c.subject == index)
                )
                return int(code_rows.scalar_one()), int(limit_rows.scalar_one())

        clock.advance(minutes=30)  # the code has expired, the counter is in its hourly window
        await housekeeping.run_once()
        assert await kept() == (1, 1)
        clock.advance(days=1)  # a day past the code's expiry, hours past the last send
        swept = await housekeeping.run_once()
        assert await kept() == (0, 0)
        assert swept.codes >= 1 and swept.send_limits >= 1
