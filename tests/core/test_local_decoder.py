"""LocalDecoder driven by hand with fake events: the exact action sequence of standard SD."""

from __future__ import annotations

import pytest

from wanspec.core.actions import (
    DraftDone,
    EmitTokens,
    Finished,
    RunDraft,
    RunTarget,
    Site,
    TargetDone,
    ThenVerify,
)
from wanspec.core.local import LocalDecoder, LocalMode
from wanspec.core.stopping import StopCriteria
from wanspec.errors import WanspecError


def target_done(action: RunTarget, *choices: int) -> TargetDone:
    assert len(choices) == action.want
    return TargetDone(action.op, tuple(choices))


def draft_done(action: RunDraft, *tokens: int) -> DraftDone:
    """The proposals of a draft round (``action.count`` passes, one token each)."""
    assert len(tokens) == action.count
    rest = tuple(DraftDone(action.op, t, 0.5, 0.9) for t in tokens[1:])
    return DraftDone(action.op, tokens[0], 0.5, 0.9, rest=rest)


def only_run(actions):
    runs = [a for a in actions if isinstance(a, (RunTarget, RunDraft))]
    assert len(runs) == 1 and actions[-1] is runs[0]
    return runs[0]


def test_sd_full_round_trip_with_catch_up_rollback_and_clamp():
    d = LocalDecoder([1, 2, 3], StopCriteria(max_tokens=10), mode=LocalMode.SD, gamma=3)
    (a,) = d.start(0.0)
    # prefill: the whole prompt, one choice wanted (position 3)
    assert a == RunTarget(op=1, start=0, tokens=(1, 2, 3), want=1)

    acts = d.on_event(target_done(a, 10), 1.0)
    assert acts[0] == EmitTokens((10,))
    a = only_run(acts)
    # one round of gamma draft passes, in one call to the device; its first pass catches up on
    # prompt + committed token
    assert a == RunDraft(op=2, site=Site.CONTROLLER, start=0, tokens=(1, 2, 3, 10), count=3,
                        then_verify=ThenVerify(3, (10,)))
    assert a.position == 4

    promised, done = a.then_verify, draft_done(a, 11, 12, 13)
    a = only_run(d.on_event(done, 1.3))
    # verification: start == n - 1, the last committed token + the window, want == len(window)+1
    assert a == RunTarget(op=3, start=3, tokens=(10, 11, 12, 13), want=4)
    assert a == promised.action(3, done)  # the verification the round promised

    # full acceptance + bonus 14
    acts = d.on_event(target_done(a, 11, 12, 13, 14), 2.0)
    assert acts[0] == EmitTokens((11, 12, 13, 14))
    a = only_run(acts)
    # catch-up after a full acceptance: the last draft and the bonus in the round's first pass
    assert a == RunDraft(op=4, site=Site.CONTROLLER, start=6, tokens=(13, 14), count=3,
                    then_verify=ThenVerify(7, (14,)))

    a = only_run(d.on_event(draft_done(a, 15, 16, 17), 2.3))
    assert a == RunTarget(op=5, start=7, tokens=(14, 15, 16, 17), want=4)

    # reject at the second draft: accept 15, correction 99
    acts = d.on_event(target_done(a, 15, 99, 50, 51), 3.0)
    assert acts[0] == EmitTokens((15, 99))
    a = only_run(acts)
    # rollback: the draft cache is cut to the end of the accepted prefix, then the correction
    # fed; 3 tokens left: gamma is clamped to remaining - 1 == 2
    assert a == RunDraft(op=6, site=Site.CONTROLLER, start=9, tokens=(99,), count=2,
                    then_verify=ThenVerify(9, (99,)))
    assert d.transcript.output == [10, 11, 12, 13, 14, 15, 99]

    a = only_run(d.on_event(draft_done(a, 20, 21), 3.2))
    assert a == RunTarget(op=7, start=9, tokens=(99, 20, 21), want=3)

    acts = d.on_event(target_done(a, 20, 21, 22), 4.0)
    assert acts == [EmitTokens((20, 21, 22)), Finished("max_tokens")]
    assert d.finished
    assert d.transcript.output == [10, 11, 12, 13, 14, 15, 99, 20, 21, 22]

    m = d.metrics
    assert m.target_passes == 4
    assert m.draft_passes == {"controller": 8, "worker": 0}
    assert (m.drafted_tokens, m.accepted_tokens, m.verify_rounds) == (8, 6, 3)
    assert m.tokens_from_verify == 9
    assert m.position_attempts == [3, 3, 2] and m.position_accepts == [3, 2, 1]
    assert m.committed_tokens == 10
    assert (m.start_time, m.first_token_time, m.end_time) == (0.0, 1.0, 4.0)


