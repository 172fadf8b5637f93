"""Starts from a live ground-truth world (``worldsim.data.starts`` has those from recordings)."""

from __future__ import annotations

from typing import Any

import numpy as np

from envs import make_env
from envs.builtin import BuiltinWorldConfig
from envs.doom import DoomConfig
from worldsim.core.errors import WorldsimError
from worldsim.data.starts import Start


def world_start(
    seed: int,
    num_frames: int,
    key_names: list[str],
    frame_size: tuple[int, int],
    env: str = "builtin",
    gl_context: Any = None,
    *,
    world: BuiltinWorldConfig | DoomConfig | None = None,
) -> Start:
    """The spawn view of world ``seed`` held still for ``num_frames`` frames (zero keys and
    mouse), drawn in ``gl_context`` when given (under X11 a world must share the window's GL
    context). ``world`` is the world's config (None: its defaults); for DOOM it picks the levels
    (``envs.record.world_config_for`` gives a checkpoint's). Raises ``WorldsimError`` when the
    world's keys differ from ``key_names``."""
    kwargs: dict[str, Any] = {} if gl_context is None else {"gl_context": gl_context}  # only GL worlds take one
    if world is not None:
        kwargs["cfg"] = world
    live = make_env(env, seed=seed, frame_size=frame_size, **kwargs)
    try:
        if list(live.key_names) != list(key_names):
            raise WorldsimError(f"world {env!r} has keys {live.key_names}, the checkpoint {key_names}")
        keys = np.zeros((num_frames, len(key_names)), np.uint8)
        mouse = np.zeros((num_frames, 2), np.float32)
        obs = [live.reset()] + [live.step(keys[i], mouse[i]) for i in range(num_frames - 1)]
    finally:
        live.close()
    frames = np.stack([o.frame for o in obs])
    return Start(frames, np.stack([o.c2w for o in obs]).astype(np.float32), keys, mouse, seed)


def engine_world_start(engine: Any, seed: int, doom: DoomConfig | None = None) -> Start:
    """:func:`world_start` for an ``Engine``: world ``seed`` of the checkpoint's world, with its
    controller's motion and, for DOOM, its levels unless ``doom`` sets a wad or a map
    (:func:`envs.record.world_config_for`); as many frames as the engine's context."""
    from envs.record import world_config_for

    world = world_config_for(engine.cfg.env, engine.cfg.controller, doom, engine.cfg.levels)
    return world_start(seed, engine.context_frames, engine.key_names, engine.frame_size, engine.cfg.env, world=world)
