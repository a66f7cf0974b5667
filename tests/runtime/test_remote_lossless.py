"""Controller + worker over the in-process WAN link: output identical to target-only decoding.

Every run is on virtual time with emulated device costs, so RTTs of hundreds of milliseconds cost
no wall-clock time and the runs are deterministic.
"""

from __future__ import annotations

import asyncio
import random
import zlib

import pytest

from helpers import OracleLM
from wanspec.core.controller import ControllerConfig
from wanspec.core.policy import PolicyConfig, PolicyName
from wanspec.errors import WanspecError
from wanspec.runtime.engine import LocalEngine, TimingConfig
from wanspec.runtime.inproc import InprocDeployment, remote_generate
from wanspec.sampling import SamplingParams
from wanspec.timing import clock
from wanspec.transport.inproc import LinkParams

TIMING = TimingConfig.emulate(30, 4)
PROMPTS = ["To be, or not to be", "whether 'tis nobler in the mind", "the slings and arrows of"]
MAX_TOKENS = 24
GREEDY = SamplingParams()
SAMPLED = SamplingParams(temperature=0.8, top_p=0.9, seed=1234)
SAMPLINGS = {"greedy": GREEDY, "sampled": SAMPLED}
POLICIES = ["remote", "always", "entropy", "adaptive"]
# output offsets (after the prompt) where the oracle drafter is wrong
ORACLE_WRONG_OFFSETS = (1, 4, 5, 9, 10, 11, 17)


_REFS: dict = {}


def reference(target, prompt, sampling: SamplingParams, max_tokens: int = MAX_TOKENS, **kw):
    """Target-only output (the ground truth), cached per arguments."""
    key = (id(target), prompt, sampling, max_tokens, tuple(sorted(kw.items())))
    if key not in _REFS:
        r = LocalEngine(target, timing=TIMING).generate(
            prompt, mode="target", max_tokens=max_tokens, sampling=sampling, **kw)
        _REFS[key] = r
    return _REFS[key]


def oracle_for(target, prompt, sampling, wrong_offsets=ORACLE_WRONG_OFFSETS, **kw) -> OracleLM:
    ids = target.encode(prompt)
    ref = reference(target, prompt, sampling, **kw).token_ids
    return OracleLM(ids + ref, wrong_positions=[len(ids) + o for o in wrong_offsets],
                    tokenizer=target.tokenizer, vocab_size=target.vocab_size, name="oracle")


def case_rng(*parts) -> random.Random:
    return random.Random(zlib.crc32("/".join(map(str, parts)).encode()))


def run_deployment(target, draft, prompt, *, policy: str, rtt_ms: float, jitter_ms: float = 0.0,
                   gamma: int = 4, local_draft: bool | None = None, seed: int = 0,
                   branches: int = ControllerConfig.branches, kill_at_s: float | None = None,
                   **gen):
    local = policy != "remote" if local_draft is None else local_draft
    link = LinkParams(rtt_ms=rtt_ms, jitter_ms=jitter_ms, seed=seed)
    config = ControllerConfig(gamma=gamma, policy=PolicyConfig(PolicyName(policy)),
                              branches=branches)

    async def main():
        async with InprocDeployment(target, draft, link=link, timing=TIMING, config=config,
                                    local_draft=local) as dep:
            if kill_at_s is not None:  # the worker site dies mid-request (virtual seconds)
                asyncio.get_running_loop().call_later(kill_at_s, dep.kill_worker)
            return await asyncio.wait_for(dep.generate(prompt, **gen), 120)  # virtual seconds

    return clock.run(main, virtual=True)


@pytest.fixture(params=["same", "random", "oracle"])
def drafter_kind(request):
    return request.param


def pick_draft(kind, target, same_draft, random_draft, prompt, sampling):
    if kind == "same":
        return same_draft
    if kind == "random":
        return random_draft
    return oracle_for(target, prompt, sampling, ignore_eos=True)


