"""Principal tokens: what a service accepts and what it refuses."""

from __future__ import annotations

import time

import jwt
import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from avgate.kernel.errors import InvalidPrincipalToken, PermissionDenied
from avgate.kernel.keys import SigningKey, key_id
from avgate.kernel.principal import Principal, RegulatorScope, Role, TokenSigner, TokenVerifier

METHOD = "/avgate.identity.v1.IdentityService/CheckEligibility"


@pytest.fixture
def gateway_key() -> SigningKey:
    return SigningKey("gateway", Ed25519PrivateKey.generate())


@pytest.fixture
def screening_key() -> SigningKey:
    return SigningKey("screening", Ed25519PrivateKey.generate())


@pytest.fixture
def verifier(gateway_key: SigningKey, screening_key: SigningKey) -> TokenVerifier:
    trusted = {
        k.issuer: {key_id(k.private_key.public_key()): k.private_key.public_key()} for k in (gateway_key, screening_key)
    }
    return TokenVerifier(audience="identity", trusted_keys=trusted)


PROVIDER = Principal(role=Role.PROVIDER, subject="ak1", tenant_id="t1", client_address="203.0.113.7", request_id="r1")


class TestAcceptedTokens:
    def test_gateway_token_yields_the_signed_principal(self, gateway_key: SigningKey, verifier: TokenVerifier) -> None:
        token = TokenSigner(gateway_key).sign(PROVIDER, audience="identity", method=METHOD)
        assert verifier.verify(token, method=METHOD) == PROVIDER

    def test_regulator_scope_survives_the_round_trip(self, gateway_key: SigningKey, verifier: TokenVerifier) -> None:
        regulator = Principal(
            role=Role.REGULATOR,
            subject="ak2",
            regulator_scope=RegulatorScope(("cyberspace",), ("110000",)),
            request_id="r",
        )
        token = TokenSigner(gateway_key).sign(regulator, audience="identity", method=METHOD)
        assert verifier.verify(token, method=METHOD).regulator_scope == RegulatorScope(("cyberspace",), ("110000",))

    def test_service_token_nests_the_original_principal(
        self, screening_key: SigningKey, verifier: TokenVerifier
    ) -> None:
        token = TokenSigner(screening_key).sign_as_service(PROVIDER, audience="identity", method=METHOD)
        principal = verifier.verify(token, method=METHOD)
        assert (principal.role, principal.subject) == (Role.SERVICE, "screening")
        assert principal.origin == PROVIDER
        assert principal.effective == PROVIDER
        assert principal.require_tenant() == "t1"


class TestRefusedTokens:
    def test_missing_token(self, verifier: TokenVerifier) -> None:
        with pytest.raises(InvalidPrincipalToken, match="missing"):
            verifier.verify(None, method=METHOD)

    def test_token_signed_by_an_unknown_key_claiming_to_be_the_gateway(
        self, gateway_key: SigningKey, verifier: TokenVerifier
    ) -> None:
        forger = SigningKey("gateway", Ed25519PrivateKey.generate())
        token = TokenSigner(forger).sign(PROVIDER, audience="identity", method=METHOD)
        with pytest.raises(InvalidPrincipalToken, match="untrusted key"):
            verifier.verify(token, method=METHOD)

    def test_forged_signature_under_the_real_key_id(self, gateway_key: SigningKey, verifier: TokenVerifier) -> None:
        forger = Ed25519PrivateKey.generate()
        claims = jwt.decode(
            TokenSigner(gateway_key).sign(PROVIDER, audience="identity", method=METHOD),
            options={"verify_signature": False},
        )
        claims["prn"]["tenant"] = "another-tenant"
        token = jwt.encode(claims, forger, algorithm="EdDSA", headers={"kid": gateway_key.kid})
        with pytest.raises(InvalidPrincipalToken, match="signature"):
            verifier.verify(token, method=METHOD)

    def test_tampered_payload(self, gateway_key: SigningKey, verifier: TokenVerifier) -> None:
        token = TokenSigner(gateway_key).sign(PROVIDER, audience="identity", method=METHOD)
        header, _payload, signature = token.split(".")
        claims = jwt.decode(token, options={"verify_signature": False})
        claims["prn"]["role"] = "operator"
        forged_payload = jwt.encode(claims, "x", algorithm="HS256").split(".")[1]
        with pytest.raises(InvalidPrincipalToken):
            verifier.verify(f"{header}.{forged_payload}.{signature}", method=METHOD)

    def test_replayed_token(self, gateway_key: SigningKey, verifier: TokenVerifier) -> None:
        token = TokenSigner(gateway_key).sign(PROVIDER, audience="identity", method=METHOD)
        verifier.verify(token, method=METHOD)
        with pytest.raises(InvalidPrincipalToken, match="already used"):
            verifier.verify(token, method=METHOD)

    def test_token_addressed_to_another_service(self, gateway_key: SigningKey, verifier: TokenVerifier) -> None:
        token = TokenSigner(gateway_key).sign(PROVIDER, audience="reporting", method=METHOD)
        with pytest.raises(InvalidPrincipalToken, match="another service"):
            verifier.verify(token, method=METHOD)

    def test_token_addressed_to_another_method(self, gateway_key: SigningKey, verifier: TokenVerifier) -> None:
        token = TokenSigner(gateway_key).sign(PROVIDER, audience="identity", method=METHOD + "X")
        with pytest.raises(InvalidPrincipalToken, match="another method"):
            verifier.verify(token, method=METHOD)

    def test_expired_token(self, gateway_key: SigningKey, verifier: TokenVerifier) -> None:
        claims = jwt.decode(
            TokenSigner(gateway_key).sign(PROVIDER, audience="identity", method=METHOD),
            options={"verify_signature": False},
        )
        claims["exp"] = int(time.time()) - 60
        token = jwt.encode(claims, gateway_key.private_key, algorithm="EdDSA", headers={"kid": gateway_key.kid})
        with pytest.raises(InvalidPrincipalToken, match="expired"):
            verifier.verify(token, method=METHOD)

    def test_service_cannot_speak_as_an_outside_caller(
        self, screening_key: SigningKey, verifier: TokenVerifier
    ) -> None:
        token = TokenSigner(screening_key).sign(PROVIDER, audience="identity", method=METHOD)
        with pytest.raises(InvalidPrincipalToken, match="must name its issuer"):
            verifier.verify(token, method=METHOD)

    def test_service_cannot_impersonate_another_service(
        self, screening_key: SigningKey, verifier: TokenVerifier
    ) -> None:
        other = Principal(role=Role.SERVICE, subject="reporting", origin=PROVIDER)
        token = TokenSigner(screening_key).sign(other, audience="identity", method=METHOD)
        with pytest.raises(InvalidPrincipalToken, match="must name its issuer"):
            verifier.verify(token, method=METHOD)

    def test_gateway_cannot_mint_service_principals(self, gateway_key: SigningKey, verifier: TokenVerifier) -> None:
        token = TokenSigner(gateway_key).sign(
            Principal(role=Role.SERVICE, subject="gateway"), audience="identity", method=METHOD
        )
        with pytest.raises(InvalidPrincipalToken, match="does not issue service"):
            verifier.verify(token, method=METHOD)


