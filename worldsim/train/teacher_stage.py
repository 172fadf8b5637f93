"""``worldsim-train stage=teacher``: the chunk-autoregressive teacher, flow matching with
diffusion forcing (default) or teacher forcing (reference.md §2) on latents of the shipped codec.

Per step: a seeded batch of clips (teacher_data.py: recent context, or a retrieved earlier view
plus recent context, then the chunk to learn) with per-frame encoded actions and Plücker rays
relative to the latest context frame; action and camera dropout; one noise level per chunk
(objectives.py). The shared loop (loop.py) does the rest. Every ``val_every`` steps the
EMA model's loss on held-out clips; every ``teacher.preview_every`` steps a 16-frame rollout
from ground-truth context on held-out episodes: PSNR against ground truth and against the
"repeat the last context frame" baseline, and a contact sheet in ``<out>/previews/``. The EMA
model is exported as a loadable checkpoint folder ``<out>/model`` (codec included).
"""

from __future__ import annotations

import math
from functools import partial
from pathlib import Path

import numpy as np
import torch

from worldsim.actions import make_action_encoder
from worldsim.checkpoint import CheckpointConfig, load_codec, save_checkpoint
from worldsim.data.preview import contact_sheet, write_png
from worldsim.errors import WorldsimError, unknown_name
from worldsim.model.codec import Codec, tensor_to_frames
from worldsim.model.dit import WorldModel
from worldsim.model.generate import ChunkGenerator, ConditioningConfig
from worldsim.model.sampler import SamplerConfig
from worldsim.train.config import TrainConfig
from worldsim.train.distributed import init_distributed
from worldsim.train.frames import open_datasets
from worldsim.train.loop import TrainLoop
from worldsim.train.objectives import OBJECTIVES, diffusion_forcing_loss
from worldsim.train.teacher_data import Batch, ClipSampler, EncodedSplit

PREVIEW_EPISODES = 4
PREVIEW_CHUNKS = 4


