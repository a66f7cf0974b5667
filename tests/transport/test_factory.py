"""Choosing a transport by name, and parsing addresses with errors that say how to fix them."""

from __future__ import annotations

import pytest

from wanspec.errors import WanspecError
from wanspec.protocol.messages import Ping
from wanspec.transport.factory import connect, parse_address, serve


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("127.0.0.1:9000", ("127.0.0.1", 9000)),
        ("worker.example.org:443", ("worker.example.org", 443)),
        ("[::1]:9000", ("::1", 9000)),
        ("[fe80::1%eth0]:7", ("fe80::1%eth0", 7)),
        (" localhost:0 ", ("localhost", 0)),
    ],
)
def test_parse_address(text, expected):
    assert parse_address(text) == expected


@pytest.mark.parametrize(
    ("text", "hint"),
    [
        ("127.0.0.1", "no port"),
        ("::1", "brackets"),
        ("::1:9000", "brackets"),
        ("[::1]", "HOST:PORT"),
        ("[::1]9000", "HOST:PORT"),
        (":9000", "no host"),
        ("host:http", "bad port"),
        ("host:70000", "bad port"),
        ("host:-1", "bad port"),
        ("", "no port"),
    ],
)
def test_parse_address_errors(text, hint):
    with pytest.raises(WanspecError, match=hint):
        parse_address(text)


def test_unknown_kind(arun):
    with pytest.raises(WanspecError, match="choose one of: tcp, quic"):
        arun(connect("carrier-pigeon", "127.0.0.1:1"))


def test_quic_server_needs_a_certificate(arun, echo):
    with pytest.raises(WanspecError, match="QUIC always uses TLS"):
        arun(serve("quic", "127.0.0.1:0", echo))


def test_cert_without_key_refused(arun, echo, certs):
    with pytest.raises(WanspecError, match="both a certificate and its private key"):
        arun(serve("tcp", "127.0.0.1:0", echo, cert=certs.cert))


def test_connect_to_port_zero_refused(arun):
    with pytest.raises(WanspecError, match="port 0"):
        arun(connect("tcp", "127.0.0.1:0"))


@pytest.mark.parametrize(
    ("kind", "tls"), [("tcp", False), ("tcp", True), ("QUIC", True)], ids=["tcp", "tls", "quic"]
)
def test_factory_round_trip(arun, echo, certs, kind, tls):
    async def main():
        server_tls = {"cert": certs.cert, "key": certs.key} if tls else {}
        server = await serve(kind, "127.0.0.1:0", echo, **server_tls)
        try:
            host, port = server.address
            client_tls = {"ca": certs.ca_cert} if tls else {}
            conn = await connect(kind, f"{host}:{port}", timeout=5, **client_tls)
            await conn.send(Ping(t=4.0, seq=1))
            assert await conn.recv() == Ping(t=4.0, seq=1)
            await conn.close()
        finally:
            await server.close()

    arun(main())
