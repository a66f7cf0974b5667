"""An in-memory link with an injected WAN latency model, driven by the loop's (virtual) clock.

Why this exists: experiments and tests need a WAN that is reproducible and costs no wall-clock
time.  Every delay is a ``loop.call_at`` timer, so on :class:`~wanspec.timing.clock.VirtualTimeLoop`
a 300 ms RTT run finishes instantly with exact timestamps.  Messages really go through
:func:`~wanspec.protocol.codec.encode_frame` / :func:`decode_message`, so sizes (and hence
bandwidth costs) are the real wire sizes, oversize frames are refused like on a socket, and the
receiver gets a fresh object, never one shared with the sender.  A loop charging the host also
charges each end ``LinkParams.stack_ms`` a message, the host work a real transport's stack would
do there (:mod:`~wanspec.transport.stack_cost`).

Latency model, per direction (each direction is a FIFO, like one TCP/QUIC stream)::

    tx_done = max(now, link_free) + bytes * 8 / bandwidth      # serialisation, link busy meanwhile
    arrival = max(previous_arrival,
                  tx_done + one_way + U(0, jitter) + (spike if rand < spike_prob))

``one_way`` is ``rtt * up_share`` controller->worker and ``rtt * (1 - up_share)`` back.  Jitter
delays but never reorders (ordered streams cannot reorder), and loss is modelled as a delay spike,
which is what a reliable transport turns a lost packet into (a retransmission).
"""

from __future__ import annotations

import asyncio
import collections

from wanspec.protocol.codec import DEFAULT_MAX_FRAME, decode_message, encode_frame
from wanspec.protocol.messages import Message
from wanspec.timing import clock
from wanspec.transport.base import Connection, ConnectionClosed
from wanspec.transport.common import Inbox, Traffic
from wanspec.transport.latency import FifoLink, LinkParams

__all__ = ["InprocConnection", "LinkParams", "inproc_pair"]

_HEADER_BYTES = 4


class _Pipe:
    """One direction of the link: FIFO serialisation + propagation, delivered by loop timers.

    Items are kept in one deque with nondecreasing arrival times and a single timer is armed for
    the head; firing delivers every item due by then, in order.  (One timer per message would
    not do: asyncio's timer heap does not keep FIFO order among equal deadlines.)
    """

    def __init__(self, params: LinkParams, one_way_ms: float, name: str) -> None:
        self._schedule = FifoLink(params, one_way_ms, name)  # the delay arithmetic
        self.stack_s = params.stack_ms / 1e3  # each end's share of a real stack's host work
        self._pending: collections.deque[tuple[float, bytes | None]] = collections.deque()
        self._timer: asyncio.TimerHandle | None = None
        self._timer_when = 0.0
        self._loop: asyncio.AbstractEventLoop | None = None
        self.sent = Traffic()
        self.delivered = Traffic()
        self.sink: InprocConnection | None = None  # the receiving end

    def push(self, body: bytes) -> float:
        """Put one frame body on the link; returns its arrival time."""
        nbytes = len(body) + _HEADER_BYTES
        self.sent.add(nbytes)
        return self._enqueue(self._schedule.push(self._use_loop().time(), nbytes), body)

    def push_eof(self) -> None:
        """The sender closed: the peer learns it one base delay later, after the data in flight."""
        self._enqueue(self._schedule.eof_arrival(self._use_loop().time()), None)

    def drop(self) -> None:
        """Lose everything in flight (the link was cut)."""
        self._pending.clear()
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None

    def _use_loop(self) -> asyncio.AbstractEventLoop:
        if self._loop is None:
            self._loop = asyncio.get_running_loop()
        return self._loop

    def _enqueue(self, arrival: float, body: bytes | None) -> float:
        self._pending.append((arrival, body))
        self._arm()
        return arrival

    def _arm(self) -> None:
        if self._timer is None and self._pending and self._loop is not None:
            self._timer_when = self._pending[0][0]
            # delivering is the wire's work, no site's host's
            self._timer = self._loop.call_at(self._timer_when, self._fire,
                                             context=clock.no_site_context())

    def _fire(self) -> None:
        self._timer = None
        due = self._timer_when  # the loop may fire a timer up to its clock resolution early
        while self._pending and self._pending[0][0] <= due:
            _, body = self._pending.popleft()
            if self.sink is None:
                continue
            if body is None:
                self.sink._peer_closed()
            elif not self.sink._inbox.ended:
                self.delivered.add(len(body) + _HEADER_BYTES)
                self.sink._inbox.put(body)
        self._arm()


class InprocConnection(Connection):
    """One end of an in-process link.

    ``sent`` / ``received`` count messages and bytes (wire size, header included) for metrics.
    ``closed`` means this end can no longer send; ``recv()`` still drains what already arrived.
    """

    def __init__(self, peer: str, out: _Pipe, inc: _Pipe, max_frame: int) -> None:
        self.peer = f"inproc:{peer}"
        self._out = out
        self._in = inc
        self._max_frame = max_frame
        self._inbox: Inbox[bytes] = Inbox()
        self._closed_reason: str | None = None
        self.sent: Traffic = out.sent
        self.received: Traffic = inc.delivered
        self._other: InprocConnection | None = None

    @property
    def closed(self) -> bool:
        return self._closed_reason is not None

    async def send(self, msg: Message) -> None:
        if self._closed_reason is not None:
            raise ConnectionClosed(f"{self.peer}: {self._closed_reason}")
        frame = encode_frame(msg, self._max_frame)  # refuses oversize, like a socket adapter
        if self._out.stack_s:  # a real stack's work comes before the message is on the wire
            clock.charge_host(self._out.stack_s)
        self._out.push(frame[_HEADER_BYTES:])

    async def recv(self) -> Message:
        body = await self._inbox.get()
        if self._in.stack_s:
            clock.charge_host(self._in.stack_s)
        return decode_message(body)

    async def close(self) -> None:
        if self._closed_reason is not None:
            return
        self._closed_reason = "connection closed"
        self._inbox.abort(ConnectionClosed(f"{self.peer}: connection closed"))
        self._out.push_eof()

    def kill(self) -> None:
        """Cut the link now: both ends closed, everything in flight or unread is lost.

        Simulates a site dying (process killed, network cut) rather than a polite close.
        """
        for end in (self, self._other):
            if end is None:
                continue
            end._out.drop()
            if end._closed_reason is None:
                end._closed_reason = "link killed"
            end._inbox.abort(ConnectionClosed(f"{end.peer}: link killed"))

    def _peer_closed(self) -> None:
        if self._closed_reason is None:
            self._closed_reason = "peer closed the connection"
        self._inbox.finish(ConnectionClosed(f"{self.peer}: peer closed the connection"))


def inproc_pair(
    params: LinkParams | None = None, *, max_frame: int = DEFAULT_MAX_FRAME
) -> tuple[InprocConnection, InprocConnection]:
    """A connected ``(controller_end, worker_end)`` pair over an emulated WAN link."""
    params = params or LinkParams()
    up = _Pipe(params, params.up_ms, "up")  # same names as latency.link_pair: same random draws
    down = _Pipe(params, params.down_ms, "down")
    controller = InprocConnection("worker", up, down, max_frame)
    worker = InprocConnection("controller", down, up, max_frame)
    controller._other, worker._other = worker, controller
    up.sink, down.sink = worker, controller
    return controller, worker
