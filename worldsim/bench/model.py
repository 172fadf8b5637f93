"""Model-only speed of the chunk-autoregressive rollout on this machine (``worldsim-bench model``).

It times the rollout the engine runs (``worldsim.inference.rollout.ChunkRollout``), per context
policy, on a size preset with random weights (speed does not depend on them): ``rebuild`` with
the shipped teacher's conditioning (camera relative to the newest frame: the context's keys and
values are recomputed every chunk) and ``cached`` with a session-reference conditioning (the
context's keys and values stay in the KV cache). Every number is per generated chunk, batch 1,
the median of steady-state chunks after warm-up, under ``torch.inference_mode``, split into the
rollout's stages (context, denoising passes, cache write); decoding and display are excluded
(``worldsim-bench engine`` adds them). Frames/s equivalents are ``chunk_frames / seconds``.
"""

from __future__ import annotations

import time
from contextlib import nullcontext
from typing import Any

import numpy as np
import torch
from torch.utils.flop_counter import FlopCounterMode

from worldsim.core.camera import intrinsics_from_fov, make_c2w
from worldsim.diffusion.sampler import SamplerConfig
from worldsim.inference.context import ConditioningConfig
from worldsim.inference.rollout import CONTEXT_POLICIES, ChunkRollout
from worldsim.model.dit import WorldModel, WorldModelConfig

CODEC_DOWNSAMPLE = 4  # the shipped codec's; only scales the rays' intrinsics here


def matmul_gflops(n: int = 1024, repeats: int = 10) -> float:
    """Dense fp32 matmul throughput of this machine, GFLOP/s (the ceiling the model is compared to)."""
    a, b = torch.randn(n, n), torch.randn(n, n)
    a @ b
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        a @ b
        times.append(time.perf_counter() - t0)
    return 2 * n**3 / float(np.median(times)) / 1e9


class RolloutProbe:
    """A rollout of ``model`` under ``policy`` from a random clean context, fed a walking,
    turning camera; :meth:`step` generates one chunk and returns its stage timings."""

    def __init__(
        self, model: WorldModel, policy: str, steps: int, context_chunks: int, device: str = "cpu", seed: int = 0
    ):
        cfg = model.cfg
        ch, lh, lw = cfg.latent_shape()
        frame = (lh * CODEC_DOWNSAMPLE, lw * CODEC_DOWNSAMPLE)
        intr = torch.from_numpy(intrinsics_from_fov(60.0, *frame))
        ref = "latest" if policy == "rebuild" else "session"
        cond = ConditioningConfig(context_chunks=context_chunks, camera_reference=ref)
        self.k, self.device = cfg.chunk_frames, torch.device(device)
        self.rollout = ChunkRollout(model, SamplerConfig(num_steps=steps, mode="few_step"), cond, intr, frame, policy)
        self.g = torch.Generator(device=self.device).manual_seed(seed)
        self.frame = 0
        n = context_chunks * self.k
        lat = torch.randn(1, n, ch, lh, lw, generator=self.g, device=self.device)
        with torch.inference_mode():
            self.rollout.reset(lat, self._actions(n), self._poses(n), self.g)

    def _actions(self, n: int) -> torch.Tensor:
        a_dim = self.rollout.model.cfg.action_dim
        assert a_dim is not None, "a model config with its action_dim (the encoder's dim)"
        return torch.zeros(1, n, a_dim, device=self.device)

    def _poses(self, n: int) -> torch.Tensor:
        idx = range(self.frame, self.frame + n)
        self.frame += n
        c2w = [make_c2w(np.array([0.4 * i, 0.0, 0.3 * i]), 0.05 * i, 0.0) for i in idx]
        return torch.from_numpy(np.stack(c2w)).to(self.device)[None]

    def step(self) -> dict[str, float]:
        """Generate one chunk -> seconds by stage (context, denoise, cache_write, total)."""
        with torch.inference_mode():
            self.rollout.step(self._actions(self.k), self._poses(self.k), self.g)
        t = self.rollout.timings
        return {"context": t.context_s, "denoise": t.denoise_s, "cache_write": t.cache_write_s, "total": t.model_s}


