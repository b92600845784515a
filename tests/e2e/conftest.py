"""The e2e fixtures: the whole stack, started by `avgate run` once per test
module (against that module's fresh database) and stopped after it."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from tests.conftest import Database, free_port_block
from tests.support import RunningStack, run_stack
from tests.support.stack import PORTS


@pytest.fixture(scope="module")
def running(database: Database, tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningStack]:
    # One block: gateway, the four services, metrics, health, the gateway's mTLS listener (PORTS).
    with run_stack(database.admin_url, tmp_path_factory.mktemp("stack"), free_port_block(PORTS)) as stack:
        yield stack
