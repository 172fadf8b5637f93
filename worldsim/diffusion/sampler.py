"""Flow-matching sampling of one chunk: shifted schedules, multi-step Euler (teacher), the
few-step "predict x0, re-noise" loop (student), classifier-free guidance on actions, and the
clean re-run that writes the finished chunk's K/V into the cache. The model never loops.

Convention (reference.md §1): ``x_sigma = (1 - sigma) x0 + sigma eps``, the model predicts
``v = eps - x0``, so ``x0 = x_sigma - sigma v``.
"""

from __future__ import annotations

from dataclasses import dataclass, fields, replace
from typing import Protocol

import torch

from worldsim.core.errors import WorldsimError
from worldsim.inference.kv_cache import KVCache

MODES = ("euler", "few_step")


@dataclass
class SamplerConfig:
    num_steps: int = 4
    shift: float = 5.0
    mode: str = "euler"  # euler (ODE steps) | few_step (predict x0, re-noise; the student's, and the shipped teacher's)
    guidance: float = 1.0  # classifier-free guidance on actions; 1.0 = off
    context_sigma: float = 0.0  # context is re-noised to this level before the model reads it (0 = clean)

    def __post_init__(self) -> None:
        if self.mode not in MODES:
            raise WorldsimError(f"unknown sampler mode {self.mode!r}; valid: {', '.join(MODES)}")
        if self.num_steps < 1:
            raise WorldsimError(f"sampler num_steps must be >= 1, got {self.num_steps}")
        if not 0.0 <= self.context_sigma < 1.0:
            raise WorldsimError(f"sampler context_sigma must be in [0, 1), got {self.context_sigma}")


@dataclass
class SamplerOverrides:
    """Changes to a checkpoint's :class:`SamplerConfig`, field by field with the same names; each
    ``None`` keeps the checkpoint's own. The ``sampler`` group of play, ``worldsim-rollout`` and
    ``worldsim-eval`` (``sampler.num_steps=6``); ``guidance`` other than 1 runs the network twice
    per denoising step."""

    num_steps: int | None = None
    shift: float | None = None
    mode: str | None = None  # euler | few_step
    guidance: float | None = None  # classifier-free guidance on actions; 1.0 = off
    context_sigma: float | None = None

    def apply(self, cfg: SamplerConfig) -> SamplerConfig:
        """``cfg`` with every field given here replaced; bad values raise one-line errors."""
        if self.shift is not None and self.shift <= 0:
            raise WorldsimError(f"sampler shift must be > 0, got {self.shift}")
        if self.guidance is not None and self.guidance <= 0:
            raise WorldsimError(f"sampler guidance must be > 0 (1 = off), got {self.guidance}")
        given = {f.name: getattr(self, f.name) for f in fields(self) if getattr(self, f.name) is not None}
        return replace(cfg, **given)  # SamplerConfig.__post_init__ checks mode, num_steps, context_sigma


def noised(x0: torch.Tensor, sigma: float, generator: torch.Generator | None = None) -> torch.Tensor:
    """``x0`` taken to noise level ``sigma`` with fresh noise (the module's convention)."""
    eps = torch.randn(x0.shape, generator=generator, dtype=x0.dtype, device=x0.device)
    return (1 - sigma) * x0 + sigma * eps


def shift_sigma(sigma: torch.Tensor, shift: float) -> torch.Tensor:
    """``s * sigma / (1 + (s - 1) * sigma)``: spends more steps at high noise for s > 1."""
    return shift * sigma / (1 + (shift - 1) * sigma)


def sigma_schedule(num_steps: int, shift: float) -> torch.Tensor:
    """``num_steps + 1`` noise levels from 1 down to 0 (shifted), float64."""
    return shift_sigma(torch.linspace(1.0, 0.0, num_steps + 1, dtype=torch.float64), shift)


class ChunkModel(Protocol):
    def forward_chunk(
        self,
        x: torch.Tensor,
        sigma: torch.Tensor,
        actions: torch.Tensor,
        plucker: torch.Tensor,
        frame_pos: torch.Tensor,
        cache: KVCache,
        write: bool = False,
    ) -> torch.Tensor: ...


class Sampler:
    """Generates one chunk given the cache; see the module docstring."""

    def __init__(self, cfg: SamplerConfig):
        self.cfg = cfg
        self.sigmas = sigma_schedule(cfg.num_steps, cfg.shift)

    def context_input(self, x0: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
        """What the model reads as context for the clean latents ``x0``: ``x0`` re-noised to
        ``context_sigma`` when that is > 0 (labelled with that level by the caller), else ``x0``."""
        c = self.cfg.context_sigma
        return noised(x0, c, generator) if c > 0 else x0

    def _velocity(
        self,
        model: ChunkModel,
        x: torch.Tensor,
        sigma: float,
        actions: torch.Tensor,
        null_actions: torch.Tensor | None,
        plucker: torch.Tensor,
        frame_pos: torch.Tensor,
        cache: KVCache,
    ) -> torch.Tensor:
        b, k = x.shape[:2]
        s = torch.full((b, k), sigma, dtype=x.dtype, device=x.device)
        v = model.forward_chunk(x, s, actions, plucker, frame_pos, cache)
        if self.cfg.guidance != 1.0:
            if null_actions is None:
                raise WorldsimError("classifier-free guidance needs null actions")
            v_null = model.forward_chunk(x, s, null_actions, plucker, frame_pos, cache)
            v = v_null + self.cfg.guidance * (v - v_null)
        return v

    @torch.inference_mode()
    def sample_chunk(
        self,
        model: ChunkModel,
        cache: KVCache,
        actions: torch.Tensor,  # (B, k, A)
        plucker: torch.Tensor,  # (B, k, 6, h, w)
        frame_pos: torch.Tensor,  # (k,)
        shape: tuple[int, ...],  # (B, k, C, h, w)
        generator: torch.Generator | None = None,
        null_actions: torch.Tensor | None = None,
        write_cache: bool = True,
    ) -> torch.Tensor:
        """-> the clean chunk ``x0`` ``(B, k, C, h, w)``; its K/V are written unless told not to."""
        dtype = plucker.dtype
        x = torch.randn(shape, generator=generator, dtype=dtype, device=plucker.device)
        sig = self.sigmas.tolist()
        x0 = x
        for i in range(self.cfg.num_steps):
            # Step 1: the model's velocity at this noise level (attending to the cache).
            v = self._velocity(model, x, sig[i], actions, null_actions, plucker, frame_pos, cache)
            if self.cfg.mode == "euler":
                # Step 2a (teacher): an Euler step of the flow ODE to the next level.
                x = x + (sig[i + 1] - sig[i]) * v
                x0 = x
            else:
                # Step 2b (student): jump to the clean estimate, then re-noise to the next level.
                x0 = x - sig[i] * v
                if i + 1 < self.cfg.num_steps:
                    x = noised(x0, sig[i + 1], generator)
        if write_cache:
            # Step 3: one pass writes the finished chunk's keys/values for later chunks (re-noised
            # to ``context_sigma`` first when that is > 0).
            b, k = shape[:2]
            s = torch.full((b, k), self.cfg.context_sigma, dtype=dtype, device=plucker.device)
            model.forward_chunk(self.context_input(x0, generator), s, actions, plucker, frame_pos, cache, write=True)
        return x0
