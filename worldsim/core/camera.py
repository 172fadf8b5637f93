"""The one pose convention and every conversion to and from it.

Convention (fixed by the design): ``c2w`` is a 4x4 float32 camera-to-world matrix with OpenCV
camera axes (x right, y down, z forward), metres and radians. The world is right-handed with
z up. Intrinsics are in pixels of the decoded frame, and pixel ``(u, v)`` (column, row) covers
the continuous square ``[u, u+1) x [v, v+1)``, so its centre is at ``(u + 0.5, v + 0.5)``.

OpenGL cameras look down their -z axis with y up; :data:`CV_FROM_GL` flips between the two.
"""

from __future__ import annotations

import math

import numpy as np

# Right-multiplying a c2w by this flips camera y and z: OpenCV axes <-> OpenGL axes (self-inverse).
CV_FROM_GL = np.diag([1.0, -1.0, -1.0, 1.0]).astype(np.float32)


def intrinsics_from_fov(fov_y_deg: float, height: int, width: int) -> np.ndarray:
    """Pinhole intrinsics ``(3, 3)`` for a vertical field of view and square pixels."""
    if not 0.0 < fov_y_deg < 180.0:
        raise ValueError(f"fov_y_deg must be in (0, 180), got {fov_y_deg}")
    f = 0.5 * height / math.tan(math.radians(fov_y_deg) / 2.0)
    return np.array([[f, 0.0, width / 2.0], [0.0, f, height / 2.0], [0.0, 0.0, 1.0]], np.float32)


def yaw_pitch_to_rotation(yaw_rad: float, pitch_rad: float) -> np.ndarray:
    """Camera-to-world rotation ``(3, 3)`` (OpenCV axes) for a yaw and pitch in a z-up world.

    ``yaw = 0`` looks along world +y; positive yaw turns right (clockwise seen from above);
    positive pitch looks up. Columns are the camera's right, down and forward axes in world.
    """
    cy, sy = math.cos(yaw_rad), math.sin(yaw_rad)
    cp, sp = math.cos(pitch_rad), math.sin(pitch_rad)
    forward = np.array([cp * sy, cp * cy, sp])
    right = np.array([cy, -sy, 0.0])
    down = np.cross(forward, right)  # OpenCV is right-handed: x * y = z  =>  y = z * x
    return np.stack([right, down, forward], axis=1).astype(np.float32)


def make_c2w(position: np.ndarray, yaw_rad: float, pitch_rad: float) -> np.ndarray:
    """``(4, 4)`` float32 c2w from a world position (metres) and yaw/pitch (radians)."""
    c2w = np.eye(4, dtype=np.float32)
    c2w[:3, :3] = yaw_pitch_to_rotation(yaw_rad, pitch_rad)
    c2w[:3, 3] = np.asarray(position, dtype=np.float32)
    return c2w


def c2w_from_doom(position_units: np.ndarray, angle_deg: float, pitch_deg: float, metres_per_unit: float) -> np.ndarray:
    """``(4, 4)`` float32 c2w of a DOOM camera (ViZDoom's ``CAMERA_POSITION_X/Y/Z``, ``CAMERA_ANGLE``,
    ``CAMERA_PITCH``).

    DOOM's map axes are kept as world axes (x east, y north, z up: right-handed and z up like
    ours); map units are scaled by ``metres_per_unit``. DOOM's angle is degrees counter-clockwise
    from +x, our yaw radians clockwise from +y, so ``yaw = 90 deg - angle``: angle 0 looks along
    world +x. ZDoom's pitch is positive looking down, ours positive looking up.
    """
    position_m = np.asarray(position_units, np.float64) * metres_per_unit
    return make_c2w(position_m, math.radians(90.0 - angle_deg), -math.radians(pitch_deg))


def c2w_cv_to_gl(c2w: np.ndarray) -> np.ndarray:
    """OpenCV-axes c2w -> OpenGL-axes c2w (camera looks down -z, y up)."""
    return (np.asarray(c2w, np.float32) @ CV_FROM_GL).astype(np.float32)


def c2w_gl_to_cv(c2w_gl: np.ndarray) -> np.ndarray:
    """OpenGL-axes c2w -> OpenCV-axes c2w."""
    return (np.asarray(c2w_gl, np.float32) @ CV_FROM_GL).astype(np.float32)


