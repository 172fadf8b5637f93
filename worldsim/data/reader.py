"""Reading rollout datasets back, lazily, with clear errors for damaged files."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
from safetensors import SafetensorError, safe_open

from worldsim.core.errors import WorldsimError
from worldsim.core.validate import check_c2w, check_keys, check_mouse
from worldsim.data.format import INDEX_FILE, REQUIRED_ARRAYS, EpisodeInfo, RolloutMeta, read_meta


class RolloutDataset:
    """A rollout dataset folder: ``meta``, ``episodes`` (index lines) and per-episode reads."""

    def __init__(self, root: str | Path):
        self.root = Path(root)
        self.meta: RolloutMeta = read_meta(self.root)
        index = self.root / INDEX_FILE
        self.episodes: list[EpisodeInfo] = []
        if index.exists():
            for n, line in enumerate(index.read_text().splitlines(), 1):
                if not line.strip():
                    continue
                try:
                    self.episodes.append(EpisodeInfo.from_dict(json.loads(line)))
                except (json.JSONDecodeError, TypeError, KeyError, ValueError) as e:
                    raise WorldsimError(f"{index}:{n}: damaged index line ({e})") from e

    def __len__(self) -> int:
        return len(self.episodes)

    def require_nonempty(self) -> None:
        """Raise ``WorldsimError`` "dataset <root> has no finished episodes" if the index is empty."""
        if not self.episodes:
            raise WorldsimError(f"dataset {self.root} has no finished episodes")

    def path(self, i: int) -> Path:
        """Path of episode ``i``'s safetensors file (``i`` is a position in ``episodes``)."""
        return self.root / self.episodes[i].file

    def load(self, i: int, names: tuple[str, ...] | None = None) -> dict[str, np.ndarray]:
        """All (or the named) arrays of episode ``i`` (position in ``episodes``)."""
        return self.load_slice(i, 0, self.episodes[i].num_frames, names)

    def load_slice(self, i: int, start: int, stop: int, names: tuple[str, ...] | None = None) -> dict[str, np.ndarray]:
        """Frames ``[start, stop)`` of episode ``i``; reads only those rows from disk."""
        path = self.path(i)
        if not path.is_file():
            raise WorldsimError(f"episode file {path} is missing")
        out: dict[str, np.ndarray] = {}
        try:
            with safe_open(str(path), framework="numpy") as f:
                have = set(f.keys())
                missing = [k for k in REQUIRED_ARRAYS if k not in have]
                if missing:
                    raise WorldsimError(f"episode file {path} lacks arrays {missing}")
                for name in names or tuple(sorted(have)):
                    if name not in have:
                        raise WorldsimError(f"episode file {path} has no array {name!r}")
                    sl = f.get_slice(name)
                    out[name] = sl[:] if name == "intrinsics" else sl[start:stop]
        except SafetensorError as e:
            raise WorldsimError(f"episode file {path} is corrupt or truncated ({e})") from e
        except (OSError, ValueError) as e:  # torn headers surface as these on some versions
            raise WorldsimError(f"episode file {path} is corrupt or truncated ({e})") from e
        _check_values(path, out, len(self.meta.key_names))
        n = self.episodes[i].num_frames
        if "frames" in out and len(out["frames"]) != min(stop, n) - start:
            raise WorldsimError(f"episode file {path} holds fewer frames than episodes.jsonl says ({n})")
        return out

    def verify(self) -> None:
        """Open every episode fully; raises WorldsimError naming the first damaged file."""
        for i in range(len(self)):
            arrays = self.load(i)
            have, want = arrays["frames"].shape[0], self.episodes[i].num_frames
            if have != want:
                raise WorldsimError(f"episode file {self.path(i)} has {have} frames, episodes.jsonl says {want}")


def _check_values(path: Path, arrays: dict[str, np.ndarray], num_keys: int) -> None:
    """The loaded rows' keys, mouse and poses hold what the writer accepts (a file written by
    another tool, or damaged in place, must not feed NaN poses or key 255 to training)."""
    where = f"episode file {path}: array"
    if "keys" in arrays:
        check_keys(f"{where} 'keys'", arrays["keys"], num_keys)
    if "mouse" in arrays:
        check_mouse(f"{where} 'mouse'", arrays["mouse"])
    if "c2w" in arrays:
        check_c2w(f"{where} 'c2w'", arrays["c2w"])
