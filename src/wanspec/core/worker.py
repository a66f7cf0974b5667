"""The worker's sans-I/O state machine: one controller connection, draft ahead, roll back.

The connection starts with a handshake (:mod:`wanspec.core.worker_handshake`: the controller's
:class:`Hello` checked against ours, and with a pre-shared key, proofs of it both ways); nothing
is served before it completes, within the hello timeout.  After the handshake, any number of
sessions run side by side.  Per session
the worker knows the committed prefix (prompt + commits received) and its own *chain* of drafts
beyond it.  It drafts whenever the chain is shorter than the lookahead cap, streaming each draft at
once, without waiting for verification.  A commit either consumes the head of the chain (every
committed token equals the chain's token: keep drafting, same epoch) or not (roll back to the
committed prefix, start a new chain under ``epoch + 1``).  A pass that was in flight across a
rollback is wasted and its result dropped.

The worker's draft device is shared by every session of every connection (the adapter batches
their passes).  A :class:`WorkerLoad`, fed by the adapter and shared by all cores, says how many
sessions share it; when they are more than one pass carries, :func:`lookahead_cap` shrinks each
session's lookahead, and the load is reported to the controller in every :class:`Pong`.

Everything the controller sends is checked here; a bad session request is answered with an
:class:`Error` for that session, a protocol violation closes the connection.  Nothing raises.

What one worker serves is bounded by :class:`WorkerLimits` (in :mod:`wanspec.core.capacity`, with
the load and the lookahead it allows; flags of ``wanspec worker``,
docs/security.md): connections (:func:`admit_connection`), sessions of all connections and of
one connection, prompt length, lookahead; a connection silent for the idle timeout is closed.  A
request over a capacity limit is refused with ``Error(code="overloaded")``, on which the
controller decodes locally at once.
"""

from __future__ import annotations

import math
import secrets
from dataclasses import dataclass, field
from typing import Callable, Sequence

from wanspec.core.actions import DraftDone, Log, RunDraft, Send, Site
from wanspec.core.branching import BranchOdds, Candidate, WorkerLane, best_candidates
from wanspec.core.capacity import (  # re-exported: the worker's limits and load live there
    DEFAULT_WORKER_MAX_BATCH,
    HELLO_TIMEOUT_S,
    Admit,
    WorkerLimits,
    WorkerLoad,
    admit_connection,
    lookahead_cap,
)
from wanspec.core.chain import DraftToken
from wanspec.core.tree import TreeShape
from wanspec.core.worker_handshake import Refusal, RefusedByPeer, WorkerHandshake
from wanspec.errors import WanspecError
from wanspec.protocol.codec import MAX_DEMAND
from wanspec.protocol.messages import (
    BUNDLES,
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
    bundle_drafts,
)
from wanspec.sampling import SamplingParams

OVERLOADED = "overloaded"  # Error.code of a refusal for capacity: the controller decodes locally


@dataclass(slots=True)
class DraftFor:
    """Run ``run`` on the draft model with session ``rid``'s KV cache number ``cache`` and its
    sampling.

    A session has one KV cache per lane of its draft tree (cache 0 for a plain chain); the core
    numbers them and reuses the numbers of pruned lanes.  With ``copy_from``, the cache first
    takes the first ``run.start`` positions of the session's cache ``copy_from`` (a branch starts
    from its parent's keys and values instead of recomputing the prefix).
    """

    rid: int
    run: RunDraft
    sampling: SamplingParams
    cache: int = 0
    copy_from: int | None = None


@dataclass(slots=True)
class Release:
    """Free session ``rid``'s KV caches (its in-flight passes, if any, are dropped when done)."""

    rid: int


@dataclass(slots=True)
class Close:
    """Close the connection (after sending what came before this action)."""

    reason: str


WorkerAction = DraftFor | Send | Release | Close | Log


@dataclass
class WorkerStats:
    passes: int = 0
    drafted: int = 0  # draft tokens streamed to the controller
    wasted_passes: int = 0  # passes whose result was void by the time it came back
    rollbacks: int = 0
    sessions: int = 0
    branches: int = 0  # branch lanes started
    branch_hits: int = 0  # commits that moved a session onto one of its branches

    def add(self, other: "WorkerStats") -> None:
        for name in ("passes", "drafted", "wasted_passes", "rollbacks", "sessions", "branches",
                     "branch_hits"):
            setattr(self, name, getattr(self, name) + getattr(other, name))


