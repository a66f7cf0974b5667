"""The transport interface every adapter implements: ordered, reliable message delivery.

A :class:`Connection` moves whole protocol messages in order.  Framing lives in
:mod:`wanspec.protocol.codec`; adapters only move bytes (TCP, QUIC) or frames (in-process).
"""

from __future__ import annotations

import abc
from typing import Awaitable, Callable

from wanspec.errors import WanspecError
from wanspec.protocol.messages import Message


class ConnectionClosed(WanspecError):
    """The peer went away (or we closed): no more messages either way."""


class PeerRefused(ConnectionClosed):
    """The peer ended the connection for a reason it stated at the transport level, e.g. a TLS
    alert or a QUIC close refusing our client certificate (the message says which)."""


class ConnectError(WanspecError):
    """A connection could not be set up: unreachable, refused, timed out, or TLS refused."""


class Connection(abc.ABC):
    """One bidirectional, ordered, reliable message channel to a peer."""

    peer: str = "?"

    @abc.abstractmethod
    async def send(self, msg: Message) -> None:
        """Queue ``msg`` for delivery; raises :class:`ConnectionClosed` if closed."""

    @abc.abstractmethod
    async def recv(self) -> Message:
        """Next message from the peer; raises :class:`ConnectionClosed` at end of stream."""

    @abc.abstractmethod
    async def close(self) -> None:
        """Close both directions; idempotent."""

    @property
    @abc.abstractmethod
    def closed(self) -> bool: ...


ConnectionHandler = Callable[[Connection], Awaitable[None]]


class Server(abc.ABC):
    """A listening endpoint that hands each accepted connection to a handler task."""

    @property
    @abc.abstractmethod
    def address(self) -> tuple[str, int]: ...

    @abc.abstractmethod
    async def close(self) -> None: ...
