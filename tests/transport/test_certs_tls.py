"""Certificate creation and TLS context loading."""

from __future__ import annotations

import ipaddress
import stat

import pytest
from cryptography import x509

from wanspec.errors import WanspecError
from wanspec.transport.certs import create_certs
from wanspec.transport.tls import client_ssl_context, server_ssl_context


def test_create_certs_writes_a_verifiable_chain(tmp_path):
    paths = create_certs(tmp_path / "c", hosts=("localhost", "10.1.2.3", "[::1]", "w.example"))
    names = {p.name for p in (tmp_path / "c").iterdir()}
    assert names == {"ca.pem", "ca.key", "server.pem", "server.key", "client.pem", "client.key"}
    for key in (paths.ca_key, paths.key, paths.client_key):
        assert stat.S_IMODE(key.stat().st_mode) == 0o600
    ca = x509.load_pem_x509_certificate(paths.ca_cert.read_bytes())
    cert = x509.load_pem_x509_certificate(paths.cert.read_bytes())
    cert.verify_directly_issued_by(ca)
    san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert set(san.get_values_for_type(x509.DNSName)) == {"localhost", "w.example"}
    assert set(san.get_values_for_type(x509.IPAddress)) == {
        ipaddress.ip_address("10.1.2.3"), ipaddress.ip_address("::1"),
    }
    assert ca.extensions.get_extension_for_class(x509.BasicConstraints).value.ca
    # and both sides of Python's TLS accept the files
    server_ssl_context(paths.cert, paths.key)
    client_ssl_context(paths.ca_cert)


def test_create_certs_refuses_to_overwrite(tmp_path):
    first = create_certs(tmp_path)
    before = first.ca_cert.read_bytes()
    with pytest.raises(WanspecError, match="refusing to overwrite"):
        create_certs(tmp_path)
    assert first.ca_cert.read_bytes() == before
    second = create_certs(tmp_path, overwrite=True)
    assert second.ca_cert.read_bytes() != before


def test_create_certs_refuses_if_any_file_exists(tmp_path):
    (tmp_path / "server.key").write_text("precious")
    with pytest.raises(WanspecError, match="server.key"):
        create_certs(tmp_path)
    assert (tmp_path / "server.key").read_text() == "precious"
    assert not (tmp_path / "ca.pem").exists()


def test_create_certs_bad_arguments(tmp_path):
    with pytest.raises(WanspecError):
        create_certs(tmp_path, hosts=())
    with pytest.raises(WanspecError):
        create_certs(tmp_path, days=0)


def test_missing_files_are_clear_errors(tmp_path, certs):
    with pytest.raises(WanspecError, match="TLS certificate not found: .*nope.pem"):
        server_ssl_context(tmp_path / "nope.pem", certs.key)
    with pytest.raises(WanspecError, match="TLS private key not found"):
        server_ssl_context(certs.cert, tmp_path / "nope.key")
    with pytest.raises(WanspecError, match="CA certificate not found"):
        client_ssl_context(tmp_path / "nope-ca.pem")


def test_mismatched_or_garbage_files_are_clear_errors(tmp_path, certs, other_certs):
    with pytest.raises(WanspecError, match="cannot load TLS certificate"):
        server_ssl_context(certs.cert, other_certs.key)
    junk = tmp_path / "junk.pem"
    junk.write_text("not a certificate")
    with pytest.raises(WanspecError, match="cannot load CA certificate"):
        client_ssl_context(junk)


def test_insecure_client_context_skips_verification():
    import ssl

    ctx = client_ssl_context(None, insecure=True)
    assert ctx.verify_mode == ssl.CERT_NONE and not ctx.check_hostname
