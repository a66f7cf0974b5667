"""Shortcuts taken on the cores' per-token paths equal the plain computations they replace."""

import itertools
import random

from wanspec.core.chain import feed_from
from wanspec.core.stopping import StopCriteria, Transcript


def test_feed_from_equals_slicing_the_concatenation():
    committed = [10, 11, 12, 13, 14]
    for k in range(0, 4):
        proposal = list(range(20, 20 + k))
        for start in range(0, len(committed) + k + 2):
            expected = tuple((committed + proposal)[start:])
            assert feed_from(committed, proposal, start) == expected
            assert feed_from(tuple(committed), tuple(proposal), start) == expected


def test_reason_after_token_equals_reason_after_without_stop_strings():
    for max_tokens, eos in itertools.product([1, 2, 5], [frozenset(), frozenset({3}), frozenset({0, 3})]):
        stop = StopCriteria(max_tokens=max_tokens, eos_ids=eos)
        for output in itertools.product(range(4), repeat=3):
            out = list(output)
            assert stop.reason_after_token(out[-1], len(out)) == stop.reason_after(out)


def test_transcript_commit_stops_where_the_plain_rule_stops():
    rng = random.Random(0)
    for _ in range(300):
        max_tokens = rng.randint(1, 8)
        stop = StopCriteria(max_tokens=max_tokens, eos_ids=frozenset({rng.randint(0, 5)}))
        t = Transcript([7, 8], stop)
        plain: list[int] = []
        reason = None
        while not t.finished:
            new = [rng.randint(0, 5) for _ in range(rng.randint(1, 4))]
            taken = t.commit(new)
            expected = []
            for tok in new:  # the rule: stop right after the first token that ends the output
                plain.append(tok)
                expected.append(tok)
                reason = stop.reason_after(plain)
                if reason is not None:
                    break
            assert taken == expected
        assert t.output == plain and t.finish_reason == reason
        assert t.remaining == max_tokens - len(plain)
