"""Discrete-event driver of the real ControllerCore and WorkerCore (one policy, one point).

Why a hand-written loop (a heap of ``(time, seq, handler, arg)``) rather than asyncio on a
virtual clock: the emulator's adapters spend most of their time in asyncio machinery; here each
event is one heap pop and one method call, so the cores themselves dominate the cost.  The
driver mirrors the asyncio adapters (:mod:`wanspec.runtime.controller`,
:mod:`wanspec.runtime.worker`, :mod:`wanspec.runtime.inproc`) step for step:

* one connection: a Hello round trip first (its RTT seeds the controller's estimate, as
  ``WorkerLink`` measures it), then a Ping every second whose Pong feeds ``on_rtt_sample`` and
  the link's RTT average (the prior of the next request);
* requests run one after another, as ``emulate`` runs prompts; the next one starts when the
  worker's SessionStats for the previous one arrives (``InprocDeployment.generate`` waits for it);
* the controller device runs one pass at a time (the core guarantees it); the worker device runs
  passes in FIFO order (``asyncio.Lock``); pass costs are ``PassCost`` (base + per-token term);
* the controller's wait timer is re-armed after every event it handles, like ``wait_for`` in
  ``RemoteEngine._drive``: a later event makes an earlier timer stale;
* every message crosses :class:`~wanspec.simulate.link.FifoLink` with its real frame size.
"""

from __future__ import annotations

import itertools
from heapq import heappop, heappush
from typing import Any, Callable

from wanspec.core.actions import DraftDone, EmitTokens, Finished, RunDraft, RunTarget, TargetDone
from wanspec.core.controller import ControllerAction, ControllerConfig, ControllerCore, Log, SendToWorker
from wanspec.core.estimates import LinkEstimates
from wanspec.core.policy import PolicyConfig, PolicyName
from wanspec.core.stopping import StopCriteria
from wanspec.core.worker import DraftFor, Release, Send, WorkerAction, WorkerCore
from wanspec.protocol.codec import PROTOCOL_VERSION
from wanspec.protocol.messages import (
    Cancel, Commit, Drafts, Error, Hello, Message, Ping, Pong, SessionStart, SessionStats,
)
from wanspec.sampling import SamplingParams
from wanspec.simulate.config import SimConfig
from wanspec.simulate.link import frame_size, link_pair
from wanspec.simulate.models import DraftCache, RequestWorld
from wanspec.simulate.records import ModeResult, RequestResult
from wanspec.transport.inproc import LinkParams

PING_INTERVAL_S = 1.0  # WorkerLink.ping_interval
_CAPS = ("drafts", "entropy")
CONTROLLER_HELLO = Hello(PROTOCOL_VERSION, "controller", "synthetic-target", "0" * 16, 32000, _CAPS)
WORKER_HELLO = Hello(PROTOCOL_VERSION, "worker", "synthetic-draft", "0" * 16, 32000, _CAPS)
GREEDY = SamplingParams()


def link_params(cfg: SimConfig) -> LinkParams:
    return LinkParams(rtt_ms=cfg.rtt_ms, jitter_ms=cfg.jitter_ms,
                      bandwidth_bps=cfg.bandwidth_mbit * 1e6, spike_prob=cfg.loss,
                      spike_ms=cfg.spike if cfg.loss else 0.0, up_share=cfg.up_share,
                      seed=cfg.seed)


def controller_config(cfg: SimConfig, policy: str) -> ControllerConfig:
    return ControllerConfig(
        gamma=cfg.gamma, lookahead=cfg.lookahead,
        policy=PolicyConfig(PolicyName(policy), cfg.entropy_threshold, cfg.busy_pass_weight),
        verify_per_token_s=cfg.verify_per_token_ms / 1000.0)  # as RemoteEngine derives it


