"""Serving under load: the bars of issue 11, measured with `wanspec emulate`'s own runner.

The shipped pair, default emulated device costs (docs/results.md section 4: a 70B-class target on
4 A100s, a 1B-class draft), every site batching its passes, 64 held-out prompts (not the prompts
any constant was tuned on), greedy.  Per load (closed loop, N clients) and RTT: target-only,
standard SD at every window 1-10 (best SD = the highest throughput at that load), and the wanspec
policies.  Prints the bars and writes every record as JSON (and a plot).  Not a test: by hand.

    .venv/bin/python benchmarks/bench_load.py --json benchmarks/results/bench_load.json \\
        --plot docs/img/load_throughput.png
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--prompts", type=int, default=64)
    ap.add_argument("--max-tokens", type=int, default=64)
    ap.add_argument("--concurrency", default="1,8,32,64")
    ap.add_argument("--rtt", type=float, default=30.0, help="the RTT of the main table (ms)")
    ap.add_argument("--rtt-sweep", default="70,150",
                    help="further RTTs where adaptive is checked against target-only")
    ap.add_argument("--policies", default="entropy,adaptive")
    ap.add_argument("--sd-gammas", default="1-10")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--json", type=Path)
    ap.add_argument("--plot", type=Path)
    args = ap.parse_args()

    import torch

    torch.set_num_threads(args.threads)
    from wanspec.cli.common import quiet_libraries

    quiet_libraries()
    from wanspec.cli.emulate import parse_gammas
    from wanspec.emulate.load import Closed, summarize, with_load_ratios
    from wanspec.emulate.prompts import DEFAULT_PROMPTS, load_prompts
    from wanspec.emulate.report import plot_load
    from wanspec.emulate.runner import Emulation, EmulationConfig
    from wanspec.models.backend import CausalLM
    from wanspec.models.defaults import DEFAULT_DRAFT, DEFAULT_TARGET

    target = CausalLM(DEFAULT_TARGET, name="target")
    draft = CausalLM(DEFAULT_DRAFT, name="draft")
    prompts = load_prompts(DEFAULT_PROMPTS.with_name("heldout_large.jsonl"), args.prompts)
    loads = [Closed(int(c)) for c in args.concurrency.split(",")]
    policies = tuple(args.policies.split(","))
    cfg = EmulationConfig(rtts_ms=(args.rtt,), policies=policies, max_tokens=args.max_tokens,
                          sd_gammas=parse_gammas(args.sd_gammas))
    emu = Emulation(target, draft, cfg)
    t0 = time.time()
    records = emu.run_load(prompts, loads)
    print(f"main table: {time.time() - t0:.0f} s")
    # the RTT sweep: adaptive against target-only (which does not depend on the RTT)
    reference = emu.reference(prompts)
    by = {(r["load"], r["mode"], r["rtt_ms"]): r for r in records}
    for rtt in (float(x) for x in args.rtt_sweep.split(",") if x):
        for load in loads:
            rec = summarize(emu.serve_remote("adaptive", rtt, prompts, load), reference,
                            cfg.slo_tpot_ms)
            base = by[load.label, "target", args.rtt]
            best = by[load.label, "sd-best", args.rtt]
            records.append(with_load_ratios(rec, {**base, "rtt_ms": rtt}, best))
    print(f"with the RTT sweep: {time.time() - t0:.0f} s")

    def rec(load: str, mode: str, rtt: float = args.rtt) -> dict:
        return next(r for r in records if r["load"] == load and r["mode"] == mode
                    and r["rtt_ms"] == rtt)

    print(f"\n{'load':>6} {'mode':>18} {'tok/s':>7} {'x target':>8} {'x best SD':>9} "
          f"{'p95 TPOT':>8} {'busy draft':>10} {'batch':>5} {'identical':>9}")
    for r in records:
        if r["rtt_ms"] != args.rtt:
            continue
        name = r["mode"] + (f" (g={r['sd_gamma']})" if r.get("sd_gamma") else "")
        print(f"{r['load']:>6} {name:>18} {r['throughput_tok_s']:7.0f} "
              f"{r['throughput_vs_target']:8.2f} {r['throughput_vs_best_sd']:9.2f} "
              f"{r['tpot_ms_p95']:8.1f} {r['busy_draft_frac']:10.2f} {r['busy_mean_batch']:5.1f} "
              f"{str(r['identical_to_target_only']):>9}")
    bars = {}
    if any(l.concurrency == 32 for l in loads):
        a, b = rec("c=32", "adaptive"), rec("c=32", "sd-best")
        bars["c32_adaptive_vs_best_sd_throughput"] = a["throughput_tok_s"] / b["throughput_tok_s"]
        bars["c32_adaptive_p95_tpot_vs_best_sd"] = a["tpot_ms_p95"] / b["tpot_ms_p95"]
    bars["min_adaptive_throughput_vs_target"] = min(
        r["throughput_vs_target"] for r in records if r["mode"] == "adaptive")
    if any(l.concurrency == 1 for l in loads):
        single = emu.run(prompts)  # the single-request emulation of issue 10, same prompts
        one = next(r for r in single if r["mode"] == "adaptive" and r["rtt_ms"] == args.rtt)
        c1 = rec("c=1", "adaptive")
        bars["c1_e2e_ms_per_token_vs_single_request_runner"] = (c1["e2e_ms_per_token"]
                                                                / one["e2e_ms_per_token"])
    bars["all_identical"] = all(r["identical_to_target_only"] for r in records)
    print("\nbars:")
    for k, v in bars.items():
        print(f"  {k}: {v:.3f}" if isinstance(v, float) else f"  {k}: {v}")
    if args.json:
        args.json.write_text(json.dumps({"records": records, "bars": bars,
                                         "args": {k: str(v) for k, v in vars(args).items()}},
                                        indent=1) + "\n")
    if args.plot:
        plot_load([r for r in records if r["rtt_ms"] == args.rtt], args.plot,
                  title=f"{cfg.timing.describe()}\n{len(prompts)} held-out prompts x "
                        f"{args.max_tokens} tokens, closed loop")


if __name__ == "__main__":
    main()
