"""Acceptance traces: what real drafts did, replayed as a match model.

Why: the i.i.d. and Markov models are assumptions; a trace recorded from real models
(``wanspec emulate --record``) replays the actual acceptance pattern and entropy signal, so the
simulator can be checked against the emulator and used on real text statistics.

Format (JSONL, UTF-8, one JSON object per line; blank lines are ignored)::

    {"wanspec_trace": 1, "source": "...", "target_ms": 30, "draft_ms": 4, ...}   optional header
    {"request": 0, "prompt_tokens": 17, "output_tokens": 64, "drafts": [[17, true, 0.21], ...]}
    {"request": 1, "prompt_tokens": 9,  "drafts": [...], "ranks": [[20, 2], [23, 0], ...]}

One line per request.  Each ``drafts`` entry is ``[position, accepted, entropy]``: the absolute
position (prompt included, as in the protocol), whether a draft conditioned on the committed
prefix proposes the target's token there (true/false or 1/0), and the draft's entropy in nats (or
null if unknown); a rejected entry may carry a fourth element, the entropy of the draft's next
proposal after its own wrong token (what the worker's chain and a local round report right after
a miss, and what a policy reading entropy sees).  Such a draft is deterministic, so a repeated
position carries the same outcome; the first entry wins.  ``ranks`` (optional) lists
``[position, rank]`` for rejected positions: the rank of the target's token among the draft's
choices there (2, 3 or 4: the draft's 2nd to 4th choice, the alternatives a draft tree branches
from; 0: none of its top :data:`RANK_DEPTH`).  ``probs`` (optional) lists
``[position, top_prob, p2, p3, p4]``: the draft's probability of its token and of its
alternatives (at most 3) there, what a worker growing a draft tree weighs its branches by;
``probs_after_miss`` (optional) the same for the draft's next proposal after its own wrong token
at ``position`` (as the fourth element of a drafts entry is its entropy).
``further_after_miss`` (optional) lists ``[position, [entropy, top_prob, p2, p3, p4], ...]``:
the draft's proposals at ``position + 2``, ``+ 3``, ... as it goes on from its own wrong token
at ``position`` (at most :data:`AFTER_MISS_DEPTH`; the worker's chain drafts on past its miss
until a commit tells it, and a policy reads those drafts' entropies).
``after_alternative`` (optional) lists ``[position, index, [entropy, top_prob, p2, p3, p4],
...]``: the draft's proposals at ``position + 1``, ``+ 2``, ... (at most
:data:`AFTER_ALTERNATIVE_DEPTH`) as it goes on from its ``index + 2``-th choice at ``position``,
a token that is not the target's (what a draft tree's branch from that wrong alternative
drafts).  ``emulate --record`` writes every output position (one teacher-forced draft
pass, :mod:`wanspec.emulate.record`); a hand-made or logged trace may list only the drafts some
verification tested (:meth:`TraceRequest.add_window`).  ``output_tokens`` (optional) is the
recorded output's length: a replayed request stops there.  The header is free metadata, except
that ``target_ms``, ``verify_per_token_ms``, ``draft_ms``, ``draft_per_token_ms`` and ``gamma``,
when present, are the defaults ``wanspec simulate --trace`` runs with, and the roofline terms
(``target_kv_ms_per_ktoken``, ``target_compute_ms_per_token``, ``target_per_sequence_ms`` and the
same for ``draft_``: :class:`~wanspec.simulate.config.Roofline`) what its passes also cost.

Replay (:func:`replay_request`): simulated request ``r`` uses trace request ``r mod N``, its
prompt length and output length.  A position in the trace gets its recorded outcome and entropy
(and the position after a miss the recorded entropy and probabilities after it, a rejected
position its recorded rank, a position with recorded probabilities those; a draft tree's
branch from a wrong alternative the proposals recorded after it (and so does a branch off that
branch: the first wrong token decides); a draft off the prefix where none was recorded, one of
the trace's recorded drafts after a miss, drawn at random, with what followed it; past the
recorded proposals, the last one); any other position is drawn i.i.d. with the trace's overall per-token acceptance and the
configured entropy model, and a rejection without a recorded rank draws one from the trace's
rank frequencies (:attr:`Trace.rank_probs`), or from the configured ``rank2``-``rank4`` when the
trace records none (older traces).
"""

