"""Model-only speed of the chunk-autoregressive DiT on this machine (``worldsim-bench model``).

Every number is per generated chunk, batch 1, random weights (speed does not depend on them),
steady state after warm-up, under ``torch.inference_mode``; it includes the denoising steps and
the clean pass that writes the cache, and excludes decoding and display. Frames/s equivalents
are ``chunk_frames / seconds_per_chunk``.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from contextlib import nullcontext
from typing import Any

import torch
from torch.utils.flop_counter import FlopCounterMode

from worldsim.diffusion.sampler import Sampler, SamplerConfig
from worldsim.model.attention import chunk_mask
from worldsim.model.dit import WorldModel, WorldModelConfig
from worldsim.train.objectives import chunk_ids_of_tokens


def _timeit(fn: Any, repeats: int) -> float:
    fn()  # warm-up
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    times.sort()
    return times[len(times) // 2]  # median


def matmul_gflops(n: int = 1024, repeats: int = 10) -> float:
    a, b = torch.randn(n, n), torch.randn(n, n)
    s = _timeit(lambda: a @ b, repeats)
    return 2 * n**3 / s / 1e9


class _Chunk:
    """Inputs of one chunk for a given model config."""

    def __init__(self, cfg: WorldModelConfig):
        k, (h, w) = cfg.chunk_frames, cfg.latent_size
        assert cfg.action_dim is not None, "a model config with its action_dim (the encoder's dim)"
        self.shape = (1, k, cfg.latent_channels, h, w)
        self.actions = torch.zeros(1, k, cfg.action_dim)
        self.plucker = torch.randn(1, k, 6, h, w)


def _filled_cache(model: WorldModel, chunk: _Chunk, context_chunks: int) -> Any:
    cache = model.new_cache(window_chunks=context_chunks, use_sink=False)
    k = model.cfg.chunk_frames
    with torch.inference_mode():
        for b in range(context_chunks):
            model.forward_chunk(
                torch.randn(chunk.shape),
                torch.zeros(1, k),
                chunk.actions,
                chunk.plucker,
                torch.arange(b * k, (b + 1) * k),
                cache,
                True,
            )
    return cache


def chunk_job(model: WorldModel, steps: int, context_chunks: int) -> Callable[[], None]:
    """One chunk as play would make it: ``steps`` denoising steps plus the clean pass, against a
    cache of ``context_chunks`` chunks. The clean pass runs without writing so repeated calls
    see the same cache length."""
    chunk = _Chunk(model.cfg)
    cache = _filled_cache(model, chunk, context_chunks)
    sampler = Sampler(SamplerConfig(num_steps=steps, mode="few_step"))
    k = model.cfg.chunk_frames
    pos = torch.arange(context_chunks * k, (context_chunks + 1) * k)

    def run() -> None:
        x0 = sampler.sample_chunk(model, cache, chunk.actions, chunk.plucker, pos, chunk.shape, write_cache=False)
        with torch.inference_mode():
            model.forward_chunk(x0, torch.zeros(1, k), chunk.actions, chunk.plucker, pos, cache, write=False)

    return run


def seconds_per_chunk(
    model: WorldModel, steps: int, context_chunks: int, bf16: bool = False, repeats: int = 5
) -> float:
    run = chunk_job(model, steps, context_chunks)
    amp = torch.autocast("cpu", dtype=torch.bfloat16) if bf16 else nullcontext()

    def timed() -> None:
        with amp:
            run()

    return _timeit(timed, repeats)


def seconds_per_chunk_recompute(model: WorldModel, steps: int, context_chunks: int, repeats: int = 3) -> float:
    """No cache: every step runs the whole context plus the chunk under the block-causal mask."""
    cfg = model.cfg
    assert cfg.action_dim is not None  # WorldModel refuses a config without it
    k, n = cfg.chunk_frames, context_chunks + 1
    t = n * k
    x = torch.randn(1, t, cfg.latent_channels, *cfg.latent_size)
    ids = chunk_ids_of_tokens(t, k, cfg.tokens_per_frame, x.device)
    mask = chunk_mask(ids, ids)
    acts, rays = torch.zeros(1, t, cfg.action_dim), torch.randn(1, t, 6, *cfg.latent_size)

    def run() -> None:
        with torch.inference_mode():
            for _ in range(steps):
                model(x, torch.zeros(1, t), acts, rays, torch.arange(t), mask)

    return _timeit(run, repeats)


def chunk_pass_flops(model: WorldModel, context_chunks: int) -> int:
    chunk = _Chunk(model.cfg)
    cache = _filled_cache(model, chunk, context_chunks)
    k = model.cfg.chunk_frames
    counter = FlopCounterMode(display=False)
    with counter, torch.inference_mode():
        model.forward_chunk(
            torch.randn(chunk.shape), torch.zeros(1, k), chunk.actions, chunk.plucker, torch.arange(k), cache
        )
    return int(counter.get_total_flops())


def time_split(model: WorldModel, steps: int, context_chunks: int, top: int = 6) -> dict[str, float]:
    """Share of self CPU time per operator for one chunk (profiler), the largest ``top`` + rest."""
    run = chunk_job(model, steps, context_chunks)
    with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU]) as prof:
        run()
    rows = sorted(((e.key, e.self_cpu_time_total) for e in prof.key_averages()), key=lambda r: -r[1])
    total = sum(t for _, t in rows) or 1.0
    split = {f"time_share_{name}": t / total for name, t in rows[:top]}
    split["time_share_other"] = sum(t for _, t in rows[top:]) / total
    return split


def bench_model(
    cfg: WorldModelConfig, step_counts: tuple[int, ...] = (1, 2, 4, 8), context_chunks: int = 2
) -> dict[str, Any]:
    torch.manual_seed(0)
    model = WorldModel(cfg).eval()
    k = cfg.chunk_frames
    res: dict[str, Any] = {
        "params_M": sum(p.numel() for p in model.parameters()) / 1e6,
        "tokens_per_chunk": k * cfg.tokens_per_frame,
        "context_chunks": context_chunks,
    }
    for steps in step_counts:
        s = seconds_per_chunk(model, steps, context_chunks)
        res[f"fp32_{steps}step_ms_per_chunk"] = 1000 * s
        res[f"fp32_{steps}step_frames_per_s"] = k / s
    s_bf16 = seconds_per_chunk(model, 2, context_chunks, bf16=True)
    res["bf16_2step_ms_per_chunk"] = 1000 * s_bf16
    res["bf16_2step_frames_per_s"] = k / s_bf16
    res["bf16_speedup_2step"] = res["fp32_2step_ms_per_chunk"] / res["bf16_2step_ms_per_chunk"]
    s_re = seconds_per_chunk_recompute(model, 2, context_chunks)
    res["recompute_2step_ms_per_chunk"] = 1000 * s_re
    res["kv_cache_speedup_2step"] = s_re / (res["fp32_2step_ms_per_chunk"] / 1000)
    flops = chunk_pass_flops(model, context_chunks)
    one_pass_s = seconds_per_chunk(model, 1, context_chunks) / 2  # 1 step + 1 clean pass
    res["GFLOP_per_chunk_pass"] = flops / 1e9
    res["model_GFLOP_per_s"] = flops / one_pass_s / 1e9
    res["matmul_GFLOP_per_s"] = matmul_gflops()
    res["fraction_of_matmul"] = res["model_GFLOP_per_s"] / res["matmul_GFLOP_per_s"]
    for mult in (1, 4, 16):
        res[f"context_{mult}x_2step_ms_per_chunk"] = 1000 * seconds_per_chunk(
            model, 2, context_chunks * mult, repeats=3
        )
    res.update(time_split(model, 2, context_chunks))
    return res
