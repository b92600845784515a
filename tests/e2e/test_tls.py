"""The local stack has the production shape: mTLS inside on a generated CA, a
plaintext health listener per process, and the gateway's listener that requires
client certificates, where keys bound to a certificate are accepted."""

from __future__ import annotations

import json
import os
import pathlib
import subprocess
import sys

import grpc
import pytest
from grpc_health.v1 import health_pb2

from avgate.gateway.v1 import gateway_pb2, gateway_pb2_grpc
from avgate.identity.v1 import identity_pb2, identity_pb2_grpc
from avgate.kernel.tls import CertificateFiles, generate_ca, issue_certificate
from tests.conftest import REPO
from tests.support import RunningStack
from tests.support.stack import health, health_on, service_options

pytestmark = pytest.mark.e2e


def credentials(ca: str | pathlib.Path, cert: CertificateFiles | dict[str, str] | None) -> grpc.ChannelCredentials:
    if isinstance(cert, dict):
        cert = CertificateFiles(pathlib.Path(cert["cert"]), pathlib.Path(cert["key"]))
    return grpc.ssl_channel_credentials(
        root_certificates=pathlib.Path(ca).read_bytes(),
        private_key=cert.key_file.read_bytes() if cert else None,
        certificate_chain=cert.cert_file.read_bytes() if cert else None,
    )


def check_eligibility(channel: grpc.Channel, metadata: tuple[tuple[str, str], ...] = ()) -> grpc.StatusCode:
    try:
        identity_pb2_grpc.IdentityServiceStub(channel).CheckEligibility(
            identity_pb2.CheckEligibilityRequest(), metadata=metadata, timeout=5
        )
    except grpc.RpcError as exc:
        return exc.code()  # type: ignore[attr-defined, no-any-return]
    return grpc.StatusCode.OK


def own_ca(stack: RunningStack) -> CertificateFiles:
    return CertificateFiles(pathlib.Path(stack.tls["ca"]), pathlib.Path(stack.tls["ca"]).with_suffix(".key"))


class TestInside:
    def test_a_plaintext_connection_to_a_service_port_is_refused(self, running: RunningStack) -> None:
        with grpc.insecure_channel(running.target("identity")) as channel:
            assert check_eligibility(channel) is grpc.StatusCode.UNAVAILABLE

    def test_a_certificate_from_another_ca_is_refused(self, running: RunningStack, tmp_path: pathlib.Path) -> None:
        other = generate_ca(tmp_path, "other-ca")
        impostor = issue_certificate(
            other, tmp_path, "impostor", common_name="avgate-gateway", dns_names=["avgate-gateway"]
        )
        creds = credentials(running.tls["ca"], impostor)
        with grpc.secure_channel(running.target("identity"), creds, options=service_options("identity")) as channel:
            assert check_eligibility(channel) is grpc.StatusCode.UNAVAILABLE

    def test_a_certificate_naming_no_avgate_process_is_refused(
        self, running: RunningStack, tmp_path: pathlib.Path
    ) -> None:
        stranger = issue_certificate(own_ca(running), tmp_path, "stranger", common_name="someone-else")
        creds = credentials(running.tls["ca"], stranger)
        with grpc.secure_channel(running.target("identity"), creds, options=service_options("identity")) as channel:
            assert check_eligibility(channel) is grpc.StatusCode.UNAUTHENTICATED

    def test_a_process_certificate_gets_through_to_the_principal_check(self, running: RunningStack) -> None:
        creds = credentials(running.tls["ca"], running.tls["processes"]["gateway"])
        with grpc.secure_channel(running.target("identity"), creds, options=service_options("identity")) as channel:
            # Past TLS and the peer check: refused for want of a principal token, by the next check.
            assert check_eligibility(channel) is grpc.StatusCode.UNAUTHENTICATED
            assert health_on(channel, "") == health_pb2.HealthCheckResponse.SERVING

    def test_the_health_port_is_plaintext_and_serves_health_alone(self, running: RunningStack) -> None:
        for name, info in running.description["processes"].items():
            assert health(info["health"], "") == health_pb2.HealthCheckResponse.SERVING, name
        with grpc.insecure_channel(running.description["processes"]["identity"]["health"]) as channel:
            assert check_eligibility(channel) is grpc.StatusCode.UNIMPLEMENTED

    def test_stack_json_names_the_tls_files(self, running: RunningStack) -> None:
        tls = running.tls
        files = [tls["ca"], tls["client_ca"], *tls["client"].values()]
        files += [path for process in tls["processes"].values() for path in process.values()]
        assert all(pathlib.Path(f).is_file() for f in files)
        assert set(tls["processes"]) == set(running.description["processes"])


