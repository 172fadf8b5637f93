"""End-to-end speed of a checkpoint through the engine (``worldsim-bench engine``).

What each number includes:

* ``load_s``: reading and validating the checkpoint. ``first_chunk_s``: from a fresh engine to the
  first generated chunk, starting from a world seed (ground-truth context render, encode, one
  chunk of model + decode).
* per chunk, steady state (after ``warmup`` chunks, batch 1, ``torch.inference_mode``, fp32),
  medians over ``chunks`` chunks, by the rollout's stages: ``context_ms`` (recomputing the
  context's keys and values: the ``rebuild`` policy), ``denoise_ms`` (the denoising passes),
  ``cache_write_ms`` (the clean pass that writes the chunk's keys and values: ``cached``),
  ``decode_ms`` (codec decode of the chunk), ``memory_ms`` (retrieval from the memory bank,
  memory on; the model's passes over retrieved chunks count in ``context_ms``); ``model_ms`` =
  the first three; ``frames_per_s`` = chunk_frames / median(all five), ``throughput_frames_per_s``
  = chunk_frames / mean(all five). ``critical_ms`` / ``critical_p95_ms``: the part of a chunk's
  time that needed its inputs (``ChunkTimings.critical_s``: the step after ``Engine.prepare``,
  which runs the deferred cache write and the retrieval ahead, called before every step as
  play.py's generation process does; what a player's input waits for besides the chunk boundary),
  median and p95; the other rows include the work done ahead. Display is excluded here and included in the
  ``play_*`` rows.
  ``default_*``: the checkpoint's own sampler and policy, memory off.
* ``memory_on_*``: the default with the memory bank on, at ``memory_min_score`` and
  ``memory_top_k``, ``memory_keep`` and ``memory_discount_window`` (``--memory-min-score``,
  ``--memory-top-k``, ``--memory-keep``, ``--memory-discount-window``; default the bank's own), which the
  ``memory_bank_*`` rows use too, on the ``glance_back`` policy's walk (quick turns away and back,
  so that some chunks retrieve and the model's pass over a retrieved chunk is paid:
  ``memory_on_hit_share`` is the share of chunks that retrieved an entry,
  ``memory_on_reload_share`` the share whose retrieval for the real poses picked other entries
  than ``Engine.prepare``'s guess, so that their context passes ran twice,
  ``memory_on_reuse_share`` the share of chunks whose retrieved chunks kept the passes of the
  last chunk with memory (``memory_reuse``, a still player: no pass ran; a chunk with two
  retrieved chunks, one kept, counts one half), over every chunk like the other shares;
  ``--no-memory-reuse`` runs every pass, recorded as ``memory_reuse``);
  ``memory_on_frames_per_s_ratio`` = memory on / memory off in ``throughput_frames_per_s``
  (frames over the summed time of every timed chunk: unlike the median, it pays for the chunks
  that retrieve however few they are); memory off is the default engine again on the same walk,
  the two stepping one chunk each in turn so that a machine whose speed drifts during the run
  slows both alike (the other rows, but int8's, time one engine alone, on the explore policy).
  ``memory_still_*``: the same pair on the ``idle`` policy's walk, whose first 24-60 frames have
  no input at all (a player who stops, whom the anchor brings the start's chunk on every chunk
  once the window has left it): ``memory_still_hit_share``, ``memory_still_reuse_share`` and
  ``memory_still_frames_per_s_ratio`` (memory on / off, throughput).
  ``memory_bank_*``: retrieval from a bank of ``--memory-entries`` entries (default 10,000:
  distinct places on a grid of position cells and heading sectors around the query walk, the
  checkpoint's latent size), p50/p95/max per chunk over ``--memory-queries`` query chunks
  walking through it, and the bank's bytes.
* ``<policy>_<n>step_*``: the same for each context policy the checkpoint's conditioning allows
  (``cached`` needs a camera reference that does not move) at ``n`` denoising steps;
  ``cached_speedup_<n>step`` their frames/s ratio. ``bf16``: the default with bf16 autocast
  (the model's passes and the decode: ``bf16_decode_ms``).
  ``int8`` (CPU): the default with int8 weights in the DiT's token-wise linear layers
  (``quantize="int8"``, :mod:`worldsim.inference.quantize`), stepped one chunk each in turn with
  a fp32 engine (``int8_paired_fp32_*``); ``int8_speedup`` their frames/s ratio.
* ``compile_<mode>_*`` (``--compile``): ``torch.compile`` of the decoder (``decoder``) and of the
  DiT blocks' token-wise regions too (``full``; :mod:`worldsim.inference.compiled`), each stepped
  one chunk in turn with an eager engine (``compile_<mode>_paired_eager_*``): model and decode
  ms, frames/s, ``compile_<mode>_speedup`` their frames/s ratio, and ``compile_<mode>_load_s``
  the compilation at load (or the read of inductor's cache, when an earlier run filled it).
* ``baseline_*`` (``--baseline CHECKPOINT``): another checkpoint's default (its own sampler,
  context policy and chunk size; fp32, memory off) stepped one chunk each in turn with this
  checkpoint's default policy at each step count ``n``: ``baseline_<n>step_{model_ms, decode_ms,
  frames_per_s}`` for this checkpoint and ``baseline_<n>step_paired_baseline_*`` for the other
  in that pairing, and ``baseline_<n>step_speedup`` = this frames/s over the other's (per frame:
  how a distilled student compares with the teacher it replaces, issue 21's speed bar); on the
  CPU the checkpoint with int8 weights steps in the same turn (``baseline_<n>step_int8_{model_ms,
  decode_ms, frames_per_s}``, ``baseline_<n>step_int8_speedup`` over the same baseline; since
  2026-12-04: three engines in a turn slow one another more than two, so earlier rows are not
  strictly comparable).
* ``last_step_*``: the checkpoint's sampler with ``cache_write="last_step"`` (the chunk's last
  denoising pass is its context: no clean pass; :mod:`worldsim.diffusion.sampler`), at the shift
  that starts that pass at ``context_sigma`` (``last_step_shift``), stepped one chunk each in turn
  with the ``clean_pass`` write (``last_step_paired_clean_pass_*``): model ms, frames/s and
  ``last_step_speedup`` their ratio (``cached`` policy, few-step sampler of >= 2 steps; else
  ``last_step`` says why not). The other rows run the checkpoint's own ``cache_write``; at a
  step count ``n`` a ``last_step`` sampler keeps its last step at ``context_sigma``
  (``SamplerConfig.at_steps``), and takes the clean pass at 1 step.
* ``growth``: mean chunk time over the first and the last 10% of a ``session_frames`` rollout and
  their ratio (the context is bounded, so it should stay near 1).
* ``busy_*`` (CPU, ``--busy``): a busy machine. The default engine as play.py builds it
  (``threads="auto"``, :mod:`worldsim.core.threads`; play's precision, bf16 where native: since
  2026-12-05, fp32 before) times ``chunks`` chunks alone
  (``busy_alone_frames_per_s``), then again while another process spins on one core
  (``busy_auto_frames_per_s``, after ``SETTLE_S`` seconds beside it to adapt, since 2026-12-05;
  before, ``warmup`` chunks, too short for a fast model; ``busy_auto_threads`` the count
  it settled on), and an engine pinned to every core (torch's own choice) under the same load
  (``busy_pinned_frames_per_s``); ``busy_auto_ratio`` = busy / alone with ``auto``. Frames/s from
  the mean chunk time (model + decode + memory). With the play rows on, ``busy_play_*``: the
  play loop's run (below) again with a fresh generation process beside the spinning one:
  displayed frames/s, latency p50/p95, held ticks, and ``busy_play_ratio`` = its displayed
  frames/s over the unloaded run's: what a player loses, where ``busy_auto_ratio`` is what the
  engine loses (the display is capped at the source's fps, so spare throughput does not show).
* ``memory``: peak resident memory of the process, parameter and context bytes.
* ``play_*``: the real play loop (generation in a child process as in ``play.py``, with play's
  precision: bf16 where the CPU has it natively, ``play_bf16``, and its ``threads="auto"``, since
  2026-12-05; frame queue, display at the source
  fps) with a display that only counts frames (no GL) and scripted input: displayed frames/s
  over the whole run (``displayed_frames_per_s``, the wait for the first frame included) and
  from the first frame on (``playing_frames_per_s``: what a player sees once the world is on the
  screen; the wait is the ``first_frame_s`` row), the ticks that held a frame, in all and after
  the first frame (``held_ticks_after_first``: a stall in play, not the start), input-to-photon
  latency p50/p95 (poll -> first frame generated with that input handed to the display), the
  chunks' critical time and submit-to-arrival time
  (``turnaround``) p50/p95, the time to the first generated frame (from the loop's start) and
  ``source_start_s`` (starting the generation process and loading the checkpoint in it).
  ``play_sampler_steps``: their step count (``--play-steps``; default the checkpoint's);
  ``play_memory``: whether the bank was on (``--play-memory``, as play.py plays a model; default
  off). The scripted input is the explore policy for the source's controller (resampled at 30
  frames/s: the same motion per second). (Assets
  benched before 2026-12-02 have ``play_bf16_*`` rows instead: bf16 always on.)
"""

