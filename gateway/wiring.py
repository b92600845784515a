"""Builds the gateway's parts from GatewaySettings (for the composition root in `__main__`)."""

from __future__ import annotations

from avgate.kernel.grpc.server import Listener, ServerOptions
from avgate.kernel.keys import SigningKey, load_private_key
from avgate.kernel.principal import TokenSigner
from avgate.kernel.process import server_options
from avgate.kernel.settings import Environment, ProductionProfileError
from avgate.kernel.tls import channel_credentials, tls_server_credentials
from gateway.config import GatewaySettings
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
