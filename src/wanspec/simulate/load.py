"""Serving under load, simulated: many requests at once, both sites batching their passes.

The discrete-event counterpart of ``wanspec emulate --concurrency`` (:mod:`wanspec.emulate.load`):
the same cores (controller, worker, link, local decoder), the same sans-I/O pass former
(:class:`~wanspec.core.batcher.Batcher`: drafts first, every waiting pass of a kind), the same
rides (:meth:`~wanspec.core.controller.ControllerCore.on_pass_departing`), the same admission
(:class:`~wanspec.core.admission.Admission`) and the same roofline pass costs
(:class:`~wanspec.timing.device.PassCost`), on synthetic models instead of real ones.  What the
asyncio adapters do between events this driver does too, and nothing more:

* a pass result is delivered to every request it carried at its end; the next pass is formed
  only after every other event of that instant (the adapters' *settling*), so the requests of
  one pass are in the next;
* the busy accelerator runs one pass at a time, as does the worker's (all sessions of the one
  connection share its passes); the worker's lookahead caps follow its live sessions;
* each request's timer is re-armed after each event it handles.

Records are those of ``emulate`` under load (:func:`~wanspec.emulate.load.summarize`), so the two
can be compared column by column.
"""

from __future__ import annotations

import dataclasses
import itertools
from dataclasses import dataclass, field
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
    Site,
    TargetDone,
)
from wanspec.core.admission import Admission
from wanspec.core.batcher import Batcher, BatchLimits, PassKind
from wanspec.core.capacity import worker_pass_times
from wanspec.core.controller import ControllerCore
from wanspec.core.estimates import Estimates
from wanspec.core.link import LinkAction, LinkCore, Lost, Route, Up
from wanspec.core.local import LocalDecoder, LocalMode
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
from wanspec.baselines import SD_GAMMAS
from wanspec.emulate.load import (
    Closed,
    Load,
    LoadRun,
    Poisson,
    Served,
    best_sd_under_load,
    summarize,
    with_load_ratios,
)
from wanspec.protocol.messages import Message
from wanspec.runtime.engine import GenerationResult
from wanspec.simulate.config import Roofline, SimConfig
from wanspec.simulate.engine import (
    CONTROLLER_HELLO,
    GREEDY,
    WORKER_HELLO,
    controller_config,
    device_costs,
    link_params,
    worker_cache,
)
from wanspec.simulate.link import frame_size, link_pair
from wanspec.simulate.models import DraftCache, RequestWorld
from wanspec.simulate.trace import Trace
from wanspec.simulate.worlds import worlds
from wanspec.timing.device import (
    DEFAULT_DRAFT_COST,
    DEFAULT_TARGET_COST,
    DeviceStats,
    PassCost,
    pass_shape,
    round_pass_shapes,
)

LOCAL_MODES = ("target", "sd")
FORM = 1  # heap priority of forming a pass: after every other event of the same instant


def pass_costs(cfg: SimConfig) -> tuple[PassCost, PassCost]:
    """The point's target and draft costs, with the roofline terms of a batched pass: a
    replayed trace's, else the defaults."""
    if cfg.roofline is not None:
        return device_costs(cfg)
    return device_costs(dataclasses.replace(
        cfg, roofline=Roofline.of(DEFAULT_TARGET_COST, DEFAULT_DRAFT_COST)))


@dataclass
class _Request:
    index: int  # into the worlds (and the request id, minus one)
    arrived: float
    core: Any = None  # ControllerCore or LocalDecoder, once admitted
    started: float = 0.0
    out: list[int] = field(default_factory=list)
    local_cache: DraftCache = field(default_factory=DraftCache)
    timer_gen: int = 0
    armed: float | None = None


@dataclass
class _Device:
    """One accelerator: its pass former, what waits, and its account."""

    batcher: Batcher
    costs: dict[PassKind, PassCost]
    labels: dict[PassKind, str]
    jobs: dict[int, tuple[Any, RunTarget | RunDraft]] = field(default_factory=dict)
    running: bool = False
    form_scheduled: bool = False
    stats: DeviceStats = field(default_factory=DeviceStats)


