"""Run a :class:`~wanspec.core.local.LocalDecoder` on real models: the single-site adapter."""

from __future__ import annotations

import asyncio
from typing import Callable, Sequence

from wanspec.core.actions import EmitTokens, Finished, RunDraft, RunTarget
from wanspec.core.local import LocalDecoder
from wanspec.runtime.placed import PlacedModel
from wanspec.sampling import SamplingParams

OnTokens = Callable[[Sequence[int]], None]


async def drive_local(
    decoder: LocalDecoder,
    target: PlacedModel,
    draft: PlacedModel | None,
    sampling: SamplingParams,
    on_tokens: OnTokens | None = None,
) -> str:
    """Execute the decoder's actions until it finishes; returns the finish reason.

    ``target`` and ``draft`` may be a device's own models or views of a shared, batched
    accelerator (:class:`~wanspec.runtime.busy.BatchedModel`): the driver cannot tell.
    """
    loop = asyncio.get_running_loop()
    t_cache = target.lm.new_cache()
    d_cache = draft.lm.new_cache() if draft is not None else None
    try:
        actions = decoder.start(loop.time())
        while True:
            run = None
            for action in actions:
                if isinstance(action, EmitTokens):
                    if on_tokens is not None:
                        on_tokens(action.tokens)
                elif isinstance(action, Finished):
                    return action.reason
                else:
                    run = action
            if run is None:
                raise RuntimeError("decoder stalled without a pass to run")
            if isinstance(run, RunTarget):
                event = await target.run_target(t_cache, run, sampling)
            else:
                assert isinstance(run, RunDraft)
                if draft is None or d_cache is None:
                    raise RuntimeError("decoder asked for a draft pass but no draft model is loaded")
                event = await draft.run_draft(d_cache, run, sampling, then_cache=t_cache)
            actions = decoder.on_event(event, loop.time())
    finally:  # the slots go back now (or when a pass still writing into them ends)
        t_cache.close()
        if d_cache is not None:
            d_cache.close()
