"""Checkpoints: a folder with safetensors weights and a JSON config that loading validates.

<dir>/config.json        format_version, model, codec, sampler, action_encoder
                         {name, version, dim, key_names}, frame_size, chunk_frames,
                         conditioning (context chunks, camera scale, latent statistics),
                         controller (fps, speeds, degrees per mouse pixel), env, provenance,
                         integrity {config, model.safetensors, codec.safetensors: sha256}
<dir>/model.safetensors  world model weights
<dir>/codec.safetensors  codec weights

Integrity, checked at every load (:func:`load_checkpoint`, :func:`load_codec`):

- ``integrity`` holds the sha256 of each weights file and of the config itself (its canonical
  JSON without the ``integrity`` block), written at export. A changed weights file, or any edited
  config field, is refused. The config is hashed whole because some fields change what the
  network does without changing a weight's shape: the DiT's weights are the same for any
  ``chunk_frames``, so a checkpoint trained on 4-frame chunks would load as an 8-frame one.
- Without ``integrity`` (checkpoints exported before it, such as ``assets/teacher_builtin_v1``),
  ``model`` is compared field by field with the training record (``provenance.config.model``)
  where the checkpoint has one, which catches ``chunk_frames`` 4 -> 8 there too.
- Always: no tensor may hold NaN or inf; the sizes the config derives from each other must agree
  (``frame_size`` / ``codec.downsample`` = ``model.latent_size``, ``model.latent_channels`` =
  ``codec.latent_channels``, ``model.action_dim`` = ``action_encoder.dim``, the top-level
  ``chunk_frames`` = ``model.chunk_frames``, ``model.latent_size`` divisible by ``model.patch``);
  each disagreement is one line naming the field.
"""

from __future__ import annotations

import hashlib
import json
import math
import warnings
from dataclasses import asdict, dataclass, field, fields, replace
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError
from safetensors.torch import load, save

from worldsim.core.atomic import staged_dir, write_bytes, write_text
from worldsim.core.controller import CameraControllerConfig
from worldsim.core.errors import WorldsimError
from worldsim.diffusion.sampler import SamplerConfig
from worldsim.inference.context import ConditioningConfig
from worldsim.model.codec import Codec, CodecConfig
from worldsim.model.dit import WorldModel, WorldModelConfig

CHECKPOINT_VERSION = 1
CONFIG_FILE = "config.json"
INTEGRITY_KEY = "integrity"  # config.json / codec.json: sha256 of the weights files and of the config
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
    # Where the training data played, for worlds with levels (DOOM: {"wad", "map"}, from the data's
    # meta.json): a rollout's ground truth starts there unless the command picks other levels.
    # Empty for the built-in world and for checkpoints from before it was recorded.
    levels: dict[str, Any] = field(default_factory=dict)
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


def _weights_bytes(module: torch.nn.Module) -> bytes:
    return save({k: v.detach().cpu().contiguous() for k, v in module.state_dict().items()})


def sha256(data: bytes) -> str:
    """Hex sha256 of ``data``."""
    return hashlib.sha256(data).hexdigest()


def config_sha256(d: dict[str, Any]) -> str:
    """The sha256 of a config dict as canonical JSON, without its ``integrity`` block."""
    body = {k: v for k, v in d.items() if k != INTEGRITY_KEY}
    return sha256(json.dumps(body, sort_keys=True, separators=(",", ":")).encode())


def _load_weights(module: torch.nn.Module, file: Path, config_file: Path, device: str, want_sha: str | None) -> None:
    """Strict load with one clear message each for a missing, damaged, changed, non-finite or
    mismatched file; ``want_sha`` is the sha256 recorded at export (None: not recorded)."""
    if not file.is_file():
        raise WorldsimError(f"{file.parent} has no {file.name}")
    data = file.read_bytes()
    if want_sha is not None and sha256(data) != want_sha:
        raise WorldsimError(
            f"{file} is not the file exported with {config_file.name} (sha256 {sha256(data)[:12]}..., "
            f"recorded {want_sha[:12]}...): changed or damaged since export"
        )
    try:
        state = load(data)
    except (SafetensorError, OSError, ValueError) as e:
        raise WorldsimError(f"{file} is corrupt or truncated ({e})") from e
    for name, t in state.items():
        if t.is_floating_point() and not bool(torch.isfinite(t).all()):
            bad = int((~torch.isfinite(t)).sum())
            raise WorldsimError(f"{file}: tensor {name!r} {tuple(t.shape)} holds {bad} NaN or inf values")
    try:
        module.load_state_dict(state, strict=True)
    except RuntimeError as e:
        lines = [ln.strip() for ln in str(e).splitlines()[1:] if ln.strip()]
        detail = lines[0] if lines else str(e).splitlines()[0]
        raise WorldsimError(f"{file} does not match its {config_file.name} ({detail})") from e
    module.to(device)


