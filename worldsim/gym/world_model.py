"""``gymnasium.make("worldsim/WorldModel-v1", checkpoint=...)``: the world model as an environment.

The reference idea is DIAMOND's ``WorldModelEnv``: the model has the real env's contract, so an
agent, a data collector or a vector of envs takes it like a ground-truth world. Spaces are the
worlds' (:mod:`envs.gym`): action ``Dict(keys=MultiBinary(K), mouse=Box(2))``, observation
``Dict(frame=(H, W, 3) uint8, c2w=(4, 4) float32)``.

**One step is one chunk.** The engine generates ``chunk_frames`` frames at once and needs all of
their inputs first. Stepping one frame per env step would either lag every input by a chunk or
ignore the inputs of the buffered frames; instead the step's action is held for the whole chunk
(action repeat = ``chunk_frames``, as Atari's frame skip; the mouse turns ``chunk_frames`` times
``dx``). The observation is the chunk's last frame and pose; ``info["frames"] (k, H, W, 3)`` and
``info["c2w_chunk"] (k, 4, 4)`` hold all of them, ``info["timings"]`` the chunk's seconds by stage,
``info["intrinsics"]`` the checkpoint's camera. The model predicts no depth, so ``info`` has none.
Timings are wall-clock, so ``timings=False`` leaves them out for a deterministic ``info`` (what
Gymnasium's ``check_env`` requires).
Rewards are 0 and episodes never end by themselves (wrap in ``TimeLimit`` or pass
``max_episode_steps`` to ``gymnasium.make``).

``reset(seed=s, options=...)`` starts from ground truth: by default the spawn view of world ``s``
held still (``envs.starts.engine_world_start`` in the checkpoint's world), or with
``options={"dataset": path, "episode": i, "start_frame": t}`` frames of a recorded episode
(``worldsim.data.starts.episode_start``). ``options["world_seed"]`` picks the world apart from
``seed``; ``seed`` also restarts the engine's noise, so the same seed and actions replay the same
frames.
"""

from __future__ import annotations

from dataclasses import asdict
from typing import Any

import gymnasium
import numpy as np

from envs.doom import DoomConfig
from envs.gym import RENDER_MODES, action_space, check_render_mode, observation_space, split_action
from envs.starts import engine_world_start
from worldsim import load_engine
from worldsim.core.errors import WorldsimError
from worldsim.data.starts import Start, episode_start

START_OPTIONS = ("dataset", "episode", "start_frame", "world_seed")


class WorldModelEnv(gymnasium.Env):
    """A checkpoint folder played as a Gymnasium env; see the module docstring.

    ``device`` and further keyword arguments (``seed``, ``sampler``, ``bf16``, ...) go to
    :func:`worldsim.load_engine`; ``world_seed`` and ``dataset``/``episode``/``start_frame`` are
    the default start that ``reset`` options override; ``timings`` whether ``info`` has them;
    ``doom`` (an ``envs.doom.DoomConfig``) picks a DOOM checkpoint's levels (None: those it was
    trained on, its ``levels``).
    """

    metadata = {"render_modes": RENDER_MODES, "render_fps": 15}

    def __init__(
        self,
        checkpoint: str,
        device: str = "cpu",
        render_mode: str | None = None,
        world_seed: int = 0,
        dataset: str | None = None,
        episode: int = 0,
        start_frame: int = 0,
        timings: bool = True,
        doom: DoomConfig | None = None,
        **engine_kwargs: Any,
    ):
        check_render_mode(render_mode)
        self.render_mode, self.timings = render_mode, timings
        self.engine = load_engine(checkpoint, device=device, **engine_kwargs)
        self.doom = doom
        self.metadata = {**self.metadata, "render_fps": self.engine.fps}
        self.action_space = action_space(self.engine.key_names)
        self.observation_space = observation_space(self.engine.frame_size)
        self._defaults: dict[str, Any] = {
            "dataset": dataset,
            "episode": episode,
            "start_frame": start_frame,
            "world_seed": world_seed,
        }
        self._frame: np.ndarray | None = None
        self._viewer: Any = None

    def _start(self, options: dict[str, Any], seed: int | None) -> Start:
        """The ground truth to start from: ``options`` over the constructor's defaults; the world
        is ``options["world_seed"]``, else ``seed``, else the constructor's ``world_seed``."""
        eng, opts = self.engine, {**self._defaults, **options}
        if opts["dataset"] is not None:
            return episode_start(
                opts["dataset"],
                int(opts["episode"]),
                eng.context_frames,
                eng.key_names,
                eng.frame_size,
                start=int(opts["start_frame"]),
            )
        world_seed = options.get("world_seed", opts["world_seed"] if seed is None else seed)
        return engine_world_start(eng, int(world_seed), self.doom)  # the truth's levels and motion

    def reset(self, *, seed: int | None = None, options: dict[str, Any] | None = None) -> tuple[dict, dict]:
        """Start from ground truth (see the module docstring) -> the context's last frame and pose.
        Raises ``WorldsimError`` for an unknown option or a start that does not fit the checkpoint."""
        super().reset(seed=seed)
        unknown = sorted(set(options or {}) - set(START_OPTIONS))
        if unknown:
            raise WorldsimError(f"unknown reset options {unknown}; valid: {', '.join(START_OPTIONS)}")
        start = self._start(options or {}, seed)
        self.engine.reset(*start.arrays(), seed=seed)
        self._frame = start.frames[-1]
        obs = {"frame": start.frames[-1].copy(), "c2w": start.c2w[-1].astype(np.float32)}
        info = {"intrinsics": self.engine.intrinsics.copy(), "world_seed": start.seed}
        if self.render_mode == "human":
            self.render()
        return obs, info

    def step(self, action: dict[str, Any]) -> tuple[dict, float, bool, bool, dict]:
        """Generate one chunk with ``action`` held on every frame -> the Gymnasium 5-tuple."""
        if self._frame is None:
            raise WorldsimError("call reset() before step()")
        keys, mouse = split_action(action, len(self.engine.key_names))
        k = self.engine.chunk_frames
        chunk = self.engine.step(np.repeat(keys[None], k, axis=0), np.repeat(mouse[None], k, axis=0))
        self._frame = chunk.frames[-1]
        obs = {"frame": chunk.frames[-1].copy(), "c2w": chunk.c2w[-1].astype(np.float32)}
        info = {
            "frames": chunk.frames,
            "c2w_chunk": chunk.c2w,
            "intrinsics": self.engine.intrinsics.copy(),
        }
        if self.timings:
            info["timings"] = asdict(chunk.timings)
        if self.render_mode == "human":
            self.render()
        return obs, 0.0, False, False, info

    def render(self) -> np.ndarray | None:
        """``rgb_array``: the latest frame ``(H, W, 3)`` uint8; ``human``: show it in a window."""
        if self._frame is None or self.render_mode is None:
            return None
        if self.render_mode == "rgb_array":
            return self._frame.copy()
        if self._viewer is None:
            from envs.viewer import FrameViewer

            self._viewer = FrameViewer("worldsim world model", self.engine.frame_size, self.metadata["render_fps"])
        self._viewer.show(self._frame)
        return None

    def close(self) -> None:
        """Close the window, if any (the engine holds no external resources)."""
        if self._viewer is not None:
            self._viewer.close()
            self._viewer = None
