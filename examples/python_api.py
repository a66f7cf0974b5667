"""Using wanspec from Python through its public API (``from wanspec import ...``; wanspec.api):
one site, then both sites in one process over an emulated WAN, all on emulated GPU timing.

    .venv/bin/python examples/python_api.py [--max-tokens N] [--rtt 40ms]
"""

import argparse

from wanspec import SamplingParams, TimingConfig, emulate_deployment, generate, load_pair

parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
parser.add_argument("--max-tokens", type=int, default=48)
parser.add_argument("--rtt", default="40ms")
args = parser.parse_args()

pair = load_pair()  # the pair shipped in the package; load_pair(target_dir, draft_dir) for others
prompt = "JULIET.\nO Romeo, Romeo,"
timing = TimingConfig.emulate(target_ms=30, draft_ms=4, verify_per_token_ms=0.5)  # 70B / 1B class
sampling = SamplingParams(temperature=0.8, top_p=0.95, seed=7)

# 1. one site: target-only and standard SD give the same tokens
ref = generate(pair, prompt, mode="target", max_tokens=args.max_tokens, sampling=sampling,
               timing=timing)
sd = generate(pair, prompt, mode="sd", max_tokens=args.max_tokens, sampling=sampling,
              timing=timing)
assert sd.token_ids == ref.token_ids
print(ref.text)
print(f"target-only {ref.metrics['tpot_s_mean'] * 1000:.1f} ms/token, "
      f"SD {sd.metrics['tpot_s_mean'] * 1000:.1f} ms/token (emulated)")

# 2. the draft at a worker site over a WAN link with jitter, on a virtual clock: same tokens
(remote,) = emulate_deployment(pair, [prompt], rtt=args.rtt, jitter="5ms", policy="adaptive",
                               max_tokens=args.max_tokens, sampling=sampling, timing=timing)
assert remote.token_ids == ref.token_ids
m = remote.metrics
print(f"remote ({args.rtt} RTT): {m['tpot_s_mean'] * 1000:.1f} ms/token, "
      f"draft passes {m['draft_passes']}")
