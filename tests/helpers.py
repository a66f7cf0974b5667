"""Tiny models and drafters shared by the tests (models built from a config, never downloaded)."""

from __future__ import annotations

import functools
from pathlib import Path

import torch

from wanspec.models.backend import CausalLM

TEXT = (
    "To be, or not to be, that is the question: whether 'tis nobler in the mind to suffer "
    "the slings and arrows of outrageous fortune, or to take arms against a sea of troubles. "
) * 8


@functools.lru_cache(maxsize=None)
def tiny_tokenizer(vocab_size: int = 300):
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=["<eos>"],
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
                                  show_progress=False)
    tok.train_from_iterator([TEXT], trainer=trainer)
    return PreTrainedTokenizerFast(tokenizer_object=tok, eos_token="<eos>", bos_token="<eos>",
                                   pad_token="<eos>")


def tiny_llama(seed: int, *, hidden: int = 32, layers: int = 2, vocab: int | None = None,
               dtype: torch.dtype = torch.float32, name: str = "tiny",
               exact: bool = False) -> CausalLM:
    """A random Llama; deterministic for a seed.  Logits are sharpened so argmax ties are rare."""
    from transformers import LlamaConfig, LlamaForCausalLM

    tok = tiny_tokenizer()
    vocab = vocab or len(tok)
    cfg = LlamaConfig(vocab_size=vocab, hidden_size=hidden, intermediate_size=hidden * 2,
                      num_hidden_layers=layers, num_attention_heads=4, num_key_value_heads=2,
                      max_position_embeddings=512, eos_token_id=tok.eos_token_id,
                      bos_token_id=tok.eos_token_id, pad_token_id=tok.eos_token_id)
    torch.manual_seed(seed)
    model = LlamaForCausalLM(cfg).to(dtype)
    with torch.no_grad():
        model.lm_head.weight.mul_(20.0)  # sharper distributions: fewer near-ties, more structure
    return CausalLM.from_model(model, tok, name=name, exact=exact)


def tiny_llama_with_tokenizer(seed: int, tokenizer_vocab: int, *, hidden: int = 32,
                              layers: int = 1, name: str = "tiny-other-tok") -> CausalLM:
    """A random Llama whose tokenizer was trained with ``tokenizer_vocab`` entries."""
    from transformers import LlamaConfig, LlamaForCausalLM

    tok = tiny_tokenizer(tokenizer_vocab)
    cfg = LlamaConfig(vocab_size=len(tok), hidden_size=hidden, intermediate_size=hidden * 2,
                      num_hidden_layers=layers, num_attention_heads=4, num_key_value_heads=2,
                      max_position_embeddings=512, eos_token_id=tok.eos_token_id,
                      bos_token_id=tok.eos_token_id, pad_token_id=tok.eos_token_id)
    torch.manual_seed(seed)
    return CausalLM.from_model(LlamaForCausalLM(cfg), tok, name=name)


def perturbed_copy(lm: CausalLM, *, scale: float, seed: int, name: str = "perturbed") -> CausalLM:
    """A copy of ``lm`` with Gaussian noise of std ``scale`` added to every weight: a drafter
    that agrees with the target often, but not always."""
    import copy

    model = copy.deepcopy(lm.model)
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(torch.randn(p.shape, generator=gen, dtype=p.dtype) * scale)
    return CausalLM.from_model(model, lm.tokenizer, name=name)


def hf_greedy(lm: CausalLM, prompt, n: int) -> list[int]:
    """The reference: Hugging Face ``generate`` greedy continuation of exactly ``n`` tokens.

    EOS is disabled (``eos_token_id=None``) rather than only suppressed with ``min_new_tokens``:
    ``min_new_tokens`` alone masks EOS logits, which changes the argmax whenever EOS would win,
    whereas wanspec's ``ignore_eos`` keeps EOS as an ordinary token.
    """
    ids = torch.tensor([list(prompt)], dtype=torch.long, device=lm.device)
    with torch.inference_mode():
        out = lm.model.generate(ids, attention_mask=torch.ones_like(ids), do_sample=False,
                                max_new_tokens=n, min_new_tokens=n, eos_token_id=None,
                                pad_token_id=lm.tokenizer.pad_token_id)
    cont = out[0, len(prompt):].tolist()
    assert len(cont) == n
    return cont


class ScriptedCache:
    """The scripted model's stand-in for a KV cache: the tokens fed so far, by position."""

    def __init__(self) -> None:
        self.tokens: list[int] = []
        self.closed = False

    @property
    def length(self) -> int:
        return len(self.tokens)

    def close(self) -> None:
        """Nothing to give back (a real cache returns its KV slot)."""
        self.closed = True

    def crop(self, length: int) -> None:
        if length > len(self.tokens):
            raise ValueError(f"cannot extend a cache of {len(self.tokens)} tokens to {length}")
        del self.tokens[length:]


