"""DraftsBundle: a batched draft pass's lanes of one session in one message, both ends.

The worker core hears of a whole batched pass at once (``on_pass_done``) and sends each session
what the pass drafted for it as one message -- to a controller that announced ``bundles`` -- and
decides once per session what to run next.  The controller core takes a bundle exactly as it
takes the same Drafts one by one, and drops a worker whose bundle no honest worker sends.
"""

from __future__ import annotations

import dataclasses

import pytest

from wanspec.core.actions import DraftDone, Log, RunTarget, Send, TargetDone
from wanspec.core.controller import ControllerConfig, ControllerCore
from wanspec.core.policy import PolicyConfig, PolicyName
from wanspec.core.stopping import StopCriteria
from wanspec.core.worker import DraftFor, WorkerCore
from wanspec.protocol.codec import decode_message, encode_message
from wanspec.protocol.messages import (
    BUNDLES,
    Cancel,
    Drafts,
    DraftsBundle,
    SessionStart,
    bundle_drafts,
    unbundle,
)
from wanspec.sampling import SamplingParams
from wanspec.simulate.engine import CONTROLLER_HELLO, WORKER_HELLO

PROMPT = (5, 6, 7)
TREE = [Drafts(7, 0, 3, (8, 9, 10), (0.1, 0.2, 0.3), (0.9, 0.8, 0.7)),
        Drafts(7, 0, 3, (20, 21), (0.0, 0.4), (0.3, 0.6), lane=1, parent=0, fork=3),
        Drafts(7, 0, 4, (30, 31), (0.0, 0.5), (0.2, 0.5), lane=2, parent=0, fork=4)]


# ---- the message --------------------------------------------------------------------------------
def test_a_bundle_carries_its_drafts_through_the_codec_and_back():
    b = bundle_drafts(TREE)
    assert decode_message(encode_message(b)) == b
    assert unbundle(b) == TREE
    # smaller on the wire than the three messages with their 4-byte frame headers
    assert len(encode_message(b)) < sum(4 + len(encode_message(d)) for d in TREE)


@pytest.mark.parametrize("change", [
    {"lanes": ()},  # no item
    {"forks": (3, 4)},  # per-item arrays of unequal lengths
    {"counts": (3, 2, 1)},  # counts that do not add up to the tokens
    {"counts": (5, 0, 2)},  # an empty item
    {"entropy": (0.1,)},  # statistics not one per token
    {"top_prob": ()},
], ids=["empty", "unequal-items", "counts-sum", "empty-item", "entropy-length", "no-top-prob"])
def test_a_bundle_whose_arrays_do_not_fit_together_unpacks_to_nothing(change):
    assert unbundle(dataclasses.replace(bundle_drafts(TREE), **change)) is None


# ---- the worker ---------------------------------------------------------------------------------
def worker(controller_hello=CONTROLLER_HELLO) -> WorkerCore:
    core = WorkerCore(WORKER_HELLO)
    core.on_message(controller_hello, 0.0)
    return core


def runs(actions) -> list[DraftFor]:
    return [a for a in actions if isinstance(a, DraftFor)]


def sent(actions) -> list:
    return [a.msg for a in actions if isinstance(a, Send)]


def done(fa: DraftFor, token: int, alternatives=(), probs=()) -> tuple[int, DraftDone]:
    return fa.rid, DraftDone(fa.run.op, token, 0.7, 0.6, alternatives, probs)


def grown(core: WorkerCore, rid: int = 1) -> list[DraftFor]:
    """A session whose first pass left a main line and two branch lanes to extend."""
    (fa,) = core.on_message(SessionStart(rid, PROMPT, lookahead=4, branches=2), 0.0)
    first = runs(core.on_pass_done([done(fa, 10, (20, 30), (0.3, 0.2))]))
    assert len(first) == 3
    return first


def test_a_pass_over_a_sessions_lanes_sends_one_bundle_and_decides_once():
    core = worker()
    main, b1, b2 = grown(core)
    out = core.on_pass_done([done(main, 11), done(b1, 21), done(b2, 31)])
    (msg,) = sent(out)
    assert isinstance(msg, DraftsBundle)
    items = unbundle(msg)
    assert [(d.lane, d.base, d.tokens) for d in items] == [
        (0, 4, (11,)), (1, 3, (20, 21)), (2, 3, (30, 31))]  # a branch's first carries its fork
    # the next passes come after the message (the drafts go out before the device is asked again)
    assert out.index(Send(msg)) < min(out.index(r) for r in runs(out))
    assert sorted(r.cache for r in runs(out)) == [0, 1, 2]


def test_the_same_pass_heard_lane_by_lane_sends_the_same_drafts_one_by_one():
    bundled, single = worker(), worker()
    passes = grown(bundled)
    assert grown(single) == passes
    tokens = (11, 21, 31)
    (msg,) = sent(bundled.on_pass_done([done(fa, t) for fa, t in zip(passes, tokens)]))
    one_by_one = [m for fa, t in zip(passes, tokens) for m in sent(single.on_draft_done(*done(fa, t)))]
    assert unbundle(msg) == one_by_one


def test_a_controller_without_the_capability_gets_one_drafts_a_lane():
    hello = dataclasses.replace(CONTROLLER_HELLO, capabilities=tuple(
        c for c in CONTROLLER_HELLO.capabilities if c != BUNDLES))
    core = worker(hello)
    main, b1, b2 = grown(core)
    msgs = sent(core.on_pass_done([done(main, 11), done(b1, 21), done(b2, 31)]))
    assert [type(m) for m in msgs] == [Drafts, Drafts, Drafts]
    assert [m.lane for m in msgs] == [0, 1, 2]


