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
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import Enum

from wanspec.core.chain import DraftToken


class PolicyName(str, Enum):
    REMOTE = "remote"
    ALWAYS = "always"
    ENTROPY = "entropy"


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


@dataclass(frozen=True)
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
    name: PolicyName = PolicyName.ENTROPY
    entropy_threshold: float = 1.0  # nats


def decide(policy: PolicyConfig, v: View) -> Decision:
    """The policy's move for an idle busy-site accelerator."""
    k = len(v.remote)
    proposal = k + v.local
    if not v.worker_ok:  # fallback: plain local SD, or target-only without a local draft
        if not v.has_local_draft:
            return Decision(Kind.PLAIN)
        return Decision(Kind.LOCAL_DRAFT if proposal < v.gamma else Kind.VERIFY_LOCAL)
    if v.local == 0 and k >= v.gamma:
        return Decision(Kind.VERIFY_REMOTE)

    name = policy.name if v.has_local_draft else PolicyName.REMOTE
    if name is PolicyName.ALWAYS:
        return Decision(Kind.LOCAL_DRAFT if proposal < v.gamma else Kind.VERIFY_LOCAL)

    if name is PolicyName.ENTROPY:
        if v.local > 0:  # a local round is under way: finish it
            return Decision(Kind.LOCAL_DRAFT if proposal < v.gamma else Kind.VERIFY_LOCAL)
        uncertain = any(d.entropy > v.entropy_threshold for d in v.remote)
        if k > 0 and uncertain:
            return Decision(Kind.VERIFY_REMOTE)  # a rejection is likely: waiting buys nothing
        if not v.chain_live or (k == 0 and v.chain_behind > 0):
            return Decision(Kind.LOCAL_DRAFT)  # after a rejection: hide the round trip
        # confident drafts, more on the way: wait for the worker (bounded) like `remote`

    # remote: wait for the worker while drafts are expected, then use what is there
    if worth_waiting(v, k):
        return Decision(Kind.WAIT, until=v.expect_remote_by)
    if k > 0:
        return Decision(Kind.VERIFY_REMOTE)
    return Decision(Kind.PLAIN)
