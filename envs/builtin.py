"""The built-in procedural world: seeded terrain, landmarks, trees, sky, fog and a day/night light.

Raw inputs follow the design (§5): ``keys`` multi-hot over :data:`KEY_NAMES`, ``mouse`` (dx, dy)
pixels. The camera flies through everything (no collisions), so the pose is a pure function of
the inputs through :class:`worldsim.core.controller.CameraController`. The ``l`` key toggles lights
(day <-> night) on its press: an action whose effect is not in the camera pose.

A camera inside a tree or landmark, or under the ground, sees a screen filled with the object's
inside: a world model trained on such frames learns that walking forward can turn the screen
dark. :func:`path_collision` finds those frames from the inputs alone, so scripted recordings can
avoid them (``worldsim-record avoid_obstacles=true``).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np

from envs.env import Env, Observation
from envs.renderer import RenderSettings, WorldRenderer
from envs.world_gen import WorldGenConfig, WorldGeometry, generate_world
from worldsim.core.camera import intrinsics_from_fov
from worldsim.core.controller import CameraController, CameraControllerConfig, CameraState
from worldsim.core.validate import check_key_row, check_mouse_row

KEY_NAMES = ["w", "a", "s", "d", "space", "left shift", "l"]
LIGHT_KEY = "l"


@dataclass
class BuiltinWorldConfig:
    """Camera optics (vertical fov in degrees, eye height and clip planes in metres), fog, anti-aliasing,
    the controller's speeds and the world generator's settings.
    """

    fov_y_deg: float = 75.0
    eye_height_m: float = 2.0
    near_m: float = 0.1
    far_m: float = 600.0  # also the depth written for sky pixels
    fog_density: float = 0.007
    supersample: int = 2  # render at this multiple and box-filter down (anti-aliasing)
    controller: CameraControllerConfig = field(default_factory=CameraControllerConfig)
    gen: WorldGenConfig = field(default_factory=WorldGenConfig)


class BuiltinWorld(Env):
    """World ``seed`` at ``frame_size`` (height, width); see the module docstring."""

    key_names = KEY_NAMES

    def __init__(
        self,
        seed: int = 0,
        frame_size: tuple[int, int] = (64, 64),
        cfg: BuiltinWorldConfig | None = None,
        gl_context: Any = None,
    ):
        self.cfg = cfg = cfg or BuiltinWorldConfig()
        self.seed = int(seed)
        self.frame_size = (int(frame_size[0]), int(frame_size[1]))
        self.fps = cfg.controller.fps
        h, w = self.frame_size
        self.intrinsics = intrinsics_from_fov(cfg.fov_y_deg, h, w)
        self.geom = generate_world(self.seed, cfg.gen)
        self.controller = CameraController(cfg.controller, KEY_NAMES)
        settings = RenderSettings(h, w, self.intrinsics, cfg.near_m, cfg.far_m, cfg.fog_density, cfg.supersample)
        self.renderer = WorldRenderer(self.geom, settings, gl_context)
        self._light_idx = KEY_NAMES.index(LIGHT_KEY)
        self.state = self.spawn_state()
        self.night = False
        self.step_count = 0
        self._prev_keys = np.zeros(len(KEY_NAMES), np.uint8)

    def spawn_state(self) -> CameraState:
        """This world's start pose (see :func:`spawn_state`); the same for every call."""
        return spawn_state(self.geom, self.cfg)

    def reset(self, state: CameraState | None = None, night: bool = False) -> Observation:
        """Frame 0 from ``state`` (copied; default the spawn pose), by day unless ``night``; time restarts at 0."""
        self.state = (state or self.spawn_state()).copy()
        self.night = night
        self.step_count = 0
        self._prev_keys = np.zeros(len(KEY_NAMES), np.uint8)
        return self._observe()

    def step(self, keys: np.ndarray, mouse: np.ndarray) -> Observation:
        """Apply one tick of input; a rising edge of ``l`` toggles night. ``keys (7,)`` multi-hot over
        :data:`KEY_NAMES`, ``mouse (dx, dy)`` finite pixels. Raises ``WorldsimError`` (and changes nothing)
        for another shape, a key other than 0/1 or a non-finite mouse.
        """
        keys = check_key_row("keys", keys, len(KEY_NAMES))
        mouse = check_mouse_row("mouse", mouse)
        if keys[self._light_idx] and not self._prev_keys[self._light_idx]:
            self.night = not self.night
        self._prev_keys = keys.copy()
        self.state = self.controller.step(self.state, keys, mouse)
        self.step_count += 1
        return self._observe()

    def _observe(self) -> Observation:
        c2w = self.state.c2w()
        frame, depth = self.renderer.render(c2w, self.night)
        return Observation(frame, depth, c2w, self.intrinsics.copy(), self.step_count / self.fps, {"night": self.night})

    def close(self) -> None:
        """Release the renderer's GL resources (and its context if it created one)."""
        self.renderer.release()


def spawn_state(geom: WorldGeometry, cfg: BuiltinWorldConfig) -> CameraState:
    """Start pose: over the centre clearing, eye height above ground, seeded heading."""
    z = geom.heights.at(0.0, 0.0) + cfg.eye_height_m
    return CameraState(np.array([0.0, 0.0, z]), geom.spawn_yaw_rad, 0.0)


def path_collision(
    seed: int,
    cfg: BuiltinWorldConfig,
    keys: np.ndarray,
    mouse: np.ndarray,
    margin_m: float = 0.5,
    ground_clearance_m: float = 0.5,
) -> int | None:
    """First frame whose camera, driven by ``keys``/``mouse`` from world ``seed``'s spawn, is
    within ``margin_m`` of an obstacle's cylinder or less than ``ground_clearance_m`` above the
    ground; ``None`` if the path stays clear. Rows follow :func:`envs.record.rollout` (row t
    takes frame t to t + 1). No rendering: the pose is a function of the inputs."""
    geom = generate_world(seed, cfg.gen)
    ctrl = CameraController(cfg.controller, KEY_NAMES)
    state = spawn_state(geom, cfg)
    positions = [state.position]
    for t in range(len(keys) - 1):
        state = ctrl.step(state, keys[t], mouse[t])
        positions.append(state.position)
    p = np.stack(positions)
    ob = geom.obstacles.astype(np.float64)
    dist = np.hypot(p[:, None, 0] - ob[None, :, 0], p[:, None, 1] - ob[None, :, 1])
    inside = (dist < ob[None, :, 2] + margin_m) & (p[:, None, 2] < ob[None, :, 3] + margin_m)
    hit = inside.any(axis=1) | (p[:, 2] < geom.heights(p[:, 0], p[:, 1]) + ground_clearance_m)
    return int(np.argmax(hit)) if hit.any() else None