from __future__ import annotations

import dataclasses
import json
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any, Iterable, Sequence

from wanspec.errors import WanspecError
from wanspec.simulate.config import Roofline, SimConfig
from wanspec.simulate.models import RequestWorld, build_request, iid_matches, stream

FORMAT_VERSION = 1
RANK_DEPTH = 4  # a trace ranks the target's token among the draft's first 4 choices
RANKS = (0, 2, 3, 4)  # a rejected position's rank: 0 = not among them
# how many more proposals after the one right after a miss a trace holds: beyond the longest
# window a policy reads entropies of (and where a chain this far past a miss is rare: the
# commit that shows the miss comes a target pass and a round trip later)
AFTER_MISS_DEPTH = 16
# how many proposals a trace holds after each of the draft's wrong alternatives: a draft tree's
# branch from one; the worker weighs how to grow it by these (deeper, the last one stands in)
AFTER_ALTERNATIVE_DEPTH = 4


@dataclass
class TraceRequest:
    prompt_tokens: int
    drafts: dict[int, tuple[bool, float | None]] = field(default_factory=dict)
    output_tokens: int | None = None  # the recorded output's length (None: unknown)
    # position p -> entropy of the draft at p + 1 after its own wrong token at p
    after_miss: dict[int, float] = field(default_factory=dict)
    # rejected position -> rank of the target's token among the draft's choices (RANKS)
    ranks: dict[int, int] = field(default_factory=dict)
    # position -> (top_prob, *alt_probs) of the draft there; after_miss's position -> those of
    # its next proposal after its own wrong token there
    probs: dict[int, tuple[float, ...]] = field(default_factory=dict)
    probs_after_miss: dict[int, tuple[float, ...]] = field(default_factory=dict)
    # after_miss's position p -> (entropy, top_prob, *alt_probs) of the draft's proposals at
    # p + 2, p + 3, ... as it goes on from its own wrong token at p
    further_after_miss: dict[int, list[tuple[float, ...]]] = field(default_factory=dict)
    # (position p, alternative index i) -> (entropy, top_prob, *alt_probs) of the draft's
    # proposals at p + 1, p + 2, ... as it goes on from its (i + 2)-th choice at p, a token that
    # is not the target's (a draft tree's branch from a wrong alternative)
    after_alternative: dict[tuple[int, int], list[tuple[float, ...]]] = field(
        default_factory=dict)

    def add(self, position: int, accepted: bool, entropy: float | None,
            entropy_after_miss: float | None = None, rank: int | None = None,
            probs: tuple[float, ...] | None = None,
            probs_after_miss: tuple[float, ...] | None = None,
            further_after_miss: Sequence[tuple[float, ...]] = ()) -> None:
        self.drafts.setdefault(position, (bool(accepted), entropy))
        if entropy_after_miss is not None and not accepted:
            self.after_miss.setdefault(position, entropy_after_miss)
        if rank is not None and not accepted:
            self.ranks.setdefault(position, rank)
        if probs is not None:
            self.probs.setdefault(position, probs)
        if probs_after_miss is not None and not accepted:
            self.probs_after_miss.setdefault(position, probs_after_miss)
        if further_after_miss and not accepted:
            self.further_after_miss.setdefault(position, list(further_after_miss))

    def add_window(self, base: int, entropies: Sequence[float], accepted: int) -> None:
        """Record one verification of worker drafts for positions ``base, base+1, ...``.

        ``entropies`` are the worker drafts' entropies in window order; ``accepted`` is how many
        leading drafts the target accepted.  Only tested drafts are recorded.
        """
        for i in range(min(accepted + 1, len(entropies))):
            self.add(base + i, i < accepted, entropies[i])