def time_policy(
    model: WorldModel,
    policy: str,
    steps: int,
    context_chunks: int,
    bf16: bool = False,
    chunks: int = 6,
    warmup: int = 2,
    device: str = "cpu",
) -> dict[str, float]:
    """Median seconds per chunk of each stage over ``chunks`` steady chunks."""
    probe = RolloutProbe(model, policy, steps, context_chunks, device)
    amp = torch.autocast(torch.device(device).type, dtype=torch.bfloat16) if bf16 else nullcontext()
    rows: list[dict[str, float]] = []
    with amp:
        for i in range(warmup + chunks):
            r = probe.step()
            if i >= warmup:
                rows.append(r)
    return {key: float(np.median([r[key] for r in rows])) for key in rows[0]}


def chunk_pass_flops(model: WorldModel, context_chunks: int) -> int:
    """FLOPs of one network pass of a chunk against a full cache (the unit of every stage)."""
    probe = RolloutProbe(model, "cached", 1, context_chunks)
    counter = FlopCounterMode(display=False)
    cache = probe.rollout.cache
    cfg = model.cfg
    k = cfg.chunk_frames
    ch, lh, lw = cfg.latent_shape()
    x = torch.randn(1, k, ch, lh, lw)
    with counter, torch.inference_mode():
        actions, rays = probe._actions(k), torch.zeros(1, k, 6, lh, lw)
        model.forward_chunk(x, torch.ones(1, k), actions, rays, torch.arange(k), cache)
    return int(counter.get_total_flops())


def time_split(model: WorldModel, steps: int, context_chunks: int, top: int = 6) -> dict[str, float]:
    """Share of self CPU time per operator for one cached chunk (profiler), the largest ``top`` + rest."""
    probe = RolloutProbe(model, "cached", steps, context_chunks)
    probe.step()
    with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU]) as prof:
        probe.step()
    rows = sorted(((e.key, e.self_cpu_time_total) for e in prof.key_averages()), key=lambda r: -r[1])
    total = sum(t for _, t in rows) or 1.0
    split = {f"time_share_{name}": t / total for name, t in rows[:top]}
    split["time_share_other"] = sum(t for _, t in rows[top:]) / total
    return split


def bench_model(
    cfg: WorldModelConfig,
    step_counts: tuple[int, ...] = (1, 2, 4, 8),
    context_chunks: int = 2,
    device: str = "cpu",
) -> dict[str, Any]:
    """Every row of ``worldsim-bench model`` (module docstring) for a model of ``cfg``."""
    torch.manual_seed(0)
    model = WorldModel(cfg).eval().to(device)
    k = cfg.chunk_frames
    res: dict[str, Any] = {
        "params_M": sum(p.numel() for p in model.parameters()) / 1e6,
        "chunk_frames": k,
        "tokens_per_chunk": k * cfg.tokens_per_frame,
        "context_chunks": context_chunks,
        "device": device,
    }
    for policy in CONTEXT_POLICIES:
        for steps in step_counts:
            t = time_policy(model, policy, steps, context_chunks, device=device)
            p = f"{policy}_{steps}step"
            res[f"{p}_ms_per_chunk"] = 1000 * t["total"]
            res[f"{p}_frames_per_s"] = k / t["total"]
            for stage in ("context", "denoise", "cache_write"):
                res[f"{p}_{stage}_ms"] = 1000 * t[stage]
    for steps in step_counts:
        res[f"cached_speedup_{steps}step"] = (
            res[f"rebuild_{steps}step_ms_per_chunk"] / res[f"cached_{steps}step_ms_per_chunk"]
        )
    t_bf16 = time_policy(model, "cached", 2, context_chunks, bf16=True, device=device)
    res["bf16_cached_2step_ms_per_chunk"] = 1000 * t_bf16["total"]
    res["bf16_speedup_cached_2step"] = res["cached_2step_ms_per_chunk"] / res["bf16_cached_2step_ms_per_chunk"]
    if device == "cpu":
        flops = chunk_pass_flops(model, context_chunks)
        one_pass_s = res["cached_1step_ms_per_chunk"] / 1000 / 2  # 1 denoising pass + 1 cache write
        res["GFLOP_per_chunk_pass"] = flops / 1e9
        res["model_GFLOP_per_s"] = flops / one_pass_s / 1e9
        res["matmul_GFLOP_per_s"] = matmul_gflops()
        res["fraction_of_matmul"] = res["model_GFLOP_per_s"] / res["matmul_GFLOP_per_s"]
        for mult in (1, 4, 16):
            t = time_policy(model, "cached", 2, context_chunks * mult, chunks=3)
            res[f"cached_context_{mult}x_2step_ms_per_chunk"] = 1000 * t["total"]
        res.update(time_split(model, 2, context_chunks))
    return res
