"""The built-in procedural world: seeded terrain, landmarks, trees, sky, fog and a day/night light.

Raw inputs follow the design (§5): ``keys`` multi-hot over :data:`KEY_NAMES`, ``mouse`` (dx, dy)
pixels. The camera flies through everything (no collisions), so the pose is a pure function of
the inputs through :class:`worldsim.controller.CameraController`. The ``l`` key toggles lights
(day <-> night) on its press: an action whose effect is not in the camera pose.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np

from envs.env import Env, Observation
from envs.renderer import RenderSettings, WorldRenderer
from envs.world_gen import WorldGenConfig, generate_world
from worldsim.camera import intrinsics_from_fov
from worldsim.controller import CameraController, CameraControllerConfig, CameraState
from worldsim.errors import WorldsimError

KEY_NAMES = ["w", "a", "s", "d", "space", "left shift", "l"]
LIGHT_KEY = "l"


@dataclass
class BuiltinWorldConfig:
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
        """Start pose: over the centre clearing, eye height above ground, seeded heading."""
        z = self.geom.heights.at(0.0, 0.0) + self.cfg.eye_height_m
        return CameraState(np.array([0.0, 0.0, z]), self.geom.spawn_yaw_rad, 0.0)

    def reset(self, state: CameraState | None = None, night: bool = False) -> Observation:
        self.state = (state or self.spawn_state()).copy()
        self.night = night
        self.step_count = 0
        self._prev_keys = np.zeros(len(KEY_NAMES), np.uint8)
        return self._observe()

    def step(self, keys: np.ndarray, mouse: np.ndarray) -> Observation:
        keys = np.asarray(keys)
        if keys.shape != (len(KEY_NAMES),):
            raise WorldsimError(f"keys must have shape ({len(KEY_NAMES)},), got {keys.shape}")
        keys = keys.astype(np.uint8)
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
        self.renderer.release()
