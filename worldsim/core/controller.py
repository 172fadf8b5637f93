"""Camera controller: integrates raw inputs (keys held, mouse dx/dy) into the next pose.

The same controller drives the ground-truth environments when recording and the engine at
play time, so a pose is a pure function of the start pose and the inputs (no collisions).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np

from worldsim.core.camera import make_c2w
from worldsim.core.errors import WorldsimError

# The keys the controller reads; other keys in a key list are ignored here (world actions).
MOVE_KEYS = ("w", "a", "s", "d", "space", "left shift")


@dataclass
class CameraControllerConfig:
    """Speeds of the fly-through camera; one tick is one frame at ``fps``."""

    fps: float = 15.0
    move_speed_mps: float = 6.0  # horizontal, w/a/s/d
    vertical_speed_mps: float = 3.0  # space up, left shift down
    mouse_deg_per_px: float = 0.25  # yaw and pitch per mouse pixel
    max_pitch_deg: float = 80.0


@dataclass
class CameraState:
    """Everything the controller integrates; copy it to branch a trajectory."""

    position: np.ndarray = field(default_factory=lambda: np.zeros(3, np.float64))
    yaw_rad: float = 0.0
    pitch_rad: float = 0.0

    def c2w(self) -> np.ndarray:
        """``(4, 4)`` float32 camera-to-world pose (OpenCV axes, metres) from position, yaw and pitch."""
        return make_c2w(self.position, self.yaw_rad, self.pitch_rad)

    def copy(self) -> CameraState:
        """An independent copy (the position array is copied)."""
        return CameraState(self.position.copy(), self.yaw_rad, self.pitch_rad)

    @classmethod
    def from_c2w(cls, c2w: np.ndarray) -> CameraState:
        """The state whose :meth:`c2w` is ``c2w`` (a pose made by this convention: no roll)."""
        c2w = np.asarray(c2w, np.float64)
        fx, fy, fz = c2w[:3, 2]  # the forward axis in world coordinates
        return cls(c2w[:3, 3].copy(), math.atan2(fx, fy), math.asin(max(-1.0, min(1.0, fz))))


class CameraController:
    """Maps ``(keys, mouse)`` of one tick to the next :class:`CameraState`.

    ``keys`` is a uint8 multi-hot over ``key_names``; ``mouse`` is ``(dx, dy)`` in pixels with
    dx > 0 turning right and dy > 0 looking down. Rotation is applied before translation, so
    ``w`` moves along the new heading.
    """

    def __init__(self, cfg: CameraControllerConfig, key_names: list[str]):
        self.cfg = cfg
        self.key_names = list(key_names)
        missing = [k for k in MOVE_KEYS if k not in self.key_names]
        if missing:
            raise WorldsimError(f"camera controller needs keys {missing} in the key list {self.key_names}")
        self._idx = {k: self.key_names.index(k) for k in MOVE_KEYS}

    def step(self, state: CameraState, keys: np.ndarray, mouse: np.ndarray) -> CameraState:
        """Integrate one tick (``1 / fps`` seconds) and return the new state; ``state`` is not mutated.

        ``keys`` is ``(K,)`` multi-hot over ``key_names`` (any dtype); ``mouse`` is ``(dx, dy)`` pixels.
        Yaw wraps to (-pi, pi]; pitch clamps to +-``max_pitch_deg``. Raises ``WorldsimError`` if
        ``keys`` is not shape ``(K,)``.
        """
        cfg = self.cfg
        # Cast before arithmetic: uint8 "w - s" would wrap to 255 (calibration lesson 7).
        k = np.asarray(keys).astype(np.float64)
        if k.shape != (len(self.key_names),):
            raise WorldsimError(f"keys must have shape ({len(self.key_names)},), got {k.shape}")
        dx, dy = (float(m) for m in np.asarray(mouse, np.float64).reshape(2))
        per_px = math.radians(cfg.mouse_deg_per_px)
        max_pitch = math.radians(cfg.max_pitch_deg)
        yaw = state.yaw_rad + dx * per_px
        yaw = math.atan2(math.sin(yaw), math.cos(yaw))  # keep in (-pi, pi]
        pitch = min(max(state.pitch_rad - dy * per_px, -max_pitch), max_pitch)

        i = self._idx
        forward = k[i["w"]] - k[i["s"]]
        strafe = k[i["d"]] - k[i["a"]]
        up = k[i["space"]] - k[i["left shift"]]
        dt = 1.0 / cfg.fps
        heading = np.array([math.sin(yaw), math.cos(yaw), 0.0])
        right = np.array([math.cos(yaw), -math.sin(yaw), 0.0])
        move = (forward * heading + strafe * right) * cfg.move_speed_mps * dt
        move[2] += up * cfg.vertical_speed_mps * dt
        return CameraState(state.position + move, yaw, pitch)
