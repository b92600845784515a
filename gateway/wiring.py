"""Builds the gateway's parts from GatewaySettings (for the composition root in `__main__`)."""

from __future__ import annotations

import functools
from collections.abc import Awaitable, Callable

import grpc

from avgate.kernel.grpc.server import ServerOptions
from avgate.kernel.keys import SigningKey, load_private_key
from avgate.kernel.principal import TokenSigner
from avgate.kernel.process import server_options
from avgate.kernel.resilience import RetryBudget
from avgate.kernel.settings import Environment, ProductionProfileError
from gateway.addresses import ClientAddresses
from gateway.config import GatewaySettings
from gateway.domain import RateLimit
from gateway.guards import Guards, MethodLimitDefaults
from gateway.limits import LimitDefaults, RateLimiter, RateLimitInterceptor
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


def method_limit_defaults(settings: GatewaySettings) -> MethodLimitDefaults:
    return MethodLimitDefaults(
        unary_request_bytes=settings.max_unary_request_bytes,
        stream_message_bytes=settings.max_stream_message_bytes,
        upload_max_seconds=settings.upload_max_seconds,
        upload_idle_seconds=settings.upload_idle_seconds,
        stream_max_seconds=settings.stream_max_seconds,
        stream_idle_seconds=settings.stream_idle_seconds,
    )


def rate_limits(settings: GatewaySettings, keys: ApiKeyService) -> RateLimitInterceptor | None:
    """The front door's rate limits (None when GATEWAY_RATE_LIMITS_ENABLED is false)."""
    if not settings.rate_limits_enabled:
        return None
    defaults = LimitDefaults(
        api_key=RateLimit(settings.key_requests_per_second, settings.key_burst),
        tenant=RateLimit(settings.tenant_requests_per_second, settings.tenant_burst),
        address=RateLimit(settings.address_requests_per_second, settings.address_burst),
    )
    limiter = RateLimiter(replicas=settings.replicas, max_buckets=settings.rate_limit_buckets)
    return RateLimitInterceptor(limiter, defaults, keys, ClientAddresses(settings.trusted_proxies))


class InterceptorChain(grpc.aio.ServerInterceptor):
    """Several interceptors in the one place the process takes its caller check, the first outermost:
    authentication binds the principal, then the rate limits read it."""

    def __init__(self, *interceptors: grpc.aio.ServerInterceptor | None):
        self._interceptors = [i for i in interceptors if i is not None]

    async def intercept_service(
        self,
        continuation: Callable[[grpc.HandlerCallDetails], Awaitable[grpc.RpcMethodHandler]],
        handler_call_details: grpc.HandlerCallDetails,
    ) -> grpc.RpcMethodHandler:
        for interceptor in reversed(self._interceptors):
            continuation = functools.partial(interceptor.intercept_service, continuation)
        return await continuation(handler_call_details)