def _check_shapes(cfg: TrainConfig, codec: Codec, frame_size: tuple[int, int], action_dim: int) -> None:
    m, f = cfg.model, codec.cfg.downsample
    if frame_size[0] % f or frame_size[1] % f:
        raise WorldsimError(f"frames {frame_size} are not divisible by the codec's downsample {f}")
    want = (frame_size[0] // f, frame_size[1] // f)
    if tuple(m.latent_size) != want:
        raise WorldsimError(f"model.latent_size is {tuple(m.latent_size)}, but {frame_size} frames encode to {want}")
    if m.latent_channels != codec.cfg.latent_channels:
        raise WorldsimError(
            f"model.latent_channels is {m.latent_channels}, the codec makes {codec.cfg.latent_channels}"
        )
    if m.action_dim != action_dim:
        raise WorldsimError(f"model.action_dim is {m.action_dim}, encoder {cfg.teacher.encoder!r} gives {action_dim}")


def _psnr_db(a: np.ndarray, b: np.ndarray) -> float:
    mse = float(np.mean((a.astype(np.float64) - b.astype(np.float64)) ** 2)) / 255.0**2
    return 10 * math.log10(1.0 / max(mse, 1e-12))


def train_teacher(cfg: TrainConfig) -> dict[str, float]:
    d = init_distributed()
    tc = cfg.teacher
    # Step 1: everything that can be wrong with the inputs, before any slow work.
    if tc.objective not in OBJECTIVES:
        raise unknown_name("teacher objective", tc.objective, OBJECTIVES)
    objective = OBJECTIVES[tc.objective]
    if tc.objective == "diffusion_forcing":
        objective = partial(diffusion_forcing_loss, clean_context_prob=tc.clean_context_prob)
    codec = load_codec(tc.codec_path)
    meta = open_datasets(cfg.data)[0].meta
    frame_size = (int(meta.frame_size[0]), int(meta.frame_size[1]))
    encoder = make_action_encoder(tc.encoder, list(meta.key_names))
    _check_shapes(cfg, codec, frame_size, encoder.dim)
    if cfg.val_data:
        val_size = tuple(open_datasets(cfg.val_data)[0].meta.frame_size)
        if val_size != frame_size:
            raise WorldsimError(f"validation frames are {val_size}, training frames {frame_size}")
    torch.manual_seed(cfg.seed)
    loop = TrainLoop(cfg, WorldModel(cfg.model), ["val_loss", "rollout_psnr_db", "copy_last_psnr_db"], d)
    # Step 2: latents of every episode (cached in <out>/latents), their statistics, the clip samplers.
    cache = loop.out / "latents" if d.is_main else None
    train = EncodedSplit.encode(cfg.data, codec, encoder, "encode train", cache)
    val = EncodedSplit.encode(cfg.val_data, codec, encoder, "encode val", cache) if cfg.val_data else None
    mean, std = train.latent_stats()
    intr = tuple(train.intrinsics.flatten().tolist())
    cond = ConditioningConfig(tc.context_chunks, tc.translation_scale_m, tuple(mean), tuple(std), intr)
    null = torch.from_numpy(encoder.null_action())
    k, latent_size = cfg.model.chunk_frames, (int(cfg.model.latent_size[0]), int(cfg.model.latent_size[1]))
    clips = ClipSampler(train, k, tc, cond, latent_size, null)
    val_clips = ClipSampler(val, k, tc, cond, latent_size, null) if val else None
    amp = torch.autocast("cpu", dtype=torch.bfloat16, enabled=cfg.bf16)

    def loss_at(step: int) -> tuple[torch.Tensor, int]:
        b = clips.batch(cfg.seed, step, cfg.batch_size)
        x0, actions, rays = d.shard(b.x0), d.shard(b.actions), d.shard(b.plucker)
        g = torch.Generator().manual_seed((cfg.seed * 1_000_003 + step) * 64 + d.rank)
        with amp:
            loss = objective(loop.module, x0, actions, rays, g, net=loop.net)
        return loss.float(), len(x0)

    def periodic(step: int) -> dict[str, float]:
        out: dict[str, float] = {}
        last = step == cfg.steps
        if val_clips is not None and (step % cfg.val_every == 0 or last):
            out["val_loss"] = _val_loss(loop.ema, val_clips, cfg)
        if val is not None and d.is_main and (step % tc.preview_every == 0 or last):
            out.update(_preview(loop.ema, codec, val, cond, cfg, loop.out / "previews" / f"step_{step:06d}.png"))
        return out

    def export(step: int, metrics: dict[str, float]) -> None:
        ck = CheckpointConfig(
            model=cfg.model,
            codec=codec.cfg,
            sampler=SamplerConfig(num_steps=tc.preview_steps, mode="euler"),
            action_encoder=encoder.spec(),
            frame_size=train.frame_size,
            conditioning=cond,
            provenance={"stage": "teacher", "step": step, "config": cfg.identity(), "metrics": dict(metrics)},
        )
        save_checkpoint(loop.out / "model", ck, loop.ema, codec)

    return loop.run(loss_at, periodic, export)


@torch.no_grad()
def _val_loss(model: WorldModel, clips: ClipSampler, cfg: TrainConfig) -> float:
    """Flow loss of ``model`` on fixed held-out clips (fixed noise), clean context, no dropout:
    the inference setting, the same for either training objective."""
    losses = []
    for i in range(cfg.val_batches):
        b: Batch = clips.batch(cfg.seed + 7919, i, cfg.batch_size, train=False)
        g = torch.Generator().manual_seed(10_007 + i)
        losses.append(diffusion_forcing_loss(model, b.x0, b.actions, b.plucker, g, clean_context_prob=1.0).item())
    return float(np.mean(losses))


@torch.no_grad()
def _preview(
    model: WorldModel, codec: Codec, val: EncodedSplit, cond: ConditioningConfig, cfg: TrainConfig, png: Path
) -> dict[str, float]:
    """Rollouts from ground-truth context on a few held-out episodes: PSNR, copy-last PSNR, contact sheet."""
    k = model.cfg.chunk_frames
    n_ctx, n_gen = cond.context_chunks * k, PREVIEW_CHUNKS * k
    eps = [
        e
        for e in np.linspace(0, len(val.latents) - 1, PREVIEW_EPISODES).round().astype(int)
        if len(val.latents[e]) >= n_ctx + n_gen
    ]
    if not eps:
        return {}
    mean, std = cond.stats(model.cfg.latent_channels)
    lat = torch.stack([(val.latents[e][: n_ctx + n_gen].float() - mean) / std for e in eps])
    act = torch.stack([val.actions[e][: n_ctx + n_gen] for e in eps])
    c2w = torch.stack([val.c2w[e][: n_ctx + n_gen] for e in eps])
    gen = ChunkGenerator(
        model, SamplerConfig(num_steps=cfg.teacher.preview_steps, mode="euler"), cond, val.intrinsics, val.frame_size
    )
    gen.reset(lat[:, :n_ctx], act[:, :n_ctx], c2w[:, :n_ctx])
    z = gen.rollout(act[:, n_ctx:], c2w[:, n_ctx:], torch.Generator().manual_seed(cfg.seed))
    frames = (
        tensor_to_frames(codec.decode((z * std + mean).flatten(0, 1)))
        .reshape(len(eps), n_gen, *val.frame_size, 3)
        .numpy()
    )
    rows, ours, base = [], [], []
    for j, e in enumerate(eps):
        gt = val.frames(e, 0, n_ctx + n_gen)
        ours.append(_psnr_db(frames[j], gt[n_ctx:]))
        base.append(_psnr_db(np.repeat(gt[n_ctx - 1 : n_ctx], n_gen, 0), gt[n_ctx:]))
        rows += [gt[n_ctx:], frames[j]]
    png.parent.mkdir(parents=True, exist_ok=True)
    write_png(png, contact_sheet(rows))
    return {"rollout_psnr_db": float(np.mean(ours)), "copy_last_psnr_db": float(np.mean(base))}
