"""The synthetic sequences of every request of a point, built once and shared by all modes.

Why shared: target-only, standard SD and every policy at every RTT of a sweep then decode the
very same sequences (common random numbers), so differences between modes are not sampling noise,
and building them is paid once per process instead of once per run.
"""

from __future__ import annotations

from wanspec.simulate.config import SimConfig
from wanspec.simulate.models import RequestWorld, build_request
from wanspec.simulate.trace import Trace, replay_request

# value: (the trace, kept alive so that its id() cannot be reused, and the worlds)
_CACHE: dict[tuple, tuple[Trace | None, list[RequestWorld]]] = {}
_CACHE_LIMIT = 64


def world_key(cfg: SimConfig, trace: Trace | None) -> tuple:
    """Everything the sequences depend on (nothing about the link, the costs or the policy)."""
    burst = cfg.burst if cfg.match == "markov" else None
    model = (cfg.match, id(trace) if cfg.match == "trace" else None, cfg.alpha, burst)
    return (*model, cfg.rank2, cfg.rank3, cfg.rank4, cfg.separation, cfg.entropy_sd,
            cfg.entropy_base, cfg.vocab, cfg.max_tokens,
            cfg.requests, cfg.prompt_tokens if cfg.match != "trace" else None, cfg.seed)


def worlds(cfg: SimConfig, trace: Trace | None = None) -> list[RequestWorld]:
    key = world_key(cfg, trace)
    hit = _CACHE.get(key)
    if hit is not None:
        return hit[1]
    if cfg.match == "trace":
        if trace is None:
            raise ValueError("match model 'trace' needs a trace")
        got = [replay_request(cfg, trace, r) for r in range(cfg.requests)]
    else:
        got = [build_request(cfg, r, cfg.prompt_tokens) for r in range(cfg.requests)]
    if len(_CACHE) >= _CACHE_LIMIT:
        _CACHE.clear()
    _CACHE[key] = (trace, got)
    return got
