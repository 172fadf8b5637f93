"""Flow-matching noise math: the noising convention and the shifted step schedules.

Convention (reference.md §1, as in Self-Forcing, Causal Forcing and Matrix-Game 2):
``x_sigma = (1 - sigma) x0 + sigma eps`` with ``sigma`` in [0, 1] (``t = 1000 sigma``); the network
predicts the velocity ``v = eps - x0``, so ``x0 = x_sigma - sigma v``.
"""

from __future__ import annotations

import torch


def noised(x0: torch.Tensor, sigma: float, generator: torch.Generator | None = None) -> torch.Tensor:
    """``x0`` taken to noise level ``sigma`` with fresh noise drawn from ``generator``, same
    shape, dtype and device as ``x0``."""
    eps = torch.randn(x0.shape, generator=generator, dtype=x0.dtype, device=x0.device)
    return (1 - sigma) * x0 + sigma * eps


def shift_sigma(sigma: torch.Tensor, shift: float) -> torch.Tensor:
    """``s * sigma / (1 + (s - 1) * sigma)`` (SD3 / Self-Forcing timestep shift): spends more
    steps at high noise for ``s > 1``; 0 and 1 are fixed points."""
    return shift * sigma / (1 + (shift - 1) * sigma)


def sigma_schedule(num_steps: int, shift: float) -> torch.Tensor:
    """``num_steps + 1`` noise levels from 1 down to 0, shifted, float64 ``(num_steps + 1,)``.
    4 steps at shift 5 give ``[1, 0.9375, 0.8333, 0.625, 0]`` (Self-Forcing's t list / 1000)."""
    return shift_sigma(torch.linspace(1.0, 0.0, num_steps + 1, dtype=torch.float64), shift)
