"""Chunk-autoregressive latent DiT with per-frame AdaLN-Zero actions and Plücker camera tokens.

Read top to bottom: embeddings -> blocks -> final layer. Shapes: ``B`` batch, ``T`` frames,
``C`` latent channels, ``h, w`` latent grid, ``N = (h/p)*(w/p)`` tokens per frame, ``D`` width.

* Conditioning per frame ``c = t_emb(sigma) + action_emb(a)``; ``action_emb``'s last layer is
  zero-initialised, and so are every block's modulation and the final projection (AdaLN-Zero).
  Modulation is computed per frame and broadcast over its tokens (calibration lesson 3).
* Camera: Plücker rays at latent resolution, patchified like the latents and added to the tokens
  through a zero-initialised linear (added to tokens rather than per-block FiLM: one projection,
  cheap, and the tokens carry it through every block's attention).
* Retrieved memory frames (``memory_embedding``, off in the teachers): a learned vector added to
  the conditioning ``c`` of the frames a memory bank brought back, zero at first (a segment
  embedding, as BERT's marks a token's sentence). A retrieved chunk sits where the oldest
  context chunk would, at its temporal positions, attending to itself alone, as that chunk
  does; the two differ in what their rays are relative to (the generated chunk's reference, or
  the context chunk's own, ``worldsim.inference.rollout``), which the network cannot see from
  the rays themselves. The vector tells them apart.
* A memory adapter (``memory_adapter_rank``, off in the teachers): low-rank updates (LoRA, Hu et
  al. 2021) of every block's ``qkv``, ``proj`` and MLP linears that act on the tokens of
  retrieved frames only. A retrieved chunk attends to itself alone, so the adapter changes
  nothing but the keys and values it offers the frames after it: a network trained only in its
  memory parameters (the embedding and the adapter) computes exactly what its start did for
  every input without retrieved frames. The up-projections start at zero.
* Attention: bidirectional inside a chunk, causal across chunks (a mask in training; at inference
  a :class:`KVContext` supplied by the rollout hands each block the keys and values to attend
  to). Positions: 3-D RoPE (time, row, col); temporal positions are explicit inputs, so
  memory frames can be placed anywhere without changing the network.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass
from typing import Protocol

import torch
import torch.nn as nn
from einops import rearrange

from worldsim.model.attention import attention
from worldsim.model.rope import apply_rope, rope_angles, token_positions


@dataclass
class WorldModelConfig:
    """Sizes of the chunk-causal DiT (latent grid, patch, width, depth, heads, frames per chunk).

    ``WorldModel`` raises ``ValueError`` unless the latent shape and ``action_dim`` are set,
    ``latent_size`` divides by ``patch`` and ``width`` splits into ``heads`` heads of even size
    (RoPE pairs).
    """

    # The codec's latent shape. Not configured: the teacher stage derives it from its codec and
    # the data's frame size (None until then); a checkpoint's config.json records it.
    latent_channels: int | None = None
    latent_size: tuple[int, int] | None = None  # (h, w)
    patch: int = 2
    width: int = 256
    depth: int = 6
    heads: int = 4
    mlp_ratio: float = 4.0
    # The action encoder's dim. Not configured: the teacher stage derives it from its encoder
    # (None until then); a checkpoint's config.json records it.
    action_dim: int | None = None
    chunk_frames: int = 4
    # A learned embedding that marks retrieved memory frames (module docstring). False in the
    # checkpoints made before it existed, whose config.json does not name it.
    memory_embedding: bool = False
    # The rank of the memory adapter (module docstring); 0 = none, as in the checkpoints made
    # before it existed, whose config.json does not name it.
    memory_adapter_rank: int = 0

    def latent_shape(self) -> tuple[int, int, int]:
        """``(C, h, w)`` of one latent frame; ``ValueError`` while it is not derived yet."""
        if self.latent_channels is None or self.latent_size is None:
            raise ValueError("model latent shape is unset: the codec's (the teacher stage derives it)")
        return self.latent_channels, int(self.latent_size[0]), int(self.latent_size[1])

    @property
    def tokens_per_frame(self) -> int:
        """Patch tokens per latent frame: ``(h // patch) * (w // patch)``."""
        _, h, w = self.latent_shape()
        return (h // self.patch) * (w // self.patch)


class KVContext(Protocol):
    """What a chunk attends to at inference besides itself (implemented by the rollout's KV cache).

    ``keys_values(layer, k, v)`` receives this chunk's keys (after RoPE) and values
    ``(B, H, L, hd)`` for block ``layer`` and returns the keys and values the chunk attends to,
    ``(B, H, L_ctx + L, hd)``: the context's and its own. Attention needs no mask then: the
    context holds only earlier chunks, and the order of keys does not matter (RoPE carries time).
    """

    def keys_values(self, layer: int, k: torch.Tensor, v: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """``k, v (B, H, L, hd)`` of block ``layer`` -> context plus own ``(B, H, L_ctx + L, hd)``."""


def timestep_embedding(sigma: torch.Tensor, dim: int) -> torch.Tensor:
    """Sinusoidal embedding of ``t = 1000 * sigma``: ``(...)`` -> ``(..., dim)``, ``[cos | sin]`` as in DiT."""
    half = dim // 2
    freqs = torch.exp(-math.log(10000.0) * torch.arange(half, device=sigma.device, dtype=torch.float32) / half)
    args = (1000.0 * sigma.float())[..., None] * freqs
    return torch.cat([torch.cos(args), torch.sin(args)], dim=-1)


def _zero_linear(d_in: int, d_out: int) -> nn.Linear:
    """A linear layer starting at exactly zero: its path contributes nothing until trained."""
    layer = nn.Linear(d_in, d_out)
    nn.init.zeros_(layer.weight)
    nn.init.zeros_(layer.bias)
    return layer


class LowRank(nn.Module):
    """``x (..., d_in) -> (..., d_out)``: ``up(down(x))`` of rank ``rank`` without biases, ``up``
    zero at first (LoRA, Hu et al. 2021: the update starts at exactly nothing); ``down`` drawn
    from ``generator`` (None: torch's global one)."""

    def __init__(self, d_in: int, d_out: int, rank: int, generator: torch.Generator | None = None):
        super().__init__()
        self.down = nn.Linear(d_in, rank, bias=False)
        nn.init.normal_(self.down.weight, std=d_in**-0.5, generator=generator)
        self.up = nn.Linear(rank, d_out, bias=False)
        nn.init.zeros_(self.up.weight)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.up(self.down(x))


class MemoryAdapter(nn.Module):
    """A block's low-rank updates for the tokens of retrieved frames (module docstring), one per
    linear: ``qkv``, ``proj`` and the MLP's two (``fc1``, ``fc2``). The last block's has ``qkv``
    alone (``keys_values_only``): a retrieved chunk's output after it is read by nothing."""

    def __init__(
        self, d: int, hidden: int, rank: int, keys_values_only: bool = False, generator: torch.Generator | None = None
    ):
        super().__init__()
        self.qkv = LowRank(d, 3 * d, rank, generator)
        self.proj = None if keys_values_only else LowRank(d, d, rank, generator)
        self.fc1 = None if keys_values_only else LowRank(d, hidden, rank, generator)
        self.fc2 = None if keys_values_only else LowRank(hidden, d, rank, generator)


def _adapted(linear: nn.Module, update: LowRank | None, x: torch.Tensor, memory: torch.Tensor | None) -> torch.Tensor:
    """``linear(x)``, plus ``update(x)`` on the frames ``memory (T,)`` marks (1) when there are
    any; ``x (B, T, N, d)``."""
    y = linear(x)
    if update is None or memory is None:
        return y
    return y + memory.to(y.dtype).reshape(1, -1, 1, 1) * update(x)


class Block(nn.Module):
    """AdaLN-Zero transformer block (DiT, Peebles & Xie 2023); modulation ``(B, T, 6D)`` is per frame."""

    def __init__(self, cfg: WorldModelConfig):
        super().__init__()
        d = cfg.width
        self.heads = cfg.heads
        self.norm1 = nn.LayerNorm(d, elementwise_affine=False, eps=1e-6)
        self.qkv = nn.Linear(d, 3 * d)
        self.proj = nn.Linear(d, d)
        self.norm2 = nn.LayerNorm(d, elementwise_affine=False, eps=1e-6)
        hidden = int(d * cfg.mlp_ratio)
        self.mlp = nn.Sequential(nn.Linear(d, hidden), nn.GELU(approximate="tanh"), nn.Linear(hidden, d))
        ada = _zero_linear(d, 6 * d)
        self.ada = nn.Sequential(nn.SiLU(), ada)
        self.memory_adapter: MemoryAdapter | None = None  # WorldModel.add_memory_adapter

    def forward(
        self,
        x: torch.Tensor,  # (B, T, N, D)
        c: torch.Tensor,  # (B, T, D)
        angles: torch.Tensor,  # (T*N, head_dim/2)
        mask: torch.Tensor | None = None,  # (T*N, T*N) bool, training only
        kv: KVContext | None = None,  # inference: the rollout's cache
        layer: int = 0,  # this block's index, for ``kv``
        memory: torch.Tensor | None = None,  # (T,) 1 for retrieved frames (the memory adapter); None: none
    ) -> torch.Tensor:
        """-> the new ``x`` ``(B, T, N, D)``."""
        q, k, v, gates = self.attention_in(x, c, angles, memory)
        if kv is not None:  # inference: attend to the cached context and to this chunk
            k, v = kv.keys_values(layer, k, v)
        return self.attention_out(x, attention(q, k, v, mask), gates, memory)

    def attention_in(
        self, x: torch.Tensor, c: torch.Tensor, angles: torch.Tensor, memory: torch.Tensor | None = None
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
        """The block up to attention: ``q, k, v (B, H, T*N, hd)`` (RoPE applied) and the other
        modulation ``(4, B, T, 1, D)`` (gate1, shift2, scale2, gate2) for :meth:`attention_out`;
        ``memory (T,)`` marks the frames the memory adapter updates. Token-wise with static
        shapes for a chunk, a region ``torch.compile`` can take whole (``worldsim.inference.compiled``)."""
        shift1, scale1, gate1, shift2, scale2, gate2 = self.ada(c)[:, :, None].chunk(6, dim=-1)  # (B, T, 1, D)
        h = self.norm1(x) * (1 + scale1) + shift1
        ad = self.memory_adapter
        qkv = _adapted(self.qkv, None if ad is None else ad.qkv, h, memory)
        q, k, v = rearrange(qkv, "b t n (three h e) -> three b h (t n) e", three=3, h=self.heads)
        return apply_rope(q, angles), apply_rope(k, angles), v, torch.stack([gate1, shift2, scale2, gate2])

    def attention_out(
        self, x: torch.Tensor, a: torch.Tensor, gates: torch.Tensor, memory: torch.Tensor | None = None
    ) -> torch.Tensor:
        """The block after attention: ``x (B, T, N, D)``, the attention output ``a (B, H, T*N,
        hd)``, :meth:`attention_in`'s modulation and ``memory`` as there -> the new ``x``."""
        gate1, shift2, scale2, gate2 = gates
        ad = self.memory_adapter
        a = rearrange(a, "b h (t n) e -> b t n (h e)", t=x.shape[1])
        x = x + gate1 * _adapted(self.proj, None if ad is None else ad.proj, a, memory)
        fc1, act, fc2 = self.mlp
        h = act(_adapted(fc1, None if ad is None else ad.fc1, self.norm2(x) * (1 + scale2) + shift2, memory))
        return x + gate2 * _adapted(fc2, None if ad is None else ad.fc2, h, memory)


class WorldModel(nn.Module):
    """Predicts the flow velocity ``v = eps - x0`` for every frame of the input."""

    def __init__(self, cfg: WorldModelConfig):
        super().__init__()
        self.cfg = cfg
        d, p = cfg.width, cfg.patch
        ch, lh, lw = cfg.latent_shape()
        if cfg.width % cfg.heads or (cfg.width // cfg.heads) % 2:
            raise ValueError(f"width {cfg.width} must split into {cfg.heads} heads of even size")
        if lh % p or lw % p:
            raise ValueError(f"latent size {(lh, lw)} is not divisible by patch {p}")
        if cfg.action_dim is None:
            raise ValueError("model action_dim is unset: it is the action encoder's dim (the teacher stage derives it)")
        self.patch_embed = nn.Linear(ch * p * p, d)
        self.camera_embed = _zero_linear(6 * p * p, d)
        self.t_embed = nn.Sequential(nn.Linear(d, d), nn.SiLU(), nn.Linear(d, d))
        self.action_embed = nn.Sequential(nn.Linear(cfg.action_dim, d), nn.SiLU(), _zero_linear(d, d))
        self.blocks = nn.ModuleList([Block(cfg) for _ in range(cfg.depth)])
        self.norm_out = nn.LayerNorm(d, elementwise_affine=False, eps=1e-6)
        self.ada_out = nn.Sequential(nn.SiLU(), _zero_linear(d, 2 * d))
        self.out = _zero_linear(d, ch * p * p)
        if cfg.memory_embedding:
            self.add_memory_embedding()
        if cfg.memory_adapter_rank:
            self.add_memory_adapter(cfg.memory_adapter_rank)

    def add_memory_embedding(self) -> None:
        """Give the network its memory embedding (module docstring), zero, so that it computes
        exactly what it did before until trained; ``cfg.memory_embedding`` becomes True. A
        network that has one keeps it."""
        if not hasattr(self, "memory_embed"):
            ref = self.patch_embed.weight
            self.memory_embed = nn.Parameter(torch.zeros(self.cfg.width, device=ref.device, dtype=ref.dtype))
        self.cfg = dataclasses.replace(self.cfg, memory_embedding=True)

    def add_memory_adapter(self, rank: int, generator: torch.Generator | None = None) -> None:
        """Give every block a memory adapter of ``rank`` (module docstring), its up-projections
        zero, so that the network computes exactly what it did before until trained, its
        down-projections drawn from ``generator`` (a training run's seed; None: torch's global
        generator); ``cfg.memory_adapter_rank`` becomes ``rank``. ``ValueError`` for a rank
        below 1 or a network that has an adapter of another rank; one of the same rank is kept."""
        if rank < 1:
            raise ValueError(f"a memory adapter's rank must be >= 1, got {rank}")
        if self.cfg.memory_adapter_rank not in (0, rank):
            raise ValueError(f"the network has a memory adapter of rank {self.cfg.memory_adapter_rank}, not {rank}")
        ref = self.patch_embed.weight
        for i, block in enumerate(self.blocks):
            assert isinstance(block, Block)
            if block.memory_adapter is None:
                last = i == len(self.blocks) - 1
                hidden = int(self.cfg.width * self.cfg.mlp_ratio)  # as Block builds its MLP
                adapter = MemoryAdapter(self.cfg.width, hidden, rank, last, generator)
                block.memory_adapter = adapter.to(ref.device, ref.dtype)
        self.cfg = dataclasses.replace(self.cfg, memory_adapter_rank=rank)

    def memory_parameters(self) -> list[tuple[str, nn.Parameter]]:
        """``(name, parameter)`` of what reads retrieved frames only: the memory embedding and
        every block's memory adapter (empty when the network has neither)."""
        return [(n, p) for n, p in self.named_parameters() if n == "memory_embed" or ".memory_adapter." in n]

    def _adapter_mask(self, memory: torch.Tensor | bool, frames: int, ref: torch.Tensor) -> torch.Tensor | None:
        """The ``(T,)`` mask the memory adapter reads (1 on retrieved frames); None without an
        adapter or without retrieved frames (``memory`` False)."""
        if self.cfg.memory_adapter_rank == 0 or memory is False:
            return None
        if memory is True:
            return torch.ones(frames, device=ref.device, dtype=ref.dtype)
        return torch.as_tensor(memory, device=ref.device).to(ref.dtype)

    def _embed(
        self,
        x: torch.Tensor,
        sigma: torch.Tensor,
        actions: torch.Tensor,
        plucker: torch.Tensor,
        memory: torch.Tensor | bool = False,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        p = self.cfg.patch
        tokens = rearrange(x, "b t c (h p1) (w p2) -> b t (h w) (c p1 p2)", p1=p, p2=p)
        rays = rearrange(plucker.to(x.dtype), "b t c (h p1) (w p2) -> b t (h w) (c p1 p2)", p1=p, p2=p)
        tok = self.patch_embed(tokens) + self.camera_embed(rays)  # (B, T, N, D)
        c = self.t_embed(timestep_embedding(sigma, self.cfg.width).to(x.dtype)) + self.action_embed(actions.to(x.dtype))
        if self.cfg.memory_embedding and memory is not False:  # every frame retrieved (True), or a (T,) mask
            flag = torch.as_tensor(memory, device=c.device).to(c.dtype)
            c = c + flag.reshape(-1, 1) * self.memory_embed.to(c.dtype)
        return tok, c  # c: (B, T, D)

    def _unembed(self, tok: torch.Tensor, c: torch.Tensor) -> torch.Tensor:
        shift, scale = self.ada_out(c)[:, :, None].chunk(2, dim=-1)
        out = self.out(self.norm_out(tok) * (1 + scale) + shift)
        h = self.cfg.latent_shape()[1] // self.cfg.patch
        p = self.cfg.patch
        return rearrange(out, "b t (h w) (c p1 p2) -> b t c (h p1) (w p2)", h=h, p1=p, p2=p)

    def _angles(self, frame_pos: torch.Tensor) -> torch.Tensor:
        _, lh, lw = self.cfg.latent_shape()
        hp, wp = lh // self.cfg.patch, lw // self.cfg.patch
        return rope_angles(token_positions(frame_pos, hp, wp), self.cfg.width // self.cfg.heads)

    def forward(
        self,
        x: torch.Tensor,  # (B, T, C, h, w) noisy latents
        sigma: torch.Tensor,  # (B, T) noise level per frame, 0 = clean
        actions: torch.Tensor,  # (B, T, A) encoded actions
        plucker: torch.Tensor,  # (B, T, 6, h, w) camera rays at latent resolution
        frame_pos: torch.Tensor,  # (T,) temporal positions
        mask: torch.Tensor | None = None,  # (T*N, T*N) bool, e.g. chunk_mask / teacher_forcing_mask
        memory_frames: torch.Tensor | None = None,  # (T,) bool: retrieved memory frames; None: none
    ) -> torch.Tensor:
        """Full-sequence forward (training, reference for the cache) -> ``v (B, T, C, h, w)``.
        ``memory_frames`` reaches the network only with a memory embedding or adapter."""
        memory = False if memory_frames is None else memory_frames
        tok, c = self._embed(x, sigma, actions, plucker, memory)
        angles = self._angles(frame_pos)
        adapt = self._adapter_mask(memory, x.shape[1], tok)
        for block in self.blocks:
            tok = block(tok, c, angles, mask, memory=adapt)
        return self._unembed(tok, c)

    def forward_chunk(
        self,
        x: torch.Tensor,  # (B, k, C, h, w) one chunk
        sigma: torch.Tensor,  # (B, k)
        actions: torch.Tensor,  # (B, k, A)
        plucker: torch.Tensor,  # (B, k, 6, h, w)
        frame_pos: torch.Tensor,  # (k,)
        kv: KVContext | None = None,
    ) -> torch.Tensor:
        """One chunk attending to the context ``kv`` provides and to itself -> ``v (B, k, C, h, w)``.
        Whether its keys and values are kept for later chunks is ``kv``'s business."""
        tok, c = self._embed(x, sigma, actions, plucker)
        angles = self._angles(frame_pos)
        for i, block in enumerate(self.blocks):
            tok = block(tok, c, angles, None, kv, i)
        return self._unembed(tok, c)

    def write_chunk(
        self,
        x: torch.Tensor,  # (B, k, C, h, w) one chunk
        sigma: torch.Tensor,  # (B, k)
        actions: torch.Tensor,  # (B, k, A)
        plucker: torch.Tensor,  # (B, k, 6, h, w)
        frame_pos: torch.Tensor,  # (k,)
        kv: KVContext,
        memory: bool = False,  # a retrieved chunk (the memory embedding marks it, the adapter updates it)
    ) -> None:
        """The pass of :meth:`forward_chunk` for a chunk whose output nobody reads (a context
        chunk's clean pass: the rollout's cache write, rebuilt context, retrieved memory): it
        hands ``kv`` the same keys and values of every block, and stops once the last block's
        are written (no attention, MLP or output layer after them: at depth 6 about a sixth of
        a pass less)."""
        tok, c = self._embed(x, sigma, actions, plucker, memory)
        angles = self._angles(frame_pos)
        adapt = self._adapter_mask(memory, x.shape[1], tok)
        last = len(self.blocks) - 1
        for i in range(last):
            tok = self.blocks[i](tok, c, angles, None, kv, i, adapt)
        block = self.blocks[last]
        assert isinstance(block, Block)
        _, k, v, _ = block.attention_in(tok, c, angles, adapt)
        kv.keys_values(last, k, v)
