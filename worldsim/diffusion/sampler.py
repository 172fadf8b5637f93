"""Sampler settings and the update rules of one denoising step. No network and no chunk loop
here: the rollout (``worldsim.inference.rollout``) calls the network and then these rules.

* ``euler``: an Euler step of the flow ODE, ``x <- x + (sigma' - sigma) v`` (the teacher's sampler).
* ``few_step``: predict the clean chunk ``x0 = x - sigma v``, then re-noise it to ``sigma'`` with
  fresh noise (the Self-Forcing / CausVid few-step sampler; the shipped teacher plays with it).
* classifier-free guidance on actions: ``v_null + w (v - v_null)``, ``w = 1`` off.

Where a finished chunk's keys and values come from (``cache_write``, the ``cached`` context
policy's step 4): ``clean_pass`` runs one more pass on the clean chunk re-noised to
``context_sigma`` (Self-Forcing's context re-run); ``last_step`` keeps those of the chunk's last
denoising pass, whose input is the previous step's clean estimate re-noised to the level that
step starts at: the same kind of input, so a schedule whose last step starts at
``context_sigma`` gets its context for free (one pass in three fewer at 2 steps).
"""

from __future__ import annotations

from dataclasses import dataclass, fields, replace

import torch

from worldsim.core.errors import WorldsimError
from worldsim.diffusion.schedule import noised, sigma_schedule

MODES = ("euler", "few_step")
CACHE_WRITES = ("clean_pass", "last_step")
LAST_STEP_TOLERANCE = 1e-3  # how close the last step's level must be to context_sigma


@dataclass
class SamplerConfig:
    """How one chunk is denoised; stored in checkpoints (``config.json`` ``sampler``)."""

    num_steps: int = 4
    shift: float = 5.0
    mode: str = "euler"  # euler (ODE steps) | few_step (predict x0, re-noise; the student's, and the shipped teacher's)
    guidance: float = 1.0  # classifier-free guidance on actions; 1.0 = off
    context_sigma: float = 0.0  # context is re-noised to this level before the model reads it (0 = clean)
    cache_write: str = "clean_pass"  # clean_pass | last_step (module docstring; the cached policy only)

    def __post_init__(self) -> None:
        if self.mode not in MODES:
            raise WorldsimError(f"unknown sampler mode {self.mode!r}; valid: {', '.join(MODES)}")
        if self.cache_write not in CACHE_WRITES:
            raise WorldsimError(f"unknown sampler cache_write {self.cache_write!r}; valid: {', '.join(CACHE_WRITES)}")
        if self.num_steps < 1:
            raise WorldsimError(f"sampler num_steps must be >= 1, got {self.num_steps}")
        if not 0.0 <= self.context_sigma < 1.0:
            raise WorldsimError(f"sampler context_sigma must be in [0, 1), got {self.context_sigma}")
        if self.guidance <= 0:
            raise WorldsimError(f"sampler guidance must be > 0 (1 = off), got {self.guidance}")
        if self.cache_write == "last_step":
            self._check_last_step()

    def _check_last_step(self) -> None:
        """``last_step`` needs context noise, one conditional pass per step, a few-step re-noising
        sampler (its last step reads a clean estimate re-noised, as context is) and that step to
        start at ``context_sigma``; else one ``WorldsimError`` line saying which."""
        c = self.context_sigma
        if c <= 0:
            raise WorldsimError(
                "sampler cache_write 'last_step' needs context noise (context_sigma > 0): its last pass reads a "
                "noised chunk; with clean context use cache_write clean_pass"
            )
        if self.mode != "few_step" or self.guidance != 1.0 or self.num_steps < 2:
            raise WorldsimError(
                f"sampler cache_write 'last_step' needs mode few_step, guidance 1 and >= 2 steps; "
                f"got {self.mode}, {self.guidance}, {self.num_steps} (cache_write clean_pass runs any sampler)"
            )
        start = self.sigmas()[-2]
        if abs(start - c) > LAST_STEP_TOLERANCE:
            fit = last_step_shift(self.num_steps, c)
            raise WorldsimError(
                f"sampler cache_write 'last_step' needs the last step to start at context_sigma {c:g}; at shift "
                f"{self.shift:g} it starts at {start:.4g} (shift {fit:.4g} puts it there)"
            )

    def at_steps(self, n: int) -> SamplerOverrides:
        """Overrides that run this sampler at ``n`` steps. With ``cache_write="last_step"`` they
        refit the shift so that the last step still starts at ``context_sigma``
        (:func:`last_step_shift`), or, at 1 step, whose only pass starts from noise, take the
        clean pass instead."""
        if self.cache_write != "last_step":
            return SamplerOverrides(num_steps=n)
        if n < 2:
            return SamplerOverrides(num_steps=n, cache_write="clean_pass")
        return SamplerOverrides(num_steps=n, shift=last_step_shift(n, self.context_sigma))

    def sigmas(self) -> list[float]:
        """The ``num_steps + 1`` noise levels the loop visits, from 1 down to 0."""
        return sigma_schedule(self.num_steps, self.shift).tolist()

    @property
    def passes_per_step(self) -> int:
        """Network passes per denoising step: 2 with guidance (conditional and null), else 1."""
        return 1 if self.guidance == 1.0 else 2


def last_step_shift(num_steps: int, context_sigma: float) -> float:
    """The shift whose ``num_steps``-step schedule starts its last step at ``context_sigma``
    (what ``cache_write="last_step"`` needs): ``shift_sigma(1 / n, s) = c`` gives
    ``s = c (n - 1) / (1 - c)``; 2 steps at 0.4: 2/3, so the levels are 1, 0.4, 0."""
    return context_sigma * (num_steps - 1) / (1 - context_sigma)


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
    cache_write: str | None = None  # clean_pass | last_step

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
