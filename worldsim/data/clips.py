"""Fixed-length training clips drawn from a rollout dataset, read lazily."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import Dataset

from worldsim.core.errors import WorldsimError
from worldsim.data.reader import RolloutDataset

CLIP_ARRAYS = ("frames", "c2w", "intrinsics", "keys", "mouse")


class ClipDataset(Dataset[dict[str, torch.Tensor]]):
    """Every window of ``clip_len`` consecutive frames (start stride ``stride``) of the chosen episodes.

    Item ``i`` is a fixed clip, so shuffling is the sampler's job and a data position can be
    saved and resumed exactly. Arrays come back as tensors: ``frames`` uint8 ``(T, H, W, 3)``,
    ``c2w`` ``(T, 4, 4)``, ``intrinsics`` ``(3, 3)``, ``keys`` uint8 ``(T, K)``, ``mouse`` ``(T, 2)``.
    """

    def __init__(
        self,
        root: str | Path | RolloutDataset,
        clip_len: int,
        stride: int = 1,
        episodes: Sequence[int] | None = None,
    ):
        self.data = root if isinstance(root, RolloutDataset) else RolloutDataset(root)
        self.data.require_nonempty()
        if clip_len < 1 or stride < 1:
            raise WorldsimError(f"clip_len and stride must be >= 1, got {clip_len}, {stride}")
        self.clip_len = clip_len
        chosen = range(len(self.data)) if episodes is None else episodes
        self.index: list[tuple[int, int]] = [
            (ep, start) for ep in chosen for start in range(0, self.data.episodes[ep].num_frames - clip_len + 1, stride)
        ]
        if not self.index:
            longest = max(e.num_frames for e in self.data.episodes)
            raise WorldsimError(
                f"no episode in {self.data.root} is long enough for clips of {clip_len} frames (longest: {longest})"
            )

    def __len__(self) -> int:
        return len(self.index)

    def __getitem__(self, i: int) -> dict[str, torch.Tensor]:
        ep, start = self.index[i]
        arrays = self.data.load_slice(ep, start, start + self.clip_len, CLIP_ARRAYS)
        return {k: torch.from_numpy(np.ascontiguousarray(v)) for k, v in arrays.items()}
