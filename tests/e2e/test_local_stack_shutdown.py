"""Stopping the local stack: one service, then all of it. Each test stops what it started,
so each gets a stack of its own (the other e2e modules share one per module)."""

from __future__ import annotations

import os
import signal
import time
from collections.abc import Iterator

import pytest
from grpc_health.v1 import health_pb2

from tests.conftest import Database, free_port_block
from tests.support import RunningStack, run_stack
from tests.support.stack import PORTS, SERVICES, health

pytestmark = pytest.mark.e2e


@pytest.fixture
def running(database: Database, tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningStack]:
    with run_stack(database.admin_url, tmp_path_factory.mktemp("stack"), free_port_block(PORTS)) as stack:
        yield stack


class TestStopping:
    def test_a_stopped_service_turns_not_serving_and_the_rest_keep_serving(self, running: RunningStack) -> None:
        pid = running.description["processes"]["identity"]["pid"]
        os.kill(pid, signal.SIGTERM)
        deadline = time.monotonic() + 30
        while health(running.gateway, SERVICES["identity"]) != health_pb2.HealthCheckResponse.NOT_SERVING:
            assert time.monotonic() < deadline, "identity still reported SERVING"
            time.sleep(0.2)
        assert health(running.gateway, SERVICES["screening"]) == health_pb2.HealthCheckResponse.SERVING
        assert health(running.gateway, "") == health_pb2.HealthCheckResponse.SERVING

    def test_ctrl_c_stops_every_process(self, running: RunningStack) -> None:
        pids = [info["pid"] for info in running.description["processes"].values()]
        running.process.send_signal(signal.SIGINT)
        assert running.process.wait(timeout=40) == 0
        for pid in pids:
            with pytest.raises(ProcessLookupError):
                os.kill(pid, 0)
