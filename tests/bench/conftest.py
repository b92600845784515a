"""The benchmarks' stack: `avgate run` once per benchmark module, as in tests/e2e."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from tests.conftest import Database, free_port_block
from tests.support import RunningStack, run_stack
from tests.support.stack import PORTS


@pytest.fixture(scope="module")
def running(database: Database, tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningStack]:
    # One block: gateway, the four services, then five metrics ports.
    with run_stack(database.admin_url, tmp_path_factory.mktemp("stack"), free_port_block(PORTS)) as stack:
        yield stack
