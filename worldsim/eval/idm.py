"""Inverse-dynamics model: which raw action took frame t to frame t+1?

Measures action following the way the field does (GameWorldScore): trained on ground-truth
frame pairs only, then asked about generated pairs. Targets per pair: every key of the key list
(held or not) and the mouse's horizontal and vertical direction (negative / still / positive,
``|d| > MOUSE_STILL_PX``). Accuracy is reported beside chance (the majority-class rate of the
same pairs) because keys like a light toggle are rarely pressed.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F
from safetensors.torch import load_file, save
from tqdm import tqdm

from worldsim.core.atomic import staged_dir, write_bytes, write_text
from worldsim.core.errors import WorldsimError
from worldsim.core.optim import OptimConfig, lr_at
from worldsim.data.frames import open_datasets
from worldsim.model.codec import frames_to_tensor

MOUSE_STILL_PX = 1.0
DIRECTIONS = ("negative", "still", "positive")


def mouse_classes(mouse: np.ndarray) -> np.ndarray:
    """``(T, 2)`` pixels -> ``(T, 2)`` int64 in {0, 1, 2} (negative, still, positive) per axis."""
    m = np.asarray(mouse, np.float64)
    return np.where(m < -MOUSE_STILL_PX, 0, np.where(m > MOUSE_STILL_PX, 2, 1)).astype(np.int64)


class InverseDynamics(nn.Module):
    """A small conv classifier of frame pairs ``(B, 6, H, W)`` in [-1, 1] -> per-key held logits
    ``(B, K)`` and per-axis mouse direction logits ``(B, 2, 3)`` (negative, still, positive)."""

    def __init__(self, num_keys: int, width: int = 32):
        super().__init__()
        self.num_keys = num_keys
        layers: list[nn.Module] = []
        ch = 6
        for out in (width, width * 2, width * 2, width * 4):
            layers += [nn.Conv2d(ch, out, 4, stride=2, padding=1), nn.GroupNorm(8, out), nn.SiLU()]
            ch = out
        self.body = nn.Sequential(*layers, nn.AdaptiveAvgPool2d(1), nn.Flatten())
        self.head = nn.Linear(ch, num_keys + 6)

    def forward(self, a: torch.Tensor, b: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Frames ``(B, 3, H, W)`` in [-1, 1] -> key logits ``(B, K)``, mouse logits ``(B, 2, 3)``."""
        out = self.head(self.body(torch.cat([a, b - a], 1)))
        return out[:, : self.num_keys], out[:, self.num_keys :].view(-1, 2, 3)


@dataclass
class Pairs:
    """Frame pairs and the raw action between them."""

    a: np.ndarray  # (N, H, W, 3) uint8, frame t
    b: np.ndarray  # (N, H, W, 3) uint8, frame t+1
    keys: np.ndarray  # (N, K) uint8
    mouse: np.ndarray  # (N, 2) float32

    @classmethod
    def from_rollout(cls, frames: np.ndarray, keys: np.ndarray, mouse: np.ndarray) -> Pairs:
        """Rollout order: ``keys[t]`` took ``frames[t]`` to ``frames[t+1]``."""
        return cls(frames[:-1], frames[1:], keys[: len(frames) - 1], mouse[: len(frames) - 1])

    @classmethod
    def concat(cls, parts: list[Pairs]) -> Pairs:
        """The pairs of every part, in order."""
        return cls(*(np.concatenate([getattr(p, f) for p in parts]) for f in ("a", "b", "keys", "mouse")))


def _tensors(p: Pairs, idx: np.ndarray) -> tuple[torch.Tensor, ...]:
    return (
        frames_to_tensor(torch.from_numpy(p.a[idx])),
        frames_to_tensor(torch.from_numpy(p.b[idx])),
        torch.from_numpy(p.keys[idx].astype(np.float32)),
        torch.from_numpy(mouse_classes(p.mouse[idx])),
    )


