"""ControllerCore and WorkerCore together in a discrete-event simulation: a WAN with FIFO
delays and jitter, oracle models, fake time (no models, no I/O, no event loop)."""

from __future__ import annotations

import heapq
import itertools
import random
from dataclasses import dataclass, field

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

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
)
from wanspec.core.controller import ControllerConfig, ControllerCore
from wanspec.core.estimates import Estimates
from wanspec.core.policy import PolicyConfig, PolicyName
from wanspec.core.stopping import StopCriteria
from wanspec.core.worker import DraftFor, Release, WorkerCore
from wanspec.protocol.messages import (
    Cancel,
    Commit,
    Error,
    SessionStart,
    SessionStats,
)
from wanspec.sampling import SamplingParams
from wanspec.simulate.engine import CONTROLLER_HELLO, WORKER_HELLO


@dataclass
class Sim:
    """Both state machines, a WAN with FIFO delays and jitter, and oracle models on fake time.

    The target's choice for absolute position ``p`` is ``ref[p]`` whatever the context (an
    oracle); the worker's and the local draft's proposals are ``ref[p]`` except at their
    ``wrong`` positions.  Every pass checks KV-cache discipline: the cached prefix a pass relies
    on must be exactly the sequence the state machine believes in.
    """

    ref: list[int]
    n_prompt: int
    policy: PolicyName
    gamma: int
    max_tokens: int
    has_local: bool
    rtt: float
    jitter: float
    target_s: float
    draft_s: float
    worker_wrong: frozenset[int]
    local_wrong: frozenset[int]
    seed: int
    kill_at: float | None = None
    eos: frozenset[int] = frozenset()
    branches: int = 4  # the controller's ControllerConfig.branches (a draft tree by default)
    # positions where the worker's draft, when wrong, has the target's token as its runner-up
    # (None: two of three wrong positions)
    runner_up: frozenset[int] | None = None
    events: list = field(default_factory=list)
    output: list[int] = field(default_factory=list)
    commits: list[Commit] = field(default_factory=list)
    stats: list[SessionStats] = field(default_factory=list)
    finished: str | None = None

    def __post_init__(self) -> None:
        self.rng = random.Random(self.seed)
        self.seq = itertools.count()
        self.worker = WorkerCore(WORKER_HELLO)
        self.worker.on_message(CONTROLLER_HELLO, 0.0)  # the connection's handshake is done
        self.alive = True
        self.ctrl = ControllerCore(
            1, self.ref[: self.n_prompt],
            StopCriteria(max_tokens=self.max_tokens, eos_ids=self.eos), SamplingParams(),
            ControllerConfig(gamma=self.gamma, policy=PolicyConfig(self.policy),
                             branches=self.branches),
            has_local_draft=self.has_local,
            estimates=Estimates.with_priors(self.rtt or 0.001, self.target_s, self.draft_s))
        self.busy = False
        self.target_cache: list[int] = []
        self.local_cache: list[int] = []
        self.worker_caches: dict[tuple[int, int], list[int]] = {}  # (rid, cache) -> tokens
        self.worker_free = 0.0
        self.last_up = self.last_down = 0.0
        self.timers: set[float] = set()

    # -- plumbing --
    def at(self, t: float, fn, *args) -> None:
        heapq.heappush(self.events, (t, next(self.seq), fn, args))

    def delay(self, up: bool, now: float) -> float:
        t = now + self.rtt / 2 + self.rng.uniform(0, self.jitter)
        if up:
            self.last_up = t = max(t, self.last_up)
        else:
            self.last_down = t = max(t, self.last_down)
        return t

    def pred(self, wrong: frozenset[int], pos: int) -> int:
        tok = self.ref[pos] if pos < len(self.ref) else 0
        return (tok + 1) % 1000 if pos in wrong else tok

    def run(self, max_events: int = 50_000) -> None:
        self.ctrl_actions(self.ctrl.start(0.0), 0.0)
        if self.kill_at is not None:
            self.at(self.kill_at, self.kill)
        for _ in range(max_events):
            if not self.events:
                return
            t, _, fn, args = heapq.heappop(self.events)
            fn(t, *args)
        raise AssertionError("simulation did not settle (livelock?)")

    # -- controller side --
    def ctrl_actions(self, actions, now: float) -> None:
        for a in actions:
            if isinstance(a, RunTarget):
                assert not self.busy, "two passes at once on the busy site"
                self.busy = True
                committed = self.ctrl.transcript.tokens
                assert a.start <= len(self.target_cache)
                assert self.target_cache[: a.start] == committed[: a.start]
                n = len(committed)
                assert a.start < n and list(a.tokens[: n - a.start]) == committed[a.start:]
                assert 1 <= a.want <= len(a.tokens)
                self.target_cache = self.target_cache[: a.start] + list(a.tokens)
                first = a.start + len(a.tokens) - a.want + 1
                choices = tuple(self.ref[p] if p < len(self.ref) else 0
                                for p in range(first, first + a.want))
                self.at(now + self.target_s, self.ctrl_event, TargetDone(a.op, choices))
            elif isinstance(a, RunDraft):
                assert not self.busy, "two passes at once on the busy site"
                assert self.has_local and a.site is Site.CONTROLLER
                self.busy = True
                full = self.ctrl.transcript.tokens + self.ctrl._proposal.tokens
                assert a.start <= len(self.local_cache)
                assert self.local_cache[: a.start] == full[: a.start]
                assert list(a.tokens) == full[a.start:]
                self.local_cache = full[:]
                # a round (a.count passes): each later pass feeds the token the one before chose
                proposals = []
                for i in range(a.count):
                    tok = self.pred(self.local_wrong, a.position + i)
                    proposals.append(DraftDone(a.op, tok, 0.3, 0.8))
                    self.local_cache.append(tok)
                self.local_cache.pop()  # (the last proposal is not fed)
                done = DraftDone(a.op, proposals[0].token, 0.3, 0.8, rest=tuple(proposals[1:]))
                self.at(now + a.count * self.draft_s, self.ctrl_event, done)
            elif isinstance(a, Send):
                assert self.ctrl.worker_ok
                if isinstance(a.msg, Commit):
                    self.commits.append(a.msg)
                if self.alive:
                    self.at(self.delay(True, now), self.worker_msg, a.msg)
            elif isinstance(a, EmitTokens):
                self.output.extend(a.tokens)
            elif isinstance(a, Finished):
                self.finished = a.reason
            else:
                assert isinstance(a, Log)
        t = self.ctrl.next_timer()
        if t is not None and t not in self.timers:
            self.timers.add(t)
            self.at(max(t, now), self.ctrl_timer)

    def ctrl_event(self, now: float, ev) -> None:
        self.busy = False
        if isinstance(ev, TargetDone):
            self.ctrl_actions(self.ctrl.on_target_done(ev, now), now)
        else:
            self.ctrl_actions(self.ctrl.on_draft_done(ev, now), now)

    def ctrl_timer(self, now: float) -> None:
        self.ctrl_actions(self.ctrl.on_timer(now), now)

    def ctrl_msg(self, now: float, msg) -> None:
        if not self.alive:
            return
        if isinstance(msg, SessionStats):
            self.stats.append(msg)
        elif not self.ctrl.finished:
            self.ctrl_actions(self.ctrl.on_message(msg, now), now)

    def kill(self, now: float) -> None:
        self.alive = False
        self.ctrl_actions(self.ctrl.on_worker_lost("killed", now), now)

    # -- worker side --
    def worker_msg(self, now: float, msg) -> None:
        if not self.alive:
            return
        assert isinstance(msg, (SessionStart, Commit, Cancel))
        self.worker_actions(self.worker.on_message(msg, now), now)

    def worker_actions(self, actions, now: float) -> None:
        for a in actions:
            if isinstance(a, DraftFor):
                s = self.worker.sessions[a.rid]
                # the lane this cache serves, and the sequence it believes in up to the pass
                lane = next(x for x in s.tree.lanes.values() if x.cache == a.cache)
                n, pos = len(s.committed), a.run.position
                full = s.committed[:pos] + [s.tree.path_token(lane, j) for j in range(n, pos)]
                if a.copy_from is not None:  # a branch starts from its parent's cache
                    source = self.worker_caches[(a.rid, a.copy_from)]
                    assert a.run.start <= len(source)
                    self.worker_caches[(a.rid, a.cache)] = source[: a.run.start]
                cache = self.worker_caches.get((a.rid, a.cache), [])
                assert a.run.start <= len(cache)
                assert cache[: a.run.start] == full[: a.run.start]
                assert list(a.run.tokens) == full[a.run.start:]
                self.worker_caches[(a.rid, a.cache)] = full[:]
                # the worker's device batches the passes that wait together (one per lane)
                if self.worker_free <= now:
                    self.worker_free = now + self.draft_s
                tok = self.pred(self.worker_wrong, pos)
                ent = 2.0 if pos in self.worker_wrong and pos % 2 else 0.2
                right = self.ref[pos] if pos < len(self.ref) else 0
                # the target's token is the draft's runner-up at some wrong positions
                helps = pos % 3 if self.runner_up is None else pos in self.runner_up
                alternatives = ((right, (tok + 7) % 1000) if pos in self.worker_wrong and helps
                                else ((tok + 5) % 1000, (tok + 6) % 1000))
                self.at(self.worker_free, self.worker_done, a.rid,
                        DraftDone(a.run.op, tok, ent, 0.5, alternatives, (0.3, 0.1)))
            elif isinstance(a, Send):
                assert not isinstance(a.msg, Error), a.msg  # e.g. a commit not contiguous
                self.at(self.delay(False, now), self.ctrl_msg, a.msg)
            else:
                assert isinstance(a, Release)
                for key in [k for k in self.worker_caches if k[0] == a.rid]:
                    del self.worker_caches[key]

    def worker_done(self, now: float, rid: int, ev: DraftDone) -> None:
        if not self.alive:
            return
        self.worker_actions(self.worker.on_draft_done(rid, ev), now)


