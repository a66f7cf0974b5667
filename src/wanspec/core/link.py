"""The controller's end of one worker connection, sans-I/O: handshake, liveness, routing.

One connection carries the sessions of every request.  This state machine owns what belongs to
the connection rather than to a request: the Hello exchange (protocol version, tokenizer), the
mutual proof of the pre-shared key when there is one (:mod:`wanspec.protocol.auth`), the
pings that keep the one RTT estimate of the link up to date, connection-level errors, the
back-off between connection attempts, the worker's load as its Pongs report it
(:attr:`LinkCore.worker_load`), and routing of per-request messages by request id.  The
adapters (:mod:`wanspec.runtime.controller`, :mod:`wanspec.simulate.engine`) only move bytes and
run timers.
"""

from __future__ import annotations

import dataclasses
import math
import secrets
from dataclasses import dataclass
from enum import Enum
from typing import Callable

from wanspec.core.actions import Send
from wanspec.core.estimates import Ewma
from wanspec.protocol.auth import NONCE_BYTES, proof, proof_matches
from wanspec.protocol.codec import ProtocolError, check_hello
from wanspec.protocol.messages import (
    Auth,
    Cancel,
    Commit,
    Drafts,
    DraftsBundle,
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
    AUTH = "auth"  # the worker's Hello is in, its proof of the pre-shared key not yet
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
_PER_REQUEST = (Drafts, DraftsBundle, SessionStats, Error)
# messages only a controller sends: a worker sending them is not a wanspec worker
_CONTROLLER_ONLY = (SessionStart, Commit, Cancel)
KEY_MISMATCH = ("authentication failed: the worker's key does not match the controller's "
                "(--auth-key-file must hold the same key at both sites)")
_PINGS_KEPT = 8  # pings awaiting their Pong (one a second: older echoes are too late to matter)


class LinkCore:
    def __init__(self, hello: Hello, *, rtt_prior_s: float = 0.05, hello_timeout_s: float = 10.0,
                 ping_interval_s: float = 1.0, backoff_s: tuple[float, float] = (0.5, 30.0),
                 silence_timeout_s: float = 10.0, auth_key: bytes | None = None,
                 random_bytes: Callable[[int], bytes] = secrets.token_bytes) -> None:
        """``auth_key``: the pre-shared key both sides must prove (None: the worker must not ask
        for one); ``random_bytes``: the source of each connection's nonce (injectable for tests).
        """
        self.hello = dataclasses.replace(hello, nonce=b"")  # a nonce is per connection
        self.auth_key = auth_key
        self._random_bytes = random_bytes
        self._sent_hello = self.hello  # this connection's (with its nonce)
        # a worker that sends nothing (not even the Pongs of our pings) this long is lost
        self.silence_timeout_s = silence_timeout_s
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
        self._last_heard = 0.0
        self._pings: dict[int, float] = {}  # sent, not yet echoed: seq -> our clock when sent

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
        hello = self.hello
        if self.auth_key is not None:
            nonce = self._random_bytes(NONCE_BYTES)
            if len(nonce) != NONCE_BYTES:
                raise ValueError(f"random_bytes gave {len(nonce)} bytes, not {NONCE_BYTES}")
            hello = dataclasses.replace(hello, nonce=nonce)
        self._sent_hello = hello
        return [Send(hello)]

    def on_message(self, msg: Message, now: float) -> list[LinkAction]:
        self._last_heard = now
        if self.state is LinkState.HANDSHAKE:
            return self._on_handshake(msg, now)
        if self.state is LinkState.AUTH:
            return self._on_auth(msg, now)
        if self.state is not LinkState.UP:
            return []
        if isinstance(msg, Pong):
            # only the echo of a Ping we sent measures the RTT (once): any other t is a lie
            sent = self._pings.get(msg.seq) if type(msg.seq) is int else None
            if sent is not None and msg.t == sent and sent <= now:
                del self._pings[msg.seq]
                self._rtt_sample(now - sent)
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
        if self.state in (LinkState.HANDSHAKE, LinkState.AUTH):
            return self._hello_sent + self.hello_timeout_s
        if self.state is LinkState.UP and self._next_ping is not None:
            return min(self._next_ping, self._last_heard + self.silence_timeout_s)
        return None

    def on_timer(self, now: float) -> list[LinkAction]:
        if (self.state in (LinkState.HANDSHAKE, LinkState.AUTH)
                and now >= self._hello_sent + self.hello_timeout_s):
            return self._lose("worker did not complete the handshake in time", now)
        if self.state is LinkState.UP and now >= self._last_heard + self.silence_timeout_s:
            return self._lose(f"worker sent nothing for {self.silence_timeout_s:g} s "
                              "(not even answers to pings)", now)
        if self.state is LinkState.UP and self._next_ping is not None and now >= self._next_ping:
            self._ping_seq += 1
            self._next_ping = now + self.ping_interval_s
            self._pings[self._ping_seq] = now
            if len(self._pings) > _PINGS_KEPT:
                del self._pings[min(self._pings)]
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
        self._rtt_sample(now - self._hello_sent)  # (a worker's Auth comes in the same flight)
        if self.auth_key is None:
            if msg.nonce:
                return self._refuse(
                    "authentication failed: the worker requires a pre-shared key and the "
                    "controller has none (start the controller with --auth-key-file, the "
                    "worker's key)", now)
            return self._up(msg, now)
        if not msg.nonce:
            return self._refuse(
                "authentication failed: the controller has a pre-shared key but the worker has "
                "none (start the worker with --auth-key-file, the controller's key)", now)
        self.state, self.peer = LinkState.AUTH, msg
        return []

    def _on_auth(self, msg: Message, now: float) -> list[LinkAction]:
        """The worker's proof of the key; ours goes back only once it checked out."""
        assert self.peer is not None and self.auth_key is not None
        if isinstance(msg, Error):
            return self._lose(f"worker refused the connection: {msg.message}", now)
        if not isinstance(msg, Auth):
            return self._refuse(f"authentication failed: the worker sent {type(msg).__name__} "
                                "instead of proving its key", now)
        ours, theirs = self._sent_hello.nonce, self.peer.nonce
        expected = proof(self.auth_key, version=self.hello.version, prover="worker",
                         controller_nonce=ours, worker_nonce=theirs)
        if not proof_matches(msg.mac, expected):
            return self._refuse(KEY_MISMATCH, now)
        mine = proof(self.auth_key, version=self.hello.version, prover="controller",
                     controller_nonce=ours, worker_nonce=theirs)
        return [Send(Auth(mine)), *self._up(self.peer, now)]

    def _up(self, peer: Hello, now: float) -> list[LinkAction]:
        self.state, self.peer = LinkState.UP, peer
        self.last_error = None
        self._backoff_s = self.backoff_min_s
        self._next_ping = now + self.ping_interval_s
        return [Up()]

    def _rtt_sample(self, seconds: float) -> None:
        self.rtt.update(seconds)
        if self.on_rtt_sample is not None:
            self.on_rtt_sample(seconds)

    def _refuse(self, reason: str, now: float) -> list[LinkAction]:
        """Tell the worker why (so its operator sees it too), then lose the connection."""
        return [Send(Error(reason, code="auth")), *self._lose(reason, now)]

    def _lose(self, reason: str, now: float) -> list[LinkAction]:
        self.state, self.peer = LinkState.IDLE, None
        self.worker_load = None
        self.worker_demand.value = None  # a new connection: nothing reported yet
        self.last_error = reason
        self._next_ping = None
        self._pings.clear()
        self._next_attempt = now + self._backoff_s
        self._backoff_s = min(2 * self._backoff_s, self.backoff_max_s)
        return [Lost(reason)]
