"""Evidence settings: the preservation period, the key-encryption key file and
the evidence directory, and the production profile's refusal of local stand-ins."""

from __future__ import annotations

import os
import pathlib
import stat
from datetime import timedelta

import pytest
from pydantic import ValidationError

from avgate.kernel.settings import ProductionProfileError
from services.reporting.config import ReportingSettings
from services.reporting.evidence.crypto import KeyRing
from services.reporting.wiring import evidence_keys


@pytest.fixture(autouse=True)
def clean_env(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in list(os.environ):
        if name.startswith(("REPORTING_", "AVGATE_")) or name == "DATABASE_URL":
            monkeypatch.delenv(name, raising=False)


class TestRetention:
    def test_evidence_is_preserved_for_a_year_by_default(self) -> None:
        assert ReportingSettings().evidence_retention == timedelta(days=365)

    @pytest.mark.parametrize(
        ("value", "expected"),
        [("P730D", timedelta(days=730)), ("86400", timedelta(days=1))],
        ids=["iso-8601", "seconds"],
    )
    def test_the_period_is_configurable(self, monkeypatch: pytest.MonkeyPatch, value: str, expected: timedelta) -> None:
        monkeypatch.setenv("REPORTING_EVIDENCE_RETENTION", value)
        assert ReportingSettings().evidence_retention == expected

    @pytest.mark.parametrize("value", ["PT23H", "0", "-86400"], ids=["hours", "zero", "negative"])
    def test_less_than_a_day_is_refused(self, monkeypatch: pytest.MonkeyPatch, value: str) -> None:
        monkeypatch.setenv("REPORTING_EVIDENCE_RETENTION", value)
        with pytest.raises(ValidationError, match="at least one day"):
            ReportingSettings()


class TestProductionProfile:
    def test_a_generated_kek_and_the_state_directory_are_refused_by_name(self, monkeypatch: pytest.MonkeyPatch) -> None:
        monkeypatch.setenv("AVGATE_ENV", "production")
        with pytest.raises(ProductionProfileError) as refused:
            ReportingSettings().check_production()
        assert "REPORTING_EVIDENCE_KEK_FILE" in str(refused.value)
        assert "REPORTING_EVIDENCE_DIR" in str(refused.value)
        assert "REPORTING_EXPORT_DIR" in str(refused.value)

    def test_a_mounted_kek_and_evidence_volume_are_not_stand_ins(self, monkeypatch: pytest.MonkeyPatch) -> None:
        monkeypatch.setenv("REPORTING_EVIDENCE_KEK_FILE", "/var/run/avgate/evidence-kek/evidence.kek")
        monkeypatch.setenv("REPORTING_EVIDENCE_DIR", "/var/lib/avgate/evidence")
        problems = ReportingSettings().local_stand_ins()
        assert not [p for p in problems if "EVIDENCE" in p]


class TestKeyEncryptionKeyFile:
    def test_the_local_profile_generates_a_private_kek_under_the_keys_directory(self, tmp_path: pathlib.Path) -> None:
        settings = ReportingSettings(state_dir=tmp_path, generate_keys=False)  # type: ignore[call-arg]
        ring = evidence_keys(settings)
        path = tmp_path / "keys" / "evidence.kek"
        assert stat.S_IMODE(path.stat().st_mode) == 0o600
        assert KeyRing.parse(path.read_text()).current_id == ring.current_id
        assert evidence_keys(settings).current_id == ring.current_id  # generated once, then reused

    def test_a_named_kek_file_that_is_missing_is_refused_by_name(self, tmp_path: pathlib.Path) -> None:
        settings = ReportingSettings(
            state_dir=tmp_path,  # type: ignore[call-arg]
            generate_keys=False,  # type: ignore[call-arg]
            evidence_kek_file=tmp_path / "mounted" / "evidence.kek",
        )
        with pytest.raises(ValueError, match="REPORTING_EVIDENCE_KEK_FILE"):
            evidence_keys(settings)
        assert not (tmp_path / "mounted").exists()
