"""Every local stand-in a process can run on is named by its production profile.

With every production value set, a process's settings name no stand-in; take
any one of them away and exactly that stand-in is named, by its variable. A
new stand-in added to a settings class without a line here fails
`test_the_complete_profile_covers_every_variable_the_class_names`.
"""

from __future__ import annotations

import json
import os
import pathlib
import re

import pytest

from avgate.kernel.db import LEDGER_SEQUENCER_ROLE, owner
from avgate.kernel.principal import DEPARTMENTS
from avgate.kernel.process import check_production_profile
from avgate.kernel.settings import ProcessSettings, ProductionProfileError
from gateway.config import GatewaySettings
from services.complaints.config import ComplaintsSettings
from services.identity.config import IdentitySettings
from services.reporting.config import ReportingSettings
from services.screening.config import ScreeningSettings

PREFIXES = ("AVGATE_", "GATEWAY_", "IDENTITY_", "SCREENING_", "REPORTING_", "COMPLAINTS_")


def production(prefix: str) -> dict[str, str]:
    return {
        "AVGATE_ENV": "production",
        "AVGATE_GENERATE_KEYS": "false",
        f"{prefix}DATABASE_URL": f"postgresql://avgate_{prefix.lower().rstrip('_')}@db.internal/avgate",
        "AVGATE_TLS_CA_FILE": "/run/secrets/tls/ca.pem",
        "AVGATE_TLS_CERT_FILE": f"/run/secrets/tls/{prefix.lower().rstrip('_')}.pem",
        "AVGATE_TLS_KEY_FILE": f"/run/secrets/tls/{prefix.lower().rstrip('_')}.key",
    }


COMPLETE: dict[type[ProcessSettings], dict[str, str]] = {
    GatewaySettings: {
        **production("GATEWAY_"),
        "GATEWAY_DEV_API_KEYS": "false",
        "GATEWAY_TLS_CERT_FILE": "/run/secrets/gateway-public/tls.crt",
        "GATEWAY_TLS_KEY_FILE": "/run/secrets/gateway-public/tls.key",
    },
    IdentitySettings: {
        **production("IDENTITY_"),
        "IDENTITY_VAULT_KEK_FILE": "/run/secrets/identity/vault.kek",
        "IDENTITY_BLIND_INDEX_KEY_FILE": "/run/secrets/identity/index.keys",
        "IDENTITY_SMS_URL": "https://sms.example.cn/v1/messages",
        "IDENTITY_CODE_HASH_KEY_FILE": "/run/secrets/identity/codes.key",
        "IDENTITY_VERIFIER_URL": "https://verify.example.cn/",
    },
    ScreeningSettings: production("SCREENING_"),
    ReportingSettings: {
        **production("REPORTING_"),
        "REPORTING_SEQUENCER_DATABASE_URL": "postgresql://avgate_ledger_sequencer@db.internal/avgate",
        "REPORTING_LEDGER_ORIGIN": "avgate.example.cn/ledger",
        "REPORTING_AUTHORITIES": json.dumps(
            {d: {"type": "http", "url": f"https://{d}.authority.example.cn/reports"} for d in DEPARTMENTS}
        ),
        "REPORTING_EVIDENCE_KEK_FILE": "/run/secrets/reporting/evidence.kek",
        "REPORTING_EVIDENCE_DIR": "/var/lib/avgate/evidence",
        "REPORTING_EXPORT_DIR": "/var/lib/avgate/evidence/exports",
    },
    ComplaintsSettings: production("COMPLAINTS_"),
}
# A variable whose absence is no stand-in (it only says we are in production).
NOT_A_STAND_IN = {"AVGATE_ENV"}
CASES = [(cls, name) for cls, env in COMPLETE.items() for name in env if name not in NOT_A_STAND_IN]


@pytest.fixture(autouse=True)
def clean_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in list(os.environ):
        if name.startswith(PREFIXES) or name.endswith("DATABASE_URL"):
            monkeypatch.delenv(name)


def stand_ins(cls: type[ProcessSettings], env: dict[str, str], monkeypatch: pytest.MonkeyPatch) -> list[str]:
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    return cls().local_stand_ins()


