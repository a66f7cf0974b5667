"""RemoteTree: the controller's view of the worker's draft tree (no models, no I/O).

A tree of one lane is a plain chain: the first tests are that case."""

from __future__ import annotations

import pytest

from wanspec.core.chain import DraftToken
from wanspec.core.tree import RemoteTree, TreeError


def d(*tokens: int, entropy: float = 0.0) -> list[DraftToken]:
    return [DraftToken(t, entropy, 1.0) for t in tokens]


def toks(drafts: list[DraftToken]) -> list[int]:
    return [x.token for x in drafts]


def test_fresh_chain_is_dead_and_empty():
    c = RemoteTree()
    assert c.dead and c.epoch == -1 and c.end == 0
    assert c.window(0, 4) == []
    assert c.pending_catch_up(10) == 0  # a dead chain has nothing to catch up


def test_first_drafts_start_a_chain_at_their_base():
    c = RemoteTree()
    assert c.on_drafts(0, 3, d(10), now=1.0)
    assert (c.epoch, c.tree.current.start, c.end, c.dead) == (0, 3, 4, False)
    assert c.last_arrival == 1.0 and c.received == 1 and c.stale_dropped == 0
    assert c.on_drafts(0, 4, d(11, 12), now=2.0)
    assert toks(c.tree.current.drafts) == [10, 11, 12] and c.end == 6 and c.last_arrival == 2.0
    assert toks(c.window(3, 2)) == [10, 11]
    assert toks(c.window(3, 9)) == [10, 11, 12]


def test_non_contiguous_drafts_are_dropped():
    c = RemoteTree()
    c.on_drafts(0, 3, d(10), 0.0)
    assert not c.on_drafts(0, 5, d(12), 0.1)  # a gap: position 4 missing
    assert not c.on_drafts(0, 3, d(10), 0.2)  # a repeat of an old position
    assert toks(c.tree.current.drafts) == [10] and c.stale_dropped == 2 and c.received == 3
    assert c.last_arrival == 0.0  # dropped drafts do not count as arrivals


def test_older_epochs_are_dropped_and_newer_epochs_replace_the_chain():
    c = RemoteTree()
    c.on_drafts(0, 3, d(10, 11), 0.0)
    assert c.on_drafts(2, 7, d(20), 0.1)  # a newer epoch may start anywhere
    assert (c.epoch, c.tree.current.start, toks(c.tree.current.drafts)) == (2, 7, [20])
    assert not c.on_drafts(1, 8, d(21), 0.2)  # older epoch: stale
    assert not c.on_drafts(0, 8, d(21), 0.2)
    assert toks(c.tree.current.drafts) == [20] and c.stale_dropped == 2
    assert c.on_drafts(2, 8, d(21), 0.3)
    assert toks(c.tree.current.drafts) == [20, 21]


def test_sync_drops_committed_head_and_shifts_base():
    c = RemoteTree()
    c.on_drafts(0, 3, d(10, 11, 12, 13), 0.0)
    committed = [1, 2, 3, 10, 11]
    c.sync(committed)
    assert not c.dead
    assert c.tree.current.start == 5 and toks(c.tree.current.drafts) == [12, 13]
    assert toks(c.window(5, 4)) == [12, 13]
    assert c.window(4, 4) == []  # only usable from the committed end
    assert c.pending_catch_up(5) == 0


def test_sync_marks_dead_on_disagreement_until_a_newer_epoch():
    c = RemoteTree()
    c.on_drafts(0, 3, d(10, 11, 12), 0.0)
    c.sync([1, 2, 3, 10, 99])  # position 4: drafted 11, committed 99
    assert c.dead and c.window(c.end, 99) == []
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
    c = RemoteTree()
    c.on_drafts(0, 3, d(10), 0.0)
    committed = [1, 2, 3, 10, 11, 12]
    c.sync(committed)
    assert not c.dead and c.tree.current.start == 4 and c.window(c.end, 99) == []
    assert c.pending_catch_up(len(committed)) == 2
    assert c.window(len(committed), 4) == []
    # the worker's drafts for 4 and 5 arrive, agreeing, then a useful one for 6
    assert c.on_drafts(0, 4, d(11, 12, 13), 0.1)
    c.sync(committed)
    assert c.pending_catch_up(len(committed)) == 0
    assert toks(c.window(6, 4)) == [13]


