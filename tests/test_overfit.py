"""A tiny model overfits a few recorded clips of the built-in world and reproduces them."""

import numpy as np
import torch
import torch.nn.functional as F

from worldsim.core.actions import make_action_encoder
from worldsim.diffusion.sampler import SamplerConfig
from worldsim.inference.context import ConditioningConfig
from worldsim.inference.rollout import ChunkRollout
from worldsim.model.dit import WorldModel, WorldModelConfig
from worldsim.model.plucker import plucker_rays, relative_poses, scale_intrinsics
from worldsim.train.objectives import teacher_forcing_loss


def _latents(frames_u8):
    """Stand-in latents for this test: frames average-pooled to 8x8 in [-1, 1] (no codec)."""
    x = torch.from_numpy(frames_u8).permute(0, 3, 1, 2).float() / 127.5 - 1
    return F.avg_pool2d(x, 8)  # (T, 3, 8, 8)


def test_tiny_model_overfits_recorded_clips_and_reproduces_them(small_dataset):
    torch.manual_seed(0)
    enc = make_action_encoder("keyboard_mouse", small_dataset.meta.key_names)
    t_len = 8
    clips = []
    for ep in range(len(small_dataset)):
        arr = small_dataset.load(ep)
        for start in (0, 12):
            sl = slice(start, start + t_len)
            c2w = torch.from_numpy(arr["c2w"][sl]).double()
            k = scale_intrinsics(torch.from_numpy(arr["intrinsics"]).double(), 1 / 8)
            rel = relative_poses(c2w, c2w[0])  # the session reference: the clip's first frame
            rel[:, :3, 3] /= 8.0
            rays = plucker_rays(rel, k, 8, 8).float()
            acts = torch.from_numpy(enc.encode_batch(arr["keys"][sl], arr["mouse"][sl]))
            clips.append((_latents(arr["frames"][sl]), acts, rays, c2w))
    x0 = torch.stack([c[0] for c in clips])
    acts = torch.stack([c[1] for c in clips])
    rays = torch.stack([c[2] for c in clips])
    c2ws = torch.stack([c[3] for c in clips]).float()
    cfg = WorldModelConfig(
        latent_channels=3, latent_size=(8, 8), patch=2, width=64, depth=2, heads=4, action_dim=enc.dim, chunk_frames=4
    )
    model = WorldModel(cfg)
    opt = torch.optim.AdamW(model.parameters(), lr=3e-3, weight_decay=0.0)
    g = torch.Generator().manual_seed(0)
    losses = []
    for _ in range(600):
        loss = teacher_forcing_loss(model, x0, acts, rays, generator=g)
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    first, last = np.mean(losses[:10]), np.mean(losses[-10:])
    assert last < first / 10, (first, last)

    # Reproduce chunk 2 of each clip from its ground-truth first chunk through the sampler.
    model.eval()
    # The engine's path: the cached rollout with the conditioning the clips were trained with.
    cond = ConditioningConfig(context_chunks=1, translation_scale_m=8.0, camera_reference="session")
    k8 = torch.from_numpy(small_dataset.load(0)["intrinsics"])
    errs, chance = [], []
    for i in range(len(clips)):
        roll = ChunkRollout(model, SamplerConfig(num_steps=8, mode="euler"), cond, k8, (64, 64), "cached")
        with torch.inference_mode():
            roll.reset(x0[i : i + 1, :4], acts[i : i + 1, :4], c2ws[i : i + 1, :4])
            gen = roll.step(acts[i : i + 1, 4:], c2ws[i : i + 1, 4:], torch.Generator().manual_seed(i))
        errs.append(F.mse_loss(gen, x0[i : i + 1, 4:]).item())
        other = (i + 1) % len(clips)  # another clip's chunk: what a guess unrelated to the context scores
        chance.append(F.mse_loss(x0[other : other + 1, 4:], x0[i : i + 1, 4:]).item())
    assert np.mean(errs) < 0.5 * np.mean(chance), (errs, chance)
