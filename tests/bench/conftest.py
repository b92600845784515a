"""The benchmarks' stack: `avgate run` once per benchmark module, as in tests/e2e, with TLS outside
(mTLS inside is `avgate run`'s default), so every figure is taken in production's shape."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from tests.bench.harness import OutsideTls, outside_tls
from tests.conftest import Database, free_port_block
from tests.support import LIMITS_OUT_OF_REACH, RunningStack, run_stack
from tests.support.stack import PORTS


@pytest.fixture(scope="module")
def tls_outside(tmp_path_factory: pytest.TempPathFactory) -> OutsideTls:
    return outside_tls(tmp_path_factory.mktemp("outside-tls"))


@pytest.fixture(scope="module")
def running(
    database: Database, tmp_path_factory: pytest.TempPathFactory, tls_outside: OutsideTls
) -> Iterator[RunningStack]:
    # One block: gateway, the four services, metrics, health and the gateway's mTLS listener.
    ports = free_port_block(PORTS)
    settings = {**LIMITS_OUT_OF_REACH, **tls_outside.settings}
    with run_stack(database.admin_url, tmp_path_factory.mktemp("stack"), ports, settings) as stack:
        yield stack
