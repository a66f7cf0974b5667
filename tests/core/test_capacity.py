"""The worker's capacity rules: lookahead caps over capacity, demand, seats for branch lanes."""

from __future__ import annotations

import itertools

import pytest

from wanspec.core.capacity import (
    DEFAULT_WORKER_MAX_BATCH,
    MIN_PASSES_FITTED,
    WorkerLoad,
    WORKER_PASS_WINDOW,
    cheap_sequences,
    lookahead_cap,
    worker_pass_times,
)
from wanspec.core.passtimes import PassTimes
from wanspec.timing.device import DEFAULT_DRAFT_COST


def test_within_capacity_a_session_keeps_its_own_lookahead():
    assert lookahead_cap(8, WorkerLoad(max_batch=4, sessions=4)) == 8
    assert lookahead_cap(8, WorkerLoad(max_batch=4, sessions=0)) == 8
    assert lookahead_cap(8, WorkerLoad(max_batch=0, sessions=1000)) == 8  # no limit


def test_over_capacity_the_cap_shrinks_with_the_share_of_passes():
    assert lookahead_cap(8, WorkerLoad(max_batch=4, sessions=5)) == 6  # 8 * 4 // 5
    assert lookahead_cap(9, WorkerLoad(max_batch=2, sessions=6)) == 3
    assert lookahead_cap(8, WorkerLoad(max_batch=4, sessions=16)) == 2
    assert lookahead_cap(4, WorkerLoad(max_batch=2, sessions=100)) == 1  # the next token, always
    assert lookahead_cap(1, WorkerLoad(max_batch=1, sessions=2)) == 1


def test_the_caps_of_all_sessions_fit_in_lookahead_full_passes():
    for lookahead, batch, sessions in itertools.product(range(1, 17), range(1, 9), range(1, 80)):
        load = WorkerLoad(max_batch=batch, sessions=sessions)
        cap = lookahead_cap(lookahead, load)
        assert 1 <= cap <= lookahead
        if sessions > batch:
            assert sessions * cap <= max(sessions, lookahead * batch)
            more = WorkerLoad(max_batch=batch, sessions=sessions + 1)
            assert lookahead_cap(lookahead, more) <= cap  # more sessions never lengthen a cap


def test_demand_is_sessions_per_pass_slot():
    assert WorkerLoad(max_batch=4, sessions=6).demand == 1.5
    assert WorkerLoad(max_batch=0, sessions=6).demand == 0.0


def test_branch_lanes_use_spare_seats_only():
    load = WorkerLoad(max_batch=4, sessions=3)
    assert load.spare_seats and not load.over_capacity
    load.branches = 1  # the pass is full: no more branches, none paused yet
    assert not load.spare_seats and not load.over_capacity
    load.sessions = 4  # a new session takes a seat: branch lanes pause
    assert load.over_capacity


def test_the_default_worker_limit_is_where_the_default_draft_pass_stops_being_memory_bound():
    knee = DEFAULT_DRAFT_COST.base_ms / DEFAULT_DRAFT_COST.compute_ms_per_token  # 250 tokens
    assert 0.9 * knee <= DEFAULT_WORKER_MAX_BATCH <= 1.1 * knee


def fitted(line, sizes, repeat: int = 4) -> PassTimes:
    """The decoding passes of a device whose pass of ``n`` sequences takes ``line(n)`` seconds,
    as the worker records them (one token a sequence)."""
    load = WorkerLoad(passes=worker_pass_times())
    for _ in range(repeat):
        for n in sizes:
            load.on_pass(n, 1, line(n))
    assert load.passes is not None
    return load.passes


def test_on_a_cpu_branch_lanes_stop_where_a_pass_costs_twice_its_main_lines():
    # the shipped draft on one CPU thread: ~0.8 ms a pass plus ~0.25 ms a sequence
    cpu = fitted(lambda n: 0.0008 + 0.00025 * n, range(1, 18))
    # one session: 1.05 ms alone, so at most 2.1 ms: the main line and 4 branch lanes
    assert cheap_sequences(cpu, 1) == 5
    load = WorkerLoad(max_batch=DEFAULT_WORKER_MAX_BATCH, sessions=1, passes=cpu)
    assert load.seats == 5
    load.branches = 4
    assert not load.spare_seats and not load.over_capacity
    load.branches = 5
    assert load.over_capacity  # branch lanes pause; the main line goes on
    # 8 sessions: 2.8 ms for their main lines, 5.6 ms with 11 branch lanes among them
    assert cheap_sequences(cpu, 8) == 19
    # never fewer seats than main lines
    assert cheap_sequences(fitted(lambda n: 0.00001 * n, range(1, 9)), 4) >= 4


