"""Using wanspec from Python: local SD, and both sites in one process over an emulated WAN.

    .venv/bin/python examples/python_api.py
"""

from wanspec.core.controller import ControllerConfig
from wanspec.core.policy import PolicyConfig, PolicyName
from wanspec.models.backend import CausalLM
from wanspec.models.defaults import DEFAULT_DRAFT, DEFAULT_TARGET
from wanspec.runtime.engine import LocalEngine, TimingConfig
from wanspec.runtime.inproc import InprocDeployment
from wanspec.sampling import SamplingParams
from wanspec.timing import clock
from wanspec.transport.inproc import LinkParams

target = CausalLM(DEFAULT_TARGET, name="target")
draft = CausalLM(DEFAULT_DRAFT, name="draft")
prompt = "JULIET.\nO Romeo, Romeo,"
timing = TimingConfig.emulate(target_ms=30, draft_ms=4, verify_per_token_ms=0.5)
sampling = SamplingParams(temperature=0.8, top_p=0.95, seed=7)

# 1. one site: target-only and standard SD give the same tokens
local = LocalEngine(target, draft, timing)
ref = local.generate(prompt, mode="target", max_tokens=48, sampling=sampling)
sd = local.generate(prompt, mode="sd", max_tokens=48, sampling=sampling)
assert sd.token_ids == ref.token_ids
print(ref.text)
print(f"target-only {ref.metrics['tpot_s_mean'] * 1000:.1f} ms/token, "
      f"SD {sd.metrics['tpot_s_mean'] * 1000:.1f} ms/token (emulated)")


# 2. two sites over a 40 ms link, on a virtual clock
async def remote():
    async with InprocDeployment(target, draft, link=LinkParams(rtt_ms=40, jitter_ms=5),
                                timing=timing,
                                config=ControllerConfig(policy=PolicyConfig(PolicyName.ADAPTIVE))) as dep:
        return await dep.generate(prompt, max_tokens=48, sampling=sampling)


r = clock.run(remote, virtual=True)
assert r.token_ids == ref.token_ids
m = r.metrics
print(f"remote (40 ms RTT): {m['tpot_s_mean'] * 1000:.1f} ms/token, draft passes {m['draft_passes']}")
