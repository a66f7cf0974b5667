"""Redundancy policies: what the busy site does when its accelerator is free.

A policy sees a :class:`View` (pure data) and returns a :class:`Decision`; it never touches the
models or the network.  Every decision is lossless: it only changes *which* drafts the target
verifies and *when*, never what the target commits.

* ``remote``  - worker drafts only; wait (bounded) for the worker, else plain target steps.
* ``always``  - the local draft fills every window the worker has not (latency floor,
                most busy-site passes).
* ``entropy`` - local drafting only when a rejection is likely: after a rejection until the
                worker's re-synchronised chain arrives, or when the worker's next drafts are
                uncertain (entropy above a threshold) -- then verify early instead of waiting.
* ``adaptive`` - prices every option (verify the worker's drafts now, wait for more, draft
                locally, plain target step) as expected cost per committed token, using the
                online entropy->acceptance calibration, the measured RTT, pass times and draft
                arrival rate; a busy-site draft pass is charged its device time times
                ``busy_pass_weight``.  Picks the cheapest, tunes the window length, and so falls
                back to local SD (high RTT) or target-only (useless drafts) by itself.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass
from enum import Enum
from typing import Final

from wanspec.core.chain import DraftToken
from wanspec.core.policy_defaults import BUSY_PASS_WEIGHT, ENTROPY_THRESHOLD


class PolicyName(str, Enum):
    REMOTE = "remote"
    ALWAYS = "always"
    ENTROPY = "entropy"
    ADAPTIVE = "adaptive"


class Kind(str, Enum):
    VERIFY_REMOTE = "verify_remote"  # verify the worker's drafts (maybe fewer than gamma)
    LOCAL_DRAFT = "local_draft"  # one more local draft pass, extending the proposal
    VERIFY_LOCAL = "verify_local"  # verify the proposal built with local drafts
    PLAIN = "plain"  # a plain target step (no drafts)
    WAIT = "wait"  # leave the accelerator idle until ``until`` or the next message


@dataclass(frozen=True)
class Decision:
    kind: Kind
    until: float | None = None
    window: int | None = None  # VERIFY_REMOTE: how many of the usable drafts to verify


# pure data, built per decision: slotted, not frozen (~4x cheaper to build); a written __init__
# is native code when compiled (see wanspec.core.actions)
@dataclass(slots=True, init=False)
class View:
    now: float
    gamma: int  # window wanted now (already clamped to the token budget)
    remote: list[DraftToken]  # usable worker drafts for positions n, n+1, ... (<= gamma)
    local: int  # local drafts already made for positions after the remote ones
    chain_live: bool  # the worker's chain agrees with everything committed so far
    chain_behind: int  # committed positions the live chain still has to cover
    worker_ok: bool
    has_local_draft: bool
    expect_remote_by: float | None  # when the next useful worker draft is expected
    entropy_threshold: float
    alpha: float = 0.7  # estimated per-token acceptance of the worker's drafts
    target_pass_s: float = 0.03  # estimated cost of one target pass
    # adaptive only
    remote_accept_p: tuple[float, ...] = ()  # calibrated acceptance of each usable remote draft
    verify_per_token_s: float = 0.0  # extra target-pass cost per extra token
    local_draft_s: float = 0.004  # cost of one local draft pass
    local_gamma: int = 4  # window length local rounds aim for

    def __init__(self, now: float, gamma: int, remote: list[DraftToken], local: int,
                 chain_live: bool, chain_behind: int, worker_ok: bool, has_local_draft: bool,
                 expect_remote_by: float | None, entropy_threshold: float, alpha: float = 0.7,
                 target_pass_s: float = 0.03, remote_accept_p: tuple[float, ...] = (),
                 verify_per_token_s: float = 0.0, local_draft_s: float = 0.004,
                 local_gamma: int = 4) -> None:
        self.now = now
        self.gamma = gamma
        self.remote = remote
        self.local = local
        self.chain_live = chain_live
        self.chain_behind = chain_behind
        self.worker_ok = worker_ok
        self.has_local_draft = has_local_draft
        self.expect_remote_by = expect_remote_by
        self.entropy_threshold = entropy_threshold
        self.alpha = alpha
        self.target_pass_s = target_pass_s
        self.remote_accept_p = remote_accept_p
        self.verify_per_token_s = verify_per_token_s
        self.local_draft_s = local_draft_s
        self.local_gamma = local_gamma


@functools.lru_cache(maxsize=4096)  # pure; asked twice per decision, alpha moves per verification
def expected_tokens(alpha: float, window: int) -> float:
    """Tokens one verification commits on average: (1 - a^(w+1)) / (1 - a), i.i.d. acceptance."""
    a = min(max(alpha, 0.0), 0.999999)
    return (1.0 - a ** (window + 1)) / (1.0 - a)


def worth_waiting(v: View, have: int) -> bool:
    """Wait for the worker only if the fuller window is expected to commit tokens faster.

    Verifying now commits E(have) tokens per target pass; waiting ``w`` for a full window commits
    E(gamma) tokens in ``w + t_v``.  With no usable drafts E(0) = 1, a plain target step, so a
    worker that never helps (acceptance 0) is never waited for: never slower than target-only.
    """
    if v.expect_remote_by is None or v.now >= v.expect_remote_by:
        return False
    wait = v.expect_remote_by - v.now
    gain = expected_tokens(v.alpha, v.gamma) / expected_tokens(v.alpha, have) - 1.0
    return wait < v.target_pass_s * gain


@dataclass(frozen=True)
class PolicyConfig:
    name: PolicyName = PolicyName.ADAPTIVE
    entropy_threshold: float = ENTROPY_THRESHOLD  # nats
    busy_pass_weight: float = BUSY_PASS_WEIGHT  # adaptive: busy-site draft pass price, x its cost


# Decisions without parameters are shared (Decision is frozen), not rebuilt per call.
_D_PLAIN: Final = Decision(Kind.PLAIN)
_D_LOCAL_DRAFT: Final = Decision(Kind.LOCAL_DRAFT)
_D_VERIFY_LOCAL: Final = Decision(Kind.VERIFY_LOCAL)
_D_VERIFY_REMOTE: Final = Decision(Kind.VERIFY_REMOTE)
# Enum members as module constants: ``PolicyName.ALWAYS`` is a ~60 ns class attribute lookup on
# Python 3.11, and every decision compares a few.
# (Final: compiled code reads them as static constants, not from the module's dict)
_ADAPTIVE: Final = PolicyName.ADAPTIVE
_REMOTE: Final = PolicyName.REMOTE
_ALWAYS: Final = PolicyName.ALWAYS
_ENTROPY: Final = PolicyName.ENTROPY
_WAIT: Final = Kind.WAIT
_PLAIN: Final = Kind.PLAIN
_VERIFY_REMOTE: Final = Kind.VERIFY_REMOTE
_LOCAL_DRAFT: Final = Kind.LOCAL_DRAFT
_VERIFY_LOCAL: Final = Kind.VERIFY_LOCAL


def decide(policy: PolicyConfig, v: View) -> Decision:
    """The policy's move for an idle busy-site accelerator."""
    if policy.name is _ADAPTIVE:
        return decide_adaptive(v, policy.busy_pass_weight)
    k = len(v.remote)
    proposal = k + v.local
    if not v.worker_ok:  # fallback: plain local SD, or target-only without a local draft
        if not v.has_local_draft:
            return _D_PLAIN
        return _D_LOCAL_DRAFT if proposal < v.gamma else _D_VERIFY_LOCAL
    if v.local == 0 and k >= v.gamma:
        return _D_VERIFY_REMOTE

    name = policy.name if v.has_local_draft else _REMOTE
    if name is _ALWAYS:
        return _D_LOCAL_DRAFT if proposal < v.gamma else _D_VERIFY_LOCAL

    if name is _ENTROPY:
        if v.local > 0:  # a local round is under way: finish it
            return _D_LOCAL_DRAFT if proposal < v.gamma else _D_VERIFY_LOCAL
        uncertain = any(d.entropy > v.entropy_threshold for d in v.remote)
        if k > 0 and uncertain:
            return _D_VERIFY_REMOTE  # a rejection is likely: waiting buys nothing
        if not v.chain_live or (k == 0 and v.chain_behind > 0):
            return _D_LOCAL_DRAFT  # after a rejection: hide the round trip
        # confident drafts, more on the way: wait for the worker (bounded) like `remote`

    # remote: wait for the worker while drafts are expected, then use what is there
    if worth_waiting(v, k):
        return Decision(_WAIT, v.expect_remote_by)  # (until; positional is cheaper)
    if k > 0:
        return _D_VERIFY_REMOTE
    return _D_PLAIN


