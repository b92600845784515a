"""The production profile refuses every local stand-in, by name."""

from __future__ import annotations

import pathlib

import pytest

from avgate.kernel.settings import ProductionProfileError
from avgate.kernel.tls import generate_ca, issue_process_certificate
from gateway.config import GatewaySettings
from services.identity.config import IdentitySettings


@pytest.fixture(autouse=True)
def clean_env(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in ("DATABASE_URL", "AVGATE_GENERATE_KEYS", "GATEWAY_DEV_API_KEYS", "IDENTITY_DATABASE_URL", "AVGATE_ENV"):
        monkeypatch.delenv(name, raising=False)


class TestLocalProfile:
    def test_defaults_are_a_working_local_stack(self) -> None:
        settings = GatewaySettings()
        settings.check_production()  # local: nothing refused
        assert settings.grpc_port == 50051
        assert settings.upstream_targets()["identity"] == "127.0.0.1:50061"


def mount_tls_files(monkeypatch: pytest.MonkeyPatch) -> None:
    """The internal mTLS files as a pod mounts them (the paths are only named, never read)."""
    monkeypatch.setenv("AVGATE_TLS_CA_FILE", "/run/secrets/tls/ca.pem")
    monkeypatch.setenv("AVGATE_TLS_CERT_FILE", "/run/secrets/tls/tls.crt")
    monkeypatch.setenv("AVGATE_TLS_KEY_FILE", "/run/secrets/tls/tls.key")


class TestProductionProfile:
    def test_refuses_defaults_and_names_each_stand_in(self, monkeypatch: pytest.MonkeyPatch) -> None:
        monkeypatch.setenv("AVGATE_ENV", "production")
        with pytest.raises(ProductionProfileError) as refused:
            GatewaySettings().check_production()
        text = str(refused.value)
        assert "AVGATE_GENERATE_KEYS" in text
        assert "GATEWAY_DEV_API_KEYS" in text
        assert "embedded PostgreSQL" in text
        for variable in ("AVGATE_TLS_CA_FILE", "AVGATE_TLS_CERT_FILE", "AVGATE_TLS_KEY_FILE"):
            assert variable in text
        assert "GATEWAY_TLS_CERT_FILE" in text and "GATEWAY_TLS_KEY_FILE" in text
        assert len(refused.value.problems) == 8

    def test_starts_when_every_stand_in_is_replaced(self, monkeypatch: pytest.MonkeyPatch) -> None:
        monkeypatch.setenv("AVGATE_ENV", "production")
        monkeypatch.setenv("AVGATE_GENERATE_KEYS", "false")
        monkeypatch.setenv("GATEWAY_DEV_API_KEYS", "false")
        monkeypatch.setenv("GATEWAY_DATABASE_URL", "postgresql://gw@db/avgate")
        mount_tls_files(monkeypatch)
        monkeypatch.setenv("GATEWAY_TLS_CERT_FILE", "/run/secrets/gateway-public/tls.crt")
        monkeypatch.setenv("GATEWAY_TLS_KEY_FILE", "/run/secrets/gateway-public/tls.key")
        GatewaySettings().check_production()

    def test_refuses_certificates_generated_by_avgate_run(
        self, monkeypatch: pytest.MonkeyPatch, tmp_path: pathlib.Path
    ) -> None:
        ca = generate_ca(tmp_path, "ca")
        own = issue_process_certificate(ca, tmp_path, "gateway")
        monkeypatch.setenv("AVGATE_ENV", "production")
        monkeypatch.setenv("AVGATE_GENERATE_KEYS", "false")
        monkeypatch.setenv("GATEWAY_DEV_API_KEYS", "false")
        monkeypatch.setenv("GATEWAY_DATABASE_URL", "postgresql://gw@db/avgate")
        monkeypatch.setenv("AVGATE_TLS_CA_FILE", str(ca.cert_file))
        monkeypatch.setenv("AVGATE_TLS_CERT_FILE", str(own.cert_file))
        monkeypatch.setenv("AVGATE_TLS_KEY_FILE", str(own.key_file))
        monkeypatch.setenv("GATEWAY_TLS_CERT_FILE", str(own.cert_file))
        monkeypatch.setenv("GATEWAY_TLS_KEY_FILE", str(own.key_file))
        with pytest.raises(ProductionProfileError) as refused:
            GatewaySettings().check_production()
        assert len(refused.value.problems) == 2
        assert "AVGATE_TLS_CA_FILE" in refused.value.problems[0] and "avgate run" in refused.value.problems[0]
        assert "GATEWAY_TLS_CERT_FILE" in refused.value.problems[1] and "avgate run" in refused.value.problems[1]

    def test_service_url_falls_back_to_database_url(self, monkeypatch: pytest.MonkeyPatch) -> None:
        monkeypatch.setenv("AVGATE_ENV", "production")
        monkeypatch.setenv("AVGATE_GENERATE_KEYS", "false")
        monkeypatch.setenv("DATABASE_URL", "postgresql://shared@db/avgate")
        monkeypatch.setenv("IDENTITY_VAULT_KEK_FILE", "/run/secrets/identity/vault.kek")
        monkeypatch.setenv("IDENTITY_BLIND_INDEX_KEY_FILE", "/run/secrets/identity/index.keys")
        monkeypatch.setenv("IDENTITY_SMS_URL", "https://sms.example.internal/send")
        monkeypatch.setenv("IDENTITY_CODE_HASH_KEY_FILE", "/run/secrets/identity-codes.key")
        monkeypatch.setenv("IDENTITY_VERIFIER_URL", "https://verifier.example.internal")
        mount_tls_files(monkeypatch)
        settings = IdentitySettings()
        settings.check_production()
        assert settings.effective_database_url == "postgresql://shared@db/avgate"

    def test_own_url_wins_over_database_url(self, monkeypatch: pytest.MonkeyPatch) -> None:
        monkeypatch.setenv("DATABASE_URL", "postgresql://shared@db/avgate")
        monkeypatch.setenv("IDENTITY_DATABASE_URL", "postgresql://avgate_identity@db/avgate")
        assert IdentitySettings().effective_database_url == "postgresql://avgate_identity@db/avgate"


class TestIncidentHandoffSettings:
    def test_each_service_reads_its_handoff_settings_under_its_own_prefix(
        self, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        from services.screening.config import ScreeningSettings

        monkeypatch.setenv("SCREENING_REPORTING_TARGET", "avgate-reporting:50063")
        monkeypatch.setenv("SCREENING_DISPATCHER_MAX_ATTEMPTS", "7")
        screening = ScreeningSettings()
        assert screening.reporting_target == "avgate-reporting:50063"
        assert screening.dispatcher_max_attempts == 7
        identity = IdentitySettings()
        assert identity.reporting_target == "127.0.0.1:50063"  # the local stack's reporting
        assert identity.dispatcher_enabled
