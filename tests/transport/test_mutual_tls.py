"""Mutual TLS at the transport level: client certificates, the server's checks and its words."""

from __future__ import annotations

import asyncio
import logging
import socket
import stat

import pytest
from cryptography import x509
from cryptography.x509.oid import ExtendedKeyUsageOID

from wanspec.errors import WanspecError
from wanspec.protocol.messages import Ping
from wanspec.transport import factory, tcp
from wanspec.transport.base import PeerRefused
from wanspec.transport.certs import create_certs, create_client_cert
from wanspec.transport.tls import client_ssl_context


def _usage(path) -> list:
    cert = x509.load_pem_x509_certificate(path.read_bytes())
    return list(cert.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value)


def test_certs_include_a_client_certificate_for_client_auth_only(certs):
    ca = x509.load_pem_x509_certificate(certs.ca_cert.read_bytes())
    client = x509.load_pem_x509_certificate(certs.client_cert.read_bytes())
    client.verify_directly_issued_by(ca)
    assert _usage(certs.client_cert) == [ExtendedKeyUsageOID.CLIENT_AUTH]
    assert _usage(certs.cert) == [ExtendedKeyUsageOID.SERVER_AUTH]
    assert stat.S_IMODE(certs.client_key.stat().st_mode) == 0o600
    client_ssl_context(certs.ca_cert, cert=certs.client_cert, key=certs.client_key)


def test_more_client_certificates_come_from_the_same_ca(tmp_path):
    paths = create_certs(tmp_path)
    alice = create_client_cert(tmp_path, "alice")
    assert (alice.cert.name, alice.key.name) == ("alice.pem", "alice.key")
    ca = x509.load_pem_x509_certificate(paths.ca_cert.read_bytes())
    x509.load_pem_x509_certificate(alice.cert.read_bytes()).verify_directly_issued_by(ca)
    assert _usage(alice.cert) == [ExtendedKeyUsageOID.CLIENT_AUTH]
    with pytest.raises(WanspecError, match="refusing to overwrite"):
        create_client_cert(tmp_path, "alice")
    for bad in ("", "../evil", "server", "ca", "a b"):
        with pytest.raises(WanspecError, match="bad client certificate name"):
            create_client_cert(tmp_path, bad)
    with pytest.raises(WanspecError, match="create the CA first"):
        create_client_cert(tmp_path / "empty", "bob")


def test_a_client_certificate_needs_its_key_and_mutual_tls_needs_tls(certs, arun):
    with pytest.raises(WanspecError, match="needs both --cert and --key"):
        client_ssl_context(certs.ca_cert, cert=certs.client_cert)
    with pytest.raises(WanspecError, match="needs both --cert and --key"):
        arun(factory.connect("quic", "127.0.0.1:9", cert=certs.client_cert))

    async def handler(conn):
        pass

    with pytest.raises(WanspecError, match="--client-ca .* needs TLS"):
        arun(factory.serve("tcp", "127.0.0.1:0", handler, client_ca=certs.ca_cert))


@pytest.mark.parametrize("kind", ["tcp", "quic"])
def test_a_bad_client_ca_file_stops_the_server(kind, certs, tmp_path, arun):
    junk = tmp_path / "junk.pem"
    junk.write_text("not a certificate")

    async def handler(conn):
        pass

    with pytest.raises(WanspecError, match="cannot load client CA certificate"):
        arun(factory.serve(kind, "127.0.0.1:0", handler, cert=certs.cert, key=certs.key,
                           client_ca=junk))
    with pytest.raises(WanspecError, match="client CA certificate not found"):
        arun(factory.serve(kind, "127.0.0.1:0", handler, cert=certs.cert, key=certs.key,
                           client_ca=tmp_path / "nope.pem"))


@pytest.mark.parametrize("kind", ["tcp", "quic"])
def test_mutual_tls_serves_the_right_client_and_refuses_others_in_words(
        kind, certs, other_certs, echo, arun, caplog):
    caplog.set_level(logging.WARNING)

    async def main():
        server = await factory.serve(kind, "127.0.0.1:0", echo, cert=certs.cert, key=certs.key,
                                     client_ca=certs.ca_cert)
        address = f"127.0.0.1:{server.address[1]}"
        outcomes = {}
        try:
            for name, cert, key in [("right", certs.client_cert, certs.client_key),
                                    ("other-ca", other_certs.client_cert, other_certs.client_key),
                                    ("none", None, None)]:
                conn = await factory.connect(kind, address, tls=True, ca=certs.ca_cert,
                                             cert=cert, key=key, timeout=5.0)
                try:
                    await conn.send(Ping(1.0, 1))
                    outcomes[name] = await asyncio.wait_for(conn.recv(), 5.0)
                except PeerRefused as exc:
                    outcomes[name] = exc
                finally:
                    await conn.close()
        finally:
            await server.close()
        return outcomes

    outcomes = arun(main(), timeout=30)
    assert outcomes["right"] == Ping(1.0, 1)
    assert isinstance(outcomes["other-ca"], PeerRefused)
    assert isinstance(outcomes["none"], PeerRefused)
    assert "client certificate" in str(outcomes["other-ca"])
    assert "--cert and --key" in str(outcomes["none"])
    server_lines = [r.getMessage() for r in caplog.records if "refusing a" in r.getMessage()]
    assert len(server_lines) == 2
    assert "the TLS client certificate is not trusted" in server_lines[0]
    assert "no TLS client certificate was presented" in server_lines[1]


def test_a_tls_client_that_never_completes_its_handshake_is_dropped(certs, echo, arun, caplog,
                                                                    monkeypatch):
    monkeypatch.setattr(tcp, "TLS_HANDSHAKE_TIMEOUT_S", 0.3)
    caplog.set_level(logging.WARNING)

    async def main():
        server = await factory.serve("tcp", "127.0.0.1:0", echo, cert=certs.cert, key=certs.key)
        loop = asyncio.get_running_loop()
        try:
            with socket.create_connection(("127.0.0.1", server.address[1])) as sock:
                sock.setblocking(False)
                t0 = loop.time()
                data = await asyncio.wait_for(loop.sock_recv(sock, 1024), 5.0)  # says nothing
                return data, loop.time() - t0
        finally:
            await server.close()

    data, waited = arun(main())
    assert data == b"" and waited < 3.0
    assert any("refusing a TLS connection" in r.getMessage() for r in caplog.records)
