"""Composition root of the gateway: settings → store → key service →
upstreams → proxy, health and servicer → server."""

from __future__ import annotations

import sys

from avgate.kernel.db import create_engine_for
from avgate.kernel.grpc.server import GrpcProcess
from avgate.kernel.keys import SigningKey, load_private_key
from avgate.kernel.principal import TokenSigner
from avgate.kernel.process import run, server_options
from avgate.kernel.settings import Environment
from gateway.auth import ApiKeyInterceptor
from gateway.config import GatewaySettings
from gateway.health import GatewayHealthServicer
from gateway.proxy import Proxy
from gateway.server import GatewayServicer, registration
from gateway.service import ApiKeyService
from gateway.store import SqlApiKeyStore
from gateway.upstreams import build_upstreams


async def compose(settings: GatewaySettings) -> GrpcProcess:
    url = settings.effective_database_url
    if not url:
        sys.exit("gateway: set GATEWAY_DATABASE_URL or DATABASE_URL (`avgate run` sets them for the local stack)")
    engine = create_engine_for(url)
    keys = ApiKeyService(SqlApiKeyStore(engine), cache_seconds=settings.key_cache_seconds)
    if settings.env is Environment.PRODUCTION:
        development = await keys.active_development_keys()
        if development:
            ids = ", ".join(k.key_id for k in development)
            sys.exit(
                f"gateway refuses to start with AVGATE_ENV=production while development API keys are active: {ids}"
            )
    signer = TokenSigner(
        SigningKey("gateway", load_private_key(settings.own_signing_key_file)), settings.token_ttl_seconds
    )
    upstreams = build_upstreams(settings.upstream_targets(), settings.max_message_bytes)
    for upstream in upstreams:
        upstream.connect()
    proxy = Proxy(upstreams, signer, settings.default_timeout_seconds)
    servicer = GatewayServicer(keys, upstreams)
    own = registration(servicer)
    upstream_names = [name for u in upstreams for name in u.service_names]
    options = server_options(settings)
    options.extra_reflection_names = upstream_names

    async def close() -> None:
        for upstream in upstreams:
            await upstream.close()
        await engine.dispose()

    return GrpcProcess(
        name="gateway",
        registrations=[own],
        options=options,
        auth_interceptor=ApiKeyInterceptor(keys),
        health_servicer=GatewayHealthServicer(upstreams, list(own.service_names)),
        generic_handlers=proxy.generic_handlers(),
        on_shutdown=[close],
    )


if __name__ == "__main__":
    run(GatewaySettings, compose)
