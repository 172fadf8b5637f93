"""The rollout dataset format (design §5): typed, self-validating metadata.

On disk::

    meta.json                     RolloutMeta below
    episodes.jsonl                one EpisodeInfo per finished episode
    episodes/<index>.safetensors  frames uint8 (T,H,W,3), c2w float32 (T,4,4),
                                  intrinsics float32 (3,3), keys uint8 (T,K), mouse float32 (T,2),
                                  timestamp_s float64 (T,), depth float16 (T,H,W) when from an env

``action[t]`` (``keys[t]``, ``mouse[t]``) takes frame t to frame t+1; the last row is unused.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any

from worldsim.core.controller import CameraControllerConfig
from worldsim.core.errors import WorldsimError

FORMAT_VERSION = 1
POSE_CONVENTION = "opencv_c2w_zup_world_metres"
ACTION_RULE = "action[t] takes frame[t] to frame[t+1]"
META_FILE = "meta.json"
INDEX_FILE = "episodes.jsonl"
EPISODE_DIR = "episodes"
REQUIRED_ARRAYS = ("frames", "c2w", "intrinsics", "keys", "mouse", "timestamp_s")


@dataclass(frozen=True)
class RolloutMeta:
    """What every episode of a dataset shares."""

    env: str
    fps: float
    frame_size: tuple[int, int]  # (height, width)
    key_names: list[str]
    format_version: int = FORMAT_VERSION
    pose_convention: str = POSE_CONVENTION
    action_rule: str = ACTION_RULE
    source: str = "env"  # env | human | model
    extra: dict[str, Any] = field(default_factory=dict)

    def to_json(self) -> str:
        """Indented, key-sorted JSON of every field (``frame_size`` as a list), as written to ``meta.json``."""
        d = asdict(self)
        d["frame_size"] = list(self.frame_size)
        return json.dumps(d, indent=2, sort_keys=True)

    @classmethod
    def from_dict(cls, d: dict[str, Any], where: str = "meta.json") -> RolloutMeta:
        """Parse and validate a ``meta.json`` dict; ``where`` names the file in messages.

        Raises ``WorldsimError`` on unknown or missing keys (env, fps, frame_size, key_names), a
        ``format_version`` other than 1 or a ``pose_convention`` other than :data:`POSE_CONVENTION`.
        """
        names = {f.name for f in fields(cls)}
        unknown = sorted(set(d) - names)
        missing = sorted(n for n in ("env", "fps", "frame_size", "key_names") if n not in d)
        if unknown or missing:
            raise WorldsimError(f"{where}: unknown keys {unknown}, missing keys {missing}")
        if d.get("format_version", FORMAT_VERSION) != FORMAT_VERSION:
            raise WorldsimError(f"{where}: format version {d['format_version']} (this worldsim reads {FORMAT_VERSION})")
        if d.get("pose_convention", POSE_CONVENTION) != POSE_CONVENTION:
            raise WorldsimError(f"{where}: pose convention {d['pose_convention']!r}, expected {POSE_CONVENTION!r}")
        d = dict(d)
        d["frame_size"] = tuple(int(x) for x in d["frame_size"])
        return cls(**d)

    def controller(self) -> CameraControllerConfig:
        """The controller that turned the recorded inputs into poses: ``extra["controller"]`` when
        the recording wrote it (it does when the speeds differ from the defaults), else the default
        speeds at this dataset's fps."""
        if "controller" in self.extra:
            try:
                return CameraControllerConfig(**self.extra["controller"])
            except TypeError as e:
                raise WorldsimError(f"meta.json: bad extra.controller ({e})") from e
        return CameraControllerConfig(fps=self.fps)

    def levels(self) -> dict[str, Any]:
        """Where the recording played, for worlds that have levels (DOOM: ``{"wad", "map"}``, map
        None when each world seed picked its own): ``extra["levels"]``, or ``{}`` when not recorded
        (the built-in world, and DOOM data recorded before worldsim wrote it)."""
        levels = self.extra.get("levels", {})
        if not isinstance(levels, dict):
            raise WorldsimError(f"meta.json: extra.levels must be a mapping, got {levels!r}")
        return dict(levels)


def controller_extra(controller: CameraControllerConfig) -> dict[str, Any]:
    """``RolloutMeta.extra`` for data whose poses ``controller`` made: nothing for the default
    controller (data recorded before stays resumable with the same meta), else
    ``{"controller": its settings}``, which :meth:`RolloutMeta.controller` reads back."""
    return {} if controller == CameraControllerConfig() else {"controller": asdict(controller)}


@dataclass(frozen=True)
class EpisodeInfo:
    """One line of ``episodes.jsonl``."""

    index: int
    file: str
    num_frames: int
    seed: int | None = None
    policy: str | None = None

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> EpisodeInfo:
        """Parse one ``episodes.jsonl`` line; raises ``KeyError``/``ValueError`` on missing or bad fields."""
        return cls(int(d["index"]), str(d["file"]), int(d["num_frames"]), d.get("seed"), d.get("policy"))


def episode_filename(index: int) -> str:
    """Path of episode ``index`` relative to the dataset root: ``episodes/000042.safetensors``."""
    return f"{EPISODE_DIR}/{index:06d}.safetensors"


def parse_frame_size(value: Any) -> tuple[int, int]:
    """``64`` or ``[64, 96]`` (height, width) -> a validated ``(h, w)``; clear error otherwise."""
    if isinstance(value, str) or not hasattr(value, "__iter__"):
        items = [value]
    else:
        items = list(value)
    if len(items) == 1:
        items = items * 2
    ok = len(items) == 2 and all(isinstance(x, int) and not isinstance(x, bool) and x > 0 for x in items)
    if not ok:
        raise WorldsimError(
            f"frame_size must be a positive integer or [height, width] of positive integers, got {value!r}"
        )
    return int(items[0]), int(items[1])


def read_meta(root: Path) -> RolloutMeta:
    """Read and validate ``<root>/meta.json``.

    Raises ``WorldsimError`` if ``root`` is not a folder, has no ``meta.json``, the file is not
    valid JSON, or :meth:`RolloutMeta.from_dict` rejects it.
    """
    path = Path(root) / META_FILE
    if not Path(root).is_dir():
        raise WorldsimError(f"dataset folder {root} does not exist")
    if not path.is_file():
        raise WorldsimError(f"{root} is not a rollout dataset: no {META_FILE}")
    try:
        return RolloutMeta.from_dict(json.loads(path.read_text()), str(path))
    except json.JSONDecodeError as e:
        raise WorldsimError(f"{path}: not valid JSON ({e})") from e
