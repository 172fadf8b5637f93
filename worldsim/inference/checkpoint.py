"""Checkpoints: a folder with safetensors weights and a JSON config that loading validates.

<dir>/config.json        format_version, model, codec, sampler, action_encoder
                         {name, version, dim, key_names}, frame_size, chunk_frames,
                         conditioning (context chunks, camera scale, latent statistics),
                         controller (fps, speeds, degrees per mouse pixel), env, provenance
<dir>/model.safetensors  world model weights
<dir>/codec.safetensors  codec weights
"""

from __future__ import annotations

import json
import warnings
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

from worldsim.core.controller import CameraControllerConfig
from worldsim.core.errors import WorldsimError
from worldsim.diffusion.sampler import SamplerConfig
from worldsim.inference.context import ConditioningConfig
from worldsim.model.codec import Codec, CodecConfig
from worldsim.model.dit import WorldModel, WorldModelConfig

CHECKPOINT_VERSION = 1
CONFIG_FILE = "config.json"
# What checkpoints written before they recorded it were trained with (the only world and speeds then).
LEGACY_ENV = "builtin"


class CheckpointDefaultsWarning(UserWarning):
    """A checkpoint that does not say what its inputs do; today's defaults stand in."""


_warned: set[Path] = set()  # checkpoints already reported in this process


@dataclass(frozen=True)
class CheckpointConfig:
    """Everything ``config.json`` records to rebuild and run a checkpoint; frozen.

    ``frame_size`` is ``(height, width)`` in pixels; ``action_encoder`` is ``ActionEncoder.spec()``.
    """

    model: WorldModelConfig
    codec: CodecConfig
    sampler: SamplerConfig
    action_encoder: dict[str, Any]  # ActionEncoder.spec()
    frame_size: tuple[int, int]
    conditioning: ConditioningConfig = field(default_factory=ConditioningConfig)
    # What an input does: the controller that turned the data's inputs into poses (the engine moves
    # its camera with the same), and the environment id the data was recorded in.
    controller: CameraControllerConfig = field(default_factory=CameraControllerConfig)
    env: str = LEGACY_ENV
    provenance: dict[str, Any] = field(default_factory=dict)
    format_version: int = CHECKPOINT_VERSION

    @property
    def chunk_frames(self) -> int:
        """Frames per generated chunk (``model.chunk_frames``)."""
        return self.model.chunk_frames

    def to_json(self) -> str:
        """Indented, key-sorted JSON of every field plus the derived ``chunk_frames``."""
        d = asdict(self)
        d["chunk_frames"] = self.chunk_frames
        return json.dumps(d, indent=2, sort_keys=True)


def _build(cls: type, d: dict[str, Any], where: str) -> Any:
    names = {f.name for f in fields(cls)}
    unknown = sorted(set(d) - names)
    if unknown:
        raise WorldsimError(f"{where}: unknown keys {unknown} for {cls.__name__}")
    d = {k: tuple(v) if isinstance(v, list) else v for k, v in d.items()}
    return cls(**d)


def _save_weights(module: torch.nn.Module, file: Path) -> None:
    save_file({k: v.detach().cpu().contiguous() for k, v in module.state_dict().items()}, str(file))


def _load_weights(module: torch.nn.Module, file: Path, config_file: Path, device: str) -> None:
    """Strict load with one clear message each for a missing, damaged or mismatched file."""
    if not file.is_file():
        raise WorldsimError(f"{file.parent} has no {file.name}")
    try:
        state = load_file(str(file), device=device)
    except (SafetensorError, OSError, ValueError) as e:
        raise WorldsimError(f"{file} is corrupt or truncated ({e})") from e
    try:
        module.load_state_dict(state, strict=True)
    except RuntimeError as e:
        raise WorldsimError(f"{file} does not match its {config_file.name} ({str(e).splitlines()[0]})") from e


def save_checkpoint(path: str | Path, cfg: CheckpointConfig, model: WorldModel, codec: Codec) -> None:
    """Write ``model.safetensors``, ``codec.safetensors`` (weights on CPU) and ``config.json`` into
    ``path``, creating it; existing files are overwritten.
    """
    out = Path(path)
    out.mkdir(parents=True, exist_ok=True)
    _save_weights(model, out / "model.safetensors")
    _save_weights(codec, out / "codec.safetensors")
    (out / CONFIG_FILE).write_text(cfg.to_json())


# The repository around an editable install (assets/ holds the shipped checkpoints); an installed
# package has none beside it.
CHECKOUT = Path(__file__).resolve().parents[2]


def find_checkpoint(path: str | Path) -> Path:
    """``path`` when it is a folder; a relative path not found in the current folder is looked up
    in the worldsim checkout (so ``assets/teacher_builtin_v1`` works from anywhere in an editable
    install). Otherwise ``path`` unchanged, for the caller's error."""
    p = Path(path)
    if p.is_dir() or p.is_absolute() or not (CHECKOUT / p / CONFIG_FILE).is_file():
        return p
    return CHECKOUT / p


