"""Whether a student draws what a retrieved chunk shows, apart from how far its rollout drifted.

    python tools/memory_read_probe.py CHECKPOINT [CHECKPOINT ...] [--data data/builtin_v6_30fps/val]

On held-out revisit clips (the DMD stage's ``revisit_clips`` over ``--data``: a true context that
does not show the view the clip ends on, after an earlier chunk of the episode that does), each
student rolls out the window after the true context through the rollout the engine plays with
(``SelfForcingDMD.rollout``, the student's own sampler, every chunk to its last step), three ways:
with the earlier view in the memory slot of every window chunk (as the play-time bank brings it
back), without memory, and with another clip's earlier view in the slot (a wrong memory, at the
right pose). Printed per checkpoint: the PSNR (dB) of the decoded window to the decoded true
latents over the frames the earlier view shows (``Batch.weight``: it covers at least half of
their view) and over the other window frames. A student that reads the retrieved chunk gains on
the shown frames with the right memory and loses with the wrong one; one that ignores it scores
the three alike. The clips and noise are the same for every checkpoint and mode.
"""

from __future__ import annotations

import argparse
import dataclasses

import numpy as np
import torch

from worldsim.core.actions import make_action_encoder
from worldsim.core.errors import WorldsimError, clean_errors
from worldsim.data.metrics import psnr
from worldsim.inference.checkpoint import load_checkpoint
from worldsim.train.config import DistillConfig, TrainConfig
from worldsim.train.student_dmd_stage import DMDNetworks, RolloutPlan, SelfForcingDMD, revisit_clips
from worldsim.train.teacher_data import EncodedSplit
from worldsim.train.teacher_stage import preview_frames

MODES = ("memory", "none", "wrong")


def _psnr(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Per-frame PSNR (dB) of uint8 frames ``a`` against ``b``, both ``(B, T, H, W, 3)`` ->
    ``(B, T)`` (the evaluation's :func:`worldsim.data.metrics.psnr`, frame by frame)."""
    return psnr(a.reshape(-1, *a.shape[-3:]), b.reshape(-1, *b.shape[-3:])).reshape(a.shape[:-3])


@torch.no_grad()
def probe(checkpoint: str, data: str, window: int, batches: int, batch_size: int) -> dict[str, float]:
    """``{mode}_shown_db`` and ``{mode}_other_db`` for every mode (module docstring)."""
    ck, model, codec = load_checkpoint(checkpoint)
    model.eval()
    enc = make_action_encoder(ck.action_encoder["name"], list(ck.action_encoder["key_names"]))
    null = torch.from_numpy(enc.null_action())
    split = EncodedSplit.encode(data, codec, enc, "encode")
    cfg = TrainConfig(stage="student_dmd", distill=DistillConfig(rollout_chunks=window, revisit_prob=1.0))
    clips = revisit_clips(split, ck, cfg, null)
    intr = ck.conditioning.intrinsics_matrix()
    if intr is None:
        raise WorldsimError(f"{checkpoint} records no camera intrinsics")
    dmd = SelfForcingDMD(DMDNetworks(model, model), model, ck, ck.sampler, cfg.distill, intr, null)
    exits = [ck.sampler.num_steps - 1] * window
    k, n = ck.chunk_frames, window * ck.chunk_frames
    scores: dict[str, list[np.ndarray]] = {f"{m}_{p}": [] for m in MODES for p in ("shown", "other")}
    for i in range(batches):
        batch = clips.batch(0, i, batch_size, train=True)
        truth = preview_frames(model, codec, ck.conditioning, batch.x0[:, -n:])
        shown = batch.weight[:, -n:].numpy() > 0
        wrong = dataclasses.replace(batch, x0=torch.cat([batch.x0[:, :k].roll(1, 0), batch.x0[:, k:]], 1))
        for mode in MODES:
            plan = RolloutPlan(exits, revisit=mode != "none")
            z, _ = dmd.rollout(wrong if mode == "wrong" else batch, plan, torch.Generator().manual_seed(i))
            db = _psnr(preview_frames(model, codec, ck.conditioning, z), truth)
            scores[f"{mode}_shown"].append(db[shown])
            scores[f"{mode}_other"].append(db[~shown])
    return {f"{name}_db": float(np.concatenate(v).mean()) for name, v in scores.items()}


@clean_errors
def main() -> None:
    """Parse the options and print one line per checkpoint."""
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("checkpoints", nargs="+")
    p.add_argument("--data", default="data/builtin_v6_30fps/val")
    p.add_argument("--window", type=int, default=4, help="window chunks after the true context")
    p.add_argument("--batches", type=int, default=4)
    p.add_argument("--batch-size", type=int, default=8)
    args = p.parse_args()
    for ckpt in args.checkpoints:
        r = probe(ckpt, args.data, args.window, args.batches, args.batch_size)
        gain = r["memory_shown_db"] - r["none_shown_db"]
        print(
            f"{ckpt}: frames the earlier view shows: memory {r['memory_shown_db']:.2f} / none {r['none_shown_db']:.2f}"
            f" / wrong memory {r['wrong_shown_db']:.2f} dB (memory - none {gain:+.2f});"
            f" other frames: memory {r['memory_other_db']:.2f} / none {r['none_other_db']:.2f}"
            f" / wrong {r['wrong_other_db']:.2f} dB"
        )


if __name__ == "__main__":
    main()