def test_target_mode_decodes_one_token_per_pass():
    d = LocalDecoder([4, 5], StopCriteria(max_tokens=3), mode=LocalMode.TARGET, gamma=4)
    (a,) = d.start(0.0)
    assert a == RunTarget(op=1, start=0, tokens=(4, 5), want=1)
    acts = d.on_event(target_done(a, 6), 1.0)
    assert acts == [EmitTokens((6,)), RunTarget(op=2, start=2, tokens=(6,), want=1)]
    acts = d.on_event(target_done(acts[-1], 7), 2.0)
    assert acts == [EmitTokens((7,)), RunTarget(op=3, start=3, tokens=(7,), want=1)]
    acts = d.on_event(target_done(acts[-1], 8), 3.0)
    assert acts == [EmitTokens((8,)), Finished("max_tokens")]
    assert d.metrics.draft_passes == {"controller": 0, "worker": 0}
    assert d.metrics.target_passes == 3 and d.metrics.verify_rounds == 0


def test_max_tokens_one_finishes_after_prefill():
    d = LocalDecoder([4], StopCriteria(max_tokens=1), mode=LocalMode.SD, gamma=4)
    (a,) = d.start(0.0)
    assert d.on_event(target_done(a, 9), 0.5) == [EmitTokens((9,)), Finished("max_tokens")]
    assert d.metrics.draft_passes["controller"] == 0


def test_gamma_clamped_to_zero_skips_drafting():
    # max_tokens 2: after the prefill one token remains, so no draft can be verified usefully
    d = LocalDecoder([4], StopCriteria(max_tokens=2), mode=LocalMode.SD, gamma=4)
    (a,) = d.start(0.0)
    acts = d.on_event(target_done(a, 9), 0.5)
    assert acts == [EmitTokens((9,)), RunTarget(op=2, start=1, tokens=(9,), want=1)]
    assert d.on_event(target_done(acts[-1], 8), 1.0) == [EmitTokens((8,)), Finished("max_tokens")]


def test_gamma_clamped_to_one():
    d = LocalDecoder([4], StopCriteria(max_tokens=3), mode=LocalMode.SD, gamma=4)
    (a,) = d.start(0.0)
    a = only_run(d.on_event(target_done(a, 9), 0.5))
    assert a == RunDraft(op=2, site=Site.CONTROLLER, start=0, tokens=(4, 9),
                        then_verify=ThenVerify(1, (9,)))
    a = only_run(d.on_event(draft_done(a, 7), 0.6))
    assert a == RunTarget(op=3, start=1, tokens=(9, 7), want=2)
    assert d.on_event(target_done(a, 7, 6), 1.0) == [EmitTokens((7, 6)), Finished("max_tokens")]


def test_rejection_of_the_first_draft_rolls_the_draft_back_fully():
    d = LocalDecoder([1], StopCriteria(max_tokens=20), gamma=2)
    (a,) = d.start(0.0)
    a = only_run(d.on_event(target_done(a, 2), 0.1))  # draft start 0, (1, 2); then (30,)
    a = only_run(d.on_event(draft_done(a, 30, 31), 0.3))
    assert a == RunTarget(op=3, start=1, tokens=(2, 30, 31), want=3)
    acts = d.on_event(target_done(a, 3, 40, 41), 0.4)
    assert acts[0] == EmitTokens((3,))
    # the draft cache held [1, 2, 30]; only [1, 2] is still valid
    assert acts[-1] == RunDraft(op=4, site=Site.CONTROLLER, start=2, tokens=(3,), count=2,
                               then_verify=ThenVerify(2, (3,)))
    assert d.metrics.accepted_tokens == 0 and d.metrics.drafted_tokens == 2


