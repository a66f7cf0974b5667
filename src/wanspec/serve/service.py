"""Running one API request on the engine: its choices decode concurrently, as events.

The engine is the one source of tokens.  Each choice is one ``RemoteEngine.agenerate`` call whose
``on_tokens`` callback hands over every commit as it happens (a verification that accepts four
drafts is one event of five tokens); this module turns commits into text deltas (stop strings
cut, see :mod:`wanspec.serve.text`), logprobs (if asked) and, at the end, a
:class:`ChoiceResult`.  Cancelling a :class:`Generation` cancels its engine calls: their batch
slots and KV caches are freed and their workers told at once (``RemoteEngine.agenerate``).
"""

from __future__ import annotations

import asyncio
import logging
from dataclasses import dataclass
from typing import Any, AsyncIterator, Sequence

from wanspec.core.batcher import PassKind
from wanspec.runtime.controller import RemoteEngine
from wanspec.runtime.engine import GenerationResult
from wanspec.serve.logprobs import LogprobScorer, TokenLogprob
from wanspec.serve.metrics import ServerMetrics
from wanspec.serve.protocol import Plan
from wanspec.serve.text import TextStream

log = logging.getLogger("wanspec.serve")

WORKER_ACCOUNT_WAIT_S = 1.0  # at most this long for the worker's account of a session


@dataclass
class ChoiceResult:
    index: int
    prompt_tokens: int
    token_ids: list[int]
    text: str
    finish_reason: str  # "stop" or "length"
    stop_reason: int | str | None  # the stop string or stop token id that ended it
    spec: dict[str, Any] | None  # the opt-in per-response statistics


@dataclass
class ChoiceEvent:
    """Tokens a choice committed (one commit), with their text delta; or its end."""

    index: int
    tokens: list[int]
    text: str
    logprobs: list[TokenLogprob] | None = None
    result: ChoiceResult | None = None  # set on the choice's last event


@dataclass
class _Done:
    index: int
    error: BaseException | None = None


def finish_reason(reason: str, output: Sequence[int], stop_token_ids: Sequence[int],
                  stop_string: str | None) -> tuple[str, int | str | None]:
    """The engine's finish reason as the API reports it (vLLM's ``finish_reason`` and
    ``stop_reason``)."""
    if reason == "max_tokens":
        return "length", None
    if reason == "stop_string":
        return "stop", stop_string
    if output and output[-1] in stop_token_ids:
        return "stop", output[-1]
    return "stop", None  # EOS


def spec_summary(m: dict[str, Any], *, worker_passes: int | None,
                 rtt_s: float | None) -> dict[str, Any]:
    """Per-response speculative statistics: vLLM's ``speculative_decoding`` summary, and where
    the drafts came from."""
    drafts, accepted = m["verify_rounds"], m["accepted_tokens"]
    remote_used = m["remote_drafts_accepted"]
    busy_drafts = m["draft_passes"].get("controller", 0)
    return {
        "speculative_decoding": {
            "num_drafts": drafts,
            "num_draft_tokens": m["drafted_tokens"],
            "num_accepted_tokens": accepted,
            "num_accepted_tokens_per_pos": list(m.get("accepted_per_position", ())),
            "mean_acceptance_length": 1 + accepted / drafts if drafts else 1.0,
            "draft_acceptance_rate": m["acceptance_rate"],
        },
        "wanspec": {
            "draft_tokens": {"worker": m["remote_drafts_received"], "local": busy_drafts},
            "accepted_tokens": {"worker": remote_used,
                                "local": max(accepted - remote_used, 0)},
            "worker_drafts": {"received": m["remote_drafts_received"], "used": remote_used,
                              "stale": m.get("remote_drafts_stale", 0),
                              "late": m.get("remote_drafts_late", 0)},
            "draft_passes": {"busy": busy_drafts, "worker": worker_passes},
            "target_passes": m["target_passes"],
            "rides": m["rides"],
            "stall_s": m["stall_s"],
            "worker": m.get("worker"),
            "worker_lost": m.get("worker_lost"),
            "worker_moves": m.get("worker_moves", 0),
            "rtt_s": rtt_s,
        },
    }


class Service:
    """What the HTTP layer calls: the engine, the served model's name, the metrics."""

    def __init__(self, engine: RemoteEngine, model_name: str, metrics: ServerMetrics) -> None:
        self.engine = engine
        self.model_name = model_name
        self.metrics = metrics
        self._background: set[asyncio.Task[Any]] = set()

    def generation(self, plan: Plan, arrived: float) -> "Generation":
        return Generation(self, plan, arrived)

    def _link(self, name: str | None):
        pool = self.engine.workers
        if pool is None or name is None:
            return None
        return next((link for link in pool.links if link.name == name), None)

    async def worker_account(self, result: GenerationResult) -> int | None:
        """The worker's draft passes for this request (its account comes after our Cancel);
        None if it did not come in time or no worker was used."""
        m = result.metrics
        link = self._link(m.get("worker")) if m.get("worker_used") else None
        if link is None or not link.up:
            return None
        rid = m["request_id"]
        wait = min(WORKER_ACCOUNT_WAIT_S, 4 * (link.rtt or 0.0) + 0.2)
        stats = await link.wait_stats([rid], timeout=wait)
        passes = stats[rid].passes if rid in stats else None
        if passes is not None:
            self.metrics.worker_passes(passes)
        return passes

    def count_worker_passes_later(self, result: GenerationResult) -> None:
        task = asyncio.create_task(self.worker_account(result))
        self._background.add(task)
        task.add_done_callback(self._background.discard)

    def rtt_of(self, worker: str | None) -> float | None:
        link = self._link(worker)
        return link.rtt if link is not None else None


