"""Front-door authentication and authorisation: an API key becomes the principal of the call.

The key comes as `authorization: Bearer <key>` (or `x-api-key`). Before the
call is forwarded or anything in it is validated, the authorisation table
(avgate.kernel.grpc.access, read from the contracts) must let the key's role
call the method; a caller without a key gets a public principal (its peer
address) only for the methods the table opens to anonymous callers (the
complaint entrance, the ledger's public proofs), and UNAUTHENTICATED
elsewhere. The
principal also carries a request id (the caller's `x-request-id` when well
formed and free of personal data, otherwise a new one, echoed back in the response headers) and the
end user's client address: what a provider reports in
`x-avgate-end-user-address`, or the peer address for public callers.
"""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import grpc

from avgate.kernel.errors import FieldViolation, InvalidArgument, Unauthenticated
from avgate.kernel.grpc.access import AccessTable
from avgate.kernel.grpc.auth import OPEN_METHOD_PREFIXES, metadata_value
from avgate.kernel.grpc.wrapping import ScopedInterceptor
from avgate.kernel.principal import (
    Principal,
    Role,
    accepted_request_id,
    bind_principal,
    normalise_client_address,
    unbind_principal,
)
from avgate.kernel.tls import fingerprint, peer_certificate
from gateway.addresses import ANONYMOUS_SUBJECT, ClientAddresses
from gateway.service import ApiKeyService

END_USER_ADDRESS_KEY = "x-avgate-end-user-address"


def presented_secret(metadata: grpc.aio.Metadata | None) -> str | None:
    auth = metadata_value(metadata, "authorization")
    if auth and auth.lower().startswith("bearer "):
        return auth[7:].strip()
    return metadata_value(metadata, "x-api-key")


def presented_certificate(context: grpc.aio.ServicerContext) -> str | None:
    """SHA-256 of the client certificate on this call's connection (the mTLS listener), or None."""
    pem = peer_certificate(context)
    return fingerprint(pem) if pem is not None else None


class ApiKeyInterceptor(ScopedInterceptor):
    def __init__(self, keys: ApiKeyService, access: AccessTable, addresses: ClientAddresses | None = None):
        self._keys = keys
        self._access = access
        self._addresses = addresses or ClientAddresses()

    def applies_to(self, method: str) -> bool:
        return not method.startswith(OPEN_METHOD_PREFIXES)

    @asynccontextmanager
    async def scope(self, method: str, context: grpc.aio.ServicerContext) -> AsyncIterator[None]:
        metadata = context.invocation_metadata()
        secret = presented_secret(metadata)
        request_id = accepted_request_id(metadata_value(metadata, "x-request-id")) or uuid.uuid4().hex
        if secret is None:
            self._access.check_outside(method, None)  # UNAUTHENTICATED unless the method is open to anyone
            principal = Principal(
                role=Role.PUBLIC,
                subject=ANONYMOUS_SUBJECT,
                client_address=self._addresses.of(context.peer(), metadata),
                request_id=request_id,
            )
            async with self._bound(principal, context):
                yield
            return
        key = await self._keys.authenticate(secret)
        if key.client_certificate_sha256 is not None and not key.accepts_certificate(presented_certificate(context)):
            raise Unauthenticated("this API key is bound to a client certificate: call the mTLS listener with it")
        self._access.check_outside(method, key.role)
        client_address = None
        if key.role is Role.PROVIDER:
            reported = metadata_value(metadata, END_USER_ADDRESS_KEY)
            if reported:
                client_address = normalise_client_address(reported)
                if client_address is None:
                    raise InvalidArgument(
                        FieldViolation(f"metadata.{END_USER_ADDRESS_KEY}", "must be an IPv4 or IPv6 address")
                    )
        elif key.role is Role.PUBLIC:
            client_address = self._addresses.of(context.peer(), metadata)
        principal = Principal(
            role=key.role,
            subject=key.key_id,
            tenant_id=key.tenant_id,
            regulator_scope=key.regulator_scope,
            client_address=client_address,
            request_id=request_id,
        )
        async with self._bound(principal, context):
            yield

    @asynccontextmanager
    async def _bound(self, principal: Principal, context: grpc.aio.ServicerContext) -> AsyncIterator[None]:
        await context.send_initial_metadata((("x-request-id", principal.request_id),))
        bound = bind_principal(principal)
        try:
            yield
        finally:
            unbind_principal(bound)
