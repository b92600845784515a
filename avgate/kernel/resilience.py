"""Calling a dependency that may fail: a retry budget, jittered backoff, a circuit breaker, a concurrency cap.

Shared by the gateway's upstream calls and by anything else that calls a
dependency over the network (screening's Triton client will), so every
caller backs off, sheds and recovers the same way. The numbers follow
Envoy's defaults, which production gateways have tuned for years:

- `RetryBudget`: retries may be at most 20% of the requests in flight, and
  never fewer than 3 at once, so retries cannot multiply an overload.
- `backoff_delays`: full jitter from 25 ms, doubling, capped at 250 ms.
- `CircuitBreaker`: opens after consecutive failures, refuses at once while
  open, lets one trial call through after a pause, and closes when it
  succeeds; a failing trial opens it again.
- `ConcurrencyLimit`: bounded in-flight calls (per upstream, per principal).

Everything takes an injected monotonic clock and random source, so tests step
time instead of sleeping. Nothing here knows gRPC: callers decide what counts
as a failure (a transport failure, never the dependency's answer to bad input).
"""

from __future__ import annotations

import enum
import random
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass


class RetryBudget:
    """Retries allowed while active retries stay under `ratio` of active requests (at least `min_retries`)."""

    def __init__(self, ratio: float = 0.2, min_retries: int = 3):
        if not 0 <= ratio <= 1 or min_retries < 0:
            raise ValueError("ratio must be within [0, 1] and min_retries not negative")
        self._ratio = ratio
        self._min = min_retries
        self.active_requests = 0
        self.active_retries = 0

    @contextmanager
    def request(self) -> Iterator[None]:
        """Counts one request (with all its attempts) as in flight."""
        self.active_requests += 1
        try:
            yield
        finally:
            self.active_requests -= 1

    def allowance(self) -> int:
        return max(self._min, int(self.active_requests * self._ratio))

    @contextmanager
    def retry(self) -> Iterator[bool]:
        """Yields whether one more attempt may be made now; counts it as an active retry if so."""
        if self.active_retries >= self.allowance():
            yield False
            return
        self.active_retries += 1
        try:
            yield True
        finally:
            self.active_retries -= 1


def backoff_delays(base: float = 0.025, cap: float = 0.25, rng: Callable[[], float] = random.random) -> Iterator[float]:
    """Full-jitter delays: uniform over [0, min(cap, base * 2**n)] for attempt n = 0, 1, 2, ..."""
    n = 0
    while True:
        yield rng() * min(cap, base * (2**n))
        n += 1


class BreakerState(enum.Enum):
    CLOSED = "closed"
    OPEN = "open"
    HALF_OPEN = "half_open"


@dataclass(frozen=True)
class BreakerSnapshot:
    """What an operator sees of a breaker (GetAggregateHealth)."""

    state: BreakerState
    consecutive_failures: int
    opened_for_seconds: float
    trips: int


class CircuitBreaker:
    """Closed → (failure_threshold consecutive failures) → open → (open_seconds) → half open →
    one trial: success closes, failure opens again."""

    def __init__(
        self,
        failure_threshold: int = 5,
        open_seconds: float = 5.0,
        clock: Callable[[], float] = time.monotonic,
    ):
        if failure_threshold < 1 or open_seconds <= 0:
            raise ValueError("failure_threshold must be at least 1 and open_seconds positive")
        self._threshold = failure_threshold
        self._open_seconds = open_seconds
        self._clock = clock
        self._state = BreakerState.CLOSED
        self._failures = 0
        self._opened_at = 0.0
        self._trial_in_flight = False
        self.trips = 0

    @property
    def state(self) -> BreakerState:
        if self._state is BreakerState.OPEN and self._clock() - self._opened_at >= self._open_seconds:
            return BreakerState.HALF_OPEN
        return self._state

    def retry_after(self) -> float:
        """Seconds until a trial call may go (0 when calls may go now)."""
        if self.state is not BreakerState.OPEN:
            return 0.0
        return max(0.0, self._open_seconds - (self._clock() - self._opened_at))

    def allow(self) -> bool:
        """Whether a call may go now; in half-open state only one trial at a time."""
        state = self.state
        if state is BreakerState.CLOSED:
            return True
        if state is BreakerState.OPEN:
            return False
        if self._trial_in_flight:
            return False
        self._state = BreakerState.HALF_OPEN
        self._trial_in_flight = True
        return True

    def record_success(self) -> None:
        self._failures = 0
        self._trial_in_flight = False
        self._state = BreakerState.CLOSED

    def record_failure(self) -> None:
        self._failures += 1
        was_trial = self._trial_in_flight
        self._trial_in_flight = False
        if was_trial or self._failures >= self._threshold:
            if self._state is not BreakerState.OPEN or was_trial:
                self.trips += 1
            self._state = BreakerState.OPEN
            self._opened_at = self._clock()

    def record_abandoned(self) -> None:
        """A call that ended neither way (cancelled by its caller): frees a half-open trial slot."""
        self._trial_in_flight = False

    def snapshot(self) -> BreakerSnapshot:
        state = self.state
        opened = self._clock() - self._opened_at if state is not BreakerState.CLOSED else 0.0
        return BreakerSnapshot(state, self._failures, opened, self.trips)


class ConcurrencyLimit:
    """At most `limit` calls in flight; `try_acquire` refuses instead of queueing (shed, don't pile up)."""

    def __init__(self, limit: int):
        if limit < 1:
            raise ValueError("limit must be at least 1")
        self.limit = limit
        self.in_flight = 0

    def try_acquire(self) -> bool:
        if self.in_flight >= self.limit:
            return False
        self.in_flight += 1
        return True

    def release(self) -> None:
        self.in_flight = max(0, self.in_flight - 1)
