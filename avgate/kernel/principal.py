"""Who is calling: the principal and the short-lived tokens that carry it.

The gateway authenticates an outside caller and signs, per call, a token
addressed to one service and one method (JWT, EdDSA/Ed25519, 30 s by
default). A service verifies it and trusts nothing else the caller sent.
When a service calls another it signs its own token naming itself (role
SERVICE, subject = its name) with the original principal nested in
`origin`. Each token has a unique id that the receiving process accepts
once, so a captured token cannot be replayed.

Tokens are plain compact JWS (RFC 7515/7519, `alg` EdDSA), signed and
checked here with cryptography's Ed25519 directly: the gateway signs one per
call and every service verifies one per call, and a general JWT library
spent more time on its generality (three parses per verification, the header
serialised per token) than on the signature. Any JWT library reads and makes
the same tokens (the tests make some with PyJWT).
"""

from __future__ import annotations

import base64
import binascii
import contextvars
import enum
import ipaddress
import json
import re
import time
import uuid
from collections import OrderedDict
from dataclasses import dataclass, field
from typing import Any

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

from avgate.kernel.errors import InvalidPrincipalToken, PermissionDenied
from avgate.kernel.keys import SigningKey
from avgate.kernel.personal_data import contains_personal_data

TOKEN_METADATA_KEY = "x-avgate-principal"  # noqa: S105 - a metadata key name
GATEWAY_ISSUER = "gateway"
_CLOCK_SKEW_SECONDS = 5
REQUIRED_CLAIMS = ("exp", "iat", "jti", "aud", "iss", "mth", "prn")


def b64url(data: bytes) -> bytes:
    """Base64url without padding (RFC 7515 section 2)."""
    return base64.urlsafe_b64encode(data).rstrip(b"=")


def b64url_decode(segment: str) -> bytes:
    raw = segment.encode("ascii")
    return base64.urlsafe_b64decode(raw + b"=" * (-len(raw) % 4))


def compact_json(value: Any) -> bytes:
    return json.dumps(value, separators=(",", ":")).encode()


class MalformedToken(ValueError):
    """Not three base64url segments of a JSON header, a JSON payload and a signature."""


def token_parts(token: str) -> tuple[dict[str, Any], dict[str, Any], bytes, bytes]:
    """Header, claims, signing input and signature of a compact JWS, unverified."""
    try:
        header_segment, payload_segment, signature_segment = token.split(".")
        header = json.loads(b64url_decode(header_segment))
        claims = json.loads(b64url_decode(payload_segment))
        signature = b64url_decode(signature_segment)
        signing_input = f"{header_segment}.{payload_segment}".encode("ascii")
    except (ValueError, binascii.Error, UnicodeError) as exc:  # json's errors are ValueErrors
        raise MalformedToken(str(exc)) from exc
    if not isinstance(header, dict) or not isinstance(claims, dict):
        raise MalformedToken("header and claims must be JSON objects")
    return header, claims, signing_input, signature


def check_registered_claims(claims: dict[str, Any], *, audience: str, now: float, leeway: float) -> None:
    """The registered claims as RFC 7519 (and PyJWT, which these tokens were first checked with) reads them:
    required present, times integers, not expired, not issued or valid only in the future, addressed here.
    Raises InvalidPrincipalToken."""
    if any(name not in claims for name in REQUIRED_CLAIMS):
        raise InvalidPrincipalToken("principal token signature or claims invalid")
    try:
        times = {name: int(claims[name]) for name in ("iat", "nbf", "exp") if name in claims}
    except (ValueError, TypeError, OverflowError) as exc:
        raise InvalidPrincipalToken("principal token signature or claims invalid") from exc
    if times["iat"] > now + leeway or times.get("nbf", 0) > now + leeway:
        raise InvalidPrincipalToken("principal token signature or claims invalid")
    if times["exp"] <= now - leeway:
        raise InvalidPrincipalToken("principal token expired")
    if not isinstance(claims["jti"], str):
        raise InvalidPrincipalToken("principal token signature or claims invalid")
    addressed = claims["aud"]
    if isinstance(addressed, str):
        addressed = [addressed]
    if not isinstance(addressed, list) or not all(isinstance(a, str) for a in addressed):
        raise InvalidPrincipalToken("principal token signature or claims invalid")
    if audience not in addressed:
        raise InvalidPrincipalToken("principal token is addressed to another service")


