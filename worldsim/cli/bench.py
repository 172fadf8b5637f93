"""``worldsim-bench``: measured speeds, printed as a table and written to ``bench.json``.

    worldsim-bench env [--env builtin|doom] [--size 64] [--frames 600] [--seed 0] [--out bench.json]
    worldsim-bench model [--preset cpu] [--context-chunks 2] [--out bench.json]
    worldsim-bench engine [--checkpoint assets/student_builtin_v11] [--chunks 20] [--baseline CHECKPOINT]
                          [--out bench.json]
    worldsim-bench soak [--checkpoint assets/student_builtin_v11] [--frames 10000] [--window 1000] [--out bench.json]

``env`` times headless rendering of a world (reset excluded; for the built-in world each step
includes the controller, GL draw, readback and the supersampling filter; for DOOM the game tics,
ViZDoom's software render at 160x120 and the crop + resize) and writing those frames as a
rollout dataset (safetensors episodes, atomic rename, index), both in the same run. ``model``
times a size preset with random weights (worldsim/bench/model.py says what each row includes);
``engine`` times a checkpoint end to end through the engine and the play loop
(worldsim/bench/engine.py says what each row includes); ``soak`` plays a long session through the
engine and prints chunk time and resident memory per window (worldsim/bench/soak.py). Every run
also records the machine.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import platform
import shutil
import tempfile
import time
from pathlib import Path

import numpy as np

from envs import make_env
from worldsim.core.atomic import require_writable_dir, write_text
from worldsim.core.config import DEFAULT_CHECKPOINT
from worldsim.core.controller import CameraControllerConfig
from worldsim.core.errors import WorldsimError, clean_errors
from worldsim.data.format import RolloutMeta
from worldsim.data.policies import make_policy
from worldsim.data.writer import RolloutWriter


def machine_info() -> dict[str, object]:
    """CPU, cores, torch threads, Python and torch versions, native bf16: what a timing depends on."""
    import torch

    from worldsim.core.precision import native_bf16

    return {
        "cpu": platform.processor() or platform.machine(),
        "cores": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "python": platform.python_version(),
        "torch": torch.__version__,
        "native_bf16": native_bf16(),  # without it bf16 autocast runs slower than fp32
    }


ENV_BENCH_WHAT = {
    "builtin": "built-in world, headless EGL; render = controller + draw + readback + 2x2 box filter per frame",
    "doom": "DOOM (ViZDoom, Freedoom), headless; render = game tics + 160x120 software render + crop/resize per frame",
}


def bench_env(size: int, frames: int, seed: int, env_name: str = "builtin") -> dict[str, object]:
    """Rendered frames/s of world ``env_name`` at ``size`` x ``size`` and dataset-writing speed."""
    env = make_env(env_name, seed=seed, frame_size=(size, size))
    warmup = 20
    acts = make_policy("explore", env.key_names, CameraControllerConfig()).actions(
        max(frames, warmup) + 1, np.random.default_rng(seed)
    )
    env.reset()
    for t in range(warmup):  # warm up driver and caches
        env.step(acts.keys[t], acts.mouse[t])
    env.reset()
    obs_list = []
    t0 = time.perf_counter()
    for t in range(frames):
        obs_list.append(env.step(acts.keys[t], acts.mouse[t]))
    render_s = time.perf_counter() - t0
    gl = getattr(env, "renderer", None)
    renderer = gl.ctx.info["GL_RENDERER"] if gl is not None else "ViZDoom software renderer"
    fps = env.fps
    env.close()

    arrays = {
        "frames": np.stack([o.frame for o in obs_list]),
        "c2w": np.stack([o.c2w for o in obs_list]),
        "intrinsics": obs_list[0].intrinsics,
        "keys": acts.keys[:frames],
        "mouse": acts.mouse[:frames],
        "timestamp_s": np.array([o.time_s for o in obs_list]),
    }
    if env.has_depth:
        arrays["depth"] = np.stack([o.depth for o in obs_list]).astype(np.float16)
    tmp = Path(tempfile.mkdtemp(prefix="worldsim-bench-"))
    try:
        meta = RolloutMeta(env=env_name, fps=fps, frame_size=(size, size), key_names=list(env.key_names))
        writer = RolloutWriter(tmp, meta)
        episodes = 4
        t0 = time.perf_counter()
        for i in range(episodes):
            writer.write_episode(i, arrays, seed=seed)
        write_s = time.perf_counter() - t0
        nbytes = sum(p.stat().st_size for p in (tmp / "episodes").iterdir())
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return {
        "what": f"{ENV_BENCH_WHAT[env_name]}; write = safetensors episodes "
        f"{'incl. depth' if env.has_depth else '(no depth)'}, fsync'd index, atomic rename",
        "env": env_name,
        "gl_renderer": renderer,
        "frame_size": [size, size],
        "frames": frames,
        "render_frames_per_s": frames / render_s,
        "render_ms_per_frame": 1000 * render_s / frames,
        "write_frames_per_s": episodes * frames / write_s,
        "write_MB_per_s": nbytes / write_s / 1e6,
    }


def _model_preset(name: str, frame_size: int = 64):  # -> WorldModelConfig
    from omegaconf import OmegaConf

    from worldsim.core.config import CONFIG_DIR
    from worldsim.core.errors import unknown_name
    from worldsim.model.dit import WorldModelConfig

    presets = {p.stem: p for p in (CONFIG_DIR / "model").glob("*.yaml")}
    if name not in presets:
        raise unknown_name("model preset", name, presets)
    preset = OmegaConf.merge(OmegaConf.structured(WorldModelConfig), OmegaConf.load(presets[name]))
    cfg: WorldModelConfig = OmegaConf.to_object(preset)  # type: ignore[assignment]
    # Derived, as the teacher stage does: action_dim from the built-in world's keys and the
    # keyboard_mouse encoder; the latent shape from the default codec and the frame size.
    from envs.builtin import KEY_NAMES
    from worldsim.core.actions import make_action_encoder
    from worldsim.model.codec import CodecConfig

    codec = CodecConfig()
    if frame_size % codec.downsample:
        raise WorldsimError(f"--frame-size {frame_size} is not divisible by the codec's downsample {codec.downsample}")
    side = frame_size // codec.downsample
    return dataclasses.replace(
        cfg,
        action_dim=make_action_encoder("keyboard_mouse", KEY_NAMES).dim,
        latent_channels=codec.latent_channels,
        latent_size=(side, side),
    )


def _print_table(title: str, rows: dict[str, object]) -> None:
    print(f"== {title}")
    for k, v in rows.items():
        print(f"  {k:<32} {v:.4g}" if isinstance(v, float) else f"  {k:<32} {v}")


@clean_errors
def main(argv: list[str] | None = None) -> None:
    """``worldsim-bench env | model | engine``: print a table and write ``--out`` JSON."""
    parser = argparse.ArgumentParser(
        prog="worldsim-bench", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    sub = parser.add_subparsers(dest="what", required=True)
    p_env = sub.add_parser("env", help="rendering and dataset-writing speed of a ground-truth world")
    p_env.add_argument("--env", default="builtin", choices=sorted(ENV_BENCH_WHAT), help="the world")
    p_env.add_argument("--size", type=int, default=64, help="frame height and width in pixels")
    p_env.add_argument("--frames", type=int, default=600)
    p_env.add_argument("--seed", type=int, default=0)
    p_env.add_argument("--out", default="bench.json", help="where to write the JSON result")
    p_model = sub.add_parser("model", help="model-only per-chunk time of a size preset (see worldsim.bench.model)")
    p_model.add_argument("--preset", default="cpu", help="worldsim/configs/model/<preset>.yaml")
    p_model.add_argument("--context-chunks", type=int, default=2)
    p_model.add_argument("--frame-size", type=int, default=64, help="square frames; the latent grid is derived")
    p_model.add_argument("--device", default="cpu", help="cpu or cuda")
    p_model.add_argument("--out", default="bench.json", help="where to write the JSON result")
    p_engine = sub.add_parser("engine", help="a checkpoint end to end: engine, step counts, bf16, growth, play loop")
    p_engine.add_argument("--checkpoint", default=DEFAULT_CHECKPOINT)
    p_engine.add_argument("--chunks", type=int, default=20, help="steady-state chunks timed per setting")
    p_engine.add_argument("--session-frames", type=int, default=1000, help="frames of the growth run (0 = skip)")
    p_engine.add_argument("--play-seconds", type=float, default=20.0, help="length of the play-loop run (0 = skip)")
    p_engine.add_argument(
        "--play-steps", type=int, default=0, help="sampler steps of the play-loop run (0 = the checkpoint's own)"
    )
    p_engine.add_argument(
        "--play-memory",
        action="store_true",
        help="the play-loop run with the memory bank on (at the --memory-* settings), as play.py plays a model",
    )
    p_engine.add_argument("--device", default="cpu", help="cpu or cuda")
    p_engine.add_argument("--memory-entries", type=int, default=10_000, help="entries of the memory bank timed")
    p_engine.add_argument("--memory-queries", type=int, default=200, help="query chunks timed against that bank")
    p_engine.add_argument(
        "--memory-min-score", type=float, default=None, help="the bank's retrieval threshold (default: the bank's own)"
    )
    p_engine.add_argument(
        "--memory-top-k", type=int, default=None, help="entries a chunk may retrieve (default: the bank's own)"
    )
    p_engine.add_argument(
        "--memory-keep", default=None, help="which chunk a place keeps: first or newest (default: the bank's own)"
    )
    p_engine.add_argument(
        "--memory-discount-window",
        action="store_true",
        help="count what the context's window shows as covered (retrieve only what it lacks; default: the bank's own)",
    )
    p_engine.add_argument(
        "--no-memory-reuse",
        action="store_true",
        help="run a retrieved chunk's pass on every retrieval, even a still player's (default: the bank's own, reuse)",
    )
    p_engine.add_argument(
        "--busy",
        action="store_true",
        help="also time the engine beside a process that keeps one core busy (threads auto vs pinned), "
        "and the play loop (unless --play-seconds 0)",
    )
    p_engine.add_argument(
        "--compile",
        action="store_true",
        help="also time torch.compile (decoder, full) beside eager, one chunk each in turn (CPU)",
    )
    p_engine.add_argument(
        "--baseline",
        default=None,
        help="another checkpoint whose default is timed beside --checkpoint at each step count, one chunk each in "
        "turn, with --checkpoint's int8 weights in the same turn on the CPU (the baseline_* rows: per-frame speedup)",
    )
    p_engine.add_argument("--out", default="bench.json", help="where to write the JSON result")
    p_soak = sub.add_parser("soak", help="a long engine session: chunk time and resident memory per window")
    p_soak.add_argument("--checkpoint", default=DEFAULT_CHECKPOINT)
    p_soak.add_argument("--frames", type=int, default=10_000, help="frames of the session")
    p_soak.add_argument("--window", type=int, default=1000, help="frames per reported window")
    p_soak.add_argument("--seed", type=int, default=0, help="world seed of the start and of the inputs")
    p_soak.add_argument("--out", default="bench.json", help="where to write the JSON result")
    args = parser.parse_args(argv)
    require_writable_dir(Path(args.out).parent, "--out's folder")  # before the measurements, not after
    result: dict[str, object] = {"machine": machine_info()}
    if args.what == "env":
        if args.size < 1 or args.frames < 1:
            parser.error("--size and --frames must be positive")
        result["env"] = bench_env(args.size, args.frames, args.seed, args.env)
    elif args.what == "soak":
        from worldsim.bench.soak import bench_soak

        soak = bench_soak(args.checkpoint, args.frames, args.window, args.seed)
        print(f"== soak: {soak['frames']} frames of {args.checkpoint}, windows of {soak['window']}")
        print(f"  {'frames':>8} {'chunk ms':>9} {'RSS MB':>8}")
        for row in soak["windows"]:
            print(f"  {row['frames']:>8.0f} {row['chunk_ms']:>9.1f} {row['rss_MB']:>8.1f}")
        result["soak"] = soak
    elif args.what == "engine":
        from worldsim.bench.engine import bench_engine
        from worldsim.inference.engine import memory_config
        from worldsim.memory.bank import MemoryConfig, with_settings

        if args.chunks < 1 or args.play_steps < 0 or args.memory_entries < 1 or args.memory_queries < 1:
            parser.error("--chunks, --memory-entries and --memory-queries must be positive, --play-steps not negative")
        if args.memory_top_k is not None and args.memory_top_k < 1:
            parser.error(f"--memory-top-k must be at least 1, got {args.memory_top_k}")
        # a bad threshold or top_k: one line here, before any checkpoint loads
        base = with_settings(
            MemoryConfig(),
            min_score=args.memory_min_score,
            keep=args.memory_keep,
            discount_window=True if args.memory_discount_window else None,
            reuse=False if args.no_memory_reuse else None,
        )
        result["engine"] = bench_engine(
            args.checkpoint,
            args.chunks,
            session_frames=args.session_frames,
            play_seconds=args.play_seconds,
            play_steps=args.play_steps,
            device=args.device,
            memory_entries=args.memory_entries,
            memory_queries=args.memory_queries,
            memory=memory_config(base, args.memory_top_k),
            busy=args.busy,
            compile_rows=args.compile,
            play_memory=args.play_memory,
            baseline=args.baseline,
        )
    else:
        from worldsim.bench.model import bench_model

        result["model"] = {
            "preset": args.preset,
            **bench_model(
                _model_preset(args.preset, args.frame_size), context_chunks=args.context_chunks, device=args.device
            ),
        }
    for title, rows in result.items():
        if title != "soak":  # printed above, window by window
            _print_table(title, rows)  # type: ignore[arg-type]
    if "soak" in result:
        summary = result["soak"]
        assert isinstance(summary, dict)
        ratio, growth = summary["cost_ratio_last_over_first"], summary["rss_growth_pct"]
        print(f"  chunk time last/first window {ratio:.3f}; resident memory growth {growth:+.1f}%")
    try:
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)  # checked writable before the work
        write_text(args.out, json.dumps(result, indent=2))
    except OSError as e:
        raise WorldsimError(f"cannot write out={args.out}: {e.strerror}") from e
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
