"""The ``adaptive`` policy: as few busy-site draft passes as a latency budget allows.

The user states the trade-off, not a weight: ``max_slowdown`` (default 1.05) is the time per
token the request may take relative to the best decoding the busy site could do alone -- standard
SD at its best window, or target-only decoding when drafting does not pay -- and never more than
target-only.  That reference is estimated online from the controller's own measurements
(acceptance of the drafts it has judged, target and draft pass times; :func:`budget_tpot`).

The controller keeps a latency account per request: every committed token adds its allowance
(``budget_tpot``, re-estimated at each commit and applied to all tokens so far), every second
spent is taken off, and what past requests left unspent per token is lent up front for the
tokens still to come (pacing); the balance is the *slack*.  At each decision
the policy lists its options -- verify the worker's drafts (any prefix), a plain target step,
wait for more worker drafts (until each expected arrival), draft locally up to any window, or
abandon a local round for the worker's drafts that have caught up -- each with its expected
time, committed tokens and busy-site draft time from now on.  It picks, among the options that
keep the expected slack non-negative, the one with the least busy-site draft time per committed
token (then the fastest).  If none does, it picks the one that wins back the most budget.

So the worker's advantage (a window drafted while the target was verifying the previous one
commits tokens faster than local SD could) is banked as slack and spent on waiting for the worker
after rejections instead of drafting locally, exactly as far as the budget allows.  Every
quantity adapts: acceptance falls and local rounds stop paying (it turns into target-only
decoding), the RTT or jitter grows and waiting stops fitting the budget (it turns into local SD).

Under load the busy accelerator is shared: a local draft pass holds up the next target pass of
every request in it, and is shared only by the requests drafting at that moment.  So a draft
pass is priced at ``Estimates.draft_price`` times its duration (requests per target pass over
requests per draft pass, learned from the passes that ran; 1 alone): the marginal cost of a
draft to the whole batch, where joining a target pass that runs anyway costs next to nothing
(:func:`~wanspec.core.policy.decide_ride`).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import NamedTuple

from wanspec.core.estimates import Estimates
from wanspec.core.rates import best_local_tpot, expected_tokens_by_window
from wanspec.core.view import Decision, Kind, View


@dataclass
class LatencyAccount:
    """The time the tokens committed after the first may take, minus the time they took.

    The allowance per token is re-estimated at every commit and applies to *all* tokens so far:
    the budget is a multiple of what the best local decoding would have taken for this request,
    and the latest estimate of that is the best one (an early, rough estimate leaves no lasting
    debt or credit).  ``credit_per_token`` is what past requests left unspent per token: it is
    lent up front for the tokens still to come, so that the budget is spent evenly over the
    request (pacing) rather than saved up and lost at its end.
    """

    first_token_at: float | None = None
    tokens: int = 0  # committed after the first token
    budget_tpot_s: float = 0.0  # allowed time per token (adaptive policy)
    credit_per_token_s: float = 0.0

    def earn(self, tokens: int, now: float, budget_tpot_s: float | None = None) -> None:
        """``tokens`` were committed (the request's first is its time to first token, not on
        the account); ``budget_tpot_s``: the allowance per token as re-estimated now."""
        if tokens <= 0:
            return
        if budget_tpot_s is not None:
            self.budget_tpot_s = budget_tpot_s
        if self.first_token_at is None:
            self.first_token_at = now
            tokens -= 1
        self.tokens += tokens

    def slack(self, now: float, tokens_to_come: int) -> float:
        """What the request has to spare now: its tokens' allowance minus the time they took,
        plus the credit lent for the ``tokens_to_come``."""
        if self.first_token_at is None:
            return 0.0
        spent = self.tokens * self.budget_tpot_s - (now - self.first_token_at)
        return spent + self.credit_per_token_s * tokens_to_come

    def unspent_per_token(self, now: float) -> float:
        """At the end of the request: what it left unspent, per token."""
        return self.slack(now, 0) / self.tokens if self.tokens else 0.0


def budget_tpot(estimates: Estimates, max_slowdown: float, has_local_draft: bool,
                tokens: int | None = None) -> float:
    """Allowed seconds per committed token: ``max_slowdown`` x the best decoding at the busy
    site alone for a request of ``tokens`` tokens, and never more than target-only decoding.

    The reference is estimated with acceptance one standard error above its estimate: local
    decoding may well be that fast, and a budget that holds only on an average estimate would be
    missed half of the time.  The margin shrinks as judged drafts accumulate.
    """
    draft_s = estimates.local_draft_pass.seconds(1) if has_local_draft else None
    best, _ = best_local_tpot(estimates.acceptance, estimates.target_pass, draft_s, tokens,
                              errors=1.0)
    return min(max_slowdown * best, estimates.target_pass.seconds(1))


class Option(NamedTuple):
    kind: Kind
    seconds: float  # expected time from now until the resulting verification has committed
    tokens: float  # expected tokens it commits
    busy_draft_s: float  # busy-site draft time it spends from now on
    window: int | None = None  # VERIFY_REMOTE: drafts to verify; LOCAL_DRAFT: worker drafts first
    until: float | None = None  # WAIT: the expected arrival waited for

    def decision(self) -> Decision:
        return Decision(self.kind, until=self.until, window=self.window)


def decide_adaptive(v: View) -> Decision:
    """The option with the least busy-site draft time per token that fits the latency budget
    (then the fastest); if none fits, the one that wins back the most of the budget.

    Every option is judged on what it costs from now on: time and passes already spent on a
    round under way are spent whatever comes next.  Its worth against the budget is what it adds
    to the slack, ``tokens * budget_tpot - seconds``; maximising that when over budget is the
    optimal stopping rule for a local round (draft on while one more draft is expected to be
    worth more than its time at the budget's rate), where judging by the rate of the time still
    to come would end rounds too early and never catch up.
    """
    if v.ride:
        options = ride_options(v)
    else:
        options = local_round_options(v) if v.proposal_local else fresh_options(v)
    fits = [o for o in options if v.slack_s + o.tokens * v.budget_tpot_s - o.seconds >= 0.0]
    if fits:
        best = min(fits, key=lambda o: (o.busy_draft_s / o.tokens, o.seconds / o.tokens))
    else:
        best = max(options, key=lambda o: o.tokens * v.budget_tpot_s - o.seconds)
    return best.decision()


def fresh_options(v: View) -> list[Option]:
    """No proposal under way: every way to start the next verification."""
    est = v.estimates
    cap = min(v.max_window, v.budget)
    remote = est.calibration.p_accepts(d.entropy for d in v.remote[:cap]) if v.worker_ok else []
    k = len(remote)
    # expected tokens of a window of w drafts: the worker's (calibrated by their entropy), then
    # drafts not made yet (by their depth)
    tokens = expected_tokens_by_window(remote + est.acceptance.window_rates(k, cap - k))
    verify = shared_verify(est, cap + 1)  # verify[w]: w drafts feed w + 1 tokens
    options = [Option(Kind.PLAIN, verify[0], 1.0, 0.0)]
    for w in range(1, k + 1):
        options.append(Option(Kind.VERIFY_REMOTE, verify[w], tokens[w], 0.0, window=w))
    if v.has_local_draft:
        td = est.local_draft_pass.seconds(1) * est.draft_price
        for g in range(k + 1, cap + 1):
            options.append(Option(Kind.LOCAL_DRAFT, (g - k) * td + verify[g], tokens[g],
                                  (g - k) * td, window=k))
    if v.worker_ok:  # wait for the worker's next drafts: the g-th is expected at arrivals[g-k-1]
        for g, until in zip(range(k + 1, cap + 1), v.arrivals):
            options.append(Option(Kind.WAIT, until - v.now + verify[g], tokens[g], 0.0,
                                  until=until))
    return options


def shared_verify(est: Estimates, tokens: int) -> list[float]:
    """``verify[w]``: the time a verification of ``w`` drafts is charged.  Alone, the pass's
    own time; in a pass shared with others, also what it adds for each of them: nothing up to
    the longest feed such passes carry anyway, the extra time of every token beyond it."""
    own = est.target_pass.seconds_up_to(tokens)
    others = est.others_per_pass
    if not others:
        return own
    free = min(max(int(est.target_longest.get), 1), tokens) - 1  # feeds this long cost nobody
    return [t + others * max(t - own[free], 0.0) for t in own]


def ride_options(v: View) -> list[Option]:
    """A target pass shared with others is leaving: join with a plain step or a prefix of the
    worker's drafts (it cannot wait or draft now)."""
    return [o for o in fresh_options(v) if o.kind in (Kind.PLAIN, Kind.VERIFY_REMOTE)]


def local_round_options(v: View) -> list[Option]:
    """A local round is under way: draft on, verify it, or take the worker's drafts instead."""
    est = v.estimates
    cap = min(v.max_window, v.budget)
    p = est.calibration.p_accepts
    proposal = p(d.entropy for d in v.proposal)
    m = len(proposal)
    tokens = expected_tokens_by_window(proposal + est.acceptance.window_rates(m, max(cap - m, 0)))
    verify = shared_verify(est, max(cap, m) + 1)
    td = est.local_draft_pass.seconds(1) * est.draft_price
    options = [Option(Kind.VERIFY_LOCAL, verify[m], tokens[m], 0.0)]
    for g in range(m + 1, cap + 1):
        options.append(Option(Kind.LOCAL_DRAFT, (g - m) * td + verify[g], tokens[g],
                              (g - m) * td))
    ours = m - v.proposal_local  # the worker's drafts the proposal started with
    if v.worker_ok and len(v.remote) > ours:
        # the worker has caught up past our proposal's remote part: its drafts cost nothing
        remote = expected_tokens_by_window(p(d.entropy for d in v.remote[:cap]))
        for w in range(ours + 1, min(len(v.remote), cap) + 1):
            options.append(Option(Kind.VERIFY_REMOTE, verify[w], remote[w], 0.0, window=w))
    return options
