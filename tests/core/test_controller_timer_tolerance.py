"""Regression: a timer delivered a hair before its deadline must still fire (no livelock).

asyncio runs a timer when it is due within the loop's clock resolution, so on a virtual clock the
controller can be woken at ``deadline - epsilon``; it must act then, not re-arm the same timer.
"""

from wanspec.core.actions import RunTarget, TargetDone
from wanspec.core.controller import ControllerConfig, ControllerCore
from wanspec.core.estimates import Estimates
from wanspec.core.policy import PolicyConfig, PolicyName
from wanspec.core.stopping import StopCriteria
from wanspec.sampling import SamplingParams


def test_timer_fired_within_clock_resolution_makes_progress():
    core = ControllerCore(1, [1, 2, 3], StopCriteria(max_tokens=8), SamplingParams(),
                          ControllerConfig(policy=PolicyConfig(PolicyName.REMOTE)),
                          has_local_draft=False,
                          estimates=Estimates.with_priors(rtt_s=0.030))
    prefill = next(a for a in core.start(0.0) if isinstance(a, RunTarget))
    # the worker's first drafts are expected soon: the remote policy waits for them
    out = core.on_target_done(TargetDone(prefill.op, (7,)), 0.030)
    assert not any(isinstance(a, RunTarget) for a in out)
    deadline = core.next_timer()
    assert deadline is not None and deadline > 0.030
    out = core.on_timer(deadline - 1e-9)
    assert any(isinstance(a, RunTarget) for a in out)  # gave up waiting: a plain target step
    assert core.next_timer() is None
