"""A request given up before it finished (its client left) tells its worker at once."""

from __future__ import annotations

from wanspec.core.actions import Send
from wanspec.core.controller import ControllerConfig, ControllerCore
from wanspec.core.stopping import StopCriteria
from wanspec.protocol.messages import Cancel, SessionStart
from wanspec.sampling import SamplingParams


def core(use_worker: bool) -> ControllerCore:
    return ControllerCore(7, [1, 2, 3], StopCriteria(max_tokens=8), SamplingParams(),
                          ControllerConfig(), has_local_draft=False, use_worker=use_worker)


def test_an_abandoned_request_cancels_its_worker_session_once():
    c = core(True)
    started = c.start(0.0)
    assert any(isinstance(a, Send) and isinstance(a.msg, SessionStart) for a in started)
    assert c.on_abandoned() == [Send(Cancel(7, "cancelled"))]
    assert c.finished and c.on_abandoned() == []


def test_without_a_worker_there_is_nothing_to_cancel():
    c = core(False)
    c.start(0.0)
    assert c.on_abandoned() == [] and c.finished