def _check(sim: Sim) -> None:
    expected = sim.ref[sim.n_prompt : sim.n_prompt + sim.max_tokens]
    if sim.eos:
        for i, t in enumerate(expected):
            if t in sim.eos:
                expected = expected[: i + 1]
                break
    assert sim.finished in ("max_tokens", "eos")
    assert sim.output == expected
    assert sim.ctrl.transcript.output == expected
    # commits are contiguous from the end of the prompt and together equal the output
    pos = sim.n_prompt
    for c in sim.commits:
        assert c.base == pos
        pos += len(c.tokens)
    assert [t for c in sim.commits for t in c.tokens] == sim.output[: pos - sim.n_prompt]
    if sim.kill_at is None:
        assert sim.ctrl.stats.worker_lost is None  # an honest worker is never dropped
        assert pos - sim.n_prompt == len(sim.output)  # every commit reached the worker
        assert sim.worker.sessions == {}  # cancelled and released
        assert len(sim.stats) == 1
        st_ = sim.stats[0]
        assert st_.passes >= st_.drafted and st_.passes >= st_.wasted
    m = sim.ctrl.metrics
    assert m.committed_tokens == len(expected)
    assert m.draft_passes[Site.CONTROLLER.value] == 0 or sim.has_local


# every policy of the design (adaptive once livelocked: see test_adaptive_local_round_livelock)
SIM_POLICIES = [PolicyName.REMOTE, PolicyName.ALWAYS, PolicyName.ENTROPY, PolicyName.ADAPTIVE]


