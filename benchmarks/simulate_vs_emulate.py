"""Validate ``wanspec simulate`` against ``wanspec emulate`` on a trace recorded from the same run.

    .venv/bin/python benchmarks/simulate_vs_emulate.py            # shipped pair, 16 prompts x 64
    .venv/bin/python benchmarks/simulate_vs_emulate.py --num-prompts 4 --max-tokens 32 --quick
    .venv/bin/python benchmarks/simulate_vs_emulate.py --jitter-ms 1 --seeds 3 \
        --json benchmarks/results/simulate_vs_emulate_jitter1.json \
        --plot docs/img/simulate_vs_emulate_jitter1.png    # what docs/simulator.md reports

With exact delays a pass's end and a message's arrival often fall on one instant, which the two
order differently; ``--jitter-ms`` with ``--seeds`` compares means over seeded link draws (the
same draws on both sides).  ``--reuse-emulated`` re-runs only the simulated side, on the
emulated runs of one or more earlier ``--json`` files (e.g. more seeds of one policy, emulated
with ``--policies adaptive --first-seed 3 --seeds 7``): each row compares the means over the
seeds emulated for it, simulated with the same seeds.

1. ``emulate`` (the asyncio runtime, real models, virtual clock, emulated device costs) sweeps the
   RTTs with every policy and records the draft's per-position outcomes (``--record``);
2. ``simulate`` replays that trace with the trace's device costs over the same RTTs;
3. prints, per (RTT, mode), both TPOTs and busy-site draft passes per token and their relative
   difference, writes ``benchmarks/results/simulate_vs_emulate.json`` and a plot.

Not a test (minutes of emulation); ``tests/simulate/test_validation.py`` checks a short trace.
"""

from __future__ import annotations

import argparse
import json
import time
from dataclasses import replace
from pathlib import Path
from typing import Any

RESULTS = Path(__file__).parent / "results"
IMG = Path(__file__).parent.parent / "docs" / "img"
RTTS = (0.0, 10.0, 20.0, 30.0, 50.0, 70.0, 100.0, 150.0)
MODES = ("target", "sd", "sd-best", "sd-dynamic", "remote", "always", "entropy", "adaptive")


