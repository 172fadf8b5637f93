"""DOOM through ViZDoom (Freedoom's free levels, headless): the optional ``[doom]`` extra.

Raw inputs are the built-in world's (:data:`envs.builtin.KEY_NAMES`), so every policy, the
recorder and a checkpoint's key list carry over: ``w``/``s`` forward/back, ``a``/``d`` strafe,
``space`` jump, ``left shift`` crouch, ``l`` USE (opens doors, presses switches: an action whose
effect is not in the pose); mouse dx turns (``mouse_deg_per_px``, dx > 0 right), dy looks up and
down only with ``look_pitch`` (ZDoom's software renderer shears instead of rotating for pitch, so a
pinhole camera is exact only at pitch 0; off by default, dy is then ignored).

One step is ``tics_per_step`` game tics (DOOM runs 35 tics/s; 2 -> 17.5 frames/s). Unlike the
built-in world, DOOM has momentum and collisions: the pose is the game's, not the controller's.
It comes from the rendered camera's game variables (``CAMERA_POSITION_X/Y/Z``, ``CAMERA_ANGLE``,
``CAMERA_PITCH``, so eye height and view bob are included) through
:func:`worldsim.core.camera.c2w_from_doom`. Frames are rendered at ViZDoom's smallest resolution
(160x120, 90 deg horizontal field of view), centre-cropped to the requested aspect and
area-resized; ``depth`` is NaN (ViZDoom's depth buffer is 8-bit, not metric).
"""

from __future__ import annotations

import math
import os
import re
import shutil
import struct
import tempfile
from dataclasses import dataclass
from typing import Any

import numpy as np

from envs.builtin import KEY_NAMES
from envs.env import Env, Observation
from worldsim.core.camera import c2w_from_doom, intrinsics_from_fov
from worldsim.core.controller import CameraControllerConfig, CameraState
from worldsim.core.errors import WorldsimError, unknown_name

INSTALL_HINT = "DOOM needs ViZDoom: pip install 'worldsim[doom]' (vizdoom==1.3.2; see docs/environments.md)"
TICS_PER_S = 35.0
RENDER_SIZE = (120, 160)  # (height, width) of RES_160X120, ViZDoom's smallest
FRICTION = 0xE800 / 0x10000  # DOOM's ground friction: velocity kept per tic (p_mobj.c)
WALK_THRUST = 25 * 2048 / 0x10000  # forwardmove[0] x 2048, in map units per tic (p_user.c)
STRAFE_RATIO = 24 / 25  # sidemove[0] / forwardmove[0] (g_game.c)
DEFAULT_WAD = "freedoom2.wad"


@dataclass
class DoomConfig:
    """Which level, how time and the mouse map to DOOM, and the map-unit scale."""

    # A wad shipped with vizdoom (freedoom1.wad, freedoom2.wad) or a path to another IWAD. None:
    # DEFAULT_WAD, and where a model starts, the levels it was trained on (envs.record.world_config_for).
    wad: str | None = None
    map: str | None = None  # None: world seed s plays the wad's map s % (number of maps), in name order
    tics_per_step: int = 2
    mouse_deg_per_px: float = 0.25  # as the built-in world's controller
    look_pitch: bool = False
    monsters: bool = False  # off: nothing but the player moves, and the player cannot die
    metres_per_unit: float = 1.0 / 32.0  # the eye (41 units above the floor) at 1.28 m
    warmup_tics: int = 7  # the first tics of a level ignore input (6, and the first input tic is lost)

    def controller(self) -> CameraControllerConfig:
        """The camera controller that moves like the DOOM player on open floor (no walls, steps or
        view bob): DOOM's momentum and friction, walking thrust ``forwardmove[0]`` = 25 (x 2048 map
        units / 65536 per tic; strafing ``sidemove[0]`` = 24), ``tics_per_step`` ticks per frame,
        no vertical motion, and pitch only with ``look_pitch``. The recorder writes it into the
        data, so a model trained there moves its camera the same way."""
        terminal_units_per_tic = WALK_THRUST / (1.0 - FRICTION)
        return CameraControllerConfig(
            fps=TICS_PER_S / self.tics_per_step,
            move_speed_mps=terminal_units_per_tic * TICS_PER_S * self.metres_per_unit,
            vertical_speed_mps=0.0,
            mouse_deg_per_px=self.mouse_deg_per_px,
            max_pitch_deg=80.0 if self.look_pitch else 0.0,
            strafe_ratio=STRAFE_RATIO,
            momentum=FRICTION,
            ticks_per_frame=self.tics_per_step,
        )