@dataclass(slots=True)
class _Cache:
    """One of a session's KV caches at the draft model (one per lane of its tree)."""

    length: int = 0  # positions it holds once its pass in flight (if any) has run
    busy_from: int | None = None  # the start of its pass in flight (it writes from there on)
    lane: int | None = 0  # the lane using it (None: free, once no pass writes into it)


@dataclass(slots=True)
class _Pass:
    op: int
    epoch: int
    lane: int
    cache: int
    position: int  # the position it proposes a token for


@dataclass
class _Session:
    start: SessionStart
    sampling: SamplingParams
    committed: list[int]
    lookahead: int  # each lane's length cap (the session's, within the worker's limit; the load
    # may lower it further: see lookahead_cap)
    end: int  # never draft at or past this absolute position
    branches: int  # branch lanes its tree may hold besides the main line (0: a plain chain)
    tree: TreeShape[WorkerLane]
    epoch: int = 0
    caches: list[_Cache] = field(default_factory=lambda: [_Cache()])
    running: dict[int, _Pass] = field(default_factory=dict)  # op -> its pass in flight
    next_lane: int = 1
    counted_branches: int = 0  # its share of WorkerLoad.branches
    passes: int = 0
    drafted: int = 0
    wasted: int = 0
    rollbacks: int = 0

    @property
    def chain(self) -> list[int]:
        """The main line's drafts past the committed prefix (the lane the commits follow)."""
        lane = self.tree.current
        return [d.token for d in lane.drafts[len(self.committed) - lane.start:]]

    @property
    def inflight(self) -> _Pass | None:
        """The pass in flight on the main line's cache, if any."""
        cache = self.tree.current.cache
        return next((p for p in self.running.values() if p.cache == cache), None)

    @property
    def cache_len(self) -> int:
        """Positions the main line's cache holds (once its pass in flight has run)."""
        return self.caches[self.tree.current.cache].length


