"""Training data for the codec stage: random single frames from one or more rollout datasets."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from worldsim.core.errors import WorldsimError
from worldsim.data.format import META_FILE
from worldsim.data.reader import RolloutDataset


def open_datasets(path: str | Path) -> list[RolloutDataset]:
    """A dataset folder, or a folder of dataset folders (e.g. ``<recipe out>/train``)."""
    root = Path(path)
    if not root.is_dir():
        raise WorldsimError(f"data folder {root} does not exist")
    if (root / META_FILE).is_file():
        folders = [root]
    else:
        folders = sorted(p.parent for p in root.glob(f"*/{META_FILE}"))
    if not folders:
        raise WorldsimError(f"{root} holds no rollout dataset (no {META_FILE} in it or its subfolders)")
    sets = [RolloutDataset(f) for f in folders]
    sizes = {tuple(d.meta.frame_size) for d in sets}
    if len(sizes) > 1:
        raise WorldsimError(f"datasets under {root} mix frame sizes {sorted(sizes)}")
    if not any(len(d) for d in sets):
        raise WorldsimError(f"datasets under {root} have no finished episodes")
    return sets


def input_meaning(sets: list[RolloutDataset]) -> RolloutDataset:
    """The first of ``sets``, once every one was recorded in the same env with the same camera
    controller (what an input does: one model learns one meaning of an input); ``WorldsimError``
    naming the two that differ otherwise."""
    first = sets[0]
    meta = first.meta
    for ds in sets[1:]:
        if (ds.meta.env, ds.meta.controller()) != (meta.env, meta.controller()):
            raise WorldsimError(
                f"{ds.root} was recorded in env {ds.meta.env!r} with {ds.meta.controller()}, "
                f"{first.root} in {meta.env!r} with {meta.controller()}: one model learns one meaning of an input"
            )
    return first


class FrameSampler:
    """Batch ``i`` of run seed ``s`` is a pure function of ``(s, i)``: resuming at step i is exact."""

    def __init__(self, path: str | Path):
        self.sets = open_datasets(path)
        self.frame_size = self.sets[0].meta.frame_size
        self.index = np.array(
            [
                (d, e, t)
                for d, ds in enumerate(self.sets)
                for e, info in enumerate(ds.episodes)
                for t in range(info.num_frames)
            ],
            dtype=np.int64,
        )

    def __len__(self) -> int:
        return len(self.index)

    def batch(self, seed: int, step: int, batch_size: int) -> torch.Tensor:
        """``(B, H, W, 3)`` uint8."""
        g = torch.Generator().manual_seed(seed * 1_000_003 + step)
        picks = torch.randint(len(self.index), (batch_size,), generator=g).numpy()
        frames = [self.sets[d].load_slice(e, t, t + 1, ("frames",))["frames"][0] for d, e, t in self.index[picks]]
        return torch.from_numpy(np.stack(frames))
