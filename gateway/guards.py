"""What the gateway puts between a caller and an upstream: per-method limits, guards and retries.

- Sizes: a request (or each message of a client stream) larger than its
  method's limit is INVALID_ARGUMENT with a BadRequest, before anything is
  forwarded.
- Stream timeouts: a stream that has run its method's maximum time, or in
  which nothing moved for its idle time, is ended with DEADLINE_EXCEEDED
  (uploads and Follow have different needs: minutes of silence mean a dead
  uploader, while Follow sends heartbeats).
- Guards per upstream: a circuit breaker (consecutive transport failures open
  it; while open, calls fail at once with UNAVAILABLE and RetryInfo) and a cap
  on calls in flight; per principal, a cap on calls in flight, so one caller
  cannot take every upstream slot.
- Retries: only methods whose contract says they have no side effects or are
  idempotent (protobuf's `idempotency_level`), only on UNAVAILABLE, never a
  client stream already sent, within a retry budget (about 20% of the calls
  in flight, at least 3) and the caller's remaining deadline, after a
  jittered backoff; each attempt is signed afresh (a token is accepted once).

The breaker, budget and caps are avgate.kernel.resilience's, shared with any
other caller of a dependency.
"""

from __future__ import annotations

import asyncio
import time
from collections import OrderedDict
from collections.abc import AsyncIterator, Callable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

from google.protobuf import descriptor_pb2
from google.protobuf.descriptor import MethodDescriptor

from avgate.kernel.errors import (
    DependencyUnavailable,
    FieldViolation,
    InvalidArgument,
    ResourceExhausted,
)
from avgate.kernel.resilience import BreakerSnapshot, CircuitBreaker, ConcurrencyLimit, RetryBudget

RETRYABLE_LEVELS = {
    descriptor_pb2.MethodOptions.NO_SIDE_EFFECTS,
    descriptor_pb2.MethodOptions.IDEMPOTENT,
}
MAX_TRACKED_PRINCIPALS = 100_000


class StreamTimedOut(Exception):
    """A stream ran past its maximum time or sat idle past its idle time."""


@dataclass(frozen=True)
class MethodLimits:
    """One method's limits at the gateway."""

    max_request_bytes: int
    max_seconds: float | None = None
    """Streams: the longest a call may run (None: only the caller's deadline)."""
    idle_seconds: float | None = None
    """Streams: the longest nothing may move in either direction."""
    retryable: bool = False


@dataclass(frozen=True)
class MethodLimitDefaults:
    unary_request_bytes: int
    stream_message_bytes: int
    upload_max_seconds: float
    upload_idle_seconds: float
    stream_max_seconds: float
    stream_idle_seconds: float


def method_limits(
    method: MethodDescriptor, defaults: MethodLimitDefaults, overrides: Mapping[str, Mapping[str, float]]
) -> MethodLimits:
    """A method's limits: by its kind (unary, upload, server stream), then its own override, if any."""
    path = f"/{method.containing_service.full_name}/{method.name}"
    retryable = method.GetOptions().idempotency_level in RETRYABLE_LEVELS and not method.client_streaming
    if method.client_streaming:
        limits = MethodLimits(
            defaults.stream_message_bytes, defaults.upload_max_seconds, defaults.upload_idle_seconds, retryable
        )
    elif method.server_streaming:
        limits = MethodLimits(
            defaults.unary_request_bytes, defaults.stream_max_seconds, defaults.stream_idle_seconds, retryable
        )
    else:
        limits = MethodLimits(defaults.unary_request_bytes, None, None, retryable)
    own = overrides.get(path)
    if own:
        limits = MethodLimits(
            max_request_bytes=int(own.get("max_request_bytes", limits.max_request_bytes)),
            max_seconds=float(own["max_seconds"]) if "max_seconds" in own else limits.max_seconds,
            idle_seconds=float(own["idle_seconds"]) if "idle_seconds" in own else limits.idle_seconds,
            retryable=retryable,
        )
    return limits


def check_size(request: bytes, limits: MethodLimits, field_path: str = "request") -> None:
    if len(request) > limits.max_request_bytes:
        raise InvalidArgument(
            FieldViolation(field_path, f"must be at most {limits.max_request_bytes} bytes (this method's limit)")
        )