# Who a principal can be, spelled once for the gateway, every service and the command line.
# Checked with fullmatch: `$` alone also accepts a trailing newline, and `\d` accepts any Unicode digit.
TENANT_ID = re.compile(r"[a-z0-9][a-z0-9-]{1,62}")
"""A provider tenant's id: 2-63 of a-z, 0-9 and '-', starting with a letter or digit."""
REGION_CODE = re.compile(r"[0-9]{6}")
"""A GB/T 2260 administrative division code (six digits; 000000 is national)."""
NATIONAL = "000000"
DEPARTMENTS = ("cyberspace", "culture_tourism", "radio_television", "public_security")
"""The regulator departments (avgate.common.v1.Department, lower case, without prefix)."""

REQUEST_ID = re.compile(r"[A-Za-z0-9._-]{1,64}")
"""What a caller's `x-request-id` may look like to be kept."""


def accepted_request_id(offered: str | None) -> str | None:
    """The caller's request id when it may be kept; None when a new one must replace it.

    A kept id is recorded in every ledger entry the call writes, so one that
    looks like personal data (a mobile number, say) is replaced, never written.
    """
    if offered and REQUEST_ID.fullmatch(offered) and not contains_personal_data(offered):
        return offered
    return None


class Role(enum.Enum):
    """Mirrors avgate.common.v1.Role (names without the ROLE_ prefix)."""

    PROVIDER = "provider"
    REGULATOR = "regulator"
    PUBLIC = "public"
    OPERATOR = "operator"
    SERVICE = "service"


@dataclass(frozen=True)
class RegulatorScope:
    departments: tuple[str, ...] = ()
    region_codes: tuple[str, ...] = ()


@dataclass(frozen=True)
class Principal:
    """The authenticated caller of one RPC."""

    role: Role
    subject: str
    tenant_id: str | None = None
    regulator_scope: RegulatorScope | None = None
    client_address: str | None = None
    request_id: str = ""
    origin: Principal | None = None
    """For ROLE_SERVICE: the principal the calling service acts for."""

    def require_tenant(self) -> str:
        """The tenant every record this call touches must belong to."""
        effective = self.effective
        if not effective.tenant_id:
            raise PermissionDenied("this operation needs a provider tenant")
        return effective.tenant_id

    def require_role(self, *roles: Role) -> None:
        if self.effective.role not in roles:
            allowed = ", ".join(r.value for r in roles)
            raise PermissionDenied(f"role {self.effective.role.value} may not do this (needs {allowed})")

    @property
    def effective(self) -> Principal:
        """The outermost human/provider principal, looking through service hops."""
        p = self
        while p.role is Role.SERVICE and p.origin is not None:
            p = p.origin
        return p

    def to_claims(self) -> dict[str, Any]:
        claims: dict[str, Any] = {"role": self.role.value, "sub": self.subject}
        if self.tenant_id:
            claims["tenant"] = self.tenant_id
        if self.regulator_scope is not None:
            claims["scope"] = {
                "departments": list(self.regulator_scope.departments),
                "regions": list(self.regulator_scope.region_codes),
            }
        if self.client_address:
            claims["cip"] = self.client_address
        if self.origin is not None:
            claims["origin"] = self.origin.to_claims()
        return claims

    @classmethod
    def from_claims(cls, claims: dict[str, Any], request_id: str, depth: int = 0) -> Principal:
        if depth > 4:
            raise InvalidPrincipalToken("principal nesting too deep")
        try:
            role = Role(claims["role"])
            subject = str(claims["sub"])
        except (KeyError, ValueError) as exc:
            raise InvalidPrincipalToken("principal claims are malformed") from exc
        scope = None
        if "scope" in claims:
            raw = claims["scope"]
            scope = RegulatorScope(tuple(raw.get("departments", ())), tuple(raw.get("regions", ())))
        origin = cls.from_claims(claims["origin"], request_id, depth + 1) if "origin" in claims else None
        return cls(
            role=role,
            subject=subject,
            tenant_id=claims.get("tenant"),
            regulator_scope=scope,
            client_address=claims.get("cip"),
            request_id=request_id,
            origin=origin,
        )


def normalise_client_address(value: str) -> str | None:
    """An IP address in canonical form, or None when value is not one."""
    try:
        return str(ipaddress.ip_address(value.strip()))
    except ValueError:
        return None


