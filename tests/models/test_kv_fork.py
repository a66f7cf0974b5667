"""Forked KV caches (``Feed.source``): a cache that starts from another cache's prefix continues
exactly as a cache that was fed that prefix itself.

Comparisons: a fork that runs in a pass of the same shape as its reference (alone, the same
number of tokens) must give bit-identical logits (``torch.equal``): the copied keys and values are
the source's own bits.  Where the fork runs in a batch next to other requests and the reference
alone, the shapes differ and the kernels may round differently, so the logits are compared as
tests/models/test_batched_forward.py compares batched passes (``allclose``, atol 1e-5) and the
chosen tokens exactly; in exact mode (batch-invariant kernels) they are bit-identical again.
"""

from __future__ import annotations

import pytest
import torch

from helpers import tiny_llama
from wanspec.models.backend import Feed
from wanspec.models.kv import INITIAL_SLOTS

PREFIX = [17, 101, 5, 250, 9, 77, 33, 120, 64, 2]
BRANCH = [199, 45, 3]
ATOL = 1e-5


def reference(lm, prefix, fork_at, branch):
    """A cache fed ``prefix`` in one pass, cut back to ``fork_at`` and fed ``branch``: what a fork
    of a cache fed ``prefix`` must see."""
    cache = lm.new_cache()
    lm.forward(cache, 0, prefix)
    out = lm.forward(cache, fork_at, branch)
    cache.close()
    return out


@pytest.mark.parametrize("fork_at", [0, 1, 6, len(PREFIX)])
def test_a_fork_continues_as_a_cache_fed_the_prefix_itself(target, fork_at):
    source = target.new_cache()
    before = target.forward(source, 0, PREFIX)
    fork = target.new_cache()
    out = target.forward_batch([Feed(fork, fork_at, BRANCH, source)])[0]
    assert torch.equal(out, reference(target, PREFIX, fork_at, BRANCH))
    assert fork.length == fork_at + len(BRANCH)
    assert source.length == len(PREFIX)  # the source is only read
    again = target.new_cache()
    assert torch.equal(target.forward(again, 0, PREFIX), before)
    # the fork goes on like any cache: rolls back into the copied prefix, takes more tokens
    more = target.forward(fork, fork_at + 1, [8, 9])
    ref = target.new_cache()
    target.forward(ref, 0, PREFIX)
    target.forward(ref, fork_at, BRANCH)
    assert torch.equal(more, target.forward(ref, fork_at + 1, [8, 9]))
    for c in (source, fork, again, ref):
        c.close()


def test_a_fork_overwrites_what_its_cache_held(target):
    """A reused cache (a pruned lane's) that held another, longer sequence forks like a fresh one."""
    source, reused = target.new_cache(), target.new_cache()
    target.forward(source, 0, PREFIX)
    target.forward(reused, 0, [7] * 20)
    out = target.forward_batch([Feed(reused, 4, BRANCH, source)])[0]
    assert torch.equal(out, reference(target, PREFIX, 4, BRANCH))
    source.close()
    reused.close()


def test_a_fork_whose_source_is_fed_in_the_same_pass_reads_it_as_before_the_pass(target):
    source, fork = target.new_cache(), target.new_cache()
    target.forward(source, 0, PREFIX)
    # the source rolls back to 3 and takes other tokens in the pass that forks it at 7
    out_source, out_fork = target.forward_batch([Feed(source, 3, [11, 12, 13, 14, 15]),
                                                 Feed(fork, 7, BRANCH, source)])
    ref_fork = reference(target, PREFIX, 7, BRANCH)
    ref_source = reference(target, PREFIX, 3, [11, 12, 13, 14, 15])
    assert torch.allclose(out_fork, ref_fork, rtol=0, atol=ATOL)
    assert torch.equal(out_fork.argmax(-1), ref_fork.argmax(-1))
    assert torch.allclose(out_source, ref_source, rtol=0, atol=ATOL)
    assert (source.length, fork.length) == (8, 10)
    source.close()
    fork.close()


@pytest.mark.parametrize("a_first", [False, True])
def test_forks_of_forks_in_one_pass_read_their_sources_as_before_it(target, a_first):
    """``b`` forks off ``a`` while ``a`` itself forks off ``root`` in the same pass: ``b`` gets
    ``a``'s old prefix, not the one ``a`` copies in, whatever the order of the feeds."""
    root, a, b = target.new_cache(), target.new_cache(), target.new_cache()
    other = [250, 249, 248, 247, 246, 245, 244, 243]
    target.forward_batch([Feed(root, 0, PREFIX), Feed(a, 0, other)])
    feeds = [Feed(b, 5, BRANCH, a), Feed(a, 6, [1, 2], root)]
    if a_first:
        out_a, out_b = target.forward_batch(feeds[::-1])
    else:
        out_b, out_a = target.forward_batch(feeds)
    assert torch.allclose(out_b, reference(target, other, 5, BRANCH), rtol=0, atol=ATOL)
    assert torch.allclose(out_a, reference(target, PREFIX, 6, [1, 2]), rtol=0, atol=ATOL)
    for c in (root, a, b):
        c.close()


