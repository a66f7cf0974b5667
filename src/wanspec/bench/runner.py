"""``wanspec bench``: a load of streamed requests on an OpenAI-compatible endpoint, summarised.

The load shapes are those of ``wanspec emulate --concurrency / --request-rate``
(:mod:`wanspec.emulate.load`, the same :func:`~wanspec.emulate.load.serve`): a closed loop of N
clients, each sending its next prompt when its last response ended, or an open loop of seeded
Poisson arrivals that never waits for the server.  So a real server's table can be read next to
the emulated one: the same throughput, goodput and percentile definitions
(:func:`~wanspec.core.metrics.percentile`, :func:`~wanspec.emulate.load.meets_slo`).
"""

from __future__ import annotations

import dataclasses
import itertools
import statistics
from collections import Counter
from dataclasses import dataclass
from typing import Any, Callable, Sequence

import httpx

from wanspec.bench.openai import (
    Endpoint,
    RequestOptions,
    RequestRecord,
    auth_headers,
    first_model,
    stream_request,
)
from wanspec.core.metrics import percentile
from wanspec.emulate.load import Closed, Load, Poisson, meets_slo, serve

QUANTILES = (50, 95, 99)
METRICS = ("ttft", "tpot", "itl", "e2e")


@dataclass(frozen=True)
class BenchConfig:
    endpoint: Endpoint
    prompts: tuple[str, ...]  # one per request, in the order they are sent
    load: Load
    max_tokens: int
    model: str | None = None  # None: the first of GET /v1/models
    temperature: float = 0.0
    seed: int | None = None
    ignore_eos: bool = False
    timeout_s: float = 60.0
    api_key: str | None = None
    slo_tpot_ms: float | None = 50.0
    slo_ttft_ms: float | None = None


def request_prompts(prompts: Sequence[str], num_prompts: int | None) -> tuple[str, ...]:
    """The prompt of each request: the file's, in order, cycled when more requests are asked."""
    n = len(prompts) if num_prompts is None else num_prompts
    return tuple(itertools.islice(itertools.cycle(prompts), n))


def client_for(timeout_s: float, api_key: str | None) -> httpx.AsyncClient:
    """A client that never queues a request for a connection (an open loop may have any number
    in flight) and waits ``timeout_s`` to connect and for each chunk."""
    return httpx.AsyncClient(timeout=httpx.Timeout(timeout_s), headers=auth_headers(api_key),
                             limits=httpx.Limits(max_connections=None,
                                                 max_keepalive_connections=None))


@dataclass
class BenchRun:
    config: BenchConfig
    model: str
    records: list[RequestRecord]  # in request order
    duration_s: float  # first request sent to last response ended


async def run_bench(cfg: BenchConfig,
                    progress: Callable[[RequestRecord], None] | None = None) -> BenchRun:
    """Resolve the model (a one-line error if the server lists none) and serve the load."""
    async with client_for(cfg.timeout_s, cfg.api_key) as client:
        model = cfg.model or await first_model(client, cfg.endpoint)
        opts = RequestOptions(model=model, max_tokens=cfg.max_tokens,
                              temperature=cfg.temperature, seed=cfg.seed,
                              ignore_eos=cfg.ignore_eos)

        async def one(prompt: str) -> RequestRecord:
            rec = await stream_request(client, cfg.endpoint, opts, prompt)
            if progress is not None:
                progress(rec)
            return rec

        served, duration = await serve(one, cfg.prompts, cfg.load)  # type: ignore[arg-type]
    records: list[RequestRecord] = []
    for i, s in enumerate(served):
        rec: RequestRecord = s.result  # type: ignore[assignment]  # serve passes ours through
        records.append(dataclasses.replace(rec, index=i, start_s=s.arrived))
    return BenchRun(cfg, model, records, duration)


def _stats(values: list[float], name: str) -> dict[str, float | None]:
    """Mean and percentiles in ms (None when no request had the metric)."""
    if not values:
        return {f"{name}_ms_mean": None, **{f"{name}_ms_p{q}": None for q in QUANTILES}}
    return {f"{name}_ms_mean": 1000 * statistics.fmean(values),
            **{f"{name}_ms_p{q}": 1000 * percentile(values, q) for q in QUANTILES}}


def summarize(run: BenchRun) -> dict[str, Any]:
    """The record ``--json`` prints and the tables show (times in ms, rates per second)."""
    cfg, recs = run.config, run.records
    ok = [r for r in recs if r.ok]
    span = max(run.duration_s, 1e-12)
    tokens = sum(r.output_tokens for r in ok)
    slo_tpot = cfg.slo_tpot_ms / 1000 if cfg.slo_tpot_ms is not None else None
    slo_ttft = cfg.slo_ttft_ms / 1000 if cfg.slo_ttft_ms is not None else None
    good = [r for r in ok if meets_slo(r.tpot_s, slo_tpot, r.ttft_s, slo_ttft)]
    samples = {"ttft": [r.ttft_s for r in ok if r.ttft_s is not None],
               "tpot": [t for r in ok if (t := r.tpot_s) is not None],
               "itl": [g for r in ok for g in r.itl_s],
               "e2e": [r.e2e_s for r in ok if r.e2e_s is not None]}
    chunks = sum(r.chunks for r in ok)
    errors = Counter(r.error_kind for r in recs if not r.ok)
    examples: dict[str, str] = {}
    for r in recs:
        if r.error_kind is not None and r.error is not None:
            examples.setdefault(r.error_kind, r.error)
    load = cfg.load
    return {
        "url": cfg.endpoint.url,
        "model": run.model,
        "chat": cfg.endpoint.chat,
        "load": load.label,
        "concurrency": load.concurrency if isinstance(load, Closed) else None,
        "request_rate": load.rate if isinstance(load, Poisson) else None,
        "max_tokens": cfg.max_tokens,
        "temperature": cfg.temperature,
        "seed": cfg.seed,
        "requests": len(recs),
        "completed": len(ok),
        "failed": len(recs) - len(ok),
        "duration_s": run.duration_s,
        "output_tokens": tokens,
        "prompt_tokens": sum(r.prompt_tokens or 0 for r in ok),
        "tokens_from_usage": sum(r.tokens_from == "usage" for r in ok),
        "request_throughput": len(ok) / span,
        "output_throughput_tok_s": tokens / span,
        "slo_tpot_ms": cfg.slo_tpot_ms,
        "slo_ttft_ms": cfg.slo_ttft_ms,
        "goodput_tok_s": sum(r.output_tokens for r in good) / span,
        "goodput_req_s": len(good) / span,
        "slo_attained": len(good) / max(len(recs), 1),
        "tokens_per_chunk": tokens / chunks if chunks else None,
        **{k: v for m in METRICS for k, v in _stats(samples[m], m).items()},
        "errors": dict(sorted(errors.items())),
        "error_examples": dict(sorted(examples.items())),
    }
