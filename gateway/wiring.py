"""Builds the gateway's parts from GatewaySettings (for the composition root in `__main__`)."""

from __future__ import annotations

import functools
from collections.abc import Awaitable, Callable

import grpc

from avgate.kernel.grpc.server import Listener, ServerOptions
from avgate.kernel.keys import SigningKey, load_private_key
from avgate.kernel.principal import TokenSigner
from avgate.kernel.process import server_options
from avgate.kernel.resilience import RetryBudget
from avgate.kernel.settings import Environment, ProductionProfileError
from avgate.kernel.tls import channel_credentials, tls_server_credentials
from gateway.addresses import ClientAddresses
from gateway.config import GatewaySettings
from gateway.domain import RateLimit
from gateway.guards import Guards, MethodLimitDefaults
from gateway.limits import LimitDefaults, RateLimiter, RateLimitInterceptor
from gateway.service import ApiKeyService
from gateway.upstreams import Upstream, build_upstreams

MTLS_LISTENER = "mtls"


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
    upstreams = build_upstreams(settings.upstream_targets(), settings.max_message_bytes, channel_credentials(settings))
    for upstream in upstreams:
        upstream.connect()
    return upstreams


def gateway_server_options(settings: GatewaySettings, upstreams: list[Upstream]) -> ServerOptions:
    """The process's server options; reflection also lists the services behind the gateway.

    The public listener is TLS with GATEWAY_TLS_CERT_FILE, plaintext without (never the internal mTLS:
    outside callers hold no internal certificate). With GATEWAY_CLIENT_CA_FILE, a second listener
    (GATEWAY_MTLS_PORT) requires a client certificate that CA signed.
    """
    options = server_options(settings)
    options.extra_reflection_names = [name for u in upstreams for name in u.service_names]
    options.credentials = None
    if (settings.tls_cert_file is None) != (settings.tls_key_file is None):
        raise ValueError("set GATEWAY_TLS_CERT_FILE and GATEWAY_TLS_KEY_FILE together")
    if settings.tls_cert_file is not None and settings.tls_key_file is not None:
        options.credentials = tls_server_credentials(settings.tls_cert_file, settings.tls_key_file)
    if settings.client_ca_file is not None:
        cert = settings.tls_cert_file or settings.internal_tls_cert_file
        key = settings.tls_key_file or settings.internal_tls_key_file
        if cert is None or key is None:
            raise ValueError(
                "GATEWAY_CLIENT_CA_FILE needs a certificate to present: GATEWAY_TLS_CERT_FILE or AVGATE_TLS_CERT_FILE"
            )
        options.listeners = [
            Listener(MTLS_LISTENER, settings.mtls_port, tls_server_credentials(cert, key, settings.client_ca_file))
        ]
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
