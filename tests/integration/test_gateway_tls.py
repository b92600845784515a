"""The gateway over TLS outside and mTLS inside, as composed from its settings:
clients reach it with the CA of its certificate, it reaches identity over mTLS,
and its health answers in plaintext on a port of its own."""

from __future__ import annotations

import pathlib
from collections.abc import AsyncIterator
from dataclasses import dataclass

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from avgate.identity.v1 import identity_pb2, identity_pb2_grpc
from avgate.kernel.db import create_engine_for
from avgate.kernel.grpc.server import GrpcProcess
from avgate.kernel.principal import Role
from avgate.kernel.tls import CertificateFiles, generate_ca, issue_process_certificate
from gateway.__main__ import compose as compose_gateway
from gateway.config import GatewaySettings
from gateway.service import ApiKeyService
from gateway.store import SqlApiKeyStore
from services.identity.__main__ import compose as compose_identity
from services.identity.config import IdentitySettings
from tests.conftest import Database
from tests.support import operator


@dataclass
class Stack:
    gateway: GrpcProcess
    ca: CertificateFiles
    provider_key: str

    @property
    def target(self) -> str:
        return f"127.0.0.1:{self.gateway.port}"


def tls_files(ca: CertificateFiles, directory: pathlib.Path, process: str) -> dict[str, object]:
    own = issue_process_certificate(ca, directory, process)
    return {
        "internal_tls_ca_file": ca.cert_file,
        "internal_tls_cert_file": own.cert_file,
        "internal_tls_key_file": own.key_file,
    }


@pytest.fixture(scope="module")
async def stack(
    database: Database, keys_dir: pathlib.Path, tmp_path_factory: pytest.TempPathFactory
) -> AsyncIterator[Stack]:
    directory = tmp_path_factory.mktemp("tls")
    ca = generate_ca(directory, "ca")
    common = {"trusted_keys_dir": keys_dir, "generate_keys": False, "metrics_port": -1, "grpc_port": 0}
    identity = await compose_identity(
        IdentitySettings(
            **common,  # type: ignore[arg-type]
            **tls_files(ca, directory, "identity"),  # type: ignore[arg-type]
            database_url=database.url_for("identity"),
            dispatcher_enabled=False,
            expiry_enabled=False,
        )
    )
    await identity.start()
    gateway_files = tls_files(ca, directory, "gateway")
    gateway = await compose_gateway(
        GatewaySettings(
            **common,  # type: ignore[arg-type]
            **gateway_files,  # type: ignore[arg-type]
            # The public listener presents the gateway's own certificate here; in production, one for its public name.
            tls_cert_file=gateway_files["internal_tls_cert_file"],  # type: ignore[arg-type]
            tls_key_file=gateway_files["internal_tls_key_file"],  # type: ignore[arg-type]
            database_url=database.url_for("gateway"),
            identity_target=f"127.0.0.1:{identity.port}",
        )
    )
    await gateway.start()
    engine = create_engine_for(database.url_for("gateway"), pool_size=1)
    created = await ApiKeyService(SqlApiKeyStore(engine)).create(
        operator("test"),
        display_name="provider",
        role=Role.PROVIDER,
        tenant_id="tenant-a",
        regulator_scope=None,
        ttl=None,
    )
    await engine.dispose()
    try:
        yield Stack(gateway, ca, created.secret)
    finally:
        await gateway.stop()
        await identity.stop()


def with_ca(stack: Stack) -> grpc.aio.Channel:
    creds = grpc.ssl_channel_credentials(root_certificates=stack.ca.cert_file.read_bytes())
    return grpc.aio.secure_channel(stack.target, creds)


class TestPublicTls:
    async def test_a_call_over_tls_reaches_identity_over_mtls(self, stack: Stack) -> None:
        async with with_ca(stack) as channel:
            stub = identity_pb2_grpc.IdentityServiceStub(channel)
            with pytest.raises(grpc.aio.AioRpcError) as refused:
                await stub.CheckEligibility(
                    identity_pb2.CheckEligibilityRequest(),
                    metadata=(("authorization", f"Bearer {stack.provider_key}"),),
                    timeout=10,
                )
        # identity's own validation answered: the call crossed the gateway and the mTLS hop.
        assert refused.value.code() is grpc.StatusCode.INVALID_ARGUMENT

    async def test_the_gateway_sees_identity_serving_over_mtls(self, stack: Stack) -> None:
        async with with_ca(stack) as channel:
            reply = await health_pb2_grpc.HealthStub(channel).Check(
                health_pb2.HealthCheckRequest(service="identity"), timeout=5
            )
        assert reply.status == health_pb2.HealthCheckResponse.SERVING

    async def test_a_plaintext_client_is_refused(self, stack: Stack) -> None:
        async with grpc.aio.insecure_channel(stack.target) as channel:
            with pytest.raises(grpc.aio.AioRpcError) as refused:
                await health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(), timeout=5)
        assert refused.value.code() is grpc.StatusCode.UNAVAILABLE

    async def test_health_answers_in_plaintext_on_its_own_port(self, stack: Stack) -> None:
        async with grpc.aio.insecure_channel(f"127.0.0.1:{stack.gateway.health_port}") as channel:
            reply = await health_pb2_grpc.HealthStub(channel).Check(
                health_pb2.HealthCheckRequest(service="identity"), timeout=5
            )
        assert reply.status == health_pb2.HealthCheckResponse.SERVING