def test_on_the_default_accelerator_the_worker_limit_decides():
    def a100(n):  # n one-token sequences over ~100 tokens of KV each
        return DEFAULT_DRAFT_COST.seconds(n, longest=1, context=100 * n, sequences=n)

    passes = fitted(a100, range(1, 300, 7))
    for sessions in (1, 8, 32, 64, 256):
        assert cheap_sequences(passes, sessions) >= DEFAULT_WORKER_MAX_BATCH
        load = WorkerLoad(max_batch=DEFAULT_WORKER_MAX_BATCH, sessions=sessions, passes=passes)
        assert load.seats == DEFAULT_WORKER_MAX_BATCH


def test_no_limit_from_flat_passes_too_few_passes_or_none_measured():
    flat = fitted(lambda n: 0.004, range(1, 18))  # an emulated flat cost
    assert cheap_sequences(flat, 1) is None
    few = fitted(lambda n: 0.001 * n, range(1, MIN_PASSES_FITTED), repeat=1)
    assert cheap_sequences(few, 1) is None
    assert cheap_sequences(None, 1) is None
    assert WorkerLoad(max_batch=4, sessions=1, passes=flat).seats == 4
    assert WorkerLoad(max_batch=0, sessions=1).seats == 0  # (0: no limit at all)


def test_only_decoding_passes_teach_what_a_lane_costs():
    load = WorkerLoad(passes=worker_pass_times())
    load.on_pass(1, 120, 0.004)  # a prompt's prefill: many tokens for one sequence
    load.on_pass(9, 8, 0.002)  # eight decodes beside one fork catching up
    assert load.passes is not None and len(load.passes.samples) == 0
    load.on_pass(3, 1, 0.0015)
    load.on_pass(3, 2, 0.0016)  # (two tokens for one of them: still decoding)
    assert list(load.passes.samples) == [(3, 0.0015), (3, 0.0016)]
    unfitted = WorkerLoad()  # --no-fit-trees: nothing recorded, no limit but max_batch
    unfitted.on_pass(3, 1, 0.0015)
    assert unfitted.passes is None and unfitted.seats == 0


def test_a_pause_does_not_shrink_the_trees_for_a_whole_window():
    def a100(n):
        return DEFAULT_DRAFT_COST.seconds(n, longest=1, context=100 * n, sequences=n)

    load = WorkerLoad(max_batch=DEFAULT_WORKER_MAX_BATCH, sessions=1, passes=worker_pass_times())
    for n in list(range(1, 18)) * 8:
        load.on_pass(n, 1, a100(n))
    assert load.seats == DEFAULT_WORKER_MAX_BATCH
    load.on_pass(17, 1, 0.030)  # a 30 ms pause (a garbage collection) in a 4 ms pass
    assert load.passes.samples[-1][1] == pytest.approx(a100(17))  # passes were exact: as expected
    assert load.seats == DEFAULT_WORKER_MAX_BATCH
    for _ in range(WORKER_PASS_WINDOW):  # a lasting slowdown still moves the fit
        load.on_pass(17, 1, 0.030)
        load.on_pass(1, 1, a100(1))
    assert load.seats < DEFAULT_WORKER_MAX_BATCH


def test_clocks_that_went_wrong_are_not_fitted():
    p = worker_pass_times()
    p.add(3, float("nan"))
    p.add(3, float("inf"))
    p.add(3, -1.0)
    assert len(p.samples) == 0 and p.fit() is None


def test_an_emulated_floor_lets_lanes_grow_while_the_compute_fits_within_it():
    # the shipped draft on one CPU thread (as above) behind a 4 ms emulated draft pass
    cpu = fitted(lambda n: 0.0008 + 0.00025 * n, range(1, 18))
    # the emulated device is flat: lanes go on while a pass computes within 4 ms (12 sequences:
    # 3.8 ms), not only to twice the main line's 1.05 ms (5 sequences)
    assert cheap_sequences(cpu, 1, floor_s=0.004) == 12
    assert cheap_sequences(cpu, 1) == 5
    load = WorkerLoad(max_batch=DEFAULT_WORKER_MAX_BATCH, sessions=1, passes=cpu, floor_s=0.004)
    assert load.seats == 12
    # a floor the CPU cannot meet even for the main lines: those alone, never fewer
    assert cheap_sequences(cpu, 8, floor_s=0.001) == 8
    # compute that does not grow with sequences: no limit, as without a floor
    assert cheap_sequences(fitted(lambda n: 0.002, range(1, 18)), 1, floor_s=0.004) is None
