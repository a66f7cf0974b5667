"""Discrete-event driver of the real cores: one point, one policy, requests one after another.

Why a hand-written loop (a heap of ``(time, priority, seq, handler, arg)``) rather than asyncio on a
virtual clock: the emulator's adapters spend most of their time in asyncio machinery; here each
event is one heap pop and one method call, so the cores themselves dominate the cost.

The driver does what the asyncio adapters do and nothing more -- every protocol rule and decision
is in the cores:

* the controller's end of the connection is a :class:`~wanspec.core.link.LinkCore` (handshake,
  pings, the link's RTT estimate, routing by request id), the worker's a
  :class:`~wanspec.core.worker.WorkerCore`; every message crosses
  :class:`~wanspec.simulate.link.FifoLink` with its real frame size;
* requests run one after another, as ``emulate`` runs its prompts; the next one starts when the
  worker's SessionStats for the previous one arrives (``InprocDeployment.generate`` waits for it);
  all share one :class:`~wanspec.core.estimates.Estimates`, as requests of a ``RemoteEngine`` do;
* the controller device runs one pass at a time (the core guarantees it); pass costs are
  ``base + per_token * (tokens fed - 1)`` (:func:`device_costs`: plus a replayed trace's
  roofline terms, as ``PlacedModel`` charges them);
* the worker device batches, as the worker adapter's ``SharedAccelerator`` does: whenever it is
  free, the passes waiting (a session's lanes of its draft tree, each its own sequence) run as one
  pass, formed by the same :class:`~wanspec.core.batcher.Batcher` only after every other event of
  that instant (the adapter's *settling*), costing ``base + per_token * (longest feed - 1)``
  (and a trace's roofline terms, of the whole batch's shape); a
  released session's waiting passes are withdrawn;
* every timer (a core's ``next_timer``) is re-armed after each event that core handles, like
  ``wait_for`` in the adapters: a later event makes an earlier timer stale.
"""

from __future__ import annotations

from heapq import heappop, heappush
from typing import Any, Callable, Sequence

from wanspec.core.actions import (
    DraftDone,
    EmitTokens,
    Finished,
    Log,
    RunDraft,
    RunTarget,
    Send,
    TargetDone,
)
from wanspec.core.batcher import Batcher, BatchLimits, PassKind
from wanspec.core.capacity import worker_pass_times
from wanspec.core.controller import ControllerAction, ControllerConfig, ControllerCore
from wanspec.core.estimates import Estimates
from wanspec.core.link import LinkAction, LinkCore, Lost, Route, Up
from wanspec.core.policy import PolicyConfig, PolicyName
from wanspec.core.stopping import StopCriteria
from wanspec.core.worker import (
    DEFAULT_WORKER_MAX_BATCH,
    Close,
    DraftFor,
    Release,
    WorkerAction,
    WorkerCore,
    WorkerLoad,
)
from wanspec.protocol.codec import PROTOCOL_VERSION
from wanspec.protocol.messages import BUNDLES, Hello, Message
from wanspec.sampling import SamplingParams
from wanspec.simulate.config import Roofline, SimConfig
from wanspec.simulate.link import frame_size, link_pair
from wanspec.simulate.models import DraftCache, RequestWorld
from wanspec.simulate.records import ModeResult, RequestResult
from wanspec.timing.device import PassCost, pass_shape, round_pass_shapes
from wanspec.transport.inproc import LinkParams

# "branches": the worker core grows draft trees when the controller asks (ControllerConfig.branches);
# "bundles": it sends a pass's drafts for a session's lanes as one message, as to a real controller
_CAPS = ("drafts", "entropy", "branches", BUNDLES)
CONTROLLER_HELLO = Hello(PROTOCOL_VERSION, "controller", "synthetic-target", "0" * 16, 32000, _CAPS)
WORKER_HELLO = Hello(PROTOCOL_VERSION, "worker", "synthetic-draft", "0" * 16, 32000, _CAPS)
GREEDY = SamplingParams()
FORM = 1  # heap priority of forming a worker pass: after every other event of the same instant


def link_params(cfg: SimConfig) -> LinkParams:
    return LinkParams(rtt_ms=cfg.rtt_ms, jitter_ms=cfg.jitter_ms,
                      bandwidth_bps=cfg.bandwidth_mbit * 1e6, spike_prob=cfg.loss,
                      spike_ms=cfg.spike if cfg.loss else 0.0, up_share=cfg.up_share,
                      seed=cfg.seed)


