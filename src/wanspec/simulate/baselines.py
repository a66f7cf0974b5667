"""Target-only and standard SD at one site: :class:`~wanspec.core.local.LocalDecoder` on a clock.

Why no event heap: at one site exactly one pass is outstanding at a time, so virtual time is a
running sum of pass costs (as ``LocalEngine`` charges them on one device).  Same synthetic models
as the remote runs, so every point compares the modes on identical sequences.
"""

from __future__ import annotations

from wanspec.core.actions import (
    DraftDone, EmitTokens, Finished, RunDraft, RunTarget, Site, TargetDone,
)
from wanspec.core.local import GammaSchedule, LocalDecoder, LocalMode
from wanspec.core.stopping import StopCriteria
from wanspec.simulate.config import SimConfig
from wanspec.simulate.engine import device_costs, one_pass_seconds
from wanspec.simulate.models import DraftCache, RequestWorld
from wanspec.simulate.records import ModeResult, RequestResult


def simulate_local(cfg: SimConfig, mode: str, requests: list[RequestWorld],
                   gamma: int | None = None) -> ModeResult:
    """``mode``: ``target`` (target-only), ``sd`` (standard SD, the draft on the same device, at
    window ``gamma``, default ``cfg.gamma``) or ``sd-dynamic`` (the heuristic window schedule)."""
    local_mode = LocalMode.TARGET if mode == "target" else LocalMode.SD
    schedule = GammaSchedule.HEURISTIC if mode == "sd-dynamic" else GammaSchedule.CONSTANT
    gamma = cfg.gamma if gamma is None else gamma
    target_cost, draft_cost = device_costs(cfg)
    result = ModeResult(mode)
    for world in requests:
        dec = LocalDecoder(world.prompt, StopCriteria(max_tokens=world.max_tokens),
                           mode=local_mode, gamma=gamma, draft_site=Site.CONTROLLER,
                           schedule=schedule)
        cache = DraftCache()
        out: list[int] = []
        now = 0.0
        actions = dec.start(now)
        while True:
            run = None
            for a in actions:
                kind = type(a)
                if kind is RunTarget or kind is RunDraft:
                    run = a
                elif kind is EmitTokens:
                    out.extend(a.tokens)
                elif kind is Finished:
                    break
            if run is None:
                break
            n = len(run.tokens)
            ev: TargetDone | DraftDone
            if isinstance(run, RunTarget):
                now += one_pass_seconds(target_cost, run)
                first = run.start + n - run.want + 1
                ev = TargetDone(run.op, world.choices(first, run.want))
            else:
                now += one_pass_seconds(draft_cost, run)
                ev = world.draft_round(cache, run)
            actions = dec.on_event(ev, now)
        ref = world.reference()
        result.requests.append(RequestResult(dec.metrics, dec.transcript.output == ref and out == ref))
    return result
