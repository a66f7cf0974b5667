"""WorkerCore growing draft trees: branches from runner-ups, their caches, commits onto them."""

from __future__ import annotations

from wanspec.core.actions import DraftDone, Send
from wanspec.core.branching import MIN_VALUE, BranchOdds
from wanspec.core.capacity import worker_pass_times
from wanspec.core.chain import DraftToken
from wanspec.core.worker import DraftFor, Release, WorkerCore, WorkerLimits, WorkerLoad
from wanspec.protocol.messages import Cancel, Commit, Drafts, SessionStart
from wanspec.simulate.engine import CONTROLLER_HELLO, WORKER_HELLO

PROMPT = (5, 6, 7)


def new_core(**kw) -> WorkerCore:
    core = WorkerCore(WORKER_HELLO, **kw)
    core.on_message(CONTROLLER_HELLO, 0.0)
    return core


def runs(actions) -> list[DraftFor]:
    return [a for a in actions if isinstance(a, DraftFor)]


def sent(actions) -> list:
    return [a.msg for a in actions if isinstance(a, Send)]


def answer(core: WorkerCore, fa: DraftFor, token: int, alternatives=(), probs=(), top=0.6):
    return core.on_draft_done(fa.rid, DraftDone(fa.run.op, token, 0.7, top, alternatives, probs))


def started(branches: int = 2, lookahead: int = 4, **kw):
    core = new_core(**kw)
    (fa,) = core.on_message(SessionStart(1, PROMPT, lookahead=lookahead, branches=branches), 0.0)
    return core, fa


def test_a_runner_up_starts_a_branch_on_its_own_cache_from_the_parents_prefix():
    core, fa = started()
    out = answer(core, fa, 10, (20, 30), (0.3, 0.05))
    assert sent(out) == [Drafts(1, 0, 3, (10,), (0.7,), (0.6,))]  # the main line, as ever
    main, branch = runs(out)[0], runs(out)[1]
    assert (main.cache, main.run.start, main.run.tokens) == (0, 3, (10,))
    # the branch: cache 1 takes the prompt's keys from cache 0, feeds its first token
    assert (branch.cache, branch.copy_from) == (1, 0)
    assert (branch.run.start, branch.run.tokens, branch.run.position) == (3, (20,), 4)
    # 30 is worth 0.05 * 1: above the floor, but the first runner-up is grown first
    assert len(runs(out)) == 2 + (0.05 >= MIN_VALUE)
    out = answer(core, branch, 21)
    # its first message carries the token it starts with, from its fork
    (msg,) = sent(out)
    assert (msg.lane, msg.parent, msg.fork, msg.base, msg.tokens) == (1, 0, 3, 3, (20, 21))
    # later ones are plain continuations of the lane
    nxt = next(r for r in runs(out) if r.cache == 1)
    assert (nxt.run.start, nxt.run.tokens) == (4, (21,))
    (msg,) = sent(answer(core, nxt, 22))
    assert (msg.lane, msg.base, msg.tokens) == (1, 5, (22,))


def test_a_commit_that_takes_a_branch_keeps_the_epoch_and_continues_along_it():
    core, fa = started(branches=1)
    out = answer(core, fa, 10, (20,), (0.4,))
    main, branch = runs(out)
    answer(core, main, 11)
    answer(core, branch, 21)
    s = core.sessions[1]
    out = core.on_message(Commit(1, 0, 3, (20,)), 0.1)  # the target chose the runner-up
    assert s.epoch == 0 and s.rollbacks == 0 and core.stats.branch_hits == 1
    assert s.tree.lane == 1 and s.chain == [21] and sorted(s.tree.lanes) == [1]
    # lane 0's cache is free again (for the next branch, once its pass in flight is back)
    assert s.caches[0].lane is None
    assert all(r.cache == 1 or r.copy_from == 1 for r in runs(out))


def test_a_commit_off_the_tree_starts_a_new_epoch_on_the_followed_lanes_cache():
    core, fa = started(branches=1)
    main, branch = runs(answer(core, fa, 10, (20,), (0.4,)))
    (inflight,) = [r for r in runs(answer(core, branch, 21)) if r.cache == 1]
    s = core.sessions[1]
    out = core.on_message(Commit(1, 0, 3, (20, 99)), 0.1)  # took the branch, then left it
    assert s.epoch == 1 and s.rollbacks == 1 and s.chain == []
    assert sorted(s.tree.lanes) == [0] and s.tree.current.cache == 1
    assert runs(out) == []  # the cache's pass in flight (feeding 21) must come back first
    out = answer(core, inflight, 22)
    assert sent(out) == []  # wasted: it drafted after 21
    # the branch's cache holds 5 6 7 20 21: cut to the agreeing prefix, then 99 is fed
    (fresh,) = [r for r in runs(out) if r.cache == 1]
    assert (fresh.run.start, fresh.run.tokens, fresh.run.position) == (4, (99,), 5)
    # the main line's pass still in flight comes back wasted
    assert sent(answer(core, main, 11)) == []


