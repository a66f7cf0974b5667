"""Batched serving on this CPU: 8 requests sharing every pass vs the same 8 one after another.

Real wall time on the shipped pair (no emulated costs), greedy, target-only and standard SD
(gamma 4).  *Sequential*: each request decoded alone, one after another.  *Batched*: all 8 in
flight on one accelerator, every pass shared (continuous batching, `LocalEngine.generate_many`).
The machine is shared and drifts, so the modes run ``--repeat`` times interleaved and every ratio
is taken within one repetition (median and range reported).  Outputs are checked identical to
decoding alone.  Not a test: run it by hand.

    .venv/bin/python benchmarks/bench_batching.py --repeat 3 --json benchmarks/results/bench_batching.json
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from pathlib import Path

import torch


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--requests", type=int, default=8)
    ap.add_argument("--max-tokens", type=int, default=64)
    ap.add_argument("--gamma", type=int, default=4)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--exact", action="store_true", help="the target in exact mode")
    ap.add_argument("--json", type=Path)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    from wanspec.cli.common import quiet_libraries

    quiet_libraries()
    from wanspec.emulate.prompts import DEFAULT_PROMPTS, load_prompts
    from wanspec.models.backend import CausalLM
    from wanspec.models.defaults import DEFAULT_DRAFT, DEFAULT_TARGET
    from wanspec.runtime.engine import LocalEngine

    target = CausalLM(DEFAULT_TARGET, name="target", exact=args.exact)
    draft = CausalLM(DEFAULT_DRAFT, name="draft")
    engine = LocalEngine(target, draft)
    prompts = load_prompts(DEFAULT_PROMPTS.with_name("heldout_large.jsonl"), args.requests)
    kw = dict(max_tokens=args.max_tokens, ignore_eos=True, gamma=args.gamma)
    engine.generate(prompts[0], mode="sd", **kw)  # warm-up
    rates: dict[str, list[float]] = {}
    identical = True
    for _ in range(args.repeat):
        for mode in ("target", "sd"):
            t0 = time.perf_counter()
            alone = [engine.generate(p, mode=mode, **kw).token_ids for p in prompts]
            t1 = time.perf_counter()
            batched, acc = engine.generate_many(prompts, concurrency=len(prompts), mode=mode, **kw)
            t2 = time.perf_counter()
            identical &= [r.token_ids for r in batched] == alone
            tokens = sum(len(t) for t in alone)
            rates.setdefault(f"{mode} sequential", []).append(tokens / (t1 - t0))
            rates.setdefault(f"{mode} batched", []).append(tokens / (t2 - t1))
            rates.setdefault(f"{mode} mean batch", []).append(acc.stats.mean_batch)

    def summary(xs: list[float]) -> dict[str, float]:
        return {"median": statistics.median(xs), "min": min(xs), "max": max(xs)}

    ratios = {f"{m} batched / sequential": [b / s for b, s in
                                            zip(rates[f"{m} batched"], rates[f"{m} sequential"])]
              for m in ("target", "sd")}
    ratios["sd batched / target batched"] = [s / t for s, t in
                                             zip(rates["sd batched"], rates["target batched"])]
    out = {"tokens_per_s": {k: summary(v) for k, v in rates.items()},
           "ratios": {k: summary(v) for k, v in ratios.items()},
           "identical_to_alone": identical, "args": vars(args) | {"json": str(args.json)}}
    print(f"{args.requests} requests x {args.max_tokens} tokens, {args.repeat} repetitions"
          f"{', exact target' if args.exact else ''}")
    for k, v in out["tokens_per_s"].items():
        unit = "" if "batch" in k and "mean" in k else " tokens/s"
        print(f"  {k:24s} {v['median']:8.1f}{unit}  ({v['min']:.1f}-{v['max']:.1f})")
    for k, v in out["ratios"].items():
        print(f"  {k:32s} {v['median']:.2f}x  ({v['min']:.2f}-{v['max']:.2f})")
    print(f"  identical to decoding alone: {identical}")
    if args.json:
        args.json.write_text(json.dumps(out, indent=1) + "\n")


if __name__ == "__main__":
    main()
