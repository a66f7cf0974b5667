"""accept_prefix: the single verification rule."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from wanspec.core.verify import accept_prefix


@pytest.mark.parametrize("drafts, choices, expected", [
    ([], [7], (0, 7)),  # no drafts: the target's own token
    ([1, 2, 3], [1, 2, 3, 4], (3, 4)),  # all accepted + bonus
    ([1, 2, 3], [9, 2, 3, 4], (0, 9)),  # first rejected: correction
    ([1, 2, 3], [1, 9, 3, 4], (1, 9)),
    ([1, 2, 3], [1, 2, 9, 4], (2, 9)),
    ([5], [5, 5], (1, 5)),
    ([1, 2, 1], [1, 3, 1, 2], (1, 3)),  # a later match after a mismatch does not count
])
def test_accept_prefix_cases(drafts, choices, expected):
    assert accept_prefix(drafts, choices) == expected


@pytest.mark.parametrize("drafts, choices", [([1, 2], [1, 2]), ([1], [1, 2, 3]), ([], [])])
def test_accept_prefix_needs_one_extra_choice(drafts, choices):
    with pytest.raises(ValueError):
        accept_prefix(drafts, choices)


@settings(max_examples=100, deadline=None)
@given(st.lists(st.integers(0, 3), max_size=8), st.data())
def test_accept_prefix_commits_only_target_choices(drafts, data):
    choices = data.draw(st.lists(st.integers(0, 3), min_size=len(drafts) + 1,
                                 max_size=len(drafts) + 1))
    k, nxt = accept_prefix(drafts, choices)
    assert 0 <= k <= len(drafts)
    assert drafts[:k] == choices[:k]
    assert nxt == choices[k]
    assert k == len(drafts) or drafts[k] != choices[k]
