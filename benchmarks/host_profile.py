"""Where the event loop's own time goes per committed token: both sites in one process
(emulate's in-process deployment, flat 30 / 4 ms costs, RTT 0, 8 held-out prompts x 48 tokens,
after one warm-up prompt), profiled with cProfile on the loop's thread.

    .venv/bin/python benchmarks/host_profile.py 16 adaptive     # branch lanes, policy
    .venv/bin/python benchmarks/host_profile.py 0 remote
    .venv/bin/python benchmarks/host_profile.py --forward   # raw forward time by sequences

Prints the loop thread's own CPU per committed token (waiting in select for the passes' threads
excluded), split into the worker's modules, the busy site's and what both use (asyncio, the
codec, the links, the tree, the clock, the accelerators' queues), then the 20 largest module
groups.  Run it with ``PYTHONPATH=<another checkout>/src`` to profile other code the same way.  cProfile adds its
own cost to every Python call, so the figures are upper bounds (docs/results.md §10).  Not a
test: by hand.
"""
import cProfile, pstats, collections, sys, time
import torch
torch.set_num_threads(1)
from wanspec.emulate.runner import Emulation, EmulationConfig
from wanspec.models.backend import CausalLM
from wanspec.models.defaults import DEFAULT_DRAFT, DEFAULT_TARGET
from wanspec.runtime.engine import TimingConfig
from wanspec.emulate.prompts import DEFAULT_PROMPTS, load_prompts


def forward_times() -> None:
    """The shipped models' raw one-token forward, one thread, 100 tokens of KV, by how many
    sequences it carries: what a draft tree's lanes cost on this CPU (no wanspec around it)."""
    from transformers import AutoModelForCausalLM

    for name, path in (("draft", DEFAULT_DRAFT), ("target", DEFAULT_TARGET)):
        model = AutoModelForCausalLM.from_pretrained(path).eval()
        for batch in (1, 4, 17, 64):
            with torch.no_grad():
                cache = model(torch.randint(0, 500, (batch, 100)), use_cache=True).past_key_values
                step = torch.randint(0, 500, (batch, 1))
                t0 = time.perf_counter()
                for _ in range(10):
                    model(step, cache=cache, use_cache=True)
                    cache.crop(-1)
            print(f"{name}: {batch} sequences {100 * (time.perf_counter() - t0):.2f} ms a pass")


if sys.argv[1] == "--forward":
    forward_times()
    sys.exit(0)
branches = int(sys.argv[1]); policy = sys.argv[2]
prompts = load_prompts(DEFAULT_PROMPTS.with_name("heldout_large.jsonl"), 8)
cfg = EmulationConfig(rtts_ms=(0.0,), policies=(policy,), timing=TimingConfig.emulate(30, 4), max_tokens=48, branches=branches)
emu = Emulation(CausalLM(DEFAULT_TARGET, name="target"), CausalLM(DEFAULT_DRAFT, name="draft"), cfg)
emu.remote_results(policy, 0.0, prompts[:1])  # warm-up
pr = cProfile.Profile()
t0 = time.perf_counter(); pr.enable()
res = emu.remote_results(policy, 0.0, prompts)
pr.disable(); wall = time.perf_counter() - t0
tokens = sum(len(r.token_ids) for r in res)
st = pstats.Stats(pr)
groups = collections.Counter()
for (fn, line, name), (cc, nc, tt, ct, callers) in st.stats.items():
    if "/wanspec/" in fn:
        part = fn.split("/wanspec/")[1]
        key = part.split("/")[0] + "/" + part.split("/")[1].split(".")[0] if "/" in part else part
    elif "asyncio" in fn: key = "asyncio"
    elif "torch" in fn or "transformers" in fn: key = "torch/transformers (loop thread)"
    elif "msgpack" in fn: key = "msgpack"
    elif fn == "~": key = "builtin: " + name[:40]
    else: key = "other: " + fn.split("/")[-1][:30]
    groups[key] += tt
waits = sum(v for k, v in groups.items() if "select" in k or "acquire" in k)
total = sum(groups.values()) - waits
print(f"waiting (select/locks: the passes' compute in their threads): {1000*waits/tokens:.3f} ms/token")
print(f"branches {branches} {policy}: {tokens} tokens, loop-thread CPU {1000*total/tokens:.3f} ms/token (wall {1000*wall/tokens:.2f} ms/token)")
WORKER = ("core/worker", "core/branching", "core/capacity", "runtime/worker")
# (the accelerators -- runtime/busy, runtime/placed, core/batcher -- count as shared: both sites
# run one here, and most of their calls are the worker's draft passes, one per lane)
BUSY = ("core/controller", "runtime/controller", "runtime/worker_link", "core/adaptive",
        "core/policy", "core/verify", "core/estimates", "core/rates", "core/calibration",
        "core/metrics", "core/local", "core/view", "core/link", "runtime/local",
        "core/stopping", "core/chain", "runtime/engine", "core/admission", "core/placement")
site = collections.Counter()
for k, v in groups.items():
    if "select" in k or "acquire" in k:
        continue
    site["worker" if k in WORKER else "busy site" if k in BUSY else "shared (asyncio, codec, links, tree, clock, accelerators, builtins)"] += v
for k, v in site.most_common():
    print(f"  {k:55s} {1000*v/tokens:.3f} ms/token")
for k, v in groups.most_common(20):
    print(f"    {k:45s} {1000*v/tokens:.3f}")
