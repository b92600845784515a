"""Identity's SMS, code and verifier settings: the production profile names
each local stand-in (the SMS file, a generated code key, no verifier or the
verification stand-in on this machine)."""

from __future__ import annotations

import pathlib

import pytest

from avgate.kernel.settings import ProductionProfileError
from services.identity.config import IdentitySettings

REAL = {
    "AVGATE_ENV": "production",
    "AVGATE_GENERATE_KEYS": "false",
    "IDENTITY_DATABASE_URL": "postgresql://avgate_identity@db/avgate",
    "IDENTITY_SMS_URL": "https://sms.example.internal/send",
    "IDENTITY_CODE_HASH_KEY_FILE": "/run/secrets/identity-codes.key",
    "IDENTITY_VERIFIER_URL": "https://verifier.example.internal",
    "IDENTITY_VAULT_KEK_FILE": "/run/secrets/identity-vault.kek",
    "IDENTITY_BLIND_INDEX_KEY_FILE": "/run/secrets/identity-index.keys",
    "AVGATE_TLS_CA_FILE": "/run/secrets/tls/ca.pem",
    "AVGATE_TLS_CERT_FILE": "/run/secrets/tls/identity.pem",
    "AVGATE_TLS_KEY_FILE": "/run/secrets/tls/identity.key",
}


@pytest.fixture(autouse=True)
def production(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("DATABASE_URL", raising=False)
    for name, value in REAL.items():
        monkeypatch.setenv(name, value)


class TestProductionProfile:
    def test_starts_with_real_sms_key_and_verifier(self) -> None:
        IdentitySettings().check_production()

    @pytest.mark.parametrize(
        ("unset", "named"),
        [
            ("IDENTITY_SMS_URL", "IDENTITY_SMS_URL"),
            ("IDENTITY_CODE_HASH_KEY_FILE", "IDENTITY_CODE_HASH_KEY_FILE"),
            ("IDENTITY_VERIFIER_URL", "IDENTITY_VERIFIER_URL"),
        ],
        ids=["sms-file-sink", "generated-code-key", "no-verifier"],
    )
    def test_refuses_each_stand_in(self, monkeypatch: pytest.MonkeyPatch, unset: str, named: str) -> None:
        monkeypatch.delenv(unset)
        with pytest.raises(ProductionProfileError) as refused:
            IdentitySettings().check_production()
        assert len(refused.value.problems) == 1 and named in refused.value.problems[0]

    @pytest.mark.parametrize("url", ["http://127.0.0.1:50071", "http://localhost:8080", "http://[::1]:9000"])
    def test_refuses_the_verification_stand_in_on_this_machine(self, monkeypatch: pytest.MonkeyPatch, url: str) -> None:
        monkeypatch.setenv("IDENTITY_VERIFIER_URL", url)
        with pytest.raises(ProductionProfileError) as refused:
            IdentitySettings().check_production()
        assert "stand-in" in refused.value.problems[0]


class TestLocalDefaults:
    def test_defaults(self, monkeypatch: pytest.MonkeyPatch) -> None:
        for name in REAL:
            monkeypatch.delenv(name)
        settings = IdentitySettings()
        settings.check_production()  # local: nothing refused
        assert settings.code_ttl_seconds == 300 and settings.code_max_attempts == 5
        assert settings.lockout_seconds == [60, 300, 900, 3600]
        assert settings.own_sms_sink_file == settings.state_dir / "sms" / "messages.jsonl"

    def test_lockouts_must_escalate(self, monkeypatch: pytest.MonkeyPatch) -> None:
        monkeypatch.setenv("IDENTITY_LOCKOUT_SECONDS", "[300, 60]")
        with pytest.raises(ValueError, match="non-decreasing"):
            IdentitySettings()


class TestWiring:
    def test_local_defaults_build_the_stand_ins(self, monkeypatch: pytest.MonkeyPatch, tmp_path: pathlib.Path) -> None:
        from services.identity import wiring
        from services.identity.sms import FileSmsSink

        for name in REAL:
            monkeypatch.delenv(name)
        monkeypatch.setenv("AVGATE_STATE_DIR", str(tmp_path))
        settings = IdentitySettings()
        keys = wiring.code_keys(settings)
        assert (tmp_path / "keys" / "identity-codes.key").stat().st_mode & 0o077 == 0
        assert wiring.code_keys(settings) == keys  # generated once, then read
        assert isinstance(wiring.sms_sender(settings), FileSmsSink)
        assert wiring.identity_verifier(settings) is None
        limits = wiring.abuse_limits(settings, keys)
        assert limits.lockouts.duration(9).total_seconds() == 3600