def gl_view_matrix(c2w: np.ndarray) -> np.ndarray:
    """OpenGL view matrix (world -> GL eye space) for an OpenCV c2w, row-major ``(4, 4)``."""
    return np.linalg.inv(c2w_cv_to_gl(c2w)).astype(np.float32)


def gl_projection(intrinsics: np.ndarray, height: int, width: int, near: float, far: float) -> np.ndarray:
    """OpenGL projection (row-major) that maps eye space to the same pixels as ``intrinsics``.

    With it, a point that :func:`project` puts at continuous pixel ``(u, v)`` is rasterised
    at the same place (GL's window y runs bottom-up; readback flips rows).
    """
    fx, fy, cx, cy = intrinsics[0, 0], intrinsics[1, 1], intrinsics[0, 2], intrinsics[1, 2]
    return np.array(
        [
            [2 * fx / width, 0.0, 1.0 - 2 * cx / width, 0.0],
            [0.0, 2 * fy / height, 2 * cy / height - 1.0, 0.0],
            [0.0, 0.0, -(far + near) / (far - near), -2 * far * near / (far - near)],
            [0.0, 0.0, -1.0, 0.0],
        ],
        np.float32,
    )


def project(points_world: np.ndarray, c2w: np.ndarray, intrinsics: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """World points ``(N, 3)`` -> continuous pixel coords ``(N, 2)`` (u, v) and depth ``(N,)``.

    Depth is metres along the camera z axis; points behind the camera get depth <= 0.
    """
    w2c = np.linalg.inv(c2w.astype(np.float64))
    pc = points_world @ w2c[:3, :3].T + w2c[:3, 3]  # (N, 3) camera coords
    z = pc[:, 2]
    uv = (pc[:, :2] / np.where(np.abs(z) < 1e-9, 1e-9, z)[:, None]) @ intrinsics[:2, :2].T.astype(np.float64)
    uv = uv + intrinsics[:2, 2]
    return uv, z


def unproject(uv: np.ndarray, depth: np.ndarray, c2w: np.ndarray, intrinsics: np.ndarray) -> np.ndarray:
    """Continuous pixel coords ``(N, 2)`` and z-depth ``(N,)`` -> world points ``(N, 3)``."""
    k_inv = np.linalg.inv(intrinsics.astype(np.float64))
    rays = np.concatenate([uv, np.ones((len(uv), 1))], axis=1) @ k_inv.T  # (N, 3), z = 1
    pc = rays * depth[:, None]
    return pc @ c2w[:3, :3].T.astype(np.float64) + c2w[:3, 3]


def pixel_centres(height: int, width: int) -> np.ndarray:
    """``(H*W, 2)`` continuous (u, v) coordinates of pixel centres, row-major order."""
    v, u = np.meshgrid(np.arange(height) + 0.5, np.arange(width) + 0.5, indexing="ij")
    return np.stack([u.ravel(), v.ravel()], axis=1)


def rotation_reprojection(
    c2w: np.ndarray, src_c2w: np.ndarray, intrinsics: np.ndarray, height: int, width: int
) -> tuple[np.ndarray, np.ndarray]:
    """Where the pixel centres of cameras ``c2w (T, 4, 4)`` land in camera ``src_c2w``, by their
    rays alone (translation ignored: exact for a camera that only rotates, as in the turning
    evaluation). Returns ``uv (T, H, W, 2)`` in the source image and ``inside (T, H, W)``: the ray
    is in front of the source camera and lands inside its image."""
    centres = pixel_centres(height, width)
    uvs, inside = [], []
    for c in c2w:
        turned = c.astype(np.float64).copy()
        turned[:3, 3] = src_c2w[:3, 3]  # the same rays from the source camera's centre
        uv, z = project(unproject(centres, np.ones(len(centres)), turned, intrinsics), src_c2w, intrinsics)
        uvs.append(uv.reshape(height, width, 2))
        ok = (z > 1e-6) & (uv[:, 0] >= 0) & (uv[:, 0] < width) & (uv[:, 1] >= 0) & (uv[:, 1] < height)
        inside.append(ok.reshape(height, width))
    return np.stack(uvs), np.stack(inside)
