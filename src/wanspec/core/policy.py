"""Redundancy policies: what the busy site does when its accelerator is free.

A policy sees a :class:`View` (a snapshot) and returns a :class:`Decision`; it never touches the
models or the network.  Every decision is lossless: it only changes *which* drafts the target
verifies and *when*, never what the target commits.  Every scheduling choice of the controller is
made here: the window length, whether to wait for the worker and until when, whether to draft
locally, and when to drop a local round because the worker caught up.

* ``remote``   - worker drafts only; wait (bounded) for the worker, else plain target steps.
* ``always``   - the local draft fills every window the worker has not (latency floor, most
                 busy-site passes).
* ``entropy``  - local drafting only when a rejection is likely: after a rejection until the
                 worker's re-synchronised chain arrives, or when the worker's next drafts are
                 uncertain (entropy above a threshold) -- then verify early instead of waiting.
* ``adaptive`` - the default: as few busy-site draft passes as the user's latency budget allows
                 (:mod:`wanspec.core.adaptive`).
"""

from __future__ import annotations

from wanspec.core.adaptive import decide_adaptive
from wanspec.core.rates import expected_tokens_iid
from wanspec.core.view import (
    PLAIN,
    VERIFY_LOCAL,
    Decision,
    Kind,
    PolicyConfig,
    PolicyName,
    View,
)

__all__ = ["Decision", "Kind", "PolicyConfig", "PolicyName", "View", "decide", "worker_lookahead"]

# how much later than expected the non-adaptive policies still wait for the worker's drafts
WAIT_SLACK = 1.5


def decide(policy: PolicyConfig, v: View) -> Decision:
    """The policy's move for an idle busy-site accelerator (or, with ``v.ride``, for a request
    waiting for its worker while other requests' target pass leaves)."""
    if v.budget == 0:
        return PLAIN  # one token left: the target's next choice is all there is to commit
    if v.ride:
        return decide_ride(policy, v)
    if policy.name is PolicyName.ADAPTIVE:
        return decide_adaptive(v)
    return decide_fixed(policy, v)


def decide_fixed(policy: PolicyConfig, v: View) -> Decision:
    """``remote``, ``always`` and ``entropy``: windows of ``gamma`` drafts."""
    gamma = min(v.gamma, v.budget)
    if v.proposal_local:  # a local round is under way: finish it
        left = gamma - len(v.proposal)
        return (Decision(Kind.LOCAL_DRAFT, drafts=left, then_verify=True) if left > 0
                else VERIFY_LOCAL)
    remote = v.remote[:gamma]
    k = len(remote)
    # the worker's drafts, then local ones up to the window, drafted in one round (its length
    # is decided now: nothing that arrives meanwhile changes it, and it is verified next)
    local_round = Decision(Kind.LOCAL_DRAFT, window=k, drafts=gamma - k, then_verify=True)
    if not v.worker_ok:  # fallback: plain local SD, or target-only without a local draft
        return local_round if v.has_local_draft else PLAIN
    if k >= gamma:
        return Decision(Kind.VERIFY_REMOTE, window=gamma)

    name = policy.name if v.has_local_draft else PolicyName.REMOTE
    if name is PolicyName.ALWAYS:
        return local_round
    if name is PolicyName.ENTROPY:
        if k > 0 and any(d.entropy > policy.entropy_threshold for d in remote):
            return Decision(Kind.VERIFY_REMOTE, window=k)  # a rejection is likely: verify now
        if not v.chain_live or (k == 0 and v.chain_behind > 0):
            return local_round  # after a rejection: hide the round trip
        # confident drafts, more on the way: wait for the worker (bounded) like `remote`

    # remote: wait for the worker while drafts are expected, then use what is there
    expected = v.arrival(gamma)
    if expected is not None and not v.wait_expired and worth_waiting(v, k, gamma, expected):
        return Decision(Kind.WAIT, until=v.now + WAIT_SLACK * (expected - v.now))
    return Decision(Kind.VERIFY_REMOTE, window=k) if k > 0 else PLAIN


def decide_ride(policy: PolicyConfig, v: View) -> Decision:
    """Join a target pass that other requests' verifications are running anyway.

    Under load the busy accelerator is the bottleneck, and a request waiting for its worker's
    drafts would otherwise verify them in a later pass.  Joining this one costs the busy site only
    this request's tokens in a pass that reads the weights anyway (its *marginal* cost: nothing
    while the pass is memory-bound), commits at least one token now, and loses nothing: the drafts
    still to come are verified in the next pass, which could not have started before this one
    ends.  So every policy joins, with the worker's usable drafts (up to its window; ``adaptive``
    picks the window, pricing what a longer one adds for the others) or with a plain step.  Alone on the accelerator nothing leaves while a request
    waits, and the single-request behaviour is unchanged.
    """
    if policy.name is PolicyName.ADAPTIVE:
        return decide_adaptive(v)  # its window priced at what it adds to the shared pass
    cap = min(v.gamma, v.budget)
    k = min(len(v.remote), cap) if v.worker_ok else 0
    return Decision(Kind.VERIFY_REMOTE, window=k) if k > 0 else PLAIN


def worth_waiting(v: View, have: int, want: int, expected: float) -> bool:
    """Wait for the worker only if the fuller window is expected to commit tokens faster.

    Verifying now commits E(have) tokens per target pass; waiting ``w`` for ``want`` drafts
    commits E(want) tokens in ``w + t_v``.  With no usable drafts E(0) = 1, a plain target step,
    so a worker that never helps (acceptance 0) is never waited for: never slower than
    target-only.
    """
    alpha = v.estimates.acceptance.pooled
    gain = expected_tokens_iid(alpha, want) / expected_tokens_iid(alpha, have) - 1.0
    return expected - v.now < v.estimates.target_pass.seconds(1) * gain


def worker_lookahead(gamma: int, max_window: int, rtt_s: float, draft_interval_s: float) -> int:
    """How far past the committed prefix the worker may draft (sent in SessionStart).

    Enough for a round trip of drafting plus the longest window, so a fully accepted window is
    followed by a ready one; capped, because drafts past a rejection are wasted work.
    """
    window = max(gamma, max_window)
    per_draft = max(draft_interval_s, 1e-4)
    return max(2 * window, min(64, window + gamma + int(rtt_s / per_draft) + 2))
