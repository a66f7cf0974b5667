"""Building and reading ControllerCore by hand, for the hand-driven controller tests."""

from __future__ import annotations

from wanspec.core.actions import DraftDone, EmitTokens, Send, TargetDone
from wanspec.core.controller import ControllerConfig, ControllerCore
from wanspec.core.estimates import Estimates
from wanspec.core.policy import PolicyConfig, PolicyName
from wanspec.core.stopping import StopCriteria
from wanspec.protocol.messages import Commit
from wanspec.sampling import SamplingParams

PROMPT = [1, 2, 3]
RID = 7


def make(policy: PolicyName = PolicyName.REMOTE, *, gamma: int = 3, max_tokens: int = 8,
         has_local: bool = False, use_worker: bool = True, eos=frozenset(),
         sampling: SamplingParams = SamplingParams(), lookahead: int = 0) -> ControllerCore:
    est = Estimates.with_priors(rtt_s=0.05, target_s=0.1, draft_s=0.02)
    return ControllerCore(RID, PROMPT, StopCriteria(max_tokens=max_tokens, eos_ids=frozenset(eos)),
                          sampling,
                          ControllerConfig(gamma=gamma, lookahead=lookahead,
                                           policy=PolicyConfig(policy)),
                          has_local_draft=has_local, use_worker=use_worker, estimates=est)


def round_done(op: int, *tokens: int) -> DraftDone:
    """What a round of ``len(tokens)`` local draft passes answers (``RunDraft.count``)."""
    rest = tuple(DraftDone(op, t, 0.1, 0.9) for t in tokens[1:])
    return DraftDone(op, tokens[0], 0.1, 0.9, rest=rest)


def worker_msgs(actions):
    return [a.msg for a in actions if isinstance(a, Send)]


def prefilled(**kw) -> ControllerCore:
    """Started, its prompt prefilled (token 50 committed), a worker session open."""
    c = make(**kw)
    c.start(0.0)
    out = c.on_target_done(TargetDone(1, (50,)), 0.1)
    assert out[:2] == [EmitTokens((50,)), Send(Commit(RID, 0, 3, (50,)))]
    return c