async def sized_stream(requests: AsyncIterator[bytes], limits: MethodLimits) -> AsyncIterator[bytes]:
    """The client's messages, each checked against the method's size limit."""
    n = 0
    async for message in requests:
        check_size(message, limits, f"request[{n}]")
        n += 1
        yield message


async def timed_stream(
    source: AsyncIterator[Any],
    limits: MethodLimits,
    started: float,
    clock: Callable[[], float] = time.monotonic,
    on_move: Callable[[], None] | None = None,
) -> AsyncIterator[Any]:
    """`source`'s items, ending with StreamTimedOut when the stream's time or idle time runs out."""
    iterator = source.__aiter__()
    while True:
        waits = []
        if limits.max_seconds is not None:
            waits.append(limits.max_seconds - (clock() - started))
        if limits.idle_seconds is not None:
            waits.append(limits.idle_seconds)
        timeout = min(waits) if waits else None
        if timeout is not None and timeout <= 0:
            raise StreamTimedOut("the stream ran its maximum time")
        try:
            # asyncio.timeout, not wait_for: wait_for runs each item in a task of its own (Python 3.11),
            # which cost a relayed Follow more than the relay.
            async with asyncio.timeout(timeout):
                item = await iterator.__anext__()
        except StopAsyncIteration:
            return
        except TimeoutError:
            raise StreamTimedOut("nothing moved on the stream for its idle time") from None
        if limits.max_seconds is not None and clock() - started > limits.max_seconds:
            raise StreamTimedOut("the stream ran its maximum time")
        if on_move is not None:
            on_move()
        yield item


@dataclass
class UpstreamGuard:
    """The breaker and in-flight cap of one upstream."""

    name: str
    breaker: CircuitBreaker
    in_flight: ConcurrencyLimit

    def snapshot(self) -> BreakerSnapshot:
        return self.breaker.snapshot()


@dataclass
class Guards:
    """Every upstream's guard, the per-principal caps and the shared retry budget."""

    upstreams: dict[str, UpstreamGuard]
    per_principal: int
    budget: RetryBudget = field(default_factory=RetryBudget)
    _principals: OrderedDict[str, ConcurrencyLimit] = field(default_factory=OrderedDict)

    @classmethod
    def build(
        cls,
        names: list[str],
        *,
        failure_threshold: int,
        open_seconds: float,
        upstream_concurrency: int,
        principal_concurrency: int,
        budget: RetryBudget,
        clock: Callable[[], float] = time.monotonic,
    ) -> Guards:
        return cls(
            upstreams={
                n: UpstreamGuard(
                    n, CircuitBreaker(failure_threshold, open_seconds, clock), ConcurrencyLimit(upstream_concurrency)
                )
                for n in names
            },
            per_principal=principal_concurrency,
            budget=budget,
        )

    @contextmanager
    def admitted(self, upstream: str, principal: str) -> Iterator[UpstreamGuard]:
        """Holds one in-flight slot of the upstream and of the principal, or refuses at once."""
        guard = self.upstreams[upstream]
        mine = self._principals.get(principal)
        if mine is None:
            if len(self._principals) >= MAX_TRACKED_PRINCIPALS:
                self._evict_idle()
            mine = self._principals[principal] = ConcurrencyLimit(self.per_principal)
        if not mine.try_acquire():
            raise ResourceExhausted(
                f"at most {self.per_principal} calls of one caller may be in flight", retry_after_seconds=0.1
            )
        try:
            if not guard.in_flight.try_acquire():
                raise DependencyUnavailable(guard.name, retry_after_seconds=0.1, message=f"{guard.name} is at capacity")
            try:
                yield guard
            finally:
                guard.in_flight.release()
        finally:
            mine.release()
            if mine.in_flight == 0:
                self._principals.pop(principal, None)

    def _evict_idle(self) -> None:
        for key in [k for k, v in self._principals.items() if v.in_flight == 0]:
            del self._principals[key]

    def breaker_allows(self, guard: UpstreamGuard) -> None:
        if not guard.breaker.allow():
            raise DependencyUnavailable(
                guard.name,
                retry_after_seconds=max(guard.breaker.retry_after(), 0.05),
                message=f"{guard.name} is failing; the gateway's circuit breaker is open",
            )
