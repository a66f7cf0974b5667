"""Verification: the single rule that makes every mode lossless."""

from __future__ import annotations

from typing import Sequence


def accept_prefix(drafts: Sequence[int], choices: Sequence[int]) -> tuple[int, int]:
    """Accept the longest prefix of ``drafts`` that equals the target's own choices.

    ``choices[i]`` is the token the target chose for the position of ``drafts[i]`` (with the
    position-keyed sampler, or argmax for greedy); ``choices`` has one extra entry for the
    position after the window.  Returns ``(accepted, next_token)``: ``next_token`` is the target's
    correction at the first mismatch, or its bonus token when all drafts were accepted.  Since
    every committed token is a target choice, the output cannot depend on the drafts.
    """
    if len(choices) != len(drafts) + 1:
        raise ValueError(f"need {len(drafts) + 1} target choices, got {len(choices)}")
    k = 0
    while k < len(drafts) and drafts[k] == choices[k]:
        k += 1
    return k, choices[k]