@pytest.mark.parametrize("sampling_name", list(SAMPLINGS))
@pytest.mark.parametrize("policy", POLICIES)
def test_remote_is_identical_to_target_only(policy, sampling_name, drafter_kind, target,
                                            same_draft, random_draft):
    rng = case_rng(policy, sampling_name, drafter_kind)
    prompt = rng.choice(PROMPTS)
    rtt, jitter = rng.uniform(0, 200), rng.uniform(0, 30)
    sampling = SAMPLINGS[sampling_name]
    draft = pick_draft(drafter_kind, target, same_draft, random_draft, prompt, sampling)
    ref = reference(target, prompt, sampling, ignore_eos=True)
    assert len(ref.token_ids) == MAX_TOKENS

    result = run_deployment(target, draft, prompt, policy=policy, rtt_ms=rtt, jitter_ms=jitter,
                            seed=rng.randrange(1000), max_tokens=MAX_TOKENS, sampling=sampling,
                            ignore_eos=True)

    assert result.token_ids == ref.token_ids, f"rtt={rtt:.1f} ms jitter={jitter:.1f} ms"
    assert result.text == ref.text
    assert result.finish_reason == "max_tokens"
    m = result.metrics
    assert m["worker_used"] is True and m["worker_lost"] is None
    assert set(m["draft_passes"]) == {"controller", "worker"}
    assert m["draft_passes"]["worker"] > 0
    assert m["committed_tokens"] == MAX_TOKENS
    if policy == "remote":
        assert m["draft_passes"]["controller"] == 0  # no local draft model at all
    if drafter_kind == "same" and policy == "remote":
        assert m["remote_drafts_accepted"] > 0  # the worker's drafts were actually used
    assert result.mode == "remote"


@pytest.mark.parametrize("rtt_ms", [0.0, 400.0])
@pytest.mark.parametrize("policy", POLICIES)
def test_extreme_rtts(policy, rtt_ms, target, near_draft):
    ref = reference(target, PROMPTS[0], GREEDY, ignore_eos=True)
    r = run_deployment(target, near_draft, PROMPTS[0], policy=policy, rtt_ms=rtt_ms,
                       max_tokens=MAX_TOKENS, ignore_eos=True)
    assert r.token_ids == ref.token_ids


@pytest.mark.parametrize("gamma", [1, 2, 7])
def test_gamma_values(gamma, target, near_draft):
    ref = reference(target, PROMPTS[1], SAMPLED, ignore_eos=True)
    r = run_deployment(target, near_draft, PROMPTS[1], policy="entropy", rtt_ms=60, gamma=gamma,
                       max_tokens=MAX_TOKENS, sampling=SAMPLED, ignore_eos=True)
    assert r.token_ids == ref.token_ids


def test_oracle_wrong_everywhere_is_still_lossless(target):
    prompt = PROMPTS[2]
    draft = oracle_for(target, prompt, GREEDY, wrong_offsets=range(0, MAX_TOKENS + 10),
                       ignore_eos=True)
    ref = reference(target, prompt, GREEDY, ignore_eos=True)
    for policy in POLICIES:
        r = run_deployment(target, draft, prompt, policy=policy, rtt_ms=50,
                           max_tokens=MAX_TOKENS, ignore_eos=True)
        assert r.token_ids == ref.token_ids
        assert r.metrics["remote_drafts_accepted"] == 0


def test_stop_strings_and_eos_stop_at_the_same_token(target, near_draft):
    prompt = PROMPTS[0]
    full = reference(target, prompt, GREEDY, ignore_eos=True)
    stop = target.decode(full.token_ids[:12])[-3:]
    assert stop.strip(), "need a visible stop string"
    ref = reference(target, prompt, GREEDY, stop_strings=(stop,), ignore_eos=True)
    assert ref.finish_reason == "stop_string"
    for policy in POLICIES:
        r = run_deployment(target, near_draft, prompt, policy=policy, rtt_ms=80,
                           max_tokens=MAX_TOKENS, stop_strings=[stop], ignore_eos=True)
        assert r.token_ids == ref.token_ids and r.finish_reason == "stop_string"
    # EOS honoured (whatever the tiny model does with it): same stop as target-only
    ref = reference(target, prompt, SAMPLED)
    r = run_deployment(target, near_draft, prompt, policy="always", rtt_ms=30,
                       max_tokens=MAX_TOKENS, sampling=SAMPLED)
    assert r.token_ids == ref.token_ids and r.finish_reason == ref.finish_reason


def test_streamed_tokens_equal_the_result(target, same_draft):
    got: list[int] = []
    r = run_deployment(target, same_draft, PROMPTS[0], policy="entropy", rtt_ms=40,
                       max_tokens=MAX_TOKENS, ignore_eos=True, on_tokens=got.extend)
    assert got == r.token_ids == reference(target, PROMPTS[0], GREEDY, ignore_eos=True).token_ids


