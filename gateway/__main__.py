"""Composition root of the gateway: settings → store → key service →
upstreams → proxy, health and servicer → authentication then rate limits →
server (the parts come from `wiring`)."""

from __future__ import annotations

import sys
import time
from collections.abc import Callable

from avgate.kernel.db import create_engine_for
from avgate.kernel.grpc.access import AccessTable
from avgate.kernel.grpc.server import GrpcProcess
from avgate.kernel.process import run
from avgate.kernel.settings import Environment
from gateway import wiring
from gateway.addresses import ClientAddresses
from gateway.auth import ApiKeyInterceptor
from gateway.config import GatewaySettings
from gateway.health import GatewayHealthServicer
from gateway.proxy import Proxy
from gateway.server import GatewayServicer, registration
from gateway.service import ApiKeyService
from gateway.store import SqlApiKeyStore


async def compose(settings: GatewaySettings, clock: Callable[[], float] = time.monotonic) -> GrpcProcess:
    """`clock` (monotonic seconds) times breakers and streams; tests step it."""
    url = settings.effective_database_url
    if not url:
        sys.exit("gateway: set GATEWAY_DATABASE_URL or DATABASE_URL (`avgate run` sets them for the local stack)")
    engine = create_engine_for(url)
    keys = ApiKeyService(
        SqlApiKeyStore(engine),
        cache_seconds=settings.key_cache_seconds,
        require_bound_regulator_keys=settings.env is Environment.PRODUCTION,
    )
    await wiring.refuse_development_keys_in_production(settings, keys)
    signer = wiring.token_signer(settings)
    upstreams = wiring.connected_upstreams(settings)
    guards = wiring.guards(settings, upstreams, clock)
    proxy = Proxy(
        upstreams,
        signer,
        settings.default_timeout_seconds,
        guards,
        wiring.method_limit_defaults(settings),
        settings.method_limits,
        settings.max_attempts,
        clock,
    )
    own = registration(GatewayServicer(keys, upstreams, guards))
    health = GatewayHealthServicer(
        upstreams,
        list(own.service_names),
        addresses=ClientAddresses(settings.trusted_proxies),
        watch_interval_seconds=settings.health_watch_interval_seconds,
        watches_per_peer=settings.health_watches_per_peer,
        watches_total=settings.health_watches_total,
    )

    async def close() -> None:
        await health.watches.close()
        for upstream in upstreams:
            await upstream.close()
        await engine.dispose()

    return GrpcProcess(
        name="gateway",
        registrations=[own],
        options=wiring.gateway_server_options(settings, upstreams),
        auth_interceptor=wiring.InterceptorChain(
            ApiKeyInterceptor(keys, AccessTable.from_contracts(), ClientAddresses(settings.trusted_proxies)),
            wiring.rate_limits(settings, keys),
        ),
        health_servicer=health,
        generic_handlers=proxy.generic_handlers(),
        on_shutdown=[close],
    )


if __name__ == "__main__":
    run(GatewaySettings, compose)
