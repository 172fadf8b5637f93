"""Camera controller: integrates raw inputs (keys held, mouse dx/dy) into the next pose.

The same controller drives the ground-truth environments when recording and the engine at
play time, so a pose is a pure function of the start pose, its velocity and the inputs (no
collisions). Two kinds of motion:

* **Direct** (``momentum`` 0, the built-in world's fly-through camera): a held key moves the
  camera ``move_speed_mps / fps`` metres per frame, from the first frame it is held to the last.
* **Momentum** (``momentum`` > 0, DOOM's player physics, ``P_MovePlayer`` / ``P_XYMovement`` in
  the DOOM source): each of ``ticks_per_frame`` ticks turns the camera, adds a thrust along the new
  heading to the horizontal velocity, moves by the velocity and then keeps ``momentum`` of it
  (DOOM's ground friction, 0xE800 / 0x10000 = 0.90625). The thrust is set so that a held key
  reaches ``move_speed_mps``; a released one coasts to a stop over about ten ticks.
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
    strafe_ratio: float = 1.0  # a/d speed over w/s speed (DOOM: sidemove 24 / forwardmove 25)
    momentum: float = 0.0  # horizontal velocity kept per tick, in [0, 1); 0 = direct motion
    ticks_per_frame: int = 1  # integration ticks per frame (DOOM: its tics per step)

    def mouse_px_per_frame(self, deg_per_s: float) -> float:
        """Horizontal mouse pixels per frame (input row) that turn the camera ``deg_per_s``
        degrees per second at ``fps`` (> 0: to the right)."""
        return deg_per_s / self.fps / self.mouse_deg_per_px

    def __post_init__(self) -> None:
        if not 0.0 <= self.momentum < 1.0:
            raise WorldsimError(f"controller momentum must be in [0, 1), got {self.momentum}")
        if self.ticks_per_frame < 1:
            raise WorldsimError(f"controller ticks_per_frame must be >= 1, got {self.ticks_per_frame}")


@dataclass
class CameraState:
    """Everything the controller integrates; copy it to branch a trajectory. ``velocity_mps`` is
    the horizontal velocity carried into the next tick, what friction left of the last one (world
    x, y, 0; metres per second); zero unless the controller has momentum."""

    position: np.ndarray = field(default_factory=lambda: np.zeros(3, np.float64))
    yaw_rad: float = 0.0
    pitch_rad: float = 0.0
    velocity_mps: np.ndarray = field(default_factory=lambda: np.zeros(3, np.float64))

    def c2w(self) -> np.ndarray:
        """``(4, 4)`` float32 camera-to-world pose (OpenCV axes, metres) from position, yaw and pitch."""
        return make_c2w(self.position, self.yaw_rad, self.pitch_rad)

    def copy(self) -> CameraState:
        """An independent copy (the position array is copied)."""
        return CameraState(self.position.copy(), self.yaw_rad, self.pitch_rad, self.velocity_mps.copy())

    @classmethod
    def from_c2w(cls, c2w: np.ndarray) -> CameraState:
        """The state at rest whose :meth:`c2w` is ``c2w`` (a pose made by this convention: no roll)."""
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
        """Integrate one frame (``1 / fps`` seconds) and return the new state; ``state`` is not mutated.

        ``keys`` is ``(K,)`` multi-hot over ``key_names`` (any dtype); ``mouse`` is ``(dx, dy)``
        pixels, spread evenly over the frame's ticks. Yaw wraps to (-pi, pi]; pitch clamps to
        +-``max_pitch_deg``. Raises ``WorldsimError`` if ``keys`` is not shape ``(K,)``.
        """
        cfg = self.cfg
        # Cast before arithmetic: uint8 "w - s" would wrap to 255 (calibration lesson 7).
        k = np.asarray(keys).astype(np.float64)
        if k.shape != (len(self.key_names),):
            raise WorldsimError(f"keys must have shape ({len(self.key_names)},), got {k.shape}")
        dx, dy = (float(m) for m in np.asarray(mouse, np.float64).reshape(2))
        ticks = cfg.ticks_per_frame
        per_px = math.radians(cfg.mouse_deg_per_px) / ticks
        max_pitch = math.radians(cfg.max_pitch_deg)
        i = self._idx
        forward = k[i["w"]] - k[i["s"]]
        strafe = (k[i["d"]] - k[i["a"]]) * cfg.strafe_ratio
        up = k[i["space"]] - k[i["left shift"]]
        dt = 1.0 / (cfg.fps * ticks)
        # The velocity in metres per tick; the thrust holds move_speed_mps once it has settled
        # (all of it at once without momentum; written so that case rounds as it always has).
        yaw, pitch = state.yaw_rad, state.pitch_rad
        position, velocity = state.position.copy(), state.velocity_mps * dt
        for _ in range(ticks):
            yaw = yaw + dx * per_px
            yaw = math.atan2(math.sin(yaw), math.cos(yaw))  # keep in (-pi, pi]
            pitch = min(max(pitch - dy * per_px, -max_pitch), max_pitch)
            heading = np.array([math.sin(yaw), math.cos(yaw), 0.0])
            right = np.array([math.cos(yaw), -math.sin(yaw), 0.0])
            velocity = velocity + (forward * heading + strafe * right) * cfg.move_speed_mps * (1.0 - cfg.momentum) * dt
            move = velocity.copy()
            move[2] += up * cfg.vertical_speed_mps * dt
            position = position + move
            velocity = velocity * cfg.momentum
        return CameraState(position, yaw, pitch, velocity / dt)

    def run(self, state: CameraState, keys: np.ndarray, mouse: np.ndarray) -> tuple[CameraState, np.ndarray]:
        """:meth:`step` over the rows ``keys (T, K)``, ``mouse (T, 2)`` from ``state`` -> (the state
        after the last row, ``(T, 4, 4)`` float32 poses: row ``i``'s pose is the one after it)."""
        poses = []
        for k, m in zip(keys, mouse, strict=True):
            state = self.step(state, k, m)
            poses.append(state.c2w())
        return state, np.stack(poses)

    def settle(self, previous_c2w: np.ndarray, c2w: np.ndarray, keys: np.ndarray, mouse: np.ndarray) -> CameraState:
        """The state at ``c2w`` with the velocity that explains the step from ``previous_c2w``
        under the row ``(keys, mouse)`` that made it: how a session starts moving from recorded
        context frames. Without momentum it is :meth:`CameraState.from_c2w` (at rest).

        Over one frame the horizontal displacement is ``c * v0 + A``: ``A`` the displacement from
        rest under the row, ``c = 1 + m + ... + m^(ticks-1)`` (``m`` the momentum), ``v0`` the
        velocity carried in; ``v0`` is solved from the true displacement, so a wall that stopped
        the player shows as a low speed. ``(4, 4)`` poses, ``(K,)`` keys, ``(2,)`` mouse.
        """
        state = CameraState.from_c2w(c2w)
        if self.cfg.momentum == 0.0:
            return state
        previous = CameraState.from_c2w(previous_c2w)
        dt = 1.0 / (self.cfg.fps * self.cfg.ticks_per_frame)
        from_rest = self.step(previous, keys, mouse).position - previous.position
        c = sum(self.cfg.momentum**t for t in range(self.cfg.ticks_per_frame))
        v0 = (state.position - previous.position - from_rest) / c
        v0[2] = 0.0
        carried = CameraState(previous.position, previous.yaw_rad, previous.pitch_rad, v0 / dt)
        state.velocity_mps = self.step(carried, keys, mouse).velocity_mps
        return state
