"""Procedural geometry of the built-in world, from a seed: terrain, landmarks, trees, sun.

Pure numpy, no GL: the renderer uploads what :func:`generate_world` returns. Shapes and colours
are chosen to read at 64x64 (calibration lesson 6): smooth low-frequency terrain colours, big
saturated landmarks in every direction, no fine repeating textures.
"""

from __future__ import annotations

import colorsys
import math
from dataclasses import dataclass

import numpy as np

VERTEX_FLOATS = 10  # position (3), normal (3), colour (3), emissive (1)


@dataclass
class WorldGenConfig:
    """Sizes of the procedural world in metres: terrain extent and grid, hill amplitude, landmark and
    tree counts and the (min, max) ranges of their distance from the origin (the first 8 landmarks
    always land 14-45 m out, so every start sees some).
    """

    terrain_size_m: float = 640.0
    terrain_cells: int = 128
    hill_height_m: float = 7.0
    num_landmarks: int = 28
    landmark_ring_m: tuple[float, float] = (14.0, 160.0)
    num_trees: int = 90
    tree_ring_m: tuple[float, float] = (6.0, 140.0)


@dataclass
class Landmark:
    """One big coloured object: ``kind`` (shape name), base position in metres, size, linear RGB colour."""

    kind: str
    position: np.ndarray  # (3,) world, base centre on the ground
    size_m: float
    colour: np.ndarray  # (3,) linear RGB in [0, 1]


@dataclass
class WorldGeometry:
    """What :func:`generate_world` returns: one triangle mesh, the landmarks, sun and sky colours,
    the spawn heading (radians), the height field and obstacle cylinders (metres).
    """

    vertices: np.ndarray  # (V, VERTEX_FLOATS) float32
    indices: np.ndarray  # (I,) uint32, triangles
    landmarks: list[Landmark]
    sun_dir: np.ndarray  # (3,) unit vector towards the sun
    sky_zenith: np.ndarray
    sky_horizon: np.ndarray
    spawn_yaw_rad: float
    heights: _HeightField
    # (N, 4) float32 rows (x, y, radius, top z): a vertical cylinder around each landmark and
    # tree; a camera inside one sees the object's inside (there are no collisions).
    obstacles: np.ndarray


class _HeightField:
    """Sum of seeded sinusoids: smooth hills whose height any caller can query."""

    def __init__(self, rng: np.random.Generator, amplitude_m: float):
        n = 6
        angles = rng.uniform(0, 2 * math.pi, n)
        self.freqs = np.stack([np.cos(angles), np.sin(angles)], 1) * rng.uniform(0.008, 0.05, n)[:, None]
        self.phases = rng.uniform(0, 2 * math.pi, n)
        self.amps = amplitude_m * rng.uniform(0.3, 1.0, n) / math.sqrt(n)

    def __call__(self, x: np.ndarray, y: np.ndarray) -> np.ndarray:
        arg = x[..., None] * self.freqs[:, 0] + y[..., None] * self.freqs[:, 1] + self.phases
        h = (np.sin(arg) * self.amps).sum(-1)
        # Flatten a clearing around the spawn so the first view is not inside a hill.
        r = np.sqrt(x**2 + y**2)
        return h * np.clip((r - 4.0) / 20.0, 0.0, 1.0) ** 2

    def at(self, x: float, y: float) -> float:
        return float(self(np.array(x), np.array(y)))


def _hsv(h: float, s: float, v: float) -> np.ndarray:
    return np.array(colorsys.hsv_to_rgb(h % 1.0, s, v), np.float32)


