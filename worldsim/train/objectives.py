"""Training objectives for the chunk-autoregressive teacher.

Noise levels and noise are drawn from the caller's generator on the CPU and then moved to the
latents' device: a seeded step draws the same numbers on any device (CPU generators cannot fill
CUDA tensors).
"""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as F

from worldsim.model.attention import chunk_mask, teacher_forcing_mask
from worldsim.model.dit import WorldModel


def chunk_ids_of_tokens(
    num_frames: int, chunk_frames: int, tokens_per_frame: int, device: torch.device
) -> torch.Tensor:
    """``(T * N,)`` chunk index of every token of a ``T``-frame sequence."""
    frame_chunk = torch.arange(num_frames, device=device).div(chunk_frames, rounding_mode="floor")
    return frame_chunk.repeat_interleave(tokens_per_frame)


def teacher_forcing_loss(
    model: WorldModel,
    x0: torch.Tensor,  # (B, T, C, h, w) clean latents, T a multiple of chunk_frames
    actions: torch.Tensor,  # (B, T, A)
    plucker: torch.Tensor,  # (B, T, 6, h, w)
    generator: torch.Generator | None = None,
    net: torch.nn.Module | None = None,
    frame_weight: torch.Tensor | None = None,  # (B, T) each frame's weight; None = all 1
) -> torch.Tensor:
    """Flow matching with teacher forcing (reference.md §2): the sequence is ``[clean | noisy]``
    with the same positions for both halves, one noise level per chunk, loss on the noisy half
    (a mean over frames weighted by ``frame_weight``). ``net`` is what gets called (e.g. the DDP
    wrapper of ``model``); ``model`` by default."""
    b, t = x0.shape[:2]
    k = model.cfg.chunk_frames
    if t % k:
        raise ValueError(f"clip of {t} frames is not a whole number of {k}-frame chunks")
    # Step 1: one sigma per chunk (diffusion-forcing style independence across chunks).
    sigma_chunk = torch.rand(b, t // k, generator=generator, dtype=x0.dtype).to(x0.device)
    sigma = sigma_chunk.repeat_interleave(k, dim=1)  # (B, T)
    eps = torch.randn(x0.shape, generator=generator, dtype=x0.dtype).to(x0.device)
    s = sigma[:, :, None, None, None]
    x_noisy = (1 - s) * x0 + s * eps
    # Step 2: [clean | noisy] through the block-causal teacher-forcing mask.
    ids = chunk_ids_of_tokens(t, k, model.cfg.tokens_per_frame, x0.device)
    pos = torch.arange(t, device=x0.device)
    v = (net if net is not None else model)(
        torch.cat([x0, x_noisy], 1),
        torch.cat([torch.zeros_like(sigma), sigma], 1),
        torch.cat([actions, actions], 1),
        torch.cat([plucker, plucker], 1),
        torch.cat([pos, pos]),
        teacher_forcing_mask(ids),
    )
    # Step 3: velocity target eps - x0, on the noisy half only.
    if frame_weight is None:
        return F.mse_loss(v[:, t:], eps - x0)
    per_frame = (v[:, t:].float() - (eps - x0)).pow(2).mean(dim=(2, 3, 4))  # (B, T)
    return (per_frame * frame_weight).sum() / frame_weight.sum()


def diffusion_forcing_loss(
    model: WorldModel,
    x0: torch.Tensor,  # (B, T, C, h, w) clean latents, T a multiple of chunk_frames
    actions: torch.Tensor,  # (B, T, A)
    plucker: torch.Tensor,  # (B, T, 6, h, w)
    generator: torch.Generator | None = None,
    net: torch.nn.Module | None = None,
    clean_context_prob: float = 0.7,
    context_sigma_max: float = 1.0,
    frame_weight: torch.Tensor | None = None,  # (B, T) each frame's weight; None = all 1
) -> torch.Tensor:
    """Flow matching with diffusion forcing: one sequence (no clean copy), an independent noise
    level per chunk, block-causal attention, loss on every noisy frame. With probability
    ``clean_context_prob`` a sample's earlier chunks are clean (sigma 0, no loss), the case
    inference meets. Half the tokens of teacher forcing and 3x cheaper per step here (the
    attention is over T, not 2T, frames). Noisy context chunks draw their level from
    ``U(0, context_sigma_max)``; the newest chunk always from ``U(0, 1)``. The loss is a mean
    over the noisy frames weighted by ``frame_weight``."""
    b, t = x0.shape[:2]
    k = model.cfg.chunk_frames
    if t % k:
        raise ValueError(f"clip of {t} frames is not a whole number of {k}-frame chunks")
    n = t // k
    # Step 1: one sigma per chunk; clean context on part of the samples.
    sigma_chunk = torch.rand(b, n, generator=generator, dtype=x0.dtype).to(x0.device)
    clean = (torch.rand(b, 1, generator=generator) < clean_context_prob).to(x0.device)
    is_context = (torch.arange(n, device=x0.device) < n - 1)[None]
    sigma_chunk = torch.where(is_context, sigma_chunk * context_sigma_max, sigma_chunk)
    sigma = torch.where(clean & is_context, 0.0, sigma_chunk).repeat_interleave(k, dim=1)  # (B, T)
    eps = torch.randn(x0.shape, generator=generator, dtype=x0.dtype).to(x0.device)
    s = sigma[:, :, None, None, None]
    # Step 2: one block-causal forward over the noisy sequence.
    ids = chunk_ids_of_tokens(t, k, model.cfg.tokens_per_frame, x0.device)
    pos = torch.arange(t, device=x0.device)
    v = (net if net is not None else model)((1 - s) * x0 + s * eps, sigma, actions, plucker, pos, chunk_mask(ids, ids))
    # Step 3: velocity error on the frames that carried noise.
    per_frame = (v.float() - (eps - x0)).pow(2).mean(dim=(2, 3, 4))  # (B, T)
    w = (sigma > 0).float()
    if frame_weight is not None:
        w = w * frame_weight
    return (per_frame * w).sum() / w.sum().clamp_min(1.0)


OBJECTIVES: dict[str, Callable[..., torch.Tensor]] = {
    "teacher_forcing": teacher_forcing_loss,
    "diffusion_forcing": diffusion_forcing_loss,
}
