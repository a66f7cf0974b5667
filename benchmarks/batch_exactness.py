"""Does batching change what the target computes?  Greedy decoding alone vs in batches.

For each model, every prompt is decoded greedily three ways and compared with decoding it alone
(prefill, then one token per pass):

* **batched**: up to ``--batch`` requests share every pass; a request joins as soon as another
  finishes (staggered lengths), so batch composition and row positions keep changing;
* **windows**: alone, but the generated tokens are fed back ``--window`` at a time, as a
  speculative verification feeds them (the pass shape SD already uses);
* **batched windows**: both.

Every model runs twice: with the default kernels and in exact mode (``--exact``).

Reported per model and way: requests whose tokens differ from decoding alone, the largest logit
difference, the share of logit rows that are bit-identical, and at each divergence the gap
between the top two logits (a divergence can only happen at a near-tie).

    .venv/bin/python benchmarks/batch_exactness.py --json benchmarks/results/batch_exactness.json
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path
from typing import Any

import torch


def config_models() -> dict[str, Any]:
    """Llama-family models built from a config (random weights, so logits are flat and near-ties
    common: a harsher test than a trained model), sharing the shipped tokenizer."""
    from transformers import AutoTokenizer, LlamaConfig, LlamaForCausalLM, Qwen2Config, Qwen2ForCausalLM

    from wanspec.models.backend import CausalLM
    from wanspec.models.defaults import DEFAULT_TARGET

    tok = AutoTokenizer.from_pretrained(DEFAULT_TARGET, local_files_only=True)
    out = {}
    torch.manual_seed(0)
    llama = LlamaForCausalLM(LlamaConfig(
        vocab_size=len(tok), hidden_size=256, intermediate_size=688, num_hidden_layers=4,
        num_attention_heads=8, num_key_value_heads=2, max_position_embeddings=1024))
    out["llama-gqa 256x4 (config)"] = CausalLM.from_model(llama, tok, name="llama-gqa")
    torch.manual_seed(1)
    qwen = Qwen2ForCausalLM(Qwen2Config(
        vocab_size=len(tok), hidden_size=192, intermediate_size=512, num_hidden_layers=3,
        num_attention_heads=6, num_key_value_heads=3, max_position_embeddings=1024))
    out["qwen2 192x3 (config)"] = CausalLM.from_model(qwen, tok, name="qwen2")
    return out


def decode_alone(lm, prompt: list[int], n: int) -> tuple[list[int], list[torch.Tensor]]:
    cache = lm.new_cache()
    rows = [lm.forward(cache, 0, prompt)[-1]]
    seq = list(prompt)
    for _ in range(n - 1):
        seq.append(int(rows[-1].argmax()))
        rows.append(lm.forward(cache, len(seq) - 1, [seq[-1]])[-1])
    seq.append(int(rows[-1].argmax()))
    cache.close()
    return seq[len(prompt):], rows


def decode(lm, prompts: list[list[int]], lengths: list[int], refs: list[list[int]],
           batch: int, window: int) -> list[tuple[list[int], list[torch.Tensor]]]:
    """Greedy decoding with up to ``batch`` requests per pass, feeding ``window`` tokens at a time.

    With windows, the tokens fed are the reference's (decoding alone), as a verification feeds
    drafts; the logits of every fed position are kept, and the chosen tokens are the argmax of
    each row -- so both ways compute the same positions, in passes of different shapes.
    """
    from wanspec.models.backend import Feed

    results: list[Any] = [None] * len(prompts)
    waiting = list(range(len(prompts)))
    live: dict[int, dict[str, Any]] = {}
    while waiting or live:
        while waiting and len(live) < batch:
            i = waiting.pop(0)
            live[i] = {"cache": lm.new_cache(), "fed": 0, "rows": []}
        feeds, order = [], []
        for i, st in live.items():
            seq = prompts[i] + refs[i]
            if st["fed"] == 0:
                feeds.append(Feed(st["cache"], 0, prompts[i]))
            else:
                step = min(window, len(prompts[i]) + lengths[i] - 1 - st["fed"])
                feeds.append(Feed(st["cache"], st["fed"], seq[st["fed"] : st["fed"] + step]))
            order.append(i)
        outs = lm.forward_batch(feeds)
        for i, feed, out in zip(order, feeds, outs):
            st = live[i]
            first = feed.start == 0
            st["rows"] += [out[-1]] if first else list(out)
            st["fed"] = feed.start + len(feed.tokens)
            if len(st["rows"]) == lengths[i]:
                st["cache"].close()
                results[i] = ([int(r.argmax()) for r in st["rows"]], st["rows"])
                del live[i]
    return results


def compare(refs, ref_rows, got) -> dict[str, Any]:
    differ, gaps, max_diff, rows, identical = 0, [], 0.0, 0, 0
    for ref, rr, (toks, gr) in zip(refs, ref_rows, got):
        for a, b in zip(rr, gr):
            rows += 1
            identical += bool(torch.equal(a, b))
            max_diff = max(max_diff, float((a - b).abs().max()))
        if toks != ref:
            differ += 1
            k = next(j for j, (x, y) in enumerate(zip(toks, ref)) if x != y)
            top2 = torch.topk(rr[k], 2).values
            gaps.append(float(top2[0] - top2[1]))
    return {"requests_differing": differ, "max_abs_logit_diff": max_diff,
            "bit_identical_rows": identical / rows, "top2_gap_at_divergence": gaps}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--num-prompts", type=int, default=64)
    ap.add_argument("--max-tokens", type=int, default=48)
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--window", type=int, default=5)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--json", type=Path)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    from wanspec.cli.common import quiet_libraries

    quiet_libraries()
    from wanspec.emulate.prompts import DEFAULT_PROMPTS, load_prompts
    from wanspec.models.backend import CausalLM
    from wanspec.models.defaults import DEFAULT_DRAFT, DEFAULT_TARGET

    import copy

    models = {"shipped target": CausalLM(DEFAULT_TARGET, name="target"),
              "shipped draft": CausalLM(DEFAULT_DRAFT, name="draft"), **config_models()}
    for name in list(models):  # the same weights in exact mode (batch-invariant kernels)
        lm = models[name]
        models[f"{name}, --exact"] = CausalLM.from_model(copy.deepcopy(lm.model), lm.tokenizer,
                                                         name=f"{lm.name}-exact", exact=True)
    texts = load_prompts(DEFAULT_PROMPTS.with_name("heldout_large.jsonl"), args.num_prompts)
    report: dict[str, Any] = {"args": vars(args) | {"json": str(args.json)}, "models": {}}
    for name, lm in models.items():
        t0 = time.perf_counter()
        prompts = [lm.encode(t) for t in texts]
        lengths = [args.max_tokens - (i % 7) * 3 for i in range(len(prompts))]  # staggered
        alone = [decode_alone(lm, p, n) for p, n in zip(prompts, lengths)]
        refs, ref_rows = [a[0] for a in alone], [a[1] for a in alone]
        ways = {"batched": (args.batch, 1), "windows": (1, args.window),
                "batched windows": (args.batch, args.window)}
        res = {way: compare(refs, ref_rows, decode(lm, prompts, lengths, refs, b, w))
               for way, (b, w) in ways.items()}
        gaps = torch.stack([torch.topk(r, 2).values for rows in ref_rows for r in rows])
        gaps = gaps[:, 0] - gaps[:, 1]
        noise = max(r["max_abs_logit_diff"] for r in res.values())
        res["reference"] = {"positions": len(gaps), "min_top2_gap": float(gaps.min()),
                            "positions_with_gap_below_2x_noise": int((gaps < 2 * noise).sum())}
        report["models"][name] = res
        print(f"{name}  ({len(prompts)} prompts, {sum(lengths)} tokens, "
              f"{time.perf_counter() - t0:.0f} s): smallest top-2 logit gap decoding alone "
              f"{float(gaps.min()):.2e}, positions with a gap under twice the largest "
              f"difference: {res['reference']['positions_with_gap_below_2x_noise']}")
        for way, r in res.items():
            if way == "reference":
                continue
            div = ", ".join(f"{g:.2e}" for g in r["top2_gap_at_divergence"]) or "-"
            print(f"  {way:16s} requests differing {r['requests_differing']:3d}   max |d logit| "
                  f"{r['max_abs_logit_diff']:.2e}   bit-identical rows "
                  f"{100 * r['bit_identical_rows']:5.1f}%   top-2 gap at divergences: {div}")
    if args.json:
        args.json.write_text(json.dumps(report, indent=1) + "\n")


if __name__ == "__main__":
    main()
