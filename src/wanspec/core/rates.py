"""The arithmetic of speculative decoding that every policy prices its options with.

A verification of drafts whose acceptance probabilities are ``p1, p2, ...`` (each conditional on
the ones before being accepted) commits ``1 + p1 + p1*p2 + ...`` tokens on average: the accepted
prefix plus the target's own correction or bonus token.  With i.i.d. acceptance ``a`` and ``w``
drafts that is the classic ``(1 - a^(w+1)) / (1 - a)``.
"""

from __future__ import annotations

from typing import Sequence

from wanspec.core.estimates import AcceptanceModel, PassTime


def expected_tokens(ps: Sequence[float]) -> float:
    """Tokens one verification of drafts with acceptance probabilities ``ps`` commits on average."""
    return expected_tokens_by_window(ps)[-1]


def expected_tokens_by_window(ps: Sequence[float]) -> list[float]:
    """:func:`expected_tokens` of the first ``w`` drafts, for every ``w = 0 .. len(ps)``."""
    totals, total, run = [1.0], 1.0, 1.0
    for p in ps:
        run *= p
        total += run
        totals.append(total)
    return totals


def expected_tokens_iid(alpha: float, window: int) -> float:
    """:func:`expected_tokens` of ``window`` drafts each accepted with probability ``alpha``."""
    a = min(max(alpha, 0.0), 0.999999)
    return (1.0 - a ** (window + 1)) / (1.0 - a)


def sd_round(gamma: int, acceptance: AcceptanceModel, target: PassTime, draft_s: float,
             errors: float = 0.0) -> tuple[float, float]:
    """Standard SD at one site with window ``gamma``: (seconds, expected tokens) per round, with
    acceptance moved by ``errors`` standard errors."""
    seconds = gamma * draft_s + target.seconds(gamma + 1)
    return seconds, expected_tokens(acceptance.window_rates(0, gamma, errors))


SD_WINDOWS = range(1, 11)  # the windows of standard SD a reference is searched over


def best_local_tpot(acceptance: AcceptanceModel, target: PassTime, draft_s: float | None,
                    tokens: int | None = None, errors: float = 0.0) -> tuple[float, int]:
    """Time per token of the best decoding at the busy site alone, and its window (0: target-only).

    Standard SD at each window of :data:`SD_WINDOWS` and target-only decoding; without a draft
    model (``draft_s`` None) only target-only.  ``tokens``: the length of the request, whose last
    round is cut short on average by half a round (a long window pays less on a short request);
    None: unbounded.  ``errors``: acceptance moved by that many standard errors (> 0: as fast as
    local decoding may well be).
    """
    best_tpot, best_gamma = target.seconds(1), 0
    if draft_s is None:
        return best_tpot, best_gamma
    # the expected tokens of every window at once (one window's drafts are a prefix of the next)
    per_round = expected_tokens_by_window(acceptance.window_rates(0, SD_WINDOWS[-1], errors))
    verify = target.seconds_up_to(SD_WINDOWS[-1] + 1)  # verify[g]: a window of g drafts
    for gamma in SD_WINDOWS:
        round_s = gamma * draft_s + verify[gamma]
        rounds_per_token = 1.0 / per_round[gamma]
        if tokens:
            rounds_per_token += 0.5 / tokens
        if round_s * rounds_per_token < best_tpot:
            best_tpot, best_gamma = round_s * rounds_per_token, gamma
    return best_tpot, best_gamma
