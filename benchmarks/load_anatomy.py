"""Why a policy gains or loses under load: the anatomy of the busy site's passes, simulated.

    .venv/bin/python benchmarks/load_anatomy.py                       # c=32, RTT 30 ms
    .venv/bin/python benchmarks/load_anatomy.py --concurrency 8,64 --rtt 150 --alpha 0.6

Runs ``wanspec simulate``'s load driver (:class:`~wanspec.simulate.load.LoadSim`: the same
cores, batcher, rides and roofline costs) for target-only, standard SD at every window and the
policies, and prints per mode what throughput alone hides:

* ``tok/seat``: committed tokens per request per target pass it was in (a *seat*);
* ``plain``: seats that were plain steps (no drafts verified: one token);
* ``ride``: seats taken as a rider (joined another request's pass while waiting for the worker);
* ``D/T``: draft passes per target pass, and ``D batch``: requests per draft pass (lockstep
  drafting shares each draft pass among every request that drafts; scattered rounds do not);
* ``T ms`` / ``D ms``: mean target / draft pass time, and the busy split.

For the remote policies it also prints what follows a rejection (``--seats``): of the rejections,
the share whose correction a branch of the draft tree held (*hit*), by the target token's rank
among the draft's choices; and after a hit, a miss and a plain step, how often the request's
next seat in a target pass was a plain step.

Nothing is written; it is a diagnostic.  docs/results.md §7 quotes it for the simulated ceilings
at 32 clients (the outputs, with their commands: benchmarks/results/load_anatomy_c32.txt); its
load tables come from ``bench_load.py`` and ``wanspec simulate --concurrency``.
"""

from __future__ import annotations

import argparse
import collections
import contextlib
import dataclasses
from pathlib import Path
from typing import Any, Iterator

from wanspec.core.actions import RunTarget
from wanspec.core.batcher import PassKind
from wanspec.core.controller import ControllerCore
from wanspec.core.rounds import round_shapes
from wanspec.core.worker import DEFAULT_WORKER_MAX_BATCH
from wanspec.emulate.load import Closed
from wanspec.simulate.config import Roofline, SimConfig
from wanspec.simulate.load import LoadSim
from wanspec.simulate.trace import Trace, read_trace
from wanspec.simulate.worlds import worlds


def traced_config(base: SimConfig, trace: Trace) -> SimConfig:
    """``base`` replaying ``trace`` with the device costs and window it was recorded with, as
    ``wanspec simulate --trace`` does."""
    h = trace.header
    return dataclasses.replace(
        base, match="trace", roofline=Roofline.from_header(h),
        target_ms=h.get("target_ms", base.target_ms), draft_ms=h.get("draft_ms", base.draft_ms),
        verify_per_token_ms=h.get("verify_per_token_ms", base.verify_per_token_ms),
        draft_per_token_ms=h.get("draft_per_token_ms", base.draft_per_token_ms),
        gamma=h.get("gamma", base.gamma))


def load_sim(cfg: SimConfig, mode: str, concurrency: int, gamma: int | None = None,
             worker_max_batch: int = DEFAULT_WORKER_MAX_BATCH,
             worker_pass_flat: bool = False, ws: Any = None,
             trace: Trace | None = None) -> LoadSim:
    """The closed-loop run of ``mode``.  ``worker_pass_flat``: the worker's draft passes cost
    nothing for the sequences and KV they carry (their compute floor stays), so its drafting is
    as fast with every lane as alone -- and, passes no longer slowing with lanes, its trees are
    held back by ``worker_max_batch`` only.  A bound, not a device."""
    sim = LoadSim(cfg, mode, ws if ws is not None else worlds(cfg, trace), Closed(concurrency),
                  gamma=gamma, worker_max_batch=worker_max_batch)
    if worker_pass_flat and sim.remote:
        cost = sim.wdev.costs[PassKind.DRAFT]
        sim.wdev.costs[PassKind.DRAFT] = dataclasses.replace(cost, per_sequence_ms=0.0,
                                                             kv_ms_per_ktoken=0.0)
    return sim