@pytest.mark.parametrize("cls", list(COMPLETE), ids=[c.process_name for c in COMPLETE])
def test_a_complete_production_profile_names_no_stand_in(
    cls: type[ProcessSettings], monkeypatch: pytest.MonkeyPatch
) -> None:
    assert stand_ins(cls, COMPLETE[cls], monkeypatch) == []


@pytest.mark.parametrize(("cls", "missing"), CASES, ids=[f"{c.process_name}-{n}" for c, n in CASES])
def test_each_missing_production_value_is_named(
    cls: type[ProcessSettings], missing: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    env = {k: v for k, v in COMPLETE[cls].items() if k != missing}
    (problem,) = stand_ins(cls, env, monkeypatch)
    named = missing if not missing.endswith("_DATABASE_URL") or "SEQUENCER" in missing else "DATABASE_URL"
    assert named in problem


@pytest.mark.parametrize("cls", list(COMPLETE), ids=[c.process_name for c in COMPLETE])
def test_the_complete_profile_covers_every_variable_the_class_names(
    cls: type[ProcessSettings], monkeypatch: pytest.MonkeyPatch
) -> None:
    """With nothing set, every stand-in named is one a line of COMPLETE resolves."""
    problems = stand_ins(cls, {"AVGATE_ENV": "production"}, monkeypatch)
    named = {m.group() for p in problems for m in re.finditer(r"[A-Z][A-Z0-9_]*_[A-Z0-9_]+|DATABASE_URL", p)}
    assert named <= set(COMPLETE[cls]) | {"DATABASE_URL"}, named - set(COMPLETE[cls])
    assert len(problems) == len([n for n in COMPLETE[cls] if n not in NOT_A_STAND_IN])


@pytest.mark.parametrize("url", ["http://127.0.0.1:8090/", "http://localhost:8090/", "http://[::1]:8090/"])
def test_a_verifier_on_this_machine_is_the_local_stand_in(url: str, monkeypatch: pytest.MonkeyPatch) -> None:
    (problem,) = stand_ins(IdentitySettings, {**COMPLETE[IdentitySettings], "IDENTITY_VERIFIER_URL": url}, monkeypatch)
    assert "IDENTITY_VERIFIER_URL" in problem and "stand-in" in problem


# --------------------------------------------------------------------------- weak settings (issue 12, finding 8)


def refused(cls: type[ProcessSettings], env: dict[str, str], monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """What the production profile refuses in `env` (settings alone), the ProductionProfileError's lines."""
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    with pytest.raises(ProductionProfileError) as caught:
        cls().check_production()
    return caught.value.problems


class TestThirdPartiesOverPlainHttp:
    """A man in the middle of a plain-http call reads the one-time codes, answers "match" for the verifier,
    or reads and rewrites the reports: production names each such URL."""

    @pytest.mark.parametrize("variable", ["IDENTITY_SMS_URL", "IDENTITY_VERIFIER_URL"])
    def test_an_identity_third_party_over_http_is_refused(self, variable: str, monkeypatch: pytest.MonkeyPatch) -> None:
        env = {**COMPLETE[IdentitySettings], variable: "http://third-party.example.cn/v1"}
        (problem,) = refused(IdentitySettings, env, monkeypatch)
        assert variable in problem and "plain http" in problem

    def test_an_http_authority_is_refused_by_department(self, monkeypatch: pytest.MonkeyPatch) -> None:
        authorities = {d: {"type": "http", "url": f"https://{d}.authority.example.cn/reports"} for d in DEPARTMENTS}
        authorities["cyberspace"]["url"] = "http://cyberspace.authority.example.cn/reports"
        env = {**COMPLETE[ReportingSettings], "REPORTING_AUTHORITIES": json.dumps(authorities)}
        (problem,) = refused(ReportingSettings, env, monkeypatch)
        assert "REPORTING_AUTHORITIES" in problem and "cyberspace" in problem and "plain http" in problem

    def test_https_everywhere_is_accepted(self, monkeypatch: pytest.MonkeyPatch) -> None:
        for cls in (IdentitySettings, ReportingSettings):
            for name, value in COMPLETE[cls].items():
                monkeypatch.setenv(name, value)
            assert cls().weak_settings() == []
            cls().check_production()


class TestFileDropUnderTheStateDirectory:
    def authorities(self, directory: str) -> str:
        specs: dict[str, dict[str, str]] = {
            d: {"type": "http", "url": f"https://{d}.authority.example.cn/reports"} for d in DEPARTMENTS
        }
        specs["culture_tourism"] = {"type": "file", "directory": directory}
        return json.dumps(specs)

    @pytest.mark.parametrize("inside", ["drops/culture", "./drops/../authority-drops/culture_tourism", "."])
    def test_a_drop_under_the_state_directory_is_refused(
        self, inside: str, tmp_path: pathlib.Path, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        state = tmp_path / "state"
        env = {
            **COMPLETE[ReportingSettings],
            "AVGATE_STATE_DIR": str(state),
            "REPORTING_AUTHORITIES": self.authorities(str(state / inside)),
        }
        (problem,) = refused(ReportingSettings, env, monkeypatch)
        assert "REPORTING_AUTHORITIES" in problem and "culture_tourism" in problem and "state directory" in problem

    def test_a_relative_state_directory_is_resolved(
        self, tmp_path: pathlib.Path, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        monkeypatch.chdir(tmp_path)
        env = {
            **COMPLETE[ReportingSettings],
            "AVGATE_STATE_DIR": ".avgate",
            "REPORTING_AUTHORITIES": self.authorities(str(tmp_path / ".avgate" / "drops")),
        }
        (problem,) = refused(ReportingSettings, env, monkeypatch)
        assert "culture_tourism" in problem

    def test_a_drop_elsewhere_is_accepted(self, tmp_path: pathlib.Path, monkeypatch: pytest.MonkeyPatch) -> None:
        env = {
            **COMPLETE[ReportingSettings],
            "AVGATE_STATE_DIR": str(tmp_path / "state"),
            "REPORTING_AUTHORITIES": self.authorities(str(tmp_path / "state-exports")),
        }
        for name, value in env.items():
            monkeypatch.setenv(name, value)
        ReportingSettings().check_production()


class TestDatabaseLogins:
    """Each process names the URLs it connects with and the one role each must connect as (checked
    against PostgreSQL at start: tests/integration/test_production_database_roles.py)."""

    @pytest.mark.parametrize("cls", list(COMPLETE), ids=[c.process_name for c in COMPLETE])
    def test_the_own_url_must_connect_as_the_process_own_role(
        self, cls: type[ProcessSettings], monkeypatch: pytest.MonkeyPatch
    ) -> None:
        for name, value in COMPLETE[cls].items():
            monkeypatch.setenv(name, value)
        own = cls().database_logins()[0]
        assert own.role == owner(cls.process_name).role
        assert own.variable == f"{cls.process_name.upper()}_DATABASE_URL"

    def test_the_shared_url_is_named_as_database_url(self, monkeypatch: pytest.MonkeyPatch) -> None:
        monkeypatch.setenv("DATABASE_URL", "postgresql://postgres@db.internal/avgate")
        (login,) = ScreeningSettings().database_logins()
        assert (login.variable, login.role) == ("DATABASE_URL", "avgate_screening")

    def test_the_sequencer_must_connect_as_the_sequencer_role(self, monkeypatch: pytest.MonkeyPatch) -> None:
        for name, value in COMPLETE[ReportingSettings].items():
            monkeypatch.setenv(name, value)
        logins = {login.variable: login.role for login in ReportingSettings().database_logins()}
        assert logins == {
            "REPORTING_DATABASE_URL": "avgate_reporting",
            "REPORTING_SEQUENCER_DATABASE_URL": LEDGER_SEQUENCER_ROLE,
        }

    def test_the_local_profile_connects_to_nothing_at_start(self, monkeypatch: pytest.MonkeyPatch) -> None:
        """Locally nothing is checked: no weak setting refused, no database asked (an unreachable URL)."""
        monkeypatch.setenv("DATABASE_URL", "postgresql://postgres@127.0.0.1:1/none")
        monkeypatch.setenv("IDENTITY_SMS_URL", "http://sms.example.cn/")
        check_production_profile(IdentitySettings())
