"""A plain-TCP controller dialling a TLS worker: both sides say what is wrong in words that name
the fix (it was "connection closed by the worker" and "TLS handshake failed: WRONG_VERSION_NUMBER")."""

from __future__ import annotations

import asyncio
import logging
import ssl

import pytest

from wanspec.protocol.messages import Ping
from wanspec.transport import factory
from wanspec.transport.base import PeerRefused
from wanspec.transport.tcp import _server_tls_failure


def test_a_plain_client_of_a_tls_worker_is_told_to_add_tls(certs, echo, arun, caplog):
    caplog.set_level(logging.WARNING)

    async def main() -> BaseException:
        server = await factory.serve("tcp", "127.0.0.1:0", echo, cert=certs.cert, key=certs.key)
        try:
            conn = await factory.connect("tcp", f"127.0.0.1:{server.address[1]}", timeout=5.0)
            try:
                await conn.send(Ping(1.0, 1))
                with pytest.raises(PeerRefused) as info:
                    await asyncio.wait_for(conn.recv(), 5.0)
                return info.value
            finally:
                await conn.close()
        finally:
            await server.close()

    refusal = arun(main())
    assert "if the worker serves TLS, add --tls and --ca" in str(refusal)
    assert "a client spoke plain TCP to this TLS port (a controller without --tls?)" in caplog.text


@pytest.mark.parametrize("exc, words", [
    (ConnectionResetError(), "TLS handshake failed: ConnectionResetError"),
    (ssl.SSLError(), "TLS handshake failed: SSLError"),
])
def test_a_handshake_failure_never_ends_with_an_empty_reason(exc, words):
    assert _server_tls_failure(exc) == words
