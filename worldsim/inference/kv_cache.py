"""The rollout's KV cache: preallocated per-layer keys and values, filled in place.

Layout per layer: ``slots`` chunk-sized slots of ``L`` tokens in one buffer
``(B, H, slots * L, hd)``: ``memory`` slots first for chunks retrieved from the memory bank
(rewritten before every chunk that uses them, by a pass or from a kept one
(``MemorySlot.fill``), filled from the last one backwards so the used
ones end where the rest begins; while they are in use the same number of the oldest window
chunks is hidden, so a chunk sees as many context chunks as the teacher was trained with), an
optional *sink* slot (the session's first chunk, kept for good:
LongLive's attention sink), a ring of ``window`` slots for the most recent finished chunks, and
one *scratch* slot that the chunk being generated writes on every pass. Committing a chunk turns
the scratch slot into the newest window slot and, once the window is full, the slot of the oldest
window chunk into the next scratch slot: nothing is copied or concatenated, and the memory is
fixed from the start, so per-chunk cost stays flat however long a session runs.

Keys are stored *after* RoPE, at the absolute temporal positions they were computed with. RoPE
makes attention depend only on position differences, so a stored key stays valid as the session
moves on (rotating on read would cost a rotation per key per pass for the same scores). Slots are
used in order until the cache is full, so the part a chunk attends to is a contiguous range of
the buffer (the memory slots in use, then every kept chunk and the scratch slot) less any hidden
window slots; the order of keys inside it does not matter to attention.

Bytes: ``2 * layers * B * H * slots * L * hd * element size`` (reference.md §2).
"""

from __future__ import annotations

from collections import deque

import torch

from worldsim.core.errors import WorldsimError