def test_a_fork_into_a_fresh_slot_grows_the_pool():
    lm = tiny_llama(9, name="fork-grow")
    try:
        source = lm.new_cache()
        lm.forward(source, 0, PREFIX)
        spare = [lm.new_cache() for _ in range(INITIAL_SLOTS)]  # never fed
        fork = lm.new_cache()
        assert fork.slot >= lm.pool.slots  # the tensors have no row for it yet
        long_branch = list(range(1, 300))  # past the initial capacity too
        out = lm.forward_batch([Feed(fork, 8, long_branch, source)])[0]
        assert lm.pool.slots > fork.slot
        assert torch.equal(out, reference(lm, PREFIX, 8, long_branch))
        for c in (source, fork, *spare):
            c.close()
    finally:
        lm.close()


def test_bad_forks_are_refused_before_touching_any_cache(target, same_draft):
    source, fork, bystander = target.new_cache(), target.new_cache(), target.new_cache()
    target.forward(source, 0, PREFIX)
    target.forward(bystander, 0, [5, 6])
    foreign = same_draft.new_cache()
    same_draft.forward(foreign, 0, PREFIX)
    with pytest.raises(ValueError, match="another model"):
        target.forward_batch([Feed(bystander, 2, [1]), Feed(fork, 3, BRANCH, foreign)])
    with pytest.raises(ValueError, match="cannot feed at position 11"):
        target.forward_batch([Feed(bystander, 2, [1]), Feed(fork, 11, BRANCH, source)])
    closed = target.new_cache()
    target.forward(closed, 0, PREFIX)
    closed.close()
    with pytest.raises(ValueError, match="closed"):
        target.forward_batch([Feed(bystander, 2, [1]), Feed(fork, 3, BRANCH, closed)])
    assert (bystander.length, fork.length, source.length) == (2, 0, len(PREFIX))
    # a fork whose source was closed while its pass waited is left out like a closed cache
    out = target.forward_batch([Feed(bystander, 2, [1]), Feed(fork, 3, BRANCH, closed)],
                               skip_closed=True)
    assert out[1] is None and out[0] is not None and fork.length == 0
    for c in (source, fork, bystander, foreign):
        c.close()


def test_a_source_closed_during_the_pass_keeps_its_slot_until_the_pass_ends():
    lm = tiny_llama(10, name="fork-hold")
    try:
        source, fork = lm.new_cache(), lm.new_cache()
        lm.forward(source, 0, PREFIX)
        slot = source.slot
        model = lm.model
        seen = []

        class Closing:
            def __call__(self, *args, **kwargs):
                source.close()  # the session is released while its pass runs
                seen.append(lm.pool.in_use)
                return model(*args, **kwargs)

        lm.model = Closing()
        try:
            lm.forward_batch([Feed(fork, 5, BRANCH, source)])
        finally:
            lm.model = model
        assert source.closed and seen == [2]  # held while the pass ran
        assert lm.pool.in_use == 1  # given back as it ended
        assert lm.new_cache().slot == slot
    finally:
        lm.close()


def test_exact_mode_forks_are_bit_identical_in_any_pass():
    lm = tiny_llama(21, hidden=64, layers=2, name="fork-exact", exact=True)
    try:
        source, fork, other = lm.new_cache(), lm.new_cache(), lm.new_cache()
        lm.forward(source, 0, PREFIX)
        lm.forward(other, 0, [3, 4, 5])
        outs = lm.forward_batch([Feed(other, 3, [6, 7]), Feed(source, 4, [8]),
                                 Feed(fork, 6, BRANCH, source)])
        assert torch.equal(outs[2], reference(lm, PREFIX, 6, BRANCH))
        for c in (source, fork, other):
            c.close()
    finally:
        lm.close()


def test_a_fork_whose_source_was_cut_since_is_left_out_of_a_batched_pass(target):
    """A worker's fork can wait in the queue while its source is cut back (the fork's lane was
    pruned meanwhile): in a batched pass (skip_closed) only that fork is left out, not the pass."""
    source, fork, other = target.new_cache(), target.new_cache(), target.new_cache()
    target.forward(source, 0, PREFIX)
    target.forward(source, 2, [9])  # cut to 2, then one more: it holds 3 positions now
    out = target.forward_batch([Feed(fork, 6, BRANCH, source), Feed(other, 0, PREFIX)],
                               skip_closed=True)
    assert out[0] is None and out[1] is not None and fork.length == 0
    with pytest.raises(ValueError, match="cannot feed at position 6"):  # (outside a batch: a bug)
        target.forward_batch([Feed(fork, 6, BRANCH, source)])
    for c in (source, fork, other):
        c.close()
