"""A causal LM loaded from a local directory, with per-request KV caches that roll back.

The interface is deliberately small (gpt-fast style): :meth:`CausalLM.forward` cuts a request's
cache back to ``start`` tokens, feeds ``tokens`` and returns logits for every fed position.  That
one call covers prefill, single-token decode, multi-token verification and catch-up after a
rollback.  :meth:`CausalLM.forward_batch` does the same for many requests in **one** forward pass
(each with its own start and number of tokens; see :mod:`wanspec.models.kv`).  Forwards are
synchronous; the runtime runs them off the event loop on the model's own single-thread executor
so two models and the network progress concurrently.
"""

from __future__ import annotations

import concurrent.futures
import contextlib
import json
import logging
from pathlib import Path
from typing import TYPE_CHECKING, Iterator, NamedTuple, Sequence

from wanspec.errors import ModelLoadError
from wanspec.models.kv import BatchView, KVCache, SlotPool

if TYPE_CHECKING:
    import torch

# torch is imported where it is used, not at module level: the runtime imports this module for
# its types, and ``wanspec simulate`` (via the emulate records it shares) must not pay ~1 s of
# torch import per process.

log = logging.getLogger(__name__)

_DTYPES = {  # name -> torch attribute
    "auto": None,
    "float32": "float32",
    "fp32": "float32",
    "float16": "float16",
    "fp16": "float16",
    "bfloat16": "bfloat16",
    "bf16": "bfloat16",
    "float64": "float64",
}


@contextlib.contextmanager
def _quiet_loading() -> Iterator[None]:
    """No weight-loading progress bars or load-report chatter from transformers while a model
    loads (whoever loads it: the CLI or a program using the API); its settings are restored."""
    from transformers.utils import logging as hf_logging

    bars, verbosity = hf_logging.is_progress_bar_enabled(), hf_logging.get_verbosity()
    hf_logging.disable_progress_bar()
    hf_logging.set_verbosity_error()
    try:
        yield
    finally:
        hf_logging.set_verbosity(verbosity)
        if bars:
            hf_logging.enable_progress_bar()


def resolve_device(device: str = "auto") -> torch.device:
    import torch

    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        dev = torch.device(device)
    except RuntimeError as exc:
        raise ModelLoadError(f"unknown torch device {device!r}") from exc
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise ModelLoadError("device 'cuda' requested but CUDA is not available")
    return dev


def resolve_dtype(dtype: str, device: torch.device) -> torch.dtype:
    if dtype not in _DTYPES:
        raise ModelLoadError(f"unknown dtype {dtype!r}; choose from {', '.join(_DTYPES)}")
    import torch

    name = _DTYPES[dtype]
    if name is None:  # auto: half precision is slow or unsupported for CPU matmuls
        return torch.float32 if device.type == "cpu" else torch.bfloat16
    return getattr(torch, name)


class Feed(NamedTuple):
    """One request's part of a forward pass: cut ``cache`` to ``start`` tokens, feed ``tokens``.

    With ``source`` (a cache of the same model), ``cache`` first takes the first ``start``
    positions of ``source`` (keys and values of every layer) instead of its own: a fork, e.g. a
    draft-tree branch starting from its parent lane.  The copy reads ``source`` as it was before
    the pass, even when ``source`` is fed (or is itself a fork's destination) in the same pass.
    """

    cache: KVCache
    start: int
    tokens: Sequence[int]
    source: KVCache | None = None


