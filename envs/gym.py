"""Gymnasium environments over the ground-truth worlds: ``gymnasium.make("worldsim/Builtin-v1")``.

Every world in :data:`envs.ENV_REGISTRY` is registered under its versioned id with
:class:`WorldEnv` as entry point (the native :func:`envs.make_env` stays the thin API underneath;
there is one registry). Spaces, shared with ``worldsim/WorldModel-v1``:

- action ``Dict(keys=MultiBinary(K), mouse=Box(-MAX_MOUSE_PX, MAX_MOUSE_PX, (2,)))``: keys held
  over the world's ``key_names``, mouse ``(dx, dy)`` pixels (dx > 0 turns right, dy > 0 looks down).
  The mouse bound is the range ``action_space.sample()`` draws from; larger values are accepted.
- observation ``Dict(frame=Box(0, 255, (H, W, 3), uint8), c2w=Box(-inf, inf, (4, 4), float32))``.

One ``step`` is one world tick (``1 / fps`` s). Rewards are 0 (these are worlds, not tasks);
``terminated`` is true when the world's episode ends (a DOOM level exited). ``info`` holds
``depth`` (H, W) float32 metres (only for worlds that have it: not DOOM), ``intrinsics`` (3, 3), ``time_s``
and ``timings`` ({"render_s": seconds of the world's step}), plus the world's own info. Timings are
wall-clock measurements, so with them ``info`` is not deterministic, which Gymnasium's
``check_env`` requires: ``timings=False`` leaves them out.
``reset(seed=s)`` rebuilds the world as world ``s`` when ``s`` differs from the current one (the
seed is the world's layout, as in ``worldsim-record``); ``reset()`` restarts the same world.
"""

from __future__ import annotations

import time
from typing import Any

import gymnasium
import numpy as np
from gymnasium import spaces

from envs import ENV_REGISTRY, make_env
from envs.env import Env, Observation
from worldsim.core.errors import WorldsimError, unknown_name

NAMESPACE = "worldsim"
MAX_MOUSE_PX = 128.0
RENDER_MODES = ["rgb_array", "human"]


def register_gym_envs() -> None:
    """Register every world of :data:`envs.ENV_REGISTRY` with Gymnasium (idempotent)."""
    for name, entry in ENV_REGISTRY.items():
        if entry.gym_id not in gymnasium.registry:
            gymnasium.register(id=entry.gym_id, entry_point="envs.gym:WorldEnv", kwargs={"name": name})


def registered_ids() -> list[str]:
    """Sorted Gymnasium ids in the ``worldsim/`` namespace (worlds and the world model)."""
    return sorted(i for i in gymnasium.registry if i.startswith(f"{NAMESPACE}/"))


def make(env_id: str, **kwargs: Any) -> gymnasium.Env:
    """``gymnasium.make(env_id, **kwargs)``, but an unknown ``worldsim/`` id raises a one-line
    ``WorldsimError`` listing the registered ones (Gymnasium's own error suggests one name)."""
    if env_id not in gymnasium.registry:
        raise unknown_name("gymnasium id", env_id, registered_ids())
    return gymnasium.make(env_id, **kwargs)


def action_space(key_names: list[str]) -> spaces.Dict:
    """``Dict(keys=MultiBinary(K), mouse=Box(2))`` over ``key_names``."""
    return spaces.Dict(
        {
            "keys": spaces.MultiBinary(len(key_names)),
            "mouse": spaces.Box(-MAX_MOUSE_PX, MAX_MOUSE_PX, (2,), np.float32),
        }
    )


def observation_space(frame_size: tuple[int, int]) -> spaces.Dict:
    """``Dict(frame=Box uint8 (H, W, 3), c2w=Box float32 (4, 4))``."""
    h, w = frame_size
    return spaces.Dict(
        {
            "frame": spaces.Box(0, 255, (h, w, 3), np.uint8),
            "c2w": spaces.Box(-np.inf, np.inf, (4, 4), np.float32),
        }
    )


def split_action(action: Any, num_keys: int) -> tuple[np.ndarray, np.ndarray]:
    """An action of :func:`action_space` -> ``keys (K,)`` uint8 and ``mouse (2,)`` float32.
    Raises ``WorldsimError`` for anything else."""
    if not isinstance(action, dict) or set(action) != {"keys", "mouse"}:
        got = sorted(action) if isinstance(action, dict) else type(action).__name__
        raise WorldsimError(f"an action is a dict with 'keys' ({num_keys},) and 'mouse' (2,), got {got}")
    keys, mouse = np.asarray(action["keys"]), np.asarray(action["mouse"], np.float32)
    if keys.shape != (num_keys,) or mouse.shape != (2,):
        raise WorldsimError(f"action keys must be ({num_keys},) and mouse (2,), got {keys.shape} and {mouse.shape}")
    return (keys != 0).astype(np.uint8), mouse


