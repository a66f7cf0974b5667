"""Simulation parameters: one frozen record per sweep point, validated with one-line errors.

Why one flat dataclass: a sweep varies *any* parameter, so every parameter has a name, a unit, a
type and a valid range in one table (:data:`PARAMS`) that the CLI, the sweep parser, the record
columns and the docs all share.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass
from typing import Any, Callable

from wanspec.core.controller import ControllerConfig
from wanspec.core.policy import PolicyConfig, PolicyName
from wanspec.errors import WanspecError
from wanspec.timing.device import PassCost
from wanspec.units import (
    MAX_BANDWIDTH_BPS,
    MAX_DURATION_MS,
    MIN_BANDWIDTH_BPS,
    read_bandwidth_bps,
    read_duration_ms,
)

POLICIES: tuple[str, ...] = tuple(p.value for p in PolicyName)
_POLICY_DEFAULTS = PolicyConfig()  # thresholds default to what the real controller uses
_CONTROLLER_DEFAULTS = ControllerConfig()  # draft-tree size: the real controller's default
MATCH_MODELS = ("iid", "markov", "trace")
# P(the target's token is a rejected draft's 2nd, 3rd, 4th choice), shipped pair, 128 held-out
# prompts x 64 tokens (benchmarks/draft_ranks.py, benchmarks/results/draft_ranks.json)
RANKS_GREEDY = (0.748, 0.160, 0.045)  # none of the top 4: 0.047 (1,092 rejections, s.e. <= 0.013)
RANKS_SAMPLED = (0.602, 0.220, 0.074)  # temperature 1, seed 0 (1,491 rejections); none: 0.104


@dataclass(frozen=True)
class Param:
    """A sweepable parameter: ``name`` on the command line, ``field`` in :class:`SimConfig`."""

    name: str
    field: str
    kind: type  # int or float
    lo: float
    hi: float  # inclusive bounds
    unit: str
    help: str
    hi_open: bool = False  # ``hi`` itself is not allowed
    read: Callable[[str, str], float] | None = None  # a value with units (wanspec.units)
    min_nonzero: float = 0.0  # 0 is allowed, but nothing between 0 and this


def _mbit(text: str, what: str) -> float:
    return read_bandwidth_bps(text, what) / 1e6


def _duration(name: str, field: str, help: str) -> Param:
    return Param(name, field, float, 0, MAX_DURATION_MS, "ms", help, read=read_duration_ms)


PARAMS: dict[str, Param] = {p.name: p for p in [
    _duration("rtt", "rtt_ms", "round-trip time controller<->worker"),
    _duration("jitter", "jitter_ms", "extra one-way delay, uniform in [0, jitter]"),
    Param("bandwidth", "bandwidth_mbit", float, 0, MAX_BANDWIDTH_BPS / 1e6, "Mbit/s",
          "per direction (0 = unlimited)", read=_mbit, min_nonzero=MIN_BANDWIDTH_BPS / 1e6),
    Param("loss", "loss", float, 0, 1, "prob", "chance a message is hit by a retransmission spike"),
    _duration("spike", "spike_ms", "delay of a loss spike (default: one RTT)"),
    _duration("target_ms", "target_ms", "target pass, base cost"),
    _duration("draft_ms", "draft_ms", "draft pass, base cost (both sites)"),
    _duration("verify_per_token_ms", "verify_per_token_ms", "extra target cost per extra token fed"),
    _duration("draft_per_token_ms", "draft_per_token_ms", "extra draft cost per extra token fed"),
    Param("gamma", "gamma", int, 1, 64, "tokens", "draft tokens per verification window"),
    Param("lookahead", "lookahead", int, 0, 64, "tokens", "worker lookahead cap (0 = automatic)"),
    Param("entropy_threshold", "entropy_threshold", float, 0, 100, "nats",
          "entropy policy: rejection predicted above this"),
    Param("max_slowdown", "max_slowdown", float, 1, 100, "x",
          "adaptive policy: latency budget relative to the best local decoding"),
    Param("branches", "branches", int, 0, 64, "lanes",
          "draft tree: branch lanes the worker may grow (0 = a single chain)"),
    Param("alpha", "alpha", float, 0, 1, "prob", "per-token acceptance of drafts", hi_open=True),
    Param("burst", "burst", float, 0, 1, "corr", "markov: lag-1 correlation of outcomes",
          hi_open=True),
    Param("rank2", "rank2", float, 0, 1, "prob",
          "a rejected draft's 2nd choice is the target's token"),
    Param("rank3", "rank3", float, 0, 1, "prob",
          "a rejected draft's 3rd choice is the target's token"),
    Param("rank4", "rank4", float, 0, 1, "prob",
          "a rejected draft's 4th choice is the target's token"),
    Param("separation", "separation", float, 0, 100, "nats",
          "entropy: mean(rejected) - mean(accepted)"),
    Param("entropy_sd", "entropy_sd", float, 0, 100, "nats", "entropy: spread of each class"),
    Param("max_tokens", "max_tokens", int, 1, 1_000_000, "tokens", "new tokens per request"),
    Param("requests", "requests", int, 1, 1_000_000, "", "requests per mode and point"),
    Param("prompt_tokens", "prompt_tokens", int, 1, 1_000_000, "tokens", "prompt length"),
    Param("seed", "seed", int, 0, 2**63 - 1, "", "seed of every synthetic sequence"),
]}
ALIASES = {"rtt_ms": "rtt", "jitter_ms": "jitter", "bandwidth_mbit": "bandwidth",
           "spike_ms": "spike", "target": "target_ms", "draft": "draft_ms"}


@dataclass(frozen=True)
class Roofline:
    """The terms of a pass's cost beyond ``base + per_token * (longest feed - 1)``
    (:class:`~wanspec.timing.device.PassCost`): KV read per 1,000 tokens of context, compute per
    token fed, and each sequence past the first of a batched pass, per device.

    A replay of a trace whose header records them charges exactly what its emulated run did
    (``emulate`` uses the documented deployment's terms,
    :data:`~wanspec.timing.device.DEFAULT_TARGET_COST`, or none with flat costs), single-request
    and under load, so the two compare like for like.  Without recorded terms
    (``SimConfig.roofline`` None) a single-request simulation charges none of them (the flat
    costs the closed forms and the published sweeps use) and one under load the defaults (a
    batched pass is priced by its shape).
    """

    target_kv_ms_per_ktoken: float = 0.0
    target_compute_ms_per_token: float = 0.0
    target_per_sequence_ms: float = 0.0
    draft_kv_ms_per_ktoken: float = 0.0
    draft_compute_ms_per_token: float = 0.0
    draft_per_sequence_ms: float = 0.0

    @classmethod
    def of(cls, target: PassCost, draft: PassCost) -> "Roofline":
        """The roofline terms of two devices' costs."""
        return cls(target.kv_ms_per_ktoken, target.compute_ms_per_token, target.per_sequence_ms,
                   draft.kv_ms_per_ktoken, draft.compute_ms_per_token, draft.per_sequence_ms)

    @classmethod
    def from_header(cls, header: dict[str, Any]) -> "Roofline | None":
        """What a trace header records (None: it records no term, as traces written before
        the terms were; a term it leaves out: 0)."""
        names = [f.name for f in dataclasses.fields(cls)]
        if not any(name in header for name in names):
            return None
        return cls(**{name: float(header.get(name, 0.0)) for name in names})