@dataclass
class Trace:
    requests: list[TraceRequest]
    header: dict[str, Any] = field(default_factory=dict)

    @property
    def alpha(self) -> float | None:
        """Per-token acceptance over every tested draft (None for an empty trace)."""
        tested = sum(len(r.drafts) for r in self.requests)
        accepted = sum(a for r in self.requests for a, _ in r.drafts.values())
        return accepted / tested if tested else None

    @property
    def after_miss_pool(self) -> list[tuple[float, tuple[float, ...] | None,
                                            list[tuple[float, ...]]]]:
        """Every recorded draft right after its own wrong token: (entropy, probabilities, the
        proposals that followed it)."""
        return [(e, r.probs_after_miss.get(p), r.further_after_miss.get(p, []))
                for r in self.requests for p, e in sorted(r.after_miss.items())]

    @property
    def rank_probs(self) -> tuple[float, float, float] | None:
        """Of the rejections with a recorded rank, the fractions whose target token was the
        draft's 2nd, 3rd and 4th choice (None: the trace records no rank)."""
        counts = {r: 0 for r in RANKS}
        for req in self.requests:
            for rank in req.ranks.values():
                counts[rank] += 1
        n = sum(counts.values())
        return (counts[2] / n, counts[3] / n, counts[4] / n) if n else None


def _bad(where: str, why: str) -> WanspecError:
    return WanspecError(f"invalid trace {where}: {why}")


def _parse_request(obj: Any, where: str) -> TraceRequest:
    if not isinstance(obj, dict):
        raise _bad(where, "each line must be a JSON object")
    p = obj.get("prompt_tokens", 1)
    if isinstance(p, bool) or not isinstance(p, int) or p < 1:
        raise _bad(where, f"prompt_tokens must be an integer >= 1, got {p!r}")
    out = obj.get("output_tokens")
    if out is not None and (isinstance(out, bool) or not isinstance(out, int) or out < 1):
        raise _bad(where, f"output_tokens must be an integer >= 1 or absent, got {out!r}")
    req = TraceRequest(p, output_tokens=out)
    drafts = obj.get("drafts", [])
    if not isinstance(drafts, list):
        raise _bad(where, "drafts must be a list of [position, accepted, entropy]")
    for d in drafts:
        if not isinstance(d, list) or len(d) not in (2, 3, 4):
            raise _bad(where, f"draft entry {d!r} is not [position, accepted, entropy]")
        pos, acc = d[0], d[1]
        ent = d[2] if len(d) >= 3 else None
        after = d[3] if len(d) == 4 else None
        if isinstance(pos, bool) or not isinstance(pos, int) or pos < p:
            raise _bad(where, f"draft position {pos!r} must be an integer >= prompt_tokens ({p})")
        if acc not in (True, False, 0, 1):
            raise _bad(where, f"accepted must be true/false or 1/0, got {acc!r}")
        for e in (ent, after):
            if e is not None and (isinstance(e, bool) or not isinstance(e, (int, float))
                                  or e < 0):
                raise _bad(where, f"entropy must be a number >= 0 or null, got {e!r}")
        req.add(pos, bool(acc), None if ent is None else float(ent),
                None if after is None else float(after))
    ranks = obj.get("ranks", [])
    if not isinstance(ranks, list):
        raise _bad(where, "ranks must be a list of [position, rank]")
    for d in ranks:
        if not isinstance(d, list) or len(d) != 2:
            raise _bad(where, f"rank entry {d!r} is not [position, rank]")
        pos, rank = d
        if isinstance(rank, bool) or rank not in RANKS:
            raise _bad(where, f"rank must be one of {', '.join(map(str, RANKS))}, got {rank!r}")
        if isinstance(pos, bool) or not isinstance(pos, int) or req.drafts.get(pos, (True,))[0]:
            raise _bad(where, f"rank position {pos!r} is not a rejected position of drafts")
        req.ranks.setdefault(pos, rank)
    for key, into in (("probs", req.probs), ("probs_after_miss", req.probs_after_miss)):
        entries = obj.get(key, [])
        if not isinstance(entries, list):
            raise _bad(where, f"{key} must be a list of [position, top_prob, alt_prob, ...]")
        for d in entries:
            if (not isinstance(d, list) or not 2 <= len(d) <= 2 + RANK_DEPTH - 1
                    or isinstance(d[0], bool) or not isinstance(d[0], int)):
                raise _bad(where, f"{key} entry {d!r} is not [position, top_prob, alt_prob, ...] "
                                  f"(at most {RANK_DEPTH - 1} alternatives)")
            if any(isinstance(x, bool) or not isinstance(x, (int, float)) or not 0 <= x <= 1
                   for x in d[1:]):
                raise _bad(where, f"{key} entry {d!r}: probabilities must be numbers in [0, 1]")
            into.setdefault(d[0], tuple(float(x) for x in d[1:]))
    further = obj.get("further_after_miss", [])
    if not isinstance(further, list):
        raise _bad(where, "further_after_miss must be a list of [position, [entropy, top_prob, "
                          "...], ...]")
    for d in further:
        if (not isinstance(d, list) or not 2 <= len(d) <= 1 + AFTER_MISS_DEPTH
                or isinstance(d[0], bool) or not isinstance(d[0], int)
                or d[0] not in req.after_miss):
            raise _bad(where, f"further_after_miss entry {str(d)[:80]} is not [position, "
                              f"[entropy, top_prob, ...], ...] (at most {AFTER_MISS_DEPTH} "
                              "proposals) at a position whose drafts entry has an entropy after "
                              "the miss")
        req.further_after_miss.setdefault(d[0], [_proposal(x, where) for x in d[1:]])
    after_alt = obj.get("after_alternative", [])
    if not isinstance(after_alt, list):
        raise _bad(where, "after_alternative must be a list of [position, index, [entropy, "
                          "top_prob, ...], ...]")
    for d in after_alt:
        if (not isinstance(d, list) or not 3 <= len(d) <= 2 + AFTER_ALTERNATIVE_DEPTH
                or any(isinstance(x, bool) or not isinstance(x, int) for x in d[:2])
                or d[0] < p or not 0 <= d[1] < RANK_DEPTH - 1
                or req.ranks.get(d[0]) == d[1] + 2):
            raise _bad(where, f"after_alternative entry {str(d)[:80]} is not [position >= "
                              f"prompt_tokens, index 0-{RANK_DEPTH - 2}, [entropy, top_prob, "
                              f"...], ...] (at most {AFTER_ALTERNATIVE_DEPTH} proposals) of an "
                              "alternative that is not the target's token")
        req.after_alternative.setdefault((d[0], d[1]), [_proposal(x, where) for x in d[2:]])
    return req