class Generation:
    """One API request's choices, decoding concurrently; iterate :meth:`events`."""

    def __init__(self, service: Service, plan: Plan, arrived: float) -> None:
        self.svc = service
        self.plan = plan
        self.arrived = arrived
        self.events_q: asyncio.Queue[ChoiceEvent | _Done] = asyncio.Queue()
        self.tasks: list[asyncio.Task[None]] = []
        self.results: dict[int, ChoiceResult] = {}

    def start(self) -> None:
        plan = self.plan
        for i, prompt in enumerate(plan.prompts):
            for j in range(plan.n):
                index = i * plan.n + j
                self.tasks.append(asyncio.create_task(self._choice(index, prompt, j,
                                                                   plan.max_tokens[i])))

    def cancel(self) -> None:
        for t in self.tasks:
            t.cancel()

    def abort(self, error: BaseException) -> None:
        """End the request with ``error`` (the server is stopping): its reader gets the error
        in place of further events; its choices are cancelled (their slots freed)."""
        self.events_q.put_nowait(_Done(-1, error))
        self.cancel()

    async def events(self) -> AsyncIterator[ChoiceEvent]:
        """Every commit of every choice as it happens, then each choice's end; a failed choice
        raises here (the others are cancelled)."""
        left = len(self.tasks)
        try:
            while left:
                ev = await self.events_q.get()
                if isinstance(ev, _Done):
                    left -= 1
                    if ev.error is not None:
                        raise ev.error
                    continue
                yield ev
        finally:
            self.cancel()  # (a no-op for choices that ended)

    async def _choice(self, index: int, prompt: list[int], j: int, max_tokens: int) -> None:
        plan, svc = self.plan, self.svc
        engine = svc.engine
        loop = asyncio.get_running_loop()
        commits: asyncio.Queue[tuple[float, tuple[int, ...]] | None] = asyncio.Queue()
        output: list[int] = []
        text = TextStream(engine.target.decode, plan.stop, plan.include_stop_str)
        scorer = (LogprobScorer(engine.accelerator.models[PassKind.TARGET], prompt, plan.logprobs)
                  if plan.logprobs is not None else None)
        gen = asyncio.create_task(engine.agenerate(
            prompt, max_tokens=max_tokens, sampling=plan.sampling_for(j),
            stop_strings=plan.stop, ignore_eos=plan.ignore_eos,
            stop_token_ids=plan.stop_token_ids,
            on_tokens=lambda toks: commits.put_nowait((loop.time(), tuple(toks)))))
        gen.add_done_callback(lambda _: commits.put_nowait(None))
        last: float | None = None
        try:
            while True:
                item = await commits.get()
                if item is None:
                    break
                at, toks = item
                if last is None:
                    svc.metrics.first_token(at - self.arrived)
                else:
                    svc.metrics.output_event(at - last)
                last = at
                output.extend(toks)
                lps = await scorer.score(toks) if scorer is not None else None
                delta = text.delta(output, finished=False) if plan.stream else ""
                self.events_q.put_nowait(ChoiceEvent(index, list(toks), delta, lps))
            result = gen.result()  # (raises the engine's error, if any)
            full = text.final_text(result.token_ids)
            reason, stop_reason = finish_reason(result.finish_reason, result.token_ids,
                                                plan.stop_token_ids, text.stop_string)
            tail = text.delta(result.token_ids, finished=True) if plan.stream else full
            m = result.metrics
            svc.metrics.finished(m, prompt_tokens=len(prompt),
                                 output_tokens=len(result.token_ids), finish_reason=reason,
                                 e2e_s=loop.time() - self.arrived)
            spec = None
            if plan.spec_metrics:
                passes = await svc.worker_account(result)
                spec = spec_summary(m, worker_passes=passes, rtt_s=svc.rtt_of(m.get("worker")))
            else:
                svc.count_worker_passes_later(result)
            res = ChoiceResult(index, len(prompt), list(result.token_ids), full, reason,
                               stop_reason, spec)
            self.results[index] = res
            self.events_q.put_nowait(ChoiceEvent(index, [], tail, None, res))
            self.events_q.put_nowait(_Done(index))
        except asyncio.CancelledError:
            if not gen.done():
                gen.cancel()
                svc.metrics.aborted(prompt_tokens=len(prompt), output_tokens=len(output),
                                    e2e_s=loop.time() - self.arrived)
            raise
        except Exception as exc:
            log.exception("request failed")
            self.events_q.put_nowait(_Done(index, exc))
        finally:
            if scorer is not None:
                scorer.close()