def _terrain(cfg: WorldGenConfig, rng: np.random.Generator, hf: _HeightField) -> tuple[np.ndarray, np.ndarray]:
    n = cfg.terrain_cells + 1
    lin = np.linspace(-cfg.terrain_size_m / 2, cfg.terrain_size_m / 2, n)
    y, x = np.meshgrid(lin, lin, indexing="ij")
    z = hf(x, y)
    eps = 0.5
    dzdx = (hf(x + eps, y) - hf(x - eps, y)) / (2 * eps)
    dzdy = (hf(x, y + eps) - hf(x, y - eps)) / (2 * eps)
    normal = np.stack([-dzdx, -dzdy, np.ones_like(z)], -1)
    normal /= np.linalg.norm(normal, axis=-1, keepdims=True)

    # Three ground colours per world, blended by a low-frequency "biome" field and by height.
    base_hue = rng.uniform(0.18, 0.36)
    palette = [_hsv(base_hue, 0.55, 0.55), _hsv(base_hue - 0.12, 0.5, 0.62), _hsv(base_hue + 0.08, 0.35, 0.45)]
    biome = _HeightField(rng, 1.0)(x * 0.6, y * 0.6)
    biome = (biome - biome.min()) / (np.ptp(biome) + 1e-6)
    w0 = np.clip(1.5 - 3 * biome, 0, 1)
    w2 = np.clip(3 * biome - 1.5, 0, 1)
    w1 = 1 - w0 - w2
    colour = w0[..., None] * palette[0] + w1[..., None] * palette[1] + w2[..., None] * palette[2]
    hn = (z - z.min()) / (np.ptp(z) + 1e-6)
    colour = colour * (0.75 + 0.45 * hn[..., None])
    verts = np.concatenate([np.stack([x, y, z], -1), normal, colour, np.zeros_like(z)[..., None]], -1)
    verts = verts.reshape(-1, VERTEX_FLOATS)
    i = np.arange(n - 1)
    r, c = np.meshgrid(i, i, indexing="ij")
    a = (r * n + c).ravel()
    b, d, e = a + 1, a + n, a + n + 1
    idx = np.stack([a, b, e, a, e, d], 1).ravel()
    return verts.astype(np.float32), idx.astype(np.uint32)


def _faces_to_mesh(tris: np.ndarray, colour: np.ndarray, emissive: float) -> np.ndarray:
    """Flat-shaded triangles ``(F, 3, 3)`` -> vertex rows (normals per face)."""
    n = np.cross(tris[:, 1] - tris[:, 0], tris[:, 2] - tris[:, 0])
    n /= np.linalg.norm(n, axis=1, keepdims=True) + 1e-12
    rows = np.zeros((len(tris), 3, VERTEX_FLOATS), np.float32)
    rows[..., 0:3] = tris
    rows[..., 3:6] = n[:, None]
    rows[..., 6:9] = colour
    rows[..., 9] = emissive
    return rows.reshape(-1, VERTEX_FLOATS)


def _prism(sides: int, r_bottom: float, r_top: float, height: float, twist: float = 0.0) -> np.ndarray:
    """Side and cap triangles of a (possibly tapered) prism standing on z = 0, ``(F, 3, 3)``."""
    a = np.linspace(0, 2 * math.pi, sides, endpoint=False) + math.pi / sides
    bot = np.stack([r_bottom * np.cos(a), r_bottom * np.sin(a), np.zeros(sides)], 1)
    top = np.stack([r_top * np.cos(a + twist), r_top * np.sin(a + twist), np.full(sides, height)], 1)
    tris = []
    for k in range(sides):
        j = (k + 1) % sides
        tris.append([bot[k], bot[j], top[j]])
        if r_top > 0:
            tris.append([bot[k], top[j], top[k]])
            tris.append([top[k], top[j], [0, 0, height]])
    return np.array(tris, np.float64)


def _octahedron(r: float, lift: float) -> np.ndarray:
    v = np.array([[r, 0, 0], [-r, 0, 0], [0, r, 0], [0, -r, 0], [0, 0, r], [0, 0, -r]], np.float64) + [0, 0, lift]
    faces = [(0, 2, 4), (2, 1, 4), (1, 3, 4), (3, 0, 4), (2, 0, 5), (1, 2, 5), (3, 1, 5), (0, 3, 5)]
    return v[np.array(faces)]


# Each landmark kind: size -> triangles. Distinct silhouettes so places can be told apart.
_SHAPES = {
    "tower": lambda s: _prism(4, 0.25 * s, 0.25 * s, 1.6 * s),
    "pyramid": lambda s: _prism(4, 0.6 * s, 0.0, 0.9 * s),
    "obelisk": lambda s: _prism(4, 0.15 * s, 0.05 * s, 2.2 * s),
    "drum": lambda s: _prism(10, 0.5 * s, 0.5 * s, 0.5 * s),
    "spire": lambda s: _prism(6, 0.35 * s, 0.0, 2.0 * s),
    "gem": lambda s: _octahedron(0.45 * s, 0.9 * s),
    "twisted": lambda s: _prism(5, 0.4 * s, 0.22 * s, 1.4 * s, twist=0.6),
}