def save_checkpoint(path: str | Path, cfg: CheckpointConfig, model: WorldModel, codec: Codec) -> None:
    """Write ``model.safetensors``, ``codec.safetensors`` (weights on CPU) and ``config.json`` into
    ``path``, creating it; the folder is replaced as a whole (other files in it are kept), so an
    interrupted export leaves the previous checkpoint. ``config.json`` records the sha256 of
    both weights files and of itself (``integrity``) for :func:`load_checkpoint` to check.
    """
    integrity: dict[str, str] = {}
    # The folder is swapped in as a whole: an interrupted export leaves the previous one intact.
    with staged_dir(path, keep=True) as out:
        for name, module in (("model", model), ("codec", codec)):
            data = _weights_bytes(module)
            write_bytes(out / f"{name}.safetensors", data)
            integrity[f"{name}.safetensors"] = sha256(data)
        d = json.loads(cfg.to_json())
        d[INTEGRITY_KEY] = {"config": config_sha256(d), **integrity}
        write_text(out / CONFIG_FILE, json.dumps(d, indent=2, sort_keys=True))


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
    return _read_config(path)[0]


def _read_config(path: str | Path) -> tuple[CheckpointConfig, dict[str, Any]]:
    """The parsed config and the raw ``config.json`` dict."""
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
        cfg = CheckpointConfig(
            model=_build(WorldModelConfig, d["model"], str(cfg_path)),
            codec=_build(CodecConfig, d["codec"], str(cfg_path)),
            sampler=_build(SamplerConfig, d["sampler"], str(cfg_path)),
            action_encoder=dict(d["action_encoder"]),
            frame_size=(int(d["frame_size"][0]), int(d["frame_size"][1])),
            conditioning=_build(ConditioningConfig, d.get("conditioning", {}), str(cfg_path)),
            controller=_build(CameraControllerConfig, d.get("controller", {}), str(cfg_path)),
            env=str(d.get("env", LEGACY_ENV)),
            levels=dict(d.get("levels", {})),
            provenance=dict(d.get("provenance", {})),
        )
    except KeyError as e:
        raise WorldsimError(f"{cfg_path}: missing key {e}") from e
    return cfg, d


