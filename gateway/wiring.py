"""Builds the gateway's parts from GatewaySettings (for the composition root in `__main__`)."""

from __future__ import annotations

from collections.abc import Callable

from avgate.kernel.grpc.server import ServerOptions
from avgate.kernel.keys import SigningKey, load_private_key
from avgate.kernel.principal import TokenSigner
from avgate.kernel.process import server_options
from avgate.kernel.resilience import RetryBudget
from avgate.kernel.settings import Environment, ProductionProfileError
from gateway.config import GatewaySettings
from gateway.guards import Guards, LimitDefaults
from gateway.service import ApiKeyService
from gateway.upstreams import Upstream, build_upstreams


async def refuse_development_keys_in_production(settings: GatewaySettings, keys: ApiKeyService) -> None:
    """Refuses (ProductionProfileError: exit 78, like every other stand-in) when the production
    profile finds development API keys still active in the gateway's database."""
    if settings.env is not Environment.PRODUCTION:
        return
    development = await keys.active_development_keys()
    if development:
        ids = ", ".join(k.key_id for k in development)
        raise ProductionProfileError(
            settings.process_name, [f"development API keys are active: {ids}; revoke them (avgate keys revoke)"]
        )


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


def guards(settings: GatewaySettings, upstreams: list[Upstream], clock: Callable[[], float]) -> Guards:
    """Each upstream's circuit breaker and in-flight cap, the per-caller cap and the shared retry budget."""
    return Guards.build(
        [u.name for u in upstreams],
        failure_threshold=settings.breaker_failures,
        open_seconds=settings.breaker_open_seconds,
        upstream_concurrency=settings.upstream_max_concurrent,
        principal_concurrency=settings.principal_max_concurrent,
        budget=RetryBudget(ratio=settings.retry_budget_ratio),
        clock=clock,
    )


def limit_defaults(settings: GatewaySettings) -> LimitDefaults:
    return LimitDefaults(
        unary_request_bytes=settings.max_unary_request_bytes,
        stream_message_bytes=settings.max_stream_message_bytes,
        upload_max_seconds=settings.upload_max_seconds,
        upload_idle_seconds=settings.upload_idle_seconds,
        stream_max_seconds=settings.stream_max_seconds,
        stream_idle_seconds=settings.stream_idle_seconds,
    )