def test_one_pass_over_several_sessions_sends_each_its_own_message():
    core = worker()
    first, second = grown(core, rid=1), grown(core, rid=2)
    out = core.on_pass_done([done(first[0], 11), done(second[0], 12), done(first[1], 21)])
    msgs = sent(out)
    assert [(type(m), m.rid) for m in msgs] == [(DraftsBundle, 1), (Drafts, 2)]
    assert [d.tokens for d in unbundle(msgs[0])] == [(11,), (20, 21)]


def test_stale_results_and_released_sessions_in_a_pass_are_counted_wasted():
    core = worker()
    main, b1, _ = grown(core)
    (gone,) = core.on_message(SessionStart(2, PROMPT, lookahead=4), 0.0)
    core.on_message(Cancel(2), 0.0)
    wasted = core.stats.wasted_passes
    out = core.on_pass_done([done(gone, 40), done(main, 11), done(b1, 21)])
    assert core.stats.wasted_passes == wasted + 1
    assert [m.rid for m in sent(out)] == [1]


# ---- the controller -----------------------------------------------------------------------------
def controller(branches: int = 2) -> ControllerCore:
    core = ControllerCore(7, [1, 2, 3], StopCriteria(max_tokens=8), SamplingParams(),
                          ControllerConfig(gamma=3, lookahead=4, branches=branches,
                                           policy=PolicyConfig(PolicyName.REMOTE)),
                          has_local_draft=False, vocab_size=100)
    core.start(0.0)
    return core


def tree_state(core: ControllerCore):
    tree = core.chain.tree
    assert tree is not None
    return ({i: (lane.start, lane.fork, lane.parent, [d.token for d in lane.drafts])
             for i, lane in tree.lanes.items()}, core.stats.remote_received)


def test_the_controller_takes_a_bundle_as_the_same_drafts_one_by_one():
    bundled, single = controller(), controller()
    out_bundled = bundled.on_message(bundle_drafts(TREE), 0.1)
    out_single = [a for d in TREE for a in single.on_message(d, 0.1)]
    assert bundled.worker_ok and single.worker_ok
    assert tree_state(bundled) == tree_state(single)
    assert out_bundled == out_single  # (the prompt's pass is still running: nothing to start)


@pytest.mark.parametrize("bad, why", [
    (dataclasses.replace(bundle_drafts(TREE), counts=(3, 2, 1)), "do not fit together"),
    (bundle_drafts([*TREE, Drafts(7, 0, 4, (40, 41), (0.0, 0.1), (0.2, 0.3), 3, 0, 4)]),
     "4 items for 3 lanes"),
    (bundle_drafts([TREE[0], dataclasses.replace(TREE[1], tokens=(20, 999))]),
     "outside the vocabulary"),
    (bundle_drafts([TREE[0], dataclasses.replace(TREE[1], tokens=(8, 21))]), "protocol error"),
], ids=["arrays", "too-many-items", "vocabulary", "branch-with-parents-token"])
def test_a_worker_sending_a_bundle_no_honest_worker_sends_is_dropped(bad, why):
    core = controller()
    out = core.on_message(bad, 0.1)
    assert not core.worker_ok and why in core.stats.worker_lost
    assert any(isinstance(a, Log) for a in out)


def test_a_bundle_for_another_request_is_ignored():
    core = controller()
    assert core.on_message(dataclasses.replace(bundle_drafts(TREE), rid=8), 0.1) == []
    assert core.worker_ok and core.stats.remote_received == 0


def test_a_bundle_item_forking_off_a_lane_the_commits_left_is_stale_not_a_lie():
    """Found by README's example: the commit left the main line at 5 (for 60), and the worker,
    not knowing yet, sent in one bundle the branch the commit took *and* a branch forking off the
    main line further on, where our copy of it had stopped (its later drafts were stale).  Taken
    one by one the first item moves the cursor onto its branch and the second is stale; so must
    a bundle."""
    core = controller()
    core.on_target_done(TargetDone(1, (50,)), 0.1)  # the prompt's pass: 50 at position 3
    out = core.on_message(Drafts(7, 0, 3, (50, 51, 52, 53, 54)), 0.12)
    (verify,) = [a for a in out if isinstance(a, RunTarget)]
    core.on_target_done(TargetDone(verify.op, (51, 60, 0, 0)), 0.2)  # 52 rejected: 60 at 5
    assert core.transcript.tokens[3:] == [50, 51, 60]
    assert core.on_message(Drafts(7, 0, 8, (55,)), 0.21) == []  # past the rejection: stale
    stats = (0.1, 0.1), (0.5, 0.5)
    late = bundle_drafts([Drafts(7, 0, 5, (60, 61), *stats, lane=1, parent=0, fork=5),
                          Drafts(7, 0, 8, (70, 71), *stats, lane=2, parent=0, fork=8)])
    core.on_message(late, 0.22)
    assert core.worker_ok, core.stats.worker_lost
    assert core.stats.branch_hits == 1 and core.chain.window(6, 3)[0].token == 61


def test_a_bundles_items_come_in_lane_order_whatever_order_the_pass_ran_them():
    core = worker()
    main, b1, b2 = grown(core)
    (msg,) = sent(core.on_pass_done([done(b2, 31), done(main, 11), done(b1, 21)]))
    assert [d.lane for d in unbundle(msg)] == [0, 1, 2]
