"""What every evaluation shares: ground truth for the engine's inputs, rollouts scored against it,
what counts as a dark frame, and the plots."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
from tqdm import tqdm

from worldsim.core.errors import WorldsimError
from worldsim.data.metrics import frame_means
from worldsim.inference.engine import Engine

DARK_MEAN = 60.0  # a frame whose mean pixel value (0-255) is below this is dark (night or inside an object)


def rollout_against(
    engine: Engine, arrays: dict[str, np.ndarray], horizon: int, desc: str | None = None, seed: int | None = None
) -> tuple[np.ndarray, np.ndarray]:
    """Reset on the first ``context`` frames (the noise restarted at ``seed``; None: the engine's
    own), then generate under the recorded inputs (a progress bar over chunks when ``desc`` is
    given). Returns (generated, ground truth) ``(horizon, H, W, 3)`` each; rollout order as in
    datasets."""
    n, k = engine.context_frames, engine.chunk_frames
    frames, keys, mouse = arrays["frames"], arrays["keys"], arrays["mouse"]
    if len(frames) < n + horizon:
        raise WorldsimError(f"an episode of {len(frames)} frames is too short for {n} context + {horizon} frames")
    engine.reset(frames[:n], arrays["c2w"][:n], keys[:n], mouse[:n], seed=seed)
    out = [
        engine.step(keys[n - 1 + s : n - 1 + s + k], mouse[n - 1 + s : n - 1 + s + k]).frames
        for s in tqdm(range(0, horizon, k), desc=desc, unit="chunk", disable=desc is None)
    ]
    return np.concatenate(out), frames[n : n + horizon]


def world_rollout(
    engine: Engine, seed: int, keys: np.ndarray, mouse: np.ndarray, world: Any = None
) -> dict[str, np.ndarray]:
    """Ground truth for raw inputs: the checkpoint's env and controller driven from world ``seed``;
    ``world`` is that env's config (:func:`envs.record.world_config_for`; None: the checkpoint's,
    for DOOM on the levels it was trained on), checked against the checkpoint's controller by
    whoever made it.

    Returns the episode arrays of :func:`envs.record.rollout` (frames ``(T, H, W, 3)`` uint8, c2w, ...),
    without depth.
    """
    from envs.record import rollout, world_config_for

    # The checkpoint's world and controller: the ground truth moves as the model was taught an input moves it.
    if world is None:
        world = world_config_for(engine.cfg.env, engine.cfg.controller, levels=engine.cfg.levels)
    return rollout(engine.cfg.env, seed, engine.frame_size, world, keys, mouse, save_depth=False)


def light_flips_followed(gen_means: np.ndarray, truth_means: np.ndarray, within: int = 2) -> tuple[int, int]:
    """How often the true frames turn dark or light (their mean crosses ``DARK_MEAN``), and how
    many of those turns the generated frames make too, within ``within`` frames. Unlike the
    per-frame agreement, one missed turn counts once, not for every frame until the next."""
    g = np.flatnonzero(np.diff(np.asarray(gen_means) < DARK_MEAN))
    t = np.flatnonzero(np.diff(np.asarray(truth_means) < DARK_MEAN))
    return len(t), int(sum(bool(np.any(np.abs(g - i) <= within)) for i in t))


def went_dark(generated: np.ndarray, truth: np.ndarray) -> bool:
    """Whether a generated frame is dark (mean below ``DARK_MEAN``) while no true frame is:
    spontaneous night, or the inside of an object the camera never entered."""
    return bool(frame_means(generated).min() < DARK_MEAN <= frame_means(truth).min())


def dark_frames(generated: np.ndarray, truth: np.ndarray) -> int:
    """Frames ``(T, H, W, 3)`` that are dark (mean below ``DARK_MEAN``) where the true frame at
    the same index is not: the frames a run went dark for, counted where :func:`went_dark`
    counts nothing because the truth is dark somewhere else in the run (a night stretch)."""
    return int(np.sum((frame_means(generated) < DARK_MEAN) & (frame_means(truth) >= DARK_MEAN)))


def plot(
    out: Path, name: str, ylabel: str, series: dict[str, list[float]], xlabel: str = "frame after context"
) -> None:
    """``series`` (label -> values by frame) as lines in ``out/name`` (PNG)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 3.5), dpi=100)
    for label, ys in series.items():
        ax.plot(np.arange(1, len(ys) + 1), ys, label=label)
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    fig.savefig(out / name)
    plt.close(fig)
