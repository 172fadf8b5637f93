import math

import numpy as np
import pytest

from worldsim.core.camera import (
    c2w_cv_to_gl,
    c2w_gl_to_cv,
    intrinsics_from_fov,
    make_c2w,
    pixel_centres,
    project,
    rotation_reprojection,
    unproject,
)
from worldsim.core.controller import CameraState


def test_yaw_zero_looks_along_world_y_and_positive_yaw_turns_right():
    r0 = make_c2w(np.zeros(3), 0.0, 0.0)[:3, :3]
    np.testing.assert_allclose(r0[:, 2], [0, 1, 0], atol=1e-6)  # forward
    np.testing.assert_allclose(r0[:, 0], [1, 0, 0], atol=1e-6)  # right
    np.testing.assert_allclose(r0[:, 1], [0, 0, -1], atol=1e-6)  # down
    r90 = make_c2w(np.zeros(3), math.pi / 2, 0.0)[:3, :3]
    np.testing.assert_allclose(r90[:, 2], [1, 0, 0], atol=1e-6)  # turned right: now facing +x
    up = make_c2w(np.zeros(3), 0.0, 0.3)[:3, :3]
    assert up[2, 2] > 0  # positive pitch looks up
    for r in (r0, r90, up):
        np.testing.assert_allclose(r @ r.T, np.eye(3), atol=1e-6)
        assert np.linalg.det(r) == pytest.approx(1.0, abs=1e-6)


def test_gl_cv_conversion_round_trips_and_flips_view_axis():
    c2w = make_c2w(np.array([1.0, 2.0, 3.0]), 0.4, -0.2)
    gl = c2w_cv_to_gl(c2w)
    np.testing.assert_allclose(gl[:3, 2], -c2w[:3, 2], atol=1e-6)  # GL looks down -z
    np.testing.assert_allclose(c2w_gl_to_cv(gl), c2w, atol=1e-6)


def test_intrinsics_from_fov_put_the_principal_point_at_the_centre():
    k = intrinsics_from_fov(90.0, 64, 96)
    assert k[0, 0] == pytest.approx(32.0) and k[1, 1] == pytest.approx(32.0)
    assert (k[0, 2], k[1, 2]) == (48.0, 32.0)
    with pytest.raises(ValueError):
        intrinsics_from_fov(0.0, 64, 64)


def test_project_and_unproject_are_inverse():
    rng = np.random.default_rng(0)
    c2w = make_c2w(np.array([3.0, -1.0, 2.0]), 1.1, 0.2)
    k = intrinsics_from_fov(70.0, 48, 64)
    uv = pixel_centres(48, 64)[rng.choice(48 * 64, 50)]
    depth = rng.uniform(1, 50, 50)
    uv2, z2 = project(unproject(uv, depth, c2w, k), c2w, k)
    np.testing.assert_allclose(uv2, uv, atol=1e-6)
    np.testing.assert_allclose(z2, depth, atol=1e-6)


def test_landmark_at_known_position_appears_at_predicted_pixel(env64):
    """Pins the pose convention end to end: renderer, intrinsics and c2w agree."""
    lm = max(env64.geom.landmarks, key=lambda m: m.size_m if np.linalg.norm(m.position[:2]) < 60 else 0)
    target = lm.position + np.array([0.0, 0.0, 0.5 * lm.size_m])  # inside the shape, mid-height
    for yaw_offset_deg in (0.0, 12.0, -15.0):
        # Stand 12 m + size from it, facing it, then turn by an offset: it must move the other way.
        direction = np.array([math.sin(0.7), math.cos(0.7), 0.0])
        eye = target - direction * (12.0 + lm.size_m)
        yaw = math.atan2(direction[0], direction[1]) + math.radians(yaw_offset_deg)
        obs = env64.reset(CameraState(eye.astype(np.float64), yaw, 0.0))
        uv, zs = project(target[None], obs.c2w, obs.intrinsics)
        u, v, z = float(uv[0, 0]), float(uv[0, 1]), float(zs[0])
        assert 0 <= u < 64 and 0 <= v < 64
        if yaw_offset_deg == 0:
            assert abs(u - 32) < 0.5  # straight ahead: the image centre
        if yaw_offset_deg > 0:
            assert u < 31  # turned right -> object left of centre
        if yaw_offset_deg < 0:
            assert u > 33
        d = obs.depth[int(v), int(u)]
        # The surface seen there is in front of the target point, not farther than it.
        assert 0.5 * (z - lm.size_m) < d <= z + 0.5, (yaw_offset_deg, d, z)
        rgb = obs.frame[int(v), int(u)].astype(float) / 255
        # Lit (emissive-free day) shading keeps the hue: the dominant channel of the colour matches.
        assert np.argmax(rgb) == np.argmax(lm.colour) or np.ptp(lm.colour) < 0.15


def test_rotation_reprojection_finds_the_start_view_in_a_turning_camera(env64):
    """A camera turning in place at 3 degrees per frame: where the reprojection says a pixel was in
    the first frame, the rendered frame shows what the first frame showed there; a mirrored
    reprojection (the wrong way round) does not; after a turn wider than the view nothing is left."""
    start = env64.reset()
    frames, c2w = [], []
    for _ in range(30):
        obs = env64.step(np.zeros(7, np.uint8), np.array([12.0, 0.0], np.float32))
        frames.append(obs.frame.astype(float))
        c2w.append(obs.c2w)
    uv, inside = rotation_reprojection(np.stack(c2w), start.c2w, start.intrinsics, 64, 64)
    first = start.frame.astype(float)
    near = np.clip(np.floor(uv).astype(int), 0, 63)
    err, mirrored = [], []
    for j in (2, 5, 10):
        m = inside[j]
        assert 0.3 < m.mean() < 1.0
        warped = first[near[j, ..., 1], near[j, ..., 0]]
        err.append(np.abs(warped - frames[j])[m].mean())
        mirrored.append(np.abs(warped[:, ::-1] - frames[j])[m[:, ::-1]].mean())
    assert max(err) < 8.0 and min(mirrored) > 2 * max(err), (err, mirrored)
    # 75 degrees of field of view: after 72 degrees a sliver of the start view is left, after 75 none
    assert inside[23].any() and not inside[24:].any()
    full, everywhere = rotation_reprojection(np.stack([start.c2w]), start.c2w, start.intrinsics, 64, 64)
    assert everywhere.all() and np.allclose(full[0], pixel_centres(64, 64).reshape(64, 64, 2))
