"""A clock the test moves by hand, injected wherever production code takes
`clock: Callable[[], datetime]`, so that expiry and windows are tested without
sleeping."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

START = datetime(2026, 12, 1, 9, 0, tzinfo=UTC)


class FakeClock:
    """Reads `now` when called; moves only by `advance`, by setting `now`, or by `tick` per reading.

    `now` is a plain attribute (tests read it, compare with it and set it);
    calling the clock is what the code under test does. With a `tick`, every
    reading moves the clock first, as a real clock would at least, so two
    readings are never equal.
    """

    def __init__(self, now: datetime = START, *, tick: timedelta = timedelta(0)):
        if now.tzinfo is None:
            raise ValueError("a FakeClock keeps aware datetimes")
        self.now = now
        self.tick = tick

    def __call__(self) -> datetime:
        self.now += self.tick
        return self.now

    def advance(self, delta: timedelta = timedelta(0), /, **parts: float) -> datetime:
        """Moves by `delta` and/or by timedelta keywords (`advance(minutes=5, seconds=1)`); returns the new now."""
        self.now += delta + timedelta(**parts)
        return self.now

    def __repr__(self) -> str:
        return f"FakeClock({self.now.isoformat()})"
