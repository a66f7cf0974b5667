"""The busy site queues a request's next pass before the host work of its last one.

After a verification the core says: emit these tokens, send the worker this Commit, run this
next pass.  The adapter queues the pass first, so sending the commit (which may wait for the
transport) and streaming the tokens overlap the accelerator forming and running it, as vLLM's
async scheduling prepares the next step while the current one runs.  Only the order of side
effects changes: the output is the same (exact equality, as everywhere).
"""

from __future__ import annotations

from remote_support import MAX_TOKENS, PROMPT, TIMING, config, virtual

from wanspec.protocol.messages import Commit
from wanspec.runtime.inproc import InprocDeployment
from wanspec.transport.inproc import LinkParams


def test_a_commit_leaves_with_the_next_pass_already_queued(target, near_draft, ref_greedy):
    async def main():
        async with InprocDeployment(target, near_draft, link=LinkParams(rtt_ms=2),
                                    timing=TIMING, config=config("remote")) as dep:
            queued_at_commit: list[int] = []
            send = dep.link.send

            async def recording_send(msg):
                if isinstance(msg, Commit):
                    batcher = dep.engine.accelerator.batcher
                    queued_at_commit.append(batcher.waiting)
                await send(msg)

            dep.link.send = recording_send  # type: ignore[method-assign]
            r = await dep.generate(PROMPT, max_tokens=MAX_TOKENS, ignore_eos=True)
            return r, queued_at_commit

    r, queued = virtual(main)
    assert r.token_ids == ref_greedy.token_ids
    # one request, nothing else on the accelerator: a pass is waiting as a commit leaves only
    # if the adapter queued it first (the worker's drafts are there at once on a 2 ms link,
    # so most verifications are followed by the next one)
    assert len(queued) >= 4
    assert sum(q > 0 for q in queued) >= len(queued) // 2, queued