from __future__ import annotations

import resource
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import replace
from functools import partial
from typing import Any

import numpy as np
import torch

from envs.starts import engine_world_start
from worldsim.core.camera import make_c2w
from worldsim.core.errors import WorldsimError
from worldsim.core.precision import resolve_bf16
from worldsim.core.threads import allowed_cores
from worldsim.data.policies import make_policy
from worldsim.diffusion.sampler import SamplerOverrides, last_step_shift
from worldsim.inference.checkpoint import read_checkpoint_config
from worldsim.inference.engine import Engine, load_engine
from worldsim.inference.rollout import CONTEXT_POLICIES
from worldsim.memory.bank import MemoryBank, MemoryConfig
from worldsim.play.loop import PlayLoopConfig, play
from worldsim.play.sources import ProcessSource, open_engine_source

STAGES = ("context", "denoise", "cache_write", "decode", "memory")
MEMORY_POLICY = "glance_back"  # the memory rows' walk: it turns away and back, so chunks retrieve
STILL_POLICY = "idle"  # the memory_still rows' walk: from the start, a player who stands still (the anchor)


def _chunk_times(engine: Engine, chunks: int, warmup: int = 2, seed: int = 0) -> dict[str, np.ndarray]:
    """Seconds per stage of ``chunks`` steady-state chunks under the explore policy."""
    return _paired_chunk_times([engine], chunks, warmup, seed)[0]


