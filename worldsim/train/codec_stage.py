"""``worldsim-train stage=codec``: train the frame autoencoder, resumably.

Loop per step: a seeded batch of frames -> L1 + MSE reconstruction (bf16 autocast optional) ->
AdamW with linear warm-up and cosine decay, gradient clipping -> EMA update. Every
``ckpt_every`` steps and on Ctrl-C the full state goes to ``<out>/last`` (see state.py); a CSV
log goes to ``<out>/log.csv``; validation PSNR on held-out data every ``val_every`` steps.
"""

from __future__ import annotations

import copy
import csv
import math
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch
import torch.nn.functional as F
from tqdm import tqdm

from worldsim.checkpoint import save_codec
from worldsim.errors import WorldsimError
from worldsim.model.codec import Codec, CodecConfig, frames_to_tensor
from worldsim.train.frames import FrameSampler
from worldsim.train.state import load_train_state, save_train_state


@dataclass
class OptimConfig:
    lr: float = 1e-3
    weight_decay: float = 0.01
    warmup_steps: int = 100
    grad_clip: float = 1.0
    ema_decay: float = 0.999


@dataclass
class CodecTrainConfig:
    stage: str = "codec"
    data: str = "data/builtin_v1/train"
    val_data: str | None = "data/builtin_v1/val"
    out: str = "runs/codec"
    steps: int = 3000
    batch_size: int = 16
    seed: int = 0
    bf16: bool = True
    log_every: int = 10
    val_every: int = 250
    val_batches: int = 4
    ckpt_every: int = 250
    resume: bool = False
    codec: CodecConfig = field(default_factory=CodecConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)

    def identity(self) -> dict[str, object]:
        """What must match to resume: everything that shapes the trajectory (not step counts, out)."""
        d = asdict(self)
        for k in ("stage", "steps", "resume", "out", "log_every", "val_every", "val_batches", "ckpt_every", "val_data"):
            d.pop(k)
        return d


def lr_at(step: int, total: int, cfg: OptimConfig) -> float:
    if step < cfg.warmup_steps:
        return cfg.lr * (step + 1) / cfg.warmup_steps
    progress = (step - cfg.warmup_steps) / max(1, total - cfg.warmup_steps)
    return cfg.lr * 0.5 * (1 + math.cos(math.pi * min(1.0, progress)))


def psnr(a: torch.Tensor, b: torch.Tensor) -> float:
    """PSNR in dB of float images in [-1, 1]."""
    mse = F.mse_loss(a.float().clamp(-1, 1), b.float()).item() / 4.0  # to the [0, 1] range
    return 10 * math.log10(1.0 / max(mse, 1e-12))


def train_codec(cfg: CodecTrainConfig) -> dict[str, float]:
    data = FrameSampler(cfg.data)
    val = FrameSampler(cfg.val_data) if cfg.val_data else None
    if val is not None and val.frame_size != data.frame_size:
        raise WorldsimError(f"validation frames are {val.frame_size}, training frames {data.frame_size}")
    h, w = data.frame_size
    if h % cfg.codec.downsample or w % cfg.codec.downsample:
        raise WorldsimError(f"frame size {data.frame_size} is not divisible by codec downsample {cfg.codec.downsample}")
    torch.manual_seed(cfg.seed)
    model = Codec(cfg.codec)
    ema = copy.deepcopy(model).requires_grad_(False)
    opt = torch.optim.AdamW(model.parameters(), lr=cfg.optim.lr, weight_decay=cfg.optim.weight_decay)
    out = Path(cfg.out)
    out.mkdir(parents=True, exist_ok=True)
    step = 0
    if cfg.resume:
        step = load_train_state(out / "last", model, ema, opt, cfg.identity())
    elif (out / "last").exists():
        raise WorldsimError(f"{out} already holds a run; pass resume=true to continue it or choose another out=")
    log_path = out / "log.csv"
    new_log = not log_path.exists() or not cfg.resume
    log = open(log_path, "w" if new_log else "a", newline="")
    writer = csv.writer(log)
    if new_log:
        writer.writerow(["step", "loss", "lr", "frames_per_s", "val_psnr_db"])
    amp = torch.autocast("cpu", dtype=torch.bfloat16, enabled=cfg.bf16)
    summary: dict[str, float] = {}
    bar = tqdm(total=cfg.steps, initial=step, desc="codec", unit="step")
    t_last, seen = time.perf_counter(), 0
    last_loss = float("nan")
    try:
        while step < cfg.steps:
            x = frames_to_tensor(data.batch(cfg.seed, step, cfg.batch_size))
            for group in opt.param_groups:
                group["lr"] = lr_at(step, cfg.steps, cfg.optim)
            with amp:
                recon = model(x)
            loss = F.l1_loss(recon.float(), x) + F.mse_loss(recon.float(), x)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.optim.grad_clip)
            opt.step()
            with torch.no_grad():
                for pe, pm in zip(ema.parameters(), model.parameters(), strict=True):
                    pe.lerp_(pm, 1 - cfg.optim.ema_decay)
            step += 1
            seen += len(x)
            last_loss = loss.item()
            val_db = ""
            if val is not None and (step % cfg.val_every == 0 or step == cfg.steps):
                summary["val_psnr_db"] = evaluate(ema, val, cfg, cfg.val_batches)
                val_db = f"{summary['val_psnr_db']:.2f}"
            if step % cfg.log_every == 0 or val_db:
                now = time.perf_counter()
                writer.writerow(
                    [
                        step,
                        f"{last_loss:.5f}",
                        f"{opt.param_groups[0]['lr']:.3g}",
                        f"{seen / (now - t_last):.1f}",
                        val_db,
                    ]
                )
                log.flush()
                t_last, seen = now, 0
            bar.update(1)
            bar.set_postfix(loss=f"{last_loss:.4f}", **({"val_dB": val_db} if val_db else {}))
            if step % cfg.ckpt_every == 0 or step == cfg.steps:
                save_train_state(out / "last", model, ema, opt, step, cfg.identity())
                # The usable product: the EMA codec as a stand-alone folder.
                save_codec(out / "codec", ema, {"stage": "codec", "step": step, **cfg.identity(), **summary})
    except KeyboardInterrupt:
        save_train_state(out / "last", model, ema, opt, step, cfg.identity())
        print(f"\ninterrupted at step {step}: saved {out / 'last'}; resume with resume=true")
        raise
    finally:
        bar.close()
        log.close()
    summary["step"] = step
    summary["final_loss"] = last_loss
    return summary


@torch.inference_mode()
def evaluate(codec: Codec, val: FrameSampler, cfg: CodecTrainConfig, batches: int) -> float:
    """Mean PSNR (dB) of reconstructions on fixed held-out batches."""
    scores = []
    for i in range(batches):
        x = frames_to_tensor(val.batch(cfg.seed + 7919, i, cfg.batch_size))
        scores.append(psnr(codec(x), x))
    return sum(scores) / len(scores)
