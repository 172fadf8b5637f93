"""The play loop: poll input, advance a frame source, show the frame, record what was shown.

A frame source is anything with ``key_names``, ``frame_size``, ``fps``, ``reset() -> frame``,
``step(keys, mouse) -> frame`` and the current ``c2w`` / ``intrinsics``: today the ground-truth
world, later the neural engine. Recordings are rollout datasets (``source = "human"``) so they
can be replayed through the world (``worldsim-record policy=replay``) or a model.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

import numpy as np

from worldsim.data.format import RolloutMeta
from worldsim.data.preview import write_png
from worldsim.data.writer import RolloutWriter
from worldsim.window import Window, WindowConfig


class FrameSource(Protocol):
    key_names: list[str]
    frame_size: tuple[int, int]
    fps: float
    c2w: np.ndarray
    intrinsics: np.ndarray
    name: str

    def reset(self) -> np.ndarray: ...

    def step(self, keys: np.ndarray, mouse: np.ndarray) -> np.ndarray: ...


@dataclass
class PlayLoopConfig:
    record: str | None = None  # dataset folder; recording starts at once when set (F9 toggles)
    screenshot_dir: str = "screenshots"
    max_steps: int = 0  # stop after this many frames (0 = until quit); for scripted checks
    window: WindowConfig = field(default_factory=WindowConfig)


class Recorder:
    """Rows of one episode being played; ``flush`` writes it atomically as the next episode."""

    def __init__(self, root: str, source: FrameSource):
        meta = RolloutMeta(
            env=source.name,
            fps=source.fps,
            frame_size=source.frame_size,
            key_names=list(source.key_names),
            source="human",
        )
        self.writer = RolloutWriter(root, meta)  # fails now, before play, if root is not writable
        self.source = source
        self.rows: dict[str, list[Any]] = {}

    @property
    def active(self) -> bool:
        return bool(self.rows)

    def start(self, frame: np.ndarray) -> None:
        self.rows = {"frames": [frame], "c2w": [self.source.c2w.copy()], "keys": [], "mouse": [], "t": [0.0]}
        self.t0 = time.perf_counter()

    def add(self, keys: np.ndarray, mouse: np.ndarray, frame: np.ndarray) -> None:
        r = self.rows
        r["keys"].append(keys.copy())
        r["mouse"].append(mouse.copy())
        r["frames"].append(frame)
        r["c2w"].append(self.source.c2w.copy())
        r["t"].append(np.float64(time.perf_counter() - self.t0))

    def flush(self) -> int | None:
        """Write the episode (if any frames beyond the first) and stop; returns its index."""
        r, self.rows = self.rows, {}
        if not r or len(r["frames"]) < 2:
            return None
        k = len(self.source.key_names)
        index = max(self.writer.finished, default=-1) + 1
        arrays = {
            "frames": np.stack(r["frames"]),
            "c2w": np.stack(r["c2w"]).astype(np.float32),
            "intrinsics": self.source.intrinsics.astype(np.float32),
            "keys": np.concatenate([np.stack(r["keys"]), np.zeros((1, k), np.uint8)]).astype(np.uint8),
            "mouse": np.concatenate([np.stack(r["mouse"]), np.zeros((1, 2), np.float32)]).astype(np.float32),
            "timestamp_s": np.asarray(r["t"], np.float64),
        }
        self.writer.write_episode(index, arrays, policy="human")
        return index


def play(source: FrameSource, cfg: PlayLoopConfig, window: Window) -> None:
    """Run until quit (or ``max_steps``); a recording in progress is always written out.

    The window is opened by the caller before the source is built, so a ground-truth world can
    draw in the window's GL context (on X11 a second, EGL context breaks the GLX window).
    """
    recorder = Recorder(cfg.record, source) if cfg.record else None
    window.bind_keys(list(source.key_names))
    print(window.help_text())
    frame = source.reset()
    if recorder:
        recorder.start(frame)
    steps = 0
    try:
        while True:
            keys, mouse, commands = window.poll()
            if "quit" in commands:
                break
            if "screenshot" in commands:
                Path(cfg.screenshot_dir).mkdir(parents=True, exist_ok=True)
                path = Path(cfg.screenshot_dir) / f"shot_{time.strftime('%Y%m%d_%H%M%S')}_{steps:06d}.png"
                write_png(path, window.screenshot())
                print(f"screenshot: {path}")
            if "record" in commands and recorder is None:
                print("recording is off: start play with loop.record=<dataset folder> to enable F9")
            elif "record" in commands and recorder is not None:
                if recorder.active:
                    print(f"recorded episode {recorder.flush()} -> {cfg.record}")
                else:
                    recorder.start(frame)
            if "help" in commands:
                print(window.help_text())
            frame = source.step(keys, mouse)
            if recorder and recorder.active:
                recorder.add(keys, mouse, frame)
            steps += 1
            window.show(frame, f"step {steps}" + (" | REC" if recorder and recorder.active else ""))
            if cfg.max_steps and steps >= cfg.max_steps:
                break
            window.tick()
    finally:
        if recorder and recorder.active:
            print(f"recorded episode {recorder.flush()} -> {cfg.record}")
        window.close()