def test_sequential_and_concurrent_requests_share_one_link(target, near_draft):
    config = ControllerConfig(gamma=4, policy=PolicyConfig(PolicyName.ENTROPY))

    async def main():
        async with InprocDeployment(target, near_draft, link=LinkParams(rtt_ms=70, jitter_ms=5),
                                    timing=TIMING, config=config) as dep:
            first = await dep.generate(PROMPTS[0], max_tokens=MAX_TOKENS, ignore_eos=True)
            together = await asyncio.wait_for(asyncio.gather(*[
                dep.generate(p, max_tokens=MAX_TOKENS, ignore_eos=True, sampling=SAMPLED)
                for p in PROMPTS]), 600)
            await asyncio.sleep(1.0)  # let the cancels and session stats cross the link
            return first, together, dep.service.connections, list(dep.service.active)

    first, together, connections, active = clock.run(main, virtual=True)
    assert first.token_ids == reference(target, PROMPTS[0], GREEDY, ignore_eos=True).token_ids
    for p, r in zip(PROMPTS, together):
        assert r.token_ids == reference(target, p, SAMPLED, ignore_eos=True).token_ids
        assert r.metrics["worker_used"]
    ids = [first.metrics["request_id"], *(r.metrics["request_id"] for r in together)]
    assert len(set(ids)) == 4
    assert connections == 1  # one connection, four sessions
    (core,) = active
    assert core.sessions == {}  # every session was released
    assert core.stats.sessions == 4


def test_worker_session_stats_reach_the_controller(target, same_draft):
    config = ControllerConfig(gamma=4, policy=PolicyConfig(PolicyName.REMOTE))

    async def main():
        async with InprocDeployment(target, same_draft, link=LinkParams(rtt_ms=50),
                                    timing=TIMING, config=config, local_draft=False) as dep:
            r = await dep.generate(PROMPTS[1], max_tokens=MAX_TOKENS, ignore_eos=True)
            rid = r.metrics["request_id"]
            stats = await dep.link.wait_stats([rid], timeout=5.0)
            return r, stats.get(rid), dep.worker_device.stats.sequences

    r, st, sequences = clock.run(main, virtual=True)
    assert st is not None
    # the session's passes are its lanes' (a draft tree's lanes may share a device pass): the
    # sequences the worker's device carried, the session being alone on it
    assert st.passes == sequences == r.metrics["draft_passes"]["worker"]
    assert st.drafted <= st.passes


@pytest.mark.parametrize("policy", POLICIES)
@pytest.mark.parametrize("sampling_name", list(SAMPLINGS))
def test_remote_generate(policy, sampling_name, target, near_draft):
    sampling = SAMPLINGS[sampling_name]
    ref = reference(target, PROMPTS[2], sampling, ignore_eos=True)
    r = remote_generate(target, near_draft, PROMPTS[2], rtt_ms=90, jitter_ms=10, policy=policy,
                        gamma=3, timing=TIMING, max_tokens=MAX_TOKENS, sampling=sampling,
                        ignore_eos=True)
    assert r.token_ids == ref.token_ids
    assert r.metrics["worker_used"] and set(r.metrics["draft_passes"]) == {"controller", "worker"}
    assert "worker" in r.devices and "controller" in r.devices
    if policy == "remote":
        assert r.metrics["draft_passes"]["controller"] == 0


def test_remote_generate_on_measured_time(target, same_draft):
    """No emulated costs: a real-time loop with a real 20 ms RTT (tiny models, a few tokens)."""
    ref = LocalEngine(target).generate(PROMPTS[0], mode="target", max_tokens=10, ignore_eos=True)
    r = remote_generate(target, same_draft, PROMPTS[0], rtt_ms=20, policy="entropy",
                        max_tokens=10, ignore_eos=True)
    assert r.token_ids == ref.token_ids
    assert r.timing == "measured"


def test_remote_generate_rejects_unknown_policy(target, same_draft):
    with pytest.raises(WanspecError, match="unknown policy"):
        remote_generate(target, same_draft, PROMPTS[0], rtt_ms=10, policy="bogus")


@pytest.mark.parametrize("policy", [p.value for p in PolicyName])
def test_every_policy_name_is_lossless(policy, target, near_draft):
    """Whatever policies exist (including ones added after the three above), none changes output."""
    for sampling in (GREEDY, SAMPLED):
        ref = reference(target, PROMPTS[1], sampling, ignore_eos=True)
        for rtt in (15.0, 150.0):
            r = run_deployment(target, near_draft, PROMPTS[1], policy=policy, rtt_ms=rtt,
                               jitter_ms=5, max_tokens=MAX_TOKENS, sampling=sampling,
                               ignore_eos=True)
            assert r.token_ids == ref.token_ids, (policy, rtt, sampling)


