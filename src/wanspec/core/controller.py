"""The controller's sans-I/O state machine for one request: verify remote drafts, draft locally.

It owns the committed output.  The busy-site accelerator runs one pass at a time (a target
verification or step, or a local draft pass); whenever it is free, the policy
(:mod:`wanspec.core.policy`) decides what runs next from a :class:`~wanspec.core.view.View` of
the worker's usable drafts, the proposal under construction, when more drafts are expected, and
the latency account.  Every commit is streamed to the worker, which keeps or discards its chain.
If the worker fails or sends anything invalid, the request goes on with local SD (or
target-only decoding): same output, never a hang.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Sequence

from wanspec.core.actions import (
    DraftDone,
    EmitTokens,
    Finished,
    Log,
    RunDraft,
    RunTarget,
    Send,
    Site,
    TargetDone,
    ThenVerify,
    WorkerLost,
)
from wanspec.core.adaptive import LatencyAccount, budget_tpot
from wanspec.core.chain import DraftToken, feed_from
from wanspec.core.estimates import Estimates
from wanspec.core.metrics import RequestMetrics
from wanspec.core.policy import Decision, Kind, PolicyConfig, PolicyName, View, decide, worker_lookahead
from wanspec.core.stopping import StopCriteria, Transcript
from wanspec.core.intake import draft_tokens, drafts_allowance, drafts_problem, unpack
from wanspec.core.tree import RemoteTree, TreeError
from wanspec.core.verify import accept_prefix
from wanspec.errors import WanspecError
from wanspec.protocol.messages import (
    Cancel,
    Commit,
    Drafts,
    DraftsBundle,
    Error,
    Message,
    SessionStart,
    SessionStats,
)
from wanspec.sampling import SamplingParams

ControllerAction = RunTarget | RunDraft | EmitTokens | Finished | Send | Log

# worker drafts overdue by more than this many round trips (plus draft intervals) are not
# expected any more: not until the worker sends again (or, after a rejection, we commit again)
STALLED_AFTER_RTTS = 3.0


@dataclass(frozen=True)
class ControllerConfig:
    gamma: int = 4  # window of the fixed policies (and of local rounds' first guess)
    lookahead: int = 0  # worker lookahead cap; 0 = automatic (from RTT and draft interval)
    policy: PolicyConfig = PolicyConfig()
    max_window: int = 16  # adaptive: most drafts one verification carries
    # draft tree: branch lanes the worker may grow besides its main line (0: a single chain);
    # used only with a worker that announces the "branches" capability
    branches: int = 16

    def __post_init__(self) -> None:
        if self.gamma < 1:
            raise WanspecError(f"gamma must be >= 1, got {self.gamma}")
        if self.lookahead < 0:
            raise WanspecError(f"lookahead must be >= 0, got {self.lookahead}")
        if self.max_window < 1:
            raise WanspecError(f"max window must be >= 1, got {self.max_window}")
        if self.branches < 0:
            raise WanspecError(f"branches must be >= 0, got {self.branches}")
        if not self.policy.max_slowdown >= 1.0:
            raise WanspecError(f"max slowdown must be >= 1, got {self.policy.max_slowdown}")


@dataclass
class ControllerStats:
    remote_windows: int = 0
    local_windows: int = 0
    plain_steps: int = 0
    rides: int = 0  # passes joined while waiting for the worker (other requests' passes)
    remote_accepted: int = 0
    remote_received: int = 0
    remote_stale: int = 0  # received drafts dropped on arrival (an old epoch, a dead chain)
    remote_late: int = 0  # received drafts for positions already committed when they came
    stall_s: float = 0.0  # accelerator idle while waiting for the worker
    worker_lost: str | None = None
    worker_moves: int = 0  # times the request moved to another worker after losing one
    branch_hits: int = 0  # rejections whose correction started a branch of the worker's tree
    worker_account: SessionStats | None = None  # the worker's own counts, after our Cancel


@dataclass
class _Proposal:
    """The drafts the next verification will carry: worker drafts first, then local ones."""

    remote: list[DraftToken] = field(default_factory=list)
    local: list[DraftToken] = field(default_factory=list)

    @property
    def drafts(self) -> list[DraftToken]:
        return self.remote + self.local

    @property
    def tokens(self) -> list[int]:
        return [d.token for d in self.remote + self.local]


class ControllerCore:
    """One request at the controller.  Drive with start / on_* / on_timer and execute actions."""

    def __init__(self, rid: int, prompt: Sequence[int], stop: StopCriteria,
                 sampling: SamplingParams, config: ControllerConfig, *, has_local_draft: bool,
                 use_worker: bool = True, estimates: Estimates | None = None,
                 vocab_size: int | None = None) -> None:
        self.rid = rid
        self.config = config
        self.sampling = sampling
        self.transcript = Transcript(prompt, stop)
        self.metrics = RequestMetrics()
        self.stats = ControllerStats()
        self.est = estimates or Estimates.with_priors()
        self.has_local_draft = has_local_draft
        self.worker_ok = use_worker
        self.vocab_size = vocab_size  # drafts outside it are a broken worker
        # branch lanes the worker may grow (the adapter sets 0 for a worker without the
        # "branches" capability, before the session starts)
        self.branches = config.branches
        self.chain = RemoteTree(self.branches + 1)  # the worker's drafts as received
        self.finished = False
        self._op = 0
        self._busy: RunTarget | RunDraft | None = None
        self._busy_since = 0.0
        self._proposal = _Proposal()
        self._local_cache = 0  # tokens whose KV the local draft holds
        self._committed_sent = len(prompt)  # the worker knows the sequence up to here
        self._session_from = len(prompt)  # the prompt of the worker's session (moves extend it)
        self._last_commit_base = len(prompt)  # worker-known prefix before the latest commit
        self._last_commit_time = 0.0
        self._session_at = 0.0  # when the worker session started (the first, or after a move)
        self._wait_until: float | None = None
        self._idle_since: float | None = None
        # lend what past requests left unspent (an overspent request does not tax the next one)
        self._account = LatencyAccount(
            credit_per_token_s=max(self.est.unspent_per_token.get, 0.0))
        self._worker_lookahead = 0  # set when the session starts
        self._drafts_messages = 0  # Drafts received for this request, stale ones included
        self._commits_sent = 0
        self._judged: dict[int, bool] = {}  # latest judged positions: was their draft accepted

    # ---- public API ---------------------------------------------------------------------------
    @property
    def lookahead(self) -> int:
        if self.config.lookahead:
            return self.config.lookahead
        return worker_lookahead(self.config.gamma, self._max_window, self.est.rtt.get,
                                self.est.draft_interval.get)

    def start(self, now: float) -> list[ControllerAction]:
        self.metrics.on_start(now)
        self._session_at = now
        out: list[ControllerAction] = []
        if self.worker_ok:
            out.append(Send(self._session_start()))
        prefill = RunTarget(self._next_op(), 0, tuple(self.transcript.tokens), 1)
        out.append(self._run(prefill, now))
        return out

    def next_timer(self) -> float | None:
        return self._wait_until if self._busy is None and not self.finished else None

    def on_timer(self, now: float) -> list[ControllerAction]:
        # event loops may fire a timer a hair early (asyncio: within its clock resolution)
        if self._wait_until is not None and now >= self._wait_until - 1e-6 and self._busy is None:
            self._wait_until = None
            return self._schedule(now, wait_expired=True)
        return []

    def on_pass_departing(self, now: float) -> list[ControllerAction]:
        """A target pass shared with other requests is about to leave the busy accelerator.

        A request waiting for its worker may join it (the policy decides,
        :func:`~wanspec.core.policy.decide_ride`); the answer is a :class:`RunTarget` to add
        to that pass, or nothing.  A request with a pass in flight, or a local round under way,
        is not waiting and ignores the offer.
        """
        if self._busy is not None or self.finished or self._wait_until is None:
            return []
        self._wait_until = None
        self.stats.rides += 1
        return self._schedule(now, ride=True)

    def on_event(self, event: TargetDone | DraftDone | WorkerLost, now: float
                 ) -> list[ControllerAction]:
        """A pass finished, or the worker link failed."""
        if isinstance(event, TargetDone):
            return self.on_target_done(event, now)
        if isinstance(event, DraftDone):
            return self.on_draft_done(event, now)
        return self.on_worker_lost(event.reason, now)

    def on_message(self, msg: Message, now: float) -> list[ControllerAction]:
        """A message the worker sent for this request."""
        if isinstance(msg, SessionStats):
            if msg.rid == self.rid:
                self.stats.worker_account = msg
            return []
        if isinstance(msg, Error):
            if msg.rid == self.rid:  # (overloaded or not, the request goes on locally at once)
                why = " (overloaded)" if msg.code == "overloaded" else ""
                return self.on_worker_lost(f"worker refused the request{why}: {msg.message}", now)
            return []
        if (not isinstance(msg, (Drafts, DraftsBundle)) or msg.rid != self.rid
                or not self.worker_ok or self.finished):
            return []
        items = unpack(msg, self.branches + 1)
        if isinstance(items, str):
            return self.on_worker_lost(f"protocol error from worker: {items}", now,
                                       tell_worker=True)
        fresh = False
        for drafts in items:
            try:
                if not self._take_drafts(drafts, now):
                    continue  # stale
            except TreeError as exc:
                return self.on_worker_lost(f"protocol error from worker: {exc}", now,
                                           tell_worker=True)
            # follow the commits into what arrived before the next item is judged: a bundle's
            # later item may fork off a lane that the commits have left by now (stale then)
            self._sync_chain()
            fresh = True
        return self._schedule(now) if fresh else []

    def _take_drafts(self, msg: Drafts, now: float) -> bool:
        """Check ``msg`` and add its drafts to the tree; whether anything changed.  Raises
        :class:`TreeError` for what no honest worker sends."""
        self._drafts_messages += 1  # (each item of a bundle counts as one)
        transcript = self.transcript
        limit = min(len(transcript.tokens) + self._worker_lookahead,
                    transcript.n_prompt + transcript.stop.max_tokens)
        problem = drafts_problem(msg, limit=limit, vocab=self.vocab_size)
        allowed = drafts_allowance(lookahead=self._worker_lookahead, commits=self._commits_sent,
                                   tokens=self._committed_sent - transcript.n_prompt,
                                   lanes=self.branches + 1)
        if problem is None and self._drafts_messages > allowed:
            problem = (f"more Drafts ({self._drafts_messages}) than an honest worker sends "
                       f"for {self._commits_sent} commits")
        if problem is not None:
            raise TreeError(problem)
        drafts = draft_tokens(msg)
        chain = self.chain
        self.stats.remote_received += len(drafts)
        stale_before = chain.stale_dropped
        if not chain.on_drafts(msg.epoch, msg.base, drafts, now, msg.lane, msg.parent, msg.fork):
            self.stats.remote_stale += chain.stale_dropped - stale_before
            return False
        n = len(self.transcript.tokens)
        self.stats.remote_late += max(0, min(n, msg.base + len(drafts)) - msg.base)
        if chain.pace is not None:
            # the pace of a live lane: how fast the worker's drafts come when nothing stops it
            self.est.draft_interval.update(chain.pace)
        return True

    def on_worker_lost(self, reason: str, now: float, *, tell_worker: bool = False
                       ) -> list[ControllerAction]:
        """Go on without the worker (its link failed, it refused the session, or we drop it).
        ``tell_worker``: we drop a worker whose link still works, so its session is cancelled
        (it would hold a KV slot and a place under the worker's session limit until the
        connection closed)."""
        if not self.worker_ok or self.finished:
            return []
        self.worker_ok = False
        self.stats.worker_lost = reason
        self.chain.kill()
        fallback = "local speculative decoding" if self.has_local_draft else "target-only decoding"
        out: list[ControllerAction] = [Log(f"worker lost ({reason}); continuing with {fallback}")]
        if tell_worker:
            out.append(Send(Cancel(self.rid, "dropped")))
        self._wait_until = None
        out.extend(self._schedule(now))
        return out

    def on_abandoned(self) -> list[ControllerAction]:
        """The request is given up before it finished (its client went away): no event will
        come any more, so the worker is told at once to free the session."""
        if self.finished:
            return []
        self.finished = True
        out: list[ControllerAction] = []
        if self.worker_ok:
            out.append(Send(Cancel(self.rid, "cancelled")))
        return out

    def on_worker_attached(self, now: float, estimates: Estimates | None = None
                           ) -> list[ControllerAction]:
        """The request moved to another worker after losing its own (see
        :mod:`~wanspec.core.placement`): start a session there from the committed prefix.

        The new worker knows nothing of the old one's chain, so the chain starts afresh (any
        epoch of the new worker is newer), and the estimates become that worker's (its RTT,
        pace and acceptance).  Losing it again falls back as before.
        """
        if self.worker_ok or self.finished:
            return []
        if estimates is not None:
            self.est = estimates
        self.worker_ok = True
        self.stats.worker_moves += 1
        self._committed_sent = self._last_commit_base = len(self.transcript.tokens)
        self._session_from = len(self.transcript.tokens)
        self._session_at, self._last_commit_time = now, now
        out: list[ControllerAction] = [Send(self._session_start())]
        if self._wait_until is not None:  # it was waiting: its plans change with the worker
            self._wait_until = None
            out.extend(self._schedule(now))
        return out

    def on_target_done(self, ev: TargetDone, now: float) -> list[ControllerAction]:
        run = self._finish_busy(ev.op, now)
        self.est.target_pass.update(len(run.tokens), now - self._busy_since + ev.head_start)
        transcript, proposal = self.transcript, self._proposal
        n_before = len(transcript.tokens)
        drafts = proposal.drafts
        if drafts:
            tokens = proposal.tokens
            accepted, nxt = accept_prefix(tokens, ev.choices)
            taken = transcript.commit(tokens[:accepted] + [nxt])
            self.metrics.on_verify(len(tokens), accepted, len(taken))
            self.stats.remote_accepted += min(accepted, len(proposal.remote))
            for position, draft in enumerate(drafts[: accepted + 1], n_before):
                if position < len(transcript.tokens):  # (a stop condition may cut the commit)
                    self._judge(position, draft)
            # the local draft's cache holds the proposal; it stays valid where it was committed
            self._local_cache = min(self._local_cache, n_before + _common_prefix(tokens, taken))
        else:
            taken = transcript.commit([ev.choices[-1]])
        self._proposal = _Proposal()
        return self._after_commit(taken, now)

    def on_draft_done(self, ev: DraftDone, now: float) -> list[ControllerAction]:
        run = self._finish_busy(ev.op, now)
        assert isinstance(run, RunDraft)
        proposals = ev.proposals
        if len(proposals) != run.count:
            raise RuntimeError(f"a round of {run.count} draft passes proposed {len(proposals)}")
        pass_time, elapsed = self.est.local_draft_pass, now - self._busy_since
        if run.count == 1:
            pass_time.update(len(run.tokens), elapsed)
        else:  # a round: one-token passes after a first that may catch up on several tokens
            catch_up = pass_time.seconds(len(run.tokens)) - pass_time.seconds(1)  # (its slope
            # is learned from single passes: a round's total cannot tell it from the base)
            pass_time.update(1, max(elapsed - catch_up, 0.0) / run.count)
        for p in proposals:
            self._proposal.local.append(DraftToken(p.token, p.entropy, p.top_prob))
        if self.finished:
            return []
        if run.then_verify is not None:  # decided with the round (the busy site may have
            # started this very verification as the round ended: RunDraft.then_verify)
            self.stats.local_windows += 1
            return [self._verify(len(self.transcript.tokens), now)]
        return self._schedule(now)

    # ---- internals ----------------------------------------------------------------------------
    @property
    def _max_window(self) -> int:
        adaptive = self.config.policy.name is PolicyName.ADAPTIVE
        return self.config.max_window if adaptive else self.config.gamma

    def _next_op(self) -> int:
        self._op += 1
        return self._op

    def _session_start(self) -> SessionStart:
        s = self.sampling
        self._worker_lookahead = self.lookahead  # what the worker was allowed: drafts past it are hostile
        self.chain = RemoteTree(self.branches + 1)  # a new session's tree starts afresh
        return SessionStart(
            rid=self.rid, prompt=tuple(self.transcript.tokens), temperature=s.temperature,
            top_k=s.top_k, top_p=s.top_p, seed=s.seed, lookahead=self._worker_lookahead,
            max_position=self.transcript.n_prompt + self.transcript.stop.max_tokens,
            branches=self.branches,
        )

    def _sync_chain(self) -> None:
        """Check the worker's chain against the committed tokens; learn from what it drafted."""
        hits = self.chain.branch_hits
        for position, draft in self.chain.sync(self.transcript.tokens):
            self._judge(position, draft)
        self.stats.branch_hits += self.chain.branch_hits - hits

    def _judge(self, position: int, draft: DraftToken) -> None:
        """The target's token at ``position`` is committed: score the draft made for it, once."""
        if position in self._judged:
            return  # the worker's and the local draft are the same model: one judgement
        accepted = draft.token == self.transcript.tokens[position]
        self.est.acceptance.update(self._judged.get(position - 1, False), accepted)
        self.est.calibration.update(draft.entropy, accepted)
        self._judged[position] = accepted
        if len(self._judged) > 512:  # a draft tree's walk may judge positions far behind
            end = len(self.transcript.tokens)
            self._judged = {p: a for p, a in self._judged.items() if p >= end - 256}

    def _run(self, action: RunTarget | RunDraft, now: float) -> RunTarget | RunDraft:
        self._busy, self._busy_since = action, now
        if self._idle_since is not None:
            self.stats.stall_s += now - self._idle_since
            self._idle_since = None
        if isinstance(action, RunTarget):
            self.metrics.on_target_pass()
        else:
            self.metrics.on_draft_pass(Site.CONTROLLER, action.count)
        return action

    def _finish_busy(self, op: int, now: float) -> RunTarget | RunDraft:
        run = self._busy
        if run is None or run.op != op:
            raise RuntimeError(f"unexpected completion of op {op}")
        self._busy = None
        return run

    def _after_commit(self, taken: list[int], now: float) -> list[ControllerAction]:
        out: list[ControllerAction] = []
        if taken:
            self.metrics.on_commit(len(taken), now)
            self._earn(len(taken), now)
            out.append(EmitTokens(tuple(taken)))
            self._sync_chain()
            if self.worker_ok:
                out.append(Send(Commit(self.rid, max(self.chain.epoch, 0), self._committed_sent,
                                       tuple(taken))))
                self._last_commit_base, self._last_commit_time = self._committed_sent, now
                self._committed_sent += len(taken)
                self._commits_sent += 1
        if self.transcript.finished:
            self.finished = True
            self.metrics.on_finish(now)
            if self.config.policy.name is PolicyName.ADAPTIVE and self._account.tokens:
                self.est.unspent_per_token.update(self._account.unspent_per_token(now))
            if self.worker_ok:
                out.append(Send(Cancel(self.rid, "done")))
            out.append(Finished(self.transcript.finish_reason or "eos"))
            return out
        out.extend(self._schedule(now))
        return out

    def _earn(self, tokens: int, now: float) -> None:
        """``tokens`` were committed: put them on the latency account, at the allowance per
        token re-estimated now (adaptive)."""
        budget = None
        if self.config.policy.name is PolicyName.ADAPTIVE:
            budget = budget_tpot(self.est, self.config.policy.max_slowdown, self.has_local_draft,
                                 self.transcript.stop.max_tokens - 1)
        self._account.earn(tokens, now, budget)

    def _arrivals(self, n: int, have: int, want: int, now: float) -> tuple[float, ...]:
        """When worker drafts ``have+1 .. want`` (for positions ``n+have ..``) should arrive."""
        if not self.worker_ok or want <= have:
            return ()
        interval, chain = self.est.worker_draft_interval, self.chain
        if chain.last_arrival is None:  # the session's first chain: drafted from its prompt
            first_at = self._session_at + self.est.rtt.get + interval
            first_position = self._session_from
        elif chain.dead:
            # a new chain starts from our latest commit: the worker hears of it half a round
            # trip later, drafts, and the draft takes the other half back
            first_at = self._last_commit_time + self.est.rtt.get + interval
            first_position = self._committed_sent
        else:
            first_at, first_position = chain.last_arrival + interval, chain.end
            if chain.end - self._last_commit_base >= self.lookahead:
                # the worker was held at its lookahead cap: it resumes when our last commit lands
                first_at = max(first_at, self._last_commit_time + self.est.rtt.get + interval)
        times = [first_at + (n + j - first_position) * interval for j in range(have, want)]
        if now - times[0] > STALLED_AFTER_RTTS * (self.est.rtt.get + interval):
            # overdue by several round trips: the worker has stalled (or never meant to draft).
            # Expect nothing more for now; otherwise each wait would end just before its next
            # 'imminent' draft, and a silent worker would hold the request forever
            return ()
        if times[0] <= now:  # overdue: expect it any moment, the rest at the usual pace
            shift = now + interval - times[0]
            times = [t + shift for t in times]
        return tuple(times)

    def _schedule(self, now: float, wait_expired: bool = False, ride: bool = False
                  ) -> list[ControllerAction]:
        if self._busy is not None or self.finished:
            return []
        config, seq, chain = self.config, self.transcript.tokens, self.chain
        n = len(seq)
        span = self._max_window
        remote = tuple(chain.window(n, span)) if self.worker_ok else ()
        arrivals = self._arrivals(n, len(remote), span, now)
        view = View(
            now=now, gamma=config.gamma, budget=self.transcript.remaining - 1,
            max_window=config.max_window, remote=remote, arrivals=arrivals,
            wait_expired=wait_expired,
            proposal=tuple(self._proposal.drafts), proposal_local=len(self._proposal.local),
            chain_live=not chain.dead,
            chain_behind=chain.pending_catch_up(n), worker_ok=self.worker_ok,
            has_local_draft=self.has_local_draft, estimates=self.est,
            slack_s=self._account.slack(now, self.transcript.remaining),
            budget_tpot_s=self._account.budget_tpot_s, ride=ride,
        )
        return self._apply(decide(config.policy, view), view, now)

    def _apply(self, d: Decision, v: View, now: float) -> list[ControllerAction]:
        if d.kind is Kind.WAIT:
            assert d.until is not None
            self._wait_until = d.until
            if self._idle_since is None:
                self._idle_since = now
            return []
        self._wait_until = None
        seq = self.transcript.tokens
        n = len(seq)
        proposal = self._proposal
        if d.kind is Kind.VERIFY_REMOTE:
            if proposal.local:  # the worker caught up: drop the local round
                self._local_cache = min(self._local_cache, n)
            self._proposal = _Proposal(list(v.remote[: d.window]))
            self.stats.remote_windows += 1
            return [self._verify(n, now)]
        if d.kind is Kind.PLAIN:
            self._proposal = _Proposal()
            self.stats.plain_steps += 1
            return [self._run(RunTarget(self._next_op(), n - 1, (seq[n - 1],), 1), now)]
        if d.kind is Kind.VERIFY_LOCAL:
            self.stats.local_windows += 1
            return [self._verify(n, now)]
        # LOCAL_DRAFT: extend the proposal (the worker's first d.window drafts, then local drafts)
        if not proposal.local and not proposal.remote:
            self._proposal = proposal = _Proposal(list(v.remote[: d.window or 0]))
        tokens = proposal.tokens
        length = n + len(tokens)
        start = min(self._local_cache, length - 1)
        self._local_cache = length + d.drafts - 1  # a round's later passes feed its proposals
        then = ThenVerify(n - 1, self._verify_feed(n)) if d.then_verify else None
        return [self._run(RunDraft(self._next_op(), Site.CONTROLLER, start,
                                   feed_from(seq, tokens, start), d.drafts, then), now)]

    def _verify_feed(self, n: int) -> tuple[int, ...]:
        """A verification's feed: the last committed token, then the proposal's drafts."""
        return (self.transcript.tokens[n - 1], *self._proposal.tokens)

    def _verify(self, n: int, now: float) -> RunTarget:
        feed = self._verify_feed(n)
        run = RunTarget(self._next_op(), n - 1, feed, len(feed))
        self._run(run, now)
        return run


def _common_prefix(a: Sequence[int], b: Sequence[int]) -> int:
    k = 0
    while k < len(a) and k < len(b) and a[k] == b[k]:
        k += 1
    return k
