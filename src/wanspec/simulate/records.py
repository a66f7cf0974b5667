"""Per-request results and the per-(point, mode) record every output format is made from.

Why the same keys as :mod:`wanspec.emulate.runner`: so simulated and emulated sweeps can be
compared column by column (and later plotted together).  A few simulator-only columns are added:
the per-token acceptance of the SD analysis, tokens per verification round, the policy's
choices, worker waste and link bytes.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Sequence

from wanspec.core.controller import ControllerStats
from wanspec.core.metrics import RequestMetrics, percentile
from wanspec.protocol.messages import SessionStats
from wanspec.simulate.config import PARAMS, SimConfig


__all__ = ["aggregate", "lossless", "point_columns"]


@dataclass
class RequestResult:
    """One decoded request: the core's own metrics, and whether its output was the target's."""

    metrics: RequestMetrics
    lossless: bool
    stats: ControllerStats | None = None  # remote modes: the controller's policy counters

    @property
    def worker(self) -> SessionStats | None:
        """Remote modes: the worker's own account of the session."""
        return self.stats.worker_account if self.stats is not None else None


@dataclass
class ModeResult:
    mode: str
    requests: list[RequestResult] = field(default_factory=list)
    link_bytes: int = 0
    link_messages: int = 0
    worker_busy_s: float = 0.0


def point_columns(cfg: SimConfig) -> dict[str, Any]:
    """The parameters of a point, as record columns (units in the names where they have one)."""
    cols: dict[str, Any] = {p.field: getattr(cfg, p.field) for p in PARAMS.values()}
    cols["spike_ms"] = cfg.spike
    cols["match"] = cfg.match
    return cols


def aggregate(res: ModeResult, cfg: SimConfig) -> dict[str, Any]:
    gaps: list[float] = []
    tokens = busy = worker = target = drafted = accepted = rejections = 0
    verify_rounds = from_verify = received = remote_acc = wasted_passes = 0
    remote_w = local_w = plain = 0
    stall = ttft = wall = 0.0
    identical = True
    worker_known = True
    for r in res.requests:
        m = r.metrics
        tokens += m.committed_tokens
        gaps.extend(m.token_gaps)
        busy += m.draft_passes["controller"]
        target += m.target_passes
        drafted += m.drafted_tokens
        accepted += m.accepted_tokens
        rejections += m.rejections
        verify_rounds += m.verify_rounds
        from_verify += m.tokens_from_verify
        ttft += m.ttft
        wall += m.wall_time
        identical &= r.lossless
        if r.stats is not None:
            s = r.stats
            received += s.remote_received
            remote_acc += s.remote_accepted
            stall += s.stall_s
            remote_w += s.remote_windows
            local_w += s.local_windows
            plain += s.plain_steps
        if r.worker is not None:
            worker += r.worker.passes
            wasted_passes += r.worker.wasted
        elif r.stats is not None:
            worker_known = False
    n_req = max(len(res.requests), 1)
    per_tok = max(tokens, 1)
    tested = accepted + rejections
    return {
        **point_columns(cfg),
        "mode": res.mode,
        "requests": len(res.requests),
        "tokens": tokens,
        "tpot_ms_mean": 1000 * (sum(gaps) / len(gaps) if gaps else 0.0),
        "tpot_ms_p95": 1000 * percentile(gaps, 95),
        "ttft_ms_mean": 1000 * ttft / n_req,
        "e2e_ms_per_token": 1000 * wall / per_tok,
        "busy_site_draft_passes_per_token": busy / per_tok,
        "worker_draft_passes_per_token": worker / per_tok if worker_known else None,
        "worker_wasted_passes_per_token": wasted_passes / per_tok if worker_known else None,
        "target_passes_per_token": target / per_tok,
        "wasted_drafts_per_token": max(received - remote_acc, 0) / per_tok,
        "stall_ms_per_token": 1000 * stall / per_tok,
        "acceptance_rate": accepted / drafted if drafted else 0.0,
        "per_token_acceptance": accepted / tested if tested else 0.0,
        "mean_acceptance_length": tokens / target if target else 0.0,
        "tokens_per_verify_round": from_verify / verify_rounds if verify_rounds else 0.0,
        "verify_rounds": verify_rounds,
        "remote_windows": remote_w,
        "local_windows": local_w,
        "plain_steps": plain,
        "link_bytes_per_token": res.link_bytes / per_tok,
        "identical_to_target_only": identical,
    }


def lossless(records: Sequence[dict[str, Any]]) -> bool:
    return all(r["identical_to_target_only"] for r in records)