class ScriptedLM:
    """An oracle drafter with CausalLM's duck-typed interface.

    Its logits for absolute position ``p`` are one-hot-ish on ``reference[p]`` (the target's
    true output), except at ``wrong_positions`` where they predict ``reference[p] + 1`` (mod
    vocab).  Positions beyond the reference predict token 0.  Every forward call is logged in
    ``calls`` as ``(start, tokens)`` and checked for KV-cache discipline (no feeding past the
    cached length).
    """

    def __init__(self, reference, *, wrong_positions=(), tokenizer=None,
                 vocab_size: int | None = None, eos_ids=frozenset(), name: str = "scripted",
                 sharpness: float = 30.0) -> None:
        import concurrent.futures
        from pathlib import Path

        self.reference = list(reference)
        self.wrong_positions = frozenset(wrong_positions)
        self.tokenizer = tokenizer if tokenizer is not None else tiny_tokenizer()
        self.vocab_size = int(vocab_size or len(self.tokenizer))
        self.eos_ids = frozenset(eos_ids)
        self.name = name
        self.path = Path(f"<{name}>")
        self.sharpness = sharpness
        self.executor = concurrent.futures.ThreadPoolExecutor(
            max_workers=1, thread_name_prefix=f"wanspec-{name}")
        self.calls: list[tuple[int, tuple[int, ...]]] = []

    def predicted(self, position: int) -> int:
        tok = self.reference[position] if position < len(self.reference) else 0
        if position in self.wrong_positions:
            tok = (tok + 1) % self.vocab_size
        return tok

    def new_cache(self) -> ScriptedCache:
        return ScriptedCache()

    def forward(self, cache: ScriptedCache, start: int, tokens) -> torch.Tensor:
        tokens = tuple(int(t) for t in tokens)
        if not tokens:
            raise ValueError("forward needs at least one token")
        cache.crop(start)
        if cache.length != start:
            raise ValueError(f"cache holds {cache.length} tokens, cannot feed at position {start}")
        cache.tokens.extend(tokens)
        self.calls.append((start, tokens))
        logits = torch.zeros(len(tokens), self.vocab_size, dtype=torch.float32)
        for i in range(len(tokens)):
            logits[i, self.predicted(start + i + 1)] = self.sharpness
        return logits

    def forward_batch(self, feeds, *, skip_closed: bool = False):
        """CausalLM's batched interface; a scripted model has nothing to gain from batching.  A
        fork (``Feed.source``) takes the source's first ``start`` tokens as they were before the
        pass."""
        copied = {}
        for i, f in enumerate(feeds):
            source = getattr(f, "source", None)
            if source is None:
                continue
            if source.closed and not skip_closed:
                raise ValueError("a fork copies a closed KV cache")
            if f.start > source.length:
                raise ValueError(f"cache holds {source.length} tokens, cannot feed at position "
                                 f"{f.start}")
            copied[i] = list(source.tokens[: f.start])
        out = []
        for i, f in enumerate(feeds):
            source = getattr(f, "source", None)
            if skip_closed and (f.cache.closed or (source is not None and source.closed)):
                out.append(None)
                continue
            if i in copied:
                f.cache.tokens = copied[i]
            out.append(self.forward(f.cache, f.start, f.tokens))
        return out

    def encode(self, text: str) -> list[int]:
        return list(self.tokenizer(text, add_special_tokens=False)["input_ids"])

    def decode(self, ids) -> str:
        return self.tokenizer.decode(list(ids), skip_special_tokens=True)

    def close(self) -> None:
        self.executor.shutdown(wait=False, cancel_futures=True)


class RecordingLM:
    """Wraps a CausalLM (or anything duck-typed like one) and logs ``(start, n_tokens)`` per pass."""

    def __init__(self, lm) -> None:
        self.lm = lm
        self.tokenizer = lm.tokenizer
        self.executor = lm.executor
        self.vocab_size = lm.vocab_size
        self.path = lm.path
        self.name = lm.name
        self.passes: list[tuple[int, int]] = []

    @property
    def eos_ids(self):
        return self.lm.eos_ids

    def new_cache(self):
        return self.lm.new_cache()

    def forward(self, cache, start, tokens):
        self.passes.append((start, len(tokens)))
        return self.lm.forward(cache, start, tokens)

    def forward_batch(self, feeds, *, skip_closed: bool = False):
        self.passes.extend((f.start, len(f.tokens)) for f in feeds)
        return self.lm.forward_batch(feeds, skip_closed=skip_closed)

    def encode(self, text: str) -> list[int]:
        return self.lm.encode(text)

    def decode(self, ids) -> str:
        return self.lm.decode(ids)


def sd_schedule(n_out: int, gamma: int, wrong_offsets=()) -> dict[str, int]:
    """Expected counters of standard SD (draft at the busy site) for an oracle drafter that is
    wrong exactly at the output offsets ``wrong_offsets`` and EOS ignored.

    Round structure: the prefill commits one token; then each round drafts
    ``g = min(gamma, remaining - 1)`` tokens (one draft pass each), accepts up to the first wrong
    one and commits the target's correction/bonus token.
    """
    wrong = set(wrong_offsets)
    n = 1
    out = {"target_passes": 1, "draft_passes": 0, "drafted": 0, "accepted": 0, "rounds": 0}
    while n < n_out:
        g = min(gamma, n_out - n - 1)
        if g == 0:
            out["target_passes"] += 1
            n += 1
            continue
        k = 0
        while k < g and (n + k) not in wrong:
            k += 1
        out["target_passes"] += 1
        out["draft_passes"] += g
        out["drafted"] += g
        out["accepted"] += k
        out["rounds"] += 1
        n += k + 1
    return out


# ---- remote drafting (controller + worker) helpers ------------------------------------------


class OracleLM(ScriptedLM):
    """:class:`ScriptedLM` plus ``sibling(name)``, as the remote runtime needs (the worker and the
    controller's local draft each get their own copy with its own executor and call log)."""

    def sibling(self, name: str) -> "OracleLM":
        return OracleLM(self.reference, wrong_positions=self.wrong_positions,
                        tokenizer=self.tokenizer, vocab_size=self.vocab_size, eos_ids=self.eos_ids,
                        name=name, sharpness=self.sharpness)


def save_tiny_model(lm: CausalLM, directory) -> "Path":
    """Write a tiny in-memory model and its tokenizer as a loadable model directory."""
    from pathlib import Path

    path = Path(directory)
    path.mkdir(parents=True, exist_ok=True)
    lm.model.save_pretrained(path)
    lm.tokenizer.save_pretrained(path)
    return path


def free_tcp_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on (bound, then released)."""
    import socket

    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])