def test_sync_behind_then_disagreeing_draft_kills_the_chain():
    c = RemoteTree()
    c.on_drafts(0, 3, d(10), 0.0)
    committed = [1, 2, 3, 10, 11, 12]
    c.sync(committed)
    c.on_drafts(0, 4, d(11, 77, 13), 0.1)
    c.sync(committed)
    assert c.dead and c.window(6, 4) == []


def test_chain_starting_beyond_the_committed_end_is_dead():
    c = RemoteTree()
    c.on_drafts(0, 9, d(10), 0.0)
    c.sync([1, 2, 3])
    assert c.dead


def test_sync_on_dead_chain_is_a_no_op():
    c = RemoteTree()
    c.sync([1, 2, 3])
    assert c.dead and c.tree is None


def test_window_keeps_entropy_and_top_prob():
    c = RemoteTree()
    c.on_drafts(0, 1, [DraftToken(5, 2.5, 0.3), DraftToken(6, 0.1, 0.95)], 0.0)
    c.sync([9])
    w = c.window(1, 1)
    assert w == [DraftToken(5, 2.5, 0.3)]


# ---- branches -------------------------------------------------------------------------------------


def tree_with_branches() -> RemoteTree:
    """Lane 0 drafts 10 11 12 13 for positions 3..6; lane 1 forks at 4 with 21 (then 22 23);
    lane 2 forks off lane 1 at 5 with 32 (then 33)."""
    c = RemoteTree(max_lanes=4)
    assert c.on_drafts(0, 3, d(10, 11, 12, 13), 0.0)
    assert c.on_drafts(0, 4, d(21, 22), 0.1, lane=1, parent=0, fork=4)
    assert c.on_drafts(0, 6, d(23), 0.2, lane=1)
    assert c.on_drafts(0, 5, d(32, 33), 0.3, lane=2, parent=1, fork=5)
    return c


def test_the_window_follows_the_main_line_until_a_commit_takes_a_branch():
    c = tree_with_branches()
    c.sync([1, 2, 3])
    assert toks(c.window(3, 9)) == [10, 11, 12, 13] and c.branch_hits == 0
    judged = c.sync([1, 2, 3, 10, 21])  # the target chose 21 at 4: lane 1's first token
    assert [(p, x.token) for p, x in judged] == [(3, 10), (4, 11)]  # 21 itself is not judged
    assert not c.dead and c.branch_hits == 1
    assert toks(c.window(5, 9)) == [22, 23]  # at once: no round trip
    assert sorted(c.tree.lanes) == [1, 2]  # lane 0 disagrees with the commit: pruned
    c.sync([1, 2, 3, 10, 21, 32])  # and deeper: lane 2 forks off lane 1
    assert toks(c.window(6, 9)) == [33] and c.branch_hits == 2 and sorted(c.tree.lanes) == [2]


def test_a_commit_along_the_main_line_prunes_the_branches_it_passed():
    c = tree_with_branches()
    c.sync([1, 2, 3, 10, 11])
    assert sorted(c.tree.lanes) == [0]  # lane 1 forked at 4, now committed otherwise
    assert toks(c.window(5, 9)) == [12, 13]
    # its later drafts, and branches off it, are stale now
    assert not c.on_drafts(0, 7, d(24), 0.4, lane=1)
    assert not c.on_drafts(0, 6, d(42, 43), 0.4, lane=3, parent=1, fork=6)
    assert c.on_drafts(0, 7, d(14), 0.5)  # the main line goes on


