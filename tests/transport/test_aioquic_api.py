"""The aioquic API that wanspec.transport.quic relies on beyond ``connect``/``serve``.

``serve_quic`` builds aioquic's server protocol itself (what ``aioquic.asyncio.serve`` does)
because ``serve`` keeps the UDP transport, whose address a port-0 server reports, in a private
attribute.  If aioquic changes that class, these fail with what to fix instead of a
round-trip test timing out.
"""

from __future__ import annotations

import ast
import asyncio
import inspect
from pathlib import Path

import wanspec.transport.quic as quic_module

WHERE = "wanspec/transport/quic.py (serve_quic)"


def test_server_protocol_takes_what_serve_passes():
    from aioquic.asyncio import server

    assert hasattr(server, "QuicServer"), (
        f"aioquic.asyncio.server.QuicServer is gone; {WHERE} builds it the way "
        "aioquic.asyncio.serve() does and must follow serve()")
    params = inspect.signature(server.QuicServer).parameters
    missing = {"configuration", "create_protocol"} - set(params)
    assert not missing, (
        f"aioquic.asyncio.server.QuicServer no longer takes {sorted(missing)}; {WHERE} must "
        "build it the way aioquic.asyncio.serve() now does")
    assert issubclass(server.QuicServer, asyncio.DatagramProtocol), (
        f"aioquic's QuicServer is no longer an asyncio DatagramProtocol; {WHERE} passes it to "
        "loop.create_datagram_endpoint")


def test_connection_protocol_constructor_and_public_methods():
    from aioquic.asyncio import QuicConnectionProtocol
    from aioquic.quic.connection import QuicConnection

    first = next(iter(inspect.signature(QuicConnectionProtocol).parameters))
    assert first == "quic", "QuicConnectionProtocol(quic, ...) changed; see _Protocol in quic.py"
    for name in ("connect", "transmit", "close", "datagram_received", "quic_event_received"):
        assert callable(getattr(QuicConnectionProtocol, name, None)), (
            f"QuicConnectionProtocol.{name} is gone; wanspec/transport/quic.py uses it")
    for name in ("send_stream_data", "send_ping", "configuration"):
        assert hasattr(QuicConnection, name), (
            f"QuicConnection.{name} is gone; wanspec/transport/quic.py uses it")


# aioquic has no public way to ask a QUIC client for a certificate, to read the one it presented,
# or to see how much of a stream is unacknowledged: these functions reach into its internals, and
# test_the_private_aioquic_internals_wanspec_relies_on_exist fails loudly if those move
PRIVATE_ACCESS_ALLOWED_IN = {"_request_client_certificate", "client_cert_problem", "_unacked"}


def test_no_private_aioquic_attribute_is_read():
    """Only ``self._x`` (wanspec's own state) may be read, except in the functions above."""
    tree = ast.parse(Path(quic_module.__file__).read_text())
    allowed: set[int] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.FunctionDef) and node.name in PRIVATE_ACCESS_ALLOWED_IN:
            allowed.update(range(node.lineno, (node.end_lineno or node.lineno) + 1))
    assert len({n for n in PRIVATE_ACCESS_ALLOWED_IN
                if any(isinstance(x, ast.FunctionDef) and x.name == n for x in ast.walk(tree))}
               ) == len(PRIVATE_ACCESS_ALLOWED_IN), "an allowed function was renamed: update the list"
    private = sorted(
        f"line {node.lineno}: {ast.unparse(node)}"
        for node in ast.walk(tree)
        if isinstance(node, ast.Attribute) and node.attr.startswith("_")
        and node.lineno not in allowed
        and not node.attr.startswith("__")
        and not (isinstance(node.value, ast.Name) and node.value.id in ("self", "server"))
        and not (isinstance(node.value, ast.Name) and node.value.id == "conn"
                 and node.attr.startswith("_on_"))
    )
    assert not private, "private attributes read in wanspec/transport/quic.py: " + "; ".join(private)


def test_the_private_aioquic_internals_wanspec_relies_on_exist():
    """Mutual TLS on QUIC and the unacknowledged-bytes bound use aioquic internals (there is no
    public API for them): if a new aioquic moves them, this says so before a user finds every
    controller refused (mutual TLS fails closed) or a flooding peer unbounded."""
    from aioquic import tls
    from aioquic.quic.configuration import QuicConfiguration
    from aioquic.quic.connection import QuicConnection
    from aioquic.quic.stream import QuicStream

    assert callable(getattr(QuicConnection, "_initialize", None)), (
        "QuicConnection._initialize is gone: _request_client_certificate in quic.py must change")
    quic = QuicConnection(configuration=QuicConfiguration(is_client=True))
    context = tls.Context(is_client=False)  # what _initialize makes a server connection's .tls
    for name in ("_request_client_certificate", "_peer_certificate", "_peer_certificate_chain"):
        assert hasattr(context, name), (
            f"aioquic's TLS context has no {name}: mutual TLS in quic.py must change")
    assert isinstance(getattr(quic, "_streams", None), dict), (
        "QuicConnection._streams is gone: _unacked in quic.py must change")
    assert hasattr(QuicStream(stream_id=0).sender, "_buffer"), (
        "QuicStream.sender._buffer is gone: _unacked in quic.py must change")