class WorkerCore:
    """One connection's sessions; at most one draft pass in flight per KV cache (one per lane of
    a session's draft tree).

    ``overloaded``: the worker is at its connection limit; this connection's first message is
    answered with ``Error(code="overloaded")`` and the connection closed.
    """

    def __init__(self, hello: Hello, *, now: float = 0.0, limits: WorkerLimits | None = None,
                 max_context: int = 1 << 16, load: WorkerLoad | None = None,
                 overloaded: bool = False, auth_key: bytes | None = None,
                 random_bytes: Callable[[int], bytes] = secrets.token_bytes) -> None:
        """``auth_key``: the pre-shared key the controller must prove (None: no such check);
        ``random_bytes``: the source of this connection's nonce (injectable for tests)."""
        self.handshake = WorkerHandshake(hello, auth_key=auth_key, random_bytes=random_bytes)
        # shared with the other connections' cores; by default never over capacity
        self.load = load if load is not None else WorkerLoad()
        self.limits = limits or WorkerLimits()
        self.max_context = max_context
        self.overloaded = overloaded
        self.sessions: dict[int, _Session] = {}
        self.odds = BranchOdds()  # shared by the connection's sessions: one draft, one target
        self.stats = WorkerStats()
        self.closed = False
        self._hello_deadline: float | None = now + self.limits.hello_timeout_s
        self._last_heard = now  # when the controller last sent anything (the idle timeout)
        self._op = 0

    # ---- events ---------------------------------------------------------------------------------
    def on_message(self, msg: Message, now: float) -> list[WorkerAction]:
        """A message from the controller."""
        if self.closed:
            return []
        self._last_heard = now
        if self.overloaded:
            n = self.limits.max_connections
            return self._refuse(f"the worker is serving its limit of {n} connections; "
                                "try again later", OVERLOADED)
        if not self.authenticated:
            return self._on_handshake(msg)
        if isinstance(msg, Commit):
            return self._on_commit(msg)
        if isinstance(msg, SessionStart):
            return self._on_start(msg)
        if isinstance(msg, Cancel):
            return self._on_cancel(msg)
        if isinstance(msg, Ping):
            return [Send(self._pong(msg))]
        if isinstance(msg, Error):
            return [Log(f"controller reported: {msg.message}")]
        return self._refuse(f"unexpected {type(msg).__name__} from a controller", "protocol")

    def on_draft_done(self, rid: int, ev: DraftDone) -> list[WorkerAction]:
        """The draft pass started by ``DraftFor(rid, ...)`` finished (a pass of its own)."""
        return self.on_pass_done([(rid, ev)])

    def on_pass_done(self, results: Sequence[tuple[int, DraftDone]]) -> list[WorkerAction]:
        """A batched draft pass finished: ``results`` are its passes of this connection's
        sessions, as ``(rid, DraftDone)``.

        Each session touched gets what it drafted as one message (a :class:`DraftsBundle` for
        several lanes, when the controller announced ``bundles``) and is asked once what to run
        next, with everything the pass told it known: one decision a session a pass, not one a
        lane (a draft tree has many)."""
        fresh: dict[int, list[Drafts]] = {}  # per session touched: its drafts, lane by lane
        for rid, ev in results:
            self.stats.passes += 1
            s = self.sessions.get(rid)
            run = s.running.pop(ev.op, None) if s is not None else None
            if s is None or run is None:
                self.stats.wasted_passes += 1  # its session was cancelled or dropped meanwhile
                continue
            drafts = fresh.setdefault(rid, [])
            s.passes += 1
            self._pass_ended(s, run.cache)
            lane = s.tree.lanes.get(run.lane) if run.epoch == s.epoch else None
            if lane is None or lane.cache != run.cache or run.position != lane.end:
                self.stats.wasted_passes += 1  # overtaken by a rollback, a prune or a commit
                s.wasted += 1
                continue
            lane.drafts.append(DraftToken(ev.token, ev.entropy, ev.top_prob))
            if s.branches:
                alternatives = tuple((t, q) for t, q in zip(ev.alternatives, ev.alt_probs)
                                     if t != ev.token and 0.0 < q <= 1.0)
                if alternatives:
                    lane.alternatives[run.position] = alternatives
            s.drafted += 1
            self.stats.drafted += 1
            drafts.append(self._drafts_message(rid, s, lane))
        out: list[WorkerAction] = []
        for rid, drafts in fresh.items():
            drafts.sort(key=lambda d: d.lane)  # (a parent before its branches)
            out.extend(self._sends(drafts))
            out.extend(self._next_drafts(rid, self.sessions[rid]))
        return out

    def _sends(self, drafts: list[Drafts]) -> list[WorkerAction]:
        """``drafts`` (one session's, one pass) on the wire: one message if the peer takes
        bundles, else one a lane."""
        if len(drafts) > 1 and self.peer is not None and BUNDLES in self.peer.capabilities:
            return [Send(bundle_drafts(drafts))]
        return [Send(d) for d in drafts]

    def on_draft_failed(self, rid: int, op: int, reason: str) -> list[WorkerAction]:
        """The draft pass started by ``DraftFor(rid, ...)`` failed (not because the session left):
        the session ends here with an :class:`Error`; its request goes on without the worker."""
        self.stats.passes += 1
        self.stats.wasted_passes += 1
        s = self.sessions.get(rid)
        run = s.running.pop(op, None) if s is not None else None
        if s is None or run is None:
            return []
        self._pass_ended(s, run.cache)
        lane = s.tree.lanes.get(run.lane) if run.epoch == s.epoch else None
        if lane is None or lane.cache != run.cache:
            # a pass of a lane pruned meanwhile (e.g. a fork whose source was cut since): its
            # result was void anyway, so its failure is no failure of the session
            s.wasted += 1
            return self._next_drafts(rid, s)
        error = Error(f"session {rid}: draft pass failed: {reason}", rid=rid, code="session")
        return [Log(f"session {rid}: draft pass failed: {reason}"), Send(error), *self._drop(rid)]

    def on_load_changed(self) -> list[WorkerAction]:
        """The worker's load changed (sessions came or went on some connection): a session held
        back by a smaller lookahead cap may draft again."""
        if self.closed or not self.authenticated:
            return []
        return [a for rid, s in self.sessions.items() for a in self._next_drafts(rid, s)]

    def next_timer(self) -> float | None:
        if self.closed:
            return None
        if not self.authenticated:  # (no Hello yet, or no proof of the key yet)
            return self._hello_deadline
        idle = self.limits.idle_timeout_s
        return self._last_heard + idle if idle > 0 else None

    def on_timer(self, now: float) -> list[WorkerAction]:
        if self.closed:
            return []
        if not self.authenticated:
            if self._hello_deadline is not None and now >= self._hello_deadline:
                self.closed = True
                missing = self.handshake.missing
                return [Log(f"no {missing} within {self.limits.hello_timeout_s:g} s"),
                        Close(f"no {missing} in time")]
            return []
        deadline = self.next_timer()
        if deadline is not None and now >= deadline:  # an honest controller pings every second
            idle = self.limits.idle_timeout_s
            return self._refuse(f"nothing received for {idle:g} s: closing the idle connection",
                                "idle")
        return []

    def on_connection_lost(self) -> list[WorkerAction]:
        """The connection is gone: free every session."""
        self.closed = True
        self._hello_deadline = None
        return [a for rid in list(self.sessions) for a in self._drop(rid)]

    # ---- handshake ------------------------------------------------------------------------------
    @property
    def hello(self) -> Hello:
        """Our Hello (with our nonce when a key is required)."""
        return self.handshake.hello

    @property
    def peer(self) -> Hello | None:
        """The controller's Hello, once accepted."""
        return self.handshake.peer

    @property
    def authenticated(self) -> bool:
        """The handshake completed: the controller proved the key (or none is required)."""
        return self.handshake.authenticated

    def _on_handshake(self, msg: Message) -> list[WorkerAction]:
        step = self.handshake.on_message(msg)
        if isinstance(step, Refusal):
            return self._refuse(step.message, step.code)
        if isinstance(step, RefusedByPeer):
            self.closed = True
            self._hello_deadline = None
            return [Log(f"controller refused the connection: {step.message}"),
                    Close(step.message)]
        if self.authenticated:
            self._hello_deadline = None
        return list(step)

    def _pong(self, ping: Ping) -> Pong:
        """The Ping's echo, with the worker's load (kept inside the ranges the codec accepts)."""
        busy = float(self.load.busy)
        busy = min(max(busy, 0.0), 1.0) if math.isfinite(busy) else 0.0
        return Pong(ping.t, ping.seq, busy, min(float(self.load.demand), MAX_DEMAND))

    def _refuse(self, message: str, code: str) -> list[WorkerAction]:
        self.closed = True
        self._hello_deadline = None
        return [Log(f"refusing the controller: {message}"), Send(Error(message, code=code)),
                Close(message), *[a for rid in list(self.sessions) for a in self._drop(rid)]]

    # ---- sessions -------------------------------------------------------------------------------
    def _on_start(self, msg: SessionStart) -> list[WorkerAction]:
        refusal = self._check_start(msg)
        if refusal is not None:
            problem, code = refusal
            return [Send(Error(problem, rid=msg.rid, code=code))]
        try:
            sampling = SamplingParams(msg.temperature, msg.top_k, msg.top_p, msg.seed)
        except (WanspecError, TypeError) as exc:
            return [Send(Error(f"bad sampling parameters: {exc}", rid=msg.rid, code="session"))]
        end = min(msg.max_position or self.max_context, self.max_context)
        n = len(msg.prompt)
        s = _Session(msg, sampling, list(msg.prompt),
                     lookahead=max(1, min(msg.lookahead, self.limits.max_lookahead)), end=end,
                     branches=min(msg.branches, self.limits.max_branches),
                     tree=TreeShape(WorkerLane(0, 0, n, n)))
        self.sessions[msg.rid] = s
        self.stats.sessions += 1
        return self._next_drafts(msg.rid, s)

    def _check_start(self, msg: SessionStart) -> tuple[str, str] | None:
        """Why ``msg`` is refused, and the Error code to refuse it with; None to start it."""
        limits = self.limits
        if msg.rid in self.sessions:
            return f"session {msg.rid} already exists", "session"
        if len(self.sessions) >= limits.max_connection_sessions:
            return (f"this connection is at the worker's limit of "
                    f"{limits.max_connection_sessions} sessions", OVERLOADED)
        if self.load.sessions >= limits.max_sessions:  # (the adapter counts every connection's)
            return f"the worker is at its limit of {limits.max_sessions} sessions", OVERLOADED
        if not msg.prompt:
            return "empty prompt", "session"
        longest = min(limits.max_prompt, self.max_context)
        if len(msg.prompt) > longest:
            return f"prompt of {len(msg.prompt)} tokens exceeds the limit of {longest}", "session"
        return None

    def _on_commit(self, msg: Commit) -> list[WorkerAction]:
        s = self.sessions.get(msg.rid)
        if s is None:
            return []  # cancelled or dropped: the controller has been told, or will stop soon
        n = len(s.committed)
        if msg.base != n:
            error = Error(f"session {msg.rid}: commit at {msg.base}, expected {n}",
                          rid=msg.rid, code="session")
            return [Send(error), *self._drop(msg.rid)]
        if n + len(msg.tokens) > s.end:  # past the end it announced: a controller filling memory
            error = Error(f"session {msg.rid}: commit past position {s.end}", rid=msg.rid,
                          code="session")
            return [Send(error), *self._drop(msg.rid)]
        s.committed.extend(msg.tokens)
        tree = s.tree
        moves = tree.moves
        for position, draft, lane in tree.advance(s.committed):
            self.odds.on_judged(draft, draft.token == s.committed[position],
                                lane.alternatives.get(position, ()), s.committed[position])
        self.stats.branch_hits += tree.moves - moves
        if tree.off is not None or tree.pos < len(s.committed):
            self._new_epoch(s)  # the commit left the tree, or ran past its drafts
        else:
            for lane in tree.prune():
                self._free(s, lane.cache)
        self._count_branches(s)
        return self._next_drafts(msg.rid, s)

    def _new_epoch(self, s: _Session) -> None:
        """Start a new chain from the committed prefix: the lane the commit followed keeps its
        KV cache up to where it agreed with the commit, every other lane's cache is freed."""
        tree = s.tree
        kept = tree.current
        for lane in tree.lanes.values():
            if lane is not kept:
                self._free(s, lane.cache)
        cache = s.caches[kept.cache]
        cache.length = min(cache.length, tree.pos)
        n = len(s.committed)
        s.tree = TreeShape(WorkerLane(0, 0, n, n, cache=kept.cache))
        cache.lane = 0
        s.epoch += 1
        s.rollbacks += 1
        self.stats.rollbacks += 1

    def _on_cancel(self, msg: Cancel) -> list[WorkerAction]:
        s = self.sessions.get(msg.rid)
        if s is None:
            return []
        stats = SessionStats(msg.rid, s.passes, s.drafted, s.wasted, s.rollbacks)
        return [*self._drop(msg.rid), Send(stats)]

    def _drop(self, rid: int) -> list[WorkerAction]:
        s = self.sessions.pop(rid, None)
        if s is None:
            return []
        self.load.branches -= s.counted_branches
        return [Release(rid)]

    # ---- drafting -------------------------------------------------------------------------------
    def _next_drafts(self, rid: int, s: _Session) -> list[WorkerAction]:
        """The draft passes session ``s`` may start now: the next token of every lane whose
        cache is free and which is short of the lookahead cap, then new branches (best first)
        while the session's budget and the worker's spare capacity allow."""
        n = len(s.committed)
        limit = min(n + lookahead_cap(s.lookahead, self.load), s.end)
        out: list[WorkerAction] = []
        paused = self.load.over_capacity  # branches wait; every main line goes on
        for lane in sorted(s.tree.lanes.values(), key=lambda x: x.id):
            if paused and lane.id != s.tree.lane:
                continue
            if lane.end < limit and s.caches[lane.cache].busy_from is None:
                out.append(self._extend(rid, s, lane))
        room = s.branches + 1 - len(s.tree.lanes)  # branch lanes the budget still allows
        if room > 0 and self.load.spare_seats:
            for best in best_candidates(s.tree, n, limit, self.odds, room):
                if not self.load.spare_seats:
                    break
                out.append(self._branch(rid, s, best))
        return out

    def _extend(self, rid: int, s: _Session, lane: WorkerLane) -> DraftFor:
        """A pass proposing ``lane``'s next token: feed its path from what its cache holds."""
        cache = s.caches[lane.cache]
        start = min(cache.length, lane.end - 1)
        tokens = self._path(s, lane, start, lane.end)
        return self._run(rid, s, lane, start, tokens, copy_from=None)

    def _branch(self, rid: int, s: _Session, c: Candidate) -> DraftFor:
        """Start a branch lane at ``c.fork`` with token ``c.token``: its cache copies the
        parent's prefix (as far as no pass in flight rewrites it), then the pass feeds the rest
        of the path and the branch's first token and proposes its second."""
        lane = WorkerLane(s.next_lane, c.parent.id, c.fork, c.fork,
                          [DraftToken(c.token, c.entropy, c.hit)],
                          cache=self._take_cache(s, s.next_lane), reach=c.hit, sent_first=False)
        s.next_lane += 1
        s.tree.add_branch(lane)
        self.stats.branches += 1
        self._count_branches(s)
        parent = s.caches[c.parent.cache]
        stable = parent.length if parent.busy_from is None else parent.busy_from
        start = min(stable, c.fork)
        tokens = (*self._path(s, c.parent, start, c.fork), c.token)
        return self._run(rid, s, lane, start, tokens,
                         copy_from=c.parent.cache if start > 0 else None)

    def _run(self, rid: int, s: _Session, lane: WorkerLane, start: int,
             tokens: tuple[int, ...], copy_from: int | None) -> DraftFor:
        self._op += 1
        cache = s.caches[lane.cache]
        cache.busy_from, cache.length = start, start + len(tokens)
        s.running[self._op] = _Pass(self._op, s.epoch, lane.id, lane.cache, start + len(tokens))
        run = RunDraft(self._op, Site.WORKER, start, tokens)
        return DraftFor(rid, run, s.sampling, cache=lane.cache, copy_from=copy_from)

    def _path(self, s: _Session, lane: WorkerLane, start: int, stop: int) -> tuple[int, ...]:
        """The tokens at positions ``start .. stop-1`` on ``lane``'s path (committed, then the
        drafts of the lane and its ancestors)."""
        n = len(s.committed)
        head = tuple(s.committed[start:min(stop, n)])
        return head + tuple(s.tree.path_token(lane, j) for j in range(max(start, n), stop))

    def _drafts_message(self, rid: int, s: _Session, lane: WorkerLane) -> Drafts:
        """The message streaming ``lane``'s newest draft; a branch's first message also carries
        the token it starts with, from its fork (the controller learns of it only now)."""
        if lane.id == 0:  # (no lane fields: a plain chain reads the same as before trees)
            d = lane.drafts[-1]
            return Drafts(rid, s.epoch, lane.end - 1, (d.token,), (d.entropy,), (d.top_prob,))
        if lane.sent_first:
            drafts = lane.drafts[-1:]
        else:  # its first token, then its first draft (the branch may be committed up to it)
            lane.sent_first = True
            assert lane.start <= lane.fork + 1 == lane.end - 1
            first = DraftToken(s.tree.path_token(lane, lane.fork) if lane.start == lane.fork
                               else s.committed[lane.fork], 0.0, lane.reach)
            drafts = [first, lane.drafts[-1]]
        base = lane.end - len(drafts)
        return Drafts(rid, s.epoch, base, tuple(d.token for d in drafts),
                      tuple(d.entropy for d in drafts), tuple(d.top_prob for d in drafts),
                      lane=lane.id, parent=lane.parent, fork=lane.fork)

    # ---- KV caches --------------------------------------------------------------------------------
    def _take_cache(self, s: _Session, lane: int) -> int:
        """A free cache of the session for ``lane`` (a new one if none is free)."""
        for i, cache in enumerate(s.caches):
            if cache.lane is None and cache.busy_from is None:
                cache.lane, cache.length = lane, 0
                return i
        s.caches.append(_Cache(lane=lane))
        return len(s.caches) - 1

    def _free(self, s: _Session, index: int) -> None:
        s.caches[index].lane = None  # reused once its pass in flight, if any, has run

    def _pass_ended(self, s: _Session, index: int) -> None:
        s.caches[index].busy_from = None

    def _count_branches(self, s: _Session) -> None:
        """Keep the worker's count of branch lanes (all sessions) current."""
        lanes = len(s.tree.lanes) - 1
        self.load.branches += lanes - s.counted_branches
        s.counted_branches = lanes