def test_a_commit_off_the_tree_waits_for_the_branch_that_may_still_come():
    c = RemoteTree(max_lanes=3)
    c.on_drafts(0, 3, d(10, 11, 12), 0.0)
    c.sync([1, 2, 3, 10, 77])  # 77 at 4: no branch for it (yet)
    assert c.dead and c.window(5, 9) == []
    assert not c.on_drafts(0, 6, d(13), 0.1)  # the main line past 4 is void
    assert not c.on_drafts(0, 4, d(78, 79), 0.1, lane=1, parent=0, fork=4)  # another branch
    # the worker had drafted the branch the target took: it was on the wire
    assert c.on_drafts(0, 4, d(77, 88, 89), 0.2, lane=2, parent=0, fork=4)
    assert not c.dead
    c.sync([1, 2, 3, 10, 77])
    assert toks(c.window(5, 9)) == [88, 89] and c.branch_hits == 1


def test_the_committed_prefix_may_run_ahead_of_a_branch():
    c = tree_with_branches()
    c.sync([1, 2, 3, 10, 21, 22, 23, 24])  # past what lane 1 has drafted so far
    assert not c.dead and c.pending_catch_up(8) == 1 and c.window(8, 4) == []
    assert c.on_drafts(0, 7, d(24, 25), 0.5, lane=1)
    c.sync([1, 2, 3, 10, 21, 22, 23, 24])
    assert toks(c.window(8, 4)) == [25]


def test_a_new_epoch_replaces_the_whole_tree():
    c = tree_with_branches()
    assert c.on_drafts(1, 5, d(50), 1.0)
    assert c.lanes() == 1 and c.epoch == 1
    assert not c.on_drafts(0, 7, d(24), 1.1, lane=1)  # the old tree's lanes are stale


def test_pace_is_measured_per_lane():
    c = RemoteTree(max_lanes=3)
    c.on_drafts(0, 3, d(10), 0.0)
    c.on_drafts(0, 3, d(21), 0.5, lane=1, parent=0, fork=3)  # (its first message: no pace)
    assert c.pace is None
    c.on_drafts(0, 4, d(11, 12), 0.2)
    assert c.pace == pytest.approx(0.1)  # lane 0: 0.2 s for two drafts, not 0.5 - 0.2


@pytest.mark.parametrize("bad, why", [
    (dict(epoch=1, base=3, lane=1, parent=0, fork=3), "starts with lane 1"),
    (dict(epoch=0, base=3, lane=1, parent=0, fork=4), "not at its fork"),
    (dict(epoch=0, base=9, lane=1, parent=0, fork=9), "outside what that lane drafted"),
    (dict(epoch=0, base=4, lane=1, parent=7, fork=4), "unknown lane 7"),
    (dict(epoch=0, base=4, lane=1, parent=0, fork=4, first=11), "its parent's own token"),
])
def test_malformed_branches_raise(bad, why):
    c = RemoteTree(max_lanes=3)
    c.on_drafts(0, 3, d(10, 11, 12), 0.0)
    first = bad.pop("first", 99)
    with pytest.raises(TreeError, match=why):
        c.on_drafts(drafts=d(first, 5), now=0.1, **bad)


def test_a_repeated_branch_or_too_many_lanes_raise():
    c = RemoteTree(max_lanes=3)
    c.on_drafts(0, 3, d(10, 11, 12), 0.0)
    c.on_drafts(0, 4, d(21), 0.1, lane=1, parent=0, fork=4)
    with pytest.raises(TreeError, match="repeats"):
        c.on_drafts(0, 4, d(21), 0.1, lane=2, parent=0, fork=4)
    c = RemoteTree(max_lanes=2)
    c.on_drafts(0, 3, d(10, 11, 12), 0.0)
    c.on_drafts(0, 4, d(21), 0.1, lane=1, parent=0, fork=4)
    with pytest.raises(TreeError, match="more than 2 lanes"):
        c.on_drafts(0, 5, d(22), 0.1, lane=2, parent=0, fork=5)


def test_a_session_without_branches_refuses_them():
    c = RemoteTree()
    c.on_drafts(0, 3, d(10, 11), 0.0)
    with pytest.raises(TreeError, match="without branches"):
        c.on_drafts(0, 4, d(21), 0.1, lane=1, parent=0, fork=4)


def test_a_killed_tree_takes_nothing():
    c = tree_with_branches()
    c.kill()
    assert c.dead and not c.on_drafts(0, 7, d(14), 1.0) and c.window(3, 4) == []
