"""The shared test helpers do what the tests that use them rely on."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from avgate.kernel.keys import SigningKey
from avgate.kernel.principal import TOKEN_METADATA_KEY, Role, TokenSigner, TokenVerifier
from tests.support import FakeClock, Tokens, operator, provider, regulator, service

T0 = datetime(2027, 1, 1, tzinfo=UTC)
METHOD = "/avgate.reporting.v1.IncidentService/GetIncident"


class TestFakeClock:
    def test_reads_the_same_instant_until_moved(self) -> None:
        clock = FakeClock(T0)
        assert clock() == clock() == T0

    def test_advances_by_a_delta_or_by_keywords(self) -> None:
        clock = FakeClock(T0)
        assert clock.advance(timedelta(hours=1)) == T0 + timedelta(hours=1)
        assert clock.advance(minutes=5, seconds=1) == T0 + timedelta(hours=1, minutes=5, seconds=1)
        assert clock() == clock.now

    def test_a_tick_moves_every_reading(self) -> None:
        clock = FakeClock(T0, tick=timedelta(microseconds=1))
        assert clock() < clock()

    def test_refuses_naive_time(self) -> None:
        with pytest.raises(ValueError, match="aware"):
            FakeClock(datetime(2027, 1, 1))


class TestPrincipals:
    def test_defaults_are_the_ones_tests_compare_against(self) -> None:
        assert provider("acme").subject == "key-acme"
        assert provider("acme").request_id == "req-1"
        assert regulator().regulator_scope is not None
        assert regulator().regulator_scope.region_codes == ("000000",)
        assert operator().subject == "ops-1"
        acting = service("screening", origin=provider("acme"))
        assert acting.role is Role.SERVICE and acting.effective.tenant_id == "acme"

    def test_tokens_sign_outside_callers_as_the_gateway_and_services_as_themselves(self) -> None:
        gateway = SigningKey("gateway", Ed25519PrivateKey.generate())
        screening = SigningKey("screening", Ed25519PrivateKey.generate())
        tokens = Tokens(
            TokenSigner(gateway),
            "reporting",
            "/avgate.reporting.v1.IncidentService/",
            services={"screening": TokenSigner(screening)},
        )
        verifier = TokenVerifier(
            audience="reporting",
            trusted_keys={
                "gateway": {gateway.kid: gateway.private_key.public_key()},
                "screening": {screening.kid: screening.private_key.public_key()},
            },
        )
        for caller in (provider("acme"), service("screening", origin=provider("acme"))):
            ((key, token),) = tokens(caller, "GetIncident")
            assert key == TOKEN_METADATA_KEY
            verified = verifier.verify(token, method=METHOD)
            assert (verified.role, verified.subject, verified.effective.tenant_id) == (
                caller.role,
                caller.subject,
                "acme",
            )
