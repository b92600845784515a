"""The benchmarks' stack: `avgate run` once per benchmark module, as in tests/e2e."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from tests.conftest import Database, free_port_block
from tests.support import LIMITS_OUT_OF_REACH, RunningStack, run_stack
from tests.support.stack import PORTS


@pytest.fixture(scope="module")
def running(database: Database, tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningStack]:
    # One block: gateway, the four services, then five metrics ports.
    ports = free_port_block(PORTS)
    with run_stack(database.admin_url, tmp_path_factory.mktemp("stack"), ports, LIMITS_OUT_OF_REACH) as stack:
        yield stack