class CausalLM:
    """A causal LM + tokenizer from a local directory (never a hub download)."""

    def __init__(self, path: str | Path, *, dtype: str = "auto", device: str = "auto",
                 name: str | None = None, exact: bool = False) -> None:
        from transformers import AutoModelForCausalLM, AutoTokenizer

        self.path = Path(path).expanduser()
        self.name = name or self.path.name
        if not self.path.is_dir():
            raise ModelLoadError(f"model directory not found: {self.path}")
        if not (self.path / "config.json").is_file():
            raise ModelLoadError(f"{self.path} is not a model directory (no config.json)")
        self.device = resolve_device(device)
        self.dtype = resolve_dtype(dtype, self.device)
        try:
            with _quiet_loading():
                self.tokenizer = AutoTokenizer.from_pretrained(self.path, local_files_only=True)
                model = AutoModelForCausalLM.from_pretrained(
                    self.path, local_files_only=True, dtype=self.dtype
                )
        except (OSError, ValueError, KeyError, json.JSONDecodeError) as exc:
            raise ModelLoadError(f"could not load a causal LM from {self.path}: {exc}") from exc
        self.model = model.to(self.device).eval()
        self.vocab_size = int(self.model.get_output_embeddings().weight.shape[0])
        self.executor = concurrent.futures.ThreadPoolExecutor(
            max_workers=1, thread_name_prefix=f"wanspec-{self.name}"
        )
        self.pool = SlotPool()
        self.fixed_length: int | None = None  # exact mode: the static attention length
        if exact:
            self._make_exact()

    def _make_exact(self) -> None:
        from wanspec.models.exact import make_exact, self_check

        make_exact(self)
        self_check(self)

    @property
    def exact(self) -> bool:
        """Batch-invariant execution: a position's logits do not depend on the pass (``--exact``)."""
        return self.fixed_length is not None

    @classmethod
    def from_model(cls, model, tokenizer, *, name: str = "model", exact: bool = False) -> "CausalLM":
        """Wrap an already-built transformers model (tests build tiny ones from a config)."""
        self = cls.__new__(cls)
        self.path = Path("<memory>")
        self.name = name
        self.model = model.eval()
        self.tokenizer = tokenizer
        first = next(model.parameters())
        self.device, self.dtype = first.device, first.dtype
        self.vocab_size = int(model.get_output_embeddings().weight.shape[0])
        self.executor = concurrent.futures.ThreadPoolExecutor(
            max_workers=1, thread_name_prefix=f"wanspec-{name}"
        )
        self.pool = SlotPool()
        self.fixed_length = None
        if exact:
            self._make_exact()
        return self

    def sibling(self, name: str) -> "CausalLM":
        """Same weights, own executor and KV pool: a second site's copy without a second load.

        Forwards only read the weights and write only their own pool, so two executors may run
        them concurrently.
        """
        other = self.__class__.__new__(self.__class__)
        other.__dict__.update(self.__dict__)
        other.name = name
        other.executor = concurrent.futures.ThreadPoolExecutor(
            max_workers=1, thread_name_prefix=f"wanspec-{name}"
        )
        other.pool = SlotPool()
        return other

    @property
    def eos_ids(self) -> frozenset[int]:
        ids: set[int] = set()
        eos = self.model.generation_config.eos_token_id
        if isinstance(eos, int):
            ids.add(eos)
        elif eos:
            ids.update(int(e) for e in eos)
        if self.tokenizer is not None and self.tokenizer.eos_token_id is not None:
            ids.add(int(self.tokenizer.eos_token_id))
        return frozenset(ids)

    @property
    def max_context(self) -> int:
        """Longest sequence (prompt + output) the model's positions cover."""
        return int(getattr(self.model.config, "max_position_embeddings", 0) or 1 << 20)

    def check_fits(self, prompt_len: int, max_tokens: int) -> None:
        from wanspec.errors import WanspecError

        if prompt_len + max_tokens > self.max_context:
            raise WanspecError(
                f"prompt ({prompt_len} tokens) + max tokens ({max_tokens}) exceeds the context "
                f"of {self.name} ({self.max_context} tokens)")

    def new_cache(self) -> KVCache:
        return KVCache(self.pool)

    def forward(self, cache: KVCache, start: int, tokens: Sequence[int]) -> torch.Tensor:
        """Cut ``cache`` back to ``start`` tokens, feed ``tokens``; logits ``[len(tokens), vocab]``."""
        logits = self.forward_batch([Feed(cache, start, tokens)])[0]
        assert logits is not None
        return logits

    def forward_batch(self, feeds: Sequence[Feed], *, skip_closed: bool = False
                      ) -> list[torch.Tensor | None]:
        """One forward pass for many requests; each request's logits ``[len(tokens), vocab]``.

        The requests' token runs are right-padded to the longest; each query attends only to its
        own request's cache up to its own position (a 4-D mask), so padding never changes what
        a real position sees.  Padded positions are written past the request's end and ignored.

        A closed cache is an error, unless ``skip_closed``: then that request (cancelled while
        its pass waited) is left out and gets ``None``, and the others run.  The same holds for a
        feed's ``source``: a fork whose source was closed is an error or left out.
        """
        if not feeds:
            return []
        seen: set[int] = set()
        stale: set[int] = set()  # forks whose source no longer holds their prefix (skipped)
        for i, f in enumerate(feeds):
            if f.cache.pool is not self.pool:
                raise ValueError(f"a KV cache of another model was fed to {self.name}")
            if f.cache.closed and not skip_closed:
                raise ValueError("a closed KV cache was fed")
            if f.cache.slot in seen:
                raise ValueError("one KV cache appears twice in a pass")
            seen.add(f.cache.slot)
            if not f.tokens:
                raise ValueError("forward needs at least one token per request")
            held = f.cache
            if f.source is not None:
                if f.source.pool is not self.pool:
                    raise ValueError(f"a fork of {self.name} copies a KV cache of another model")
                if f.source.closed and not skip_closed:
                    raise ValueError("a fork copies a closed KV cache")
                held = f.source
                if skip_closed and f.start > held.length:
                    # its source was cut since the fork was queued (the fork's lane was pruned
                    # meanwhile, so its result is void anyway): leave it out, not the whole pass
                    stale.add(i)
                    continue
            if not 0 <= f.start <= held.length:
                raise ValueError(f"cache holds {held.length} tokens, cannot feed at position {f.start}")
        live: list[int] = []  # feeds that run
        passing: list[KVCache] = []  # caches whose slots this pass holds (fed or copied)
        try:
            for i, f in enumerate(feeds):
                if i in stale or not f.cache.pass_started(skip_closed):
                    continue
                passing.append(f.cache)
                if f.source is not None:  # held too: its slot is not given back while copied
                    if not f.source.pass_started(skip_closed):
                        continue
                    passing.append(f.source)
                live.append(i)
            results: list[torch.Tensor | None] = [None] * len(feeds)
            if live:
                for i, logits in zip(live, self._forward_batch([feeds[i] for i in live])):
                    results[i] = logits
            return results
        finally:
            for cache in passing:
                cache.pass_ended()

    def _forward_batch(self, feeds: Sequence[Feed]) -> list[torch.Tensor]:
        import torch

        batch, width = len(feeds), max(len(f.tokens) for f in feeds)
        with torch.inference_mode():
            ids = torch.zeros((batch, width), dtype=torch.long)
            starts = torch.tensor([f.start for f in feeds], dtype=torch.long)
            write_at = starts[:, None] + torch.arange(width)[None, :]
            real = torch.tensor([len(f.tokens) for f in feeds], dtype=torch.long)
            for i, f in enumerate(feeds):
                ids[i, : len(f.tokens)] = torch.tensor(list(f.tokens), dtype=torch.long)
            # padded tokens sit at the request's last real position for the position embedding
            position_ids = torch.minimum(write_at, (starts + real - 1)[:, None])
            length = int((starts + real).max())
            if self.fixed_length is not None:  # exact mode: attention always spans the context
                if length > self.max_context:
                    raise ValueError(f"a request runs past the context of {self.name} "
                                     f"({self.max_context} positions)")
                length = self.fixed_length
            self.pool.ensure(max(f.cache.slot for f in feeds) + 1, max(int(write_at.max()) + 1, length))
            # forks first, so that each reads its source as it was before the pass
            self.pool.copy_prefixes([(f.source.slot, f.cache.slot, f.start) for f in feeds
                                     if f.source is not None])
            visible = torch.arange(length)[None, None, :] <= write_at[:, :, None]  # [b, t, length]
            mask = torch.zeros((batch, 1, width, length), dtype=self.dtype)
            mask.masked_fill_(~visible[:, None], torch.finfo(self.dtype).min)
            view = BatchView(self.pool, torch.tensor([f.cache.slot for f in feeds]).to(self.device),
                             write_at.to(self.device), length)
            for f in feeds:
                if f.source is None:
                    f.cache.crop(f.start)
                else:  # holds the source's first ``start`` positions now, whatever it held
                    f.cache.length = f.start
            out = self.model(input_ids=ids.to(self.device), position_ids=position_ids.to(self.device),
                             attention_mask=mask.to(self.device), use_cache=True,
                             cache=view)  # ``past_key_values`` before transformers 5.24
            for f in feeds:
                f.cache.length = f.start + len(f.tokens)
            logits = out.logits.float()
            if self.device.type == "cuda":
                torch.cuda.synchronize(self.device)
        return [logits[i, : len(f.tokens)] for i, f in enumerate(feeds)]

    def encode(self, text: str) -> list[int]:
        return list(self.tokenizer(text, add_special_tokens=False)["input_ids"])

    def decode(self, ids: Sequence[int]) -> str:
        return self.tokenizer.decode(list(ids), skip_special_tokens=True)

    def close(self) -> None:
        self.executor.shutdown(wait=False, cancel_futures=True)
