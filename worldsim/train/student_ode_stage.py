"""``worldsim-train stage=student_ode``: the few-step student's causal ODE initialisation (Causal
Forcing, reference.md §6) on the pairs of ``stage=ode_pairs``.

The student is a copy of its teacher (architecture, codec, conditioning, action encoder; weights
from ``init_from``, by default the teacher itself). Per step: a seeded batch of pairs, each at one
of the levels a ``distill.student_steps``-step sampler starts a step from; the student reads the
clean context and the chunk's state there through the block-causal mask and regresses the
teacher's ODE end point (``objectives.ode_regression_loss``). The shared loop (loop.py) does the
rest. Every ``val_every`` steps the EMA student's loss on the held-out pairs; every
``distill.preview_every`` steps a rollout preview on held-out episodes with the student's own
sampler (``few_step``, ``student_steps`` steps, clean context), as the engine will play it. The
EMA student is exported to ``<out>/model``: a checkpoint every player and evaluation loads.
"""

from __future__ import annotations

import copy
import dataclasses
from pathlib import Path

import torch

from worldsim.core.actions import make_action_encoder
from worldsim.core.errors import WorldsimError
from worldsim.diffusion.sampler import SamplerConfig
from worldsim.inference.checkpoint import (
    CONFIG_FILE,
    CheckpointConfig,
    find_checkpoint,
    read_checkpoint_config,
    save_checkpoint,
)
from worldsim.inference.context import CameraRays
from worldsim.model.dit import WorldModel
from worldsim.train.config import TrainConfig
from worldsim.train.distributed import init_distributed
from worldsim.train.loop import TrainLoop
from worldsim.train.objectives import ode_regression_loss
from worldsim.train.ode_pairs import OdePairs, load_teacher, student_levels, teacher_sha256
from worldsim.train.teacher_data import EncodedSplit
from worldsim.train.teacher_stage import rollout_preview


def check_student_start(init_from: str, teacher: CheckpointConfig, teacher_path: str) -> None:
    """A student starts from its teacher or from an exported student of the same teacher
    architecture (the codec's decoder aside: the latents are its encoder's); ``WorldsimError``
    naming the first field that differs otherwise. A training
    state folder (``last/``) is checked through the ``model/`` export beside it."""
    root = Path(init_from)
    for folder in (root, root.parent / "model"):
        if (folder / CONFIG_FILE).is_file():
            start = read_checkpoint_config(folder)
            break
    else:
        raise WorldsimError(f"init_from: {root} is neither an exported checkpoint nor a run's last/ beside model/")
    for name in ("model", "conditioning", "codec", "action_encoder", "frame_size"):
        a, b = getattr(start, name), getattr(teacher, name)
        if name == "codec":  # the latents are the encoder's: a start with another decoder (with_codec) fits
            a, b = dataclasses.replace(a, decoder_channels=None), dataclasses.replace(b, decoder_channels=None)
        if name == "model":  # a student may read retrieved chunks its own way (distill.memory_*); its teacher does not
            a = dataclasses.replace(a, memory_embedding=b.memory_embedding, memory_adapter_rank=b.memory_adapter_rank)
        if a != b:
            if dataclasses.is_dataclass(a) and dataclasses.is_dataclass(b):
                field = next(f.name for f in dataclasses.fields(a) if getattr(a, f.name) != getattr(b, f.name))
                a, b, name = getattr(a, field), getattr(b, field), f"{name}.{field}"
            raise WorldsimError(
                f"init_from {root} does not match its teacher {teacher_path}: {name} is {a!r}, the teacher's {b!r}"
            )