class TokenSigner:
    """Signs principal tokens addressed to one service and one method."""

    def __init__(self, key: SigningKey, ttl_seconds: float = 30.0):
        self._key = key
        self._ttl = ttl_seconds
        # The header is the same on every token: serialised once (keys sorted, as PyJWT wrote it).
        self._header = b64url(compact_json({"alg": "EdDSA", "kid": key.kid, "typ": "JWT"})) + b"."

    @property
    def issuer(self) -> str:
        return self._key.issuer

    def sign(self, principal: Principal, *, audience: str, method: str) -> str:
        now = int(time.time())
        claims = {
            "iss": self._key.issuer,
            "aud": audience,
            "iat": now,
            "nbf": now - 1,
            "exp": now + int(self._ttl),
            "jti": uuid.uuid4().hex,
            "rid": principal.request_id,
            "mth": method,
            "prn": principal.to_claims(),
        }
        signing_input = self._header + b64url(compact_json(claims))
        return (signing_input + b"." + b64url(self._key.private_key.sign(signing_input))).decode("ascii")

    def sign_as_service(self, origin: Principal, *, audience: str, method: str) -> str:
        """A token naming this process as the caller, acting for `origin`."""
        me = Principal(role=Role.SERVICE, subject=self._key.issuer, request_id=origin.request_id, origin=origin)
        return self.sign(me, audience=audience, method=method)


class ReplayCache:
    """Token ids seen within their lifetime, bounded in size."""

    def __init__(self, max_entries: int = 200_000):
        self._seen: OrderedDict[str, float] = OrderedDict()
        self._max = max_entries

    def check_and_add(self, jti: str, expires_at: float) -> bool:
        """True the first time a token id is seen; False for a replay."""
        now = time.time()
        while self._seen:
            oldest_jti, oldest_exp = next(iter(self._seen.items()))
            if oldest_exp + _CLOCK_SKEW_SECONDS >= now and len(self._seen) < self._max:
                break
            self._seen.pop(oldest_jti)
        if jti in self._seen:
            return False
        self._seen[jti] = expires_at
        return True


@dataclass
class TokenVerifier:
    """Verifies principal tokens addressed to this service."""

    audience: str
    trusted_keys: dict[str, dict[str, Ed25519PublicKey]]
    replay_cache: ReplayCache = field(default_factory=ReplayCache)

    def verify(self, token: str | None, *, method: str) -> Principal:
        if not token:
            raise InvalidPrincipalToken("missing principal token; call through the gateway")
        try:
            header, claims, signing_input, signature = token_parts(token)
        except MalformedToken as exc:
            raise InvalidPrincipalToken("malformed principal token") from exc
        if header.get("alg") != "EdDSA":
            raise InvalidPrincipalToken("principal token must be signed with EdDSA")
        issuer = claims.get("iss")
        key = self.trusted_keys.get(str(issuer), {}).get(str(header.get("kid")))
        if key is None:
            raise InvalidPrincipalToken("principal token signed by an untrusted key")
        try:
            key.verify(signature, signing_input)
        except InvalidSignature as exc:
            raise InvalidPrincipalToken("principal token signature or claims invalid") from exc
        check_registered_claims(claims, audience=self.audience, now=time.time(), leeway=_CLOCK_SKEW_SECONDS)
        if claims["mth"] != method:
            raise InvalidPrincipalToken("principal token is addressed to another method")
        principal = Principal.from_claims(claims["prn"], request_id=str(claims.get("rid", "")))
        if issuer != GATEWAY_ISSUER and not (principal.role is Role.SERVICE and principal.subject == issuer):
            # A service may only speak for itself; only the gateway names outside callers.
            raise InvalidPrincipalToken("a service token must name its issuer as the caller")
        if principal.role is Role.SERVICE and issuer == GATEWAY_ISSUER:
            raise InvalidPrincipalToken("the gateway does not issue service principals")
        if not self.replay_cache.check_and_add(str(claims["jti"]), float(claims["exp"])):
            raise InvalidPrincipalToken("principal token was already used")
        return principal


_current: contextvars.ContextVar[Principal | None] = contextvars.ContextVar("avgate_principal", default=None)


def current_principal() -> Principal:
    """The verified principal of the RPC being handled."""
    principal = _current.get()
    if principal is None:
        raise InvalidPrincipalToken("no verified principal for this call")
    return principal


def bound_principal() -> Principal | None:
    """The principal bound to the current call, or None outside one (for logs and error reports)."""
    return _current.get()


def bind_principal(principal: Principal | None) -> contextvars.Token[Principal | None]:
    return _current.set(principal)


def unbind_principal(token: contextvars.Token[Principal | None]) -> None:
    _current.reset(token)


_peer: contextvars.ContextVar[str | None] = contextvars.ContextVar("avgate_peer_process", default=None)


def peer_process() -> str | None:
    """The avgate process the current call's mTLS certificate names; None on a plaintext listener.

    Over mTLS the connection says who is calling, so a service accepts a token
    only from the process that signed it (the gateway's from the gateway)."""
    return _peer.get()


def bind_peer_process(process: str | None) -> contextvars.Token[str | None]:
    return _peer.set(process)


def unbind_peer_process(token: contextvars.Token[str | None]) -> None:
    _peer.reset(token)