@st.composite
def scenarios(draw):
    n_prompt = draw(st.integers(1, 5))
    max_tokens = draw(st.integers(1, 24))
    length = n_prompt + max_tokens + 80
    ref = draw(st.lists(st.integers(0, 999), min_size=length, max_size=length))
    positions = st.integers(n_prompt, n_prompt + max_tokens + 10)
    return dict(
        ref=ref, n_prompt=n_prompt, max_tokens=max_tokens,
        policy=draw(st.sampled_from(SIM_POLICIES)),
        gamma=draw(st.integers(1, 6)),
        has_local=draw(st.booleans()),
        rtt=draw(st.sampled_from([0.0, 0.001, 0.02, 0.08, 0.2, 0.5])),
        jitter=draw(st.sampled_from([0.0, 0.005, 0.05])),
        target_s=draw(st.sampled_from([0.005, 0.03, 0.1])),
        draft_s=draw(st.sampled_from([0.001, 0.004, 0.02])),
        worker_wrong=frozenset(draw(st.lists(positions, max_size=8))),
        runner_up=frozenset(draw(st.lists(positions, max_size=8))),
        branches=draw(st.sampled_from([0, 1, 2, 4])),
        local_wrong=frozenset(draw(st.lists(positions, max_size=8))),
        seed=draw(st.integers(0, 2**16)),
    )


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(scenarios())
def test_simulated_deployment_is_lossless(sc):
    sim = Sim(**sc)
    sim.run()
    _check(sim)


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(scenarios(), st.floats(0.0, 1.0))
def test_simulated_worker_death_is_lossless(sc, kill_at):
    sim = Sim(**sc, kill_at=kill_at)
    sim.run()
    _check(sim)
    if kill_at < sim.ctrl.metrics.end_time:  # died before the end: noticed
        assert sim.ctrl.stats.worker_lost == "killed"


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(scenarios(), st.data())
def test_simulated_eos_stops_at_the_same_token(sc, data):
    i = data.draw(st.integers(sc["n_prompt"], sc["n_prompt"] + sc["max_tokens"] + 2))
    sim = Sim(**sc, eos=frozenset({sc["ref"][i]}))
    sim.run()
    _check(sim)


