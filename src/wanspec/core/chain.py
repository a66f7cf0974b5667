"""Draft tokens as the sites exchange them, and what a draft pass feeds (the worker's draft tree,
as the controller receives it, is :class:`wanspec.core.tree.RemoteTree`)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence


def feed_from(committed: Sequence[int], proposal: Sequence[int], start: int) -> tuple[int, ...]:
    """``tuple((committed + proposal)[start:])`` without building the whole sequence.

    What a draft pass feeds when its KV cache holds the first ``start`` tokens; drafting runs
    once per draft token, and the committed prefix (the prompt and all output) only grows.
    """
    n = len(committed)
    if start >= n:
        return tuple(proposal[start - n:])
    return (*committed[start:], *proposal)


@dataclass(slots=True)
class DraftToken:
    """One draft as the worker reported it: the token, its distribution's entropy (nats) and
    the probability of its top choice."""

    token: int
    entropy: float = 0.0
    top_prob: float = 1.0
