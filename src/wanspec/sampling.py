"""Token selection that makes speculative decoding lossless by construction.

Every position ``j`` of a sequence is decided by the *target's* processed distribution and a
random stream keyed by ``(seed, j)`` alone.  Target-only decoding and speculative decoding call the
same :func:`choose_tokens`, so a draft token is accepted only when it equals what the target would
have produced anyway: output is identical whatever the drafts, the RTT or the faults.

Sampling uses the Gumbel-max trick: ``argmax(log p + g)`` with ``g`` i.i.d. Gumbel noise is an exact
sample from ``p``.  Because the noise depends only on ``(seed, j)``, the draft can use the *same*
noise on its own distribution; when draft and target distributions are close their samples then
coincide often (coupled sampling), which keeps acceptance high without ever touching correctness.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Sequence

from wanspec.errors import WanspecError

if TYPE_CHECKING:
    import torch

# torch is imported inside the functions that use it, not here: SamplingParams and position_key
# are all the sans-I/O cores and ``wanspec simulate`` need, and importing torch costs ~1 s (per
# process of a parallel sweep).

_MASK64 = (1 << 64) - 1


@dataclass(frozen=True)
class SamplingParams:
    """How the target turns logits into tokens.  ``temperature == 0`` means greedy."""

    temperature: float = 0.0
    top_k: int = 0
    top_p: float = 1.0
    seed: int = 0

    def __post_init__(self) -> None:
        if not (self.temperature >= 0.0):
            raise WanspecError(f"temperature must be >= 0, got {self.temperature}")
        if self.top_k < 0:
            raise WanspecError(f"top-k must be >= 0 (0 disables it), got {self.top_k}")
        if not (0.0 < self.top_p <= 1.0):
            raise WanspecError(f"top-p must be in (0, 1], got {self.top_p}")
        if self.seed < 0:
            raise WanspecError(f"seed must be >= 0, got {self.seed}")

    @property
    def greedy(self) -> bool:
        return self.temperature == 0.0

    def to_dict(self) -> dict[str, float | int]:
        return {"temperature": self.temperature, "top_k": self.top_k, "top_p": self.top_p,
                "seed": self.seed}


def position_key(seed: int, position: int) -> int:
    """A 64-bit key for the random stream of one absolute position (splitmix64 mixing)."""
    z = (seed * 0x9E3779B97F4A7C15 + position + 0x632BE59BD9B4E019) & _MASK64
    z = ((z ^ (z >> 30)) * 0xBF58476D1CE4E5B9) & _MASK64
    z = ((z ^ (z >> 27)) * 0x94D049BB133111EB) & _MASK64
    return z ^ (z >> 31)


def gumbel_noise(seed: int, position: int, vocab: int) -> torch.Tensor:
    """Gumbel(0, 1) noise for one position, float64 on the CPU, identical on every machine."""
    import torch

    gen = torch.Generator(device="cpu").manual_seed(position_key(seed, position))
    u = torch.rand(vocab, generator=gen, dtype=torch.float64)
    u = u.clamp_(min=torch.finfo(torch.float64).tiny, max=1.0 - 1e-16)
    return -torch.log(-torch.log(u))


def processed_logprobs(logits: torch.Tensor, params: SamplingParams) -> torch.Tensor:
    """Log-probabilities after temperature, top-k and top-p, in float64 (-inf where filtered).

    ``logits`` is ``[n, vocab]``.  For greedy params the temperature is taken as 1 (the
    distribution is only used for entropy/confidence signals then).
    """
    import torch

    x = logits.detach().to(device="cpu", dtype=torch.float64)
    if not params.greedy:
        x = x / params.temperature
    if params.top_k and params.top_k < x.size(-1):
        kth = torch.topk(x, params.top_k, dim=-1).values[..., -1:]
        x = x.masked_fill(x < kth, float("-inf"))
    if params.top_p < 1.0:
        sorted_x, order = torch.sort(x, dim=-1, descending=True)
        probs = torch.softmax(sorted_x, dim=-1)
        # drop a token when the mass strictly before it already reaches top_p (keeps >= 1 token)
        before = torch.cumsum(probs, dim=-1) - probs
        drop_sorted = before >= params.top_p
        drop = torch.zeros_like(drop_sorted).scatter(-1, order, drop_sorted)
        x = x.masked_fill(drop, float("-inf"))
    return torch.log_softmax(x, dim=-1)


def choose_tokens(logits: torch.Tensor, positions: Sequence[int], params: SamplingParams) -> list[int]:
    """The target's token for each absolute position; row ``i`` of ``logits`` predicts ``positions[i]``."""
    import torch

    if logits.size(0) != len(positions):
        raise ValueError("one logits row per position")
    if params.greedy:
        return [int(t) for t in torch.argmax(logits, dim=-1).tolist()]
    logp = processed_logprobs(logits, params)
    out = []
    for row, pos in zip(logp, positions):
        out.append(int(torch.argmax(row + gumbel_noise(params.seed, pos, row.size(0)))))
    return out


MAX_ALTERNATIVES = 3  # runner-up tokens a draft pass reports besides its choice


@dataclass(frozen=True)
class DraftChoice:
    """A drafted token plus the draft's confidence signals, used by redundancy policies.

    ``alternatives``: the draft's next choices after ``token``, best first, at most
    :data:`MAX_ALTERNATIVES`, ranked by the score that chose ``token`` (see :func:`draft_choice`);
    ``alt_probs``: their probabilities under the draft's processed distribution.
    """

    token: int
    entropy: float  # nats, of the draft's processed distribution
    top_prob: float  # probability of the draft's most likely token
    alternatives: tuple[int, ...] = ()
    alt_probs: tuple[float, ...] = ()


def draft_choice(logits: torch.Tensor, position: int, params: SamplingParams) -> DraftChoice:
    """The draft's proposal for ``position`` from its logits row, coupled to the target's noise.

    The token maximises a score: the logits when greedy (as the target's greedy choice, which
    top-k and top-p do not change), else the processed log-probabilities plus the position's
    Gumbel noise (the target's sampling rule on the draft's distribution).  The runner-ups by the
    same score are the alternatives: the tokens the target would pick instead if the draft's
    distribution were a little off.  Tokens whose score is -inf (filtered out) are never
    alternatives.
    """
    import torch

    row = logits.reshape(1, -1)
    logp = processed_logprobs(row, params)[0]
    p = logp.exp()
    finite = torch.isfinite(logp)
    entropy = float(-(p[finite] * logp[finite]).sum())
    top_prob = float(p.max())
    if params.greedy:
        score = row[0]
    else:
        score = logp + gumbel_noise(params.seed, position, logp.size(0))
    token = int(torch.argmax(score))
    k = min(MAX_ALTERNATIVES + 1, score.size(0))
    best = torch.topk(score, k)
    alternatives: list[int] = []
    for value, index in zip(best.values.tolist(), best.indices.tolist()):
        if len(alternatives) == MAX_ALTERNATIVES or value == float("-inf"):
            break
        if index != token:
            alternatives.append(int(index))
    alt_probs = tuple(float(p[i]) for i in alternatives)
    return DraftChoice(token=token, entropy=max(entropy, 0.0), top_prob=top_prob,
                       alternatives=tuple(alternatives), alt_probs=alt_probs)
