"""Chunk-by-chunk generation with the camera made relative to the latest frame.

Each new chunk sees ``[context chunks | new chunk]`` with compact temporal positions
``0 .. n+k-1`` and Plücker rays relative to the *latest context frame* (the current camera).
The reference therefore moves every chunk, so the context's keys and values are rebuilt once
per chunk (one clean pass per context chunk into a fresh cache, shared by all denoising steps)
instead of being cached across chunks: calibration lesson 4's first remedy, chosen because it
makes inference exactly the training forward (teacher forcing on the same sequence) and lets
memory chunks be placed in the context without stale keys. ``worldsim-bench model`` prices the
alternative.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from worldsim.core.errors import WorldsimError
from worldsim.diffusion.sampler import Sampler, SamplerConfig
from worldsim.model.dit import WorldModel
from worldsim.model.plucker import clip_rays


@dataclass(frozen=True)
class ConditioningConfig:
    """How a trained model expects its inputs; stored in checkpoints."""

    context_chunks: int = 2
    translation_scale_m: float = 8.0
    latent_mean: tuple[float, ...] = ()  # per latent channel; empty = 0
    latent_std: tuple[float, ...] = ()  # per latent channel; empty = 1
    intrinsics: tuple[float, ...] = ()  # 3x3 row-major, pixels of the training frames; empty = unknown

    def stats(self, channels: int) -> tuple[torch.Tensor, torch.Tensor]:
        mean = torch.tensor(self.latent_mean or [0.0] * channels).view(channels, 1, 1)
        std = torch.tensor(self.latent_std or [1.0] * channels).view(channels, 1, 1)
        return mean, std

    def intrinsics_matrix(self) -> torch.Tensor | None:
        return torch.tensor(self.intrinsics, dtype=torch.float32).view(3, 3) if self.intrinsics else None


@dataclass
class History:
    """Clean past frames of a batch of sessions: normalised latents, encoded actions, poses."""

    latents: torch.Tensor  # (B, T, C, h, w)
    actions: torch.Tensor  # (B, T, A)
    c2w: torch.Tensor  # (B, T, 4, 4)

    def tail(self, frames: int) -> History:
        return History(self.latents[:, -frames:], self.actions[:, -frames:], self.c2w[:, -frames:])

    def append(self, latents: torch.Tensor, actions: torch.Tensor, c2w: torch.Tensor, keep: int) -> History:
        return History(
            torch.cat([self.latents, latents], 1)[:, -keep:],
            torch.cat([self.actions, actions], 1)[:, -keep:],
            torch.cat([self.c2w, c2w], 1)[:, -keep:],
        )


class ChunkGenerator:
    """Generates chunk after chunk for a batch of sessions from a clean context."""

    def __init__(
        self,
        model: WorldModel,
        sampler: SamplerConfig,
        cond: ConditioningConfig,
        intrinsics: torch.Tensor,  # (3, 3) pixels of the decoded frame
        frame_size: tuple[int, int],
        null_action: torch.Tensor | None = None,  # (A,) for classifier-free guidance
    ):
        self.model, self.cond = model, cond
        self.sampler = Sampler(sampler)
        self.k = model.cfg.chunk_frames
        self.intrinsics = intrinsics.float()
        self.frame_size = frame_size
        self.null_action = null_action
        self.history: History | None = None

    @property
    def context_frames(self) -> int:
        return self.cond.context_chunks * self.k

    def reset(self, latents: torch.Tensor, actions: torch.Tensor, c2w: torch.Tensor) -> None:
        """Clean context ``(B, T0, ...)``; the newest whole chunks are kept (T0 >= chunk_frames)."""
        t0 = latents.shape[1]
        if t0 < self.k:
            raise WorldsimError(f"context of {t0} frames is shorter than one {self.k}-frame chunk")
        keep = min(self.context_frames, t0 - t0 % self.k)
        self.history = History(latents, actions, c2w).tail(keep)

    def rays(self, c2w: torch.Tensor, ref: torch.Tensor) -> torch.Tensor:
        b = c2w.shape[0]
        k = self.intrinsics.expand(b, 3, 3)
        return clip_rays(c2w, ref, k, self.frame_size, self.model.cfg.latent_size, self.cond.translation_scale_m)

    @torch.inference_mode()
    def step(self, actions: torch.Tensor, c2w: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
        """``actions (B, k, A)`` encoded, ``c2w (B, k, 4, 4)`` -> clean normalised latents ``(B, k, C, h, w)``."""
        if self.history is None:
            raise WorldsimError("reset the generator with a context before stepping")
        ctx = self.history
        b, n = ctx.latents.shape[:2]
        if actions.shape[1] != self.k or c2w.shape[1] != self.k:
            raise WorldsimError(f"a step takes exactly {self.k} frames of input, got {actions.shape[1]}")
        model = self.model
        dtype = ctx.latents.dtype
        # Step 1: rays of the whole sequence relative to the latest context frame.
        rays = self.rays(torch.cat([ctx.c2w, c2w], 1), ctx.c2w[:, -1]).to(dtype)
        actions = actions.to(dtype)
        # Step 2: rebuild the context's keys/values in a fresh cache, one chunk at a time.
        #   With ``context_sigma`` > 0 the context is first re-noised to that level (and labelled so),
        #   as diffusion forcing trained it: the model leans less on its own earlier mistakes.
        cache = model.new_cache(window_chunks=n // self.k + 1, use_sink=False)
        labels = torch.full((b, self.k), self.sampler.cfg.context_sigma, dtype=dtype)
        context = self.sampler.context_input(ctx.latents, generator)
        for s in range(0, n, self.k):
            sl = slice(s, s + self.k)
            pos = torch.arange(s, s + self.k)
            model.forward_chunk(context[:, sl], labels, ctx.actions[:, sl], rays[:, sl], pos, cache, write=True)
        # Step 3: denoise the new chunk against that context.
        null = None
        if self.null_action is not None:
            null = self.null_action.to(dtype).expand_as(actions)
        shape = (b, self.k, *ctx.latents.shape[2:])
        x0 = self.sampler.sample_chunk(
            model, cache, actions, rays[:, n:], torch.arange(n, n + self.k), shape, generator, null, write_cache=False
        )
        self.history = ctx.append(x0, actions, c2w.to(ctx.c2w.dtype), keep=self.context_frames)
        return x0

    def rollout(
        self, actions: torch.Tensor, c2w: torch.Tensor, generator: torch.Generator | None = None
    ) -> torch.Tensor:
        """Whole chunks of inputs ``(B, T, A)``, ``(B, T, 4, 4)`` -> latents ``(B, T, C, h, w)``."""
        if actions.shape[1] % self.k:
            raise WorldsimError(f"a rollout of {actions.shape[1]} frames is not whole {self.k}-frame chunks")
        outs = [
            self.step(actions[:, s : s + self.k], c2w[:, s : s + self.k], generator)
            for s in range(0, actions.shape[1], self.k)
        ]
        return torch.cat(outs, 1)
