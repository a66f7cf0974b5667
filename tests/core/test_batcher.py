"""The continuous-batching pass former: drafts first, everything of one kind, oldest first, limits."""

from __future__ import annotations

import pytest

from wanspec.core.batcher import Batcher, BatchLimits, PassKind

T, D = PassKind.TARGET, PassKind.DRAFT


def test_nothing_waiting_means_no_pass():
    assert Batcher().next_pass() is None


def test_drafts_go_first_and_every_waiting_pass_of_the_kind_joins():
    b = Batcher()
    b.submit(2, T, 5, now=0.0)
    b.submit(1, D, 1, now=0.1)
    b.submit(3, D, 3, now=0.2)
    b.submit(4, T, 1, now=0.3)
    p = b.next_pass()
    assert (p.kind, p.keys, p.tokens, p.submitted) == (D, (1, 3), 4, (0.1, 0.2))
    p = b.next_pass()
    assert (p.kind, p.keys, p.tokens, p.submitted) == (T, (2, 4), 6, (0.0, 0.3))
    assert b.next_pass() is None


def test_drafting_requests_fall_into_step_with_the_verifying_ones():
    """Two SD requests out of phase: A has drafted its window, B has two drafts to go.  Drafts
    first lets B finish, so one verification carries both (lockstep), not two half-full ones."""
    b = Batcher()
    b.submit("A", T, 3, 0.0)
    b.submit("B", D, 1, 0.0)
    assert b.next_pass().keys == ("B",)
    b.submit("B", D, 1, 0.1)  # B's next draft, while A still waits for verification
    assert b.next_pass().keys == ("B",)
    b.submit("B", T, 3, 0.2)
    assert b.next_pass().keys == ("A", "B")


def test_a_target_pass_waits_through_at_most_max_draft_streak_draft_passes():
    b = Batcher(BatchLimits(max_draft_streak=3))
    b.submit("t", T, 1, 0.0)
    kinds = []
    for i in range(5):  # a drafter that never stops
        b.submit(i, D, 1, float(i))
        kinds.append(b.next_pass().kind)
    assert kinds == [D, D, D, T, D]


def test_limits_on_sequences_and_tokens_leave_the_rest_for_the_next_pass():
    b = Batcher(BatchLimits(max_sequences=2, max_tokens=10))
    for key, tokens in enumerate([4, 4, 4, 1]):
        b.submit(key, T, tokens, float(key))
    assert b.next_pass().keys == (0, 1)  # two sequences
    assert b.next_pass().keys == (2, 3)
    b = Batcher(BatchLimits(max_sequences=8, max_tokens=10))
    for key, tokens in enumerate([6, 6, 3, 1]):
        b.submit(key, T, tokens, float(key))
    assert b.next_pass().keys == (0, 2, 1 + 2)  # 6 + 3 + 1; the second 6 does not fit
    assert b.next_pass().keys == (1,)


def test_the_oldest_pass_runs_even_when_it_alone_exceeds_the_token_limit():
    b = Batcher(BatchLimits(max_tokens=8))
    b.submit(1, T, 100, 0.0)  # a long prefill
    b.submit(2, T, 1, 0.1)
    assert b.next_pass().keys == (1,)
    assert b.next_pass().keys == (2,)


def test_a_withdrawn_pass_never_runs_and_a_key_waits_once():
    b = Batcher()
    b.submit(1, T, 1, 0.0)
    b.submit(2, T, 1, 0.0)
    b.withdraw(1)
    b.withdraw(99)  # unknown: nothing to do
    assert b.next_pass().keys == (2,)
    b.submit(3, T, 1, 0.0)
    with pytest.raises(ValueError):
        b.submit(3, D, 1, 0.0)
    with pytest.raises(ValueError):
        b.submit(4, D, 0, 0.0)
    with pytest.raises(ValueError):
        BatchLimits(max_sequences=0)
    with pytest.raises(ValueError):
        BatchLimits(max_draft_streak=0)


def test_seats_left_counts_what_the_next_pass_of_a_kind_can_still_take():
    b = Batcher(BatchLimits(max_sequences=3))
    assert b.seats_left(T) == 3
    b.submit(1, T, 1, 0.0)
    b.submit(2, D, 1, 0.0)
    assert (b.seats_left(T), b.seats_left(D)) == (2, 2)
    b.submit(3, T, 1, 0.0)
    b.submit(4, T, 1, 0.0)
    assert b.seats_left(T) == 0  # a rider offered a seat now would wait a whole pass


def test_a_rounds_verifications_go_at_once_only_for_everyone_live_within_the_limits():
    b = Batcher(BatchLimits(max_sequences=2, max_tokens=10))
    assert b.verify_at_once(carried=2, promised=2, live=2, tokens=10)
    assert not b.verify_at_once(2, 1, 2, 5)  # one request's round promised nothing
    assert not b.verify_at_once(2, 2, 3, 10)  # a third request may join the verification
    assert not b.verify_at_once(2, 2, 2, 11)  # over the token limit: the batcher splits them
    assert not b.verify_at_once(3, 3, 3, 9)  # over the sequence limit
    assert b.verify_at_once(1, 1, 1, 50)  # one alone always goes (as the oldest pass does)
    b.submit(1, T, 1, now=0.0)
    assert not b.verify_at_once(1, 1, 1, 5)  # something else waits: queue as usual


def test_a_rounds_verification_formed_at_once_is_a_target_pass_for_the_draft_streak():
    b = Batcher(BatchLimits(max_draft_streak=1))
    b.submit(1, T, 1, now=0.0)
    b.submit(2, D, 1, now=0.0)
    assert b.next_pass().kind is D  # the target pass waits through one draft pass
    b.withdraw(1)
    assert b.verify_at_once(1, 1, 1, 4)  # (a target pass: the streak starts again)
    b.submit(3, T, 1, now=1.0)
    b.submit(4, D, 1, now=1.0)
    assert b.next_pass().kind is D