class LoadSim:
    """One mode (``target``, ``sd`` or a policy) serving ``worlds`` under ``load`` at ``cfg``."""

    def __init__(self, cfg: SimConfig, mode: str, worlds: Sequence[RequestWorld], load: Load, *,
                 gamma: int | None = None, limits: BatchLimits | None = None,
                 slo_tpot_ms: float | None = None,
                 worker_max_batch: int = DEFAULT_WORKER_MAX_BATCH) -> None:
        self.cfg, self.mode, self.worlds, self.load = cfg, mode, worlds, load
        self.remote = mode not in LOCAL_MODES
        self.gamma = cfg.gamma if gamma is None else gamma
        self.limits = limits or BatchLimits()
        target_cost, draft_cost = pass_costs(cfg)
        self.busy = _Device(Batcher(self.limits),
                            {PassKind.TARGET: target_cost, PassKind.DRAFT: draft_cost},
                            {PassKind.TARGET: "target",
                             PassKind.DRAFT: "local-draft" if self.remote else "draft"})
        # as the runtime: without a target everyone starts at once; with one, at most a pass full
        self.admission = (Admission(None) if slo_tpot_ms is None
                          else Admission(slo_tpot_ms / 1000.0, self.limits.max_sequences))
        self.heap: list[tuple[float, int, int, Callable[[float, Any], None], Any]] = []
        self._seq = itertools.count()
        self._keys = itertools.count()
        self.requests: list[_Request] = []
        self.live: dict[int, _Request] = {}  # admitted and not finished, by request id
        self.served: list[Served | None] = [None] * len(worlds)
        self._next_prompt = 0
        self.logs: list[str] = []
        if self.remote:
            self.ccfg = controller_config(cfg, mode)
            self.up, self.down = link_pair(link_params(cfg))
            self.link = LinkCore(CONTROLLER_HELLO, rtt_prior_s=cfg.rtt_ms / 1000.0)
            self.estimates = Estimates.with_priors(
                target_s=cfg.target_ms / 1000.0, draft_s=cfg.draft_ms / 1000.0,
                verify_per_token_s=cfg.verify_per_token_ms / 1000.0, rtt=self.link.rtt,
                worker_demand=self.link.worker_demand)
            self.worker_load = WorkerLoad(max_batch=worker_max_batch, passes=worker_pass_times())
            self._w_pass = (0, 0, 0.0)  # the running worker pass: (sequences, longest feed, seconds)
            self.worker = WorkerCore(WORKER_HELLO, load=self.worker_load)
            self.wdev = _Device(Batcher(BatchLimits(max_sequences=worker_max_batch)),
                                {PassKind.DRAFT: draft_cost}, {PassKind.DRAFT: "draft"})
            # session -> its draft caches by number (DraftFor.cache), while the session lives
            self.wcaches: dict[int, dict[int, DraftCache]] = {}
            self.wkeys: dict[int, set[int]] = {}  # a session's worker passes (maybe waiting)

    # ---- loop --------------------------------------------------------------------------------
    def _at(self, t: float, fn: Callable[[float, Any], None], arg: Any = None,
            priority: int = 0) -> None:
        heappush(self.heap, (t, priority, next(self._seq), fn, arg))

    def run(self) -> LoadRun:
        if self.remote:
            self._link_exec(self.link.connect(0.0), 0.0)  # requests arrive once it is up
        else:
            self._arrivals(0.0)
        while self.heap:
            t, _, _, fn, arg = heappop(self.heap)
            fn(t, arg)
        done = [s for s in self.served if s is not None]
        if len(done) != len(self.worlds):
            raise RuntimeError(f"simulation stalled ({self.mode}): {len(done)} of "
                               f"{len(self.worlds)} requests finished")
        start = min(s.arrived for s in done)
        for s in done:
            s.arrived -= start
            s.finished -= start
        span = max(s.finished for s in done)
        return LoadRun(self.mode, self.load, self.cfg.rtt_ms if self.remote else None, done, span,
                       self.busy.stats, self.wdev.stats if self.remote else None,
                       extra={"sd_gamma": self.gamma} if self.mode == "sd" else {})

    def _arrivals(self, now: float) -> None:
        if isinstance(self.load, Closed):
            for _ in range(min(self.load.concurrency, len(self.worlds))):
                self._arrive(now)
        else:
            assert isinstance(self.load, Poisson)
            for at in self.load.arrivals(len(self.worlds)):
                self._at(now + at, lambda t, _: self._arrive(t))

    def _arrive(self, now: float) -> None:
        if self._next_prompt >= len(self.worlds):
            return
        req = _Request(self._next_prompt, now)
        self._next_prompt += 1
        self.requests.append(req)
        self.admission.arrive(req.index)
        self._admit(now)

    def _admit(self, now: float) -> None:
        for index in self.admission.admit():
            self._start(self.requests[index], now)

    # ---- requests ----------------------------------------------------------------------------
    def _start(self, req: _Request, now: float) -> None:
        world = self.worlds[req.index]
        stop = StopCriteria(max_tokens=world.max_tokens)
        req.started = now
        if self.remote:
            req.core = ControllerCore(req.index + 1, world.prompt, stop, GREEDY, self.ccfg,
                                      has_local_draft=self.mode != "remote",
                                      use_worker=self.link.up, estimates=self.estimates)
        else:
            req.core = LocalDecoder(world.prompt, stop,
                                    mode=LocalMode.TARGET if self.mode == "target" else LocalMode.SD,
                                    gamma=self.gamma, draft_site=Site.CONTROLLER)
        self.live[req.index + 1] = req
        self._exec(req, req.core.start(now), now)

    def _exec(self, req: _Request, actions: Sequence[Any], now: float) -> None:
        finished = False
        for a in actions:
            if isinstance(a, RunTarget):
                self._submit(self.busy, req, a, PassKind.TARGET, now, self._busy_form)
            elif isinstance(a, RunDraft):
                self._submit(self.busy, req, a, PassKind.DRAFT, now, self._busy_form)
            elif isinstance(a, Send):
                self._at(self.up.push(now, frame_size(a.msg)), self._on_worker_message, a.msg)
            elif isinstance(a, EmitTokens):
                req.out.extend(a.tokens)
                self.admission.on_commit(req.index, len(a.tokens), now)
            elif isinstance(a, Finished):
                finished = True
            elif isinstance(a, Log):
                self.logs.append(a.message)
        if finished:
            self._finished(req, now)
        elif self.remote:
            self._arm(req, req.core.next_timer(), now)

    def _arm(self, req: _Request, deadline: float | None, now: float) -> None:
        if deadline is not None and req.armed == deadline:
            return
        req.armed = deadline
        req.timer_gen += 1
        if deadline is not None:
            self._at(max(deadline, now), self._timer, (req, req.timer_gen))

    def _timer(self, now: float, arg: tuple[_Request, int]) -> None:
        req, gen = arg
        if gen == req.timer_gen and req.index + 1 in self.live:
            req.armed = None
            self._exec(req, req.core.on_timer(now), now)

    def _finished(self, req: _Request, now: float) -> None:
        self.live.pop(req.index + 1, None)
        self.admission.leave(req.index)
        core = req.core
        metrics = {**core.metrics.to_dict(), "queued_s": req.started - req.arrived}
        result = GenerationResult(text="", token_ids=list(core.transcript.output),
                                  prompt_tokens=len(self.worlds[req.index].prompt),
                                  finish_reason="length", mode=self.mode, metrics=metrics)
        if req.out != result.token_ids:
            result.token_ids = req.out  # streamed and final outputs must agree; flag it if not
        self.served[req.index] = Served(result, req.arrived, now)
        self._admit(now)
        if isinstance(self.load, Closed):
            self._arrive(now)  # this client sends its next prompt

    # ---- the accelerators --------------------------------------------------------------------
    def _submit(self, dev: _Device, owner: Any, action: RunTarget | RunDraft, kind: PassKind,
                now: float, form: Callable[[float, Any], None]) -> int:
        key = next(self._keys)
        dev.jobs[key] = (owner, action)
        dev.batcher.submit(key, kind, len(action.tokens), now)
        if not dev.running and not dev.form_scheduled:
            dev.form_scheduled = True
            self._at(now, form, None, FORM)
        return key

    def _start_pass(self, dev: _Device, now: float, done: Callable[[float, Any], None]) -> bool:
        p = dev.batcher.next_pass()
        if p is None:
            return False
        jobs = [dev.jobs.pop(k) for k in p.keys]
        actions = [a for _, a in jobs]
        if dev is not self.busy:  # worker passes: each branch's cache takes its copy first
            for owner, _ in jobs:
                worker_cache(self.wcaches[owner.rid], owner)
        # a local draft round (RunDraft.count) runs its later passes at once, as the runtime does
        shapes = (round_pass_shapes(actions) if p.kind is PassKind.DRAFT
                  else [pass_shape(actions)])
        cost = sum(dev.costs[p.kind].seconds(**shape) for shape in shapes)
        results = [self._compute(owner, a) for owner, a in jobs]
        st = dev.stats
        st.passes += len(shapes)
        st.sequences += sum(shape["sequences"] for shape in shapes)
        st.busy_s += cost
        label = dev.labels[p.kind]
        st.by_model[label] = st.by_model.get(label, 0) + len(shapes)
        st.busy_by_model[label] = st.busy_by_model.get(label, 0.0) + cost
        dev.running = True
        if dev is not self.busy:
            self._w_pass = (len(jobs), max(len(a.tokens) for a in actions), cost)
        if dev is self.busy:
            if self.remote:
                self.estimates.observe_busy_pass(p.kind is PassKind.TARGET, len(jobs),
                                                 max(len(a.tokens) for a in actions))
                for shape in shapes[1:]:
                    self.estimates.observe_busy_pass(False, shape["sequences"], 1)
            if p.kind is PassKind.TARGET:
                self.admission.on_pass(p.tokens, cost)
        self._at(now + cost, done, list(zip(jobs, results)))
        return True

    def _compute(self, owner: Any, a: RunTarget | RunDraft) -> TargetDone | DraftDone:
        if isinstance(owner, _Request):
            world = self.worlds[owner.index]
            if isinstance(a, RunTarget):
                first = a.start + len(a.tokens) - a.want + 1
                return TargetDone(a.op, world.choices(first, a.want))
            return world.draft_round(owner.local_cache, a)
        # a worker session's pass (owner: its DraftFor), on the cache it names (copied above)
        cache = self.wcaches[owner.rid][owner.cache]
        return DraftDone(a.op, *self.worlds[owner.rid - 1].draft(cache, a.start, a.tokens))

    def _busy_form(self, now: float, _: Any) -> None:
        dev = self.busy
        if dev.running:
            dev.form_scheduled = False
            return
        if self.remote and dev.batcher.next_kind() is PassKind.TARGET:
            for req in list(self.live.values()):  # a target pass leaves: riders may join
                if not dev.batcher.seats_left(PassKind.TARGET):
                    break
                self._exec(req, req.core.on_pass_departing(now), now)
        dev.form_scheduled = False
        self._start_pass(dev, now, self._busy_done)

    def _busy_done(self, now: float, finished: list) -> None:
        self.busy.running = False
        for (req, _), ev in finished:
            if req.index + 1 in self.live:
                self._exec(req, req.core.on_event(ev, now), now)
        self._admit(now)
        if self.busy.batcher.waiting and not self.busy.form_scheduled:
            self.busy.form_scheduled = True
            self._at(now, self._busy_form, None, FORM)

    # ---- the link and the worker -------------------------------------------------------------
    def _on_link_message(self, now: float, msg: Message) -> None:
        self._link_exec(self.link.on_message(msg, now), now)

    def _link_exec(self, actions: list[LinkAction], now: float) -> None:
        for a in actions:
            if isinstance(a, Send):
                self._at(self.up.push(now, frame_size(a.msg)), self._on_worker_message, a.msg)
            elif isinstance(a, Route):
                req = self.live.get(a.rid)
                if req is not None:
                    self._exec(req, req.core.on_message(a.msg, now), now)
            elif isinstance(a, Up | Lost):  # Lost: e.g. no handshake within its deadline:
                if not self.requests:     # the requests decode without the worker
                    self._arrivals(now)
        deadline = self.link.next_timer()
        if deadline is not None:  # pings keep the RTT estimate fresh while requests run
            self._at(max(deadline, now), self._link_timer, deadline)

    def _link_timer(self, now: float, deadline: float) -> None:
        if self.link.next_timer() == deadline and (self.live or self._next_prompt < len(self.worlds)):
            self._link_exec(self.link.on_timer(now), now)

    def _on_worker_message(self, now: float, msg: Message) -> None:
        self._w_exec(self.worker.on_message(msg, now), now)

    def _w_exec(self, actions: list[WorkerAction], now: float) -> None:
        for a in actions:
            if isinstance(a, Send):
                self._at(self.down.push(now, frame_size(a.msg)), self._on_link_message, a.msg)
            elif isinstance(a, DraftFor):
                self.wcaches.setdefault(a.rid, {})
                jobs = self.wdev.jobs  # (forget the session's passes that ran)
                keys = {k for k in self.wkeys.get(a.rid, ()) if k in jobs}
                keys.add(self._submit(self.wdev, a, a.run, PassKind.DRAFT, now,
                                      self._worker_form))
                self.wkeys[a.rid] = keys
            elif isinstance(a, Release):
                self.wcaches.pop(a.rid, None)
                for key in self.wkeys.pop(a.rid, ()):
                    if key in self.wdev.jobs:  # its waiting passes are withdrawn
                        del self.wdev.jobs[key]
                        self.wdev.batcher.withdraw(key)
            elif isinstance(a, Log):
                self.logs.append(a.message)
            elif isinstance(a, Close):
                raise RuntimeError(f"the simulated worker closed the connection: {a.reason}")
        sessions = len(self.worker.sessions)
        if sessions != self.worker_load.sessions:  # the caps follow the live sessions
            self.worker_load.sessions = sessions
            self._w_exec(self.worker.on_load_changed(), now)

    def _worker_form(self, now: float, _: Any) -> None:
        self.wdev.form_scheduled = False
        if not self.wdev.running:
            self._start_pass(self.wdev, now, self._worker_done)

    def _worker_done(self, now: float, finished: list) -> None:
        self.wdev.running = False
        self.worker_load.on_pass(*self._w_pass)  # as the worker's accelerator reports it
        # (a session released meanwhile has no caches: the core counts its pass as wasted)
        self._w_exec(self.worker.on_pass_done([(a.rid, ev) for (a, _), ev in finished]), now)
        if self.wdev.batcher.waiting and not self.wdev.form_scheduled:
            self.wdev.form_scheduled = True
            self._at(now, self._worker_form, None, FORM)


