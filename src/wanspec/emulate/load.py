"""Serving under load: many requests at once, every site's passes batched (``emulate --concurrency``).

A *load* is how requests arrive:

* :class:`Closed` ``(concurrency=N)``: N clients, each sending its next prompt as soon as its last
  one finished (the usual way serving benchmarks fix a load level);
* :class:`Poisson` ``(rate=R)``: an open loop, requests arriving at R per second on average
  (exponential gaps from a seeded generator), whatever the server's state.  When the busy site
  is over capacity, requests wait in its queue; none is refused.

Each mode (target-only, standard SD at each window, each wanspec policy) serves the same prompts
under the same load on fresh devices; a :class:`LoadRun` keeps every request's result and the
devices' accounts, and :func:`summarize` turns it into the record the tables, JSON and CSV show:
throughput and goodput of the busy site, TTFT and per-request TPOT percentiles, how the busy
accelerator spent its time, the worker's utilisation, and whether every output equals the same
request decoded alone.
"""

from __future__ import annotations

import asyncio
import random
from dataclasses import dataclass, field
from typing import Any, Awaitable, Callable, Sequence

from wanspec.core.metrics import percentile
from wanspec.errors import WanspecError
from wanspec.runtime.engine import GenerationResult
from wanspec.timing.device import DeviceStats


@dataclass(frozen=True)
class Closed:
    concurrency: int

    def __post_init__(self) -> None:
        if self.concurrency < 1:
            raise WanspecError(f"concurrency must be >= 1, got {self.concurrency}")

    @property
    def label(self) -> str:
        return f"c={self.concurrency}"


@dataclass(frozen=True)
class Poisson:
    rate: float  # requests per second
    seed: int = 0

    def __post_init__(self) -> None:
        if not self.rate > 0:
            raise WanspecError(f"--request-rate must be > 0, got {self.rate}")

    @property
    def label(self) -> str:
        return f"{self.rate:g} req/s"

    def arrivals(self, n: int) -> list[float]:
        """Arrival offsets (seconds) of ``n`` requests; the first arrives at once."""
        rng = random.Random(self.seed)
        t, out = 0.0, []
        for _ in range(n):
            out.append(t)
            t += rng.expovariate(self.rate)
        return out


Load = Closed | Poisson


@dataclass
class Served:
    """One request under load: its result and when it arrived and finished (loop time)."""

    result: GenerationResult
    arrived: float
    finished: float

    @property
    def tpot_s(self) -> float | None:
        """This request's time per output token after the first (None for one token)."""
        m = self.result.metrics
        n = m["committed_tokens"]
        return (m["wall_s"] - m["ttft_s"]) / (n - 1) if n > 1 else None


@dataclass
class LoadRun:
    mode: str
    load: Load
    rtt_ms: float | None
    served: list[Served]  # in prompt order
    makespan_s: float
    busy: DeviceStats  # the busy site's accelerator
    worker: DeviceStats | None = None
    extra: dict[str, Any] = field(default_factory=dict)  # e.g. the SD window


async def serve(generate: Callable[[str], Awaitable[GenerationResult]], prompts: Sequence[str],
                load: Load) -> tuple[list[Served], float]:
    """Serve ``prompts`` under ``load`` with ``generate``; returns them in prompt order and the
    makespan (first arrival to last finish)."""
    loop = asyncio.get_running_loop()
    t0 = loop.time()
    served: list[Served | None] = [None] * len(prompts)

    async def one(i: int) -> None:
        arrived = loop.time()
        result = await generate(prompts[i])
        served[i] = Served(result, arrived - t0, loop.time() - t0)

    # a task group: if one request fails, the others are cancelled, not left running
    async with asyncio.TaskGroup() as group:
        if isinstance(load, Closed):
            todo = iter(range(len(prompts)))

            async def client() -> None:
                for i in todo:  # each client takes the next prompt when its last one is done
                    await one(i)

            for _ in range(min(load.concurrency, len(prompts))):
                group.create_task(client())
        else:
            async def arrive(i: int, at: float) -> None:
                await asyncio.sleep(max(t0 + at - loop.time(), 0.0))
                await one(i)

            for i, at in enumerate(load.arrivals(len(prompts))):
                group.create_task(arrive(i, at))
    done = [s for s in served if s is not None]
    return done, loop.time() - t0


