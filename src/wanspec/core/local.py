"""Decoding at one site: target-only and standard speculative decoding, as a sans-I/O machine.

Standard SD round, with ``n`` committed tokens ``s[0:n]``:

1. the draft proposes ``d[n], d[n+1], ...`` one pass each, all ``g`` in one round (one call to
   the device, ``RunDraft.count``); its first pass also feeds every committed token it has not
   seen yet (catch-up in one pass, no separate prefill pass);
2. one target pass over ``[s[n-1], d[n], ..., d[n+g-1]]`` yields the target's own choice for
   positions ``n .. n+g``;
3. the longest matching prefix is accepted, plus the target's correction/bonus token; both
   caches roll back implicitly because the next pass of each starts at its valid length.
"""

from __future__ import annotations

from enum import Enum
from typing import Sequence

from wanspec.core.actions import (
    Action,
    DraftDone,
    EmitTokens,
    Event,
    Finished,
    RunDraft,
    RunTarget,
    Site,
    TargetDone,
    ThenVerify,
)
from wanspec.core.chain import feed_from
from wanspec.core.metrics import RequestMetrics
from wanspec.core.stopping import StopCriteria, Transcript
from wanspec.core.verify import accept_prefix
from wanspec.errors import WanspecError


class LocalMode(str, Enum):
    TARGET = "target"  # target-only autoregressive decoding: the reference output
    SD = "sd"  # standard speculative decoding with the draft at the same (busy) site


class GammaSchedule(str, Enum):
    """How the window length evolves, as Hugging Face's ``num_assistant_tokens_schedule``."""

    CONSTANT = "constant"  # always ``gamma`` drafts
    HEURISTIC = "heuristic"  # +2 after a fully accepted window, -1 (down to 1) after a rejection


class LocalDecoder:
    """State machine for one request decoded at a single site.

    Use: ``actions = d.start(now)``; execute each Run* action and feed its result with
    ``d.on_event(event, now)``; stop when a :class:`Finished` action is returned.  At most one
    model pass is outstanding at a time, as in standard SD on one accelerator.
    """

    def __init__(
        self,
        prompt: Sequence[int],
        stop: StopCriteria,
        *,
        mode: LocalMode = LocalMode.SD,
        gamma: int = 4,
        draft_site: Site = Site.CONTROLLER,
        schedule: GammaSchedule = GammaSchedule.CONSTANT,
    ) -> None:
        if gamma < 1:
            raise WanspecError(f"gamma must be >= 1, got {gamma}")
        self.mode = LocalMode(mode)
        self.gamma = gamma  # the window of the next round (moves with the heuristic schedule)
        self.schedule = GammaSchedule(schedule)
        self.draft_site = draft_site
        self.transcript = Transcript(prompt, stop)
        self.metrics = RequestMetrics()
        self._next_op = 0
        self._pending: RunTarget | RunDraft | None = None
        self._window: list[int] = []  # draft tokens for positions n, n+1, ...
        self._draft_cache = 0  # tokens of the current sequence whose KV the draft holds
        self._started = False
        self.finished = False

    # ---- public API ---------------------------------------------------------------------------
    def start(self, now: float) -> list[Action]:
        if self._started:
            raise RuntimeError("already started")
        self._started = True
        self.metrics.on_start(now)
        prompt = self.transcript.tokens
        return [self._issue(RunTarget(self._op(), 0, tuple(prompt), want=1))]

    def on_event(self, event: Event, now: float) -> list[Action]:
        pending = self._pending
        if pending is None or event.op != pending.op:
            raise RuntimeError(f"unexpected event {event!r}")
        self._pending = None
        if isinstance(event, TargetDone):
            assert isinstance(pending, RunTarget)
            return self._on_target(pending, event, now)
        assert isinstance(pending, RunDraft)
        return self._on_draft(pending, event)

    # ---- internals ----------------------------------------------------------------------------
    def _op(self) -> int:
        self._next_op += 1
        return self._next_op

    def _issue(self, action: RunTarget | RunDraft) -> RunTarget | RunDraft:
        self._pending = action
        if isinstance(action, RunTarget):
            self.metrics.on_target_pass()
        else:
            self.metrics.on_draft_pass(action.site, action.count)
        return action

    def _on_target(self, run: RunTarget, ev: TargetDone, now: float) -> list[Action]:
        window = self._window
        if window:
            accepted, nxt = accept_prefix(window, ev.choices)
            new = window[:accepted] + [nxt]
            n_before = len(self.transcript.tokens)
            taken = self.transcript.commit(new)
            self.metrics.on_verify(len(window), accepted, len(taken))
            if self.schedule is GammaSchedule.HEURISTIC:
                self.gamma = self.gamma + 2 if accepted == len(window) else max(1, self.gamma - 1)
            # the draft's cache is valid up to the last position whose token it fed and that
            # is now committed
            self._draft_cache = min(self._draft_cache, n_before + accepted)
            self._window = []
        else:
            taken = self.transcript.commit([ev.choices[-1]])
        return self._after_commit(taken, now)

    def _on_draft(self, run: RunDraft, ev: DraftDone) -> list[Action]:
        proposals = ev.proposals
        if len(proposals) != run.count:
            raise RuntimeError(f"a round of {run.count} draft passes proposed {len(proposals)}")
        self._window.extend(p.token for p in proposals)
        return [self._next_pass()]

    def _after_commit(self, taken: list[int], now: float) -> list[Action]:
        actions: list[Action] = []
        if taken:
            self.metrics.on_commit(len(taken), now)
            actions.append(EmitTokens(tuple(taken)))
        if self.transcript.finished:
            self.finished = True
            self.metrics.on_finish(now)
            actions.append(Finished(self.transcript.finish_reason or "eos"))
            return actions
        actions.append(self._next_pass())
        return actions

    def _gamma_now(self) -> int:
        # never draft past the token budget: a round commits at most window + 1 tokens
        return min(self.gamma, self.transcript.remaining - 1)

    def _next_pass(self) -> RunTarget | RunDraft:
        seq = self.transcript.tokens
        n = len(seq)
        if self.mode is LocalMode.SD and len(self._window) < self._gamma_now():
            # the round's drafts in one call to the device: its length is known now
            count = self._gamma_now() - len(self._window)
            start = self._draft_cache
            self._draft_cache = n + len(self._window) + count - 1
            # (it fills the window, so its verification follows: said now, RunDraft.then_verify)
            return self._issue(RunDraft(self._op(), self.draft_site, start,
                                        feed_from(seq, self._window, start), count,
                                        ThenVerify(n - 1, self._verify_feed())))
        feed = self._verify_feed()
        return self._issue(RunTarget(self._op(), n - 1, feed, len(feed)))

    def _verify_feed(self) -> tuple[int, ...]:
        """A verification's feed: the last committed token, then the window's drafts."""
        return (self.transcript.tokens[-1], *self._window)
