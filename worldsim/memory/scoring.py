"""Field-of-view overlap between cameras, the geometry score behind memory retrieval
(reference.md §5, HY-WorldPlay's Monte-Carlo form).

Points are drawn uniformly in a ball of radius ``radius_m`` around each query camera; a point is
seen by a camera when it projects inside the image in front of it (the intrinsics give the
field of view) and, for the candidate camera, lies within ``radius_m`` of it too. The score is
``|seen by query and candidate| / |seen by query|``, in [0, 1].
"""

from __future__ import annotations

import torch


def _in_view(points: torch.Tensor, c2w: torch.Tensor, intrinsics: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """``points (..., N, 3)`` world, ``c2w (..., 4, 4)`` -> ``(..., N)`` bool: in front and inside the image."""
    w2c = torch.linalg.inv(c2w)
    cam = points @ w2c[..., :3, :3].transpose(-1, -2) + w2c[..., None, :3, 3]
    z = cam[..., 2]
    safe = z.clamp_min(1e-6)
    u = intrinsics[0, 0] * cam[..., 0] / safe + intrinsics[0, 2]
    v = intrinsics[1, 1] * cam[..., 1] / safe + intrinsics[1, 2]
    h, w = size
    return (z > 1e-3) & (u >= 0) & (u < w) & (v >= 0) & (v < h)


def fov_overlap(
    query_c2w: torch.Tensor,  # (Q, 4, 4)
    cand_c2w: torch.Tensor,  # (M, 4, 4)
    intrinsics: torch.Tensor,  # (3, 3) pixels of a frame of ``frame_size``
    frame_size: tuple[int, int],
    radius_m: float = 20.0,
    num_points: int = 1024,
    generator: torch.Generator | None = None,
) -> torch.Tensor:
    """``(Q, M)`` overlap of each candidate camera with each query camera."""
    q, m = len(query_c2w), len(cand_c2w)
    qd, cd = query_c2w.double(), cand_c2w.double()
    k = intrinsics.double()
    # Uniform in the ball: direction ~ normal, radius ~ R * U^(1/3).
    g = torch.randn(num_points, 3, generator=generator, dtype=torch.float64)
    r = torch.rand(num_points, 1, generator=generator, dtype=torch.float64).pow(1 / 3) * radius_m
    offsets = g / g.norm(dim=-1, keepdim=True) * r
    points = qd[:, None, :3, 3] + offsets  # (Q, N, 3)
    seen_q = _in_view(points, qd, k, frame_size)  # (Q, N)
    pts = points[:, None].expand(q, m, num_points, 3)
    near = (pts - cd[None, :, None, :3, 3]).norm(dim=-1) <= radius_m
    seen_c = _in_view(pts, cd[None].expand(q, m, 4, 4), k, frame_size) & near  # (Q, M, N)
    both = (seen_c & seen_q[:, None]).sum(-1).double()
    return both / seen_q.sum(-1, keepdim=True).clamp_min(1).double()
