"""RemoteChain: the controller's view of the worker's draft chain (no models, no I/O)."""

from __future__ import annotations

from wanspec.core.chain import DraftToken, RemoteChain


def d(*tokens: int, entropy: float = 0.0) -> list[DraftToken]:
    return [DraftToken(t, entropy, 1.0) for t in tokens]


def toks(drafts: list[DraftToken]) -> list[int]:
    return [x.token for x in drafts]


def test_fresh_chain_is_dead_and_empty():
    c = RemoteChain()
    assert c.dead and c.epoch == -1 and c.end == 0
    assert c.window(0, 4) == []
    assert c.pending_catch_up(10) == 0  # a dead chain has nothing to catch up


def test_first_drafts_start_a_chain_at_their_base():
    c = RemoteChain()
    assert c.on_drafts(0, 3, d(10), now=1.0)
    assert (c.epoch, c.base, c.end, c.dead) == (0, 3, 4, False)
    assert c.last_arrival == 1.0 and c.received == 1 and c.stale_dropped == 0
    assert c.on_drafts(0, 4, d(11, 12), now=2.0)
    assert toks(c.drafts) == [10, 11, 12] and c.end == 6 and c.last_arrival == 2.0
    assert toks(c.window(3, 2)) == [10, 11]
    assert toks(c.window(3, 9)) == [10, 11, 12]


def test_non_contiguous_drafts_are_dropped():
    c = RemoteChain()
    c.on_drafts(0, 3, d(10), 0.0)
    assert not c.on_drafts(0, 5, d(12), 0.1)  # a gap: position 4 missing
    assert not c.on_drafts(0, 3, d(10), 0.2)  # a repeat of an old position
    assert toks(c.drafts) == [10] and c.stale_dropped == 2 and c.received == 3
    assert c.last_arrival == 0.0  # dropped drafts do not count as arrivals


def test_older_epochs_are_dropped_and_newer_epochs_replace_the_chain():
    c = RemoteChain()
    c.on_drafts(0, 3, d(10, 11), 0.0)
    assert c.on_drafts(2, 7, d(20), 0.1)  # a newer epoch may start anywhere
    assert (c.epoch, c.base, toks(c.drafts)) == (2, 7, [20])
    assert not c.on_drafts(1, 8, d(21), 0.2)  # older epoch: stale
    assert not c.on_drafts(0, 8, d(21), 0.2)
    assert toks(c.drafts) == [20] and c.stale_dropped == 2
    assert c.on_drafts(2, 8, d(21), 0.3)
    assert toks(c.drafts) == [20, 21]


def test_sync_drops_committed_head_and_shifts_base():
    c = RemoteChain()
    c.on_drafts(0, 3, d(10, 11, 12, 13), 0.0)
    committed = [1, 2, 3, 10, 11]
    c.sync(committed)
    assert not c.dead
    assert c.base == 5 and toks(c.drafts) == [12, 13]
    assert toks(c.window(5, 4)) == [12, 13]
    assert c.window(4, 4) == []  # only usable from the committed end
    assert c.pending_catch_up(5) == 0


def test_sync_marks_dead_on_disagreement_until_a_newer_epoch():
    c = RemoteChain()
    c.on_drafts(0, 3, d(10, 11, 12), 0.0)
    c.sync([1, 2, 3, 10, 99])  # position 4: drafted 11, committed 99
    assert c.dead and c.drafts == []
    assert c.window(5, 4) == []
    # more drafts of the same (dead) epoch are stale: drafted after the wrong token
    assert not c.on_drafts(0, 6, d(13), 0.1)
    assert c.dead
    # the worker's rolled-back chain (epoch 1) from the committed end
    assert c.on_drafts(1, 5, d(30, 31), 0.2)
    assert not c.dead
    c.sync([1, 2, 3, 10, 99])
    assert toks(c.window(5, 4)) == [30, 31]


def test_sync_while_chain_is_behind_the_committed_prefix():
    """The worker may still be drafting positions the target already committed."""
    c = RemoteChain()
    c.on_drafts(0, 3, d(10), 0.0)
    committed = [1, 2, 3, 10, 11, 12]
    c.sync(committed)
    assert not c.dead and c.base == 4 and c.drafts == []
    assert c.pending_catch_up(len(committed)) == 2
    assert c.window(len(committed), 4) == []
    # the worker's drafts for 4 and 5 arrive, agreeing, then a useful one for 6
    assert c.on_drafts(0, 4, d(11, 12, 13), 0.1)
    c.sync(committed)
    assert c.pending_catch_up(len(committed)) == 0
    assert toks(c.window(6, 4)) == [13]


def test_sync_behind_then_disagreeing_draft_kills_the_chain():
    c = RemoteChain()
    c.on_drafts(0, 3, d(10), 0.0)
    committed = [1, 2, 3, 10, 11, 12]
    c.sync(committed)
    c.on_drafts(0, 4, d(11, 77, 13), 0.1)
    c.sync(committed)
    assert c.dead and c.window(6, 4) == []


def test_chain_starting_beyond_the_committed_end_is_dead():
    c = RemoteChain()
    c.on_drafts(0, 9, d(10), 0.0)
    c.sync([1, 2, 3])
    assert c.dead


def test_sync_on_dead_chain_is_a_no_op():
    c = RemoteChain()
    c.sync([1, 2, 3])
    assert c.dead and c.base == 0


def test_window_keeps_entropy_and_top_prob():
    c = RemoteChain()
    c.on_drafts(0, 1, [DraftToken(5, 2.5, 0.3), DraftToken(6, 0.1, 0.95)], 0.0)
    c.sync([9])
    w = c.window(1, 1)
    assert w == [DraftToken(5, 2.5, 0.3)]
