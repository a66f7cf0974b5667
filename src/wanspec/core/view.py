"""The policies' vocabulary: what they see (:class:`View`) and what they decide (:class:`Decision`)."""

from __future__ import annotations

from dataclasses import dataclass
from enum import Enum

from wanspec.core.chain import DraftToken
from wanspec.core.estimates import Estimates


class PolicyName(str, Enum):
    REMOTE = "remote"
    ALWAYS = "always"
    ENTROPY = "entropy"
    ADAPTIVE = "adaptive"


class Kind(str, Enum):
    VERIFY_REMOTE = "verify_remote"  # verify (a prefix of) the worker's usable drafts
    LOCAL_DRAFT = "local_draft"  # local draft passes (Decision.drafts), extending the proposal
    VERIFY_LOCAL = "verify_local"  # verify the proposal built with local drafts
    PLAIN = "plain"  # a plain target step (no drafts)
    WAIT = "wait"  # leave the accelerator idle until ``until`` or the next message


@dataclass(frozen=True)
class Decision:
    kind: Kind
    until: float | None = None  # WAIT: when to decide again if nothing arrives
    window: int | None = None  # VERIFY_REMOTE: how many of the usable worker drafts to verify
    drafts: int = 1  # LOCAL_DRAFT: local drafts to make in a row before deciding again
    then_verify: bool = False  # LOCAL_DRAFT: the round fills the window and its verification
    # follows at once, decided now (RunDraft.then_verify)


@dataclass(frozen=True)
class PolicyConfig:
    name: PolicyName = PolicyName.ADAPTIVE
    entropy_threshold: float = 1.0  # entropy policy: nats above which a rejection is predicted
    max_slowdown: float = 1.05  # adaptive: latency budget, x the best local decoding's


@dataclass(frozen=True)
class View:
    """What the controller knows when its accelerator is free (positions from ``n`` on)."""

    now: float
    gamma: int  # the configured window
    budget: int  # most drafts a verification may carry without passing the token limit
    max_window: int  # most drafts the adaptive policy verifies at once
    remote: tuple[DraftToken, ...]  # usable worker drafts for positions n, n+1, ...
    arrivals: tuple[float, ...]  # expected arrival of the next usable worker drafts, in order
    wait_expired: bool  # this decision ends a wait that ran to its deadline
    proposal: tuple[DraftToken, ...]  # the proposal under construction: worker drafts, then local
    proposal_local: int  # how many of its drafts are local (> 0: a local round is under way)
    chain_live: bool  # the worker's chain agrees with everything committed so far
    chain_behind: int  # committed positions the live chain still has to cover
    worker_ok: bool
    has_local_draft: bool
    estimates: Estimates
    slack_s: float  # latency budget left: allowance so far minus time taken (adaptive)
    budget_tpot_s: float  # allowed time per token (adaptive)
    ride: bool = False  # a target pass shared with other requests is leaving now: join it?

    def arrival(self, count: int) -> float | None:
        """When ``count`` usable worker drafts are expected to be here (None: not expected)."""
        missing = count - len(self.remote)
        if missing <= 0:
            return self.now
        return self.arrivals[missing - 1] if missing <= len(self.arrivals) else None


PLAIN = Decision(Kind.PLAIN)
VERIFY_LOCAL = Decision(Kind.VERIFY_LOCAL)
