"""Transports: one message-oriented interface over in-process links, TCP and QUIC.

Socket transports are imported on demand (``wanspec.transport.tcp`` / ``.quic``, or through
:func:`connect` / :func:`serve`), so importing this package does not load aioquic.
"""

from wanspec.transport.base import (
    ConnectError,
    Connection,
    ConnectionClosed,
    ConnectionHandler,
    Server,
)
from wanspec.transport.factory import KINDS, connect, parse_address, serve
from wanspec.transport.inproc import InprocConnection, LinkParams, inproc_pair

__all__ = [
    "ConnectError", "Connection", "ConnectionClosed", "ConnectionHandler", "Server", "KINDS",
    "connect", "parse_address", "serve", "InprocConnection", "LinkParams", "inproc_pair",
]
