"""Atomic writer for rollout datasets: an interrupted run keeps every finished episode."""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
from safetensors.numpy import save

from worldsim.core.atomic import write_bytes
from worldsim.core.errors import WorldsimError
from worldsim.core.validate import check_c2w, check_frames, check_keys, check_mouse
from worldsim.data.format import (
    INDEX_FILE,
    META_FILE,
    REQUIRED_ARRAYS,
    EpisodeInfo,
    RolloutMeta,
    episode_filename,
    read_meta,
)


class RolloutWriter:
    """Writes ``meta.json``, then one episode at a time (temp file + rename, then index line).

    Opening an existing dataset checks that its meta matches and resumes after the episodes it
    already lists; ``finished`` holds their indices so callers can skip them.
    """

    def __init__(self, root: str | Path, meta: RolloutMeta):
        self.root = Path(root)
        self.meta = meta
        try:
            (self.root / "episodes").mkdir(parents=True, exist_ok=True)
        except OSError as e:
            raise WorldsimError(f"cannot create dataset folder {self.root}: {e.strerror}") from e
        if not os.access(self.root, os.W_OK):
            raise WorldsimError(f"dataset folder {self.root} is not writable")
        meta_path = self.root / META_FILE
        if meta_path.exists():
            old = read_meta(self.root)
            if old != meta:
                raise WorldsimError(
                    f"{self.root} already holds a dataset with different settings "
                    f"({_diff(old, meta)}); choose another out= or the same settings"
                )
        else:
            write_bytes(meta_path, meta.to_json().encode())
        self.episodes: list[EpisodeInfo] = []
        index_path = self.root / INDEX_FILE
        if index_path.exists():
            for line in index_path.read_text().splitlines():
                if line.strip():
                    info = EpisodeInfo.from_dict(json.loads(line))
                    if (self.root / info.file).is_file():
                        self.episodes.append(info)
        # Leftover temp files are episodes that an interruption cut short.
        for pattern in ("*.tmp", ".*.tmp-*"):
            for tmp in (self.root / "episodes").glob(pattern):
                tmp.unlink()

    @property
    def finished(self) -> set[int]:
        """Indices of episodes already written (resuming skips them)."""
        return {e.index for e in self.episodes}

    def write_episode(
        self, index: int, arrays: dict[str, np.ndarray], seed: int | None = None, policy: str | None = None
    ) -> EpisodeInfo:
        """Validate one episode's arrays against the meta (shapes and dtypes; at least one frame,
        keys 0/1, mouse finite, c2w finite rigid poses) and write it atomically."""
        self._validate(arrays)
        rel = episode_filename(index)
        path = self.root / rel
        write_bytes(path, save({k: np.ascontiguousarray(v) for k, v in arrays.items()}))
        info = EpisodeInfo(index=index, file=rel, num_frames=int(arrays["frames"].shape[0]), seed=seed, policy=policy)
        self.episodes = [e for e in self.episodes if e.index != index] + [info]
        self.episodes.sort(key=lambda e: e.index)
        lines = "".join(json.dumps(e.__dict__, sort_keys=True) + "\n" for e in self.episodes)
        write_bytes(self.root / INDEX_FILE, lines.encode())
        return info

    def _validate(self, arrays: dict[str, np.ndarray]) -> None:
        missing = [k for k in REQUIRED_ARRAYS if k not in arrays]
        if missing:
            raise WorldsimError(f"episode is missing arrays {missing}")
        t = arrays["frames"].shape[0]
        h, w = self.meta.frame_size
        k = len(self.meta.key_names)
        expected: dict[str, tuple[tuple[int, ...], np.dtype]] = {
            "frames": ((t, h, w, 3), np.dtype(np.uint8)),
            "c2w": ((t, 4, 4), np.dtype(np.float32)),
            "intrinsics": ((3, 3), np.dtype(np.float32)),
            "keys": ((t, k), np.dtype(np.uint8)),
            "mouse": ((t, 2), np.dtype(np.float32)),
            "timestamp_s": ((t,), np.dtype(np.float64)),
        }
        if "depth" in arrays:
            expected["depth"] = ((t, h, w), arrays["depth"].dtype)
        for name, (shape, dtype) in expected.items():
            a = arrays[name]
            if a.shape != shape or a.dtype != dtype:
                raise WorldsimError(f"episode array {name!r} is {a.dtype}{a.shape}, expected {dtype}{shape}")
        # Values, not only shapes: a reader, a replay and training would all stop on (or learn) them.
        check_frames("episode array 'frames'", arrays["frames"], (h, w))
        check_keys("episode array 'keys'", arrays["keys"], k, t)
        check_mouse("episode array 'mouse'", arrays["mouse"], t)
        check_c2w("episode array 'c2w'", arrays["c2w"], t)


def _diff(a: RolloutMeta, b: RolloutMeta) -> str:
    da, db = a.__dict__, b.__dict__
    return ", ".join(f"{k}: {da[k]!r} vs {db[k]!r}" for k in da if da[k] != db[k])