def expected_run(ps: "tuple[float, ...] | list[float]") -> float:
    """Expected tokens committed by verifying drafts with acceptance probabilities ``ps`` (+1)."""
    total, run = 1.0, 1.0
    for p in ps:
        run *= p
        total += run
    return total


def run_prefixes(ps: "tuple[float, ...] | list[float]") -> tuple[list[float], float]:
    """``[expected_run(ps[:w]) for w in 0..len(ps)]`` and the product of ``ps``, in one pass.

    Why: the adaptive policy needs every prefix; this is linear instead of quadratic, with the
    very floating-point operations of :func:`expected_run`, so the values are identical.
    """
    totals = [1.0]
    total, run = 1.0, 1.0
    for p in ps:
        run *= p
        total += run
        totals.append(total)
    return totals, run


def extend_run(total: float, run: float, p: float, n: int) -> float:
    """``expected_run(ps + [p] * n)`` from ``total = expected_run(ps)`` and ``run = prod(ps)``
    (identical floats: the same operations, continued)."""
    for _ in range(n):
        run *= p
        total += run
    return total


def decide_adaptive(v: View, busy_pass_weight: float = 1.0) -> Decision:
    """Pick the option with the lowest expected cost per committed token.

    cost = (time the busy accelerator is occupied or idle) + weight * (busy-site draft time),
    divided by the expected tokens the resulting verification commits.  (Runs at every decision
    of the adaptive policy: one pass over the window, explicit loops instead of key lambdas.)
    """
    k = len(v.remote)
    if v.local > 0:  # finish the local round under way
        return _D_LOCAL_DRAFT if k + v.local < v.local_gamma else _D_VERIFY_LOCAL

    if not v.worker_ok and not v.has_local_draft:
        return _D_PLAIN

    ps = v.remote_accept_p[:k] if len(v.remote_accept_p) >= k else [v.alpha] * k
    a = min(max(v.alpha, 0.0), 0.999)
    totals, run = run_prefixes(ps)  # totals[w] = expected_run(ps[:w])
    t_pass, per_token = v.target_pass_s, v.verify_per_token_s

    def tv(w: int) -> float:  # target pass verifying w >= 0 drafts
        return t_pass + per_token * w

    # (cost per token, kind, window or wait deadline); the first cheapest wins
    options: list[tuple[float, Kind, float | None]] = []
    if v.worker_ok and k > 0:
        # best prefix of what is here: long windows are cheap, unlikely tails are not
        best_w, best_rate = 1, totals[1] / tv(1)
        for w in range(2, k + 1):
            rate = totals[w] / tv(w)
            if rate > best_rate:
                best_w, best_rate = w, rate
        options.append((tv(best_w) / totals[best_w], _VERIFY_REMOTE, best_w))
    options.append((tv(0), _PLAIN, None))
    if v.has_local_draft:
        g = max(v.local_gamma, k + 1)
        extra = g - k
        cost = extra * v.local_draft_s * (1.0 + busy_pass_weight) + tv(g)
        options.append((cost / extend_run(totals[k], run, a, extra), _LOCAL_DRAFT, None))
    if v.worker_ok and v.expect_remote_by is not None and v.now < v.expect_remote_by:
        g = max(v.gamma, k + 1)
        wait = v.expect_remote_by - v.now
        options.append(((wait + tv(g)) / extend_run(totals[k], run, a, g - k),
                        _WAIT, v.expect_remote_by))
    best = options[0]
    for option in options:
        if option[0] < best[0]:
            best = option
    _, kind, arg = best
    if kind is _VERIFY_REMOTE:
        return Decision(kind, window=arg)  # type: ignore[arg-type]
    if kind is _WAIT:
        return Decision(kind, arg)  # (until; positional is cheaper)
    return _D_PLAIN if kind is _PLAIN else _D_LOCAL_DRAFT


