"""Single-site benchmark on the shipped pair: target-only vs wanspec standard SD vs HF assisted.

Same process, same prompts, greedy.  Reports tokens/s (measured wall time on this machine) and,
for wanspec, the emulated-timing figures (virtual clock, configured per-pass costs), plus the
ratios between modes.  The machine is shared and its speed drifts, so the four modes are run
``--repeat`` times, interleaved (each repetition runs every mode once), and every ratio is taken
within one repetition; the report gives the median and the range.  Not a test: run it by hand.

    .venv/bin/python benchmarks/bench_local.py --num-prompts 16 --max-tokens 64 --repeat 5
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
    ap.add_argument("--num-prompts", type=int, default=16)
    ap.add_argument("--max-tokens", type=int, default=64)
    ap.add_argument("--gamma", type=int, default=4)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--target-ms", type=float, default=30.0)
    ap.add_argument("--draft-ms", type=float, default=4.0)
    ap.add_argument("--repeat", type=int, default=5)
    ap.add_argument("--json", type=Path, default=None, help="write the summary here")
    args = ap.parse_args()

    torch.set_num_threads(args.threads)
    from wanspec.cli.common import quiet_libraries

    quiet_libraries()
    from wanspec.emulate.prompts import load_prompts
    from wanspec.models.backend import CausalLM
    from wanspec.models.defaults import DEFAULT_DRAFT, DEFAULT_TARGET
    from wanspec.runtime.engine import LocalEngine, TimingConfig

    target = CausalLM(DEFAULT_TARGET, name="target")
    draft = CausalLM(DEFAULT_DRAFT, name="draft")
    prompts = load_prompts(None, args.num_prompts)
    ids = [target.encode(p) for p in prompts]

    measured = LocalEngine(target, draft)
    emulated = LocalEngine(target, draft, TimingConfig.emulate(args.target_ms, args.draft_ms, 0.5))
    runs: list[dict[str, float]] = []  # tokens/s per mode, one dict per repetition

    def run(label: str, fn) -> list[list[int]]:
        fn(ids[0])  # warm-up
        outs, t0 = [], time.perf_counter()
        for x in ids:
            outs.append(fn(x))
        dt = time.perf_counter() - t0
        runs[-1][label] = sum(len(o) for o in outs) / dt
        return outs

    def wanspec(mode: str):
        return lambda x: measured.generate(x, mode=mode, gamma=args.gamma,
                                           max_tokens=args.max_tokens, ignore_eos=True).token_ids

    def hf(assist: bool):
        def go(x):
            inp = torch.tensor([x])
            kw = dict(assistant_model=draft.model) if assist else {}
            out = target.model.generate(inp, attention_mask=torch.ones_like(inp), do_sample=False,
                                        max_new_tokens=args.max_tokens,
                                        min_new_tokens=args.max_tokens, **kw)
            return out[0, len(x):].tolist()
        return go

    identical = {"wanspec sd": True, "HF generate": True, "HF assisted": True}
    for _ in range(args.repeat):
        runs.append({})
        ref = run("wanspec target-only", wanspec("target"))
        sd = run("wanspec standard SD", wanspec("sd"))
        hf_plain = run("HF generate (target)", hf(False))
        hf_asst = run("HF generate(assistant_model)", hf(True))
        identical["wanspec sd"] &= sd == ref
        identical["HF generate"] &= hf_plain == ref
        identical["HF assisted"] &= hf_asst == ref

    emu = {}
    for mode in ("target", "sd"):
        rs = [emulated.generate(x, mode=mode, gamma=args.gamma, max_tokens=args.max_tokens,
                                ignore_eos=True) for x in ids]
        tpot = statistics.mean(r.metrics["tpot_s_mean"] for r in rs)
        emu[mode] = {"tpot_ms": 1000 * tpot,
                     "acceptance": statistics.mean(r.metrics["acceptance_rate"] for r in rs),
                     "mean_acceptance_length": statistics.mean(
                         r.metrics["mean_acceptance_length"] for r in rs)}

    def spread(values: list[float]) -> dict[str, float]:
        return {"median": statistics.median(values), "min": min(values), "max": max(values)}

    rows = {k: spread([r[k] for r in runs]) for k in runs[0]}
    ratios = {
        "wanspec SD / wanspec target-only": spread(
            [r["wanspec standard SD"] / r["wanspec target-only"] for r in runs]),
        "wanspec target-only / HF generate": spread(
            [r["wanspec target-only"] / r["HF generate (target)"] for r in runs]),
        "wanspec SD / HF assisted": spread(
            [r["wanspec standard SD"] / r["HF generate(assistant_model)"] for r in runs]),
        "HF assisted / HF generate": spread(
            [r["HF generate(assistant_model)"] / r["HF generate (target)"] for r in runs]),
    }
    print(f"{'mode':32} {'tok/s median':>12} {'range':>16}   ({args.repeat} repetitions)")
    for k, v in rows.items():
        print(f"{k:32} {v['median']:12.1f} {v['min']:7.1f}-{v['max']:<8.1f}")
    for k, v in ratios.items():
        print(f"{k:36} {v['median']:.2f}x (range {v['min']:.2f}-{v['max']:.2f})")
    print("identical to wanspec target-only:", identical)
    print(f"emulated (target {args.target_ms} ms, draft {args.draft_ms} ms, +0.5 ms/token): "
          f"target-only {emu['target']['tpot_ms']:.2f} ms/token, SD {emu['sd']['tpot_ms']:.2f} ms/token "
          f"({emu['target']['tpot_ms'] / emu['sd']['tpot_ms']:.2f}x), acceptance "
          f"{emu['sd']['acceptance']:.3f}, mean acceptance length {emu['sd']['mean_acceptance_length']:.2f}")
    if args.json:
        args.json.write_text(json.dumps({"measured": rows, "ratios": ratios, "runs": runs,
                                         "identical": identical, "emulated": emu,
                                         "args": vars(args) | {"json": str(args.json)}},
                                        indent=2) + "\n")


if __name__ == "__main__":
    main()