def meets_slo(tpot_s: float | None, slo_tpot_s: float | None, ttft_s: float | None = None,
              slo_ttft_s: float | None = None) -> bool:
    """Whether a request counts toward goodput: its TPOT and TTFT within the targets given (a
    target of None is no target; a request of one token has no TPOT and meets any)."""
    return ((slo_tpot_s is None or (tpot_s or 0.0) <= slo_tpot_s)
            and (slo_ttft_s is None or (ttft_s is not None and ttft_s <= slo_ttft_s)))


def summarize(run: LoadRun, reference: Sequence[list[int]], slo_tpot_ms: float) -> dict[str, Any]:
    """The record of one (mode, load, RTT): what a serving operator reads."""
    span = max(run.makespan_s, 1e-12)
    tokens = sum(s.result.metrics["committed_tokens"] for s in run.served)
    tpots = [t for s in run.served if (t := s.tpot_s) is not None]
    # time to first token from arrival: any wait for admission included
    ttfts = [s.result.metrics["ttft_s"] + s.result.metrics.get("queued_s", 0.0)
             for s in run.served]
    slo_s = slo_tpot_ms / 1000.0
    good = sum(s.result.metrics["committed_tokens"] for s in run.served
               if meets_slo(s.tpot_s, slo_s))
    busy = run.busy
    target_s = sum(v for k, v in busy.busy_by_model.items() if k == "target")
    draft_s = busy.busy_s - target_s
    busy_drafts = sum(s.result.metrics["draft_passes"]["controller"] for s in run.served)
    rec: dict[str, Any] = {
        "mode": run.mode,
        "load": run.load.label,
        "concurrency": run.load.concurrency if isinstance(run.load, Closed) else None,
        "request_rate": run.load.rate if isinstance(run.load, Poisson) else None,
        "rtt_ms": run.rtt_ms,
        "requests": len(run.served),
        "tokens": tokens,
        "makespan_s": run.makespan_s,
        "throughput_tok_s": tokens / span,
        "e2e_ms_per_token": 1000 * sum(s.result.metrics["wall_s"]
                                       + s.result.metrics.get("queued_s", 0.0)
                                       for s in run.served) / max(tokens, 1),
        "goodput_tok_s": good / span,
        "slo_tpot_ms": slo_tpot_ms,
        "admission": run.extra.get("admission", "none"),
        "slo_attained": sum(meets_slo(s.tpot_s, slo_s) for s in run.served) / max(len(run.served), 1),
        **{f"ttft_ms_p{q}": 1000 * percentile(ttfts, q) for q in (50, 95, 99)},
        **{f"tpot_ms_p{q}": 1000 * percentile(tpots, q) for q in (50, 95, 99)},
        "busy_target_frac": target_s / span,
        "busy_draft_frac": draft_s / span,
        "busy_idle_frac": max(1.0 - busy.busy_s / span, 0.0),
        "busy_passes": busy.passes,
        "busy_mean_batch": busy.sequences / busy.passes if busy.passes else 0.0,
        "busy_site_draft_passes_per_token": busy_drafts / max(tokens, 1),
        "worker_utilisation": (run.worker.busy_s / span) if run.worker is not None else None,
        "worker_mean_batch": (run.worker.sequences / run.worker.passes
                              if run.worker is not None and run.worker.passes else None),
        "identical_to_target_only": all(s.result.token_ids == ref
                                        for s, ref in zip(run.served, reference)),
        **run.extra,
    }
    return rec


def best_sd_under_load(by_gamma: dict[int, dict[str, Any]]) -> dict[str, Any]:
    """Best SD under load: the window with the highest busy-site throughput at this load (ties:
    lower p95 TPOT), with the whole search kept so the choice can be checked."""
    gamma = max(by_gamma, key=lambda g: (by_gamma[g]["throughput_tok_s"],
                                         -by_gamma[g]["tpot_ms_p95"], -g))
    search = {str(g): r["throughput_tok_s"] for g, r in sorted(by_gamma.items())}
    return {**by_gamma[gamma], "mode": "sd-best", "sd_gamma": gamma,
            "sd_search_throughput": search}


def with_load_ratios(rec: dict[str, Any], target: dict[str, Any],
                     best: dict[str, Any]) -> dict[str, Any]:
    """Throughput and p95 TPOT relative to target-only and best SD at the same load and RTT."""
    rec["throughput_vs_target"] = rec["throughput_tok_s"] / target["throughput_tok_s"]
    rec["throughput_vs_best_sd"] = rec["throughput_tok_s"] / best["throughput_tok_s"]
    rec["tpot_p95_vs_best_sd"] = (rec["tpot_ms_p95"] / best["tpot_ms_p95"]
                                  if best["tpot_ms_p95"] else None)
    rec["best_sd_gamma"] = best["sd_gamma"]
    return rec