def read_checkpoint_config(path: str | Path) -> CheckpointConfig:
    """Read ``config.json`` of a checkpoint folder (located by :func:`find_checkpoint`).

    Raises ``WorldsimError`` for a missing folder or ``config.json``, invalid JSON, a format version
    other than 1, unknown or missing keys. Warns ``CheckpointDefaultsWarning`` (once per folder) when
    ``controller`` or ``env`` are not recorded and today's defaults stand in.
    """
    root = find_checkpoint(path)
    cfg_path = root / CONFIG_FILE
    if not root.is_dir():
        raise WorldsimError(
            f"checkpoint folder {root} does not exist (a relative path is looked up in the current folder, "
            f"then in the worldsim checkout; pass checkpoint=<folder>)"
        )
    if not cfg_path.is_file():
        raise WorldsimError(f"{root} is not a worldsim checkpoint: no {CONFIG_FILE}")
    try:
        d = json.loads(cfg_path.read_text())
    except json.JSONDecodeError as e:
        raise WorldsimError(f"{cfg_path}: not valid JSON ({e})") from e
    if d.get("format_version") != CHECKPOINT_VERSION:
        raise WorldsimError(
            f"{cfg_path}: checkpoint format {d.get('format_version')}, this worldsim reads {CHECKPOINT_VERSION}"
        )
    missing = [k for k in ("controller", "env") if k not in d]
    if missing and root.resolve() not in _warned:
        _warned.add(root.resolve())
        warnings.warn(
            f"checkpoint {root} does not record its {' and '.join(missing)}: using today's defaults "
            f"(env {LEGACY_ENV!r}, {CameraControllerConfig()})",
            CheckpointDefaultsWarning,
            stacklevel=2,
        )
    try:
        return CheckpointConfig(
            model=_build(WorldModelConfig, d["model"], str(cfg_path)),
            codec=_build(CodecConfig, d["codec"], str(cfg_path)),
            sampler=_build(SamplerConfig, d["sampler"], str(cfg_path)),
            action_encoder=dict(d["action_encoder"]),
            frame_size=(int(d["frame_size"][0]), int(d["frame_size"][1])),
            conditioning=_build(ConditioningConfig, d.get("conditioning", {}), str(cfg_path)),
            controller=_build(CameraControllerConfig, d.get("controller", {}), str(cfg_path)),
            env=str(d.get("env", LEGACY_ENV)),
            provenance=dict(d.get("provenance", {})),
        )
    except KeyError as e:
        raise WorldsimError(f"{cfg_path}: missing key {e}") from e


def load_checkpoint(
    path: str | Path,
    expect_encoder: dict[str, Any] | None = None,
    expect_frame_size: tuple[int, int] | None = None,
    device: str = "cpu",
) -> tuple[CheckpointConfig, WorldModel, Codec]:
    """Load and validate; ``expect_*`` are what the caller will feed (encoder spec, frame size)."""
    path = find_checkpoint(path)
    cfg = read_checkpoint_config(path)
    if expect_encoder is not None:
        diffs = [
            f"{k}: checkpoint {cfg.action_encoder.get(k)!r} vs given {expect_encoder.get(k)!r}"
            for k in ("name", "version", "dim", "key_names")
            if cfg.action_encoder.get(k) != expect_encoder.get(k)
        ]
        if diffs:
            raise WorldsimError(f"checkpoint {path} was trained with another action encoder ({'; '.join(diffs)})")
    if expect_frame_size is not None and tuple(expect_frame_size) != cfg.frame_size:
        raise WorldsimError(f"checkpoint {path} is for frames {cfg.frame_size}, given {tuple(expect_frame_size)}")
    model, codec = WorldModel(cfg.model), Codec(cfg.codec)
    for name, module in (("model", model), ("codec", codec)):
        _load_weights(module, Path(path) / f"{name}.safetensors", Path(path) / CONFIG_FILE, device)
    return cfg, model.to(device).eval(), codec.to(device).eval()


def state_dict_equal(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> bool:
    """True when both state dicts have the same keys and exactly equal tensors (``torch.equal``)."""
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def save_codec(path: str | Path, codec: Codec, provenance: dict[str, Any]) -> None:
    """A stand-alone codec folder: ``codec.safetensors`` + ``codec.json`` (config, provenance)."""
    out = Path(path)
    out.mkdir(parents=True, exist_ok=True)
    _save_weights(codec, out / "codec.safetensors")
    meta = {"format_version": CHECKPOINT_VERSION, "codec": asdict(codec.cfg), "provenance": provenance}
    (out / "codec.json").write_text(json.dumps(meta, indent=2, sort_keys=True))


def load_codec(path: str | Path, device: str = "cpu") -> Codec:
    """Load a folder written by :func:`save_codec`, with clear errors for missing or damaged files."""
    root = Path(path)
    meta_path, weights = root / "codec.json", root / "codec.safetensors"
    if not meta_path.is_file() or not weights.is_file():
        raise WorldsimError(f"{root} is not a codec folder (needs codec.json and codec.safetensors)")
    try:
        meta = json.loads(meta_path.read_text())
        codec = Codec(_build(CodecConfig, meta["codec"], str(meta_path)))
    except (json.JSONDecodeError, KeyError) as e:
        raise WorldsimError(f"{meta_path}: damaged ({e})") from e
    _load_weights(codec, weights, meta_path, device)
    return codec.to(device).eval()
