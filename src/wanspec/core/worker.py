"""The worker's sans-I/O state machine: draft ahead continuously, roll back on divergence.

Per session the worker knows the committed prefix (prompt + commits received) and its own
*chain* of drafts beyond it.  It drafts whenever the chain is shorter than the lookahead cap,
streaming each draft at once, without waiting for verification.  A commit either consumes the
head of the chain (every committed token equals the chain's token: keep drafting, same epoch)
or not (roll back to the committed prefix, start a new chain under ``epoch + 1``).  A pass that
was in flight across a rollback is wasted and its result dropped.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Final

from wanspec.core.actions import DraftDone, RunDraft, Site
from wanspec.core.chain import feed_from
from wanspec.protocol.messages import Cancel, Commit, Drafts, SessionStart, SessionStats


# Actions are values (treat them as immutable); slotted rather than frozen because two are built
# per draft pass, and frozen dataclasses are ~4x slower to construct; written __init__: native
# code when compiled (see wanspec.core.actions).


@dataclass(slots=True, init=False)
class DraftFor:
    """Run ``run`` on the draft model with session ``rid``'s KV cache."""

    rid: int
    run: RunDraft

    def __init__(self, rid: int, run: RunDraft) -> None:
        self.rid = rid
        self.run = run


@dataclass(slots=True, init=False)
class Send:
    msg: Drafts | SessionStats

    def __init__(self, msg: Drafts | SessionStats) -> None:
        self.msg = msg


@dataclass(slots=True)
class Release:
    """Free session ``rid``'s KV cache (its in-flight pass, if any, is dropped when done)."""

    rid: int


WorkerAction = DraftFor | Send | Release

_WORKER: Final = Site.WORKER  # (an Enum class attribute lookup costs ~60 ns on Python 3.11)


@dataclass(slots=True)
class WorkerStats:
    passes: int = 0
    drafted: int = 0  # draft tokens streamed to the controller
    wasted_passes: int = 0  # passes whose result was void by the time it came back
    rollbacks: int = 0
    sessions: int = 0


@dataclass(slots=True)
class _Session:
    start: SessionStart
    committed: list[int]
    lookahead: int  # the chain's length cap (the session's, within the worker's limit)
    end: int  # never draft at or past this absolute position
    chain: list[int] = field(default_factory=list)
    epoch: int = 0
    cache_len: int = 0
    inflight: RunDraft | None = None
    inflight_epoch: int = 0
    closed: bool = False
    passes: int = 0
    drafted: int = 0
    wasted: int = 0
    rollbacks: int = 0

    @property
    def next_position(self) -> int:
        return len(self.committed) + len(self.chain)


class WorkerCore:
    """Many concurrent sessions; at most one draft pass in flight per session."""

    def __init__(self, *, max_sessions: int = 64, max_lookahead: int = 64,
                 max_context: int = 1 << 16) -> None:
        self.max_sessions = max_sessions
        self.max_lookahead = max_lookahead
        self.max_context = max_context
        self.sessions: dict[int, _Session] = {}
        self.stats = WorkerStats()
        self._next_op = 0

    # ---- messages from the controller ---------------------------------------------------------
    def on_start(self, msg: SessionStart) -> list[WorkerAction]:
        if msg.rid in self.sessions:
            raise ValueError(f"session {msg.rid} already exists")
        if len(self.sessions) >= self.max_sessions:
            raise ValueError(f"worker is at its limit of {self.max_sessions} sessions")
        if not msg.prompt:
            raise ValueError("empty prompt")
        if len(msg.prompt) > self.max_context:
            raise ValueError(f"prompt of {len(msg.prompt)} tokens exceeds {self.max_context}")
        end = min(msg.max_position or self.max_context, self.max_context)
        s = _Session(start=msg, committed=list(msg.prompt),
                     lookahead=max(1, min(msg.lookahead, self.max_lookahead)), end=end)
        self.sessions[msg.rid] = s
        self.stats.sessions += 1
        return self._draft_actions(msg.rid, s)

    def on_commit(self, msg: Commit) -> list[WorkerAction]:
        s = self.sessions.get(msg.rid)
        if s is None or s.closed:
            return []
        n = len(s.committed)
        if msg.base != n:
            raise ValueError(f"session {msg.rid}: commit at {msg.base}, expected {n}")
        tokens = list(msg.tokens)
        match = 0
        while match < len(tokens) and match < len(s.chain) and s.chain[match] == tokens[match]:
            match += 1
        s.committed.extend(tokens)
        if match == len(tokens):
            del s.chain[:match]  # the head of our chain was committed: keep going
        else:
            # divergence (or the commit ran past our chain): start a new chain from the prefix
            s.cache_len = min(s.cache_len, n + match)
            s.chain = []
            s.epoch += 1
            s.rollbacks += 1
            self.stats.rollbacks += 1
        return self._draft_actions(msg.rid, s)

    def on_cancel(self, msg: Cancel) -> list[WorkerAction]:
        s = self.sessions.get(msg.rid)
        if s is None:
            return []
        stats = SessionStats(msg.rid, s.passes, s.drafted, s.wasted, s.rollbacks)
        return [*self.drop(msg.rid), Send(stats)]

    def drop(self, rid: int) -> list[WorkerAction]:
        s = self.sessions.pop(rid, None)
        if s is None:
            return []
        s.closed = True
        return [Release(rid)]

    # ---- results of draft passes ----------------------------------------------------------------
    def on_draft_done(self, rid: int, ev: DraftDone) -> list[WorkerAction]:
        stats = self.stats
        stats.passes += 1
        s = self.sessions.get(rid)
        if s is None:
            stats.wasted_passes += 1
            return []
        run = s.inflight
        if run is None or run.op != ev.op:
            stats.wasted_passes += 1
            return []
        s.inflight = None
        s.passes += 1
        chain = s.chain
        position = run.start + len(run.tokens)
        if s.inflight_epoch != s.epoch or position != len(s.committed) + len(chain):
            stats.wasted_passes += 1  # overtaken by a rollback or a commit past the chain
            s.wasted += 1
            return self._draft_actions(rid, s)
        chain.append(ev.token)
        s.drafted += 1
        stats.drafted += 1
        sent = Send(Drafts(rid, s.epoch, position, (ev.token,), (ev.entropy,), (ev.top_prob,)))
        nxt = self._next_draft(rid, s)
        return [sent] if nxt is None else [sent, nxt]

    # ---- internals ------------------------------------------------------------------------------
    def _draft_actions(self, rid: int, s: _Session) -> list[WorkerAction]:
        nxt = self._next_draft(rid, s)
        return [] if nxt is None else [nxt]

    def _next_draft(self, rid: int, s: _Session) -> DraftFor | None:
        """The next draft pass of session ``s``, if it may start one now (one at a time)."""
        if s.closed or s.inflight is not None:
            return None
        chain, committed = s.chain, s.committed
        n_chain = len(chain)
        if n_chain >= s.lookahead:
            return None
        pos = len(committed) + n_chain
        if pos >= s.end:
            return None
        start = s.cache_len
        s.cache_len = pos
        self._next_op = op = self._next_op + 1
        run = RunDraft(op, _WORKER, start, feed_from(committed, chain, start))
        s.inflight = run
        s.inflight_epoch = s.epoch
        return DraftFor(rid, run)