def train_student_ode(cfg: TrainConfig) -> dict[str, float]:
    """Run the stage (module docstring) and export the EMA student to ``<out>/model``; returns the
    loop's summary. ``WorldsimError`` before any training for pairs of another teacher, a step
    count the pairs' grid does not hold, or a start that does not match the teacher."""
    d = init_distributed(cfg.device)
    dc = cfg.distill
    # Step 1: the teacher, its pairs and the student's start agree, before any slow work.
    ck, _, codec = load_teacher(dc.teacher)
    sha = teacher_sha256(dc.teacher)
    pairs = OdePairs.open(dc.pairs, "train")
    if pairs.meta["teacher_sha256"] != sha:
        raise WorldsimError(
            f"the pairs in {dc.pairs} were made by teacher {pairs.meta['teacher']} (weights sha256 "
            f"{pairs.meta['teacher_sha256'][:12]}), distill.teacher {dc.teacher} is another ({sha[:12]})"
        )
    n_steps, shift = dc.student_steps, float(pairs.meta["shift"])
    levels = torch.tensor(student_levels(pairs.grid_sigmas, n_steps, shift))  # where the student's steps start
    sigmas = torch.tensor(pairs.grid_sigmas, dtype=torch.float32)
    val_pairs = OdePairs.open(dc.pairs, "val") if pairs.meta["counts"].get("val") else None
    intr = ck.conditioning.intrinsics_matrix()
    if intr is None:
        raise WorldsimError(f"distill.teacher {dc.teacher} records no camera intrinsics (conditioning.intrinsics)")
    init = cfg.init_from or str(find_checkpoint(dc.teacher))
    if not cfg.resume:
        check_student_start(init, ck, dc.teacher)
    cfg = dataclasses.replace(cfg, init_from=init)
    sampler = SamplerConfig(num_steps=n_steps, shift=shift, mode="few_step")
    encoder = make_action_encoder(str(ck.action_encoder["name"]), list(ck.action_encoder["key_names"]))
    identity = {**cfg.identity(), "teacher_sha256": sha}
    loop = TrainLoop(
        cfg, WorldModel(ck.model), ["val_loss", "rollout_psnr_db", "copy_last_psnr_db"], d, identity=identity
    )
    # Step 2: held-out episodes for the previews (latents cached in <out>/latents).
    val = None
    if cfg.val_data and d.is_main:
        cache = loop.out / "latents"
        val = EncodedSplit.encode(cfg.val_data, codec, encoder, "encode val", cache)
    rays = CameraRays(ck.conditioning, intr, ck.frame_size, ck.model.latent_shape()[1:])
    amp = loop.autocast()

    def inputs(p: OdePairs, idx: torch.Tensor, level: torch.Tensor) -> tuple[torch.Tensor, ...]:
        t = p.tensors
        plucker = rays.relative_to(t["c2w"][idx], t["ray_ref"][idx], torch.float32)
        x_sigma = t["states"][idx, level]
        return t["context"][idx], x_sigma, sigmas[level], t["end"][idx], t["actions"][idx], plucker

    def loss_at(step: int) -> tuple[torch.Tensor, int]:
        g = torch.Generator().manual_seed(cfg.seed * 1_000_003 + step)
        idx = torch.randint(len(pairs), (cfg.batch_size,), generator=g)
        level = levels[torch.randint(n_steps, (cfg.batch_size,), generator=g)]
        context, x_sigma, sigma, end, actions, plucker = (d.shard(x).to(d.device) for x in inputs(pairs, idx, level))
        with amp:
            loss = ode_regression_loss(loop.module, context, x_sigma, sigma, end, actions, plucker, net=loop.net)
        return loss.float(), cfg.batch_size // d.world

    @torch.no_grad()
    def val_loss() -> float:
        assert val_pairs is not None
        n = min(len(val_pairs), cfg.val_batches * cfg.batch_size)
        total = 0.0
        for s in range(0, n, cfg.batch_size):
            idx = torch.arange(s, min(n, s + cfg.batch_size))
            level = levels[idx % n_steps]  # every level, fixed per pair
            context, x_sigma, sigma, end, actions, plucker = (x.to(d.device) for x in inputs(val_pairs, idx, level))
            total += ode_regression_loss(loop.ema, context, x_sigma, sigma, end, actions, plucker).item() * len(idx)
        return total / n

    def periodic(step: int) -> dict[str, float]:
        out: dict[str, float] = {}
        last = step == cfg.steps
        if val_pairs is not None and (step % cfg.val_every == 0 or last):
            out["val_loss"] = val_loss()
        if val is not None and (step % dc.preview_every == 0 or last):
            ema = loop.ema if d.device.type == "cpu" else copy.deepcopy(loop.ema).cpu()
            png = loop.out / "previews" / f"step_{step:06d}.png"
            out.update(rollout_preview(ema, codec, val, ck.conditioning, sampler, cfg.seed, png))
        return out

    def export(step: int, metrics: dict[str, float]) -> None:
        provenance = {
            "stage": "student_ode",
            "step": step,
            "teacher": str(dc.teacher),
            "teacher_sha256": sha,
            "pairs": str(dc.pairs),
            "config": identity,
            "metrics": dict(metrics),
        }
        student = dataclasses.replace(ck, sampler=sampler, provenance=provenance)
        save_checkpoint(loop.out / "model", student, loop.ema, codec)

    return loop.run(loss_at, periodic, export)