def train_idm(
    data: str | Path, key_names: list[str], steps: int = 1500, batch: int = 64, seed: int = 0, max_episodes: int = 200
) -> InverseDynamics:
    """Train on ground-truth pairs of the datasets under ``data`` (seeded, shuffled pairs)."""
    sets = open_datasets(data)
    parts = []
    for ds in sets:
        if list(ds.meta.key_names) != list(key_names):
            raise WorldsimError(f"{ds.root} records keys {ds.meta.key_names}, expected {key_names}")
        for i in range(len(ds)):
            arr = ds.load(i, ("frames", "keys", "mouse"))
            parts.append(Pairs.from_rollout(arr["frames"], arr["keys"], arr["mouse"]))
    rng = np.random.default_rng(seed)
    rng.shuffle(parts)  # type: ignore[arg-type]
    pairs = Pairs.concat(parts[:max_episodes])
    torch.manual_seed(seed)
    model = InverseDynamics(len(key_names))
    opt = torch.optim.AdamW(model.parameters(), lr=2e-3, weight_decay=1e-4)
    schedule = OptimConfig(lr=2e-3, warmup_steps=max(1, steps // 10))
    for step in tqdm(range(steps), desc="inverse dynamics", unit="step"):
        for group in opt.param_groups:
            group["lr"] = lr_at(step, steps, schedule)
        a, b, k, m = _tensors(pairs, rng.integers(len(pairs.a), size=batch))
        key_logits, mouse_logits = model(a, b)
        loss = F.binary_cross_entropy_with_logits(key_logits, k) + F.cross_entropy(
            mouse_logits.flatten(0, 1), m.flatten()
        )
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
    return model.eval()


@torch.no_grad()
def idm_accuracy(
    model: InverseDynamics, pairs: Pairs, key_names: list[str], batch: int = 256
) -> dict[str, dict[str, float]]:
    """Per action: accuracy of the IDM's prediction and chance (majority-class rate) on ``pairs``."""
    keys_pred, mouse_pred = [], []
    for s in range(0, len(pairs.a), batch):
        a, b, _, _ = _tensors(pairs, np.arange(s, min(s + batch, len(pairs.a))))
        kl, ml = model(a, b)
        keys_pred.append((kl > 0).numpy())
        mouse_pred.append(ml.argmax(-1).numpy())
    kp, mp = np.concatenate(keys_pred), np.concatenate(mouse_pred)
    truth_k, truth_m = pairs.keys.astype(bool), mouse_classes(pairs.mouse)
    out: dict[str, dict[str, float]] = {}
    for j, name in enumerate(key_names):
        rate = float(truth_k[:, j].mean())
        out[f"key {name}"] = {"accuracy": float((kp[:, j] == truth_k[:, j]).mean()), "chance": max(rate, 1 - rate)}
    for j, axis in enumerate(("mouse x", "mouse y")):
        counts = np.bincount(truth_m[:, j], minlength=3) / len(truth_m)
        out[axis] = {"accuracy": float((mp[:, j] == truth_m[:, j]).mean()), "chance": float(counts.max())}
    return out


def save_idm(path: str | Path, model: InverseDynamics, key_names: list[str], provenance: dict[str, object]) -> None:
    """``idm.safetensors`` + ``idm.json`` (key names, provenance) in folder ``path``."""
    with staged_dir(path, keep=True) as out:  # swapped in as a whole
        write_bytes(out / "idm.safetensors", save({k: v.contiguous() for k, v in model.state_dict().items()}))
        write_text(out / "idm.json", json.dumps({"key_names": key_names, "provenance": provenance}, indent=2))


def load_idm(path: str | Path, key_names: list[str]) -> InverseDynamics:
    """An IDM saved by :func:`save_idm`; ``WorldsimError`` when the folder is not one or its keys differ."""
    root = Path(path)
    if not (root / "idm.json").is_file() or not (root / "idm.safetensors").is_file():
        raise WorldsimError(f"{root} is not an inverse-dynamics folder (needs idm.json and idm.safetensors)")
    meta = json.loads((root / "idm.json").read_text())
    if meta["key_names"] != list(key_names):
        raise WorldsimError(f"{root} was trained on keys {meta['key_names']}, not {key_names}")
    model = InverseDynamics(len(key_names))
    model.load_state_dict(load_file(str(root / "idm.safetensors")))
    return model.eval()
