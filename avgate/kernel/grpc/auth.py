"""Principal verification in every service, and signed calls between services.

Health checks and reflection are open (probes and tooling); every other
method needs a principal token addressed to this service and method, whose
principal the authorisation table lets call it (avgate.kernel.grpc.access):
the gateway checked the outside caller already, and this second check is what
holds a token another avgate process signed to the methods and origin roles
that process is allowed.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager

import grpc

from avgate.kernel.errors import InvalidPrincipalToken
from avgate.kernel.grpc.access import AccessTable
from avgate.kernel.grpc.wrapping import ScopedInterceptor
from avgate.kernel.principal import (
    GATEWAY_ISSUER,
    TOKEN_METADATA_KEY,
    Principal,
    Role,
    TokenSigner,
    TokenVerifier,
    bind_principal,
    peer_process,
    unbind_principal,
)
from avgate.kernel.telemetry import outgoing_trace_metadata

OPEN_METHOD_PREFIXES = ("/grpc.health.v1.Health/", "/grpc.reflection.")


def metadata_value(metadata: Sequence[tuple[str, str | bytes]] | None, key: str) -> str | None:
    for k, v in metadata or ():
        if k == key:
            return v.decode() if isinstance(v, bytes) else v
    return None


class PrincipalInterceptor(ScopedInterceptor):
    """Verifies the principal token, checks the table, and binds the principal for the call."""

    def __init__(self, verifier: TokenVerifier, access: AccessTable):
        self._verifier = verifier
        self._access = access

    def applies_to(self, method: str) -> bool:
        return not method.startswith(OPEN_METHOD_PREFIXES)

    @asynccontextmanager
    async def scope(self, method: str, context: grpc.aio.ServicerContext) -> AsyncIterator[None]:
        token = metadata_value(context.invocation_metadata(), TOKEN_METADATA_KEY)
        principal = self._verifier.verify(token, method=method)
        caller = peer_process()
        if caller is not None and caller != token_issuer(principal):
            # Over mTLS the connection says who is calling: a token another process signed, relayed
            # from this peer, is someone else's (a stolen or replayed token), whatever it claims.
            raise InvalidPrincipalToken(f"a token of {token_issuer(principal)} came over {caller}'s connection")
        self._access.check_token(method, principal)
        bound = bind_principal(principal)
        try:
            yield
        finally:
            unbind_principal(bound)


def token_issuer(principal: Principal) -> str:
    """Who signed a verified token: a service names itself; every other principal is the gateway's."""
    return principal.subject if principal.role is Role.SERVICE else GATEWAY_ISSUER


def service_call_metadata(
    signer: TokenSigner, origin: Principal, *, audience: str, method: str
) -> list[tuple[str, str]]:
    """Metadata for a call from this service to another, acting for `origin`."""
    token = signer.sign_as_service(origin, audience=audience, method=method)
    return [(TOKEN_METADATA_KEY, token), *outgoing_trace_metadata()]