def rel(a: float, b: float) -> float:
    """Relative difference of ``a`` (simulated) from ``b`` (emulated); 0 when both are 0."""
    return 0.0 if a == b else (a - b) / b if b else float("inf")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--num-prompts", type=int, default=16)
    ap.add_argument("--max-tokens", type=int, default=64)
    ap.add_argument("--rtts", default=",".join(f"{r:g}" for r in RTTS))
    ap.add_argument("--temperature", type=float, default=0.0)
    ap.add_argument("--jitter-ms", type=float, default=0.0,
                    help="extra one-way delay, uniform in [0, J], the same seeded draws on both "
                         "sides (0: every delay exact, so events often tie)")
    ap.add_argument("--seeds", type=int, default=1,
                    help="runs with N link seeds (from --first-seed) on both sides; compares "
                         "their means")
    ap.add_argument("--first-seed", type=int, default=0)
    ap.add_argument("--policies", default="",
                    help="comma-separated policies to run (default: all); the baselines always")
    ap.add_argument("--json", default=str(RESULTS / "simulate_vs_emulate.json"))
    ap.add_argument("--plot", default=str(IMG / "simulate_vs_emulate.png"))
    ap.add_argument("--reuse-emulated", metavar="JSON", nargs="+",
                    help="take the emulated side from earlier runs' --json with the same "
                         "settings (emulate does not depend on the simulator; several files: "
                         "their seeds together), record the trace again and re-run only "
                         "simulate")
    ap.add_argument("--quick", action="store_true", help="do not write results or plots")
    args = ap.parse_args()

    from wanspec.baselines import BASELINES
    from wanspec.cli.loading import load_models
    from wanspec.emulate.prompts import load_prompts
    from wanspec.emulate.runner import Emulation, EmulationConfig
    from wanspec.sampling import SamplingParams
    from wanspec.simulate.config import POLICIES, Roofline, SimConfig
    from wanspec.simulate.sweep import parse_sweep, run_sweep
    from wanspec.simulate.trace import read_trace, write_trace

    rtts = tuple(float(x) for x in args.rtts.split(","))
    seeds = range(args.first_seed, args.first_seed + args.seeds)
    policies = tuple(args.policies.split(",")) if args.policies else POLICIES
    if not set(policies) <= set(POLICIES):
        raise SystemExit(f"--policies: choose from {', '.join(POLICIES)}")
    target, draft = load_models(None, None, need_draft=True)
    prompts = load_prompts(None, args.num_prompts)
    cfg = EmulationConfig(rtts_ms=rtts, max_tokens=args.max_tokens, jitter_ms=args.jitter_ms,
                          sampling=SamplingParams(temperature=args.temperature, seed=1))
    t0 = time.perf_counter()
    emu = Emulation(target, draft, cfg)
    emulated: dict[tuple[float, str], list[dict[str, Any]]] = {}
    if args.reuse_emulated:
        for path in args.reuse_emulated:
            for key, runs in earlier_emulated(Path(path), args).items():
                have = {r["seed"] for r in emulated.get(key, [])}
                if any(r["seed"] in have for r in runs):
                    raise SystemExit(f"{path}: seed emulated twice for RTT {key[0]:g}, {key[1]}")
                emulated.setdefault(key, []).extend(runs)
        emu.reference(prompts)  # (the trace is recorded from the target-only outputs)
    else:
        bases = emu.baselines(prompts)  # (local: the same whatever the link)
        for seed in seeds:
            if seed:
                emu = Emulation(target, draft, replace(cfg, seed=seed))
                emu.reference(prompts)
            for rtt in rtts:
                for mode in BASELINES:
                    emulated.setdefault((rtt, mode), []).append({**bases[mode], "seed": seed})
                for policy in policies:
                    emulated.setdefault((rtt, policy), []).append(
                        {**emu.remote(policy, rtt, bases), "seed": seed})
    t_emu = time.perf_counter() - t0
    header, reqs = emu.trace()
    trace_path = RESULTS / "shipped_pair_trace.jsonl"
    if args.quick:
        trace_path = Path("/tmp") / "wanspec_trace.jsonl"
    write_trace(trace_path, reqs, header)
    trace = read_trace(trace_path)

    t0 = time.perf_counter()
    simulated: dict[tuple[float, str, int], dict[str, Any]] = {}
    for seed in sorted({r["seed"] for runs in emulated.values() for r in runs}):
        sim_cfg = SimConfig(match="trace", requests=len(trace.requests),
                            max_tokens=args.max_tokens, target_ms=header["target_ms"],
                            draft_ms=header["draft_ms"],
                            verify_per_token_ms=header["verify_per_token_ms"],
                            draft_per_token_ms=header["draft_per_token_ms"],
                            gamma=header["gamma"], roofline=Roofline.from_header(header),
                            jitter_ms=args.jitter_ms, seed=seed)
        for r in run_sweep(sim_cfg, [parse_sweep("rtt=" + args.rtts)], POLICIES, trace=trace,
                           jobs=1):
            simulated[(r["rtt_ms"], r["mode"], seed)] = r
    t_sim = time.perf_counter() - t0

    rows: list[dict[str, Any]] = []
    print(f"trace: {len(trace.requests)} requests, per-token acceptance {trace.alpha:.3f}; "
          f"jitter {args.jitter_ms:g} ms, means over each row's seeds; "
          f"emulate {t_emu:.0f} s, simulate {t_sim:.2f} s")
    print(f"{'rtt':>5s} {'mode':9s} {'TPOT emu':>9s} {'TPOT sim':>9s} {'diff':>7s} "
          f"{'busy emu':>9s} {'busy sim':>9s} {'diff':>7s} {'passes':>7s}")
    for (rtt, mode), es in emulated.items():
        ss = [simulated[(rtt, mode, e["seed"])] for e in es]
        row = {"rtt_ms": rtt, "mode": mode, "tokens": es[0]["tokens"],
               "seeds": [e["seed"] for e in es],
               "tpot_ms_emulate": mean(es, "tpot_ms_mean"),
               "tpot_ms_simulate": mean(ss, "tpot_ms_mean"),
               "busy_emulate": mean(es, "busy_site_draft_passes_per_token"),
               "busy_simulate": mean(ss, "busy_site_draft_passes_per_token"),
               "busy_emulate_seeds": [e["busy_site_draft_passes_per_token"] for e in es],
               "busy_simulate_seeds": [s["busy_site_draft_passes_per_token"] for s in ss],
               "lossless_both": all(x["identical_to_target_only"] for x in (*es, *ss))}
        row["tpot_rel_diff"] = rel(row["tpot_ms_simulate"], row["tpot_ms_emulate"])
        row["busy_rel_diff"] = rel(row["busy_simulate"], row["busy_emulate"])
        # the difference in busy-site passes over the whole run (tokens per run, both sides)
        row["busy_passes_diff"] = round((row["busy_simulate"] - row["busy_emulate"])
                                        * es[0]["tokens"], 1)
        rows.append(row)
        print(f"{rtt:5g} {mode:9s} {row['tpot_ms_emulate']:9.2f} "
              f"{row['tpot_ms_simulate']:9.2f} {100 * row['tpot_rel_diff']:+6.2f}% "
              f"{row['busy_emulate']:9.3f} {row['busy_simulate']:9.3f} "
              f"{100 * row['busy_rel_diff']:+6.2f}% {row['busy_passes_diff']:+7.1f}")
    worst_t = max(abs(r["tpot_rel_diff"]) for r in rows)
    worst_b = max(abs(r["busy_rel_diff"]) for r in rows)
    print(f"largest difference: TPOT {100 * worst_t:.2f}%, busy-site passes {100 * worst_b:.2f}%")
    if args.quick:
        return
    out = {"trace": str(trace_path.relative_to(Path(__file__).parent.parent)),
           "trace_alpha": trace.alpha, "header": header, "jitter_ms": args.jitter_ms,
           "seeds": sorted({s for r in rows for s in r["seeds"]}), "num_prompts": args.num_prompts, "max_tokens": args.max_tokens,
           "temperature": args.temperature, "emulated_from": args.reuse_emulated,
           "emulate_s": t_emu, "simulate_s": t_sim,
           "max_abs_tpot_rel_diff": worst_t, "max_abs_busy_rel_diff": worst_b, "rows": rows}
    Path(args.json).write_text(json.dumps(out, indent=2) + "\n")
    plot(rows, Path(args.plot),
         f"shipped pair, {len(trace.requests)} prompts x {args.max_tokens} tokens, "
         f"target {header['target_ms']:g} ms, draft {header['draft_ms']:g} ms, "
         f"jitter {args.jitter_ms:g} ms, " + (
             "one run" if seed_counts(rows) == "1" else f"means of {seed_counts(rows)} link seeds"))