@pytest.mark.parametrize("policy", list(PolicyName), ids=lambda p: p.value)
def test_simulated_perfect_worker_serves_every_window(policy):
    """With a perfect worker and a generous lookahead the busy site never drafts for itself
    under remote, and every verification is a remote window."""
    rng = random.Random(1)
    ref = [rng.randrange(1000) for _ in range(200)]
    sim = Sim(ref=ref, n_prompt=4, policy=policy, gamma=4, max_tokens=40, has_local=True,
              rtt=0.04, jitter=0.0, target_s=0.03, draft_s=0.004, worker_wrong=frozenset(),
              local_wrong=frozenset(), seed=0)
    sim.run()
    _check(sim)
    st_ = sim.ctrl.stats
    assert st_.remote_accepted > 0
    if policy is PolicyName.REMOTE:
        assert sim.ctrl.metrics.draft_passes[Site.CONTROLLER.value] == 0
        assert st_.local_windows == 0


def _branchy_run(branches: int) -> Sim:
    """At a rejection whose correction is the draft's runner-up, a worker growing a tree has
    the continuation ready: the controller goes on at once instead of stalling a round trip."""
    rng = random.Random(2)
    ref = [rng.randrange(1000) for _ in range(300)]
    wrong = frozenset(range(10, 70, 6))  # every sixth position (the runner-up is right at 2/3)
    sim = Sim(ref=ref, n_prompt=4, policy=PolicyName.REMOTE, gamma=4, max_tokens=64,
              has_local=False, rtt=0.1, jitter=0.0, target_s=0.03, draft_s=0.004,
              worker_wrong=wrong, local_wrong=frozenset(), seed=0, branches=branches)
    sim.run()
    _check(sim)
    return sim


def test_a_branch_holding_the_correction_saves_the_round_trip():
    assert _branchy_run(0).ctrl.stats.branch_hits == 0
    # most wrong positions whose runner-up is right (7 of 10), once the tree has reached them
    assert _branchy_run(4).ctrl.stats.branch_hits >= 4


def test_branches_shorten_the_request_at_a_long_round_trip():
    plain, tree = _branchy_run(0), _branchy_run(4)
    assert tree.ctrl.metrics.end_time < 0.85 * plain.ctrl.metrics.end_time
    assert tree.ctrl.stats.stall_s < plain.ctrl.stats.stall_s
