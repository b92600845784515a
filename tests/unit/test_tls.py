"""The TLS helpers: which process a certificate names, fingerprints, the credentials
settings give, and the marker the production profile refuses."""

from __future__ import annotations

import hashlib
import pathlib

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import serialization

from avgate.kernel.tls import (
    CertificateFiles,
    channel_credentials,
    fingerprint_of_file,
    generate_ca,
    is_generated,
    issue_certificate,
    issue_process_certificate,
    named_process,
    server_credentials,
)
from services.identity.config import IdentitySettings


@pytest.fixture
def ca(tmp_path: pathlib.Path) -> CertificateFiles:
    return generate_ca(tmp_path, "ca")


class TestNamedProcess:
    def test_a_process_certificate_names_its_process(self, ca: CertificateFiles, tmp_path: pathlib.Path) -> None:
        files = issue_process_certificate(ca, tmp_path, "identity")
        assert named_process(files.cert_file.read_bytes()) == "identity"

    @pytest.mark.parametrize(
        ("common_name", "dns", "named"),
        [
            ("avgate-reporting", [], "reporting"),
            ("someone", ["avgate-screening"], "screening"),
            ("someone", ["spiffe.example"], None),
            ("avgate-nobody", [], None),
            ("avgate-gateway-extra", [], None),
        ],
        ids=["cn", "dns-san", "no-name", "unknown-process", "longer-name"],
    )
    def test_only_avgate_process_names_count(
        self, ca: CertificateFiles, tmp_path: pathlib.Path, common_name: str, dns: list[str], named: str | None
    ) -> None:
        files = issue_certificate(ca, tmp_path, "peer", common_name=common_name, dns_names=dns)
        assert named_process(files.cert_file.read_bytes()) == named


class TestFiles:
    def test_the_fingerprint_is_the_sha256_of_the_der_encoding(
        self, ca: CertificateFiles, tmp_path: pathlib.Path
    ) -> None:
        files = issue_certificate(ca, tmp_path, "client", common_name="client")
        der = x509.load_pem_x509_certificate(files.cert_file.read_bytes()).public_bytes(serialization.Encoding.DER)
        assert fingerprint_of_file(files.cert_file) == hashlib.sha256(der).hexdigest()

    def test_generated_certificates_are_marked_and_others_are_not(self, tmp_path: pathlib.Path) -> None:
        generated = generate_ca(tmp_path / "a", "ca")
        operator = generate_ca(tmp_path / "b", "ca", organization="Example Operator")
        leaf = issue_process_certificate(operator, tmp_path / "b", "gateway")
        assert is_generated(generated.cert_file)
        assert not is_generated(operator.cert_file) and not is_generated(leaf.cert_file)
        assert not is_generated(tmp_path / "missing.pem")

    def test_keys_are_readable_by_their_owner_only(self, ca: CertificateFiles, tmp_path: pathlib.Path) -> None:
        files = issue_process_certificate(ca, tmp_path, "gateway")
        assert files.key_file.stat().st_mode & 0o077 == 0


class TestCredentials:
    def test_no_files_means_plaintext(self) -> None:
        settings = IdentitySettings()
        assert server_credentials(settings) is None and channel_credentials(settings) is None

    def test_all_three_files_give_mtls(self, ca: CertificateFiles, tmp_path: pathlib.Path) -> None:
        own = issue_process_certificate(ca, tmp_path, "identity")
        settings = IdentitySettings(
            internal_tls_ca_file=ca.cert_file,
            internal_tls_cert_file=own.cert_file,
            internal_tls_key_file=own.key_file,
        )
        assert server_credentials(settings) is not None and channel_credentials(settings) is not None

    def test_some_files_without_the_others_are_refused(self, ca: CertificateFiles) -> None:
        settings = IdentitySettings(internal_tls_ca_file=ca.cert_file)
        with pytest.raises(ValueError, match="AVGATE_TLS_CERT_FILE"):
            server_credentials(settings)
