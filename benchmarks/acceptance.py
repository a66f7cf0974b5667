"""Model-card figures for the shipped pair: held-out acceptance at gamma=4 and per-pass CPU cost.

    .venv/bin/python benchmarks/acceptance.py --json benchmarks/results/acceptance.json
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from pathlib import Path

import torch


def median_ms(fn, repeat: int = 30) -> float:
    fn()
    times = []
    for _ in range(repeat):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return 1000 * statistics.median(times)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--gamma", type=int, default=4)
    ap.add_argument("--max-tokens", type=int, default=64)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--json", type=Path, default=None)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)

    from wanspec.cli.common import quiet_libraries

    quiet_libraries()
    from wanspec.emulate.prompts import load_prompts
    from wanspec.models.backend import CausalLM
    from wanspec.models.defaults import DEFAULT_DRAFT, DEFAULT_TARGET
    from wanspec.runtime.engine import LocalEngine
    from wanspec.sampling import SamplingParams

    target = CausalLM(DEFAULT_TARGET, name="target")
    draft = CausalLM(DEFAULT_DRAFT, name="draft")
    engine = LocalEngine(target, draft)
    prompts = load_prompts()
    out: dict = {"gamma": args.gamma, "prompts": len(prompts), "max_tokens": args.max_tokens}
    for label, sampling in (("greedy", SamplingParams()),
                            ("sampled T=0.8 top-p 0.95", SamplingParams(0.8, 0, 0.95, 0))):
        acc = drafted = rej = rounds = committed = 0
        for p in prompts:
            r = engine.generate(p, mode="sd", gamma=args.gamma, max_tokens=args.max_tokens,
                                sampling=sampling, ignore_eos=True)
            m = r.metrics
            acc += m["accepted_tokens"]
            drafted += m["drafted_tokens"]
            rounds += m["verify_rounds"]
            committed += round(m["mean_acceptance_length"] * m["verify_rounds"])
            rej += m["verify_rejections"]
        out[label] = {
            "per_token_acceptance": acc / (acc + rej),
            "accepted_over_drafted": acc / drafted,
            "mean_acceptance_length": committed / rounds,
        }

    ids = target.encode(prompts[0])
    for name, lm in (("target", target), ("draft", draft)):
        cache = lm.new_cache()
        lm.forward(cache, 0, ids)
        n = len(ids)
        out[f"{name}_decode_ms"] = median_ms(lambda: lm.forward(cache, n, [ids[-1]]))
        out[f"{name}_verify5_ms"] = median_ms(lambda: lm.forward(cache, n, ids[-5:]))
        out[f"{name}_params_m"] = sum(p.numel() for p in lm.model.parameters()) / 1e6
    print(json.dumps(out, indent=2))
    if args.json:
        args.json.write_text(json.dumps(out, indent=2) + "\n")


if __name__ == "__main__":
    main()
