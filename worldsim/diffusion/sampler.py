"""Sampler settings and the update rules of one denoising step. No network and no chunk loop
here: the rollout (``worldsim.inference.rollout``) calls the network and then these rules.

* ``euler``: an Euler step of the flow ODE, ``x <- x + (sigma' - sigma) v`` (the teacher's sampler).
* ``few_step``: predict the clean chunk ``x0 = x - sigma v``, then re-noise it to ``sigma'`` with
  fresh noise (the Self-Forcing / CausVid few-step sampler; the shipped teacher plays with it).
* classifier-free guidance on actions: ``v_null + w (v - v_null)``, ``w = 1`` off.
"""

from __future__ import annotations

from dataclasses import dataclass, fields, replace

import torch

from worldsim.core.errors import WorldsimError
from worldsim.diffusion.schedule import noised, sigma_schedule

MODES = ("euler", "few_step")


@dataclass
class SamplerConfig:
    """How one chunk is denoised; stored in checkpoints (``config.json`` ``sampler``)."""

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
        if self.guidance <= 0:
            raise WorldsimError(f"sampler guidance must be > 0 (1 = off), got {self.guidance}")

    def sigmas(self) -> list[float]:
        """The ``num_steps + 1`` noise levels the loop visits, from 1 down to 0."""
        return sigma_schedule(self.num_steps, self.shift).tolist()

    @property
    def passes_per_step(self) -> int:
        """Network passes per denoising step: 2 with guidance (conditional and null), else 1."""
        return 1 if self.guidance == 1.0 else 2


def guided(v: torch.Tensor, v_null: torch.Tensor, scale: float) -> torch.Tensor:
    """Classifier-free guidance (Ho & Salimans): ``v_null + scale (v - v_null)``."""
    return v_null + scale * (v - v_null)


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


def denoise_update(
    cfg: SamplerConfig,
    x: torch.Tensor,
    v: torch.Tensor,
    sigma: float,
    sigma_next: float,
    generator: torch.Generator | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """One step from level ``sigma`` to ``sigma_next`` given the velocity ``v`` at ``x``
    (both ``(B, k, C, h, w)``) -> ``(x at sigma_next, the clean estimate x0)``. ``few_step``
    draws fresh noise from ``generator`` unless ``sigma_next`` is 0."""
    if cfg.mode == "euler":
        x_next = x + (sigma_next - sigma) * v
        return x_next, x_next if sigma_next == 0.0 else x - sigma * v
    x0 = x - sigma * v
    return (noised(x0, sigma_next, generator) if sigma_next > 0 else x0), x0


def context_input(cfg: SamplerConfig, x0: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
    """What the model reads as context for the clean latents ``x0``: ``x0`` re-noised to
    ``context_sigma`` when that is > 0 (Oasis / HY-WorldPlay label context with a small noise
    level; the caller labels it with ``context_sigma``), else ``x0`` itself."""
    c = cfg.context_sigma
    return noised(x0, c, generator) if c > 0 else x0
