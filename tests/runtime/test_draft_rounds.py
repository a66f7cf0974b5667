"""Local draft rounds at the runtime (``RunDraft.count``): a round run in one call to the
device proposes, costs and counts exactly what its passes one call each would, alone and
batched with other requests' rounds of other lengths."""

from __future__ import annotations

import asyncio

import pytest

from remote_support import virtual
from wanspec.core.actions import DraftDone, RunDraft, Site
from wanspec.core.batcher import PassKind
from wanspec.runtime.busy import SharedAccelerator
from wanspec.runtime.engine import LocalEngine, TimingConfig
from wanspec.runtime.placed import PlacedModel
from wanspec.sampling import SamplingParams
from wanspec.timing.device import Device, PassCost

PROMPT = (17, 101, 5, 250, 9, 77, 33, 120)
SAMPLINGS = [SamplingParams(), SamplingParams(temperature=0.8, top_p=0.9, seed=11)]
COST = PassCost(4.0, 0.5, kv_ms_per_ktoken=1.0, per_sequence_ms=0.25)


def fields(d: DraftDone) -> tuple:
    return (d.token, d.entropy, d.top_prob, d.alternatives, d.alt_probs)


async def one_by_one(placed: PlacedModel, prompt, count: int, sampling) -> list[DraftDone]:
    """The round's passes as separate calls: each feeds the token the one before proposed."""
    cache = placed.lm.new_cache()
    done = [await placed.run_draft(cache, RunDraft(1, Site.CONTROLLER, 0, tuple(prompt)),
                                   sampling)]
    for i in range(1, count):
        run = RunDraft(1, Site.CONTROLLER, len(prompt) + i - 1, (done[-1].token,))
        done.append(await placed.run_draft(cache, run, sampling))
    cache.close()
    return done


@pytest.mark.parametrize("sampling", SAMPLINGS, ids=["greedy", "sampled"])
def test_a_round_proposes_costs_and_counts_what_its_passes_do_one_by_one(near_draft, sampling):
    async def main():
        alone, fused = Device("alone"), Device("fused")
        want = await one_by_one(PlacedModel(near_draft, alone, COST, "draft"), PROMPT, 4,
                                sampling)
        cache = near_draft.new_cache()
        got = await PlacedModel(near_draft, fused, COST, "draft").run_draft(
            cache, RunDraft(1, Site.CONTROLLER, 0, PROMPT, 4), sampling)
        cache.close()
        return want, got, alone.stats, fused.stats

    want, got, alone, fused = virtual(main)
    assert [fields(d) for d in got.proposals] == [fields(d) for d in want]
    assert fused.busy_s == pytest.approx(alone.busy_s)  # the same passes charged
    assert (fused.passes, fused.sequences, fused.by_model) == (4, 4, {"draft": 4})


def test_rounds_of_different_lengths_batched_get_what_they_get_alone(near_draft):
    prompts = [PROMPT, (3, 4, 5), (250, 251)]
    counts = [3, 1, 2]

    async def main():
        want = [await one_by_one(PlacedModel(near_draft, Device("ref"), COST, "draft"), p, c,
                                 SamplingParams()) for p, c in zip(prompts, counts)]
        device = Device("busy")
        acc = SharedAccelerator(None, PlacedModel(near_draft, device, COST, "draft"))
        caches = [near_draft.new_cache() for _ in prompts]
        futures = [acc.enqueue(PassKind.DRAFT, cache, RunDraft(i + 1, Site.CONTROLLER, 0,
                                                                tuple(p), c), SamplingParams())
                   for i, (cache, p, c) in enumerate(zip(caches, prompts, counts))]
        got = await asyncio.gather(*futures)
        for cache in caches:
            cache.close()
        return want, got, device.stats, acc.stats

    want, got, device, queue = virtual(main)
    for w, g, c in zip(want, got, counts):
        # (tokens: a batched pass's probabilities may differ from one request's in the last bits,
        # docs/architecture.md "models/: passes, batches and exactness"; a draft's only decide its proposals)
        assert [d.token for d in g.proposals] == [d.token for d in w] and len(w) == c
    # one call: a pass of three rounds, then of the two still drafting, then of the last one
    assert (device.passes, device.sequences) == (3, 3 + 2 + 1)
    assert (queue.passes, queue.sequences) == (3, 6)
    shape = [(sum(map(len, prompts)), 3, max(map(len, prompts)), sum(map(len, prompts))),
             (2, 2, 1, len(prompts[0]) + 1 + len(prompts[2]) + 1),
             (1, 1, 1, len(prompts[0]) + 2)]
    assert device.busy_s == pytest.approx(sum(
        COST.seconds(n, sequences=s, longest=lo, context=ctx) for n, s, lo, ctx in shape))


def test_standard_sd_runs_each_round_in_one_call_to_the_device(target, near_draft, monkeypatch):
    """LocalEngine's SD (the baseline every policy is measured against gets the same): a round
    of gamma draft passes is one device call; the output is target-only decoding's."""
    calls = []
    run = Device.run

    async def counting(self, fn, **kw):
        calls.append(1 + len(kw.get("more", ())))
        return await run(self, fn, **kw)

    monkeypatch.setattr(Device, "run", counting)
    engine = LocalEngine(target, near_draft, TimingConfig.emulate(30.0, 4.0))
    result = engine.generate(list(PROMPT), mode="sd", gamma=4, max_tokens=24, ignore_eos=True)
    reference = engine.generate(list(PROMPT), mode="target", max_tokens=24, ignore_eos=True)
    assert result.token_ids == reference.token_ids
    m = result.metrics
    rounds = m["verify_rounds"]
    assert len(calls) - reference.metrics["target_passes"] == m["target_passes"] + rounds
    assert m["draft_passes"]["controller"] == m["drafted_tokens"]  # a pass per draft, as before
    assert result.devices["controller"]["passes"] == m["target_passes"] + m["draft_passes"][
        "controller"]
