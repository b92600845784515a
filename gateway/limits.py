"""Rate limits at the front door: token buckets per API key, per tenant (all of
its keys together) and per client address for callers without a key.

A call takes one token from each bucket that applies to it, or from none:
when any of them is empty the call is refused with RESOURCE_EXHAUSTED, a
RetryInfo saying how long until a token is there, and ErrorInfo reason
ERROR_REASON_RATE_LIMITED with `limit` = `api_key`, `tenant` or `address`.
A streaming call counts once, when it starts.

The client address of a keyless caller is the peer's, or, when the peer is
one of GATEWAY_TRUSTED_PROXIES, the last hop of its `X-Forwarded-For` (the
address that proxy saw; earlier hops are whatever the client wrote). An IPv6
caller is limited per /64, since one host is commonly given a whole /64.

Across replicas the buckets are local and each replica enforces the limit
divided by GATEWAY_REPLICAS. A shared store (Redis) would be exact, but it
puts a network round trip and a new dependency on every call, and the project
must run without Redis. Behind a balancer that spreads calls evenly the local
shares add up to the configured limit; when a balancer pins one client to one
replica, that client gets its share only, which errs on the safe side. The
cost of the limiter per call is measured in tests/bench (docs/BENCHMARKS.md).

Buckets live in a bounded LRU: callers choose their addresses (and may send
unknown keys), so memory must not grow with them. An evicted bucket comes
back full, which is what it would be after a pause anyway.
"""

from __future__ import annotations

import math
import time
from collections import OrderedDict
from collections.abc import AsyncIterator, Callable, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import Protocol

import grpc

from avgate.kernel.errors import ResourceExhausted
from avgate.kernel.grpc.auth import OPEN_METHOD_PREFIXES
from avgate.kernel.grpc.wrapping import ScopedInterceptor
from avgate.kernel.principal import bound_principal
from gateway.addresses import ClientAddresses, address_group
from gateway.auth import presented_secret
from gateway.domain import RateLimit


@dataclass(frozen=True)
class LimitDefaults:
    """The limits that apply where an operator set none (from GatewaySettings)."""

    api_key: RateLimit
    tenant: RateLimit
    address: RateLimit


class TokenBucket:
    """Holds up to `capacity` tokens and gains `rate` tokens a second."""

    __slots__ = ("capacity", "rate", "tokens", "updated")

    def __init__(self, rate: float, capacity: float, now: float):
        self.rate = rate
        self.capacity = capacity
        self.tokens = capacity
        self.updated = now

    def reshape(self, rate: float, capacity: float) -> None:
        """An operator changed the limit: keep the tokens held, up to the new capacity."""
        self.rate = rate
        self.capacity = capacity
        self.tokens = min(self.tokens, capacity)

    def refill(self, now: float) -> None:
        if now > self.updated:
            self.tokens = min(self.capacity, self.tokens + (now - self.updated) * self.rate)
        self.updated = now

    def wait(self) -> float:
        """Seconds until one token is there (0 when one is there now)."""
        if self.tokens >= 1.0:
            return 0.0
        return (1.0 - self.tokens) / self.rate


class RateLimiter:
    """Token buckets by name, this replica's share of each limit, the least recently used evicted first."""

    def __init__(self, *, replicas: int = 1, max_buckets: int = 100_000, clock: Callable[[], float] = time.monotonic):
        if replicas < 1 or max_buckets < 1:
            raise ValueError("replicas and max_buckets must be at least 1")
        self._replicas = replicas
        self._max_buckets = max_buckets
        self._clock = clock
        self._buckets: OrderedDict[str, TokenBucket] = OrderedDict()

    def __len__(self) -> int:
        return len(self._buckets)

    def share(self, limit: RateLimit) -> tuple[float, float]:
        """This replica's (rate, capacity) of a limit; a burst never drops below one call."""
        return limit.requests_per_second / self._replicas, max(1.0, limit.burst / self._replicas)

    def admit(self, wanted: Sequence[tuple[str, RateLimit]]) -> tuple[float, str]:
        """Takes one token from each named bucket when every one has a token: (0.0, "").
        Otherwise takes none and answers how long until all have one, and the name of the slowest."""
        now = self._clock()
        buckets = []
        longest, slowest = 0.0, ""
        for name, limit in wanted:
            rate, capacity = self.share(limit)
            bucket = self._buckets.get(name)
            if bucket is None:
                bucket = self._buckets[name] = TokenBucket(rate, capacity, now)
                if len(self._buckets) > self._max_buckets:
                    self._buckets.popitem(last=False)
            else:
                self._buckets.move_to_end(name)
                if bucket.rate != rate or bucket.capacity != capacity:
                    bucket.reshape(rate, capacity)
                bucket.refill(now)
            wait = bucket.wait()
            if wait > longest:
                longest, slowest = wait, name
            buckets.append(bucket)
        if longest > 0.0:
            return longest, slowest
        for bucket in buckets:
            bucket.tokens -= 1.0
        return 0.0, ""


class LimitSource(Protocol):
    """Where operator-set limits come from (ApiKeyService, cached like the keys)."""

    async def rate_limits(self, key_id: str, tenant_id: str | None) -> tuple[RateLimit | None, RateLimit | None]: ...


def retry_after(wait: float) -> float:
    """Whole milliseconds, rounded up: RetryInfo never says "now" while no token is there."""
    return math.ceil(wait * 1000) / 1000


class RateLimitInterceptor(ScopedInterceptor):
    """Runs after authentication: reads the bound principal and takes the call's tokens.

    Calls that authentication lets through without a principal (health,
    reflection) are not limited here.
    """

    def __init__(self, limiter: RateLimiter, defaults: LimitDefaults, limits: LimitSource, addresses: ClientAddresses):
        self._limiter = limiter
        self._defaults = defaults
        self._limits = limits
        self._addresses = addresses

    def applies_to(self, method: str) -> bool:
        return not method.startswith(OPEN_METHOD_PREFIXES)

    async def buckets_for(self, context: grpc.aio.ServicerContext) -> list[tuple[str, RateLimit]]:
        principal = bound_principal()
        if principal is None:
            return []
        metadata = context.invocation_metadata()
        if presented_secret(metadata) is None:
            address = self._addresses.of(context.peer(), metadata)
            group = address_group(address) if address is not None else "unknown"
            return [(f"address:{group}", self._defaults.address)]
        key_limit, tenant_limit = await self._limits.rate_limits(principal.subject, principal.tenant_id)
        wanted = [(f"api_key:{principal.subject}", key_limit or self._defaults.api_key)]
        if principal.tenant_id:
            wanted.append((f"tenant:{principal.tenant_id}", tenant_limit or self._defaults.tenant))
        return wanted

    @asynccontextmanager
    async def scope(self, method: str, context: grpc.aio.ServicerContext) -> AsyncIterator[None]:
        wait, name = self._limiter.admit(await self.buckets_for(context))
        if wait > 0.0:
            kind = name.partition(":")[0]
            refused = ResourceExhausted(
                f"rate limit of this {kind.replace('_', ' ')} exceeded; retry after {retry_after(wait):.3f} s",
                retry_after_seconds=retry_after(wait),
            )
            refused.metadata["limit"] = kind
            raise refused
        yield
