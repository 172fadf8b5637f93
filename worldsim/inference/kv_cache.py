"""Typed KV cache for chunk-autoregressive inference: sink chunk, rolling window, memory slots.

Keys are stored *after* RoPE: a chunk's positions are fixed when it is written, so reusing them
costs nothing per step. (A camera made relative to the latest frame enters through the token
features, not the keys' positions; rebuilding context K/V per chunk is the other option and is
decided by measurement in the model benchmark.) The window holds at most ``window_chunks``
chunks; the oldest non-sink chunk is evicted, so per-chunk cost is flat however long play runs.
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass, field

import torch


@dataclass
class ChunkKV:
    k: torch.Tensor  # (B, H, L, D) after RoPE
    v: torch.Tensor  # (B, H, L, D)


@dataclass
class LayerCache:
    sink: ChunkKV | None = None
    window: deque[ChunkKV] = field(default_factory=deque)
    memory: list[ChunkKV] = field(default_factory=list)  # retrieved past chunks, replaced per chunk

    def context(self) -> tuple[torch.Tensor, torch.Tensor] | None:
        """Keys and values of everything a new chunk attends to besides itself, or None."""
        parts = ([self.sink] if self.sink is not None else []) + self.memory + list(self.window)
        if not parts:
            return None
        return torch.cat([p.k for p in parts], dim=2), torch.cat([p.v for p in parts], dim=2)


@dataclass
class KVCache:
    """One :class:`LayerCache` per transformer block, plus the bookkeeping all layers share."""

    num_layers: int
    window_chunks: int
    use_sink: bool = True
    layers: list[LayerCache] = field(default_factory=list)
    chunks_written: int = 0

    def __post_init__(self) -> None:
        if not self.layers:
            self.layers = [LayerCache() for _ in range(self.num_layers)]

    def clear_memory(self) -> None:
        """Drop the retrieved memory chunks (before writing the next chunk's selection)."""
        for lc in self.layers:
            lc.memory.clear()

    def write_memory(self, layer: int, k: torch.Tensor, v: torch.Tensor) -> None:
        """Add a retrieved past chunk's K/V to the memory slots of one layer (not the window)."""
        self.layers[layer].memory.append(ChunkKV(k.detach(), v.detach()))

    def write(self, layer: int, k: torch.Tensor, v: torch.Tensor) -> None:
        """Store a finished chunk's K/V for one layer (call for every layer, then :meth:`commit`)."""
        lc = self.layers[layer]
        item = ChunkKV(k.detach(), v.detach())
        if self.use_sink and self.chunks_written == 0:
            lc.sink = item
            return
        lc.window.append(item)
        while len(lc.window) > self.window_chunks:
            lc.window.popleft()

    def commit(self) -> None:
        self.chunks_written += 1

    def num_tokens(self) -> int:
        ctx = self.layers[0].context()
        return 0 if ctx is None else ctx[0].shape[2]

    def nbytes(self) -> int:
        total = 0
        for lc in self.layers:
            ctx = lc.context()
            if ctx is not None:
                total += ctx[0].numel() * ctx[0].element_size() * 2
        return total
