"""KV caches in slots of one pool per model, so that many requests run in one forward pass.

Every request holds a :class:`KVCache`: a *slot* (a row) of its model's :class:`SlotPool`, which
keeps, per layer, one key and one value tensor shaped ``[slots, kv_heads, capacity, head_dim]``.
A batched forward (:meth:`wanspec.models.backend.CausalLM.forward_batch`) hands the model a
:class:`BatchView` as its cache: each layer writes the new keys and values of every request at
that request's own positions, in place, and attends over the rows of the requests in the pass,
with a mask that lets each query see exactly its own request's positions up to itself.

Rolling back is free: a slot's ``length`` is cut and later writes overwrite the stale
positions.  A cache can also start from another's prefix (a draft-tree branch forking off its
parent lane): the pass copies the source slot's first positions into the slot before the model
runs (:meth:`SlotPool.copy_prefixes`), a device-memory copy instead of recomputing them.  Slots
are recycled when a request's cache is closed or garbage-collected.  The pool
grows (doubling slots or capacity, copying once) when a pass needs more than it holds.

Contiguous slots keep the code short and the attention a plain masked SDPA; the price is memory
reserved per slot up to the longest sequence seen (paged attention, as in vLLM, would allocate
per block instead).
"""

from __future__ import annotations

import threading
import weakref
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import torch

INITIAL_SLOTS = 4
INITIAL_CAPACITY = 256


class SlotPool:
    """The key/value storage of one model (one executor): rows handed out as request slots.

    Slots are taken and given back from any thread; the tensors are only touched by forward
    passes, which run one at a time on the model's executor.
    """

    def __init__(self) -> None:
        self.keys: list[torch.Tensor] = []  # per layer: [slots, kv_heads, capacity, head_dim]
        self.values: list[torch.Tensor] = []
        self.slots = INITIAL_SLOTS  # rows the tensors have (or will have when first allocated)
        self.capacity = INITIAL_CAPACITY  # positions per row
        self._free: list[int] = []
        self._next = 0  # slots ever handed out
        self._lock = threading.Lock()

    @property
    def in_use(self) -> int:
        with self._lock:
            return self._next - len(self._free)

    def take(self) -> int:
        with self._lock:
            if self._free:
                return self._free.pop()
            self._next += 1
            return self._next - 1

    def give_back(self, slot: int) -> None:
        with self._lock:
            self._free.append(slot)

    def ensure(self, rows: int, positions: int) -> None:
        """Grow (copying what is held) so that slot ``rows - 1`` and position ``positions - 1``
        exist."""
        slots, capacity = self.slots, self.capacity
        while slots < rows:
            slots *= 2
        while capacity < positions:
            capacity *= 2
        if (slots, capacity) == (self.slots, self.capacity):
            return
        for store in (self.keys, self.values):
            for i, old in enumerate(store):
                new = old.new_zeros((slots, old.shape[1], capacity, old.shape[3]))
                new[: old.shape[0], :, : old.shape[2]] = old
                store[i] = new
        self.slots, self.capacity = slots, capacity

    def copy_prefixes(self, copies: list[tuple[int, int, int]]) -> None:
        """For each ``(source, destination, length)``: positions ``0 .. length-1`` of slot
        ``destination`` (every layer, keys and values) become those of slot ``source``.

        Every copy reads the slots as they were before any of them: all sources are gathered
        first, then written (a slot may be one copy's destination and another's source).  The
        slots and positions must exist (:meth:`ensure`); before the first pass allocated the
        tensors no slot holds anything, and nothing is copied.
        """
        import torch

        copies = [c for c in copies if c[2] > 0 and c[0] != c[1]]
        if not copies or not self.keys:
            return
        device = self.keys[0].device
        src = torch.cat([torch.full((n,), s, dtype=torch.long) for s, _, n in copies]).to(device)
        dst = torch.cat([torch.full((n,), d, dtype=torch.long) for _, d, n in copies]).to(device)
        pos = torch.cat([torch.arange(n, dtype=torch.long) for _, _, n in copies]).to(device)
        for store in (self.keys, self.values):
            for tensor in store:
                tensor[dst, :, pos] = tensor[src, :, pos]  # the gather copies before the write

    def layer(self, index: int, like: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """The key and value tensors of layer ``index``, allocated on first use from the shape of
        the keys the model produces (``like``: ``[batch, kv_heads, tokens, head_dim]``)."""
        while len(self.keys) <= index:
            shape = (self.slots, like.shape[1], self.capacity, like.shape[3])
            self.keys.append(like.new_zeros(shape))
            self.values.append(like.new_zeros(shape))
        return self.keys[index], self.values[index]


class KVCache:
    """One request's KV cache on one model: a slot of the model's pool and how many positions
    of it are valid.

    :meth:`close` gives the slot back -- once no pass is writing into it: a request cancelled
    while its pass runs on the accelerator's thread closes its cache at once, and the slot is
    returned when that pass ends.  Dropping the last reference gives it back too.
    """

    def __init__(self, pool: SlotPool) -> None:
        self.pool = pool
        self.slot = pool.take()
        self.length = 0
        self._closing = False
        self._passes = 0  # passes under way that write into this slot
        self._release = weakref.finalize(self, pool.give_back, self.slot)

    def crop(self, length: int) -> None:
        if length > self.length:
            raise ValueError(f"cannot extend a cache of {self.length} tokens to {length}")
        self.length = length

    def close(self) -> None:
        with self.pool._lock:
            self._closing = True
            if self._passes:
                return  # the last pass to end gives the slot back
        self._release()

    @property
    def closed(self) -> bool:
        return self._closing or not self._release.alive

    def pass_started(self, skip_closed: bool = False) -> bool:
        """Mark a pass writing into the slot; a closed cache is an error, or with
        ``skip_closed`` answers False (the pass leaves it out)."""
        with self.pool._lock:
            if self._closing:
                if skip_closed:
                    return False
                raise ValueError("a closed KV cache was fed")
            self._passes += 1
            return True

    def pass_ended(self) -> None:
        with self.pool._lock:
            self._passes -= 1
            release = self._closing and not self._passes
        if release:
            self._release()


@dataclass
class BatchView:
    """The cache object one batched forward hands the model (transformers' ``Cache.update``
    protocol): writes each request's new keys and values into its slot, returns the keys and
    values of the pass's rows up to ``length`` positions."""

    pool: SlotPool
    rows: torch.Tensor  # [batch] slot of each request
    write_at: torch.Tensor  # [batch, tokens] position each fed token is written to
    length: int  # positions returned (the longest request's end)

    def update(self, key_states: torch.Tensor, value_states: torch.Tensor, layer_idx: int,
               *args: Any, **kwargs: Any) -> tuple[torch.Tensor, torch.Tensor]:
        keys, values = self.pool.layer(layer_idx, key_states)
        index = (self.rows[:, None], slice(None), self.write_at)
        keys[index] = key_states.transpose(1, 2)  # advanced indices first: [batch, tokens, heads, dim]
        values[index] = value_states.transpose(1, 2)
        if self.rows.shape[0] == 1:  # one request: a view, no copy
            slot = int(self.rows[0])
            return keys[slot : slot + 1, :, : self.length], values[slot : slot + 1, :, : self.length]
        return keys[self.rows, :, : self.length], values[self.rows, :, : self.length]
