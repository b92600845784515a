"""Who calls in a test: a principal for each role, and the signed token
metadata a service accepts from the gateway (or from another service).

The defaults are the values the integration tests have always used (a
provider's key is "key-<tenant>" with request id "req-1", the regulator is
"reg-1", the operator "ops-1"), so the ledger entries and audit rows that
tests compare stay as they were.
"""

from __future__ import annotations

import pathlib
from collections.abc import Mapping
from dataclasses import dataclass, field

from avgate.kernel.keys import SigningKey, load_private_key
from avgate.kernel.principal import GATEWAY_ISSUER, TOKEN_METADATA_KEY, Principal, RegulatorScope, Role, TokenSigner

Metadata = tuple[tuple[str, str], ...]
"""Call metadata carrying a principal token, as a stub's `metadata=` takes it."""


def provider(
    tenant: str, *, subject: str | None = None, request_id: str = "req-1", client_address: str | None = None
) -> Principal:
    """A provider's API key acting for `tenant` (subject "key-<tenant>" unless given)."""
    return Principal(
        role=Role.PROVIDER,
        subject=subject if subject is not None else f"key-{tenant}",
        tenant_id=tenant,
        client_address=client_address,
        request_id=request_id,
    )


def regulator(
    departments: tuple[str, ...] = ("cyberspace",),
    regions: tuple[str, ...] = ("000000",),
    *,
    subject: str = "reg-1",
    request_id: str = "",
) -> Principal:
    """A regulator who sees `departments` in `regions` (national cyberspace unless given)."""
    return Principal(
        role=Role.REGULATOR,
        subject=subject,
        regulator_scope=RegulatorScope(departments, regions),
        request_id=request_id,
    )


def operator(subject: str = "ops-1", *, request_id: str = "") -> Principal:
    """The platform's operator."""
    return Principal(role=Role.OPERATOR, subject=subject, request_id=request_id)


def public(subject: str = "anonymous", *, request_id: str = "") -> Principal:
    """A member of the public."""
    return Principal(role=Role.PUBLIC, subject=subject, request_id=request_id)


def service(name: str, origin: Principal | None = None, *, request_id: str = "") -> Principal:
    """The service `name` calling another, acting for `origin`."""
    return Principal(role=Role.SERVICE, subject=name, request_id=request_id, origin=origin)


def signer(keys_dir: pathlib.Path, issuer: str = GATEWAY_ISSUER) -> TokenSigner:
    """Signs principal tokens as `issuer` (the gateway unless given) with its key in `keys_dir`."""
    return TokenSigner(SigningKey(issuer, load_private_key(keys_dir / f"{issuer}.key")))


def token_metadata(signer: TokenSigner, principal: Principal, *, audience: str, method: str) -> Metadata:
    """Metadata carrying a token for `principal`, addressed to `audience` and the full `method` name."""
    return ((TOKEN_METADATA_KEY, signer.sign(principal, audience=audience, method=method)),)


@dataclass(frozen=True)
class Tokens:
    """Token metadata for the calls to one service.

    `tokens(principal, "CreateIncident")` signs for `prefix + "CreateIncident"`.
    Outside callers come through the gateway (`gateway`); a SERVICE principal
    signs its own token, with the key of the service it names (`services`).
    """

    gateway: TokenSigner
    audience: str
    prefix: str = ""
    services: Mapping[str, TokenSigner] = field(default_factory=dict)

    def __call__(self, principal: Principal, method: str) -> Metadata:
        signing = self.services[principal.subject] if principal.role is Role.SERVICE else self.gateway
        return token_metadata(signing, principal, audience=self.audience, method=self.prefix + method)
