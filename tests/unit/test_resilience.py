"""Retry budget, backoff, circuit breaker and concurrency cap (avgate.kernel.resilience), on stepped time."""

from __future__ import annotations

import contextlib
import itertools

import pytest

from avgate.kernel.resilience import (
    BreakerState,
    CircuitBreaker,
    ConcurrencyLimit,
    RetryBudget,
    backoff_delays,
)


class Stepped:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


class TestRetryBudget:
    def test_at_least_three_retries_at_once_when_little_is_in_flight(self) -> None:
        budget = RetryBudget()
        with budget.request(), budget.retry() as a, budget.retry() as b, budget.retry() as c, budget.retry() as d:
            assert (a, b, c, d) == (True, True, True, False)

    def test_a_fifth_of_the_requests_in_flight_may_be_retries(self) -> None:
        budget = RetryBudget(ratio=0.2, min_retries=3)
        budget.active_requests = 50
        with contextlib.ExitStack() as held:
            granted = [held.enter_context(budget.retry()) for _ in range(12)]
        assert granted.count(True) == 10 and granted[10:] == [False, False]
        assert budget.active_retries == 0, "every retry is given back"

    def test_retries_beyond_the_budget_are_refused_while_the_others_run(self) -> None:
        budget = RetryBudget(ratio=0.2, min_retries=1)
        budget.active_requests = 10  # allowance 2
        with budget.retry() as one, budget.retry() as two, budget.retry() as three:
            assert (one, two, three) == (True, True, False)
        with budget.retry() as again:
            assert again


class TestBackoff:
    def test_full_jitter_doubles_from_25_ms_up_to_the_cap(self) -> None:
        delays = list(itertools.islice(backoff_delays(rng=lambda: 1.0), 6))
        assert delays == pytest.approx([0.025, 0.05, 0.1, 0.2, 0.25, 0.25])

    def test_the_delay_is_a_random_share_of_the_ceiling(self) -> None:
        assert next(backoff_delays(rng=lambda: 0.5)) == pytest.approx(0.0125)


class TestCircuitBreaker:
    def test_it_opens_after_consecutive_failures_and_refuses_at_once(self) -> None:
        clock = Stepped()
        breaker = CircuitBreaker(failure_threshold=3, open_seconds=5, clock=clock)
        for _ in range(2):
            assert breaker.allow()
            breaker.record_failure()
        assert breaker.state is BreakerState.CLOSED
        breaker.record_failure()
        assert breaker.state is BreakerState.OPEN and not breaker.allow()
        assert breaker.retry_after() == pytest.approx(5)
        assert breaker.snapshot().trips == 1

    def test_a_success_resets_the_count(self) -> None:
        breaker = CircuitBreaker(failure_threshold=2, clock=Stepped())
        breaker.record_failure()
        breaker.record_success()
        breaker.record_failure()
        assert breaker.state is BreakerState.CLOSED

    def test_after_the_pause_one_trial_goes_and_its_success_closes_it(self) -> None:
        clock = Stepped()
        breaker = CircuitBreaker(failure_threshold=1, open_seconds=5, clock=clock)
        breaker.record_failure()
        clock.now += 5
        assert breaker.state is BreakerState.HALF_OPEN
        assert breaker.allow()
        assert not breaker.allow(), "one trial at a time"
        breaker.record_success()
        assert breaker.state is BreakerState.CLOSED and breaker.allow()

    def test_a_failed_trial_opens_it_again_for_another_pause(self) -> None:
        clock = Stepped()
        breaker = CircuitBreaker(failure_threshold=1, open_seconds=5, clock=clock)
        breaker.record_failure()
        clock.now += 5
        assert breaker.allow()
        breaker.record_failure()
        assert breaker.state is BreakerState.OPEN
        clock.now += 4.9
        assert not breaker.allow()
        clock.now += 0.1
        assert breaker.allow()
        assert breaker.snapshot().trips == 2

    def test_an_abandoned_trial_frees_the_slot(self) -> None:
        clock = Stepped()
        breaker = CircuitBreaker(failure_threshold=1, open_seconds=1, clock=clock)
        breaker.record_failure()
        clock.now += 1
        assert breaker.allow()
        breaker.record_abandoned()
        assert breaker.allow()


class TestConcurrencyLimit:
    def test_it_sheds_instead_of_queueing_and_frees_on_release(self) -> None:
        limit = ConcurrencyLimit(2)
        assert limit.try_acquire() and limit.try_acquire()
        assert not limit.try_acquire()
        limit.release()
        assert limit.try_acquire()
