"""StopCriteria and Transcript: every mode stops at exactly the same token."""

from __future__ import annotations

import pytest

from wanspec.core.stopping import StopCriteria, Transcript
from wanspec.errors import WanspecError

# a fake detokenizer: token i renders as LETTERS[i]
LETTERS = "abcdefghijklmnopqrstuvwxyz"


def detok(ids):
    return "".join(LETTERS[i] for i in ids)


def test_stop_criteria_validation():
    with pytest.raises(WanspecError):
        StopCriteria(max_tokens=0)
    with pytest.raises(ValueError):
        StopCriteria(max_tokens=5, stop_strings=("x",))  # no detokenize
    with pytest.raises(WanspecError):
        StopCriteria(max_tokens=5, stop_strings=("",), detokenize=detok)


def test_reason_after_eos_max_tokens_and_none():
    stop = StopCriteria(max_tokens=3, eos_ids=frozenset({9}))
    assert stop.reason_after([1]) is None
    assert stop.reason_after([1, 9]) == "eos"
    assert stop.reason_after([1, 2, 3]) == "max_tokens"
    assert stop.reason_after([1, 2, 9]) == "eos"  # eos wins over the budget on the same token
    assert stop.reason_after([9, 1]) is None  # only the newest token matters


def test_reason_after_stop_string_only_on_new_completion():
    stop = StopCriteria(max_tokens=100, stop_strings=("cd",), detokenize=detok)
    assert stop.reason_after([0, 1, 2]) is None  # "abc"
    assert stop.reason_after([0, 1, 2, 3]) == "stop_string"  # "abcd": completed across tokens
    assert stop.reason_after([2, 3, 4]) is None  # "cde": was already complete before


def test_transcript_basics():
    with pytest.raises(WanspecError):
        Transcript([], StopCriteria(max_tokens=3))
    t = Transcript([5, 6], StopCriteria(max_tokens=3))
    assert t.output == [] and t.n_output == 0 and t.remaining == 3 and not t.finished
    assert t.commit([1]) == [1]
    assert t.tokens == [5, 6, 1] and t.output == [1] and t.remaining == 2


def test_commit_truncates_a_multi_token_commit_at_max_tokens():
    t = Transcript([5], StopCriteria(max_tokens=4))
    assert t.commit([1, 2]) == [1, 2]
    assert t.commit([3, 4, 7, 8]) == [3, 4]
    assert t.output == [1, 2, 3, 4]
    assert t.finish_reason == "max_tokens" and t.finished and t.remaining == 0
    assert t.commit([9]) == []  # nothing after finishing
    assert t.output == [1, 2, 3, 4]


def test_commit_stops_at_eos_inside_a_window():
    t = Transcript([5], StopCriteria(max_tokens=10, eos_ids=frozenset({0})))
    assert t.commit([3, 0, 4]) == [3, 0]
    assert t.finish_reason == "eos"
    assert t.output == [3, 0]


def test_commit_stops_at_stop_string_inside_a_window():
    # output so far "b", then "c","d","e" committed at once with stop string "cd"
    stop = StopCriteria(max_tokens=10, stop_strings=("zz", "cd"), detokenize=detok)
    t = Transcript([0], stop)  # the prompt "a" is never detokenized for stop checks
    assert t.commit([1]) == [1]
    assert t.commit([2, 3, 4]) == [2, 3]
    assert t.finish_reason == "stop_string"


def test_stop_strings_ignore_the_prompt():
    stop = StopCriteria(max_tokens=10, stop_strings=("ab",), detokenize=detok)
    t = Transcript([0, 1], stop)  # prompt "ab"
    assert t.commit([2]) == [2]
    assert not t.finished
