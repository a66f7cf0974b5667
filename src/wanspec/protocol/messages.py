"""Protocol messages.  Positions are absolute token indices; epochs only ever grow.

Flow for one request (``rid``)::

    controller                                   worker
      Hello  ───────────────────────────────────▶        (version, tokenizer fingerprint)
             ◀─────────────────────────────────── Hello
             ◀─────────────────────────────────── Auth      } only with a pre-shared key: each
      Auth   ───────────────────────────────────▶            } side proves it knows the key
      SessionStart(rid, prompt, sampling, ...) ──▶        prefill + draft ahead
             ◀────────── Drafts(rid, epoch, base, tokens, entropy, top_prob)   (streamed)
             ◀────────── DraftsBundle(rid, epoch, lanes...)   (a draft tree's lanes, one pass)
      Commit(rid, epoch, base, tokens) ─────────▶        keep or roll back (new epoch)
      Cancel(rid) ──────────────────────────────▶        free the session
      Ping(t) ──────────────────────────────────▶ Pong(t, load)

A worker's *epoch* for a session grows by one every time it discards its draft chain.  Its chain
of epoch ``e`` starts at position ``base`` and is streamed in order, so the controller always
knows it contiguously and can check every draft against the committed prefix: drafts of an old
epoch, or of a chain that disagrees with what was committed, are dropped.
"""

from __future__ import annotations

from dataclasses import dataclass, field

# Messages are values: treat them as immutable (not frozen only because a frozen dataclass costs
# three times as much to construct, and one Drafts is built per draft pass).


@dataclass(slots=True)
class Hello:
    """First message each way: who I am and whether we can work together."""

    version: int
    role: str  # "controller" or "worker"
    model: str = ""  # draft model name at the worker, target name at the controller
    tokenizer: str = ""  # tokenizer fingerprint; must match for drafts to mean anything
    vocab_size: int = 0
    capabilities: tuple[str, ...] = ()
    # 32 fresh random bytes when the sender has a pre-shared key (its challenge to the peer, see
    # Auth); empty without one
    nonce: bytes = b""


@dataclass(slots=True)
class Auth:
    """Proof of the pre-shared key: HMAC-SHA256 over both Hellos' nonces, the prover's role and
    the protocol version (:func:`wanspec.protocol.auth.proof`).  The key never crosses the wire;
    fresh nonces on both sides make a recorded proof useless on another connection."""

    mac: bytes


@dataclass(slots=True)
class SessionStart:
    """Start drafting for a request: the worker prefills ``prompt`` and drafts ahead."""

    rid: int
    prompt: tuple[int, ...]
    temperature: float = 0.0
    top_k: int = 0
    top_p: float = 1.0
    seed: int = 0
    lookahead: int = 8  # how far beyond the committed prefix the worker may draft
    max_position: int = 0  # never draft at or past this absolute position (0 = unbounded)
    # draft tree: at most this many branch lanes besides the main line (0: one chain, as before
    # v3's "branches" capability; only sent to a worker that announced it)
    branches: int = 0


@dataclass(slots=True)
class Drafts:
    """Draft tokens for positions ``base .. base+len-1`` of lane ``lane`` of the worker's
    epoch-``epoch`` draft tree.

    Lane 0 is the epoch's first chain, drafted from the committed prefix.  Any other lane is a
    *branch*: it forks off lane ``parent`` at position ``fork`` (positions before ``fork`` are the
    parent's tokens) with a token the parent did not choose there; its first message has
    ``base == fork`` and starts with that token.  Lanes other than 0 are only sent in sessions
    started with ``branches > 0`` (see docs/protocol.md, "Draft trees").
    """

    rid: int
    epoch: int
    base: int
    tokens: tuple[int, ...]
    entropy: tuple[float, ...] = ()
    top_prob: tuple[float, ...] = ()
    lane: int = 0
    parent: int = 0
    fork: int = 0


BUNDLES = "bundles"  # the Hello capability of a controller that takes DraftsBundle messages


