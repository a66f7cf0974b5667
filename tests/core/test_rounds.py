"""Local draft rounds (``RunDraft.count``): what each pass of a round feeds, rounds of different
lengths side by side, and a request leaving mid-round."""

from __future__ import annotations

import pytest

from wanspec.core.actions import DraftDone, RunDraft, Site
from wanspec.core.rounds import RoundFeed, round_shapes, run_rounds


def rd(op: int, start: int, tokens: tuple[int, ...], count: int) -> RunDraft:
    return RunDraft(op, Site.CONTROLLER, start, tokens, count)


def test_each_later_pass_feeds_the_token_the_pass_before_proposed():
    actions = [rd(1, 0, (5, 6, 7), 3), rd(2, 4, (9,), 1), rd(3, 2, (1, 2), 2)]
    passes: list[list[RoundFeed]] = []

    def one_pass(step: int, feeds: list[RoundFeed]) -> list[DraftDone]:
        assert step == len(passes)
        passes.append(feeds)
        # the proposal for a feed's next position: 100 * request + position
        return [DraftDone(actions[f.index].op, 100 * (f.index + 1) + f.start + len(f.tokens),
                          0.5, 0.9) for f in feeds]

    out = run_rounds(actions, one_pass)
    assert passes == [
        [RoundFeed(0, 0, (5, 6, 7)), RoundFeed(1, 4, (9,)), RoundFeed(2, 2, (1, 2))],
        [RoundFeed(0, 3, (103,)), RoundFeed(2, 4, (304,))],  # round 2 (one pass) is done
        [RoundFeed(0, 4, (104,))],
    ]
    assert [p.token for p in out[0].proposals] == [103, 104, 105]
    assert [p.token for p in out[1].proposals] == [205]
    assert [p.token for p in out[2].proposals] == [304, 305]
    assert all(p.op == a.op for r, a in zip(out, actions) for p in r.proposals)
    # what the device is charged: the same passes, counted before anything is drafted
    assert [[(f.index, f.start, len(f.tokens)) for f in s] for s in round_shapes(actions)] == [
        [(f.index, f.start, len(f.tokens)) for f in p] for p in passes]


def test_a_request_that_leaves_mid_round_gets_none_and_is_not_fed_again():
    actions = [rd(1, 0, (5,), 3), rd(2, 0, (6,), 3)]
    fed: list[list[int]] = []

    def one_pass(step: int, feeds: list[RoundFeed]) -> list[DraftDone | None]:
        fed.append([f.index for f in feeds])
        return [None if (f.index == 1 and step == 1) else DraftDone(1, 7, 0.5, 0.9)
                for f in feeds]

    out = run_rounds(actions, one_pass)
    assert fed == [[0, 1], [0, 1], [0]]
    assert out[1] is None and len(out[0].proposals) == 3


def test_a_single_pass_is_a_round_of_one():
    out = run_rounds([rd(1, 3, (4,), 1)], lambda _, feeds: [DraftDone(1, 8, 0.5, 0.9)])
    assert out[0] == DraftDone(1, 8, 0.5, 0.9) and out[0].proposals == (out[0],)


def test_a_round_has_at_least_one_pass():
    with pytest.raises(ValueError, match="at least one pass"):
        rd(1, 0, (5,), 0)
