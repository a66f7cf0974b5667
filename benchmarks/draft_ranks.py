"""Where the target's token sits among the shipped draft's choices when the draft's top is wrong.

The simulator's draft trees (docs/simulator.md, "Draft trees") need one fact about real drafts:
at a rejected position, how often is the target's token the draft's 2nd, 3rd or 4th choice (the
alternatives a worker branches from)?  This script measures it for the shipped pair on held-out
prompts, greedy and sampled (temperature 1, the seeded Gumbel noise of wanspec.sampling), and
prints the numbers ``SimConfig.rank2``-``rank4`` default to:

    .venv/bin/python benchmarks/draft_ranks.py --json benchmarks/results/draft_ranks.json

Method (what ``wanspec emulate --record`` does, :mod:`wanspec.emulate.record`): target-only
decoding gives the target's tokens (as every lossless mode outputs them); one teacher-forced
draft pass over prompt + output gives the draft's logits on exactly the committed prefix at every
output position; the draft's choices there are its token and its alternatives, ranked by the
score that picks its token (logits when greedy, noised log-probabilities when sampled:
:func:`~wanspec.sampling.draft_choice`), and the target's token is looked up among the first
four.  The recorder's own ranks are checked against these, position by position.

Also printed: the top-1 acceptance (the share of positions whose draft token is the target's);
the draft's mean probability of its 1st-4th choices at rejected positions, by outcome; and at
every position, by the probability of its top choice, the mean probabilities of its 2nd-4th
choices next to what the simulator's rule gives them (``wanspec.simulate.models.alt_probs``).
"""

from __future__ import annotations

import argparse
import json
import math
import time
from pathlib import Path
from typing import Any

import torch

PROMPTS = Path(__file__).resolve().parent.parent / "src" / "wanspec" / "assets" / "prompts"


def measure(target: Any, draft: Any, prompts: list[str], sampling: Any, max_tokens: int,
            label: str) -> dict[str, Any]:
    from wanspec.emulate.record import record_request, target_rank
    from wanspec.runtime.engine import LocalEngine
    from wanspec.sampling import draft_choice, processed_logprobs

    engine = LocalEngine(target)
    positions = accepted = 0
    # every position: bin of the top choice's probability -> [count, sums of p1..p4]
    by_top: dict[int, list[float]] = {}
    ranks = {0: 0, 2: 0, 3: 0, 4: 0}
    # rejected positions: sum of the draft's probabilities of its 1st..4th choice, per rank
    prob_sums = {k: [0.0] * 4 for k in ranks}
    for text in prompts:
        prompt = target.encode(text)
        out = engine.generate(prompt, mode="target", max_tokens=max_tokens,
                              sampling=sampling).token_ids
        if not out:
            continue
        seq = [*prompt, *out]
        logits = draft.forward(draft.new_cache(), 0, seq[:-1])
        recorded = record_request(draft, prompt, out, sampling)
        for j in range(len(prompt), len(seq)):
            c = draft_choice(logits[j - 1], j, sampling)
            positions += 1
            probs = processed_logprobs(logits[j - 1].reshape(1, -1), sampling)[0].exp()
            first4 = torch.topk(probs, 4).values.tolist()
            acc = by_top.setdefault(_bin(first4[0]), [0.0] * 5)
            acc[0] += 1
            for i, p in enumerate(first4):
                acc[i + 1] += p
            if c.token == seq[j]:
                accepted += 1
                continue
            ranking = [c.token, *c.alternatives][:4]
            rank = target_rank(ranking, seq[j])
            assert recorded.ranks[j] == rank, (label, j, recorded.ranks[j], rank)
            ranks[rank] += 1
            for i, p in enumerate((float(probs[c.token]), *c.alt_probs)):
                prob_sums[rank][i] += p
    rejected = sum(ranks.values())
    res: dict[str, Any] = {
        "sampling": sampling.to_dict(), "prompts": len(prompts), "positions": positions,
        "top1_acceptance": accepted / positions, "rejections": rejected,
    }
    for k, name in ((2, "rank2"), (3, "rank3"), (4, "rank4"), (0, "none")):
        p = ranks[k] / rejected
        res[name] = p
        res[name + "_se"] = math.sqrt(p * (1 - p) / rejected)
    res["mean_choice_probs"] = {
        ("rank%d" % k if k else "none"): [s / ranks[k] for s in prob_sums[k]] if ranks[k] else None
        for k in ranks}
    res["mean_choice_probs"]["all"] = [sum(prob_sums[k][i] for k in ranks) / rejected
                                       for i in range(4)]
    res["choice_probs_by_top"] = [
        {"top": f"[{BINS[b]:.2f}, {BINS[b + 1]:.2f})", "positions": int(v[0]),
         "mean": [x / v[0] for x in v[1:]]} for b, v in sorted(by_top.items())]
    return res