def anatomy(cfg: SimConfig, mode: str, concurrency: int, gamma: int | None = None,
            worker_max_batch: int = DEFAULT_WORKER_MAX_BATCH,
            worker_pass_flat: bool = False, trace: Trace | None = None) -> dict[str, Any]:
    """One closed-loop run of ``mode`` (:func:`load_sim`), with its pass anatomy; ``trace``:
    the recorded acceptance it replays (None: the synthetic model)."""
    sim = load_sim(cfg, mode, concurrency, gamma, worker_max_batch, worker_pass_flat,
                   trace=trace)
    batcher, passes = sim.busy.batcher, []
    form = batcher.next_pass

    def next_pass():  # record each busy pass as it is formed: kind, requests, plain steps
        p = form()
        if p is not None:
            actions = [sim.busy.jobs[k][1] for k in p.keys]
            plain = sum(1 for a in actions if isinstance(a, RunTarget) and len(a.tokens) == 1
                        and a.start > 0)
            passes.append((p.kind, len(p.keys), plain))
            if p.kind is PassKind.DRAFT:  # a local round's later passes (RunDraft.count)
                passes.extend((p.kind, len(feeds), 0) for feeds in round_shapes(actions)[1:])
        return p

    batcher.next_pass = next_pass  # type: ignore[method-assign]
    run = sim.run()
    tokens = sum(len(s.result.token_ids) for s in run.served)
    target = [p for p in passes if p[0] is PassKind.TARGET]
    draft = [p for p in passes if p[0] is PassKind.DRAFT]
    seats = sum(p[1] for p in target)
    busy = run.busy
    t_s = busy.busy_by_model.get("target", 0.0)
    d_s = sum(v for k, v in busy.busy_by_model.items() if k != "target")
    rides = sum(getattr(r.core.stats, "rides", 0) for r in sim.requests
                if r.core is not None and hasattr(r.core, "stats"))
    return {
        "mode": mode if gamma is None else f"{mode} g={gamma}",
        "tok_s": tokens / run.makespan_s,
        "tok_per_seat": tokens / seats,
        "plain": sum(p[2] for p in target) / seats,
        "ride": rides / seats,
        "d_per_t": len(draft) / len(target),
        "d_batch": sum(p[1] for p in draft) / len(draft) if draft else 0.0,
        "t_batch": seats / len(target),
        "t_ms": 1000 * t_s / len(target),
        "d_ms": 1000 * d_s / len(draft) if draft else 0.0,
        "draft_frac": d_s / (t_s + d_s),
    }


@contextlib.contextmanager
def seat_log() -> Iterator[dict[int, list[tuple[int, int, int]]]]:
    """Per controller core, each target pass it was in: (drafts verified, tokens committed,
    rejections whose correction a tree branch held).  Patched in for one run only."""
    log: dict[int, list[tuple[int, int, int]]] = collections.defaultdict(list)
    original = ControllerCore.on_target_done

    def on_target_done(core, ev, now):  # type: ignore[no-untyped-def]
        drafts, n0, hits0 = len(core._proposal.drafts), len(core.transcript.tokens), \
            core.stats.branch_hits
        out = original(core, ev, now)
        log[core.rid].append((drafts, len(core.transcript.tokens) - n0,
                              core.stats.branch_hits - hits0))
        return out

    ControllerCore.on_target_done = on_target_done  # type: ignore[method-assign]
    try:
        yield log
    finally:
        ControllerCore.on_target_done = original  # type: ignore[method-assign]