def check_render_mode(render_mode: str | None) -> None:
    """Raise ``WorldsimError`` unless ``render_mode`` is None or one of :data:`RENDER_MODES`."""
    if render_mode is not None and render_mode not in RENDER_MODES:
        raise unknown_name("render_mode", render_mode, RENDER_MODES)


class WorldEnv(gymnasium.Env):
    """A registered ground-truth world as a Gymnasium env; see the module docstring.

    ``name`` is the world (``envs.available_envs()``), ``seed`` its first world, ``frame_size``
    (height, width) or an int, ``timings`` whether ``info`` has them; other keyword arguments go to
    the world's factory.
    """

    metadata = {"render_modes": RENDER_MODES, "render_fps": 15}

    def __init__(
        self,
        name: str = "builtin",
        seed: int = 0,
        frame_size: Any = (64, 64),
        render_mode: str | None = None,
        timings: bool = True,
        **world_kwargs: Any,
    ):
        check_render_mode(render_mode)
        self.name, self.render_mode, self.timings = name, render_mode, timings
        self._frame_size, self._world_kwargs = frame_size, world_kwargs
        self.world_seed = int(seed)
        self.world: Env = make_env(name, seed=self.world_seed, frame_size=frame_size, **world_kwargs)
        self._closed = False
        self.metadata = {**self.metadata, "render_fps": self.world.fps}
        self.action_space = action_space(list(self.world.key_names))
        self.observation_space = observation_space(self.world.frame_size)
        self._last: Observation | None = None
        self._viewer: Any = None

    def reset(self, *, seed: int | None = None, options: dict[str, Any] | None = None) -> tuple[dict, dict]:
        """Frame 0 of world ``seed`` (default: the current world) at its spawn pose. ``options``
        takes no keys today; any given raises ``WorldsimError``."""
        super().reset(seed=seed)
        if options:
            raise WorldsimError(f"{self.name} takes no reset options, got {sorted(options)}")
        if seed is not None and int(seed) != self.world_seed:
            self.world.close()
            self.world_seed = int(seed)
            self.world = make_env(self.name, seed=self.world_seed, frame_size=self._frame_size, **self._world_kwargs)
        t0 = time.perf_counter()
        obs = self.world.reset()
        observation, _, _, _, info = self._emit(obs, time.perf_counter() - t0)
        return observation, info

    def step(self, action: dict[str, Any]) -> tuple[dict, float, bool, bool, dict]:
        """Apply one tick of ``action`` (see :func:`split_action`) -> the Gymnasium 5-tuple."""
        if self._last is None:
            raise WorldsimError("call reset() before step()")
        keys, mouse = split_action(action, len(self.world.key_names))
        t0 = time.perf_counter()
        obs = self.world.step(keys, mouse)
        return self._emit(obs, time.perf_counter() - t0)

    def _emit(self, obs: Observation, render_s: float) -> tuple[dict, float, bool, bool, dict]:
        self._last = obs
        if self.render_mode == "human":
            self.render()
        info = {"intrinsics": obs.intrinsics, "time_s": obs.time_s, **obs.info}
        if self.world.has_depth:
            info["depth"] = obs.depth
        if self.timings:
            info["timings"] = {"render_s": render_s}
        terminated = bool(obs.info.get("episode_finished", False))
        return {"frame": obs.frame, "c2w": obs.c2w.astype(np.float32)}, 0.0, terminated, False, info

    def render(self) -> np.ndarray | None:
        """``rgb_array``: the latest frame ``(H, W, 3)`` uint8; ``human``: show it in a window."""
        if self._last is None or self.render_mode is None:
            return None
        if self.render_mode == "rgb_array":
            return self._last.frame.copy()
        if self._viewer is None:
            from envs.viewer import FrameViewer

            self._viewer = FrameViewer(f"worldsim {self.name}", self.world.frame_size, self.metadata["render_fps"])
        self._viewer.show(self._last.frame)
        return None

    def close(self) -> None:
        """Release the world and the window, if any; a second call does nothing."""
        if self._viewer is not None:
            self._viewer.close()
            self._viewer = None
        if not self._closed:
            self.world.close()
            self._closed = True