def test_the_budget_and_the_workers_spare_seats_bound_the_branches():
    core, fa = started(branches=1)
    out = answer(core, fa, 10, (20, 30), (0.4, 0.4))
    assert len(runs(out)) == 2  # the main line and one branch: the session's budget
    load = WorkerLoad(max_batch=1)
    core, fa = started(branches=4, load=load)
    load.sessions = 1  # (the adapter counts the sessions) one seat, taken by the main line
    assert len(runs(answer(core, fa, 10, (20,), (0.4,)))) == 1
    assert load.branches == 0
    load = WorkerLoad(max_batch=4)
    core, fa = started(branches=4, load=load)
    load.sessions = 1
    out = answer(core, fa, 10, (20, 30, 40), (0.3, 0.2, 0.1))
    assert len(runs(out)) == 4 and load.branches == 3  # every seat a pass has
    core.on_message(Cancel(1), 0.1)
    assert load.branches == 0


def test_the_workers_limit_caps_what_a_controller_asks_for():
    core, fa = started(branches=50, limits=WorkerLimits(max_branches=1))
    assert len(runs(answer(core, fa, 10, (20, 30), (0.4, 0.4)))) == 2


def test_improbable_runner_ups_and_sessions_without_branches_grow_no_branch():
    core, fa = started(branches=4)
    assert len(runs(answer(core, fa, 10, (20,), (MIN_VALUE / 2,)))) == 1
    core, fa = started(branches=0)
    assert len(runs(answer(core, fa, 10, (20,), (0.9,)))) == 1
    assert core.sessions[1].tree.current.alternatives == {}  # not even recorded


def test_deeper_forks_are_worth_less_the_less_likely_the_path_to_them():
    core, fa = started(branches=1, lookahead=8)
    main = runs(answer(core, fa, 10, top=0.5))[0]
    out = answer(core, main, 11, (21,), (0.3,), top=0.5)  # at position 4, behind a 0.5 draft
    (branch,) = [r for r in runs(out) if r.cache == 1]
    s = core.sessions[1]
    assert s.tree.lanes[1].fork == 4
    assert s.tree.lanes[1].reach == core.odds.hit(0.3)


def test_a_released_session_frees_every_cache():
    core, fa = started(branches=2)
    answer(core, fa, 10, (20, 30), (0.4, 0.3))
    out = core.on_message(Cancel(1), 0.1)
    assert out[0] == Release(1)


def test_odds_learn_from_commits():
    odds = BranchOdds()
    for _ in range(100):
        odds.on_judged(DraftToken(1, 0.5, 0.9), False, ((2, 0.05),), 2)  # runner-up right
    assert odds.accept(0.9) < 0.9 * 0.5  # the draft is over-confident here
    assert odds.hit(0.05) > 0.05 * 2  # and its runner-ups better than it says
    assert odds.hit(0.9) == 1.0


def test_a_failed_pass_of_a_pruned_lane_is_wasted_not_a_session_failure():
    core, fa = started(branches=1)
    main, branch = runs(answer(core, fa, 10, (20,), (0.4,)))
    core.on_message(Commit(1, 0, 3, (10, 11)), 0.1)  # along the main line: the branch is pruned
    out = core.on_draft_failed(1, branch.run.op, "ValueError")
    assert not any(isinstance(a, Send) for a in out) and 1 in core.sessions
    assert core.sessions[1].wasted == 1


def test_over_capacity_branch_lanes_wait_and_main_lines_go_on():
    load = WorkerLoad(max_batch=8)
    core, fa = started(branches=4, load=load)
    load.sessions = 1
    out = answer(core, fa, 10, (20, 30), (0.4, 0.3))
    main = next(r for r in runs(out) if r.cache == 0)
    branches = [r for r in runs(out) if r.cache != 0]
    assert len(branches) == 2
    load.sessions = 8  # other sessions arrived: 8 main lines + 2 branches > 8 seats
    assert load.over_capacity
    out = answer(core, branches[0], 21)
    assert [r.cache for r in runs(out)] == []  # the branch waits
    out = answer(core, main, 11)
    assert [r.cache for r in runs(out)] == [0]  # the main line does not


def test_on_a_slow_device_the_tree_stops_where_passes_stop_being_cheap():
    passes = worker_pass_times()
    for _ in range(4):  # measured: 0.8 ms a pass plus 0.25 ms a sequence (a CPU)
        for n in range(1, 18):
            passes.add(n, 0.0008 + 0.00025 * n)
    load = WorkerLoad(max_batch=256, passes=passes)
    core, fa = started(branches=16, load=load)
    load.sessions = 1
    out = answer(core, fa, 10, (20, 30, 40), (0.3, 0.2, 0.1))
    assert len(runs(out)) == 4 and load.branches == 3  # within the 5 cheap seats
    main = next(r for r in runs(out) if r.cache == 0)
    out = answer(core, main, 11, (21, 31, 41), (0.3, 0.2, 0.1))
    assert load.branches == 4  # one more, then the pass would cost more than twice the main line
    # the same session on a device whose passes are flat grows its whole budget's worth
    flat = worker_pass_times()
    for n in range(1, 18):
        flat.add(n, 0.004)
    load = WorkerLoad(max_batch=256, passes=flat)
    core, fa = started(branches=16, load=load)
    load.sessions = 1
    main = next(r for r in runs(answer(core, fa, 10, (20, 30, 40), (0.3, 0.2, 0.1)))
                if r.cache == 0)
    answer(core, main, 11, (21, 31, 41), (0.3, 0.2, 0.1))
    assert load.branches == 6
