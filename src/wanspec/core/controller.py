"""The controller's sans-I/O state machine: verify remote drafts, redundantly draft locally.

It owns the committed output.  The busy-site accelerator runs one pass at a time (a target
verification/step or a local draft pass); whenever it is free, the policy
(:mod:`wanspec.core.policy`) chooses what to run next from the worker's usable drafts, the local
draft model, and the link estimates.  Every commit is streamed to the worker, which keeps or
discards its chain.  If the worker fails, the request goes on with local SD (or target-only).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Final, Sequence

from wanspec.core.actions import (
    DraftDone,
    EmitTokens,
    Finished,
    RunDraft,
    RunTarget,
    Site,
    TargetDone,
)
from wanspec.core.calibration import EntropyCalibration
from wanspec.core.chain import DraftToken, RemoteChain, feed_from
from wanspec.core.estimates import LinkEstimates
from wanspec.core.metrics import RequestMetrics
from wanspec.core.policy import (
    _ADAPTIVE,
    _PLAIN,
    _VERIFY_LOCAL,
    _VERIFY_REMOTE,
    _WAIT,
    Decision,
    PolicyConfig,
    View,
    decide,
    optimal_gamma,
)
from wanspec.core.stopping import StopCriteria, Transcript
from wanspec.core.verify import accept_prefix
from wanspec.errors import WanspecError
from wanspec.protocol.messages import Cancel, Commit, Drafts, Message, SessionStart
from wanspec.sampling import SamplingParams


# a value (treat as immutable); slotted, not frozen: cheaper to build; written __init__: native
# code when compiled (see wanspec.core.actions)
@dataclass(slots=True, init=False)
class SendToWorker:
    msg: Message

    def __init__(self, msg: Message) -> None:
        self.msg = msg


@dataclass(slots=True)
class Log:
    """Something an operator should see once (e.g. why the worker was dropped)."""

    message: str


ControllerAction = RunTarget | RunDraft | EmitTokens | Finished | SendToWorker | Log

# Enum members as module constants (``Kind.WAIT`` is a ~60 ns class attribute lookup on Python
# 3.11; Final: compiled code reads them as static constants); the Kind/PolicyName ones are
# policy's own.
_CONTROLLER: Final = Site.CONTROLLER


@dataclass(frozen=True)
class ControllerConfig:
    gamma: int = 4
    lookahead: int = 0  # worker lookahead cap; 0 = automatic (from RTT and draft cost)
    policy: PolicyConfig = PolicyConfig()
    wait_slack: float = 1.5  # multiplier on expected draft arrival times before giving up
    max_window: int = 0  # adaptive: longest window of worker drafts to verify (0 = 2 * gamma)
    verify_per_token_s: float = 0.0  # known extra target cost per extra token (for pricing)

    def __post_init__(self) -> None:
        if self.gamma < 1:
            raise WanspecError(f"gamma must be >= 1, got {self.gamma}")
        if self.lookahead < 0:
            raise WanspecError(f"lookahead must be >= 0, got {self.lookahead}")


@dataclass
class ControllerStats:
    remote_windows: int = 0
    local_windows: int = 0
    plain_steps: int = 0
    remote_accepted: int = 0
    remote_received: int = 0
    stale_dropped: int = 0
    stall_s: float = 0.0  # accelerator idle while waiting for the worker
    worker_lost: str | None = None


class ControllerCore:
    """One request at the controller.  Drive with start / on_* / on_timer and execute actions."""

    def __init__(
        self,
        rid: int,
        prompt: Sequence[int],
        stop: StopCriteria,
        sampling: SamplingParams,
        config: ControllerConfig,
        *,
        has_local_draft: bool,
        use_worker: bool = True,
        estimates: LinkEstimates | None = None,
    ) -> None:
        self.rid = rid
        self.config = config
        self.sampling = sampling
        self.transcript = Transcript(prompt, stop)
        self.metrics = RequestMetrics()
        self.stats = ControllerStats()
        self.est = estimates or LinkEstimates.with_priors()
        self.has_local_draft = has_local_draft
        self.worker_ok = use_worker
        self.chain = RemoteChain()
        self.calibration = EntropyCalibration()
        self._window_entropy: list[float] = []
        self.finished = False
        self._op = 0
        self._busy: RunTarget | RunDraft | None = None
        self._busy_since = 0.0
        self._window: list[int] = []  # proposal under construction / being verified
        self._window_remote = 0  # how many leading proposal tokens came from the worker
        self._local_cache = 0  # local draft KV length
        self._committed_sent = len(prompt)
        self._last_commit_base = len(prompt)  # worker-known prefix before the latest commit
        self._last_commit_time = 0.0
        self._wait_until: float | None = None
        self._idle_since: float | None = None
        self._expect_new_chain_by: float | None = None

    # ---- public API ---------------------------------------------------------------------------
    @property
    def lookahead(self) -> int:
        config, est = self.config, self.est
        if config.lookahead:
            return config.lookahead
        # enough for one round trip of consumption plus two windows, as the worker drafts
        per_token = max(est.draft_interval.get, 1e-4)
        window = config.max_window or 2 * config.gamma
        return max(2 * window, min(64, window + config.gamma + int(est.rtt.get / per_token) + 2))

    def start(self, now: float) -> list[ControllerAction]:
        self.metrics.on_start(now)
        out: list[ControllerAction] = []
        if self.worker_ok:
            out.append(SendToWorker(self._session_start()))
            self._expect_new_chain_by = now + self._first_chain_eta()
        out.append(self._run(RunTarget(self._next_op(), 0, tuple(self.transcript.tokens), 1), now))
        return out

    def next_timer(self) -> float | None:
        return self._wait_until if self._busy is None and not self.finished else None

    def on_timer(self, now: float) -> list[ControllerAction]:
        # event loops may fire a timer a hair early (asyncio: within its clock resolution)
        if self._wait_until is not None and now >= self._wait_until - 1e-6 and self._busy is None:
            self._wait_until = None
            return self._schedule(now, timer_fired=True)
        return []

    def on_message(self, msg: Message, now: float) -> list[ControllerAction]:
        if isinstance(msg, Drafts) and msg.rid == self.rid and self.worker_ok and not self.finished:
            drafts = _draft_tokens(msg)
            chain = self.chain
            last = chain.last_arrival
            if last is not None and msg.epoch == chain.epoch:
                self.est.draft_interval.update(max(now - last, 0.0) / len(drafts))
            chain.on_drafts(msg.epoch, msg.base, drafts, now)
            self.stats.remote_received += len(drafts)
            chain.sync(self.transcript.tokens)
            if self._busy is None:
                return self._schedule(now)
        return []

    def on_rtt_sample(self, rtt: float) -> None:
        self.est.rtt.update(rtt)

    def on_worker_lost(self, reason: str, now: float) -> list[ControllerAction]:
        if not self.worker_ok or self.finished:
            return []
        self.worker_ok = False
        self.stats.worker_lost = reason
        self.chain.dead = True
        fallback = "local speculative decoding" if self.has_local_draft else "target-only decoding"
        out: list[ControllerAction] = [Log(f"worker lost ({reason}); continuing with {fallback}")]
        if self._busy is None:
            self._wait_until = None
            out.extend(self._schedule(now))
        return out

    def on_target_done(self, ev: TargetDone, now: float) -> list[ControllerAction]:
        run = self._finish_busy(ev.op, now)
        assert isinstance(run, RunTarget)
        self.est.target_pass.update(now - self._busy_since)
        transcript = self.transcript
        n_before = len(transcript.tokens)
        window = self._window
        if window:
            accepted, nxt = accept_prefix(window, ev.choices)
            taken = transcript.commit(window[:accepted] + [nxt])
            self.metrics.on_verify(len(window), accepted, len(taken))
            self.stats.remote_accepted += min(accepted, self._window_remote)
            # per-token acceptance sample: accepted of the drafts actually tested (up to the miss)
            tested = min(accepted + 1, len(window))
            acceptance, entropies = self.est.acceptance, self._window_entropy
            for i in range(tested):
                acceptance.update(1.0 if i < accepted else 0.0)
                if i < len(entropies):
                    self.calibration.update(entropies[i], i < accepted)
        else:
            taken = transcript.commit([ev.choices[-1]])
        self._local_cache = min(self._local_cache, n_before + _common_prefix(window, taken))
        self._window, self._window_remote, self._window_entropy = [], 0, []
        return self._after_commit(taken, now)

    def on_draft_done(self, ev: DraftDone, now: float) -> list[ControllerAction]:
        self._finish_busy(ev.op, now)
        self.est.local_draft_pass.update(now - self._busy_since)
        self._window.append(ev.token)
        return self._schedule(now)

    # ---- internals ----------------------------------------------------------------------------
    def _next_op(self) -> int:
        self._op += 1
        return self._op

    def _session_start(self) -> SessionStart:
        s = self.sampling
        return SessionStart(
            rid=self.rid, prompt=tuple(self.transcript.tokens), temperature=s.temperature,
            top_k=s.top_k, top_p=s.top_p, seed=s.seed, lookahead=self.lookahead,
            max_position=self.transcript.n_prompt + self.transcript.stop.max_tokens,
        )

    def _first_chain_eta(self) -> float:
        return self.config.wait_slack * (self.est.rtt.get + 2 * self.est.draft_interval.get)

    def _run(self, action: RunTarget | RunDraft, now: float) -> RunTarget | RunDraft:
        self._busy, self._busy_since = action, now
        if self._idle_since is not None:
            self.stats.stall_s += now - self._idle_since
            self._idle_since = None
        if type(action) is RunTarget:
            self.metrics.on_target_pass()
        else:
            self.metrics.on_draft_pass(_CONTROLLER)
        return action

    def _finish_busy(self, op: int, now: float) -> RunTarget | RunDraft:
        run = self._busy
        if run is None or run.op != op:
            raise RuntimeError(f"unexpected completion of op {op}")
        self._busy = None
        return run

    def _after_commit(self, taken: list[int], now: float) -> list[ControllerAction]:
        out: list[ControllerAction] = []
        chain = self.chain
        if taken:
            self.metrics.on_commit(len(taken), now)
            committed = tuple(taken)
            out.append(EmitTokens(committed))
            was_live = not chain.dead
            chain.sync(self.transcript.tokens)
            if self.worker_ok:
                out.append(SendToWorker(Commit(self.rid, max(chain.epoch, 0),
                                               self._committed_sent, committed)))
                self._last_commit_base, self._last_commit_time = self._committed_sent, now
                self._committed_sent += len(taken)
                if was_live and chain.dead:
                    # the worker learns of this in RTT/2 and needs a pass before drafting again
                    self._expect_new_chain_by = now + self._first_chain_eta()
        if self.transcript.finished:
            self.finished = True
            self.metrics.on_finish(now)
            if self.worker_ok:
                out.append(SendToWorker(Cancel(self.rid, "done")))
            out.append(Finished(self.transcript.finish_reason or "eos"))
            return out
        out.extend(self._schedule(now))
        return out

    def _expect_remote_by(self, k: int, gamma: int) -> float | None:
        if not self.worker_ok:
            return None
        chain = self.chain
        if chain.dead:
            return self._expect_new_chain_by
        if k >= gamma:
            return None
        last = chain.last_arrival
        if last is None:
            return self._expect_new_chain_by
        missing = gamma - k + chain.pending_catch_up(len(self.transcript.tokens))
        if chain.end - self._last_commit_base >= self.lookahead:
            # the worker was held at its lookahead cap: it resumes when our last commit lands
            last = max(last, self._last_commit_time + self.est.rtt.get)
        return last + self.config.wait_slack * missing * self.est.draft_interval.get

    def _schedule(self, now: float, timer_fired: bool = False) -> list[ControllerAction]:
        if self._busy is not None or self.finished:
            return []
        config, transcript, chain, est = self.config, self.transcript, self.chain, self.est
        n = len(transcript.tokens)
        budget = transcript.remaining - 1  # a verification commits up to its window + 1 tokens
        gamma = max(0, min(config.gamma, budget))
        if gamma == 0:
            self._window, self._window_remote = [], 0
            return [self._run(RunTarget(self._next_op(), n - 1, (transcript.tokens[-1],), 1), now)]
        adaptive = config.policy.name is _ADAPTIVE
        cap = gamma
        if adaptive:
            cap = max(1, min(config.max_window or 2 * config.gamma, budget))
        remote = chain.window(n, cap) if self.worker_ok else []
        window = self._window
        if (adaptive and len(window) > self._window_remote
                and len(remote) >= max(len(window), gamma)):
            # the worker caught up during a local round: its drafts are free, verify them now
            self._local_cache = min(self._local_cache, n)
            self._window, self._window_remote, self._window_entropy = [], 0, []
            self.stats.remote_windows += 1
            self._window = [t.token for t in remote]
            self._window_entropy = [t.entropy for t in remote]
            self._window_remote = len(self._window)
            self._wait_until = None
            return [self._verify(n, now)]
        local_count = len(window) - self._window_remote if window else 0
        expect = self._expect_remote_by(min(len(remote), gamma), gamma)
        if timer_fired and (expect is None or expect <= now + 1e-6):
            expect = None  # the wait is over
        alpha, target_s, draft_s = est.acceptance.get, est.target_pass.get, est.local_draft_pass.get
        local_gamma = gamma
        accept_p: tuple[float, ...] = ()
        if adaptive:
            local_gamma = min(cap, optimal_gamma(alpha, target_s, draft_s, config.verify_per_token_s,
                                                 max_gamma=2 * config.gamma))
            if not local_count:  # (not read while a local round is under way)
                accept_p = self.calibration.p_accepts([d.entropy for d in remote])
        # positional (in View's field order): ~3x cheaper than 16 keyword arguments
        view = View(
            now,  # now
            gamma,  # gamma
            remote if not window else remote[: self._window_remote],  # remote
            local_count,  # local
            not chain.dead,  # chain_live
            chain.pending_catch_up(n),  # chain_behind
            self.worker_ok,  # worker_ok
            self.has_local_draft,  # has_local_draft
            expect,  # expect_remote_by
            config.policy.entropy_threshold,  # entropy_threshold
            alpha,  # alpha
            target_s,  # target_pass_s
            accept_p,  # remote_accept_p
            config.verify_per_token_s,  # verify_per_token_s
            draft_s,  # local_draft_s
            local_gamma,  # local_gamma
        )
        return self._apply(decide(config.policy, view), view, n, now)

    def _apply(self, d: Decision, v: View, n: int, now: float) -> list[ControllerAction]:
        kind = d.kind
        if kind is _WAIT:
            assert d.until is not None
            self._wait_until = d.until
            if self._idle_since is None:
                self._idle_since = now
            return []
        self._wait_until = None
        if kind is _VERIFY_REMOTE:
            take = d.window if d.window is not None else v.gamma
            remote = v.remote[:take]
            self._window = [t.token for t in remote]
            self._window_entropy = [t.entropy for t in remote]
            self._window_remote = len(self._window)
            self.stats.remote_windows += 1
            return [self._verify(n, now)]
        seq = self.transcript.tokens
        if kind is _PLAIN:
            self._window, self._window_remote = [], 0
            self.stats.plain_steps += 1
            return [self._run(RunTarget(self._next_op(), n - 1, (seq[n - 1],), 1), now)]
        if kind is _VERIFY_LOCAL:
            self.stats.local_windows += 1
            return [self._verify(n, now)]
        # LOCAL_DRAFT: extend the proposal (the worker's usable prefix, then local drafts)
        if not self._window:
            self._window = [t.token for t in v.remote]
            self._window_entropy = [t.entropy for t in v.remote]
            self._window_remote = len(self._window)
        length = len(seq) + len(self._window)
        start = min(self._local_cache, length - 1)
        self._local_cache = length
        feed = feed_from(seq, self._window, start)
        return [self._run(RunDraft(self._next_op(), _CONTROLLER, start, feed), now)]

    def _verify(self, n: int, now: float) -> RunTarget:
        seq = self.transcript.tokens
        feed = (seq[n - 1], *self._window)
        return self._run(RunTarget(self._next_op(), n - 1, feed, len(feed)), now)  # type: ignore[return-value]


def _draft_tokens(msg: Drafts) -> Sequence[DraftToken]:
    tokens = msg.tokens
    n = len(tokens)
    ent = msg.entropy if len(msg.entropy) == n else (0.0,) * n
    top = msg.top_prob if len(msg.top_prob) == n else (1.0,) * n
    if n == 1:  # the usual message (the worker streams each draft at once)
        return (DraftToken(tokens[0], ent[0], top[0]),)
    return tuple(map(DraftToken, tokens, ent, top))


def _common_prefix(a: Sequence[int], b: Sequence[int]) -> int:
    k = 0
    while k < len(a) and k < len(b) and a[k] == b[k]:
        k += 1
    return k