@dataclass(slots=True)
class DraftsBundle:
    """Several :class:`Drafts` of one session and epoch in one message: what one batched draft
    pass made for the lanes of a draft tree.

    Why: a tree's lanes each gain a token per pass, and one message per lane cost both sites
    more event-loop work (framing, a send, a wake-up, a scheduling decision) than the drafts
    themselves.  Flat per-item arrays rather than nested messages keep the wire compact and
    the boundary checks the codec's usual ones.  Item ``i`` is ``Drafts(rid, epoch, bases[i],
    tokens[k:k+counts[i]], ..., lanes[i], parents[i], forks[i])`` with ``k`` the sum of the
    counts before it (:func:`unbundle`).  Sent only to a controller whose Hello announced the
    ``bundles`` capability.
    """

    rid: int
    epoch: int
    lanes: tuple[int, ...]
    parents: tuple[int, ...]
    forks: tuple[int, ...]
    bases: tuple[int, ...]
    counts: tuple[int, ...]  # tokens of each item
    tokens: tuple[int, ...]  # the items' tokens, one after another
    entropy: tuple[float, ...]  # per token, as tokens
    top_prob: tuple[float, ...]


def bundle_drafts(items: list[Drafts]) -> DraftsBundle:
    """The bundle of ``items`` (non-empty, all of one session and epoch)."""
    first = items[0]
    return DraftsBundle(
        first.rid, first.epoch, tuple(d.lane for d in items), tuple(d.parent for d in items),
        tuple(d.fork for d in items), tuple(d.base for d in items),
        tuple(len(d.tokens) for d in items), tuple(t for d in items for t in d.tokens),
        tuple(e for d in items for e in d.entropy), tuple(p for d in items for p in d.top_prob))


def unbundle(b: DraftsBundle) -> list[Drafts] | None:
    """The :class:`Drafts` that ``b`` carries, in order; None if its arrays do not fit together
    (a peer's error: the per-item arrays of unequal lengths, counts that are not positive or do
    not add up to the tokens, statistics not one per token)."""
    n = len(b.lanes)
    if not n or not len(b.parents) == len(b.forks) == len(b.bases) == len(b.counts) == n:
        return None
    if any(c <= 0 for c in b.counts) or sum(b.counts) != len(b.tokens):
        return None
    if len(b.entropy) != len(b.tokens) or len(b.top_prob) != len(b.tokens):
        return None
    out, k = [], 0
    for lane, parent, fork, base, count in zip(b.lanes, b.parents, b.forks, b.bases, b.counts):
        out.append(Drafts(b.rid, b.epoch, base, b.tokens[k:k + count], b.entropy[k:k + count],
                          b.top_prob[k:k + count], lane, parent, fork))
        k += count
    return out


@dataclass(slots=True)
class Commit:
    """Tokens committed at positions ``base .. base+len-1`` (contiguous with earlier commits).

    ``epoch`` is the worker epoch the controller had seen when committing (diagnostic only: the
    worker decides itself whether its chain survives, by comparing tokens).
    """

    rid: int
    epoch: int
    base: int
    tokens: tuple[int, ...]


@dataclass(slots=True)
class Cancel:
    """The request ended (or was abandoned): free its state."""

    rid: int
    reason: str = "done"


@dataclass(slots=True)
class SessionStats:
    """The worker's account of a finished session (sent after a Cancel): its own pass counts."""

    rid: int
    passes: int
    drafted: int
    wasted: int
    rollbacks: int


@dataclass(slots=True)
class Ping:
    t: float
    seq: int = 0


@dataclass(slots=True)
class Pong:
    """The echo of a Ping; a worker's also reports its load (a controller's leaves it 0)."""

    t: float  # echoed from the Ping: the sender computes RTT from its own clock
    seq: int = 0
    busy: float = 0.0  # fraction of recent time the worker's draft device ran passes, in [0, 1]
    demand: float = 0.0  # the worker's live sessions per sequence one draft pass carries (>= 0;
    # above 1 it is over capacity: each session is in about 1/demand of the passes)


@dataclass(slots=True)
class Error:
    """A fatal (rid == -1) or per-session problem, in words a person can act on."""

    message: str
    rid: int = -1
    code: str = "error"
    details: dict[str, str] = field(default_factory=dict)


Message = Hello | Auth | SessionStart | Drafts | DraftsBundle | Commit | Cancel | SessionStats | Ping | Pong | Error
