"""A controller dialling a name the worker's certificate does not cover: the error names it and
the fix (``wanspec certs --host NAME``); a certificate issued with ``--host`` is trusted."""

from __future__ import annotations

import sys

import pytest

from wanspec.protocol.messages import Ping
from wanspec.transport import factory
from wanspec.transport.base import ConnectError
from wanspec.errors import WanspecError
from wanspec.transport.certs import create_certs

pytestmark = pytest.mark.skipif(sys.platform != "linux", reason="127.0.0.2 is local on Linux")


@pytest.mark.parametrize("transport", ["tcp", "quic"])
def test_a_name_the_certificate_lacks_is_named_with_the_fix(arun, echo, certs, transport):
    async def main():
        server = await factory.serve(transport, "127.0.0.2:0", echo, cert=certs.cert,
                                     key=certs.key)
        try:
            with pytest.raises(ConnectError) as e:
                await factory.connect(transport, f"127.0.0.2:{server.address[1]}", tls=True,
                                      ca=certs.ca_cert, timeout=3)
        finally:
            await server.close()
        return str(e.value)

    message = arun(main(), timeout=20)
    assert "does not cover the name '127.0.0.2'" in message
    assert "wanspec certs DIR --host 127.0.0.2" in message
    assert "\n" not in message


@pytest.mark.parametrize("transport", ["tcp", "quic"])
def test_certs_with_host_cover_that_name(arun, echo, tmp_path, transport):
    own = create_certs(tmp_path / "c", hosts=("localhost", "127.0.0.2"))

    async def main():
        server = await factory.serve(transport, "127.0.0.2:0", echo, cert=own.cert, key=own.key)
        try:
            conn = await factory.connect(transport, f"127.0.0.2:{server.address[1]}", tls=True,
                                         ca=own.ca_cert, timeout=3)
            await conn.send(Ping(t=1.0))
            assert await conn.recv() == Ping(t=1.0)
            await conn.close()
        finally:
            await server.close()

    arun(main(), timeout=20)


@pytest.mark.parametrize("host", ["worker:7700", "http://worker", "bad host!", "999.1.1.1",
                                  "-worker", "a..b"])
def test_a_host_that_is_not_a_name_or_an_address_is_refused_before_anything_is_written(
        tmp_path, host):
    with pytest.raises(WanspecError, match="neither an IP address nor a DNS name"):
        create_certs(tmp_path / "c", hosts=(host,))
    assert not (tmp_path / "c").exists()


def test_names_addresses_and_wildcards_are_certified(tmp_path):
    create_certs(tmp_path / "c", hosts=("worker.example.com", "10.0.0.5", "[::1]",
                                        "*.example.com", "gpu-7"))