def controller_config(cfg: SimConfig, policy: str) -> ControllerConfig:
    return ControllerConfig(
        gamma=cfg.gamma, lookahead=cfg.lookahead,
        policy=PolicyConfig(PolicyName(policy), cfg.entropy_threshold, cfg.max_slowdown),
        branches=cfg.branches)


def worker_cache(caches: dict[int, DraftCache], a: DraftFor) -> DraftCache:
    """The cache ``a`` runs on among its session's ``caches`` (by number), made or reused; with
    ``copy_from``, it first takes the first ``run.start`` positions of that cache."""
    cache = caches.get(a.cache)
    if cache is None:
        cache = caches[a.cache] = DraftCache()
    if a.copy_from is not None:
        source = caches.get(a.copy_from)
        if source is None:
            raise ValueError(f"session {a.rid}: copy from draft cache {a.copy_from}, "
                             "which it never used")
        cache.copy_from(source, a.run.start)
    return cache


def device_costs(cfg: SimConfig) -> tuple[PassCost, PassCost]:
    """The target's and the draft's pass costs at one site's device: ``base + per_token *
    (longest feed - 1)``, plus the roofline terms of a replayed trace (:class:`Roofline`)."""
    r = cfg.roofline if cfg.roofline is not None else Roofline()
    return (PassCost(cfg.target_ms, cfg.verify_per_token_ms, r.target_kv_ms_per_ktoken,
                     r.target_compute_ms_per_token, r.target_per_sequence_ms),
            PassCost(cfg.draft_ms, cfg.draft_per_token_ms, r.draft_kv_ms_per_ktoken,
                     r.draft_compute_ms_per_token, r.draft_per_sequence_ms))


def one_pass_seconds(cost: PassCost, run: RunTarget | RunDraft) -> float:
    """What ``PlacedModel`` charges for ``run`` alone (a draft round: all its passes)."""
    if isinstance(run, RunDraft) and run.count > 1:
        return sum(cost.seconds(**shape) for shape in round_pass_shapes([run]))
    return cost.seconds(**pass_shape([run]))


