"""grpc.health.v1 for the gateway: its own status, and each upstream's
status asked live from that upstream, so a stopped service shows NOT_SERVING.

A check names a full service ("avgate.identity.v1.IdentityService") or a
short upstream name ("identity"); "" is the gateway itself.

Health is open (probes and gRPC clients' own health checking send no key), so
`Watch`, a stream held as long as the caller likes, is what an anonymous
flood holds. Three things keep a flood from stopping the gateway:

- One poller per watched (upstream, service): it asks the upstream once per
  interval (GATEWAY_HEALTH_WATCH_INTERVAL_SECONDS) whatever the number of
  watchers, and each watcher is sent the status when it changes. The poller
  starts with the first watcher and stops with the last.
- Caps: at most GATEWAY_HEALTH_WATCHES_PER_PEER watches from one client
  address (an IPv6 /64; behind a trusted proxy, its `X-Forwarded-For`, as for
  the rate limits) and GATEWAY_HEALTH_WATCHES_TOTAL in all; beyond either, a
  Watch ends at once with RESOURCE_EXHAUSTED, holding nothing.
- Apart from API calls: grpcio's `maximum_concurrent_rpcs` counts every call
  on a server, watches included, so the total cap is kept to at most half of
  the main server's call limit (the process refuses to start otherwise; 256
  of 2,000 by default): however many watches are held, API calls keep the
  rest. Watch is still served on the main listener, because gRPC clients'
  own health checking watches on the channel they call through; probes use
  the plaintext health port, a server of its own with its own call limit, so
  they never compete with API calls either. The caps are the process's, one
  count for both listeners.

`Check` is unary and short; it still asks the upstream when called.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections import Counter
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

from gateway.addresses import ClientAddresses, address_group
from gateway.upstreams import Upstream

log = logging.getLogger(__name__)

SERVING = health_pb2.HealthCheckResponse.SERVING
NOT_SERVING = health_pb2.HealthCheckResponse.NOT_SERVING
SERVICE_UNKNOWN = health_pb2.HealthCheckResponse.SERVICE_UNKNOWN
UNKNOWN = "unknown"
WATCH_INTERVAL_SECONDS = 1.0
WATCHES_PER_PEER = 4
WATCHES_TOTAL = 256


class WatchRefused(Exception):
    """A watch over its peer's or the process's cap."""


@dataclass
class Topic:
    """One watched (upstream, service): its latest status, its watchers and its poller."""

    watchers: int = 0
    status: int | None = None
    changed: asyncio.Event = field(default_factory=asyncio.Event)
    poller: asyncio.Task[None] | None = None

    def publish(self, status: int) -> None:
        if status == self.status:
            return
        self.status = status
        # Wakes every watcher at once; later waiters wait on a fresh event.
        woken, self.changed = self.changed, asyncio.Event()
        woken.set()

    async def after(self, last: int | None) -> int:
        """The status, once it is known and differs from `last`."""
        while self.status is None or self.status == last:
            await self.changed.wait()
        return self.status


class HealthWatches:
    """Watches grouped by what they watch, one poller each, counted per peer and in total."""

    def __init__(
        self,
        check: Callable[[str], Awaitable[int]],
        *,
        interval_seconds: float = WATCH_INTERVAL_SECONDS,
        per_peer: int = WATCHES_PER_PEER,
        total: int = WATCHES_TOTAL,
    ):
        self._check = check
        self._interval = interval_seconds
        self.per_peer = per_peer
        self.total = total
        self._topics: dict[str, Topic] = {}
        self._peers: Counter[str] = Counter()

    @property
    def watching(self) -> int:
        return self._peers.total()

    @property
    def pollers(self) -> int:
        return sum(1 for t in self._topics.values() if t.poller is not None)

    @contextlib.asynccontextmanager
    async def watch(self, key: str, peer: str) -> AsyncIterator[Topic]:
        """Holds one watch of `key` for `peer`, or refuses at once (WatchRefused)."""
        if self._peers[peer] >= self.per_peer:
            raise WatchRefused(f"at most {self.per_peer} health watches of one client address may be open")
        if self.watching >= self.total:
            raise WatchRefused(f"at most {self.total} health watches may be open on the gateway")
        self._peers[peer] += 1
        topic = self._topics.setdefault(key, Topic())
        topic.watchers += 1
        if topic.poller is None:
            topic.poller = asyncio.create_task(self._poll(key, topic))
        try:
            yield topic
        finally:
            self._peers[peer] -= 1
            if self._peers[peer] <= 0:
                del self._peers[peer]
            topic.watchers -= 1
            if topic.watchers == 0:
                del self._topics[key]
                if topic.poller is not None:
                    topic.poller.cancel()

    async def _poll(self, key: str, topic: Topic) -> None:
        while True:
            try:
                status = await self._check(key)
            except Exception:
                log.exception("health check of %s failed", key)
                status = NOT_SERVING
            topic.publish(status)
            await asyncio.sleep(self._interval)

    async def close(self) -> None:
        pollers = [t.poller for t in self._topics.values() if t.poller is not None]
        for poller in pollers:
            poller.cancel()
        await asyncio.gather(*pollers, return_exceptions=True)


class GatewayHealthServicer(health_pb2_grpc.HealthServicer):
    def __init__(
        self,
        upstreams: list[Upstream],
        own_services: list[str],
        *,
        addresses: ClientAddresses | None = None,
        watch_interval_seconds: float = WATCH_INTERVAL_SECONDS,
        watches_per_peer: int = WATCHES_PER_PEER,
        watches_total: int = WATCHES_TOTAL,
    ):
        self._upstreams = upstreams
        self._by_name: dict[str, Upstream] = {}
        for up in upstreams:
            self._by_name[up.name] = up
            for service in up.service_names:
                self._by_name[service] = up
        self._own = {"", "gateway", *own_services}
        self._draining = False
        self._addresses = addresses or ClientAddresses()
        self.watches = HealthWatches(
            self._polled_status,
            interval_seconds=watch_interval_seconds,
            per_peer=watches_per_peer,
            total=watches_total,
        )

    @property
    def max_watches(self) -> int:
        """Watches open at most; GrpcProcess keeps it to half the server's call limit."""
        return self.watches.total

    async def enter_graceful_shutdown(self) -> None:
        self._draining = True

    def topic_of(self, service: str) -> str | None:
        """What a watch of `service` shares a poller with: the gateway, or (upstream, service)."""
        if service in self._own:
            return "gateway"
        upstream = self._by_name.get(service)
        if upstream is None:
            return None
        return f"{upstream.name}/{service if service != upstream.name else ''}"

    async def status_of(self, service: str) -> int | None:
        if service in self._own:
            return NOT_SERVING if self._draining else SERVING
        upstream = self._by_name.get(service)
        if upstream is None:
            return None
        status, _detail = await upstream.check(service if service != upstream.name else "")
        return status

    async def _polled_status(self, topic: str) -> int:
        if topic == "gateway":
            return NOT_SERVING if self._draining else SERVING
        name, _, service = topic.partition("/")
        upstream = self._by_name.get(name) if name != UNKNOWN else None
        if upstream is None:
            return SERVICE_UNKNOWN
        status, _detail = await upstream.check(service)
        return status

    def _peer(self, context: grpc.aio.ServicerContext) -> str:
        address = self._addresses.of(context.peer(), context.invocation_metadata())
        return address_group(address) if address is not None else "unknown"

    async def Check(
        self, request: health_pb2.HealthCheckRequest, context: grpc.aio.ServicerContext
    ) -> health_pb2.HealthCheckResponse:
        status = await self.status_of(request.service)
        if status is None:
            await context.abort(grpc.StatusCode.NOT_FOUND, f"unknown service {request.service!r}")
        return health_pb2.HealthCheckResponse(status=status)

    async def Watch(
        self, request: health_pb2.HealthCheckRequest, context: grpc.aio.ServicerContext
    ) -> AsyncIterator[health_pb2.HealthCheckResponse]:
        # An unknown name is SERVICE_UNKNOWN (and stays so: the set of services is fixed), still one watch.
        topic_key = self.topic_of(request.service) or f"{UNKNOWN}/{request.service}"
        try:
            async with self.watches.watch(topic_key, self._peer(context)) as topic:
                last: int | None = None
                while True:
                    last = await topic.after(last)
                    yield health_pb2.HealthCheckResponse(status=last)
        except WatchRefused as refused:
            await context.abort(grpc.StatusCode.RESOURCE_EXHAUSTED, str(refused))
