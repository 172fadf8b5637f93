"""Starts: the ground-truth context a session begins from, as arrays any engine takes.

A :class:`Start` is frames with their poses and the raw inputs that led through them, in rollout
order (``keys[t]`` took frame t to t+1; the last row is unused), exactly what
``Engine.reset(*start.arrays())`` reads. Starts from a recorded episode are made here; starts
from a live ground-truth world in ``envs.starts``.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from worldsim.core.errors import WorldsimError
from worldsim.data.reader import RolloutDataset


@dataclass(frozen=True)
class Start:
    """``frames (T, H, W, 3)`` uint8, ``c2w (T, 4, 4)`` float32, ``keys (T, K)`` uint8,
    ``mouse (T, 2)`` float32 pixels; ``seed`` the world's, when known."""

    frames: np.ndarray
    c2w: np.ndarray
    keys: np.ndarray
    mouse: np.ndarray
    seed: int | None = None

    def arrays(self) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
        """``(frames, c2w, keys, mouse)``: the arguments of ``Engine.reset``."""
        return self.frames, self.c2w, self.keys, self.mouse


def episode_start(
    dataset: str | Path,
    episode: int,
    num_frames: int,
    key_names: list[str],
    frame_size: tuple[int, int],
    start: int = 0,
) -> Start:
    """Frames ``[start, start + num_frames)`` of a recorded episode. Raises ``WorldsimError``
    when the dataset's keys or frame size differ from the caller's or the episode is too short."""
    ds = RolloutDataset(dataset)
    ds.require_nonempty()
    if not 0 <= episode < len(ds):
        raise WorldsimError(f"{dataset} has episodes 0..{len(ds) - 1}, not {episode}")
    if list(ds.meta.key_names) != list(key_names):
        raise WorldsimError(f"{dataset} records keys {ds.meta.key_names}, the checkpoint {key_names}")
    if tuple(ds.meta.frame_size) != tuple(frame_size):
        raise WorldsimError(f"{dataset} has {tuple(ds.meta.frame_size)} frames, the checkpoint {tuple(frame_size)}")
    a = ds.load_slice(episode, start, start + num_frames, ("frames", "c2w", "keys", "mouse"))
    if len(a["frames"]) < num_frames:
        raise WorldsimError(f"episode {episode} of {dataset} has too few frames after {start} for a context")
    return Start(a["frames"], a["c2w"], a["keys"], a["mouse"], ds.episodes[episode].seed)
