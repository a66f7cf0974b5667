"""Pieces shared by the adapters: the receive queue with end-of-stream semantics, and counters.

Every adapter pushes decoded messages into an :class:`Inbox` from its I/O callback and marks the
end of the stream once; ``recv()`` then drains what arrived before reporting the end, which is
what makes "the peer closed after sending X" deliver X on every transport alike.
"""

from __future__ import annotations

import asyncio
import collections
import logging
from dataclasses import dataclass
from typing import Generic, TypeVar

from wanspec.protocol.codec import ProtocolError
from wanspec.transport.base import Connection, ConnectionClosed, ConnectionHandler

log = logging.getLogger("wanspec.transport")

T = TypeVar("T")


@dataclass
class Traffic:
    """Messages and bytes (frame header included) that crossed one direction: for metrics."""

    messages: int = 0
    bytes: int = 0

    def add(self, nbytes: int) -> None:
        self.messages += 1
        self.bytes += nbytes


MAX_QUEUED_MESSAGES = 1024  # received messages waiting for the application, at most (TCP pauses)


class Inbox(Generic[T]):
    """FIFO of received items that ends with an exception instead of blocking forever.

    It is bounded: :attr:`full` once it holds ``max_items`` items or ``max_bytes`` bytes (the
    sizes given to :meth:`put`; one item is always accepted).  A transport that can stop reading
    (TCP) waits for :meth:`wait_space` before it reads on; one that cannot (QUIC) treats a peer
    that keeps it far over full as hostile.  So a peer sending faster than we process -- or
    while we are blocked sending to it -- cannot grow our memory.

    ``finish(exc)`` raises ``exc`` after the queued items are drained (graceful end, or a protocol
    error after the good frames); ``abort(exc)`` drops the queue and raises at once (we closed,
    or the link was killed).  The end exception is raised once; later calls get a plain
    :class:`ConnectionClosed`, so a loop that logs-and-continues cannot spin on a stale error.
    Any number of tasks may wait; cancellation loses nothing because items are popped only by a
    waiter that has woken up.
    """

    def __init__(self, max_items: int = MAX_QUEUED_MESSAGES, max_bytes: int = 1 << 20) -> None:
        self.max_items = max_items
        self.max_bytes = max_bytes
        self._items: collections.deque[tuple[T, int]] = collections.deque()
        self._bytes = 0
        self._space: asyncio.Event | None = None
        self._end: BaseException | None = None
        self._end_raised = False
        self._event: asyncio.Event | None = None  # created lazily inside the running loop

    @property
    def ended(self) -> bool:
        return self._end is not None

    def __len__(self) -> int:
        return len(self._items)

    @property
    def queued_bytes(self) -> int:
        return self._bytes

    @property
    def full(self) -> bool:
        return len(self._items) >= self.max_items or self._bytes >= self.max_bytes

    async def wait_space(self) -> None:
        """Return once the inbox is not full (or has ended)."""
        while self.full and self._end is None:
            if self._space is None:
                self._space = asyncio.Event()
            self._space.clear()
            await self._space.wait()

    def put(self, item: T, size: int = 0) -> None:
        if self._end is not None:
            return  # nothing arrives after the end
        self._items.append((item, size))
        self._bytes += size
        self._wake()

    def finish(self, exc: BaseException) -> None:
        if self._end is None:
            self._end = exc
            self._wake()

    def abort(self, exc: BaseException) -> None:
        self._items.clear()
        self._bytes = 0
        self.finish(exc)

    async def get(self) -> T:
        while not self._items:
            if self._end is not None:
                if self._end_raised:
                    raise ConnectionClosed("connection closed")
                self._end_raised = True
                raise self._end
            if self._event is None:
                self._event = asyncio.Event()
            self._event.clear()
            await self._event.wait()
        item, size = self._items.popleft()
        self._bytes -= size
        if self._space is not None and not self.full:
            self._space.set()
        return item

    def _wake(self) -> None:
        if self._event is not None:
            self._event.set()
        if self._end is not None and self._space is not None:
            self._space.set()


async def run_handler(handler: ConnectionHandler, conn: Connection) -> None:
    """Run a server-side handler, logging (not raising) how it ended: one bad peer must not take
    the server down."""
    try:
        await handler(conn)
    except (ConnectionClosed, ProtocolError) as exc:
        log.info("connection from %s ended: %s", conn.peer, exc)
    except Exception:
        log.exception("handler for connection from %s failed", conn.peer)
