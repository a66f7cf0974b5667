"""Placing a request on one of several workers: the wait per accepted draft decides."""

from __future__ import annotations

from dataclasses import replace

from wanspec.core.placement import WorkerView, choose_worker, wait_per_accepted_draft


def view(name: str = "w", *, up: bool = True, rtt: float = 0.03, interval: float = 0.004,
         demand: float = 0.0, acceptance: float = 0.7, requests: int = 0) -> WorkerView:
    return WorkerView(name, up, rtt, interval, demand, acceptance, requests)


def test_the_nearer_worker_wins_when_drafts_are_alike():
    assert choose_worker([view(rtt=0.1), view(rtt=0.02)]) == 1


def test_better_drafts_can_outweigh_a_longer_round_trip():
    near_poor = view(rtt=0.02, acceptance=0.3)  # waits 24 ms per 1.43 tokens
    far_good = view(rtt=0.04, acceptance=0.9)  # waits 44 ms per 10 tokens
    assert choose_worker([near_poor, far_good]) == 1
    assert wait_per_accepted_draft(far_good) < wait_per_accepted_draft(near_poor)


def test_an_overloaded_worker_drafts_slower_and_loses():
    idle = view(rtt=0.03)
    loaded = view(rtt=0.02, interval=0.01, demand=4.0)  # 20 + 40 ms before a new draft
    assert choose_worker([loaded, idle]) == 1
    # within capacity (demand <= 1) sharing costs nothing
    assert wait_per_accepted_draft(view(demand=0.9)) == wait_per_accepted_draft(view(demand=0))


def test_only_connected_workers_not_lost_by_the_request_are_placed_on():
    workers = [view(rtt=0.01, up=False), view(rtt=0.05), view(rtt=0.02)]
    assert choose_worker(workers) == 2
    assert choose_worker(workers, exclude=frozenset({2})) == 1
    assert choose_worker(workers, exclude=frozenset({1, 2})) is None
    assert choose_worker([]) is None


def test_ties_go_to_the_worker_with_fewer_requests_then_to_the_users_order():
    assert choose_worker([view(requests=3), view(requests=1), view(requests=1)]) == 1
    assert choose_worker([view(), view()]) == 0


def test_a_burst_is_spread_over_workers_whose_waits_differ_by_noise_only():
    a, b = view(rtt=0.0300), view(rtt=0.0305)  # a ping's worth apart
    placed = [0, 0]
    for _ in range(10):
        i = choose_worker([replace(a, requests=placed[0]), replace(b, requests=placed[1])])
        assert i is not None
        placed[i] += 1
    assert placed == [5, 5]
    # a clearly nearer worker still takes everything
    assert choose_worker([view(rtt=0.03, requests=9), view(rtt=0.06)]) == 0


def test_a_perfect_acceptance_estimate_does_not_make_the_wait_vanish():
    assert wait_per_accepted_draft(view(acceptance=1.0)) > 0
