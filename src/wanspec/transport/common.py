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


class Inbox(Generic[T]):
    """FIFO of received items that ends with an exception instead of blocking forever.

    ``finish(exc)`` raises ``exc`` after the queued items are drained (graceful end, or a protocol
    error after the good frames); ``abort(exc)`` drops the queue and raises at once (we closed,
    or the link was killed).  The end exception is raised once; later calls get a plain
    :class:`ConnectionClosed`, so a loop that logs-and-continues cannot spin on a stale error.
    Any number of tasks may wait; cancellation loses nothing because items are popped only by a
    waiter that has woken up.
    """

    def __init__(self) -> None:
        self._items: collections.deque[T] = collections.deque()
        self._end: BaseException | None = None
        self._end_raised = False
        self._event: asyncio.Event | None = None  # created lazily inside the running loop

    @property
    def ended(self) -> bool:
        return self._end is not None

    def __len__(self) -> int:
        return len(self._items)

    def put(self, item: T) -> None:
        if self._end is not None:
            return  # nothing arrives after the end
        self._items.append(item)
        self._wake()

    def finish(self, exc: BaseException) -> None:
        if self._end is None:
            self._end = exc
            self._wake()

    def abort(self, exc: BaseException) -> None:
        self._items.clear()
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
        return self._items.popleft()

    def _wake(self) -> None:
        if self._event is not None:
            self._event.set()


async def run_handler(handler: ConnectionHandler, conn: Connection) -> None:
    """Run a server-side handler, logging (not raising) how it ended: one bad peer must not take
    the server down."""
    try:
        await handler(conn)
    except (ConnectionClosed, ProtocolError) as exc:
        log.info("connection from %s ended: %s", conn.peer, exc)
    except Exception:
        log.exception("handler for connection from %s failed", conn.peer)
