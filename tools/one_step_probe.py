"""What a teacher reads: its one-step clean estimate of the next chunk on held-out clips, with the
rays, the actions or the context taken away.

    python tools/one_step_probe.py CHECKPOINT DATA [--cache DIR] [--batches 6]

Each clip (the teacher's own clip sampler: ``context_chunks`` clean chunks, then one chunk) gets its
last chunk noised to sigma (flow matching: ``(1 - sigma) x0 + sigma eps``) and the model's clean
estimate ``x0_hat = x_sigma - sigma v``; printed is the mean squared error of ``x0_hat`` against
the true latents (normalised as the model reads them), beside two baselines: copying the last
context frame's latents, and predicting 0 (the latent mean the normalisation assumes). Variants:
the Plücker rays zeroed, the encoder's null action in every frame, and the context of another clip
of the batch. A model that reads its conditioning gets worse without it. ``--cache`` is a
training run's ``latents`` folder (skips encoding when the codec and data match).
"""

from __future__ import annotations

import argparse
from pathlib import Path

import torch

from worldsim.core.actions.registry import make_action_encoder
from worldsim.inference.checkpoint import load_checkpoint
from worldsim.model.attention import chunk_mask
from worldsim.train.config import TeacherConfig
from worldsim.train.objectives import chunk_ids_of_tokens
from worldsim.train.teacher_data import ClipSampler, EncodedSplit

SIGMAS = (0.1, 0.3, 0.5, 0.8, 1.0)


def probe(checkpoint: str, data: str, cache: Path | None, batches: int, batch_size: int = 8) -> dict[str, float]:
    """Mean x0 MSE per row name (see the module docstring)."""
    cfg, model, codec = load_checkpoint(checkpoint)
    model.eval()
    enc = make_action_encoder(cfg.action_encoder["name"], list(cfg.action_encoder["key_names"]))
    split = EncodedSplit.encode(data, codec, enc, "encode val", cache)
    tc = TeacherConfig(
        encoder=cfg.action_encoder["name"],
        context_chunks=cfg.conditioning.context_chunks,
        camera_reference=cfg.conditioning.camera_reference,
        memory_prob=0.0,
    )
    null = torch.from_numpy(enc.null_action())
    k = cfg.model.chunk_frames
    clips = ClipSampler(split, k, tc, cfg.conditioning, cfg.model.latent_shape()[1:], null)
    gen = torch.Generator().manual_seed(0)
    rows: dict[str, list[float]] = {}
    with torch.no_grad():
        for i in range(batches):
            b = clips.batch(123, i, batch_size, train=False)
            x0, actions, rays = b.x0, b.actions, b.plucker
            n, t = x0.shape[:2]
            mask = chunk_mask(*(chunk_ids_of_tokens(t, k, model.cfg.tokens_per_frame, x0.device),) * 2)
            pos = torch.arange(t)
            last = x0[:, -k:]
            rows.setdefault("copy the last context frame", []).append(float(((x0[:, -k - 1 : -k] - last) ** 2).mean()))
            rows.setdefault("predict 0 (the latent mean)", []).append(float((last**2).mean()))
            for s in SIGMAS:
                eps = torch.randn(last.shape, generator=gen)
                xt = x0.clone()
                xt[:, -k:] = (1 - s) * last + s * eps
                sigma = torch.zeros(n, t)
                sigma[:, -k:] = s
                other = torch.cat([xt[:, :-k].roll(1, 0), xt[:, -k:]], 1)
                variants = {
                    "model": (xt, actions, rays),
                    "no rays": (xt, actions, rays * 0),
                    "null actions": (xt, null.expand_as(actions), rays),
                    "context of another clip": (other, actions, rays),
                }
                for name, (x, a, r) in variants.items():
                    v = model(x, sigma, a, r, pos, mask)[:, -k:]
                    err = ((xt[:, -k:] - s * v - last) ** 2).mean()
                    rows.setdefault(f"sigma {s}: {name}", []).append(float(err))
    return {name: sum(v) / len(v) for name, v in rows.items()}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("checkpoint")
    p.add_argument("data", help="held-out episodes (a dataset folder or a folder of them)")
    p.add_argument("--cache", type=Path, default=None, help="a training run's latents folder")
    p.add_argument("--batches", type=int, default=6)
    a = p.parse_args()
    for name, mse in probe(a.checkpoint, a.data, a.cache, a.batches).items():
        print(f"{name:<40} x0 MSE {mse:.4f}")


if __name__ == "__main__":
    main()
