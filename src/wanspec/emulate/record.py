"""``wanspec emulate --record``: turn an emulated run into an acceptance trace for the simulator.

What a trace must hold, per request, is the one fact the simulator's synthetic models need at
every output position ``j``: *would a draft conditioned on the committed prefix propose the
target's token?* (and with what entropy).  The emulated runs only test some positions (a window
stops at its first rejection, plain steps test none), so instead of logging verifications the
recorder asks the draft model directly: one teacher-forced pass over ``prompt + output`` gives the
draft's proposal for every position on exactly the prefix the real worker drafts on, with the
same coupled sampling noise keyed by (seed, position) when sampling.  The simulator then replays
the real pattern of acceptances (runs, bursts, entropy) everywhere, not only where one policy
happened to look.

At a rejected position the trace also holds the *rank* of the target's token among the draft's
choices (2-4: its 2nd to 4th choice, 0: none of its top :data:`RANK_DEPTH`), what decides whether
a draft tree's branch from a runner-up token catches the correction (docs/simulator.md, "Draft
trees").  The ranking is the draft's own: its token, then its alternatives
(:func:`~wanspec.sampling.draft_choice`: by logits when greedy, by noised log-probabilities when
sampling).  Every position also records the draft's probabilities of its token and alternatives,
which a worker growing a tree weighs its branches by.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Sequence

from wanspec.models.backend import CausalLM, Feed, KVCache
from wanspec.runtime.engine import GenerationResult, TimingConfig
from wanspec.sampling import DraftChoice, SamplingParams, draft_choice
from wanspec.simulate.config import Roofline
from wanspec.simulate.models import ALTERNATIVES
from wanspec.simulate.trace import (
    AFTER_ALTERNATIVE_DEPTH,
    AFTER_MISS_DEPTH,
    RANK_DEPTH,
    TraceRequest,
)


def target_rank(ranking: Sequence[int], token: int) -> int:
    """1-based rank of ``token`` in the draft's ``ranking`` (0: not in it)."""
    for i, t in enumerate(ranking):
        if t == token:
            return i + 1
    return 0


def _probs(c: DraftChoice) -> tuple[float, ...]:
    """``(top_prob, *alt_probs)`` of a draft choice, rounded as a trace holds them."""
    return tuple(round(p, 6) for p in (c.top_prob, *c.alt_probs))


def record_request(draft: CausalLM, prompt: Sequence[int], output: Sequence[int],
                   sampling: SamplingParams) -> TraceRequest:
    """Every output position's outcome for a draft on the committed prefix (one draft pass) with
    its entropy and probabilities (of its token and alternatives), and after each miss the rank
    of the target's token among the draft's choices and the entropy and probabilities of the
    draft's next proposals as it goes on from its own wrong token (:data:`AFTER_MISS_DEPTH`
    one-token passes per miss: what the worker's chain and a local round report there, and
    what a policy reading entropies sees before the miss is found).  At every position it also
    drafts on from each of the draft's alternatives that is not the target's token
    (:data:`AFTER_ALTERNATIVE_DEPTH` passes, the alternatives batched): what a draft tree's
    branch from a wrong alternative proposes, and weighs its own branches by."""
    n_prompt = len(prompt)
    rec = TraceRequest(n_prompt, output_tokens=len(output) or None)
    if not output:
        return rec
    seq = [*prompt, *output]
    # row i of the logits predicts position i + 1: rows n_prompt-1 .. len-2 cover the output.
    # ``prefix`` keeps the whole committed sequence; every draft off it is a fork of it.
    prefix = draft.new_cache()
    logits = draft.forward(prefix, 0, seq[:-1])
    choices = [draft_choice(logits[j - 1], j, sampling) for j in range(n_prompt, len(seq))]
    lanes = [draft.new_cache() for _ in range(1 + ALTERNATIVES)]
    try:
        for j, c in zip(range(n_prompt, len(seq)), choices):
            after = rank = after_probs = None
            further: list[tuple[float, ...]] = []
            if c.token != seq[j]:
                rank = target_rank([c.token, *c.alternatives][:RANK_DEPTH], seq[j])
                if j + 1 < len(seq):
                    # the chain (or a local round) goes on from its own wrong token
                    steps = _draft_on(draft, prefix, lanes[:1], j, [c.token], sampling,
                                      1 + AFTER_MISS_DEPTH)[0]
                    after, after_probs = steps[0][0], steps[0][1:]
                    further = steps[1:]
            rec.add(j, c.token == seq[j], round(c.entropy, 6), after, rank, _probs(c),
                    after_probs, further)
            if j + 1 < len(seq):
                wrong = [(i, a) for i, a in enumerate(c.alternatives[:ALTERNATIVES])
                         if a != seq[j]]
                if wrong:
                    runs = _draft_on(draft, prefix, lanes[1:1 + len(wrong)], j,
                                     [a for _, a in wrong], sampling, AFTER_ALTERNATIVE_DEPTH)
                    for (i, _), steps in zip(wrong, runs):
                        rec.after_alternative[(j, i)] = steps
    finally:
        for cache in (prefix, *lanes):
            cache.close()
    return rec


