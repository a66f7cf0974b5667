"""CausalLM.forward_batch: many requests in one pass, each as if it ran alone; the slot pool."""

from __future__ import annotations

import gc

import pytest
import torch

from helpers import tiny_llama
from wanspec.models.backend import Feed

SEQS = [
    [17, 101, 5, 250, 9, 77, 33, 120, 64, 2, 199, 45],
    [3, 4, 5],
    [250, 249, 248, 247, 246, 245, 244, 243, 242],
    [88],
    [12, 13, 14, 15, 16, 17, 18],
]
ATOL = 1e-5  # logits only; the tokens chosen from them are compared exactly


def alone(lm, seq, start_at):
    """Prefill ``seq[:start_at]`` then feed the rest: logits of the rest, decoded alone."""
    cache = lm.new_cache()
    if start_at:
        lm.forward(cache, 0, seq[:start_at])
    return lm.forward(cache, start_at, seq[start_at:])


def test_each_request_of_a_pass_gets_what_it_gets_alone(target):
    caches = [target.new_cache() for _ in SEQS]
    starts = [5, 1, 2, 0, 6]
    # prefill the caches together (different lengths), then feed the rest together
    pre = [Feed(c, 0, s[:k]) for c, s, k in zip(caches, SEQS, starts) if k]
    target.forward_batch(pre)
    outs = target.forward_batch([Feed(c, k, s[k:]) for c, s, k in zip(caches, SEQS, starts)])
    for out, seq, k, cache in zip(outs, SEQS, starts, caches):
        ref = alone(target, seq, k)
        assert out.shape == ref.shape == (len(seq) - k, target.vocab_size)
        assert torch.allclose(out, ref, rtol=0, atol=ATOL)
        assert torch.equal(out.argmax(-1), ref.argmax(-1))
        assert cache.length == len(seq)


def test_requests_roll_back_independently_within_one_pass(target):
    a, b = target.new_cache(), target.new_cache()
    target.forward_batch([Feed(a, 0, SEQS[0][:8]), Feed(b, 0, SEQS[2])])
    target.forward_batch([Feed(a, 8, [1, 2, 3]), Feed(b, 9, [7])])  # speculative junk on both
    # a rolls back to 6 and takes the true tokens; b rolls back to 4 and takes other tokens
    out_a, out_b = target.forward_batch([Feed(a, 6, SEQS[0][6:]), Feed(b, 4, [9, 9])])
    assert torch.allclose(out_a, alone(target, SEQS[0], 6), rtol=0, atol=ATOL)
    assert torch.allclose(out_b, alone(target, SEQS[2][:4] + [9, 9], 4), rtol=0, atol=ATOL)
    assert (a.length, b.length) == (len(SEQS[0]), 6)


def test_requests_join_and_leave_between_passes_and_slots_are_reused(target):
    first = target.new_cache()
    target.forward(first, 0, SEQS[0][:4])
    second = target.new_cache()
    out1, out2 = target.forward_batch([Feed(first, 4, SEQS[0][4:6]), Feed(second, 0, SEQS[1])])
    assert torch.allclose(out2, alone(target, SEQS[1], 0), rtol=0, atol=ATOL)
    slot = first.slot
    first.close()
    assert first.closed
    with pytest.raises(ValueError, match="closed"):
        target.forward(first, 0, [1])
    third = target.new_cache()
    assert third.slot == slot  # recycled
    out3, out2b = target.forward_batch([Feed(third, 0, SEQS[4]), Feed(second, 3, [5, 6])])
    assert torch.allclose(out3, alone(target, SEQS[4], 0), rtol=0, atol=ATOL)
    assert torch.allclose(out2b, alone(target, SEQS[1] + [5, 6], 3), rtol=0, atol=ATOL)


def test_a_dropped_cache_gives_its_slot_back():
    lm = tiny_llama(5, name="gc")
    try:
        cache = lm.new_cache()
        lm.forward(cache, 0, [1, 2, 3])
        assert lm.pool.in_use == 1
        del cache
        gc.collect()
        assert lm.pool.in_use == 0
    finally:
        lm.close()


def test_the_pool_grows_in_slots_and_positions_keeping_what_it_holds():
    lm = tiny_llama(6, name="grow")
    try:
        long_seq = [(7 * i) % 200 + 3 for i in range(300)]  # past the initial 256 positions
        caches = [lm.new_cache() for _ in range(6)]  # past the initial 4 slots
        lm.forward_batch([Feed(c, 0, long_seq[: 10 + i]) for i, c in enumerate(caches)])
        assert lm.pool.slots >= 6
        outs = lm.forward_batch([Feed(caches[0], 10, long_seq[10:300]), Feed(caches[5], 15, [4])])
        assert lm.pool.capacity >= 300
        assert torch.allclose(outs[0], alone(lm, long_seq[:300], 10), rtol=0, atol=ATOL)
        assert torch.allclose(outs[1], alone(lm, long_seq[:15] + [4], 15), rtol=0, atol=ATOL)
    finally:
        lm.close()


def test_bad_passes_are_refused_before_touching_any_cache(target, same_draft):
    a, b = target.new_cache(), target.new_cache()
    target.forward(a, 0, [1, 2, 3])
    with pytest.raises(ValueError, match="another model"):
        target.forward_batch([Feed(a, 3, [4]), Feed(same_draft.new_cache(), 0, [1])])
    with pytest.raises(ValueError, match="twice"):
        target.forward_batch([Feed(a, 3, [4]), Feed(a, 3, [5])])
    with pytest.raises(ValueError, match="at least one token"):
        target.forward_batch([Feed(a, 3, [4]), Feed(b, 0, [])])
    with pytest.raises(ValueError, match="cannot feed at position 5"):
        target.forward_batch([Feed(a, 5, [4])])
    assert a.length == 3 and b.length == 0
    assert target.forward_batch([]) == []


def test_a_sibling_has_its_own_pool(target):
    twin = target.sibling("twin")
    try:
        assert twin.pool is not target.pool
        out = twin.forward(twin.new_cache(), 0, SEQS[0])
        assert torch.allclose(out, alone(target, SEQS[0], 0), rtol=0, atol=ATOL)
    finally:
        twin.executor.shutdown(wait=False)


def test_a_cache_closed_while_its_pass_runs_gives_its_slot_back_when_the_pass_ends():
    lm = tiny_llama(7, name="deferred")
    try:
        cache = lm.new_cache()
        cache.pass_started()  # as forward_batch does on the accelerator's thread
        cache.close()  # the request was cancelled meanwhile
        assert cache.closed and lm.pool.in_use == 1  # the pass may still write into the slot
        cache.pass_ended()
        assert lm.pool.in_use == 0
        with pytest.raises(ValueError, match="closed"):
            cache.pass_started()
        other = lm.new_cache()
        assert other.slot == cache.slot  # only now is the slot handed out again
    finally:
        lm.close()
