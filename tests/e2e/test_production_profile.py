"""A process started with AVGATE_ENV=production and development defaults
refuses to start, and says which stand-ins are configured."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

from tests.conftest import REPO

pytestmark = pytest.mark.e2e


@pytest.mark.parametrize(
    ("module", "expected"),
    [
        ("gateway", ["AVGATE_GENERATE_KEYS", "GATEWAY_DEV_API_KEYS", "DATABASE_URL"]),
        ("services.identity", ["AVGATE_GENERATE_KEYS", "DATABASE_URL"]),
        ("services.screening", ["AVGATE_GENERATE_KEYS"]),
        ("services.reporting", ["AVGATE_GENERATE_KEYS"]),
        ("services.complaints", ["AVGATE_GENERATE_KEYS"]),
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
    for name in expected:
        assert name in result.stderr
