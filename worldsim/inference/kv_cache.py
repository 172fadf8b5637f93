"""The rollout's KV cache: preallocated per-layer keys and values, filled in place.

Layout per layer: ``slots`` chunk-sized slots of ``L`` tokens in one buffer
``(B, H, slots * L, hd)``: an optional *sink* slot (the session's first chunk, kept for good:
LongLive's attention sink), a ring of ``window`` slots for the most recent finished chunks, and
one *scratch* slot that the chunk being generated writes on every pass. Committing a chunk turns
the scratch slot into the newest window slot and, once the window is full, the slot of the oldest
window chunk into the next scratch slot: nothing is copied or concatenated, and the memory is
fixed from the start, so per-chunk cost stays flat however long a session runs.

Keys are stored *after* RoPE, at the absolute temporal positions they were computed with. RoPE
makes attention depend only on position differences, so a stored key stays valid as the session
moves on (rotating on read would cost a rotation per key per pass for the same scores). Slots are
used in order until the cache is full, so the part a chunk attends to is always a contiguous
prefix of the buffer; the order of keys inside it does not matter to attention.

Bytes: ``2 * layers * B * H * slots * L * hd * element size`` (reference.md §2).
"""

from __future__ import annotations

from collections import deque

import torch

from worldsim.core.errors import WorldsimError


class KVCache:
    """Implements ``worldsim.model.dit.KVContext`` for the rollout; see the module docstring.

    ``num_layers`` blocks, ``chunk_tokens`` tokens per chunk (frames x tokens per frame),
    ``window`` >= 1 finished chunks kept besides the sink (``sink=True``). Buffers are allocated
    on the first write with that write's batch, heads, head size, dtype and device.
    """

    def __init__(self, num_layers: int, chunk_tokens: int, window: int, sink: bool = False):
        if window < 1:
            raise WorldsimError(f"a KV cache needs a window of at least 1 chunk, got {window}")
        self.num_layers, self.chunk_tokens, self.window, self.sink = num_layers, chunk_tokens, window, sink
        self.slots = window + 1 + int(sink)  # + the scratch slot (+ the sink)
        self.k: torch.Tensor | None = None  # (layers, B, H, slots * L, hd)
        self.v: torch.Tensor | None = None
        self.chunks_written = 0
        self._sink_slot: int | None = None
        self._window_slots: deque[int] = deque()  # oldest first
        self._scratch = 0  # the slot the chunk being generated writes

    # -- what the model calls -----------------------------------------------------------------
    def keys_values(self, layer: int, k: torch.Tensor, v: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Write this chunk's ``k, v (B, H, L, hd)`` into the scratch slot of ``layer`` -> the
        keys and values it attends to ``(B, H, used * L, hd)`` (the context and itself).

        A pass that carries gradient (``k`` requires grad: the exit step of a Self-Forcing
        rollout) writes detached copies and gets the same tensors, in the same order, built out
        of place from the buffers (no gradient) and its own keys and values: the buffers never
        enter the autograd graph, so later in-place writes cannot invalidate it."""
        if k.shape[2] != self.chunk_tokens:
            raise WorldsimError(f"the KV cache holds chunks of {self.chunk_tokens} tokens, got {k.shape[2]}")
        if self.k is None or self.v is None:
            b, h, _, hd = k.shape
            shape = (self.num_layers, b, h, self.slots * self.chunk_tokens, hd)
            self.k = torch.empty(shape, dtype=k.dtype, device=k.device)
            self.v = torch.empty(shape, dtype=v.dtype, device=v.device)
        s = self._scratch * self.chunk_tokens
        end = self.used_slots * self.chunk_tokens
        e = s + self.chunk_tokens
        self.k[layer, :, :, s:e] = k.detach()
        self.v[layer, :, :, s:e] = v.detach()
        if k.requires_grad or v.requires_grad:
            kk, vv = self.k[layer], self.v[layer]
            return (
                torch.cat([kk[:, :, :s], k, kk[:, :, e:end]], 2),
                torch.cat([vv[:, :, :s], v, vv[:, :, e:end]], 2),
            )
        return self.k[layer, :, :, :end], self.v[layer, :, :, :end]

    # -- what the rollout calls ---------------------------------------------------------------
    def commit(self) -> None:
        """Keep the chunk last written to the scratch slot (its clean pass) as the newest context
        chunk: the sink if none is kept yet, else the newest window chunk, evicting the oldest."""
        if self.k is None:
            raise WorldsimError("commit() before any chunk was written to the KV cache")
        if self.sink and self._sink_slot is None:
            self._sink_slot = self._scratch
            self._scratch += 1
        else:
            self._window_slots.append(self._scratch)
            if len(self._window_slots) > self.window:
                self._scratch = self._window_slots.popleft()  # the oldest window chunk is overwritten next
            else:
                self._scratch = len(self._window_slots) + int(self._sink_slot is not None)
        self.chunks_written += 1

    @property
    def used_slots(self) -> int:
        """Slots a new chunk attends to: the kept chunks and its own scratch slot."""
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
        book.append(-1 if self._sink_slot is None else self._sink_slot)
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
            chunk_tokens, window, sink, written, scratch, sink_slot = (int(x) for x in state["book"].tolist())
            cache = cls(num_layers, chunk_tokens, window, bool(sink))
            k, v = state["k"], state["v"]
        except (KeyError, ValueError) as e:
            raise WorldsimError(f"the saved KV cache is incomplete ({e})") from None
        if k.shape[0] != num_layers or k.shape[3] != cache.slots * chunk_tokens or v.shape != k.shape:
            raise WorldsimError(f"the saved KV cache {tuple(k.shape)} does not fit this model ({num_layers} blocks)")
        cache.k, cache.v = k, v
        cache.chunks_written, cache._scratch = written, scratch
        cache._sink_slot = None if sink_slot < 0 else sink_slot
        cache._window_slots = deque(int(s) for s in state["window_slots"].tolist())
        return cache

    def nbytes(self) -> int:
        """Bytes of the preallocated buffers (0 before the first write)."""
        if self.k is None or self.v is None:
            return 0
        return self.k.numel() * self.k.element_size() + self.v.numel() * self.v.element_size()
