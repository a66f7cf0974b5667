"""Many remote requests at once: one busy accelerator batching them, one worker drafting for all.

Every output must equal the same request decoded alone by target-only decoding, whatever the
policy, the draft and the sampling; requests waiting for the worker ride other requests' target
passes; and a worker that dies while its sessions are batched with others loses nothing.
"""

from __future__ import annotations

import asyncio

import pytest
from remote_support import POLICIES, SAMPLED, TIMING, config, virtual

from wanspec.emulate.prompts import DEFAULT_PROMPTS, load_prompts
from wanspec.models.backend import CausalLM
from wanspec.models.defaults import DEFAULT_DRAFT, DEFAULT_TARGET
from wanspec.runtime.engine import LocalEngine
from wanspec.runtime.inproc import InprocDeployment
from wanspec.sampling import SamplingParams
from wanspec.transport.inproc import LinkParams

PROMPTS = ["To be, or not to be, that is", "Now is the winter of our", "All the world's a stage",
           "Friends, Romans, countrymen, lend", "O Romeo, Romeo, wherefore"]
MAX_TOKENS = 20


def alone(target, sampling):
    engine = LocalEngine(target, timing=TIMING)
    return [engine.generate(p, mode="target", max_tokens=MAX_TOKENS, sampling=sampling,
                            ignore_eos=True).token_ids for p in PROMPTS]


def serve_all(target, draft, policy, sampling, *, rtt_ms=30.0, kill_after_s=None, prompts=PROMPTS):
    async def main():
        async with InprocDeployment(target, draft, link=LinkParams(rtt_ms=rtt_ms), timing=TIMING,
                                    config=config(policy), local_draft=policy != "remote") as dep:
            async def killer():
                await asyncio.sleep(kill_after_s)
                dep.kill_worker()

            k = asyncio.create_task(killer()) if kill_after_s is not None else None
            results = await asyncio.gather(*(dep.engine.agenerate(
                p, max_tokens=MAX_TOKENS, sampling=sampling, ignore_eos=True) for p in prompts))
            if k is not None:
                await k
            return results, dep.engine.accelerator.stats

    return virtual(main)


@pytest.mark.parametrize("policy", POLICIES)
@pytest.mark.parametrize("draft_name", ["same_draft", "random_draft"])
def test_concurrent_requests_share_passes_and_match_decoding_alone(request, target, policy,
                                                                   draft_name):
    draft = request.getfixturevalue(draft_name)
    results, stats = serve_all(target, draft, policy, SamplingParams())
    assert [r.token_ids for r in results] == alone(target, SamplingParams())
    assert stats.mean_batch > 1.5  # passes really are shared
    assert all(r.metrics["worker_used"] and not r.metrics["worker_lost"] for r in results)


def test_sampled_requests_under_load_match_decoding_alone(target, random_draft):
    results, _ = serve_all(target, random_draft, "adaptive", SAMPLED)
    assert [r.token_ids for r in results] == alone(target, SAMPLED)


@pytest.fixture(scope="module")
def shipped():
    """The shipped pair: a drafter that is right often, but not always (so requests wait)."""
    target, draft = CausalLM(DEFAULT_TARGET, name="target"), CausalLM(DEFAULT_DRAFT, name="draft")
    yield target, draft
    target.close()
    draft.close()


def test_waiting_requests_ride_other_requests_passes_and_a_lone_one_never_does(shipped):
    target, draft = shipped
    prompts = load_prompts(DEFAULT_PROMPTS.with_name("heldout_large.jsonl"), 6)
    results, stats = serve_all(target, draft, "remote", SamplingParams(), prompts=prompts)
    assert sum(r.metrics["rides"] for r in results) > 0
    engine = LocalEngine(target, timing=TIMING)
    assert [r.token_ids for r in results] == [
        engine.generate(p, mode="target", max_tokens=MAX_TOKENS, ignore_eos=True).token_ids
        for p in prompts]
    (lone,), _ = serve_all(target, draft, "remote", SamplingParams(), prompts=prompts[:1])
    assert lone.metrics["rides"] == 0


@pytest.mark.parametrize("policy", ["remote", "adaptive"])
def test_a_worker_dying_while_its_sessions_are_batched_loses_nothing(target, random_draft,
                                                                     policy):
    results, _ = serve_all(target, random_draft, policy, SamplingParams(), rtt_ms=40.0,
                           kill_after_s=0.25)
    assert [r.token_ids for r in results] == alone(target, SamplingParams())
    assert all(r.metrics["worker_used"] for r in results)
    assert all(r.metrics["worker_lost"] for r in results)  # every one was still running
