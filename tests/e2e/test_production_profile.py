"""A process started with AVGATE_ENV=production and development defaults
refuses to start, and says which stand-ins are configured."""

from __future__ import annotations

import asyncio
import os
import pathlib
import subprocess
import sys

import pytest

from avgate.kernel.db import create_engine_for
from avgate.kernel.principal import Principal, Role
from avgate.kernel.tls import generate_ca, issue_process_certificate
from gateway.service import ApiKeyService
from gateway.store import SqlApiKeyStore
from tests.conftest import REPO, Database

pytestmark = pytest.mark.e2e


COMMON = ["AVGATE_GENERATE_KEYS", "DATABASE_URL", "AVGATE_TLS_CA_FILE", "AVGATE_TLS_CERT_FILE", "AVGATE_TLS_KEY_FILE"]


@pytest.mark.parametrize(
    ("module", "expected"),
    [
        ("gateway", [*COMMON, "GATEWAY_DEV_API_KEYS", "GATEWAY_TLS_CERT_FILE", "GATEWAY_TLS_KEY_FILE"]),
        (
            "services.identity",
            [
                *COMMON,
                "IDENTITY_VAULT_KEK_FILE",
                "IDENTITY_BLIND_INDEX_KEY_FILE",
                "IDENTITY_SMS_URL",
                "IDENTITY_CODE_HASH_KEY_FILE",
                "IDENTITY_VERIFIER_URL",
            ],
        ),
        ("services.screening", COMMON),
        (
            "services.reporting",
            [
                *COMMON,
                "REPORTING_SEQUENCER_DATABASE_URL",
                "REPORTING_LEDGER_ORIGIN",
                "REPORTING_AUTHORITIES",
                "REPORTING_EVIDENCE_KEK_FILE",
                "REPORTING_EVIDENCE_DIR",
                "REPORTING_EXPORT_DIR",
            ],
        ),
        ("services.complaints", COMMON),
    ],
    ids=["gateway", "identity", "screening", "reporting", "complaints"],
)
def test_production_profile_refuses_development_defaults(module: str, expected: list[str], tmp_path: object) -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("AVGATE_", "GATEWAY_")) and "DATABASE_URL" not in k}
    env.update({"AVGATE_ENV": "production", "AVGATE_STATE_DIR": str(tmp_path)})
    result = subprocess.run(
        [sys.executable, "-m", module], env=env, cwd=REPO, capture_output=True, text=True, timeout=60
    )
    assert result.returncode == 78, result.stderr
    assert "refuses to start with AVGATE_ENV=production" in result.stderr
    named = [line for line in result.stderr.splitlines() if line.startswith("  - ")]
    assert len(named) == len(expected), named  # one line per stand-in, none unnamed
    for name in expected:
        assert name in result.stderr


def test_the_gateway_refuses_while_development_keys_are_active(
    database: Database, keys_dir: pathlib.Path, tmp_path: pathlib.Path
) -> None:
    """Every stand-in setting is resolved, but a development key made by a local run is still
    active in the gateway's database: the gateway exits 78 (EX_CONFIG) and names the key."""

    async def make_development_key() -> str:
        engine = create_engine_for(database.url_for("gateway"))
        try:
            created = await ApiKeyService(SqlApiKeyStore(engine)).create(
                Principal(role=Role.OPERATOR, subject="test"),
                display_name="development provider key",
                role=Role.PROVIDER,
                tenant_id="dev-tenant",
                regulator_scope=None,
                ttl=None,
                development=True,
            )
        finally:
            await engine.dispose()
        return created.key.key_id

    key_id = asyncio.run(make_development_key())
    ca = generate_ca(tmp_path, "ca", organization="Example Operator")
    own = issue_process_certificate(ca, tmp_path, "gateway")
    env = {k: v for k, v in os.environ.items() if not k.startswith(("AVGATE_", "GATEWAY_")) and "DATABASE_URL" not in k}
    env.update(
        {
            "AVGATE_ENV": "production",
            "AVGATE_STATE_DIR": str(tmp_path),
            "AVGATE_GENERATE_KEYS": "false",
            "AVGATE_TRUSTED_KEYS_DIR": str(keys_dir),
            "GATEWAY_DEV_API_KEYS": "false",
            "GATEWAY_DATABASE_URL": database.url_for("gateway"),
            "GATEWAY_GRPC_PORT": "0",
            "GATEWAY_METRICS_PORT": "0",
            "AVGATE_TLS_CA_FILE": str(ca.cert_file),
            "AVGATE_TLS_CERT_FILE": str(own.cert_file),
            "AVGATE_TLS_KEY_FILE": str(own.key_file),
            "GATEWAY_TLS_CERT_FILE": str(own.cert_file),
            "GATEWAY_TLS_KEY_FILE": str(own.key_file),
        }
    )
    result = subprocess.run(
        [sys.executable, "-m", "gateway"], env=env, cwd=REPO, capture_output=True, text=True, timeout=60
    )
    assert result.returncode == 78, result.stderr
    assert "development API keys are active" in result.stderr and key_id in result.stderr


def test_a_service_refuses_to_start_as_the_database_superuser(database: Database, tmp_path: pathlib.Path) -> None:
    """Every stand-in setting is resolved, but screening's database URL is the superuser's (who could
    disable the ledger's triggers and read every schema): it exits 78 (EX_CONFIG) and names the URL."""
    env = {
        k: v for k, v in os.environ.items() if not k.startswith(("AVGATE_", "SCREENING_")) and "DATABASE_URL" not in k
    }
    env.update(
        {
            "AVGATE_ENV": "production",
            "AVGATE_STATE_DIR": str(tmp_path),
            "AVGATE_GENERATE_KEYS": "false",
            "SCREENING_DATABASE_URL": database.admin_url,
            "SCREENING_GRPC_PORT": "0",
            "SCREENING_METRICS_PORT": "0",
            "SCREENING_HEALTH_PORT": "-1",
            "AVGATE_TLS_CA_FILE": "/run/secrets/tls/ca.pem",
            "AVGATE_TLS_CERT_FILE": "/run/secrets/tls/screening.pem",
            "AVGATE_TLS_KEY_FILE": "/run/secrets/tls/screening.key",
        }
    )
    result = subprocess.run(
        [sys.executable, "-m", "services.screening"], env=env, cwd=REPO, capture_output=True, text=True, timeout=30
    )
    assert result.returncode == 78, result.stderr
    (named,) = [line for line in result.stderr.splitlines() if line.startswith("  - ")]
    assert named.startswith("  - SCREENING_DATABASE_URL connects as") and "is a superuser" in named