@pytest.fixture(scope="module")
def bound(running: RunningStack, tmp_path_factory: pytest.TempPathFactory) -> dict[str, str]:
    """An operator key bound to the stack's client certificate, created with `avgate keys create --bind-cert`
    through the mTLS listener (the CLI's TLS flags)."""
    tls = running.tls
    env = {**os.environ, "AVGATE_API_KEY": running.description["development_api_keys"]["operator"]}
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "avgate.cli.main",
            "keys",
            "--target",
            running.gateway_mtls,
            "--tls-ca",
            tls["ca"],
            "--client-cert",
            tls["client"]["cert"],
            "--client-key",
            tls["client"]["key"],
            "create",
            "--name",
            "bound operator key",
            "--role",
            "operator",
            "--bind-cert",
            tls["client"]["cert"],
        ],
        env=env,
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert result.returncode == 0, result.stderr
    created = json.loads(result.stdout)
    assert len(created["apiKey"]["clientCertificateSha256"]) == 64
    return {"secret": created["secret"]}


class TestBoundKeys:
    @staticmethod
    def list_keys(channel: grpc.Channel, secret: str) -> grpc.StatusCode:
        try:
            gateway_pb2_grpc.GatewayServiceStub(channel).ListApiKeys(
                gateway_pb2.ListApiKeysRequest(), metadata=(("authorization", f"Bearer {secret}"),), timeout=5
            )
        except grpc.RpcError as exc:
            return exc.code()  # type: ignore[attr-defined, no-any-return]
        return grpc.StatusCode.OK

    def test_a_bound_key_is_accepted_with_its_certificate(self, running: RunningStack, bound: dict[str, str]) -> None:
        creds = credentials(running.tls["ca"], running.tls["client"])
        with grpc.secure_channel(running.gateway_mtls, creds) as channel:
            assert self.list_keys(channel, bound["secret"]) is grpc.StatusCode.OK

    def test_a_bound_key_is_refused_on_the_plain_listener(self, running: RunningStack, bound: dict[str, str]) -> None:
        with grpc.insecure_channel(running.gateway) as channel:
            assert self.list_keys(channel, bound["secret"]) is grpc.StatusCode.UNAUTHENTICATED

    def test_a_bound_key_is_refused_with_another_certificate(
        self, running: RunningStack, bound: dict[str, str], tmp_path: pathlib.Path
    ) -> None:
        client_ca = CertificateFiles(
            pathlib.Path(running.tls["client_ca"]), pathlib.Path(running.tls["client_ca"]).with_suffix(".key")
        )
        other = issue_certificate(client_ca, tmp_path, "other-client", common_name="another client")
        with grpc.secure_channel(running.gateway_mtls, credentials(running.tls["ca"], other)) as channel:
            assert self.list_keys(channel, bound["secret"]) is grpc.StatusCode.UNAUTHENTICATED

    def test_an_unbound_key_works_on_both_listeners(self, running: RunningStack) -> None:
        operator = running.description["development_api_keys"]["operator"]
        with grpc.insecure_channel(running.gateway) as channel:
            assert self.list_keys(channel, operator) is grpc.StatusCode.OK
        creds = credentials(running.tls["ca"], running.tls["client"])
        with grpc.secure_channel(running.gateway_mtls, creds) as channel:
            assert self.list_keys(channel, operator) is grpc.StatusCode.OK

    def test_the_mtls_listener_refuses_a_client_without_a_certificate(self, running: RunningStack) -> None:
        with grpc.secure_channel(running.gateway_mtls, credentials(running.tls["ca"], None)) as channel:
            operator = running.description["development_api_keys"]["operator"]
            assert self.list_keys(channel, operator) is grpc.StatusCode.UNAVAILABLE