def generate_world(seed: int, cfg: WorldGenConfig | None = None) -> WorldGeometry:
    """All static geometry of world ``seed``; the same seed gives the same arrays."""
    cfg = cfg or WorldGenConfig()
    rng = np.random.default_rng(seed)
    hf = _HeightField(rng, cfg.hill_height_m)
    verts, idx = _terrain(cfg, rng, hf)
    meshes = [verts]
    indices = [idx]
    offset = len(verts)

    def add(rows: np.ndarray) -> None:
        nonlocal offset
        meshes.append(rows)
        indices.append(np.arange(offset, offset + len(rows), dtype=np.uint32))
        offset += len(rows)

    landmarks = []
    obstacles = []

    def bound(tris: np.ndarray, x: float, y: float) -> None:
        radius = float(np.hypot(tris[..., 0] - x, tris[..., 1] - y).max())
        obstacles.append((x, y, radius, float(tris[..., 2].max())))

    kinds = list(_SHAPES)
    # Spread landmarks evenly in angle (jittered) so every direction shows something distinct.
    for k in range(cfg.num_landmarks):
        ang = 2 * math.pi * (k + rng.uniform(0.1, 0.9)) / cfg.num_landmarks
        dist = rng.uniform(*cfg.landmark_ring_m) if k >= 8 else rng.uniform(14.0, 45.0)
        x, y = dist * math.sin(ang), dist * math.cos(ang)
        kind = kinds[int(rng.integers(len(kinds)))]
        size = rng.uniform(3.0, 7.0) * (1.0 + dist / 120.0)
        colour = _hsv(rng.uniform(0, 1), rng.uniform(0.65, 0.95), rng.uniform(0.7, 0.95))
        base = np.array([x, y, hf.at(x, y) - 0.3])
        rot = rng.uniform(0, 2 * math.pi)
        c, s = math.cos(rot), math.sin(rot)
        tris = _SHAPES[kind](size) @ np.array([[c, -s, 0], [s, c, 0], [0, 0, 1]]).T + base
        add(_faces_to_mesh(tris, colour, emissive=1.0))
        bound(tris, x, y)
        landmarks.append(Landmark(kind, base.astype(np.float32), float(size), colour))

    for _ in range(cfg.num_trees):
        ang, dist = rng.uniform(0, 2 * math.pi), rng.uniform(*cfg.tree_ring_m)
        x, y = dist * math.sin(ang), dist * math.cos(ang)
        h = rng.uniform(2.5, 5.0)
        base = np.array([x, y, hf.at(x, y) - 0.2])
        trunk = _prism(5, 0.18, 0.18, 0.35 * h) + base
        crown = _prism(6, 0.32 * h, 0.0, 0.75 * h) + base + [0, 0, 0.3 * h]
        add(_faces_to_mesh(trunk, _hsv(0.07, 0.6, 0.35), emissive=0.0))
        add(_faces_to_mesh(crown, _hsv(rng.uniform(0.25, 0.42), 0.7, rng.uniform(0.25, 0.45)), emissive=0.0))
        bound(crown, x, y)

    sun_az = rng.uniform(0, 2 * math.pi)
    sun_el = math.radians(rng.uniform(25, 50))
    sun_dir = np.array([math.cos(sun_el) * math.sin(sun_az), math.cos(sun_el) * math.cos(sun_az), math.sin(sun_el)])
    sky_hue = rng.uniform(0.53, 0.62)
    return WorldGeometry(
        vertices=np.concatenate(meshes).astype(np.float32),
        indices=np.concatenate(indices),
        landmarks=landmarks,
        sun_dir=sun_dir.astype(np.float32),
        sky_zenith=_hsv(sky_hue, 0.65, 0.85),
        sky_horizon=_hsv(sky_hue - 0.02, 0.25, 0.97),
        spawn_yaw_rad=float(rng.uniform(-math.pi, math.pi)),
        heights=hf,
        obstacles=np.array(obstacles, np.float32).reshape(-1, 4),
    )
