"""The whole stack as `avgate run` starts it: the gateway and the four services
as separate processes, described in `<state dir>/stack.json`."""

from __future__ import annotations

import json
import os
import pathlib
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from tests.conftest import REPO

START_SECONDS = 90
STOP_SECONDS = 40
PORTS = 16
"""The ports a stack takes from its base: gateway, four services, five metrics, five health, the gateway's mTLS."""

LIMITS_OUT_OF_REACH = {
    "GATEWAY_KEY_REQUESTS_PER_SECOND": "1000000",
    "GATEWAY_KEY_BURST": "1000000",
    "GATEWAY_TENANT_REQUESTS_PER_SECOND": "1000000",
    "GATEWAY_TENANT_BURST": "1000000",
}
"""The gateway's rate limits stay on (their cost is part of every figure) but no benchmark reaches them:
one client with one key measures throughput, and the default limits would measure refusals."""


@dataclass
class RunningStack:
    process: subprocess.Popen[bytes]
    state_dir: pathlib.Path
    description: dict[str, Any]

    @property
    def gateway(self) -> str:
        return str(self.description["gateway"])

    @property
    def gateway_mtls(self) -> str:
        return str(self.description["gateway_mtls"])

    @property
    def tls(self) -> dict[str, Any]:
        """The generated TLS files: `ca`, `processes` (cert, key by process), `client_ca`, `client`."""
        return dict(self.description["tls"])

    def target(self, process: str) -> str:
        return str(self.description["processes"][process]["grpc"])


def service_credentials(stack: RunningStack, acting_as: str = "gateway") -> grpc.ChannelCredentials:
    """mTLS credentials inside the stack: its CA, and the certificate of the process the test acts as
    (tests that call a service directly sign their tokens as the gateway, so they present its certificate)."""
    files = stack.tls["processes"][acting_as]
    return grpc.ssl_channel_credentials(
        root_certificates=pathlib.Path(stack.tls["ca"]).read_bytes(),
        private_key=pathlib.Path(files["key"]).read_bytes(),
        certificate_chain=pathlib.Path(files["cert"]).read_bytes(),
    )


def service_options(process: str) -> list[tuple[str, str]]:
    """The service's certificate is checked for its process name, as the gateway checks it."""
    return [("grpc.ssl_target_name_override", f"avgate-{process}")]


def service_channel(stack: RunningStack, process: str, acting_as: str = "gateway") -> grpc.Channel:
    """A (blocking) channel to `process`'s own port, over the stack's mTLS, presenting `acting_as`'s certificate."""
    return grpc.secure_channel(
        stack.target(process), service_credentials(stack, acting_as), options=service_options(process)
    )


def aio_service_channel(stack: RunningStack, process: str) -> grpc.aio.Channel:
    """An aio channel to `process`'s own port, over the stack's mTLS."""
    return grpc.aio.secure_channel(stack.target(process), service_credentials(stack), options=service_options(process))


@contextmanager
def run_stack(
    database_url: str, state_dir: pathlib.Path, base_port: int, settings: dict[str, str] | None = None
) -> Iterator[RunningStack]:
    """`avgate run` against `database_url`, on PORTS consecutive ports from `base_port`
    (gateway, the four services, five metrics ports, five health ports, the gateway's mTLS listener),
    with `settings` added to the processes' environment; Ctrl-C'd afterwards."""
    env = {k: v for k, v in os.environ.items() if not k.endswith("DATABASE_URL")}
    env["DATABASE_URL"] = database_url
    env.update(settings or {})
    process = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "avgate.cli.main",
            "run",
            "--state-dir",
            str(state_dir),
            "--gateway-port",
            str(base_port),
            "--service-port-base",
            str(base_port + 1),
            "--metrics-port-base",
            str(base_port + 5),
            "--health-port-base",
            str(base_port + 10),
            "--gateway-mtls-port",
            str(base_port + 15),
        ],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        cwd=REPO,
    )
    described = state_dir / "stack.json"
    deadline = time.monotonic() + START_SECONDS
    while not described.exists():
        if process.poll() is not None or time.monotonic() > deadline:
            process.kill()
            output = process.stdout.read().decode() if process.stdout else ""
            logs = "".join(
                f"\n--- {log.name} (last lines)\n" + "\n".join(log.read_text(errors="replace").splitlines()[-15:])
                for log in sorted((state_dir / "logs").glob("*.log"))
            )
            pytest.fail(f"avgate run did not come up:\n{output}{logs}")
        time.sleep(0.2)
    stack = RunningStack(process, state_dir, json.loads(described.read_text()))
    try:
        yield stack
    finally:
        if process.poll() is None:
            process.send_signal(signal.SIGINT)
            process.wait(timeout=STOP_SECONDS)


SERVICES = {
    "identity": "avgate.identity.v1.IdentityService",
    "screening": "avgate.screening.v1.ScreeningService",
    "reporting": "avgate.reporting.v1.IncidentService",
    "complaints": "avgate.complaints.v1.ComplaintsService",
}
"""One gRPC service of each process behind the gateway."""


def health(target: str, service: str) -> int:
    """grpc.health.v1 status of `service` ("" for the process itself) at a plaintext `target`: the gateway's
    public port, or a process's health port."""
    with grpc.insecure_channel(target) as channel:
        return health_on(channel, service)


def health_on(channel: grpc.Channel, service: str) -> int:
    """grpc.health.v1 status of `service` ("" for the process itself) through `channel`."""
    return int(
        health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(service=service), timeout=3).status
    )