def earlier_emulated(path: Path, args: argparse.Namespace
                     ) -> dict[tuple[float, str], list[dict[str, Any]]]:
    """The emulated side of an earlier run's rows, as per-seed records (TPOT: their mean)."""
    earlier = json.loads(path.read_text())
    for key in ("jitter_ms", "num_prompts", "max_tokens", "temperature"):
        if key in earlier and earlier[key] != getattr(args, key):  # (older files: jitter)
            raise SystemExit(f"{path}: {key} {earlier.get(key)!r}, not {getattr(args, key)!r}")
    return {(r["rtt_ms"], r["mode"]): [
        {"tpot_ms_mean": r["tpot_ms_emulate"], "busy_site_draft_passes_per_token": b,
         "tokens": r.get("tokens", args.num_prompts * args.max_tokens),  # (older files: all
         "identical_to_target_only": r["lossless_both"], "seed": seed}   # ran to max_tokens)
        for seed, b in zip(r.get("seeds", range(len(r["busy_emulate_seeds"]))),
                           r["busy_emulate_seeds"])]   # (older files: seeds 0..N-1)
        for r in earlier["rows"]}


def seed_counts(rows: list[dict[str, Any]]) -> str:
    """How many seeds the rows' means are over: "3", or "3-10" when rows differ."""
    n = sorted({len(r["seeds"]) for r in rows})
    return str(n[0]) if len(n) == 1 else f"{n[0]}-{n[-1]}"


def mean(records: list[dict[str, Any]], key: str) -> float:
    return sum(r[key] for r in records) / len(records)


def plot(rows: list[dict[str, Any]], path: Path, title: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(11, 4.2))
    for i, mode in enumerate(MODES):
        rs = sorted((r for r in rows if r["mode"] == mode), key=lambda r: r["rtt_ms"])
        x = [r["rtt_ms"] for r in rs]
        color = f"C{i}"
        ax1.plot(x, [r["tpot_ms_emulate"] for r in rs], "o", color=color, label=f"{mode} (emulate)")
        ax1.plot(x, [r["tpot_ms_simulate"] for r in rs], "-", color=color, label=f"{mode} (simulate)")
        ax2.plot(x, [r["busy_emulate"] for r in rs], "o", color=color)
        ax2.plot(x, [r["busy_simulate"] for r in rs], "-", color=color)
    ax1.set(xlabel="RTT (ms)", ylabel="time per output token (ms)", title="TPOT")
    ax2.set(xlabel="RTT (ms)", ylabel="draft passes per token", title="busy-site draft passes")
    ax1.legend(fontsize=7, ncol=2)
    fig.suptitle(f"simulate (lines) vs emulate (dots) on the emulated run's trace: {title}",
                 fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=110)


if __name__ == "__main__":
    main()