def optimal_gamma(alpha: float, target_s: float, draft_s: float, per_token_s: float = 0.0,
                  max_gamma: int = 16) -> int:
    """Window length maximising tokens per unit time for local SD (classic SD analysis).

    The rate of window ``g`` is ``expected_tokens(alpha, g) / (g * draft_s + target_s +
    per_token_s * g)``; the first ``g`` with the highest rate wins.  Written as one loop (the
    clamp of ``alpha`` hoisted, the same arithmetic) and memoised on its exact arguments because
    the adaptive policy asks at every decision, mostly with unchanged estimates.
    """
    return _optimal_gamma(alpha, target_s, draft_s, per_token_s, max_gamma)


@functools.lru_cache(maxsize=256)
def _optimal_gamma(alpha: float, target_s: float, draft_s: float, per_token_s: float,
                   max_gamma: int) -> int:
    if max_gamma < 1:
        raise ValueError(f"max_gamma must be >= 1, got {max_gamma}")
    a = min(max(alpha, 0.0), 0.999999)  # as expected_tokens clamps it
    best_g, best_rate = 0, 0.0
    for g in range(1, max_gamma + 1):
        rate = ((1.0 - a ** (g + 1)) / (1.0 - a)) / (g * draft_s + target_s + per_token_s * g)
        if g == 1 or rate > best_rate:
            best_g, best_rate = g, rate
    return best_g