def test_worker_passes_are_per_request_on_a_shared_deployment(target, same_draft):
    config = ControllerConfig(gamma=4, policy=PolicyConfig(PolicyName.REMOTE))

    async def main():
        async with InprocDeployment(target, same_draft, link=LinkParams(rtt_ms=40),
                                    timing=TIMING, config=config, local_draft=False) as dep:
            out = []
            for _ in range(2):
                r = await dep.generate(PROMPTS[0], max_tokens=MAX_TOKENS, ignore_eos=True)
                rid = r.metrics["request_id"]
                out.append((r, (await dep.link.wait_stats([rid], timeout=5.0))[rid]))
            return out

    (r1, s1), (r2, s2) = clock.run(main, virtual=True)
    assert r1.metrics["draft_passes"]["worker"] == s1.passes
    assert r2.metrics["draft_passes"]["worker"] == s2.passes


def _concurrent_first_requests(target, draft):
    config = ControllerConfig(gamma=4, policy=PolicyConfig(PolicyName.REMOTE))

    async def main():
        async with InprocDeployment(target, draft, link=LinkParams(rtt_ms=40),
                                    timing=TIMING, config=config, local_draft=False) as dep:
            results = await asyncio.wait_for(asyncio.gather(*[
                dep.generate(p, max_tokens=MAX_TOKENS, ignore_eos=True) for p in PROMPTS]), 120)
            return results, dep.service.connections

    return clock.run(main, virtual=True)


def test_concurrent_first_requests_are_lossless(target, same_draft):
    results, _ = _concurrent_first_requests(target, same_draft)
    for p, r in zip(PROMPTS, results):
        assert r.token_ids == reference(target, p, GREEDY, ignore_eos=True).token_ids
        assert r.metrics["worker_used"]


def test_concurrent_first_requests_share_one_connection(target, same_draft):
    _, connections = _concurrent_first_requests(target, same_draft)
    assert connections == 1


@pytest.mark.parametrize("branches", [0, 1, 16])
@pytest.mark.parametrize("sampling_name", list(SAMPLINGS))
def test_draft_trees_of_every_budget_are_lossless(branches, sampling_name, drafter_kind, target,
                                                  same_draft, random_draft):
    """Whatever the tree budget and the drafter (the same model: its runner-ups are often the
    target's token; a random one: its branches are noise; an oracle wrong at set places)."""
    rng = case_rng("trees", branches, sampling_name, drafter_kind)
    prompt = rng.choice(PROMPTS)
    sampling = SAMPLINGS[sampling_name]
    draft = pick_draft(drafter_kind, target, same_draft, random_draft, prompt, sampling)
    ref = reference(target, prompt, sampling, ignore_eos=True)
    r = run_deployment(target, draft, prompt, policy="adaptive", rtt_ms=rng.choice([50, 150]),
                       jitter_ms=rng.uniform(0, 10), seed=rng.randrange(1000),
                       branches=branches, max_tokens=MAX_TOKENS, sampling=sampling,
                       ignore_eos=True)
    assert r.token_ids == ref.token_ids
    assert r.metrics["worker_lost"] is None  # an honest worker's tree is never refused
    if branches == 0:
        assert r.metrics["branch_hits"] == 0


def test_a_worker_whose_runner_ups_are_right_is_followed_onto_its_branches(target, near_draft):
    ref = reference(target, PROMPTS[0], GREEDY, ignore_eos=True)
    r = run_deployment(target, near_draft, PROMPTS[0], policy="remote", rtt_ms=100,
                       branches=16, max_tokens=MAX_TOKENS, ignore_eos=True)
    assert r.token_ids == ref.token_ids
    assert r.metrics["branch_hits"] > 0 and r.metrics["wire_bytes"]["worker_to_controller"] > 0


@pytest.mark.parametrize("kill_at_s", [0.05, 0.2, 0.5])
@pytest.mark.parametrize("policy", ["remote", "adaptive"])
def test_a_worker_dying_mid_tree_loses_nothing(policy, kill_at_s, target, near_draft):
    ref = reference(target, PROMPTS[2], SAMPLED, ignore_eos=True)
    r = run_deployment(target, near_draft, PROMPTS[2], policy=policy, rtt_ms=100, branches=16,
                       kill_at_s=kill_at_s, max_tokens=MAX_TOKENS, sampling=SAMPLED,
                       ignore_eos=True)
    assert r.token_ids == ref.token_ids
