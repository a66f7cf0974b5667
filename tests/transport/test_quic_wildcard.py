"""A QUIC worker listening on a wildcard address answers from the address it was dialled on.

127.0.0.2 is a second local address on Linux loopback: a wildcard-bound UDP socket used to answer
a controller dialling it from 127.0.0.1, which the controller's QUIC ignored ("no answer").
"""

from __future__ import annotations

import socket
import sys

import pytest

from wanspec.protocol.messages import Ping
from wanspec.transport.certs import create_certs
from wanspec.transport.quic import connect_quic, serve_quic

pytestmark = pytest.mark.skipif(sys.platform != "linux", reason="127.0.0.2 is local on Linux")


def _has_ipv6_loopback() -> bool:
    try:
        with socket.socket(socket.AF_INET6, socket.SOCK_DGRAM) as s:
            s.bind(("::1", 0))
        return True
    except OSError:
        return False


@pytest.fixture(scope="module")
def wide_certs(tmp_path_factory):
    return create_certs(tmp_path_factory.mktemp("wildcard-certs"),
                        hosts=("localhost", "127.0.0.1", "127.0.0.2", "::1"))


@pytest.mark.parametrize("listen", ["0.0.0.0", "::"])
def test_wildcard_worker_answers_every_local_address(arun, echo, wide_certs, listen):
    if listen == "::" and not _has_ipv6_loopback():
        pytest.skip("no IPv6 loopback")
    dialled = ["127.0.0.1", "127.0.0.2"] + (["::1"] if listen == "::" else [])

    async def main():
        server = await serve_quic(listen, 0, echo, cert=wide_certs.cert, key=wide_certs.key)
        try:
            port = server.address[1]
            for host in dialled:
                conn = await connect_quic(host, port, ca=wide_certs.ca_cert, timeout=3)
                for i in range(3):  # several round trips: every reply from the dialled address
                    await conn.send(Ping(t=float(i), seq=i))
                    assert await conn.recv() == Ping(t=float(i), seq=i)
                await conn.close()
        finally:
            await server.close()

    arun(main(), timeout=20)


def test_replies_to_two_addresses_at_once(arun, echo, wide_certs):
    """Two controllers, each on its own address of the same wildcard worker, interleaved."""
    async def main():
        server = await serve_quic("0.0.0.0", 0, echo, cert=wide_certs.cert, key=wide_certs.key)
        try:
            port = server.address[1]
            a = await connect_quic("127.0.0.1", port, ca=wide_certs.ca_cert, timeout=3)
            b = await connect_quic("127.0.0.2", port, ca=wide_certs.ca_cert, timeout=3)
            for i in range(3):
                await a.send(Ping(t=1.0, seq=i))
                await b.send(Ping(t=2.0, seq=i))
                assert await a.recv() == Ping(t=1.0, seq=i)
                assert await b.recv() == Ping(t=2.0, seq=i)
            await a.close()
            await b.close()
        finally:
            await server.close()

    arun(main(), timeout=20)