class TestTenancy:
    def test_regulator_has_no_tenant(self) -> None:
        with pytest.raises(PermissionDenied):
            Principal(role=Role.REGULATOR, subject="r").require_tenant()


class TestJwtFormat:
    """Tokens are signed and checked without a JWT library; any JWT library must agree with both."""

    def test_a_jwt_library_verifies_a_signed_token(self, gateway_key: SigningKey) -> None:
        token = TokenSigner(gateway_key).sign(PROVIDER, audience="identity", method=METHOD)
        assert jwt.get_unverified_header(token) == {"alg": "EdDSA", "kid": gateway_key.kid, "typ": "JWT"}
        claims = jwt.decode(
            token, gateway_key.private_key.public_key(), algorithms=["EdDSA"], audience="identity", issuer="gateway"
        )
        assert (claims["mth"], claims["prn"]["tenant"]) == (METHOD, "t1")

    def test_a_token_a_jwt_library_signed_is_accepted(self, gateway_key: SigningKey, verifier: TokenVerifier) -> None:
        now = int(time.time())
        claims = {
            "iss": "gateway",
            "aud": ["identity", "other"],
            "iat": now,
            "nbf": now,
            "exp": now + 30,
            "jti": "j1",
            "rid": "r1",
            "mth": METHOD,
            "prn": PROVIDER.to_claims(),
        }
        token = jwt.encode(claims, gateway_key.private_key, algorithm="EdDSA", headers={"kid": gateway_key.kid})
        assert verifier.verify(token, method=METHOD) == PROVIDER

    @pytest.mark.parametrize(
        "change",
        [
            {"iat": 10**10},
            {"nbf": 10**10},
            {"exp": "soon"},
            {"jti": 7},
            {"aud": [1]},
            {"mth": None},
        ],
        ids=["issued-in-the-future", "not-yet-valid", "exp-not-a-number", "jti-not-text", "aud-not-text", "no-mth"],
    )
    def test_claims_out_of_shape_are_refused(
        self, gateway_key: SigningKey, verifier: TokenVerifier, change: dict[str, object]
    ) -> None:
        claims = jwt.decode(
            TokenSigner(gateway_key).sign(PROVIDER, audience="identity", method=METHOD),
            options={"verify_signature": False},
        )
        claims.update(change)
        claims = {k: v for k, v in claims.items() if v is not None}
        token = jwt.encode(claims, gateway_key.private_key, algorithm="EdDSA", headers={"kid": gateway_key.kid})
        with pytest.raises(InvalidPrincipalToken, match="claims invalid"):
            verifier.verify(token, method=METHOD)

    @pytest.mark.parametrize("token", ["abc", "a.b", "a.b.c.d", "é.é.é", "e30.W10.AA", "bm90IGpzb24.e30.AA"])
    def test_malformed_tokens_are_refused(self, verifier: TokenVerifier, token: str) -> None:
        with pytest.raises(InvalidPrincipalToken, match="malformed"):
            verifier.verify(token, method=METHOD)