@dataclass(frozen=True)
class SimConfig:
    """Everything one simulation point depends on (times in ms, as on the command line)."""

    # link (the in-process transport's model)
    rtt_ms: float = 40.0
    jitter_ms: float = 0.0
    bandwidth_mbit: float = 0.0
    loss: float = 0.0
    spike_ms: float | None = None  # None: one RTT
    up_share: float = 0.5
    # devices (wanspec.timing.device.PassCost)
    target_ms: float = 30.0
    draft_ms: float = 4.0
    verify_per_token_ms: float = 0.5
    draft_per_token_ms: float = 0.0
    roofline: Roofline | None = None  # (a replayed trace's; not a command-line parameter)
    # decoding and policies
    gamma: int = 4
    lookahead: int = 0
    entropy_threshold: float = _POLICY_DEFAULTS.entropy_threshold
    max_slowdown: float = _POLICY_DEFAULTS.max_slowdown
    branches: int = _CONTROLLER_DEFAULTS.branches
    # synthetic models
    match: str = "iid"
    alpha: float = 0.8
    burst: float = 0.5
    # where the target's token sits among a rejected draft's choices (its top is wrong): its
    # 2nd, 3rd or 4th choice with these probabilities, else none of its top 4.  Measured for the
    # shipped pair, greedy (sampled at temperature 1: RANKS_SAMPLED), by
    #   .venv/bin/python benchmarks/draft_ranks.py --json benchmarks/results/draft_ranks.json
    rank2: float = RANKS_GREEDY[0]
    rank3: float = RANKS_GREEDY[1]
    rank4: float = RANKS_GREEDY[2]
    separation: float = 1.0
    entropy_sd: float = 0.35
    entropy_base: float = 0.5  # mean entropy of drafts that will be accepted (nats)
    vocab: int = 32000
    # workload
    max_tokens: int = 128
    requests: int = 16
    prompt_tokens: int = 32
    seed: int = 0

    def __post_init__(self) -> None:
        for p in PARAMS.values():
            value = getattr(self, p.field)
            if value is None and p.field == "spike_ms":
                continue
            check_value(p, value)
        if self.match not in MATCH_MODELS:
            raise WanspecError(f"unknown match model {self.match!r}; choose from "
                               f"{', '.join(MATCH_MODELS)}")
        if not 0.0 <= self.up_share <= 1.0:
            raise WanspecError(f"up_share must be between 0 and 1, got {self.up_share}")
        if self.rank2 + self.rank3 + self.rank4 > 1.0 + 1e-9:
            raise WanspecError(f"rank2 + rank3 + rank4 must be <= 1, got "
                               f"{self.rank2:g} + {self.rank3:g} + {self.rank4:g}")
        if self.vocab < 64:  # (room for a draft's top 4 above the rest: simulate.models)
            raise WanspecError("vocab must be >= 64")

    def with_values(self, values: dict[str, Any]) -> "SimConfig":
        return dataclasses.replace(self, **{PARAMS[k].field: v for k, v in values.items()})

    @property
    def spike(self) -> float:
        return self.rtt_ms if self.spike_ms is None else self.spike_ms

    def describe(self) -> str:
        model = {"iid": f"iid alpha={self.alpha:g}",
                 "markov": f"markov alpha={self.alpha:g} burst={self.burst:g}",
                 "trace": "trace replay"}[self.match]
        return (f"{model}, gamma={self.gamma}, target {self.target_ms:g}+"
                f"{self.verify_per_token_ms:g}/tok ms, draft {self.draft_ms:g} ms, "
                f"{self.requests} req x {'<= ' if self.match == 'trace' else ''}"
                f"{self.max_tokens} tok")


def resolve(name: str) -> Param:
    key = name.strip().lower().replace("-", "_")
    key = ALIASES.get(key, key)
    if key not in PARAMS:
        raise WanspecError(f"unknown parameter {name!r}; sweepable: {', '.join(PARAMS)}")
    return PARAMS[key]


def check_value(p: Param, value: Any) -> None:
    """Raise a one-line error unless ``value`` is a valid ``p``."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise WanspecError(f"{p.name} must be a number, got {value!r}")
    if p.kind is int and value != int(value):
        raise WanspecError(f"{p.name} must be a whole number, got {value!r}")
    if not math.isfinite(value) or value < p.lo or value > p.hi or (p.hi_open and value >= p.hi):
        upper = f"< {p.hi:g}" if p.hi_open else f"<= {p.hi:g}"
        raise WanspecError(f"{p.name} must be >= {p.lo:g} and {upper}, got {value:g}")
    if 0 < value < p.min_nonzero:
        raise WanspecError(f"{p.name} must be 0 or >= {p.min_nonzero:g} {p.unit}, got {value:g}")