def _paired_chunk_times(
    engines: list[Engine], chunks: int, warmup: int = 2, seed: int = 0, policy: str = "explore"
) -> list[dict[str, np.ndarray]]:
    """:func:`_chunk_times` for several engines at once, each from world ``seed``'s start under
    ``policy``'s inputs for its own keys and chunk size, one chunk of each in turn (the order
    reversed every chunk), so that a machine whose speed drifts during the run slows them alike
    and their ratio holds. Engines of different checkpoints may pair (``baseline_*`` rows)."""
    acts = []
    for engine in engines:
        engine.reset(*engine_world_start(engine, seed).arrays())
        n = (chunks + warmup) * engine.chunk_frames
        acts.append(
            make_policy(policy, engine.key_names, engine.cfg.controller).actions(n, np.random.default_rng(seed))
        )
    keys = (*STAGES, "critical", "hit", "reload", "reuse")
    times: list[dict[str, list[float]]] = [{s: [] for s in keys} for _ in engines]
    for c in range(chunks + warmup):
        order = range(len(engines)) if c % 2 == 0 else reversed(range(len(engines)))
        for i in order:
            k, a = engines[i].chunk_frames, acts[i]
            reloads = engines[i].memory_reloads
            engines[i].prepare()  # as play.py's generation process does while the input is polled
            chunk = engines[i].step(a.keys[c * k : (c + 1) * k], a.mouse[c * k : (c + 1) * k])
            if c >= warmup:
                times[i]["reload"].append(float(engines[i].memory_reloads > reloads))
                for s in (*STAGES, "critical"):
                    times[i][s].append(getattr(chunk.timings, f"{s}_s"))
                times[i]["hit"].append(float(bool(chunk.memory)))
                reused = engines[i].rollout.memory_reused
                times[i]["reuse"].append(reused / len(chunk.memory) if chunk.memory else 0.0)
    return [{s: np.array(v) for s, v in t.items()} for t in times]


def _rows(engine: Engine, chunks: int) -> dict[str, float]:
    """Medians per stage (ms), model = context + denoise + cache write, and frames/s."""
    return _stage_rows(_chunk_times(engine, chunks), engine.chunk_frames)


def _stage_rows(t: dict[str, np.ndarray], chunk_frames: int) -> dict[str, float]:
    """:func:`_rows` from measured stage times."""
    total = np.sum([t[s] for s in STAGES], axis=0)
    model = t["context"] + t["denoise"] + t["cache_write"]
    rows = {f"{s}_ms": 1000 * float(np.median(t[s])) for s in STAGES}
    rows["model_ms"] = 1000 * float(np.median(model))
    rows["critical_ms"] = 1000 * float(np.median(t["critical"]))
    rows["critical_p95_ms"] = 1000 * float(np.percentile(t["critical"], 95))
    rows["frames_per_s"] = chunk_frames / float(np.median(total))
    rows["throughput_frames_per_s"] = chunk_frames / float(np.mean(total))  # every chunk counts, hits too
    rows["hit_share"] = float(t["hit"].mean())
    rows["reload_share"] = float(t["reload"].mean())  # chunks whose retrieval ahead guessed other entries
    rows["reuse_share"] = float(t["reuse"].mean())  # retrieved chunks whose kept pass served, per chunk
    return rows


