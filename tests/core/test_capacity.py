"""The worker's capacity rules: lookahead caps over capacity, demand, seats for branch lanes."""

from __future__ import annotations

import itertools

from wanspec.core.capacity import DEFAULT_WORKER_MAX_BATCH, WorkerLoad, lookahead_cap
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