def simulate_load(cfg: SimConfig, mode: str, worlds: Sequence[RequestWorld], load: Load, *,
                  gamma: int | None = None, limits: BatchLimits | None = None,
                  slo_tpot_ms: float | None = None,
                  worker_max_batch: int = DEFAULT_WORKER_MAX_BATCH) -> LoadRun:
    return LoadSim(cfg, mode, worlds, load, gamma=gamma, limits=limits,
                   slo_tpot_ms=slo_tpot_ms, worker_max_batch=worker_max_batch).run()



def run_load(cfg: SimConfig, loads: Sequence[Load], policies: Sequence[str], *,
             rtts: Sequence[float] | None = None, sd_gammas: Sequence[int] = SD_GAMMAS,
             limits: BatchLimits | None = None, slo_tpot_ms: float = 50.0,
             admission: bool = False, trace: Trace | None = None,
             worker_max_batch: int = DEFAULT_WORKER_MAX_BATCH) -> list[dict[str, Any]]:
    """``emulate --concurrency``'s records, simulated: per load and RTT, target-only, best SD
    (its window searched at each load by throughput), standard SD and every policy.
    ``limits``: the busy site's passes; ``worker_max_batch``: sequences per worker pass."""
    ws = worlds(cfg, trace)
    reference = [w.reference() for w in ws]
    admit = slo_tpot_ms if admission else None
    label = {"admission": "slo" if admission else "none"}

    def record(run: LoadRun) -> dict[str, Any]:
        return {**summarize(run, reference, slo_tpot_ms), **label}

    records: list[dict[str, Any]] = []
    for load in loads:
        target = record(simulate_load(cfg, "target", ws, load, limits=limits, slo_tpot_ms=admit))
        by_gamma = {g: record(simulate_load(cfg, "sd", ws, load, gamma=g, limits=limits,
                                            slo_tpot_ms=admit))
                    for g in sorted({*sd_gammas, cfg.gamma})}
        best = best_sd_under_load(by_gamma)
        for rtt in (rtts or (cfg.rtt_ms,)):
            point = dataclasses.replace(cfg, rtt_ms=rtt)
            for rec in (target, best, by_gamma[cfg.gamma]):
                records.append(with_load_ratios({**rec, "rtt_ms": rtt}, target, best))
            for policy in policies:
                run = simulate_load(point, policy, worlds(point, trace), load, limits=limits,
                                    slo_tpot_ms=admit, worker_max_batch=worker_max_batch)
                records.append(with_load_ratios(record(run), target, best))
    return records
