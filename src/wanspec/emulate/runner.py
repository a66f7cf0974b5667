"""Run the baselines and each remote policy on the same prompts, per RTT.

Everything runs on a virtual clock with emulated device costs (or measured, if asked), so the
figures describe the configured deployment, not this machine.  The baselines
(:mod:`wanspec.baselines`: target-only, standard SD at the configured window and at every window
of the best-SD search, dynamic-window SD) do not depend on the RTT; they run once and serve as
the baselines of every RTT.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable, Sequence

from wanspec.baselines import BASELINES, SD_GAMMAS, best_sd, with_ratios
from wanspec.core.admission import Admission
from wanspec.core.batcher import BatchLimits
from wanspec.core.controller import ControllerConfig
from wanspec.core.local import GammaSchedule, LocalMode
from wanspec.core.metrics import percentile
from wanspec.core.policy import PolicyConfig, PolicyName
from wanspec.core.worker import DEFAULT_WORKER_MAX_BATCH
from wanspec.emulate.load import (
    Load,
    LoadRun,
    best_sd_under_load,
    serve,
    summarize,
    with_load_ratios,
)
from wanspec.emulate.record import record_trace, trace_header
from wanspec.models.backend import CausalLM
from wanspec.runtime.engine import GenerationResult, LocalEngine, TimingConfig
from wanspec.runtime.inproc import InprocDeployment
from wanspec.sampling import SamplingParams
from wanspec.simulate.trace import TraceRequest
from wanspec.transport.inproc import LinkParams

POLICIES = tuple(p.value for p in PolicyName)


@dataclass(frozen=True)
class EmulationConfig:
    rtts_ms: tuple[float, ...] = (40.0,)
    jitter_ms: float = 0.0
    bandwidth_bps: float = 0.0
    spike_prob: float = 0.0
    spike_ms: float = 0.0
    timing: TimingConfig = field(default_factory=TimingConfig.deployment)
    policies: tuple[str, ...] = POLICIES
    gamma: int = 4
    branches: int = ControllerConfig.branches  # draft-tree lanes of the remote policies
    max_tokens: int = 64
    entropy_threshold: float = 1.0
    max_slowdown: float = PolicyConfig().max_slowdown
    sampling: SamplingParams = SamplingParams()
    seed: int = 0
    sd_gammas: tuple[int, ...] = SD_GAMMAS  # windows best SD is searched over
    limits: BatchLimits = field(default_factory=BatchLimits)  # per batched pass, busy site
    worker_max_batch: int = DEFAULT_WORKER_MAX_BATCH  # sequences per worker draft pass
    slo_tpot_ms: float = 50.0  # goodput counts requests whose TPOT meets this
    admission: bool = False  # admit requests only while the running ones meet slo_tpot_ms
    # with the host charged (timing.host_overhead): host work a message costs each end in a real
    # transport's stack, which the in-process link lacks (transport/stack_cost.py measures it)
    host_stack_ms: float = 0.0


@dataclass
class ModeRuns:
    """All requests of one mode at one RTT."""

    mode: str
    rtt_ms: float | None
    results: list[GenerationResult] = field(default_factory=list)


def _aggregate(runs: ModeRuns, reference: Sequence[list[int]]) -> dict[str, Any]:
    gaps: list[float] = []
    tokens = busy = worker = target = drafted = accepted = wasted = hits = down = up = 0
    stall = ttft = wall = 0.0
    identical = True
    for r, ref in zip(runs.results, reference):
        m = r.metrics
        n = m["committed_tokens"]
        tokens += n
        gaps.extend(r.token_gaps)  # pooled over requests: mean and p95 per output token
        busy += m["draft_passes"]["controller"]
        worker += m["draft_passes"]["worker"]
        target += m["target_passes"]
        drafted += m["drafted_tokens"]
        accepted += m["accepted_tokens"]
        wasted += m.get("wasted_remote_drafts", 0)
        hits += m.get("branch_hits", 0)
        wire = m.get("wire_bytes") or {}
        down += wire.get("worker_to_controller", 0)
        up += wire.get("controller_to_worker", 0)
        stall += m.get("stall_s", 0.0)
        ttft += m["ttft_s"]
        wall += m["wall_s"]
        identical &= r.token_ids == ref
    n_req = max(len(runs.results), 1)
    per_tok = max(tokens, 1)
    return {
        "rtt_ms": runs.rtt_ms,
        "mode": runs.mode,
        "requests": len(runs.results),
        "tokens": tokens,
        "tpot_ms_mean": 1000 * (sum(gaps) / len(gaps) if gaps else 0.0),
        "tpot_ms_p95": 1000 * percentile(gaps, 95),
        "ttft_ms_mean": 1000 * ttft / n_req,
        "e2e_ms_per_token": 1000 * wall / per_tok,
        "busy_site_draft_passes_per_token": busy / per_tok,
        "worker_draft_passes_per_token": worker / per_tok,
        "target_passes_per_token": target / per_tok,
        "wasted_drafts_per_token": wasted / per_tok,
        "stall_ms_per_token": 1000 * stall / per_tok,
        # rejections whose correction a branch of the worker's draft tree held
        "branch_hits_per_token": hits / per_tok,
        # link traffic (frames, headers included) per committed token, each way
        "worker_bytes_per_token": down / per_tok,
        "controller_bytes_per_token": up / per_tok,
        "acceptance_rate": accepted / drafted if drafted else 0.0,
        "mean_acceptance_length": tokens / target if target else 0.0,
        "identical_to_target_only": identical,
    }


class Emulation:
    """Holds the models and runs the comparison; ``progress`` is called after each request."""

    def __init__(self, target: CausalLM, draft: CausalLM, config: EmulationConfig,
                 progress: Callable[[str], None] | None = None) -> None:
        self.target, self.draft, self.config = target, draft, config
        self.progress = progress or (lambda _label: None)
        self.target_only: ModeRuns | None = None  # the reference runs of the last :meth:`run`
        self._prompts: list[str] = []
        self._reference: list[list[int]] = []

    def _sd_gammas(self) -> tuple[int, ...]:
        return tuple(sorted({*self.config.sd_gammas, self.config.gamma}))

    def total_requests(self, n_prompts: int) -> int:
        local = 2 + len(self._sd_gammas())  # target-only, dynamic SD, SD at each window
        return n_prompts * (local + len(self.config.rtts_ms) * len(self.config.policies))

    def _gen_kwargs(self) -> dict[str, Any]:
        c = self.config
        return {"max_tokens": c.max_tokens, "sampling": c.sampling}

    def _run_local(self, mode: str, prompts: Sequence[str], gamma: int | None = None) -> ModeRuns:
        """``target``, ``sd`` (at ``gamma``, default the configured window) or ``sd-dynamic``."""
        c = self.config
        gamma = c.gamma if gamma is None else gamma
        engine = LocalEngine(self.target, None if mode == "target" else self.draft, c.timing)
        schedule = GammaSchedule.HEURISTIC if mode == "sd-dynamic" else GammaSchedule.CONSTANT
        runs = ModeRuns(mode, None)
        for p in prompts:
            r = engine.generate(p, mode=LocalMode.TARGET if mode == "target" else LocalMode.SD,
                                gamma=gamma, schedule=schedule, **self._gen_kwargs())
            runs.results.append(r)
            self.progress(mode if mode != "sd" else f"sd (g={gamma})")
        return runs

    def _link(self, rtt: float, jitter_ms: float | None = None) -> LinkParams:
        c = self.config
        return LinkParams(rtt_ms=rtt, jitter_ms=c.jitter_ms if jitter_ms is None else jitter_ms,
                          bandwidth_bps=c.bandwidth_bps, spike_prob=c.spike_prob,
                          spike_ms=c.spike_ms, seed=c.seed, stack_ms=c.host_stack_ms)

    def _controller_config(self, policy: str) -> ControllerConfig:
        c = self.config
        return ControllerConfig(gamma=c.gamma, policy=PolicyConfig(
            PolicyName(policy), c.entropy_threshold, c.max_slowdown), branches=c.branches)

    def _run_remote(self, policy: str, rtt: float, prompts: Sequence[str],
                    jitter_ms: float | None = None) -> ModeRuns:
        c = self.config
        link = self._link(rtt, jitter_ms)
        cfg = self._controller_config(policy)
        runs = ModeRuns(policy, rtt)

        async def main() -> None:
            async with InprocDeployment(self.target, self.draft, link=link, timing=c.timing,
                                        config=cfg, local_draft=policy != "remote",
                                        worker_max_batch=c.worker_max_batch) as dep:
                for p in prompts:
                    runs.results.append(await dep.generate(p, **self._gen_kwargs()))
                    self.progress(f"{policy} @ {rtt:g} ms")

        c.timing.run(main)
        return runs

    def remote_results(self, policy: str, rtt: float, prompts: Sequence[str]
                       ) -> list[GenerationResult]:
        """Each prompt decoded with ``policy`` at ``rtt``, one request at a time (what a real
        controller process does with ``--prompts``: benchmarks/realtime_fidelity.py)."""
        return self._run_remote(policy, rtt, prompts).results

    def baselines(self, prompts: Sequence[str]) -> dict[str, dict[str, Any]]:
        """The baseline records (:data:`~wanspec.baselines.BASELINES`) on ``prompts``; they do
        not depend on the link, so one set serves every RTT."""
        target = self._run_local("target", prompts)
        self.target_only, self._prompts = target, list(prompts)
        reference = self._reference = [r.token_ids for r in target.results]
        by_gamma = {g: {**_aggregate(self._run_local("sd", prompts, g), reference), "sd_gamma": g}
                    for g in self._sd_gammas()}
        return {"target": _aggregate(target, reference), "sd": by_gamma[self.config.gamma],
                "sd-best": best_sd(by_gamma),
                "sd-dynamic": _aggregate(self._run_local("sd-dynamic", prompts), reference)}

    def remote(self, policy: str, rtt: float, bases: dict[str, dict[str, Any]],
               jitter_ms: float | None = None) -> dict[str, Any]:
        """The record of ``policy`` at ``rtt`` on the prompts of the last :meth:`baselines`,
        with its ratios to them (``jitter_ms``: instead of the configured jitter)."""
        runs = self._run_remote(policy, rtt, self._prompts, jitter_ms)
        rec = _aggregate(runs, self._reference)
        return with_ratios(rec, bases["target"], bases["sd"], bases["sd-best"])

    def run(self, prompts: Sequence[str]) -> list[dict[str, Any]]:
        """One record per (RTT, mode), baselines included at every RTT."""
        bases = self.baselines(prompts)
        t, sd, best = bases["target"], bases["sd"], bases["sd-best"]
        records: list[dict[str, Any]] = []
        for rtt in self.config.rtts_ms:
            for mode in BASELINES:
                records.append(with_ratios({**bases[mode], "rtt_ms": rtt}, t, sd, best))
            for policy in self.config.policies:
                records.append(self.remote(policy, rtt, bases))
        return [{**r, **self.host_fields()} for r in records]

    def host_fields(self) -> dict[str, Any]:
        """What every record says of the host work its times include: none (``"0"``: the plain
        virtual clock), this machine's measured (``"measured"``, with the transport stack
        charged a message an end), or all of it (``"real"``: ``--measured``, real time)."""
        c = self.config
        kind = ("real" if not c.timing.emulated else "measured" if c.timing.host_overhead
                else "0")
        return {"host_overhead": kind, "host_stack_ms": c.host_stack_ms}

    # ---- under load --------------------------------------------------------------------------
    def reference(self, prompts: Sequence[str]) -> list[list[int]]:
        """Every prompt decoded alone by target-only decoding: what every output must equal."""
        if self._prompts != list(prompts) or not self._reference:
            runs = self._run_local("target", prompts)
            self.target_only, self._prompts = runs, list(prompts)
            self._reference = [r.token_ids for r in runs.results]
        return self._reference

    def serve_local(self, mode: str, prompts: Sequence[str], load: Load,
                    gamma: int | None = None) -> LoadRun:
        """``target`` or ``sd`` (at ``gamma``) under ``load``: every request's passes batched on
        the busy site's one accelerator."""
        c = self.config
        gamma = c.gamma if gamma is None else gamma
        engine = LocalEngine(self.target, None if mode == "target" else self.draft, c.timing)
        local_mode = LocalMode.TARGET if mode == "target" else LocalMode.SD

        async def main() -> LoadRun:
            acc = engine.accelerator(c.limits, self._admission())

            async def generate(p: str) -> GenerationResult:
                r = await engine.agenerate(p, mode=local_mode, gamma=gamma, accelerator=acc,
                                           **self._gen_kwargs())
                self.progress(f"{mode if mode == 'target' else f'sd (g={gamma})'} {load.label}")
                return r

            served, span = await serve(generate, prompts, load)
            extra = {"sd_gamma": gamma} if mode == "sd" else {}
            return LoadRun(mode, load, None, served, span, acc.device.stats,
                           extra={**extra, **self._admission_label()})

        return c.timing.run(main)

    def serve_remote(self, policy: str, rtt: float, prompts: Sequence[str],
                     load: Load) -> LoadRun:
        """A wanspec policy under ``load``: one worker, one busy accelerator, both batching."""
        c = self.config

        async def main() -> LoadRun:
            async with InprocDeployment(self.target, self.draft, link=self._link(rtt),
                                        timing=c.timing, config=self._controller_config(policy),
                                        local_draft=policy != "remote", limits=c.limits,
                                        worker_max_batch=c.worker_max_batch,
                                        admission=self._admission()) as dep:
                async def generate(p: str) -> GenerationResult:
                    r = await dep.engine.agenerate(p, **self._gen_kwargs())
                    self.progress(f"{policy} @ {rtt:g} ms {load.label}")
                    return r

                served, span = await serve(generate, prompts, load)
                return LoadRun(policy, load, rtt, served, span, dep.engine.device.stats,
                               dep.worker_device.stats, extra=self._admission_label())

        return c.timing.run(main)

    def _admission(self) -> Admission | None:
        c = self.config
        return Admission(c.slo_tpot_ms / 1000.0, c.limits.max_sequences) if c.admission else None

    def _admission_label(self) -> dict[str, str]:
        return {"admission": "slo" if self.config.admission else "none"}

    def total_load_requests(self, n_prompts: int, n_loads: int) -> int:
        per_load = 1 + len(self._sd_gammas()) + len(self.config.rtts_ms) * len(self.config.policies)
        return n_prompts * (1 + n_loads * per_load)

    def run_load(self, prompts: Sequence[str], loads: Sequence[Load]) -> list[dict[str, Any]]:
        """One record per (load, RTT, mode): target-only, best SD (its window searched at each
        load by throughput) and standard SD, and every configured policy, with ratios to
        target-only and best SD at the same load."""
        c = self.config
        reference = self.reference(prompts)
        records: list[dict[str, Any]] = []
        for load in loads:
            target = summarize(self.serve_local("target", prompts, load), reference,
                               c.slo_tpot_ms)
            by_gamma = {g: summarize(self.serve_local("sd", prompts, load, g), reference,
                                     c.slo_tpot_ms) for g in self._sd_gammas()}
            best = best_sd_under_load(by_gamma)
            for rtt in c.rtts_ms:
                for rec in (target, best, by_gamma[c.gamma]):
                    records.append(with_load_ratios({**rec, "rtt_ms": rtt}, target, best))
                for policy in c.policies:
                    run = self.serve_remote(policy, rtt, prompts, load)
                    records.append(with_load_ratios(summarize(run, reference, c.slo_tpot_ms),
                                                    target, best))
        return [{**r, **self.host_fields()} for r in records]

    def trace(self) -> tuple[dict[str, Any], list[TraceRequest]]:
        """The acceptance trace of the last :meth:`run` (``--record``): header and requests."""
        if self.target_only is None:
            raise RuntimeError("trace() needs a run() first")
        c = self.config
        ids = [self.target.encode(p) for p in self._prompts]
        header = trace_header(self.target, self.draft, c.timing, c.gamma, c.max_tokens,
                              c.sampling, host_stack_ms=c.host_stack_ms)
        return header, record_trace(self.draft, ids, self.target_only.results, c.sampling)

