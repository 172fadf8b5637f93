import math

import numpy as np
import torch

from worldsim.core.camera import intrinsics_from_fov, make_c2w
from worldsim.model.plucker import clip_rays, normalise_translation, plucker_rays, relative_poses, scale_intrinsics


def _poses(n=3, seed=0):
    rng = np.random.default_rng(seed)
    return torch.tensor(
        np.stack([make_c2w(rng.normal(0, 3, 3), rng.uniform(-3, 3), rng.uniform(-0.5, 0.5)) for _ in range(n)]),
        dtype=torch.float64,
    )


def test_plucker_matches_a_per_pixel_loop():
    c2w = _poses()
    k = torch.tensor(intrinsics_from_fov(70, 6, 8), dtype=torch.float64)
    rays = plucker_rays(c2w, k, 6, 8)
    assert rays.shape == (3, 6, 6, 8)
    kn = k.numpy()
    for t in range(3):
        r, o = c2w[t, :3, :3].numpy(), c2w[t, :3, 3].numpy()
        for row in range(6):
            for col in range(8):
                dc = np.array([(col + 0.5 - kn[0, 2]) / kn[0, 0], (row + 0.5 - kn[1, 2]) / kn[1, 1], 1.0])
                d = r @ (dc / np.linalg.norm(dc))
                np.testing.assert_allclose(rays[t, 3:, row, col].numpy(), d, atol=1e-12)
                np.testing.assert_allclose(rays[t, :3, row, col].numpy(), np.cross(o, d), atol=1e-12)


def test_plucker_properties_moment_orthogonal_and_invariant_along_the_ray():
    c2w = _poses(2)
    k = torch.tensor(intrinsics_from_fov(60, 4, 4), dtype=torch.float64)
    rays = plucker_rays(c2w, k, 4, 4)
    m, d = rays[:, :3], rays[:, 3:]
    torch.testing.assert_close((m * d).sum(1), torch.zeros(2, 4, 4, dtype=torch.float64))
    # Sliding the camera along a pixel's ray leaves that pixel's moment unchanged.
    shifted = c2w.clone()
    shifted[0, :3, 3] += 2.5 * d[0, :, 1, 2]
    torch.testing.assert_close(plucker_rays(shifted, k, 4, 4)[0, :, 1, 2], rays[0, :, 1, 2])


def test_relative_poses_make_rays_invariant_to_a_global_rigid_transform():
    c2w = _poses(4, seed=3)
    g = torch.tensor(make_c2w(np.array([10.0, -4.0, 2.0]), 1.2, 0.0), dtype=torch.float64)
    g[:3, :3] = g[:3, :3] @ torch.tensor(
        [[1, 0, 0], [0, math.cos(0.4), -math.sin(0.4)], [0, math.sin(0.4), math.cos(0.4)]], dtype=torch.float64
    )
    k = torch.tensor(intrinsics_from_fov(70, 4, 6), dtype=torch.float64)
    moved = g @ c2w
    a = plucker_rays(normalise_translation(relative_poses(c2w, c2w[0]), 1.0), k, 4, 6)
    b = plucker_rays(normalise_translation(relative_poses(moved, moved[0]), 1.0), k, 4, 6)
    torch.testing.assert_close(a, b)
    # The reference frame itself becomes the identity pose.
    torch.testing.assert_close(relative_poses(c2w, c2w[0])[0], torch.eye(4, dtype=torch.float64))


def test_translation_normalisation_bounds_moments_but_keeps_small_motion_small():
    c2w = _poses(3)
    rel = normalise_translation(relative_poses(c2w, c2w[0]), 1.0)
    assert rel[..., :3, 3].norm(dim=-1).max() <= 1.0 + 1e-9
    still = torch.eye(4, dtype=torch.float64).repeat(2, 1, 1)
    still[1, 0, 3] = 0.01
    assert normalise_translation(still, 1.0)[1, 0, 3] == 0.01  # not blown up to 1
    assert scale_intrinsics(torch.eye(3), 0.25)[0, 0] == 0.25


def _reference_clip_rays(c2w, ref, k, frame_size, latent_size, scale_m):
    """The rays clip_rays must give, one latent pixel at a time: the latent pixel (i, j) sees what
    the frame pixel at the same place in the image sees (centre ((j + 0.5) W / w, (i + 0.5) H / h))."""
    (fh, fw), (h, w) = frame_size, latent_size
    rel = np.linalg.inv(ref)[None] @ c2w
    norm = max(scale_m, max(np.linalg.norm(p[:3, 3]) for p in rel))
    out = np.zeros((len(c2w), 6, h, w))
    for t, p in enumerate(rel):
        o = p[:3, 3] / norm
        for i in range(h):
            for j in range(w):
                u, v = (j + 0.5) * fw / w, (i + 0.5) * fh / h
                d = np.array([(u - k[0, 2]) / k[0, 0], (v - k[1, 2]) / k[1, 1], 1.0])
                d = p[:3, :3] @ (d / np.linalg.norm(d))
                out[t, :, i, j] = np.concatenate([np.cross(o, d), d])
    return out


def test_clip_rays_equals_a_per_latent_pixel_reference():
    """Off-centre principal point, fx != fy, a reference pose and a translation beyond the scale:
    rescaling the intrinsics to the latent grid must scale fx, fy, cx and cy alike."""
    frame_size, latent_size = (48, 64), (12, 16)
    k = np.array([[50.0, 0.0, 30.0], [0.0, 44.0, 21.0], [0.0, 0.0, 1.0]])
    c2w = np.stack([make_c2w(np.array([x, 2.0 * x, 0.5]), 0.3 * x, -0.1 * x) for x in (0.0, 4.0, 11.0)])
    ref = make_c2w(np.array([1.0, -2.0, 0.0]), 0.7, 0.2).astype(np.float64)
    got = clip_rays(
        torch.from_numpy(c2w)[None],
        torch.from_numpy(ref)[None],
        torch.from_numpy(k)[None],
        frame_size,
        latent_size,
        8.0,
    )[0]
    want = _reference_clip_rays(c2w.astype(np.float64), ref, k, frame_size, latent_size, 8.0)
    assert got.shape == (3, 6, *latent_size) and got.dtype == torch.float32
    np.testing.assert_allclose(got.numpy(), want, atol=2e-5)