BINS = (0.0, 0.2, 0.4, 0.6, 0.8, 0.95, 1.0001)  # of the top choice's probability


def _bin(p: float) -> int:
    return next(i for i in range(len(BINS) - 1) if p < BINS[i + 1])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--prompts", type=Path, default=PROMPTS / "heldout_large.jsonl",
                    help="prompts file (default: the 128 held-out prompts)")
    ap.add_argument("--max-tokens", type=int, default=64)
    ap.add_argument("--seed", type=int, default=0, help="seed of the sampled setting's noise")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--json", type=Path, default=None)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)

    from wanspec.api import load_pair
    from wanspec.cli.common import quiet_libraries

    quiet_libraries()
    from wanspec.emulate.prompts import load_prompts
    from wanspec.sampling import SamplingParams

    target, draft = load_pair(None, None, with_draft=True)  # the shipped pair
    assert draft is not None
    prompts = load_prompts(args.prompts)
    t0 = time.perf_counter()
    out: dict[str, Any] = {"prompts_file": args.prompts.name, "max_tokens": args.max_tokens}
    for label, sampling in (("greedy", SamplingParams()),
                            ("sampled T=1", SamplingParams(temperature=1.0, seed=args.seed))):
        out[label] = measure(target, draft, prompts, sampling, args.max_tokens, label)
    out["wall_s"] = round(time.perf_counter() - t0, 1)

    print(f"shipped pair, {len(prompts)} prompts of {args.prompts.name}, "
          f"<= {args.max_tokens} tokens each ({out['wall_s']} s)\n")
    print("the target's token at a rejected position, among the draft's choices:\n")
    print(f"{'setting':<12} {'positions':>9} {'top-1 acc':>9} {'rejected':>8} "
          f"{'2nd':>13} {'3rd':>13} {'4th':>13} {'none of top 4':>14}")
    for label in ("greedy", "sampled T=1"):
        r = out[label]
        cells = [f"{r[k]:.3f} ± {r[k + '_se']:.3f}" for k in ("rank2", "rank3", "rank4", "none")]
        print(f"{label:<12} {r['positions']:>9} {r['top1_acceptance']:>9.3f} "
              f"{r['rejections']:>8} {cells[0]:>13} {cells[1]:>13} {cells[2]:>13} {cells[3]:>14}")
    print("\nmean draft probability of its 1st..4th choice at rejected positions, by outcome:\n")
    for label in ("greedy", "sampled T=1"):
        for k, probs in out[label]["mean_choice_probs"].items():
            if probs is not None:
                print(f"{label:<12} {k:<6} " + "  ".join(f"{p:.3f}" for p in probs))
    from wanspec.simulate.models import alt_probs

    print("\nevery position, by the probability p1 of the draft's top choice: mean p1..p4, and "
          "p2..p4 by the simulator's rule (alt_probs) at that mean p1:\n")
    for label in ("greedy", "sampled T=1"):
        for row in out[label]["choice_probs_by_top"]:
            m = row["mean"]
            rule = alt_probs(m[0])
            print(f"{label:<12} p1 in {row['top']:<13} n={row['positions']:>5}  "
                  + "  ".join(f"{p:.3f}" for p in m) + "   rule: "
                  + "  ".join(f"{p:.3f}" for p in rule))
    if args.json:
        args.json.write_text(json.dumps(out, indent=2) + "\n")


if __name__ == "__main__":
    main()