def _proposal(x: Any, where: str) -> tuple[float, ...]:
    """``[entropy, top_prob, *alt_probs]`` of one recorded proposal, checked."""
    if (not isinstance(x, list) or not 2 <= len(x) <= 1 + RANK_DEPTH
            or any(isinstance(v, bool) or not isinstance(v, (int, float)) for v in x)
            or not 0 <= x[0] < math.inf or not all(0 <= v <= 1 for v in x[1:])):
        raise _bad(where, f"proposal {str(x)[:80]} is not [entropy >= 0, top_prob, alt_prob, "
                          f"...] with probabilities in [0, 1] (at most {RANK_DEPTH - 1} "
                          "alternatives)")
    return tuple(float(v) for v in x)


RECORDED_COSTS = ("target_ms", "verify_per_token_ms", "draft_ms", "draft_per_token_ms",
                  *(f.name for f in dataclasses.fields(Roofline)))


def _check_header(obj: dict[str, Any], where: str) -> None:
    """The values a replay reuses (device costs, gamma) must be usable as they are."""
    for key in RECORDED_COSTS:
        v = obj.get(key)
        if v is not None and (isinstance(v, bool) or not isinstance(v, (int, float))
                              or not math.isfinite(v) or v < 0):
            raise _bad(where, f"header {key} must be a number >= 0, got {v!r}")
    g = obj.get("gamma")
    if g is not None and (isinstance(g, bool) or not isinstance(g, int) or g < 1):
        raise _bad(where, f"header gamma must be an integer >= 1, got {g!r}")


def read_trace(path: Path | str) -> Trace:
    path = Path(path)
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except OSError as exc:
        raise WanspecError(f"cannot read trace {path}: {exc.strerror or exc}") from None
    header: dict[str, Any] = {}
    requests: list[TraceRequest] = []
    for i, line in enumerate(lines, 1):
        if not line.strip():
            continue
        where = f"{path}:{i}"
        try:
            obj = json.loads(line)
        except json.JSONDecodeError as exc:
            raise _bad(where, f"not JSON ({exc.msg})") from None
        if isinstance(obj, dict) and "wanspec_trace" in obj:
            if requests or header:
                raise _bad(where, "the header must be the first line")
            if obj["wanspec_trace"] != FORMAT_VERSION:
                raise _bad(where, f"unsupported version {obj['wanspec_trace']!r}")
            _check_header(obj, where)
            header = obj
            continue
        requests.append(_parse_request(obj, where))
    if not requests:
        raise WanspecError(f"trace {path} holds no requests")
    return Trace(requests, header)