def _import_vizdoom() -> Any:
    try:
        import vizdoom
    except ImportError as e:
        raise WorldsimError(INSTALL_HINT) from e
    return vizdoom


class DoomWorld(Env):
    """A DOOM level as a ground-truth world; see the module docstring. ``seed`` seeds the game's
    RNG and (with ``cfg.map`` None) picks the level."""

    key_names = KEY_NAMES
    has_depth = False

    def __init__(self, seed: int = 0, frame_size: tuple[int, int] = (64, 64), cfg: DoomConfig | None = None):
        vzd = _import_vizdoom()
        self.cfg = cfg = cfg or DoomConfig()
        if cfg.tics_per_step < 1:
            raise WorldsimError(f"tics_per_step must be >= 1, got {cfg.tics_per_step}")
        self.seed = int(seed)
        self.frame_size = (int(frame_size[0]), int(frame_size[1]))
        self.fps = TICS_PER_S / cfg.tics_per_step
        self._crop = _crop_box(self.frame_size)
        h, w = self.frame_size
        crop_h = self._crop[3] - self._crop[1]
        focal_render_px = (RENDER_SIZE[1] / 2) / math.tan(math.radians(90.0) / 2)
        self.intrinsics = intrinsics_from_fov(math.degrees(2 * math.atan(crop_h / 2 / focal_render_px)), h, w)
        self.game = game = vzd.DoomGame()
        wad_name = cfg.wad or DEFAULT_WAD
        shipped = os.path.join(vzd.__path__[0], wad_name)
        wad = shipped if os.path.exists(shipped) else os.path.abspath(wad_name)
        if not os.path.exists(wad):
            raise WorldsimError(
                f"no DOOM wad {wad_name!r}: give a path or one shipped with vizdoom (freedoom1.wad, freedoom2.wad)"
            )
        maps = wad_maps(wad)
        self.map = cfg.map or maps[self.seed % len(maps)]
        if self.map not in maps:  # ViZDoom would hang on a map the wad lacks
            raise unknown_name(f"map of {os.path.basename(wad)}", self.map, maps)
        game.set_doom_game_path(wad)
        game.set_doom_map(self.map)
        # The game process writes _vizdoom.ini and a _vizdoom/ folder into its working directory:
        # give it a temporary one (removed by close()).
        self._tmp = tempfile.mkdtemp(prefix="worldsim-vizdoom-")
        game.set_doom_config_path(f"{self._tmp}/_vizdoom.ini")
        game.set_screen_resolution(vzd.ScreenResolution.RES_160X120)
        game.set_screen_format(vzd.ScreenFormat.RGB24)
        game.set_window_visible(False)
        game.set_sound_enabled(False)
        game.set_render_hud(False)
        game.set_render_weapon(False)
        game.set_render_crosshair(False)
        game.set_render_messages(False)
        game.set_mode(vzd.Mode.PLAYER)
        game.set_episode_timeout(0)
        if not cfg.monsters:
            game.add_game_args("-nomonsters")
        b = vzd.Button
        # Order of KEY_NAMES, then the two mouse deltas.
        game.set_available_buttons(
            [b.MOVE_FORWARD, b.MOVE_LEFT, b.MOVE_BACKWARD, b.MOVE_RIGHT, b.JUMP, b.CROUCH, b.USE]
            + [b.TURN_LEFT_RIGHT_DELTA, b.LOOK_UP_DOWN_DELTA]
        )
        v = vzd.GameVariable
        game.set_available_game_variables(
            [v.CAMERA_POSITION_X, v.CAMERA_POSITION_Y, v.CAMERA_POSITION_Z, v.CAMERA_ANGLE, v.CAMERA_PITCH]
        )
        game.set_seed(self.seed)
        cwd = os.getcwd()
        try:
            os.chdir(self._tmp)
            game.init()
        except Exception as e:  # vizdoom raises its own types for a missing wad or map
            shutil.rmtree(self._tmp, ignore_errors=True)
            raise WorldsimError(f"ViZDoom could not start {wad} {self.map}: {e}") from e
        finally:
            os.chdir(cwd)
        self.step_count = 0
        self._frame = np.zeros((h, w, 3), np.uint8)
        self._c2w = np.eye(4, dtype=np.float32)
        self.state = CameraState()

    def reset(self, state: CameraState | None = None, night: bool = False) -> Observation:
        """Frame 0 at the level's start (the game's own spawn: ``state`` and ``night`` are not
        supported and raise ``WorldsimError``)."""
        if state is not None or night:
            raise WorldsimError("DOOM starts at the level's spawn: reset() takes no state or night")
        self.game.set_seed(self.seed)
        self.game.new_episode()
        if self.cfg.warmup_tics:
            self.game.advance_action(self.cfg.warmup_tics)
        self.step_count = 0
        return self._observe()

    def step(self, keys: np.ndarray, mouse: np.ndarray) -> Observation:
        """Apply ``tics_per_step`` tics of input; see the module docstring. ``keys (7,)`` multi-hot
        over :data:`KEY_NAMES`, ``mouse (dx, dy)`` pixels. Raises ``WorldsimError`` for another
        ``keys`` shape or after the level has ended (``info["episode_finished"]``)."""
        keys = np.asarray(keys)
        if keys.shape != (len(KEY_NAMES),):
            raise WorldsimError(f"keys must have shape ({len(KEY_NAMES)},), got {keys.shape}")
        if self.game.is_episode_finished():
            raise WorldsimError("the DOOM level has ended: call reset()")
        dx, dy = (float(x) for x in np.asarray(mouse, np.float64).reshape(2))
        # ViZDoom applies a delta button on every tic of the step: divide to turn dx * deg_per_px
        # per step. A positive LOOK_UP_DOWN_DELTA looks up; mouse dy > 0 looks down.
        per_tic = self.cfg.mouse_deg_per_px / self.cfg.tics_per_step
        turn_deg = dx * per_tic
        look_deg = -dy * per_tic if self.cfg.look_pitch else 0.0
        action = [float(k != 0) for k in keys] + [turn_deg, look_deg]
        self.game.make_action(action, self.cfg.tics_per_step)
        self.step_count += 1
        return self._observe()

    def _observe(self) -> Observation:
        state = self.game.get_state()
        finished = state is None  # the level ended: hold the last frame and pose
        if not finished:
            x, y, z, angle_deg, pitch_deg = state.game_variables
            self._c2w = c2w_from_doom(np.array([x, y, z]), angle_deg, pitch_deg, self.cfg.metres_per_unit)
            self.state = CameraState.from_c2w(self._c2w)
            self._frame = _resize(state.screen_buffer, self._crop, self.frame_size)
        depth = np.full(self.frame_size, np.nan, np.float32)
        info = {"episode_finished": finished, "map": self.map}
        return Observation(
            self._frame.copy(), depth, self._c2w.copy(), self.intrinsics.copy(), self.step_count / self.fps, info
        )

    def close(self) -> None:
        """Stop the game and remove its settings file."""
        self.game.close()
        shutil.rmtree(self._tmp, ignore_errors=True)


