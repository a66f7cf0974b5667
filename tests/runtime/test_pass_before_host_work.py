"""The busy site starts a request's next pass before the host work of its last one.

After a verification the core says: emit these tokens, send the worker this Commit, run this
next pass.  The adapter queues the pass and lets it leave for the device first, so sending the
commit (which may wait for the transport) and streaming the tokens overlap the pass rather than
delay it, as vLLM's async scheduling processes a step's output while the next one runs.  Only
the order of side effects changes: the output is the same (exact equality, as everywhere).
"""

from __future__ import annotations

from remote_support import MAX_TOKENS, PROMPT, TIMING, config, virtual

from wanspec.protocol.messages import Commit
from wanspec.runtime.inproc import InprocDeployment
from wanspec.transport.inproc import LinkParams


def test_a_commit_leaves_with_the_next_pass_already_running(target, near_draft, ref_greedy):
    async def main():
        async with InprocDeployment(target, near_draft, link=LinkParams(rtt_ms=2),
                                    timing=TIMING, config=config("remote")) as dep:
            running_at_commit: list[bool] = []
            send = dep.link.send

            async def recording_send(msg):
                if isinstance(msg, Commit):
                    running_at_commit.append(dep.engine.accelerator.running)
                await send(msg)

            dep.link.send = recording_send  # type: ignore[method-assign]
            r = await dep.generate(PROMPT, max_tokens=MAX_TOKENS, ignore_eos=True)
            return r, running_at_commit

    r, running = virtual(main)
    assert r.token_ids == ref_greedy.token_ids
    # one request, nothing else on the accelerator: a pass is running as a commit leaves only
    # if the adapter started it first (the worker's drafts are there at once on a 2 ms link,
    # so most verifications are followed by the next one; before: never, a commit left with
    # the pass queued at best)
    assert len(running) >= 4
    assert sum(running) >= len(running) // 2, running
