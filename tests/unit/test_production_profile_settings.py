"""Every local stand-in a process can run on is named by its production profile.

With every production value set, a process's settings name no stand-in; take
any one of them away and exactly that stand-in is named, by its variable. A
new stand-in added to a settings class without a line here fails
`test_the_complete_profile_covers_every_variable_the_class_names`.
"""

from __future__ import annotations

import json
import os
import re

import pytest

from avgate.kernel.principal import DEPARTMENTS
from avgate.kernel.settings import ProcessSettings
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
