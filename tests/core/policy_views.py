"""Hand-built policy views for the policy tests."""

from __future__ import annotations

from wanspec.core.chain import DraftToken
from wanspec.core.estimates import Estimates
from wanspec.core.view import View


def drafts(n: int, entropy: float = 0.1) -> tuple[DraftToken, ...]:
    return tuple(DraftToken(100 + i, entropy, 0.9) for i in range(n))


def view(*, remote=(), local: int = 0, expect_full_by: float | None = None,
         every: float = 0.0, estimates: Estimates | None = None, **kw) -> View:
    """A view at ``now=1.0`` with gamma 4; ``expect_full_by``: when the worker's next draft is
    expected, and each later one ``every`` seconds after (by default all at once)."""
    base = dict(now=1.0, gamma=4, budget=64, max_window=16, wait_expired=False,
                chain_live=True, chain_behind=0, worker_ok=True, has_local_draft=True,
                slack_s=0.0, budget_tpot_s=0.0)
    ours = kw.pop("proposal_remote", 0)  # worker drafts the local round under way started with
    base.update(kw)
    remote = tuple(remote)
    missing = max(base["max_window"], base["gamma"]) - len(remote)
    arrivals = () if expect_full_by is None else tuple(
        expect_full_by + i * every for i in range(max(missing, 0)))
    est = estimates or Estimates.with_priors(rtt_s=0.05, target_s=0.03, draft_s=0.004)
    proposal = remote[:ours] + drafts(local, entropy=0.2) if local else ()
    return View(remote=remote, arrivals=arrivals, estimates=est, proposal=proposal,
                proposal_local=local, **base)
