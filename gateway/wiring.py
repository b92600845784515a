"""Builds the gateway's parts from GatewaySettings (for the composition root in `__main__`)."""

from __future__ import annotations

import sys

from avgate.kernel.grpc.server import ServerOptions
from avgate.kernel.keys import SigningKey, load_private_key
from avgate.kernel.principal import TokenSigner
from avgate.kernel.process import server_options
from avgate.kernel.settings import Environment
from gateway.config import GatewaySettings
from gateway.service import ApiKeyService
from gateway.upstreams import Upstream, build_upstreams


async def refuse_development_keys_in_production(settings: GatewaySettings, keys: ApiKeyService) -> None:
    """Exits when the production profile finds development API keys still active."""
    if settings.env is not Environment.PRODUCTION:
        return
    development = await keys.active_development_keys()
    if development:
        ids = ", ".join(k.key_id for k in development)
        sys.exit(f"gateway refuses to start with AVGATE_ENV=production while development API keys are active: {ids}")


def token_signer(settings: GatewaySettings) -> TokenSigner:
    """Signs the principal tokens the gateway hands to the services, with its own key file."""
    key = SigningKey("gateway", load_private_key(settings.own_signing_key_file))
    return TokenSigner(key, settings.token_ttl_seconds)


def connected_upstreams(settings: GatewaySettings) -> list[Upstream]:
    """One channel per service process, opened now (inside the running loop)."""
    upstreams = build_upstreams(settings.upstream_targets(), settings.max_message_bytes)
    for upstream in upstreams:
        upstream.connect()
    return upstreams


def gateway_server_options(settings: GatewaySettings, upstreams: list[Upstream]) -> ServerOptions:
    """The process's server options; reflection also lists the services behind the gateway."""
    options = server_options(settings)
    options.extra_reflection_names = [name for u in upstreams for name in u.service_names]
    return options