def check_integrity(cfg: CheckpointConfig, d: dict[str, Any], cfg_path: Path) -> None:
    """The config checks of the module docstring that need no weights: the recorded config hash
    (or, without one, the training record) and the sizes the config derives from each other."""
    where = str(cfg_path)
    m, c = cfg.model, cfg.codec
    integrity = d.get(INTEGRITY_KEY)
    trained = (
        cfg.provenance.get("config", {}).get("model", {}) if isinstance(cfg.provenance.get("config"), dict) else {}
    )
    now = asdict(m)
    for key, was in trained.items():
        if key in now and None not in (now[key], was) and _norm(now[key]) != _norm(was):
            raise WorldsimError(
                f"{where}: model.{key} is {_norm(now[key])} but the weights were trained with {_norm(was)} "
                f"(provenance.config.model.{key})"
            )
    if "chunk_frames" in d and d["chunk_frames"] != m.chunk_frames:
        raise WorldsimError(f"{where}: chunk_frames is {d['chunk_frames']} but model.chunk_frames is {m.chunk_frames}")
    if integrity is not None and config_sha256(d) != integrity.get("config"):
        raise WorldsimError(
            f"{where} was edited after export (its sha256 differs from integrity.config): the weights may not "
            f"match it; export again, or change sampling with sampler overrides instead of the file"
        )
    if m.latent_channels is not None and m.latent_channels != c.latent_channels:
        raise WorldsimError(
            f"{where}: model.latent_channels is {m.latent_channels} but codec.latent_channels is {c.latent_channels}"
        )
    h, w = cfg.frame_size
    if h % c.downsample or w % c.downsample:
        raise WorldsimError(f"{where}: frame_size {cfg.frame_size} does not divide by codec.downsample {c.downsample}")
    derived = (h // c.downsample, w // c.downsample)
    if m.latent_size is not None and tuple(m.latent_size) != derived:
        raise WorldsimError(
            f"{where}: model.latent_size is {tuple(m.latent_size)} but frame_size {cfg.frame_size} with "
            f"codec.downsample {c.downsample} gives {derived}"
        )
    if derived[0] % m.patch or derived[1] % m.patch:
        raise WorldsimError(f"{where}: model.latent_size {derived} does not divide by model.patch {m.patch}")
    if m.action_dim is not None and m.action_dim != cfg.action_encoder.get("dim"):
        raise WorldsimError(
            f"{where}: model.action_dim is {m.action_dim} but action_encoder.dim is {cfg.action_encoder.get('dim')}"
        )
    stats = cfg.conditioning
    for name in ("latent_mean", "latent_std"):
        v = getattr(stats, name, None)
        if v and (len(v) != c.latent_channels or not all(math.isfinite(x) for x in v)):  # empty: 0 / 1
            raise WorldsimError(
                f"{where}: conditioning.{name} must be {c.latent_channels} finite numbers (codec.latent_channels)"
            )


def _norm(v: Any) -> Any:
    return list(v) if isinstance(v, tuple | list) else v


def load_checkpoint(
    path: str | Path,
    expect_encoder: dict[str, Any] | None = None,
    expect_frame_size: tuple[int, int] | None = None,
    device: str = "cpu",
) -> tuple[CheckpointConfig, WorldModel, Codec]:
    """Load and validate (the integrity checks of the module docstring); ``expect_*`` are what the
    caller will feed (encoder spec, frame size)."""
    path = find_checkpoint(path)
    cfg, raw = _read_config(path)
    check_integrity(cfg, raw, Path(path) / CONFIG_FILE)
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
    hashes = raw.get(INTEGRITY_KEY, {})
    for name, module in (("model", model), ("codec", codec)):
        file = f"{name}.safetensors"
        _load_weights(module, Path(path) / file, Path(path) / CONFIG_FILE, device, hashes.get(file))
    return cfg, model.to(device).eval(), codec.to(device).eval()


def state_dict_equal(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> bool:
    """True when both state dicts have the same keys and exactly equal tensors (``torch.equal``)."""
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def save_codec(path: str | Path, codec: Codec, provenance: dict[str, Any]) -> None:
    """A stand-alone codec folder: ``codec.safetensors`` + ``codec.json`` (config, provenance,
    ``integrity``: the sha256 of the weights file and of the config)."""
    data = _weights_bytes(codec)
    meta: dict[str, Any] = {"format_version": CHECKPOINT_VERSION, "codec": asdict(codec.cfg), "provenance": provenance}
    meta[INTEGRITY_KEY] = {"config": config_sha256(meta), "codec.safetensors": sha256(data)}
    with staged_dir(path, keep=True) as out:  # swapped in as a whole
        write_bytes(out / "codec.safetensors", data)
        write_text(out / "codec.json", json.dumps(meta, indent=2, sort_keys=True))


def load_codec(path: str | Path, device: str = "cpu") -> Codec:
    """Load a folder written by :func:`save_codec`, with clear errors for missing, damaged, changed
    (sha256 against ``integrity``, when recorded) or non-finite files."""
    root = Path(path)
    meta_path, weights = root / "codec.json", root / "codec.safetensors"
    if not meta_path.is_file() or not weights.is_file():
        raise WorldsimError(f"{root} is not a codec folder (needs codec.json and codec.safetensors)")
    try:
        meta = json.loads(meta_path.read_text())
        codec = Codec(_build(CodecConfig, meta["codec"], str(meta_path)))
    except (json.JSONDecodeError, KeyError) as e:
        raise WorldsimError(f"{meta_path}: damaged ({e})") from e
    integrity = meta.get(INTEGRITY_KEY)
    if integrity is not None and config_sha256(meta) != integrity.get("config"):
        raise WorldsimError(f"{meta_path} was edited after export (its sha256 differs from integrity.config)")
    _load_weights(codec, weights, meta_path, device, (integrity or {}).get("codec.safetensors"))
    return codec.to(device).eval()


def with_codec(checkpoint: str | Path, codec_path: str | Path, out: str | Path) -> None:
    """Write to ``out`` the checkpoint folder ``checkpoint`` with the codec folder ``codec_path``
    (a ``stage=codec`` export, e.g. a slimmer decoder trained with ``freeze_encoder``) in place
    of its own; the provenance records where the codec came from (path, sha256, its own
    provenance). The model read the latents of
    its own codec's encoder, so the new encoder must be that one bit for bit: ``WorldsimError``
    naming the first tensor that differs otherwise (or a folder that is not a checkpoint or a
    codec, or an ``out`` that exists), before anything is written."""
    if Path(out).exists():
        raise WorldsimError(f"{out} exists: with_codec writes a new model folder")
    ck, model, old = load_checkpoint(checkpoint)
    new = load_codec(codec_path)
    mine, theirs = old.encoder.state_dict(), new.encoder.state_dict()
    differ = [k for k in mine if k not in theirs or not torch.equal(mine[k], theirs[k])]
    if differ or mine.keys() != theirs.keys():
        first = differ[0] if differ else sorted(set(theirs) - set(mine))[0]
        raise WorldsimError(
            f"{codec_path} encodes other latents than {checkpoint}'s codec (encoder.{first} differs): "
            f"its model would read a latent space it was not trained on"
        )
    root = Path(codec_path)
    codec_from = {
        "path": str(codec_path),
        "sha256": sha256((root / "codec.safetensors").read_bytes()),
        "provenance": json.loads((root / "codec.json").read_text()).get("provenance", {}),
        "note": "the model's metrics in this provenance were measured with its previous codec",
    }
    provenance = {**ck.provenance, "codec_from": codec_from}
    save_checkpoint(out, replace(ck, codec=new.cfg, provenance=provenance), model, new)
