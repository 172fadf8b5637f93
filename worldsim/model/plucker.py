"""Plücker ray embeddings ``[o x d, d]`` of camera poses, relative to a reference frame.

Choice (documented, see reference.md §4): poses are first made relative to a reference
(``inv(c2w_ref) @ c2w``), so the embedding is invariant to any global rigid transform of all
poses; translations are then divided by ``max(translation_scale_m, max ||t||)`` over the window,
so a fast run and a slow walk give moment channels of similar magnitude while standing still
does not blow small jitters up to unit length.
"""

from __future__ import annotations

import torch


def relative_poses(c2w: torch.Tensor, ref: torch.Tensor) -> torch.Tensor:
    """``c2w (..., T, 4, 4)`` and ``ref (..., 4, 4)`` (one reference for the sequence) or
    ``(..., T, 4, 4)`` (one per pose) -> ``inv(ref) @ c2w`` ``(..., T, 4, 4)``."""
    inv = torch.linalg.inv(ref)
    return (inv if ref.dim() == c2w.dim() else inv.unsqueeze(-3)) @ c2w


def normalise_translation(c2w_rel: torch.Tensor, translation_scale_m: float) -> torch.Tensor:
    """Divide translations by ``max(translation_scale_m, max_t ||t||)`` per window ``(..., T, 4, 4)``."""
    t = c2w_rel[..., :3, 3]
    scale = t.norm(dim=-1).amax(dim=-1, keepdim=True).clamp_min(translation_scale_m)  # (..., 1)
    out = c2w_rel.clone()
    out[..., :3, 3] = t / scale.unsqueeze(-1)
    return out


def plucker_rays(c2w: torch.Tensor, intrinsics: torch.Tensor, height: int, width: int) -> torch.Tensor:
    """Per-pixel rays of each pose: ``(..., T, 6, height, width)`` channels ``[o x d, d]``.

    ``c2w (..., T, 4, 4)`` OpenCV axes; ``intrinsics (..., 3, 3)`` in pixels of a
    ``height x width`` grid (scale the frame intrinsics down for a latent grid). Pixel centres
    are at ``+0.5``; ``d`` is unit length in world coordinates, ``o`` the camera centre.
    Same channel layout as CameraCtrl's ``ray_condition`` (moment first, then direction).
    """
    dtype, device = c2w.dtype, c2w.device
    v, u = torch.meshgrid(
        torch.arange(height, dtype=dtype, device=device) + 0.5,
        torch.arange(width, dtype=dtype, device=device) + 0.5,
        indexing="ij",
    )
    fx, fy = intrinsics[..., 0, 0, None, None], intrinsics[..., 1, 1, None, None]  # (..., 1, 1)
    cx, cy = intrinsics[..., 0, 2, None, None], intrinsics[..., 1, 2, None, None]
    dirs_cam = torch.stack([(u - cx) / fx, (v - cy) / fy, torch.ones_like(u).expand_as((u - cx) / fx)], dim=-1)
    dirs_cam = dirs_cam / dirs_cam.norm(dim=-1, keepdim=True)  # (..., H, W, 3)
    rot = c2w[..., :3, :3]  # (..., T, 3, 3)
    d = torch.einsum("...tij,...hwj->...thwi", rot, dirs_cam)  # (..., T, H, W, 3)
    o = c2w[..., :3, 3][..., None, None, :].expand_as(d)
    m = torch.cross(o, d, dim=-1)
    return torch.cat([m, d], dim=-1).movedim(-1, -3)  # (..., T, 6, H, W)


def scale_intrinsics(intrinsics: torch.Tensor, factor: float) -> torch.Tensor:
    """Intrinsics for a grid ``factor`` times the size (e.g. 1/4 for a 4x-downsampled latent)."""
    k = intrinsics.clone()
    k[..., :2, :] *= factor
    return k


def clip_rays(
    c2w: torch.Tensor,  # (B, T, 4, 4)
    ref: torch.Tensor,  # (B, 4, 4), or (B, T, 4, 4): one reference per pose
    intrinsics: torch.Tensor,  # (B, 3, 3) pixels of the decoded frame
    frame_size: tuple[int, int],
    latent_size: tuple[int, int],
    translation_scale_m: float,
    dtype: torch.dtype = torch.float32,
    per_sequence_scale: bool = True,
) -> torch.Tensor:
    """The model's camera input for a sequence: rays of ``c2w`` relative to ``ref`` (the
    sequence's reference, or each pose's own), at latent
    resolution -> ``(B, T, 6, h, w)`` in ``dtype`` (computed in float64). Translations are divided
    by ``max(translation_scale_m, max ||t||)`` over the sequence (``per_sequence_scale``), or by
    ``translation_scale_m`` alone, so that a pose's rays depend on that pose and ``ref`` only."""
    rel = relative_poses(c2w.double(), ref.double())
    if per_sequence_scale:
        rel = normalise_translation(rel, translation_scale_m)
    else:
        rel[..., :3, 3] /= translation_scale_m
    k = scale_intrinsics(intrinsics.double(), latent_size[0] / frame_size[0])
    return plucker_rays(rel, k, latent_size[0], latent_size[1]).to(dtype)
