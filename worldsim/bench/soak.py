"""A long session through the engine (``worldsim-bench soak``): does anything grow?

The engine plays ``frames`` frames from a world seed's start under the explore policy (batch 1,
``torch.inference_mode``, the checkpoint's own sampler and context policy, fp32 unless ``bf16``),
the path ``play.py`` runs minus the window. Every ``window`` frames it reports the mean wall time
per chunk of that window (model and decode, from the engine's own timings) and the process's
resident memory at the window's end (current, not peak: ``/proc/self/statm`` on Linux). The
summary compares the last window with the first: ``cost_ratio_last_over_first`` (a bounded context
keeps it near 1) and ``rss_growth_pct``.
"""

from __future__ import annotations

import os
import resource
import time
from typing import Any

import numpy as np
from tqdm import tqdm

from envs.starts import engine_world_start
from worldsim.core.errors import WorldsimError
from worldsim.data.policies import make_policy
from worldsim.inference.engine import load_engine


def resident_mb() -> float:
    """The process's resident memory now, MiB (the peak where ``/proc`` is not available)."""
    try:
        with open("/proc/self/statm") as f:
            pages = int(f.read().split()[1])
        return pages * os.sysconf("SC_PAGE_SIZE") / 2**20
    except (OSError, ValueError, IndexError):
        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def bench_soak(
    checkpoint: str, frames: int = 10_000, window: int = 1000, seed: int = 0, bf16: bool | None = False
) -> dict[str, Any]:
    """The soak of the module docstring -> ``{"windows": [{frames, chunk_ms, rss_MB}, ...],
    "cost_ratio_last_over_first", "rss_growth_pct", ...}``. ``WorldsimError`` when ``window``
    is not a positive multiple of the chunk length or ``frames`` holds fewer than two windows."""
    engine = load_engine(checkpoint, seed=seed, bf16=bf16)
    k = engine.chunk_frames
    if window < k or window % k or frames < 2 * window:
        raise WorldsimError(
            f"--window must be a positive multiple of the chunk length ({k}) and --frames at least two windows; "
            f"got --window {window} --frames {frames}"
        )
    start = engine_world_start(engine, seed)
    engine.reset(*start.arrays())
    n_chunks = frames // k
    acts = make_policy("explore", engine.key_names, engine.cfg.controller).actions(
        n_chunks * k, np.random.default_rng(seed)
    )
    rows: list[dict[str, float]] = []
    times: list[float] = []
    t0 = time.perf_counter()
    for c in tqdm(range(n_chunks), desc="soak", unit="chunk"):
        chunk = engine.step(acts.keys[c * k : (c + 1) * k], acts.mouse[c * k : (c + 1) * k])
        t = chunk.timings
        times.append(t.context_s + t.denoise_s + t.cache_write_s + t.decode_s)
        if ((c + 1) * k) % window == 0:
            rows.append(
                {"frames": float((c + 1) * k), "chunk_ms": 1000 * float(np.mean(times)), "rss_MB": resident_mb()}
            )
            times = []
    first, last = rows[0], rows[-1]
    return {
        "checkpoint": checkpoint,
        "frames": n_chunks * k,
        "window": window,
        "chunk_frames": k,
        "wall_s": time.perf_counter() - t0,
        "windows": rows,
        "cost_ratio_last_over_first": last["chunk_ms"] / first["chunk_ms"],
        "rss_growth_pct": 100.0 * (last["rss_MB"] / first["rss_MB"] - 1.0),
    }