class RemoteSim:
    """All requests of one point under one policy; :meth:`run` returns their results."""

    def __init__(self, cfg: SimConfig, policy: str, requests: Sequence[RequestWorld]) -> None:
        self.cfg = cfg
        self.policy = policy
        self.worlds = requests
        self.ccfg = controller_config(cfg, policy)
        self.target_cost, self.draft_cost = device_costs(cfg)
        self.has_local = policy != PolicyName.REMOTE.value
        self.up, self.down = link_pair(link_params(cfg))
        self.heap: list[tuple[float, int, int, Callable[[float, Any], None], Any]] = []
        self._seq = 0  # insertion order: ties in time run first-scheduled first
        self.link = LinkCore(CONTROLLER_HELLO, rtt_prior_s=cfg.rtt_ms / 1000.0)
        self.worker_load = WorkerLoad(max_batch=DEFAULT_WORKER_MAX_BATCH, passes=worker_pass_times())
        self._w_pass = (0, 0, 0.0)  # the running worker pass: (sequences, longest feed, seconds)
        self.worker = WorkerCore(WORKER_HELLO, load=self.worker_load)
        self.estimates = Estimates.with_priors(
            target_s=cfg.target_ms / 1000.0, draft_s=cfg.draft_ms / 1000.0,
            verify_per_token_s=cfg.verify_per_token_ms / 1000.0, rtt=self.link.rtt,
            worker_demand=self.link.worker_demand)
        self.wcaches: dict[int, dict[int, DraftCache]] = {}  # session -> its caches by number
        self.wbatcher = Batcher(BatchLimits(max_sequences=DEFAULT_WORKER_MAX_BATCH))
        self.wjobs: dict[int, DraftFor] = {}  # waiting worker passes by key
        self.wkeys: dict[int, set[int]] = {}  # a session's worker passes (maybe waiting)
        self._wkey = 0
        self.wrunning = False
        self.wform_scheduled = False
        self.worker_busy = 0.0
        self.cores: dict[int, ControllerCore] = {}  # by request id, kept until the worker reported
        self.core: ControllerCore | None = None  # the request being decoded
        self.local_cache = DraftCache()
        self.out: list[int] = []
        self.index = 0
        self.results: list[RequestResult] = []
        self.logs: list[str] = []
        self.done = False
        self._timer_gen = {"controller": 0, "link": 0}
        self._armed: dict[str, float | None] = {}

    # ---- loop ------------------------------------------------------------------------------
    def _at(self, t: float, fn: Callable[[float, Any], None], arg: Any,
            priority: int = 0) -> None:
        self._seq += 1
        heappush(self.heap, (t, priority, self._seq, fn, arg))

    def run(self) -> ModeResult:
        self._link_exec(self.link.connect(0.0), 0.0)
        while self.heap and not self.done:
            t, _, _, fn, arg = heappop(self.heap)
            fn(t, arg)
        if not self.done:
            raise RuntimeError(f"simulation stalled ({self.policy}, request {self.index})")
        res = ModeResult(self.policy, self.results)
        res.link_bytes = self.up.bytes + self.down.bytes
        res.link_messages = self.up.messages + self.down.messages
        res.worker_busy_s = self.worker_busy
        return res

    def _arm(self, name: str, deadline: float | None, now: float,
             fire: Callable[[float, Any], None]) -> None:
        """(Re-)arm timer ``name`` for ``deadline``: a newer arming makes older entries stale."""
        if deadline is not None and self._armed.get(name) == deadline:
            return  # already armed for exactly this deadline
        self._armed[name] = deadline
        self._timer_gen[name] += 1
        if deadline is not None:
            self._at(max(deadline, now), fire, self._timer_gen[name])

    # ---- the controller's link ---------------------------------------------------------------
    def _on_link_message(self, now: float, msg: Message) -> None:
        self._link_exec(self.link.on_message(msg, now), now)

    def _link_timer(self, now: float, gen: int) -> None:
        if gen == self._timer_gen["link"]:
            self._link_exec(self.link.on_timer(now), now)

    def _link_exec(self, actions: list[LinkAction], now: float) -> None:
        for a in actions:
            if isinstance(a, Send):
                self._at(self.up.push(now, frame_size(a.msg)), self._on_worker_message, a.msg)
            elif isinstance(a, Route):
                core = self.cores.get(a.rid)
                if core is not None:
                    self._c_exec(core, core.on_message(a.msg, now), now)
                    self._maybe_next_request(core, now)
            elif isinstance(a, Up):
                if self.core is None:
                    self._start_request(now)
            elif isinstance(a, Lost):  # e.g. no handshake within its deadline (RTT >= 10 s)
                for core in self.cores.values():
                    self._c_exec(core, core.on_worker_lost(a.reason, now), now)
                if self.core is None and self.index == 0 and not self.results:
                    self._start_request(now)  # as the runtime does: decode without the worker
        self._arm("link", self.link.next_timer(), now, self._link_timer)

    # ---- the controller ----------------------------------------------------------------------
    def _start_request(self, now: float) -> None:
        world = self.worlds[self.index]
        self.out, self.local_cache = [], DraftCache()
        core = ControllerCore(self.index + 1, world.prompt, StopCriteria(max_tokens=world.max_tokens),
                              GREEDY, self.ccfg, has_local_draft=self.has_local,
                              use_worker=self.link.up, estimates=self.estimates)
        self.core = self.cores[core.rid] = core
        self._c_exec(core, core.start(now), now)

    def _c_exec(self, core: ControllerCore, actions: list[ControllerAction], now: float) -> None:
        world = self.worlds[core.rid - 1]
        for a in actions:
            if isinstance(a, Send):
                self._at(self.up.push(now, frame_size(a.msg)), self._on_worker_message, a.msg)
            elif isinstance(a, RunTarget):
                first = a.start + len(a.tokens) - a.want + 1
                done = TargetDone(a.op, world.choices(first, a.want))
                cost = one_pass_seconds(self.target_cost, a)
                self._at(now + cost, self._c_done, done)
            elif isinstance(a, RunDraft):
                done = world.draft_round(self.local_cache, a)
                cost = one_pass_seconds(self.draft_cost, a)
                self._at(now + cost, self._c_done, done)
            elif isinstance(a, EmitTokens):
                self.out.extend(a.tokens)
            elif isinstance(a, Finished):
                self._finished(core, now)
            elif isinstance(a, Log):
                self.logs.append(a.message)
        if core is self.core:
            self._arm("controller", core.next_timer(), now, self._c_timer)

    def _c_done(self, now: float, ev: TargetDone | DraftDone) -> None:
        core = self.core
        assert core is not None
        self._c_exec(core, core.on_event(ev, now), now)

    def _c_timer(self, now: float, gen: int) -> None:
        core = self.core
        if gen == self._timer_gen["controller"] and core is not None and not core.finished:
            self._c_exec(core, core.on_timer(now), now)

    def _finished(self, core: ControllerCore, now: float) -> None:
        world = self.worlds[core.rid - 1]
        ref = world.reference()
        ok = core.transcript.output == ref and self.out == ref
        self.results.append(RequestResult(core.metrics, ok, core.stats))
        self.core = None
        if not core.worker_ok:
            self._next_request(now)  # no worker account to wait for

    def _maybe_next_request(self, core: ControllerCore, now: float) -> None:
        """The next request starts once the worker has reported on the previous one."""
        if core.finished and core.stats.worker_account is not None and self.core is None:
            del self.cores[core.rid]
            if core.rid == self.index + 1:
                self._next_request(now)

    def _next_request(self, now: float) -> None:
        self.index += 1
        if self.index >= len(self.worlds):
            self.done = True
        else:
            self._start_request(now)

    # ---- the worker ----------------------------------------------------------------------------
    def _on_worker_message(self, now: float, msg: Message) -> None:
        self._w_exec(self.worker.on_message(msg, now), now)

    def _w_exec(self, actions: list[WorkerAction], now: float) -> None:
        for a in actions:
            if isinstance(a, Send):
                self._at(self.down.push(now, frame_size(a.msg)), self._on_link_message, a.msg)
            elif isinstance(a, DraftFor):
                self.wcaches.setdefault(a.rid, {})
                self._wkey += 1
                key = self._wkey
                self.wjobs[key] = a
                self.wbatcher.submit(key, PassKind.DRAFT, len(a.run.tokens), now)
                jobs = self.wjobs  # (forget the session's passes that ran)
                keys = {k for k in self.wkeys.get(a.rid, ()) if k in jobs}
                keys.add(key)
                self.wkeys[a.rid] = keys
                if not self.wrunning and not self.wform_scheduled:
                    self.wform_scheduled = True
                    self._at(now, self._w_form, None, FORM)
            elif isinstance(a, Release):
                self.wcaches.pop(a.rid, None)
                for key in self.wkeys.pop(a.rid, ()):
                    if self.wjobs.pop(key, None) is not None:  # its waiting passes withdrawn
                        self.wbatcher.withdraw(key)
            elif isinstance(a, Log):
                self.logs.append(a.message)
            elif isinstance(a, Close):
                raise RuntimeError(f"the simulated worker closed the connection: {a.reason}")
        sessions = len(self.worker.sessions)
        if sessions != self.worker_load.sessions:  # as the adapter's refresh_load
            self.worker_load.sessions = sessions
            self._w_exec(self.worker.on_load_changed(), now)

    def _w_form(self, now: float, _: Any) -> None:
        """The worker device is free: run what waits as one pass (its lanes' caches copy first)."""
        self.wform_scheduled = False
        if self.wrunning:
            return
        p = self.wbatcher.next_pass()
        if p is None:
            return
        jobs = [self.wjobs.pop(k) for k in p.keys]
        for a in jobs:
            worker_cache(self.wcaches[a.rid], a)
        done = [(a.rid, DraftDone(a.run.op, *self.worlds[a.rid - 1].draft(
            self.wcaches[a.rid][a.cache], a.run.start, a.run.tokens))) for a in jobs]
        cost = self.draft_cost.seconds(**pass_shape([a.run for a in jobs]))
        self.worker_busy += cost
        self._w_pass = (len(jobs), max(len(a.run.tokens) for a in jobs), cost)
        self.wrunning = True
        self._at(now + cost, self._w_done, done)

    def _w_done(self, now: float, done: list[tuple[int, DraftDone]]) -> None:
        self.wrunning = False
        self.worker_load.on_pass(*self._w_pass)  # as the worker's accelerator reports it
        # (a session released meanwhile has no caches: the core counts its pass as wasted)
        self._w_exec(self.worker.on_pass_done(done), now)
        if self.wbatcher.waiting and not self.wform_scheduled:
            self.wform_scheduled = True
            self._at(now, self._w_form, None, FORM)


def simulate_remote(cfg: SimConfig, policy: str, requests: Sequence[RequestWorld]) -> ModeResult:
    return RemoteSim(cfg, policy, requests).run()