class RemoteSim:
    """All requests of one point under one policy; :meth:`run` returns their results."""

    def __init__(self, cfg: SimConfig, policy: str, requests: list[RequestWorld]) -> None:
        self.cfg = cfg
        self.policy = policy
        self.worlds = requests
        self.ccfg = controller_config(cfg, policy)
        self.has_local = policy != PolicyName.REMOTE.value
        self.up, self.down = link_pair(link_params(cfg))
        self.heap: list[tuple[float, int, Callable[[float, Any], None], Any]] = []
        self._seq = 0  # insertion order: ties in time run first-scheduled first
        self.worker = WorkerCore()
        self.wcaches: dict[int, DraftCache] = {}
        self.worker_free = 0.0
        self.worker_busy = 0.0
        self._draft_s = cfg.draft_ms / 1000.0  # PassCost.seconds(1): a one-token feed
        self.core: ControllerCore | None = None
        self.world: RequestWorld | None = None
        self.local_cache = DraftCache()
        self.out: list[int] = []
        self.tgen = 0
        self.link_rtt: float | None = None
        self.hello_sent = 0.0
        self.index = 0
        self.waiting_stats: int | None = None
        self.results: list[RequestResult] = []
        self.logs: list[str] = []
        self.done = False
        self._ping_seq = itertools.count(1)
        # event handlers as bound once (``self._c_msg`` builds a new bound method per access)
        self._on_c_msg = self._c_msg
        self._on_w_msg = self._w_msg
        self._on_c_done = self._c_done
        self._on_w_done = self._w_done
        self._on_c_timer = self._c_timer

    # ---- loop ------------------------------------------------------------------------------
    def _at(self, t: float, fn: Callable[[float, Any], None], arg: Any) -> None:
        self._seq = seq = self._seq + 1
        heappush(self.heap, (t, seq, fn, arg))

    def run(self) -> ModeResult:
        self._send_up(0.0, CONTROLLER_HELLO)
        heap, pop = self.heap, heappop
        while heap:
            t, _, fn, arg = pop(heap)
            fn(t, arg)
            if self.done:
                break
        if not self.done:
            raise RuntimeError(f"simulation stalled ({self.policy}, request {self.index})")
        res = ModeResult(self.policy, self.results)
        res.link_bytes = self.up.bytes + self.down.bytes
        res.link_messages = self.up.messages + self.down.messages
        res.worker_busy_s = self.worker_busy
        return res

    def _send_up(self, now: float, msg: Message) -> None:
        self._at(self.up.push(now, frame_size(msg)), self._on_w_msg, msg)

    def _send_down(self, now: float, msg: Message) -> None:
        self._at(self.down.push(now, frame_size(msg)), self._on_c_msg, msg)

    # ---- controller site -----------------------------------------------------------------
    def _start_request(self, now: float) -> None:
        cfg = self.cfg
        world = self.worlds[self.index]
        est = LinkEstimates.with_priors(self.link_rtt if self.link_rtt is not None else 0.05,
                                        cfg.target_ms / 1000.0, cfg.draft_ms / 1000.0)
        self.world, self.out, self.local_cache = world, [], DraftCache()
        stop = StopCriteria(max_tokens=world.max_tokens)
        self.core = ControllerCore(self.index + 1, world.prompt, stop, GREEDY, self.ccfg,
                                   has_local_draft=self.has_local, use_worker=True, estimates=est)
        self._c_exec(self.core.start(now), now)

    def _c_exec(self, actions: list[ControllerAction], now: float) -> None:
        core = self.core
        assert core is not None and self.world is not None
        if actions:
            world = self.world
            cfg = self.cfg
            for a in actions:  # (isinstance: it narrows the type, which compiled code uses)
                if isinstance(a, SendToWorker):
                    self._send_up(now, a.msg)
                elif isinstance(a, RunTarget):
                    n = len(a.tokens)
                    first = a.start + n - a.want + 1
                    cost = (cfg.target_ms + cfg.verify_per_token_ms * (n - 1)) / 1000.0
                    self._at(now + cost, self._on_c_done,
                             TargetDone(a.op, world.choices(first, a.want)))
                elif isinstance(a, RunDraft):
                    tok, ent, top = world.draft(self.local_cache, a.start, a.tokens)
                    cost = (cfg.draft_ms + cfg.draft_per_token_ms * (len(a.tokens) - 1)) / 1000.0
                    self._at(now + cost, self._on_c_done, DraftDone(a.op, tok, ent, top))
                elif isinstance(a, EmitTokens):
                    self.out.extend(a.tokens)
                elif isinstance(a, Finished):
                    self._finished(now)
                elif isinstance(a, Log):
                    self.logs.append(a.message)
        # re-arm the wait timer after every event, as RemoteEngine._drive re-enters wait_for
        self.tgen += 1
        deadline = core.next_timer()
        if deadline is not None:
            self._at(deadline if deadline > now else now, self._on_c_timer, self.tgen)

    def _c_done(self, now: float, ev: Any) -> None:
        core = self.core
        assert core is not None
        if isinstance(ev, TargetDone):
            self._c_exec(core.on_target_done(ev, now), now)
        else:
            self._c_exec(core.on_draft_done(ev, now), now)

    def _c_timer(self, now: float, gen: int) -> None:
        core = self.core
        if gen == self.tgen and core is not None and not core.finished:
            self._c_exec(core.on_timer(now), now)

    def _c_msg(self, now: float, msg: Message) -> None:
        # (isinstance rather than ``type(msg) is``: it narrows the type, which compiled code uses)
        core = self.core
        if isinstance(msg, Drafts):
            if core is not None and msg.rid == core.rid and not core.finished:
                self._c_exec(core.on_message(msg, now), now)
        elif isinstance(msg, Pong):
            rtt = now - msg.t
            self.link_rtt = rtt if self.link_rtt is None else 0.8 * self.link_rtt + 0.2 * rtt
            if core is not None and not core.finished:
                core.on_rtt_sample(rtt)
        elif isinstance(msg, SessionStats):
            if 0 < msg.rid <= len(self.results):
                self.results[msg.rid - 1].worker = msg
            if self.waiting_stats == msg.rid:
                self.waiting_stats = None
                self._next_request(now)
        elif isinstance(msg, Error):
            if core is not None and msg.rid == core.rid and not core.finished:
                reason = f"worker refused the request: {msg.message}"
                self._c_exec(core.on_worker_lost(reason, now), now)
        elif isinstance(msg, Hello):
            self.link_rtt = now - self.hello_sent
            self._start_request(now)
            self._ping(now, None)

    def _ping(self, now: float, _: Any) -> None:
        if self.done:
            return
        self._send_up(now, Ping(now, next(self._ping_seq)))
        self._at(now + PING_INTERVAL_S, self._ping, None)

    def _finished(self, now: float) -> None:
        core, world = self.core, self.world
        assert core is not None and world is not None
        ref = world.reference()
        ok = core.transcript.output == ref and self.out == ref
        self.results.append(RequestResult(core.metrics, ok, core.stats))
        if core.worker_ok:
            self.waiting_stats = core.rid  # the next request starts once the worker reported
        else:
            self._next_request(now)

    def _next_request(self, now: float) -> None:
        self.index += 1
        if self.index >= len(self.worlds):
            self.done = True
        else:
            self._start_request(now)

    # ---- worker site ---------------------------------------------------------------------
    def _w_msg(self, now: float, msg: Message) -> None:
        w = self.worker
        actions: list[WorkerAction]
        if isinstance(msg, Commit):
            try:
                actions = w.on_commit(msg)
            except ValueError as exc:
                self._send_down(now, Error(str(exc), rid=msg.rid, code="session"))
                actions = w.drop(msg.rid)
        elif isinstance(msg, SessionStart):
            try:
                actions = w.on_start(msg)
            except Exception as exc:
                self._send_down(now, Error(str(exc), rid=msg.rid, code="session"))
                return
            self.wcaches[msg.rid] = DraftCache()
        elif isinstance(msg, Cancel):
            actions = w.on_cancel(msg)
        elif isinstance(msg, Ping):
            self._send_down(now, Pong(msg.t, msg.seq))
            return
        elif isinstance(msg, Hello):
            self._send_down(now, WORKER_HELLO)
            return
        else:
            return
        self._w_exec(actions, now)

    def _w_exec(self, actions: list[WorkerAction], now: float) -> None:
        # the hot path of the whole simulator (one call per worker pass): kept flat on purpose
        heap = self.heap
        for a in actions:
            if isinstance(a, Send):
                msg = a.msg
                self._seq = seq = self._seq + 1
                heappush(heap, (self.down.push(now, frame_size(msg)), seq, self._on_c_msg, msg))
            elif isinstance(a, DraftFor):
                rid = a.rid
                cache = self.wcaches.get(rid)
                if cache is None:
                    continue
                run = a.run
                tokens = run.tokens
                tok, ent, top = self.worlds[rid - 1].draft(cache, run.start, tokens)
                n = len(tokens)
                if n > 1:
                    cfg = self.cfg
                    cost = (cfg.draft_ms + cfg.draft_per_token_ms * (n - 1)) / 1000.0
                else:
                    cost = self._draft_s
                free = self.worker_free
                free = (now if now > free else free) + cost
                self.worker_free = free
                self.worker_busy += cost
                self._seq = seq = self._seq + 1
                heappush(heap, (free, seq, self._on_w_done, (rid, DraftDone(run.op, tok, ent, top))))
            elif isinstance(a, Release):
                self.wcaches.pop(a.rid, None)

    def _w_done(self, now: float, arg: tuple[int, DraftDone]) -> None:
        self._w_exec(self.worker.on_draft_done(arg[0], arg[1]), now)


def simulate_remote(cfg: SimConfig, policy: str, requests: list[RequestWorld]) -> ModeResult:
    return RemoteSim(cfg, policy, requests).run()
