"""Play worldsim in a window: ``python play.py [key=value ...]`` (hydra overrides).

Today the frames come from the ground-truth built-in world (no model is shipped yet);
``record=DIR`` writes what you play as a rollout dataset. No display: run under
``xvfb-run`` or record headless with ``worldsim-record``.
"""

from __future__ import annotations

import sys
from dataclasses import dataclass, field
from typing import Any

import hydra
import numpy as np
from hydra.core.config_store import ConfigStore
from omegaconf import OmegaConf

from envs import make_env
from envs.builtin import BuiltinWorldConfig
from worldsim.config import CONFIG_DIR
from worldsim.data.format import parse_frame_size
from worldsim.errors import clean_errors
from worldsim.play_loop import PlayLoopConfig, play
from worldsim.window import Window


@dataclass
class PlayConfig:
    env: str = "builtin"
    seed: int = 0
    frame_size: Any = field(default_factory=lambda: [64, 64])
    world: BuiltinWorldConfig = field(default_factory=BuiltinWorldConfig)
    loop: PlayLoopConfig = field(default_factory=PlayLoopConfig)


ConfigStore.instance().store(name="play_schema", node=PlayConfig)


class EnvSource:
    """A ground-truth world as a frame source for the play loop."""

    def __init__(self, cfg: PlayConfig, window: Window):
        # The world draws in the window's GL context: one context, no switching between two.
        frame_size = parse_frame_size(cfg.frame_size)
        self.env = make_env(cfg.env, seed=cfg.seed, frame_size=frame_size, cfg=cfg.world, gl_context=window.ctx)
        self.name, self.key_names, self.fps = cfg.env, list(self.env.key_names), self.env.fps
        self.frame_size, self.intrinsics = self.env.frame_size, self.env.intrinsics
        self.c2w = np.eye(4, dtype=np.float32)

    def reset(self) -> np.ndarray:
        obs = self.env.reset()
        self.c2w = obs.c2w
        return obs.frame

    def step(self, keys: np.ndarray, mouse: np.ndarray) -> np.ndarray:
        obs = self.env.step(keys, mouse)
        self.c2w = obs.c2w
        return obs.frame


@hydra.main(version_base=None, config_path=str(CONFIG_DIR), config_name="play")
@clean_errors
def main(cfg: Any) -> None:
    pc: PlayConfig = OmegaConf.to_object(cfg)  # type: ignore[assignment]
    window = Window(pc.loop.window, parse_frame_size(pc.frame_size), title=f"worldsim: {pc.env}")
    source = EnvSource(pc, window)
    try:
        play(source, pc.loop, window)
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
    finally:
        source.env.close()


if __name__ == "__main__":
    main()