def _draft_on(draft: CausalLM, prefix: KVCache, caches: Sequence[KVCache], at: int,
              firsts: Sequence[int], sampling: SamplingParams, depth: int
              ) -> list[list[tuple[float, ...]]]:
    """Per token of ``firsts``: put it at ``at`` after the committed prefix (a fork of
    ``prefix`` in its own cache of ``caches``) and draft ``depth`` proposals on from it, each fed
    back, in batched passes; each proposal's ``(entropy, top_prob, *alt_probs)``."""
    out: list[list[tuple[float, ...]]] = [[] for _ in firsts]
    feeds = [Feed(cache, at, [tok], prefix) for cache, tok in zip(caches, firsts)]
    for k in range(depth):
        rows = draft.forward_batch(feeds)
        nxt = [draft_choice(row[-1], at + 1 + k, sampling) for row in rows]
        for steps, c in zip(out, nxt):
            steps.append((round(c.entropy, 6), *_probs(c)))
        feeds = [Feed(f.cache, at + 1 + k, [c.token]) for f, c in zip(feeds, nxt)]
    return out


def record_trace(draft: CausalLM, prompts: Sequence[Sequence[int]],
                 results: Sequence[GenerationResult],
                 sampling: SamplingParams) -> list[TraceRequest]:
    """One trace request per prompt, from the target-only outputs ``results``."""
    for p, r in zip(prompts, results):
        if len(p) != r.prompt_tokens:
            raise ValueError(f"prompt of {len(p)} tokens recorded as {r.prompt_tokens}")
    return [record_request(draft, p, r.token_ids, sampling) for p, r in zip(prompts, results)]


def trace_header(target: CausalLM, draft: CausalLM, timing: TimingConfig, gamma: int,
                 max_tokens: int, sampling: SamplingParams, host_stack_ms: float = 0.0
                 ) -> dict[str, Any]:
    """What the run was, so a replay can use the same device costs (``simulate`` reads these)."""
    head: dict[str, Any] = {"source": "wanspec emulate --record", "target": target.name,
                            "draft": draft.name, "gamma": gamma, "max_tokens": max_tokens,
                            "sampling": sampling.to_dict()}
    if timing.emulated:
        assert timing.target is not None and timing.draft is not None
        head.update(target_ms=timing.target.base_ms,
                    verify_per_token_ms=timing.target.per_token_ms,
                    draft_ms=timing.draft.base_ms, draft_per_token_ms=timing.draft.per_token_ms)
        # the roofline terms a replay charges too (every one, zeros included: a flat-cost run
        # is replayed flat, under load as well)
        head.update(dataclasses.asdict(Roofline.of(timing.target, timing.draft)))
        if timing.host_overhead:  # its times include this machine's host work (simulate's not)
            head["host_overhead"] = "measured"
            if host_stack_ms:  # and a transport stack's, charged a message at each end
                head["host_stack_ms"] = host_stack_ms
    return head
