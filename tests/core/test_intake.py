"""core/intake: the bounds a worker's drafts must respect before they reach the draft tree."""

from __future__ import annotations

import dataclasses
import math

import pytest

from wanspec.core.chain import DraftToken
from wanspec.core.intake import draft_tokens, drafts_allowance, drafts_problem, unpack
from wanspec.protocol.messages import Drafts, bundle_drafts

MAIN = Drafts(7, 0, 3, (8, 9), (0.1, 0.2), (0.9, 0.8))
BRANCH = Drafts(7, 0, 4, (30, 31), (0.0, 0.5), (0.2, 0.5), lane=1, parent=0, fork=4)


def test_a_drafts_is_its_own_item_and_a_bundle_unpacks_in_order():
    assert unpack(MAIN, 1) == [MAIN]
    assert unpack(bundle_drafts([MAIN, BRANCH]), 2) == [MAIN, BRANCH]


def test_a_bundle_of_more_items_than_lanes_or_of_unfit_arrays_is_refused():
    assert "3 items for 2 lanes" in unpack(bundle_drafts([MAIN, BRANCH, BRANCH]), 2)
    unfit = dataclasses.replace(bundle_drafts([MAIN, BRANCH]), counts=(1, 2))
    assert "do not fit together" in unpack(unfit, 2)


@pytest.mark.parametrize("msg, why", [
    (Drafts(7, 0, 3, ()), "inconsistent lengths"),
    (Drafts(7, 0, 3, (8, 9), (0.1,)), "inconsistent lengths"),
    (Drafts(7, 0, 9, (8, 9)), "past the 10"),
    (Drafts(7, 0, 3, (100,)), "outside the vocabulary"),
    (Drafts(7, 0, 3, (8,), (math.nan,)), "not a finite non-negative number"),
    (Drafts(7, 0, 3, (8,), (), (-0.5,)), "not a finite non-negative number"),
], ids=["empty", "lengths", "past-limit", "vocabulary", "nan-entropy", "negative-prob"])
def test_drafts_no_honest_worker_sends_are_named(msg, why):
    assert why in drafts_problem(msg, limit=10 if "past" in why else 100, vocab=100)


def test_well_formed_drafts_within_the_limit_pass():
    assert drafts_problem(MAIN, limit=5, vocab=100) is None
    assert drafts_problem(Drafts(7, 0, 3, (8, 9)), limit=5, vocab=None) is None


def test_the_allowance_grows_with_commits_tokens_and_lanes():
    one = drafts_allowance(lookahead=8, commits=0, tokens=0, lanes=1)
    assert one == 2 * 8 + 16
    assert drafts_allowance(lookahead=8, commits=3, tokens=10, lanes=1) == 2 * (8 * 4 + 10) + 16
    assert drafts_allowance(lookahead=8, commits=0, tokens=0, lanes=17) == 17 * one


def test_draft_tokens_fill_missing_statistics():
    assert draft_tokens(MAIN) == [DraftToken(8, 0.1, 0.9), DraftToken(9, 0.2, 0.8)]
    assert draft_tokens(Drafts(7, 0, 3, (8,))) == [DraftToken(8, 0.0, 1.0)]
