"""3-D rotary position embedding over (time, row, col), applied to queries and keys."""

from __future__ import annotations

import torch


def rope_dims(head_dim: int) -> tuple[int, int, int]:
    """Split ``head_dim`` into even (time, row, col) parts; time gets the remainder."""
    spatial = 2 * (head_dim // 6)
    return head_dim - 2 * spatial, spatial, spatial


def rope_angles(positions: torch.Tensor, head_dim: int, base: float = 10000.0) -> torch.Tensor:
    """``positions (L, 3)`` float (t, row, col) -> angles ``(L, head_dim // 2)``."""
    parts = []
    for axis, dim in enumerate(rope_dims(head_dim)):
        if dim == 0:
            continue
        freqs = base ** (-torch.arange(0, dim, 2, dtype=torch.float64, device=positions.device) / dim)
        parts.append(positions[:, axis : axis + 1].double() * freqs)  # (L, dim/2)
    return torch.cat(parts, dim=-1)


def apply_rope(x: torch.Tensor, angles: torch.Tensor) -> torch.Tensor:
    """Rotate pairs of channels: ``x (B, H, L, D)``, ``angles (L, D/2)``."""
    cos, sin = angles.cos().to(x.dtype), angles.sin().to(x.dtype)
    x1, x2 = x[..., 0::2], x[..., 1::2]
    out = torch.stack([x1 * cos - x2 * sin, x1 * sin + x2 * cos], dim=-1)
    return out.flatten(-2)


def token_positions(frame_pos: torch.Tensor, rows: int, cols: int) -> torch.Tensor:
    """Per-frame temporal positions ``(T,)`` -> per-token (t, row, col) ``(T*rows*cols, 3)``."""
    t = frame_pos.to(torch.float64)[:, None, None].expand(-1, rows, cols)
    r = torch.arange(rows, dtype=torch.float64, device=frame_pos.device)[None, :, None].expand_as(t)
    c = torch.arange(cols, dtype=torch.float64, device=frame_pos.device)[None, None, :].expand_as(t)
    return torch.stack([t, r, c], dim=-1).reshape(-1, 3)


def shift_time(x: torch.Tensor, frames: int) -> torch.Tensor:
    """Keys ``x (..., L, D)`` that :func:`apply_rope` rotated at temporal positions ``t`` (any
    rows and columns) -> the same keys at ``t + frames``: one more rotation of the time pairs by
    ``frames`` (rotations of a pair compose by adding their angles; the row and column pairs turn
    by 0). Computed in float32 at least (bf16 keys would lose more than their own rounding) and
    returned in ``x``'s dtype."""
    angles = rope_angles(torch.tensor([[float(frames), 0.0, 0.0]], device=x.device), x.shape[-1])
    return apply_rope(x.to(torch.promote_types(x.dtype, torch.float32)), angles).to(x.dtype)
