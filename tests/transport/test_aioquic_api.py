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


def test_no_private_aioquic_attribute_is_read():
    """Only ``self._x`` (wanspec's own state) may be read: no ``protocol._quic`` and the like."""
    tree = ast.parse(Path(quic_module.__file__).read_text())
    private = sorted(
        f"line {node.lineno}: {ast.unparse(node)}"
        for node in ast.walk(tree)
        if isinstance(node, ast.Attribute) and node.attr.startswith("_")
        and not node.attr.startswith("__")
        and not (isinstance(node.value, ast.Name) and node.value.id in ("self", "server"))
        and not (isinstance(node.value, ast.Name) and node.value.id == "conn"
                 and node.attr.startswith("_on_"))
    )
    assert not private, "private attributes read in wanspec/transport/quic.py: " + "; ".join(private)
