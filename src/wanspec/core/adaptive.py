"""The ``adaptive`` policy: as few busy-site draft passes as a latency budget allows.

The user states the trade-off, not a weight: ``max_slowdown`` (default 1.05) is the time per
token the request may take relative to the best decoding the busy site could do alone -- standard
SD at its best window, or target-only decoding when drafting does not pay -- and never more than
target-only.  That reference is estimated online from the controller's own measurements
(acceptance of the drafts it has judged, target and draft pass times; :func:`budget_tpot`).

The controller keeps a latency account per request: every committed token adds its allowance
(``budget_tpot``), every second spent is taken off; the balance is the *slack*.  At each decision
the policy lists its options -- verify the worker's drafts (any prefix), a plain target step,
wait for more worker drafts (until each expected arrival), draft locally up to any window, or
abandon a local round for the worker's drafts that have caught up -- each with its expected
time, committed tokens and busy-site draft time.  It picks, among the options that keep the
expected slack non-negative, the one with the least busy-site draft time per committed token
(then the fastest).  If none does, it picks the fastest, to win the budget back.

So the worker's advantage (a window drafted while the target was verifying the previous one
commits tokens faster than local SD could) is banked as slack and spent on waiting for the worker
after rejections instead of drafting locally, exactly as far as the budget allows.  Every
quantity adapts: acceptance falls and local rounds stop paying (it turns into target-only
decoding), the RTT or jitter grows and waiting stops fitting the budget (it turns into local SD).
"""

from __future__ import annotations

from dataclasses import dataclass

from wanspec.core.estimates import Estimates
from wanspec.core.rates import best_local_tpot, expected_tokens_by_window
from wanspec.core.view import LOCAL_DRAFT, PLAIN, VERIFY_LOCAL, Decision, Kind, View


# Drafts not made yet are priced at their acceptance one standard error below its estimate: a
# draft pass is only spent where it pays even if the drafts are somewhat worse than believed.
# While little is known (a new link) that keeps the busy site from drafting on faith; the
# worker's drafts, judged against what gets committed, teach the estimate at no busy-site cost.
CAUTION = -1.0


def budget_tpot(estimates: Estimates, max_slowdown: float, has_local_draft: bool) -> float:
    """Allowed seconds per committed token: ``max_slowdown`` x the best decoding at the busy
    site alone, and never more than target-only decoding.

    The reference is estimated with acceptance one standard error above its estimate: local
    decoding may well be that fast, and a budget that holds only on an average estimate would be
    missed half of the time.  The margin shrinks as judged drafts accumulate.
    """
    draft_s = estimates.local_draft_pass.seconds(1) if has_local_draft else None
    best, _ = best_local_tpot(estimates.acceptance, estimates.target_pass, draft_s, errors=1.0)
    return min(max_slowdown * best, estimates.target_pass.seconds(1))


@dataclass(frozen=True)
class Option:
    decision: Decision
    seconds: float  # expected time until the resulting verification has committed
    tokens: float  # expected tokens it commits
    busy_draft_s: float  # busy-site draft time it spends


def decide_adaptive(v: View) -> Decision:
    """The option with the least busy-site draft time per token that fits the latency budget."""
    options = local_round_options(v) if v.proposal_local else fresh_options(v)
    fits = [o for o in options if v.slack_s + o.tokens * v.budget_tpot_s - o.seconds >= 0.0]
    if fits:
        best = min(fits, key=lambda o: (o.busy_draft_s / o.tokens, o.seconds / o.tokens))
    else:
        best = min(options, key=lambda o: o.seconds / o.tokens)
    return best.decision


def fresh_options(v: View) -> list[Option]:
    """No proposal under way: every way to start the next verification."""
    est = v.estimates
    cap = min(v.max_window, v.budget)
    p = est.calibration.p_accept
    remote = [p(d.entropy) for d in v.remote[:cap]] if v.worker_ok else []
    k = len(remote)
    # expected tokens of a window of w drafts: the worker's (calibrated by their entropy), then
    # drafts not made yet (by their depth)
    tokens = expected_tokens_by_window(remote + est.acceptance.window_rates(k, cap - k, CAUTION))
    tv = est.target_pass.seconds  # of the tokens fed: a window of w drafts feeds w + 1
    options = [Option(PLAIN, tv(1), 1.0, 0.0)]
    for w in range(1, k + 1):
        options.append(Option(Decision(Kind.VERIFY_REMOTE, window=w), tv(w + 1), tokens[w], 0.0))
    if v.has_local_draft:
        td = est.local_draft_pass.seconds(1)
        for g in range(k + 1, cap + 1):
            options.append(Option(Decision(Kind.LOCAL_DRAFT, window=k), (g - k) * td + tv(g + 1),
                                  tokens[g], (g - k) * td))
    if v.worker_ok:
        for g in range(k + 1, cap + 1):
            until = v.arrival(g)
            if until is None:
                break
            options.append(Option(Decision(Kind.WAIT, until=until), until - v.now + tv(g + 1),
                                  tokens[g], 0.0))
    return options


def local_round_options(v: View) -> list[Option]:
    """A local round is under way: draft on, verify it, or take the worker's drafts instead."""
    est = v.estimates
    cap = min(v.max_window, v.budget)
    p = est.calibration.p_accept
    proposal = [p(d.entropy) for d in v.proposal]
    m = len(proposal)
    tokens = expected_tokens_by_window(proposal + est.acceptance.window_rates(m, max(cap - m, 0), CAUTION))
    tv = est.target_pass.seconds
    td = est.local_draft_pass.seconds(1)
    options = [Option(VERIFY_LOCAL, tv(m + 1), tokens[m], 0.0)]
    for g in range(m + 1, cap + 1):
        options.append(Option(LOCAL_DRAFT, (g - m) * td + tv(g + 1), tokens[g], (g - m) * td))
    ours = m - v.proposal_local  # the worker's drafts the proposal started with
    if v.worker_ok and len(v.remote) > ours:
        # the worker has caught up past our proposal's remote part: its drafts cost nothing
        remote = expected_tokens_by_window([p(d.entropy) for d in v.remote[:cap]])
        for w in range(ours + 1, min(len(v.remote), cap) + 1):
            options.append(Option(Decision(Kind.VERIFY_REMOTE, window=w), tv(w + 1), remote[w],
                                  0.0))
    return options