def write_trace(out: IO[str] | Path | str, requests: Iterable[TraceRequest],
                header: dict[str, Any] | None = None) -> None:
    """Write a trace (what ``emulate --record`` will call, one TraceRequest per request)."""
    if isinstance(out, (str, Path)):
        with open(out, "w", encoding="utf-8") as fh:
            write_trace(fh, requests, header)
        return
    out.write(json.dumps({"wanspec_trace": FORMAT_VERSION, **(header or {})}) + "\n")
    for i, r in enumerate(requests):
        drafts = [[p, a, e, r.after_miss[p]] if p in r.after_miss else [p, a, e]
                  for p, (a, e) in sorted(r.drafts.items())]
        line: dict[str, Any] = {"request": i, "prompt_tokens": r.prompt_tokens}
        if r.output_tokens is not None:
            line["output_tokens"] = r.output_tokens
        line["drafts"] = drafts
        if r.ranks:
            line["ranks"] = [[p, k] for p, k in sorted(r.ranks.items())]
        for key, probs in (("probs", r.probs), ("probs_after_miss", r.probs_after_miss)):
            if probs:
                line[key] = [[p, *ps] for p, ps in sorted(probs.items())]
        if r.further_after_miss:
            line["further_after_miss"] = [[p, *map(list, steps)] for p, steps
                                          in sorted(r.further_after_miss.items())]
        if r.after_alternative:
            line["after_alternative"] = [[p, i, *map(list, steps)] for (p, i), steps
                                         in sorted(r.after_alternative.items())]
        out.write(json.dumps(line) + "\n")


def replay_request(cfg: SimConfig, trace: Trace, request: int) -> RequestWorld:
    """Request ``request`` of a simulation replaying ``trace`` (see the module docstring)."""
    rec = trace.requests[request % len(trace.requests)]
    n = rec.prompt_tokens + cfg.max_tokens + 8
    alpha = trace.alpha if trace.alpha is not None else cfg.alpha
    matches = iid_matches(stream(cfg, request, "match"), n, alpha)
    entropies: list[float | None] = [None] * n
    after_miss: list[float | None] = [None] * n
    for pos, (acc, ent) in rec.drafts.items():
        if pos < n:
            matches[pos] = acc
            entropies[pos] = ent
    for pos, ent in rec.after_miss.items():
        if pos + 1 < n:
            after_miss[pos + 1] = ent
    ranks: list[int | None] = [None] * n
    for pos, rank in rec.ranks.items():
        if pos < n:
            ranks[pos] = rank
    probs: list[tuple[float, ...] | None] = [None] * n
    for pos, ps in rec.probs.items():
        if pos < n:
            probs[pos] = ps
    probs_after: list[tuple[float, ...] | None] = [None] * n
    for pos, ps in rec.probs_after_miss.items():
        if pos + 1 < n:
            probs_after[pos + 1] = ps
    further: dict[int, list[tuple[float, ...]]] = {
        pos + 1: steps for pos, steps in rec.further_after_miss.items() if pos + 1 < n}
    # a draft off the prefix after a wrong token where the trace has none recorded (a branch
    # of a draft tree from a wrong alternative can start anywhere): one recorded at random,
    # with what followed it
    pool = trace.after_miss_pool
    if pool:
        r = stream(cfg, request, "after-miss").random
        for j in range(1, n):
            if after_miss[j] is None:
                after_miss[j], probs_after[j], steps = pool[int(r() * len(pool))]
                if steps:
                    further[j] = steps
    return build_request(cfg, request, rec.prompt_tokens, matches, entropies, rec.output_tokens,
                         entropies_after_miss=after_miss, ranks=ranks,
                         rank_probs=trace.rank_probs, probs=probs, probs_after_miss=probs_after,
                         further_after_miss=further,
                         after_alternative={k: v for k, v in rec.after_alternative.items()
                                            if k[0] + 1 < n})
