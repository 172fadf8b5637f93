"""Training objectives of the chunk-autoregressive teacher and its few-step student.

Noise levels and noise are drawn from the caller's generator on the CPU and then moved to the
latents' device: a seeded step draws the same numbers on any device (CPU generators cannot fill
CUDA tensors). Under torchrun each rank holds rows ``rank::world`` of the global batch; given
``rows=(rank, world, global batch size)`` an objective draws the noise of the whole batch and
keeps those rows, so a multi-process run trains on exactly the noise a one-process run of the
same global batch draws.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from worldsim.diffusion.sampler import guided
from worldsim.model.attention import chunk_mask, teacher_forcing_mask, with_memory_mask
from worldsim.model.dit import WorldModel


def _draw(
    make: Callable[..., torch.Tensor],
    shape: tuple[int, ...],
    generator: torch.Generator | None,
    rows: tuple[int, int, int] | None,
    **kw: object,
) -> torch.Tensor:
    """``make(shape)`` (``torch.rand`` / ``torch.randn``) for this rank's rows of the global batch:
    the draw is for ``rows[2]`` rows when ``rows`` is given, then rows ``rank::world`` are kept."""
    if rows is None:
        return make(shape, generator=generator, **kw)
    rank, world, total = rows
    return make((total, *shape[1:]), generator=generator, **kw)[rank::world]


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
    rows: tuple[int, int, int] | None = None,  # (rank, world, global batch): module docstring
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
    sigma_chunk = _draw(torch.rand, (b, t // k), generator, rows, dtype=x0.dtype).to(x0.device)
    sigma = sigma_chunk.repeat_interleave(k, dim=1)  # (B, T)
    eps = _draw(torch.randn, tuple(x0.shape), generator, rows, dtype=x0.dtype).to(x0.device)
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
    rows: tuple[int, int, int] | None = None,  # (rank, world, global batch): module docstring
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
    sigma_chunk = _draw(torch.rand, (b, n), generator, rows, dtype=x0.dtype).to(x0.device)
    clean = (_draw(torch.rand, (b, 1), generator, rows) < clean_context_prob).to(x0.device)
    is_context = (torch.arange(n, device=x0.device) < n - 1)[None]
    sigma_chunk = torch.where(is_context, sigma_chunk * context_sigma_max, sigma_chunk)
    sigma = torch.where(clean & is_context, 0.0, sigma_chunk).repeat_interleave(k, dim=1)  # (B, T)
    eps = _draw(torch.randn, tuple(x0.shape), generator, rows, dtype=x0.dtype).to(x0.device)
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


def ode_regression_loss(
    model: WorldModel,
    context: torch.Tensor,  # (B, n, C, h, w) clean context latents
    x_sigma: torch.Tensor,  # (B, k, C, h, w) the chunk on the teacher's ODE path at level sigma
    sigma: torch.Tensor,  # (B,) each sample's level
    target: torch.Tensor,  # (B, k, C, h, w) the ODE's end point from that path
    actions: torch.Tensor,  # (B, n + k, A)
    plucker: torch.Tensor,  # (B, n + k, 6, h, w)
    net: torch.nn.Module | None = None,
) -> torch.Tensor:
    """Causal ODE regression (Causal Forcing's student initialisation, reference.md §6): the
    student's clean estimate ``x0 = x_sigma - sigma v`` of the chunk, read after the clean context
    through the block-causal mask, regresses the teacher's ODE end point (MSE). The context is
    labelled level 0, as the rollout's cache holds it."""
    b, n = context.shape[:2]
    k = x_sigma.shape[1]
    t = n + k
    levels = torch.cat([sigma.new_zeros(b, n), sigma[:, None].expand(b, k)], 1)
    ids = chunk_ids_of_tokens(t, model.cfg.chunk_frames, model.cfg.tokens_per_frame, context.device)
    pos = torch.arange(t, device=context.device)
    v = (net if net is not None else model)(
        torch.cat([context, x_sigma], 1), levels, actions, plucker, pos, chunk_mask(ids, ids)
    )
    x0 = x_sigma - sigma[:, None, None, None, None] * v[:, n:]
    return F.mse_loss(x0.float(), target.float())


@dataclass
class ScoreMemory:
    """A retrieved chunk that some chunks of :func:`rollout_scores`'s session read, as the rollout
    gives it (``worldsim.inference.rollout``: in place of the oldest chunk of the reader's window,
    at that chunk's temporal positions, rays relative to the reader's reference, attending to
    itself alone). ``latents (B, k, C, h, w)`` at the context noise level (the caller noised
    them), ``actions (B, k, A)``, ``readers``: the session's chunks that read it (clean and noisy
    alike), ``plucker (B, R * k, 6, h, w)``: its rays for each reader in turn."""

    latents: torch.Tensor
    actions: torch.Tensor
    readers: list[int]
    plucker: torch.Tensor


def rollout_scores(
    model: WorldModel,
    clean: torch.Tensor,  # (B, T, C, h, w) the session: context, then the generated frames
    noisy: torch.Tensor,  # (B, G, C, h, w) the last G frames of ``clean`` at level ``sigma``
    sigma: torch.Tensor,  # (B, G) the level of each noisy frame
    actions: torch.Tensor,  # (B, T, A)
    plucker: torch.Tensor,  # (B, T, 6, h, w)
    window_chunks: int,
    null_action: torch.Tensor | None = None,  # (A,) for guidance
    guidance: float = 1.0,
    context_sigma: float = 0.0,
    memory: ScoreMemory | None = None,
) -> torch.Tensor:
    """A score network's velocity for every noisy generated frame, each chunk read after the
    clean chunks a rolling cache of ``window_chunks`` chunks would hold (the windowed teacher-
    forcing mask, one forward over ``[clean | noisy]`` with the same positions for both) ->
    ``v (B, G, C, h, w)``. ``guidance`` != 1: classifier-free guidance on actions against
    ``null_action`` (two forwards). ``context_sigma``: the noise level ``clean`` is labelled
    with (the caller noised it; a rollout's context noise). ``memory``: a retrieved chunk its
    readers see as the rollout shows it (:class:`ScoreMemory`; one copy per reader after the
    noisy frames, :func:`worldsim.model.attention.with_memory_mask`). The real and fake scores
    of DMD (reference.md §6)."""
    b, t = clean.shape[:2]
    g = noisy.shape[1]
    k = model.cfg.chunk_frames
    dev = clean.device
    ids = chunk_ids_of_tokens(t, k, model.cfg.tokens_per_frame, dev)
    noisy_ids = ids[(t - g) * model.cfg.tokens_per_frame :]
    mask = teacher_forcing_mask(ids, window_chunks, noisy_ids)
    pos = torch.arange(t, device=dev)
    x = torch.cat([clean, noisy], 1)
    levels = torch.cat([sigma.new_full((b, t), context_sigma), sigma], 1)
    rays = torch.cat([plucker, plucker[:, t - g :]], 1)
    positions = torch.cat([pos, pos[t - g :]])
    mem_actions = actions[:, :0]  # (B, R * k, A): the retrieved chunk's, once per reader
    memory_frames = None  # (2t - g + R * k,) bool: the retrieved copies, last
    if memory is not None:
        readers = torch.tensor(memory.readers, dtype=torch.long, device=dev)
        n = len(memory.readers)
        mem_ids = readers.repeat_interleave(k * model.cfg.tokens_per_frame)
        mask = with_memory_mask(mask, ids, noisy_ids, mem_ids, window_chunks)
        x = torch.cat([x, memory.latents.repeat(1, n, 1, 1, 1)], 1)
        levels = torch.cat([levels, sigma.new_full((b, n * k), context_sigma)], 1)
        rays = torch.cat([rays, memory.plucker], 1)
        # each copy at the temporal positions of the chunk it hides, b - W, or while the window
        # is not yet full (nothing hidden) of the chunk before the session's first, as the rollout puts it
        before = torch.where(readers >= window_chunks, readers - window_chunks, -1)
        hid = (before * k)[:, None] + torch.arange(k, device=dev)
        positions = torch.cat([positions, hid.reshape(-1)])
        mem_actions = memory.actions.repeat(1, n, 1)
        memory_frames = torch.arange(x.shape[1], device=dev) >= t + g

    def velocity(a: torch.Tensor, m: torch.Tensor) -> torch.Tensor:
        acts = torch.cat([a, a[:, t - g :], m], 1)
        return model(x, levels, acts, rays, positions, mask, memory_frames)[:, t : t + g]

    v = velocity(actions, mem_actions)
    if guidance != 1.0:
        if null_action is None:
            raise ValueError("guidance needs the null action")
        # the whole clip null, the retrieved chunk included, as the teacher's action dropout nulls it
        null = null_action.to(actions)
        v = guided(v, velocity(null.expand_as(actions), null.expand_as(mem_actions)), guidance)
    return v


def dmd_loss(x: torch.Tensor, real_x0: torch.Tensor, fake_x0: torch.Tensor) -> torch.Tensor:
    """Distribution matching distillation's generator loss (DMD; Self-Forcing's form, reference.md
    §6) for generated samples ``x (B, ...)`` with gradient, and the real and fake scores' clean
    estimates of their noised copies (no gradient): the step ``g = (fake - real) / mean|x - real|``
    (normalised per sample), as the loss ``1/2 MSE(x, sg(x - g))`` whose gradient in ``x`` is
    ``g / numel``. Zero exactly when the two scores agree."""
    dims = tuple(range(1, x.ndim))
    xf, real, fake = x.float(), real_x0.detach().float(), fake_x0.detach().float()
    norm = (xf.detach() - real).abs().mean(dim=dims, keepdim=True).clamp_min(1e-8)
    g = (fake - real) / norm
    return 0.5 * F.mse_loss(xf, (xf - g).detach())


OBJECTIVES: dict[str, Callable[..., torch.Tensor]] = {
    "teacher_forcing": teacher_forcing_loss,
    "diffusion_forcing": diffusion_forcing_loss,
}