def wad_maps(path: str) -> list[str]:
    """Sorted map names (``MAPxx``, ``ExMy``) in a WAD's lump directory. Raises ``WorldsimError``
    for a file that is not a WAD or holds no map."""
    with open(path, "rb") as f:
        header = f.read(12)
        if len(header) < 12 or header[:4] not in (b"IWAD", b"PWAD"):
            raise WorldsimError(f"{path} is not a DOOM wad")
        num_lumps, dir_offset = struct.unpack("<ii", header[4:])
        f.seek(dir_offset)
        directory = f.read(16 * num_lumps)
    names = {directory[i + 8 : i + 16].rstrip(b"\0").decode("ascii", "replace") for i in range(0, len(directory), 16)}
    maps = sorted(n for n in names if re.fullmatch(r"MAP\d\d|E\dM\d", n))
    if not maps:
        raise WorldsimError(f"{path} holds no DOOM map")
    return maps


def _crop_box(frame_size: tuple[int, int]) -> tuple[int, int, int, int]:
    """The centred ``(left, top, right, bottom)`` of the 160x120 render with the aspect of ``frame_size``."""
    rh, rw = RENDER_SIZE
    h, w = frame_size
    if w * rh <= h * rw:  # narrower than 4:3: keep the full height
        cw = max(1, round(rh * w / h))
        left = (rw - cw) // 2
        return (left, 0, left + cw, rh)
    ch = max(1, round(rw * h / w))
    top = (rh - ch) // 2
    return (0, top, rw, top + ch)


def _resize(screen: np.ndarray, crop: tuple[int, int, int, int], frame_size: tuple[int, int]) -> np.ndarray:
    """Crop the ``(120, 160, 3)`` screen and area-resize it to ``frame_size`` (height, width)."""
    from PIL import Image  # installed with imageio

    image = Image.fromarray(np.ascontiguousarray(screen))
    h, w = frame_size
    return np.asarray(image.resize((w, h), Image.Resampling.BOX, box=crop), np.uint8)