def test_eos_inside_an_accepted_window_finishes_there():
    d = LocalDecoder([1], StopCriteria(max_tokens=20, eos_ids=frozenset({0})), gamma=3)
    (a,) = d.start(0.0)
    a = only_run(d.on_event(target_done(a, 2), 0.1))
    a = only_run(d.on_event(draft_done(a, 3, 0, 5), 0.2))
    acts = d.on_event(target_done(a, 3, 0, 5, 6), 0.5)
    assert acts == [EmitTokens((3, 0)), Finished("eos")]
    assert d.transcript.output == [2, 3, 0]
    m = d.metrics
    assert (m.drafted_tokens, m.accepted_tokens, m.tokens_from_verify) == (3, 3, 2)
    assert m.end_time == 0.5


def test_stop_string_finish_reason():
    stop = StopCriteria(max_tokens=20, stop_strings=("c",),
                        detokenize=lambda ids: "".join("abcdef"[i] for i in ids))
    d = LocalDecoder([0], stop, mode=LocalMode.TARGET)
    (a,) = d.start(0.0)
    acts = d.on_event(target_done(a, 1), 0.1)
    assert acts == [EmitTokens((1,)), RunTarget(op=2, start=1, tokens=(1,), want=1)]
    assert d.on_event(target_done(acts[-1], 2), 0.2) == [EmitTokens((2,)), Finished("stop_string")]


def test_worker_draft_site_is_reported():
    d = LocalDecoder([1], StopCriteria(max_tokens=5), gamma=2, draft_site=Site.WORKER)
    (a,) = d.start(0.0)
    a = only_run(d.on_event(target_done(a, 2), 0.1))
    assert a.site is Site.WORKER
    assert d.metrics.draft_passes == {"controller": 0, "worker": 2}  # a round of two passes


def test_protocol_errors():
    with pytest.raises(WanspecError):
        LocalDecoder([1], StopCriteria(max_tokens=5), gamma=0)
    with pytest.raises(WanspecError):
        LocalDecoder([], StopCriteria(max_tokens=5))
    d = LocalDecoder([1], StopCriteria(max_tokens=5))
    (a,) = d.start(0.0)
    with pytest.raises(RuntimeError):
        d.start(0.0)
    with pytest.raises(RuntimeError):
        d.on_event(TargetDone(a.op + 1, (3,)), 0.1)  # wrong op
    d.on_event(target_done(a, 3), 0.1)
    with pytest.raises(RuntimeError):
        d.on_event(target_done(a, 3), 0.2)  # the same event twice


def _round(d: LocalDecoder, first, verdicts: list[bool], now: float):
    """Answer the draft passes of one round, then the verification: draft i is accepted iff
    ``verdicts[i]`` (up to the first rejection); returns the window length and the next pass."""
    a, window, token = first, 0, 100
    while isinstance(a, RunDraft):
        a, window = only_run(d.on_event(draft_done(a, *range(token + window, token + window
                                                             + a.count)), now)), window + a.count
    assert isinstance(a, RunTarget) and a.want == window + 1
    choices, k = [], 0
    while k < window and verdicts[k]:
        choices.append(token + k)
        k += 1
    choices += [7] * (window + 1 - len(choices))  # the target's own tokens from the miss on
    return window, only_run(d.on_event(TargetDone(a.op, tuple(choices)), now))


def test_heuristic_schedule_grows_by_two_on_full_acceptance_and_shrinks_by_one():
    """Hugging Face's num_assistant_tokens_schedule="heuristic" (the dynamic SD baseline)."""
    from wanspec.core.local import GammaSchedule

    d = LocalDecoder([1, 2], StopCriteria(max_tokens=200), gamma=3,
                     schedule=GammaSchedule.HEURISTIC)
    (prefill,) = d.start(0.0)
    a = only_run(d.on_event(target_done(prefill, 5), 0.1))
    windows = []
    for verdicts in ([True] * 3, [True] * 5, [False], [True, False], [False] * 9, [False] * 9,
                     [False] * 9, [False] * 9, [False] * 9, [True]):
        window, a = _round(d, a, verdicts, 1.0)
        windows.append(window)
    assert windows == [3, 5, 7, 6, 5, 4, 3, 2, 1, 1]
    assert d.gamma == 3  # after the last, fully accepted window of 1


def test_constant_schedule_keeps_the_window():
    d = LocalDecoder([1, 2], StopCriteria(max_tokens=100), gamma=3)
    (prefill,) = d.start(0.0)
    a = only_run(d.on_event(target_done(prefill, 5), 0.1))
    for verdicts in ([True] * 3, [False]):
        window, a = _round(d, a, verdicts, 1.0)
        assert window == 3