def seats(cfg: SimConfig, policy: str, concurrency: int, worker_max_batch: int,
          worker_pass_flat: bool = False, trace: Trace | None = None) -> str:
    """What follows a rejection, for one run of a remote ``policy`` (see the module)."""
    ws = worlds(cfg, trace)
    with seat_log() as log:
        load_sim(cfg, policy, concurrency, None, worker_max_batch, worker_pass_flat, ws).run()
    ranks: collections.Counter[tuple[str, str]] = collections.Counter()
    after: collections.Counter[tuple[str, bool]] = collections.Counter()
    for rid, passes in log.items():
        world, committed = ws[rid - 1], len(ws[rid - 1].prompt)
        kinds = []
        for drafts, got, hits in passes:
            if drafts and got <= drafts:  # rejected: the target's token at committed + got - 1
                rank = world.rank[committed + got - 1]
                ranks[("hit" if hits else "miss", str(rank) if rank else "none")] += 1
                kinds.append("hit" if hits else "miss")
            else:
                kinds.append("plain" if not drafts else "accepted")
            committed += got
        for kind, nxt in zip(kinds, passes[1:]):
            after[(kind, nxt[0] == 0)] += 1
    rejections = sum(ranks.values())
    share = ", ".join(f"{k} rank {r}: {v / rejections:.2f}" for (k, r), v in sorted(ranks.items()))
    plain = ", ".join(f"after a {k}: {after[(k, True)] / max(after[(k, True)] + after[(k, False)], 1):.2f}"
                      for k in ("hit", "miss", "plain", "accepted"))
    return f"  {policy}: {rejections} rejections ({share})\n    next seat a plain step {plain}"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--concurrency", default="32")
    ap.add_argument("--rtt", default="30", help="ms, comma-separated")
    ap.add_argument("--alpha", type=float, default=0.8)
    ap.add_argument("--requests", type=int, default=64)
    ap.add_argument("--max-tokens", type=int, default=64)
    ap.add_argument("--policies", default="entropy,adaptive")
    ap.add_argument("--sd-windows", default="1,2,3,4,5,6,8")
    ap.add_argument("--worker-max-batch", type=int, default=DEFAULT_WORKER_MAX_BATCH,
                    help="sequences per worker draft pass")
    ap.add_argument("--ranks", default=None, metavar="R2,R3,R4",
                    help="where a rejected draft's correction sits among its choices (2nd, 3rd, "
                         "4th; default: measured on the shipped pair); 1,0,0 is the ceiling of "
                         "a draft tree that branches only on runner-ups: every correction is one")
    ap.add_argument("--trace", type=Path, default=None,
                    help="replay a recorded trace (wanspec emulate --record) instead of the "
                         "synthetic acceptance (--alpha, --ranks), with its device costs")
    ap.add_argument("--worker-pass-flat", action="store_true",
                    help="the worker's passes cost nothing per sequence or KV token carried (a "
                         "bound, not a device: what the worker's drafting speed limits)")
    ap.add_argument("--seats", action="store_true",
                    help="also print what follows a rejection, per remote policy")
    args = ap.parse_args()
    trace: Trace | None = None
    base = SimConfig(requests=args.requests, max_tokens=args.max_tokens, alpha=args.alpha)
    if args.trace is not None:
        if args.ranks:
            ap.error("--ranks is the synthetic model's; a trace replays its recorded ranks")
        trace = read_trace(args.trace)
        base = traced_config(base, trace)
    if args.ranks:
        ranks = [float(x) for x in args.ranks.split(",")]
        if len(ranks) != 3 or min(ranks) < 0 or sum(ranks) > 1:
            ap.error("--ranks takes three probabilities (2nd, 3rd, 4th choice) summing to <= 1")
        rank2, rank3, rank4 = ranks
        base = dataclasses.replace(base, rank2=rank2, rank3=rank3, rank4=rank4)
    head = (f"{'mode':>12} {'tok/s':>7} {'x best':>6} {'tok/seat':>8} {'plain':>6} {'ride':>5} "
            f"{'D/T':>5} {'D batch':>7} {'T batch':>7} {'T ms':>6} {'D ms':>5} {'draft%':>6}")
    for c in (int(x) for x in args.concurrency.split(",")):
        sd = [anatomy(base, "sd", c, g, trace=trace) for g in (int(x) for x in args.sd_windows.split(","))]
        best = max(r["tok_s"] for r in sd)
        rows_sd = [anatomy(base, "target", c, trace=trace)] + sd
        for rtt in (float(x) for x in args.rtt.split(",")):
            point = dataclasses.replace(base, rtt_ms=rtt)
            acceptance = (f"trace {args.trace.name}" if trace is not None
                          else f"alpha {args.alpha:g}")
            print(f"\nc={c}, RTT {rtt:g} ms, {acceptance}\n{head}")
            for r in rows_sd + [anatomy(point, p, c, worker_max_batch=args.worker_max_batch,
                                       worker_pass_flat=args.worker_pass_flat, trace=trace)
                               for p in args.policies.split(",")]:
                print(f"{r['mode']:>12} {r['tok_s']:7.0f} {r['tok_s'] / best:6.3f} "
                      f"{r['tok_per_seat']:8.2f} {r['plain']:6.2f} {r['ride']:5.2f} "
                      f"{r['d_per_t']:5.2f} {r['d_batch']:7.1f} {r['t_batch']:7.1f} "
                      f"{r['t_ms']:6.1f} {r['d_ms']:5.1f} {100 * r['draft_frac']:6.0f}")
            if args.seats:
                for p in args.policies.split(","):
                    print(seats(point, p, c, args.worker_max_batch, args.worker_pass_flat, trace))


if __name__ == "__main__":
    main()