class KVCache:
    """Implements ``worldsim.model.dit.KVContext`` for the rollout; see the module docstring.

    ``num_layers`` blocks, ``chunk_tokens`` tokens per chunk (frames x tokens per frame),
    ``window`` >= 1 finished chunks kept besides the sink (``sink=True``), ``memory`` >= 0 slots
    for retrieved chunks. Buffers are allocated on the first write with that write's batch,
    heads, head size, dtype and device.
    """

    def __init__(self, num_layers: int, chunk_tokens: int, window: int, sink: bool = False, memory: int = 0):
        if window < 1 or memory < 0:
            raise WorldsimError(f"a KV cache needs window >= 1 and memory >= 0 chunks, got {window} and {memory}")
        self.num_layers, self.chunk_tokens, self.window, self.sink = num_layers, chunk_tokens, window, sink
        self.memory = memory
        self.memory_used = 0  # retrieved chunks the next passes attend to (the last memory_used memory slots)
        self._hidden: list[int] = []  # window slots the next passes do not attend to (memory in use)
        self.slots = memory + window + 1 + int(sink)  # + the scratch slot (+ the sink)
        self.k: torch.Tensor | None = None  # (layers, B, H, slots * L, hd)
        self.v: torch.Tensor | None = None
        self.chunks_written = 0
        self._sink_slot: int | None = None
        self._window_slots: deque[int] = deque()  # oldest first
        self._scratch = memory  # the slot the chunk being generated writes
        # (layer, memory slot) -> the keys and values a retrieved chunk's pass with gradient wrote
        # there (ChunkRollout's memory_grad), handed to the passes with gradient that read them.
        self._live: dict[tuple[int, int], tuple[torch.Tensor, torch.Tensor]] = {}

    # -- what the model calls -----------------------------------------------------------------
    def keys_values(self, layer: int, k: torch.Tensor, v: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Write this chunk's ``k, v (B, H, L, hd)`` into the scratch slot of ``layer`` -> the
        keys and values it attends to ``(B, H, used * L, hd)`` (the context and itself).

        A pass that carries gradient (the exit step of a Self-Forcing rollout: ``k`` requires
        grad, or gradient is on and a retrieved chunk's pass with gradient is live, which is
        all that carries it when only a network's memory parameters train) writes detached
        copies and gets the same tensors, in the same order, built out of place from the
        buffers (no gradient), its own keys and values and those a retrieved chunk's pass with
        gradient wrote (:class:`MemorySlot`): the buffers never enter the autograd graph, so
        later in-place writes cannot invalidate it."""
        self._write(layer, self._scratch, k, v)
        assert self.k is not None and self.v is not None
        n = self.chunk_tokens
        first, end = self.memory - self.memory_used, self.memory + self.used_slots
        grad = k.requires_grad or v.requires_grad or (torch.is_grad_enabled() and bool(self._live))
        if not grad and not self._hidden:  # one contiguous range: a view, no copy
            return self.k[layer, :, :, first * n : end * n], self.v[layer, :, :, first * n : end * n]
        slots = [s for s in range(first, end) if s not in self._hidden]
        kk, vv = self.k[layer], self.v[layer]

        def part(s: int) -> tuple[torch.Tensor, torch.Tensor]:
            if grad and s == self._scratch:  # the pass's own keys and values, with their gradient
                return k, v
            if grad and (layer, s) in self._live:  # a retrieved chunk's, with theirs
                return self._live[layer, s]
            return kk[:, :, s * n : (s + 1) * n], vv[:, :, s * n : (s + 1) * n]

        keys, values = zip(*(part(s) for s in slots), strict=True)
        return torch.cat(keys, 2), torch.cat(values, 2)

    def _write(self, layer: int, slot: int, k: torch.Tensor, v: torch.Tensor) -> None:
        """Store ``k, v (B, H, L, hd)`` (detached) in ``slot`` of ``layer``."""
        if k.shape[2] != self.chunk_tokens:
            raise WorldsimError(f"the KV cache holds chunks of {self.chunk_tokens} tokens, got {k.shape[2]}")
        if self.k is None or self.v is None:
            b, h, _, hd = k.shape
            shape = (self.num_layers, b, h, self.slots * self.chunk_tokens, hd)
            self.k = torch.empty(shape, dtype=k.dtype, device=k.device)
            self.v = torch.empty(shape, dtype=v.dtype, device=v.device)
        self._live.pop((layer, slot), None)
        s = slot * self.chunk_tokens
        self.k[layer, :, :, s : s + self.chunk_tokens] = k.detach()
        self.v[layer, :, :, s : s + self.chunk_tokens] = v.detach()

    # -- what the rollout calls ---------------------------------------------------------------
    def use_memory(self, n: int) -> None:
        """The next chunk (its denoising passes and its clean pass, until :meth:`commit`) attends
        to ``n`` retrieved chunks, written with :meth:`memory_slot` ``(0 .. n-1)`` before it, in
        place of the oldest window chunks beyond ``window`` context chunks in all (0: none)."""
        if not 0 <= n <= self.memory:
            raise WorldsimError(f"this KV cache has {self.memory} memory slots, asked to use {n}")
        self.memory_used, self._live = n, {}
        self._hidden = list(self._window_slots)[: max(0, len(self._window_slots) + n - self.window)]

    def memory_slot(self, i: int) -> MemorySlot:
        """The ``KVContext`` of retrieved chunk ``i`` of those in use: its pass writes its keys
        and values there and attends to itself alone (a retrieved chunk was the oldest of its
        training clip, which attends to nothing before it)."""
        if not 0 <= i < self.memory_used:
            raise WorldsimError(f"memory slot {i} is not in use ({self.memory_used} in use)")
        return MemorySlot(self, self.memory - self.memory_used + i)

    def commit(self) -> None:
        """Keep the chunk last written to the scratch slot (its clean pass, or with the sampler's
        ``cache_write="last_step"`` its last denoising pass) as the newest context
        chunk: the sink if none is kept yet, else the newest window chunk, evicting the oldest."""
        if self.k is None:
            raise WorldsimError("commit() before any chunk was written to the KV cache")
        self.memory_used, self._hidden, self._live = 0, [], {}  # retrieved chunks serve one chunk
        if self.sink and self._sink_slot is None:
            self._sink_slot = self._scratch
            self._scratch += 1
        else:
            self._window_slots.append(self._scratch)
            if len(self._window_slots) > self.window:
                self._scratch = self._window_slots.popleft()  # the oldest window chunk is overwritten next
            else:
                self._scratch = self.memory + len(self._window_slots) + int(self._sink_slot is not None)
        self.chunks_written += 1

    @property
    def used_slots(self) -> int:
        """Slots a new chunk attends to besides memory: the kept chunks and its own scratch slot."""
        return len(self._window_slots) + int(self._sink_slot is not None) + 1

    @property
    def context_chunks(self) -> int:
        """Finished chunks a new chunk attends to (sink included)."""
        return self.used_slots - 1

    def state_dict(self) -> dict[str, torch.Tensor]:
        """Buffers and slot bookkeeping as tensors (for a saved session)."""
        if self.k is None or self.v is None:
            raise WorldsimError("an empty KV cache has nothing to save")
        book = [self.chunk_tokens, self.window, int(self.sink), self.chunks_written, self._scratch]
        book += [-1 if self._sink_slot is None else self._sink_slot, self.memory, self.memory_used]
        return {
            "k": self.k,
            "v": self.v,
            "book": torch.tensor(book, dtype=torch.int64),
            "window_slots": torch.tensor(list(self._window_slots), dtype=torch.int64),
        }

    @classmethod
    def from_state_dict(cls, state: dict[str, torch.Tensor], num_layers: int) -> KVCache:
        """The cache :meth:`state_dict` described, for a model of ``num_layers`` blocks."""
        try:
            chunk_tokens, window, sink, written, scratch, sink_slot, memory, used = (
                int(x) for x in state["book"].tolist()
            )
            cache = cls(num_layers, chunk_tokens, window, bool(sink), memory)
            k, v = state["k"], state["v"]
        except (KeyError, ValueError) as e:
            raise WorldsimError(f"the saved KV cache is incomplete ({e})") from None
        if k.shape[0] != num_layers or k.shape[3] != cache.slots * chunk_tokens or v.shape != k.shape:
            raise WorldsimError(f"the saved KV cache {tuple(k.shape)} does not fit this model ({num_layers} blocks)")
        cache.k, cache.v = k, v
        cache.chunks_written, cache._scratch, cache.memory_used = written, scratch, used
        cache._sink_slot = None if sink_slot < 0 else sink_slot
        cache._window_slots = deque(int(s) for s in state["window_slots"].tolist())
        return cache

    def nbytes(self) -> int:
        """Bytes of the preallocated buffers (0 before the first write)."""
        if self.k is None or self.v is None:
            return 0
        return self.k.numel() * self.k.element_size() + self.v.numel() * self.v.element_size()


class MemorySlot:
    """The ``KVContext`` of one retrieved chunk's pass (:meth:`KVCache.memory_slot`)."""

    def __init__(self, cache: KVCache, slot: int):
        self.cache, self.slot = cache, slot

    def keys_values(self, layer: int, k: torch.Tensor, v: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Store ``k, v (B, H, L, hd)`` in the memory slot -> the same (the chunk attends to itself).
        A pass with gradient keeps them too, for the passes with gradient that read the slot
        until the chunk it serves is committed (:meth:`KVCache.keys_values`)."""
        self.cache._write(layer, self.slot, k, v)
        if k.requires_grad or v.requires_grad:
            self.cache._live[layer, self.slot] = (k, v)
        return k, v

    def read(self) -> tuple[torch.Tensor, torch.Tensor]:
        """Copies of the slot's keys and values in every block, each ``(layers, B, H, L, hd)``."""
        c = self.cache
        assert c.k is not None and c.v is not None, "read() before the slot was written"
        s = slice(self.slot * c.chunk_tokens, (self.slot + 1) * c.chunk_tokens)
        return c.k[:, :, :, s].clone(), c.v[:, :, :, s].clone()

    def fill(self, k: torch.Tensor, v: torch.Tensor) -> None:
        """Write keys and values of every block, ``(layers, B, H, L, hd)`` as :meth:`read` gives
        them, into the slot (a pass's results kept from an earlier chunk)."""
        for layer in range(self.cache.num_layers):
            self.cache._write(layer, self.slot, k[layer], v[layer])
