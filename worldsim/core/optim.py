"""Optimiser settings and the learning-rate schedule shared by every training loop: the
training stages (``worldsim.train``) and the evaluation's inverse-dynamics probe
(``worldsim.eval.idm``), which trains a small classifier of its own."""

from __future__ import annotations

import math
from dataclasses import dataclass


@dataclass
class OptimConfig:
    """AdamW with linear warm-up and cosine decay (:func:`lr_at`), gradient clipping and an EMA."""

    lr: float = 1e-3  # peak learning rate, reached after warmup_steps
    weight_decay: float = 0.01
    warmup_steps: int = 100
    grad_clip: float = 1.0  # max global gradient norm
    ema_decay: float = 0.999


def lr_at(step: int, total: int, cfg: OptimConfig) -> float:
    """Linear warm-up to ``lr``, then cosine decay to 0 at ``total``."""
    if step < cfg.warmup_steps:
        return cfg.lr * (step + 1) / cfg.warmup_steps
    progress = (step - cfg.warmup_steps) / max(1, total - cfg.warmup_steps)
    return cfg.lr * 0.5 * (1 + math.cos(math.pi * min(1.0, progress)))
