"""The controller's end of one worker connection, sans-I/O: handshake, liveness, routing.

One connection carries the sessions of every request.  This state machine owns what belongs to
the connection rather than to a request: the Hello exchange (protocol version, tokenizer), the
pings that keep the one RTT estimate of the link up to date, connection-level errors, the
back-off between connection attempts, the worker's load as its Pongs report it
(:attr:`LinkCore.worker_load`), and routing of per-request messages by request id.  The
adapters (:mod:`wanspec.runtime.controller`, :mod:`wanspec.simulate.engine`) only move bytes and
run timers.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from enum import Enum
from typing import Callable

from wanspec.core.actions import Send
from wanspec.core.estimates import Ewma
from wanspec.protocol.codec import ProtocolError, check_hello
from wanspec.protocol.messages import (
    Cancel,
    Commit,
    Drafts,
    Error,
    Hello,
    Message,
    Ping,
    Pong,
    SessionStart,
    SessionStats,
)


class LinkState(str, Enum):
    IDLE = "idle"  # not connected (never, or lost): may connect once the back-off allows
    HANDSHAKE = "handshake"  # our Hello is out, the worker's not yet in
    UP = "up"


@dataclass(slots=True)
class Route:
    """Deliver ``msg`` to the request ``rid``."""

    rid: int
    msg: Message


@dataclass(slots=True)
class Up:
    """The handshake completed: requests may use the worker."""


@dataclass(slots=True)
class Lost:
    """The connection failed (close it); every request using it continues without the worker."""

    reason: str


LinkAction = Send | Route | Up | Lost


@dataclass(slots=True)
class WorkerLoadReport:
    """The worker's load, as its latest :class:`Pong` reported it (the codec checked the ranges).

    ``busy``: fraction of recent time its draft device ran passes.  ``demand``: its live sessions
    (of all controllers) per sequence one draft pass carries; above 1 each session is in about
    ``1 / demand`` of the passes, so its drafts come that much slower and its lookahead is cut.
    """

    busy: float
    demand: float
    at: float  # when the Pong arrived, on our clock


# messages a worker sends on behalf of one request
_PER_REQUEST = (Drafts, SessionStats, Error)
# messages only a controller sends: a worker sending them is not a wanspec worker
_CONTROLLER_ONLY = (SessionStart, Commit, Cancel)


class LinkCore:
    def __init__(self, hello: Hello, *, rtt_prior_s: float = 0.05, hello_timeout_s: float = 10.0,
                 ping_interval_s: float = 1.0, backoff_s: tuple[float, float] = (0.5, 30.0)
                 ) -> None:
        self.hello = hello
        self.rtt = Ewma(rtt_prior_s)  # the link's RTT: every request's estimate reads this one
        # told of every RTT sample (handshake and pings): for an operator's histogram
        self.on_rtt_sample: Callable[[float], None] | None = None
        self.hello_timeout_s = hello_timeout_s
        self.ping_interval_s = ping_interval_s
        self.backoff_min_s, self.backoff_max_s = backoff_s
        self.state = LinkState.IDLE
        self.peer: Hello | None = None
        self.last_error: str | None = None
        self.worker_load: WorkerLoadReport | None = None  # the latest the worker reported
        # its demand (sessions per pass slot; 0 until reported): every request's estimates read it
        self.worker_demand = Ewma(0.0, weight=1.0)
        self._backoff_s = self.backoff_min_s
        self._next_attempt = -math.inf
        self._hello_sent = 0.0
        self._next_ping: float | None = None
        self._ping_seq = 0

    @property
    def up(self) -> bool:
        return self.state is LinkState.UP

    def may_connect(self, now: float) -> bool:
        """False while the back-off after a failure lasts (requests then go on without a worker)."""
        return self.state is LinkState.IDLE and now >= self._next_attempt

    def connect(self, now: float) -> list[LinkAction]:
        """A fresh connection is open: introduce ourselves."""
        self.state, self.peer = LinkState.HANDSHAKE, None
        self.worker_load = None
        self.worker_demand.value = None  # a new connection: nothing reported yet
        self._hello_sent = now
        return [Send(self.hello)]

    def on_message(self, msg: Message, now: float) -> list[LinkAction]:
        if self.state is LinkState.HANDSHAKE:
            return self._on_handshake(msg, now)
        if self.state is not LinkState.UP:
            return []
        if isinstance(msg, Pong):
            if isinstance(msg.t, float) and msg.t <= now:  # an echo of one of our own clocks
                self._rtt_sample(now - msg.t)
            self.worker_load = WorkerLoadReport(msg.busy, msg.demand, now)
            self.worker_demand.update(msg.demand)
            return []
        if isinstance(msg, Error) and msg.rid < 0:
            return self._lose(f"worker error: {msg.message}", now)
        if isinstance(msg, _PER_REQUEST):
            return [Route(msg.rid, msg)]
        if isinstance(msg, _CONTROLLER_ONLY):
            return self._lose(f"protocol error from worker: unexpected {type(msg).__name__}", now)
        return []  # Ping (we do not answer: the worker does not need our RTT), a second Hello

    def on_closed(self, reason: str, now: float) -> list[LinkAction]:
        """The transport reports the connection gone (or could not open it)."""
        if self.state is LinkState.IDLE and self.last_error == reason:
            return []
        return self._lose(reason, now)

    def next_timer(self) -> float | None:
        if self.state is LinkState.HANDSHAKE:
            return self._hello_sent + self.hello_timeout_s
        if self.state is LinkState.UP:
            return self._next_ping
        return None

    def on_timer(self, now: float) -> list[LinkAction]:
        if self.state is LinkState.HANDSHAKE and now >= self._hello_sent + self.hello_timeout_s:
            return self._lose("worker did not complete the handshake in time", now)
        if self.state is LinkState.UP and self._next_ping is not None and now >= self._next_ping:
            self._ping_seq += 1
            self._next_ping = now + self.ping_interval_s
            return [Send(Ping(now, self._ping_seq))]
        return []

    # ---- internals ------------------------------------------------------------------------------
    def _on_handshake(self, msg: Message, now: float) -> list[LinkAction]:
        if isinstance(msg, Error):
            return self._lose(f"worker refused the connection: {msg.message}", now)
        if not isinstance(msg, Hello):
            return self._lose("worker did not answer with Hello (wrong protocol?)", now)
        try:
            check_hello(self.hello, msg)
        except ProtocolError as exc:
            return self._lose(str(exc), now)
        self.state, self.peer = LinkState.UP, msg
        self.last_error = None
        self._backoff_s = self.backoff_min_s
        self._rtt_sample(now - self._hello_sent)
        self._next_ping = now + self.ping_interval_s
        return [Up()]

    def _rtt_sample(self, seconds: float) -> None:
        self.rtt.update(seconds)
        if self.on_rtt_sample is not None:
            self.on_rtt_sample(seconds)

    def _lose(self, reason: str, now: float) -> list[LinkAction]:
        self.state, self.peer = LinkState.IDLE, None
        self.worker_load = None
        self.worker_demand.value = None  # a new connection: nothing reported yet
        self.last_error = reason
        self._next_ping = None
        self._next_attempt = now + self._backoff_s
        self._backoff_s = min(2 * self._backoff_s, self.backoff_max_s)
        return [Lost(reason)]
