"""Shared by the remote-runtime fault tests: the reference run, bounded runners, a TCP engine."""

from __future__ import annotations

import asyncio

from wanspec.core.controller import ControllerConfig
from wanspec.core.policy import PolicyConfig, PolicyName
from wanspec.runtime.controller import RemoteEngine, WorkerLink
from wanspec.runtime.engine import LocalEngine, TimingConfig
from wanspec.sampling import SamplingParams
from wanspec.timing import clock
from wanspec.transport import factory

TIMING = TimingConfig.emulate(30, 4)
PROMPT = "To be, or not to be, that is"
MAX_TOKENS = 32
SAMPLED = SamplingParams(temperature=0.8, top_p=0.9, seed=99)
POLICIES = ["remote", "always", "entropy", "adaptive"]
BOUND_S = 120  # no test may hang: every async main runs under this bound (real seconds)


def reference(target, sampling=SamplingParams(), timing=TIMING, max_tokens=MAX_TOKENS):
    return LocalEngine(target, timing=timing).generate(PROMPT, mode="target", max_tokens=max_tokens,
                                                       sampling=sampling, ignore_eos=True)


def config(policy: str, gamma: int = 4) -> ControllerConfig:
    return ControllerConfig(gamma=gamma, policy=PolicyConfig(PolicyName(policy)))


def virtual(main):
    async def bounded():
        return await asyncio.wait_for(main(), BOUND_S)

    return clock.run(bounded, virtual=True)


def real(main):
    async def bounded():
        return await asyncio.wait_for(main(), BOUND_S)

    return clock.run(bounded)  # real time (the loop every real process runs on)


def tcp_engine(target, local, address: str, *, hello_timeout: float = 5.0):
    async def connector():
        return await factory.connect("tcp", address, timeout=2.0)

    link = WorkerLink(connector, RemoteEngine.hello_for(target), hello_timeout=hello_timeout)
    return link, RemoteEngine(target, link, local_draft=local, config=config("entropy"))