def bench_memory_bank(
    engine: Engine, entries: int = 10_000, queries: int = 200, memory: MemoryConfig | None = None
) -> dict[str, float]:
    """Retrieval from a full bank of ``entries`` distinct places (module docstring): milliseconds
    per query chunk (p50, p95, max), the share of queries that retrieved an entry, and the bank's
    bytes. ``memory``: the bank's settings (default :class:`MemoryConfig`); its capacity is set
    to ``entries``."""
    cfg = replace(memory or MemoryConfig(), capacity=entries)
    bank = MemoryBank(cfg, torch.from_numpy(engine.intrinsics), engine.frame_size)
    k = engine.chunk_frames
    shape = engine.cfg.model.latent_shape()
    a = engine.encoder.dim
    side = int(np.ceil(np.sqrt(entries / cfg.heading_bins)))  # position cells per side
    g = torch.Generator().manual_seed(0)
    for i in range(entries):
        cell, sector = divmod(i, cfg.heading_bins)
        x, y = (cell % side + 0.5) * cfg.cell_m, (cell // side + 0.5) * cfg.cell_m
        yaw = (sector + 0.5) * 2 * np.pi / cfg.heading_bins
        c2w = torch.from_numpy(np.stack([make_c2w(np.array([x, y, 2.0]), yaw, 0.0)] * k))
        bank.add(torch.randn(k, *shape, generator=g), torch.zeros(k, a), c2w, frame=i * k)
    assert len(bank) == entries, "every bench entry must be a distinct place"
    times, hits = [], 0
    for q in range(queries):  # a walk across the bank's area, turning
        t = q / queries
        pos = np.array([side * cfg.cell_m * t, side * cfg.cell_m * (0.5 + 0.3 * np.sin(6 * t)), 2.0])
        c2w = torch.from_numpy(np.stack([make_c2w(pos, 0.1 * q, 0.0)] * k))
        t0 = time.perf_counter()
        hits += bool(bank.retrieve(c2w, before_frame=entries * k))
        times.append(time.perf_counter() - t0)
    ms = 1000 * np.array(times)
    stored = [bank.latents, bank.actions, bank.c2w, bank.anchor, bank.anchor_w2c]
    derived = bank.position.nbytes + bank.rows.nbytes + bank.packed.nbytes
    return {
        "memory_bank_entries": entries,
        "memory_bank_retrieve_p50_ms": float(np.percentile(ms, 50)),
        "memory_bank_retrieve_p95_ms": float(np.percentile(ms, 95)),
        "memory_bank_retrieve_max_ms": float(ms.max()),
        "memory_bank_hit_share": hits / queries,
        "memory_bank_MB": (sum(x.numel() * x.element_size() for x in stored if x is not None) + derived) / 2**20,
    }


class _CountingDisplay:
    """A display for the play loop that draws nothing: scripted input, ticks at ``fps``."""

    def __init__(self, source: Any, seconds: float):
        self.fps = source.fps
        self.ticks = int(seconds * source.fps)
        self.acts = make_policy("explore", source.key_names, source.controller).actions(
            self.ticks + 1, np.random.default_rng(0)
        )
        self.n = 0
        self.next = time.perf_counter()

    def bind_keys(self, key_names: list[str]) -> None:
        pass

    def poll(self) -> tuple[np.ndarray, np.ndarray, set[str]]:
        i = self.n
        self.n += 1
        return self.acts.keys[i], self.acts.mouse[i], {"quit"} if self.n >= self.ticks else set()

    def show(self, frame_u8: np.ndarray | None, hud_lines: list[str]) -> None:
        pass

    def screenshot(self) -> np.ndarray:
        return np.zeros((1, 1, 3), np.uint8)

    def tick(self) -> None:
        self.next += 1.0 / self.fps
        time.sleep(max(0.0, self.next - time.perf_counter()))

    def help_text(self) -> str:
        return ""

    def close(self) -> None:
        pass


PLAY_ROWS = (
    "latency_p50_ms",
    "latency_p95_ms",
    "first_frame_s",
    "held_ticks",
    "held_ticks_after_first",
    "chunk_ms_mean",
    "critical_ms_p50",
    "critical_ms_p95",
    "turnaround_ms_p50",
    "turnaround_ms_p95",
    "memory_hit_chunks",
)


def _play_rows(prefix: str, stats: dict[str, float], seconds: float, keys: tuple[str, ...]) -> dict[str, float]:
    """A ``seconds`` play-loop run's rows under ``prefix``: new frames shown per second over the
    run (``displayed_frames_per_s``) and from its first frame on (``playing_frames_per_s``), then
    the summary's ``keys``."""
    shown = stats["displayed_frames"]
    rows = {
        f"{prefix}displayed_frames_per_s": shown / seconds,
        f"{prefix}playing_frames_per_s": shown / (seconds - stats["first_frame_s"]),
    }
    return rows | {f"{prefix}{key}": stats[key] for key in keys}


def bench_play(
    checkpoint: str,
    seconds: float,
    num_steps: int | None = None,
    memory: MemoryConfig | None = None,
    busy: bool = False,
) -> dict[str, float]:
    """The play loop as ``play.py`` plays (bf16 where native, ``threads="auto"``, generating in a
    child process); ``num_steps`` None = the checkpoint's own; ``memory`` None = the bank off
    (play.py plays a model with it on: ``--play-memory``); ``busy``: the same run again beside a
    process that keeps one core busy (the ``busy_play_*`` rows)."""
    own = read_checkpoint_config(checkpoint).sampler
    steps = num_steps or own.num_steps
    res: dict[str, float] = {
        "play_sampler_steps": steps,
        "play_bf16": resolve_bf16(None, "cpu"),
        "play_memory": memory is not None,
    }
    kw: dict[str, Any] = {
        "bf16": None,
        "sampler": own.at_steps(num_steps) if num_steps else SamplerOverrides(),
        "memory": memory,
        "threads": "auto",
    }
    start_s, stats = _play_run(checkpoint, seconds, kw)
    res["play_source_start_s"] = start_s
    res |= _play_rows("play_", stats, seconds, PLAY_ROWS)
    if busy:
        with _spinning_core():
            _, stats = _play_run(checkpoint, seconds, kw)
        busy_keys = ("latency_p50_ms", "latency_p95_ms", "held_ticks", "held_ticks_after_first")
        res |= _play_rows("busy_play_", stats, seconds, busy_keys)
        res["busy_play_ratio"] = res["busy_play_displayed_frames_per_s"] / res["play_displayed_frames_per_s"]
    return res


def _play_run(checkpoint: str, seconds: float, engine_kw: dict[str, Any]) -> tuple[float, dict[str, float]]:
    """One play-loop run of ``seconds`` on a fresh generation process -> (the process's start
    and load time in s, the loop's summary)."""
    t0 = time.perf_counter()
    source = ProcessSource(partial(open_engine_source, checkpoint, 0, **engine_kw))
    start_s = time.perf_counter() - t0
    try:
        return start_s, play(source, PlayLoopConfig(), _CountingDisplay(source, seconds)).summary()
    finally:
        source.close()


@contextmanager
def _spinning_core() -> Iterator[None]:
    """Another process keeps one core busy (``while True: pass``) for the body."""
    spinner = subprocess.Popen([sys.executable, "-c", "while True: pass"])
    try:
        yield
    finally:
        spinner.kill()
        spinner.wait()


def _frames_per_s(engine: Engine, chunks: int, warmup: int) -> float:
    """chunk_frames over the mean time of ``chunks`` chunks after ``warmup`` (explore policy)."""
    return _stage_rows(_chunk_times(engine, chunks, warmup), engine.chunk_frames)["throughput_frames_per_s"]


SETTLE_S = 2.0  # seconds the auto engine plays beside the busy process before it is timed


def _settle(engine: Engine, seconds: float) -> None:
    """Step ``engine`` (explore input, in runs of 4 chunks) for at least ``seconds``, so that its
    thread governor has adapted to the load (it needs ``patience`` intervals of at least
    ``min_interval_s`` that agree: 0.75 s by default, however short the chunks)."""
    t0 = time.perf_counter()
    while time.perf_counter() - t0 < seconds:
        _chunk_times(engine, 4, 0)


def bench_busy(checkpoint: str, chunks: int, warmup: int = 6) -> dict[str, float]:
    """The ``busy_*`` rows (module docstring): frames/s alone and beside a process that keeps
    one core busy, with the thread count chosen for the free cores (timed after ``SETTLE_S`` s
    beside the load) and pinned to all of them."""
    found = torch.get_num_threads()
    auto = load_engine(checkpoint, bf16=None, threads="auto")
    res = {"busy_alone_frames_per_s": _frames_per_s(auto, chunks, warmup)}
    with _spinning_core():
        _settle(auto, SETTLE_S)
        res["busy_auto_frames_per_s"] = _frames_per_s(auto, chunks, warmup)
        assert auto.governor is not None
        res["busy_auto_threads"] = auto.governor.current
        pinned = load_engine(checkpoint, bf16=None, threads=allowed_cores())
        res["busy_pinned_frames_per_s"] = _frames_per_s(pinned, chunks, warmup)
    torch.set_num_threads(found)  # the engines set the process's count
    res["busy_auto_ratio"] = res["busy_auto_frames_per_s"] / res["busy_alone_frames_per_s"]
    return res


def bench_compile(checkpoint: str, chunks: int, modes: tuple[str, ...] = ("decoder", "full")) -> dict[str, float]:
    """The ``compile_<mode>_*`` rows (module docstring), fp32 on the CPU."""
    res: dict[str, float] = {}
    for mode in modes:
        compiled = load_engine(checkpoint, bf16=False, compile=mode)
        eager_t, compiled_t = _paired_chunk_times([load_engine(checkpoint, bf16=False), compiled], chunks)
        k = compiled.chunk_frames
        for name, rows in (("", _stage_rows(compiled_t, k)), ("paired_eager_", _stage_rows(eager_t, k))):
            for key in ("model_ms", "decode_ms", "frames_per_s"):
                res[f"compile_{mode}_{name}{key}"] = rows[key]
        fps = res[f"compile_{mode}_frames_per_s"], res[f"compile_{mode}_paired_eager_frames_per_s"]
        res[f"compile_{mode}_speedup"] = fps[0] / fps[1]
        res[f"compile_{mode}_load_s"] = compiled.compile_s
    return res


def bench_baseline(
    checkpoint: str, baseline: str, chunks: int, step_counts: tuple[int, ...], device: str = "cpu"
) -> dict[str, Any]:
    """The ``baseline_*`` rows: ``baseline``'s own default (sampler, context policy, chunk size;
    fp32, memory off) stepped one chunk each in turn with ``checkpoint``'s default policy at each
    of ``step_counts``: frames/s of both in each pairing and ``baseline_<n>step_speedup``, the
    checkpoint's frames/s over the baseline's (per frame, so chunk sizes may differ). On the CPU
    the checkpoint with int8 weights (``quantize="int8"``) steps in the same turn:
    ``baseline_<n>step_int8_*`` and ``baseline_<n>step_int8_speedup`` over the same baseline."""
    base = load_engine(baseline, device=device, bf16=False)
    own = read_checkpoint_config(checkpoint).sampler
    res: dict[str, Any] = {
        "baseline_checkpoint": baseline,
        "baseline_sampler": f"{base.sampler_cfg.mode}, {base.sampler_cfg.num_steps} steps",
        "baseline_policy": base.context_policy,
        "baseline_chunk_frames": base.chunk_frames,
    }
    for n in step_counts:
        engines = [load_engine(checkpoint, device=device, bf16=False, sampler=own.at_steps(n)), base]
        if device == "cpu":  # the same sampler with int8 weights, in the same turn
            engines.append(load_engine(checkpoint, bf16=False, sampler=own.at_steps(n), quantize="int8"))
        times = _paired_chunk_times(engines, chunks)
        ours, theirs = _stage_rows(times[0], engines[0].chunk_frames), _stage_rows(times[1], base.chunk_frames)
        for key in ("model_ms", "decode_ms", "frames_per_s"):
            res[f"baseline_{n}step_{key}"] = ours[key]
            res[f"baseline_{n}step_paired_baseline_{key}"] = theirs[key]
        res[f"baseline_{n}step_speedup"] = ours["frames_per_s"] / theirs["frames_per_s"]
        if device == "cpu":
            int8 = _stage_rows(times[2], engines[2].chunk_frames)
            for key in ("model_ms", "decode_ms", "frames_per_s"):
                res[f"baseline_{n}step_int8_{key}"] = int8[key]
            res[f"baseline_{n}step_int8_speedup"] = int8["frames_per_s"] / theirs["frames_per_s"]
    return res


def bench_cache_write(checkpoint: str, chunks: int, device: str = "cpu") -> dict[str, Any]:
    """The ``last_step_*`` rows: the checkpoint's sampler with ``cache_write="last_step"`` (at
    the shift that starts its last step at ``context_sigma``) stepped one chunk each in turn
    with the same sampler's ``clean_pass``, fp32, memory off; ``last_step_speedup`` their
    frames/s ratio. Only where the sampler and policy allow it (else one ``n/a`` row)."""
    own = read_checkpoint_config(checkpoint).sampler
    shift = last_step_shift(own.num_steps, own.context_sigma)
    fit = SamplerOverrides(cache_write="last_step", shift=shift)
    try:
        replace(own, cache_write="last_step", shift=shift)  # SamplerConfig checks that it fits
    except WorldsimError as e:  # a sampler last_step does not fit (no context noise, 1 step, guidance, euler)
        return {"last_step": f"n/a: {e}"}
    clean = load_engine(checkpoint, device=device, bf16=False, sampler=SamplerOverrides(cache_write="clean_pass"))
    if clean.context_policy != "cached":
        return {"last_step": "n/a: the rebuild policy writes no cache"}
    last = load_engine(checkpoint, device=device, bf16=False, sampler=fit)
    t_clean, t_last = _paired_chunk_times([clean, last], chunks)
    a, b = _stage_rows(t_last, last.chunk_frames), _stage_rows(t_clean, clean.chunk_frames)
    return {
        "last_step_shift": shift,
        "last_step_model_ms": a["model_ms"],
        "last_step_frames_per_s": a["frames_per_s"],
        "last_step_paired_clean_pass_model_ms": b["model_ms"],
        "last_step_paired_clean_pass_frames_per_s": b["frames_per_s"],
        "last_step_speedup": a["frames_per_s"] / b["frames_per_s"],
    }


def bench_engine(
    checkpoint: str,
    chunks: int = 20,
    step_counts: tuple[int, ...] = (1, 2, 4, 8),
    session_frames: int = 1000,
    play_seconds: float = 20.0,
    play_steps: int = 0,
    device: str = "cpu",
    memory_entries: int = 10_000,
    memory_queries: int = 200,
    memory: MemoryConfig | None = None,
    busy: bool = False,
    compile_rows: bool = False,
    baseline: str | None = None,
    play_memory: bool = False,
) -> dict[str, Any]:
    """Every row of ``worldsim-bench engine`` (module docstring) for ``checkpoint`` on ``device``;
    ``memory``: the settings of the memory-on rows (default :class:`MemoryConfig`); ``busy``:
    the ``busy_*`` rows (CPU); ``compile_rows``: the ``compile_*`` rows (CPU); ``baseline``: a
    checkpoint whose default the ``baseline_*`` rows time beside this one's; ``play_memory``: the
    ``play_*`` rows with the bank on at ``memory``'s settings, as play.py plays a model."""
    memory = memory or MemoryConfig()
    if baseline:
        read_checkpoint_config(baseline)  # a missing or unreadable baseline: one line, before any timing
    torch.manual_seed(0)
    t0 = time.perf_counter()
    engine = load_engine(checkpoint, device=device, bf16=False)
    res: dict[str, Any] = {"checkpoint": checkpoint, "device": device, "load_s": time.perf_counter() - t0}
    res["chunk_frames"] = engine.chunk_frames
    sc = engine.sampler_cfg
    res["sampler"] = f"{sc.mode}, {sc.num_steps} steps, shift {sc.shift:.4g}, cache write {sc.cache_write}"
    res["context_frames"] = engine.context_frames
    res["camera_reference"] = engine.cfg.conditioning.camera_reference
    res["default_policy"] = engine.context_policy
    res["params_M"] = sum(p.numel() for p in engine.model.parameters()) / 1e6
    t0 = time.perf_counter()
    fresh = load_engine(checkpoint, device=device, bf16=False)
    fresh.reset(*engine_world_start(fresh, 1).arrays())
    k = fresh.chunk_frames
    fresh.step(np.zeros((k, len(fresh.key_names)), np.uint8), np.zeros((k, 2), np.float32))
    res["first_chunk_s"] = time.perf_counter() - t0
    for key, val in _rows(engine, chunks).items():
        res[f"default_{key}"] = val
    # Memory off and on, one chunk of each in turn: their ratio survives a drifting machine.
    without = load_engine(checkpoint, device=device, bf16=False)
    with_memory = load_engine(checkpoint, device=device, bf16=False, memory=memory)
    res["memory_min_score"], res["memory_top_k"] = memory.min_score, memory.top_k
    res["memory_keep"], res["memory_discount_window"] = memory.keep, memory.discount_window
    res["memory_reuse"] = memory.reuse
    assert with_memory.memory_cfg is not None
    res["memory_retrieve_across_press"] = with_memory.memory_cfg.retrieve_across_press  # as the checkpoint decides
    off, on = _paired_chunk_times([without, with_memory], chunks, policy=MEMORY_POLICY)
    for key, val in _stage_rows(on, k).items():
        res[f"memory_on_{key}"] = val
    paired = _stage_rows(off, k)
    res["memory_off_paired_frames_per_s"] = paired["frames_per_s"]
    res["memory_off_paired_throughput_frames_per_s"] = paired["throughput_frames_per_s"]
    res["memory_on_frames_per_s_ratio"] = (
        res["memory_on_throughput_frames_per_s"] / res["memory_off_paired_throughput_frames_per_s"]
    )
    off, on = _paired_chunk_times([without, with_memory], chunks, policy=STILL_POLICY)  # a player who stops
    still_on, still_off = _stage_rows(on, k), _stage_rows(off, k)
    res["memory_still_hit_share"], res["memory_still_reuse_share"] = still_on["hit_share"], still_on["reuse_share"]
    res["memory_still_frames_per_s_ratio"] = still_on["throughput_frames_per_s"] / still_off["throughput_frames_per_s"]
    res.update(bench_memory_bank(engine, memory_entries, memory_queries, memory))
    # Each context policy the checkpoint's conditioning allows, at each step count (fp32).
    policies = [p for p in CONTEXT_POLICIES if p == "rebuild" or engine.cfg.conditioning.cacheable]
    if not engine.cfg.conditioning.cacheable:
        res["cached"] = "n/a: the camera is relative to the newest frame, so cached keys would go stale"
    for policy in policies:
        for n in step_counts:
            e = load_engine(
                checkpoint, device=device, bf16=False, sampler=engine.sampler_cfg.at_steps(n), context_policy=policy
            )
            for key, val in _rows(e, chunks).items():
                res[f"{policy}_{n}step_{key}"] = val
    if len(policies) == 2:
        for n in step_counts:
            res[f"cached_speedup_{n}step"] = res[f"cached_{n}step_frames_per_s"] / res[f"rebuild_{n}step_frames_per_s"]
    if baseline:
        res.update(bench_baseline(checkpoint, baseline, chunks, step_counts, device))
    e = load_engine(checkpoint, device=device, bf16=True)
    bf = _rows(e, chunks)
    res["bf16_model_ms"], res["bf16_decode_ms"], res["bf16_frames_per_s"] = (
        bf["model_ms"],
        bf["decode_ms"],
        bf["frames_per_s"],
    )
    res["bf16_speedup"] = bf["frames_per_s"] / res["default_frames_per_s"]
    if device == "cpu":  # int8 weights beside fp32, one chunk each in turn (their ratio holds on a drifting machine)
        fp32, int8 = _paired_chunk_times(
            [load_engine(checkpoint, bf16=False), load_engine(checkpoint, bf16=False, quantize="int8")], chunks
        )
        q, ref = _stage_rows(int8, k), _stage_rows(fp32, k)
        res["int8_model_ms"], res["int8_frames_per_s"] = q["model_ms"], q["frames_per_s"]
        res["int8_paired_fp32_model_ms"], res["int8_paired_fp32_frames_per_s"] = ref["model_ms"], ref["frames_per_s"]
        res["int8_speedup"] = res["int8_frames_per_s"] / res["int8_paired_fp32_frames_per_s"]
    res.update(bench_cache_write(checkpoint, chunks, device))
    if session_frames:
        t = _chunk_times(load_engine(checkpoint, device=device, bf16=False), max(10, session_frames // k), warmup=0)
        tot = np.sum([t[s] for s in STAGES], axis=0)
        tenth = max(1, len(tot) // 10)
        res["growth_first10pct_ms"] = 1000 * float(tot[:tenth].mean())
        res["growth_last10pct_ms"] = 1000 * float(tot[-tenth:].mean())
        res["growth_ratio_last_over_first"] = float(tot[-tenth:].mean() / tot[:tenth].mean())
    res["peak_rss_MB"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    if device != "cpu":
        res["peak_gpu_MB"] = torch.cuda.max_memory_allocated() / 2**20
    res["params_MB"] = sum(p.numel() * p.element_size() for p in engine.model.parameters()) / 2**20
    h = engine.rollout.history
    res["context_MB"] = (
        0.0 if h is None else sum(x.numel() * x.element_size() for x in (h.latents, h.actions, h.c2w)) / 2**20
    )
    cache = engine.rollout.cache
    res["kv_cache_MB"] = 0.0 if cache is None else cache.nbytes() / 2**20
    if busy and device == "cpu":
        res.update(bench_busy(checkpoint, chunks))
    if compile_rows and device == "cpu":
        res.update(bench_compile(checkpoint, chunks))
    if play_seconds and device == "cpu":
        res.update(bench_play(checkpoint, play_seconds, play_steps or None, memory if play_memory else None, busy))
    return res
