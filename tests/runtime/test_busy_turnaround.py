"""The busy accelerator's turnaround count: passes carrying a request of the pass before that
went on at once (queued before the accelerator went idle), and the device's idle time between
the two (the host work on a request's critical path between passes;
``DeviceStats.turnarounds`` / ``turnaround_s``)."""

from __future__ import annotations

from remote_support import MAX_TOKENS, PROMPT, TIMING, config, real, virtual

from wanspec.runtime.inproc import InprocDeployment
from wanspec.transport.inproc import LinkParams


def run(target, near_draft, rtt_ms: float, on=virtual, policy: str = "remote"):
    async def main():
        async with InprocDeployment(target, near_draft, link=LinkParams(rtt_ms=rtt_ms),
                                    timing=TIMING, config=config(policy)) as dep:
            return await dep.generate(PROMPT, max_tokens=MAX_TOKENS, ignore_eos=True)

    r = on(main)
    return r, r.devices["controller"]


def test_verifications_that_follow_at_once_are_counted_and_free_on_the_virtual_clock(
        target, near_draft, ref_greedy):
    r, device = run(target, near_draft, rtt_ms=2)
    assert r.token_ids == ref_greedy.token_ids
    passes = r.metrics["target_passes"]
    # on a 2 ms link the worker's drafts are mostly there when a verification ends: the next
    # one follows at once; the first pass (the prefill) follows nothing
    assert passes // 2 <= device["turnarounds"] < passes
    assert device["turnaround_s"] == 0.0  # the loop's work takes no virtual time


def test_a_pass_that_waited_for_the_worker_is_not_a_turnaround(target, near_draft):
    r, device = run(target, near_draft, rtt_ms=30)
    m = r.metrics
    # at 30 ms the worker's drafts after a rejection come a round trip later (the request
    # stalls): the verification they allow was started by their message after the accelerator
    # went idle, and is not counted (counting every pass whose request was in the pass before
    # would count all of them: one request)
    assert m["plain_steps"] == 0 and m["stall_s"] > 0
    assert 1 <= device["turnarounds"] < m["remote_windows"]


def test_on_real_time_the_turnaround_takes_the_hosts_time(target, near_draft, ref_greedy):
    r, device = run(target, near_draft, rtt_ms=2, on=real)  # real time, the costs as floors
    assert r.token_ids == ref_greedy.token_ids
    assert device["turnarounds"] >= 1
    assert 0.0 < device["turnaround_s"] < r.metrics["wall_s"]


def test_a_request_is_followed_across_its_caches(target, near_draft):
    # `always` drafts at the busy site after a rejection: its local draft rounds (its draft
    # cache) follow its verifications (its target cache) at once, and its verifications follow
    # its local rounds; each counts as the same request going on.  A round's passes run in one
    # call to the device: no turnaround between them
    r, device = run(target, near_draft, rtt_ms=30, policy="always")
    m = r.metrics
    rounds = m["local_windows"]
    assert rounds >= 2 and m["draft_passes"]["controller"] > rounds
    assert 2 * rounds - 1 <= device["turnarounds"] < m["draft_passes"]["controller"] + rounds
