"""Play worldsim: ``python play.py [key=value ...]`` (hydra overrides) from a checkout, or
``python -m worldsim.cli.play [key=value ...]`` wherever worldsim is installed.

By default the shipped model generates the world (``SHIPPED_MODELS``: ``assets/student_builtin_v11``,
the 30 frames/s student, so the window ticks at 30 Hz, the model's time step; with ``env=doom`` the
DOOM model), started from a ground-truth view of world ``seed``; ``checkpoint=''`` plays the
ground-truth world itself; ``checkpoint=assets/student_builtin_v8`` the 15 frames/s student (15 Hz).
``record=DIR`` writes what is shown (frames, raw inputs, poses) as a rollout dataset.
``headless=true steps=N policy=<name> out=DIR`` runs the same engine with no window and writes
the rollout plus an mp4. No display: run under ``xvfb-run``, or headless.
"""

from __future__ import annotations

import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from functools import partial
from typing import Any

import hydra
import numpy as np
from hydra.core.config_store import ConfigStore

from envs import available_envs, make_env
from envs.builtin import BuiltinWorldConfig
from envs.doom import DoomConfig
from envs.record import env_section, world_controller
from worldsim.core.config import CONFIG_DIR, DEFAULT_CHECKPOINT, one_line_config_errors, to_schema
from worldsim.core.errors import WorldsimError, clean_errors, unknown_name
from worldsim.core.precision import describe_bf16
from worldsim.data.format import parse_frame_size
from worldsim.data.policies import check_open_loop
from worldsim.diffusion.sampler import SamplerOverrides
from worldsim.inference.checkpoint import read_checkpoint_config
from worldsim.inference.compiled import check_compile
from worldsim.inference.engine import Chunk, ChunkTimings, Engine, load_engine, memory_config
from worldsim.inference.quantize import check_quantize
from worldsim.play.loop import PlayLoopConfig, play
from worldsim.play.sources import EngineSource, ProcessSource, SyncSource, open_engine_source
from worldsim.play.window import (
    Window,
    WindowConfig,
    display_rate,
    key_codes,
    require_display,
    resolve_bindings,
)


@dataclass
class PlayConfig:
    """``play.py``'s config (every default here; ``worldsim/configs/play.yaml`` picks groups)."""

    # Model checkpoint folder ("" plays the ground-truth world; None: the model shipped for `env`,
    # SHIPPED_MODELS); a relative path is looked up in the current folder, then in the worldsim checkout.
    checkpoint: str | None = None
    env: str | None = None  # the world: None = the checkpoint's (the built-in world without one)
    seed: int = 0  # world seed of the start
    frame_size: Any = field(default_factory=lambda: [64, 64])  # ground-truth world only (a model has its own)
    bf16: bool | None = None  # bf16 autocast for the model; None = on where the CPU computes bf16 natively
    threads: str = "auto"  # CPU threads of the model: "auto" = the cores other processes leave free, or a number
    # "on": keep a spatial memory bank and bring back views of places seen before (what holds a still
    # player's view: docs/memory.md, "The anchor"); "auto": on for a model, off for the ground-truth world
    memory: str = "auto"
    memory_top_k: int | None = None  # memory on: entries a chunk may retrieve (None: the bank's default, 1)
    quantize: str = "none"  # "int8": int8 weights in the DiT's token-wise linear layers (CPU; docs/engine.md)
    compile: str = "none"  # "decoder" | "full": torch.compile before the first chunk (docs/engine.md)
    sampler: SamplerOverrides = field(default_factory=SamplerOverrides)  # None fields keep the checkpoint's
    record: str | None = None  # dataset folder: record from the start (F9 toggles)
    headless: bool = False
    steps: int = 256  # headless: frames to generate
    policy: str = "explore"  # headless: scripted policy, or replay (with replay_from)
    replay_from: str = ""
    out: str = "runs/play"  # headless: output folder (rollout dataset + rollout.mp4)
    world: BuiltinWorldConfig = field(default_factory=BuiltinWorldConfig)
    # DOOM's levels (e.g. doom.map=MAP02): env=doom's world, or a DOOM model's start; neither wad nor
    # map set: a model's own training levels (the ground-truth world: Freedoom 2, seed s plays map s mod 32)
    doom: DoomConfig = field(default_factory=DoomConfig)
    loop: PlayLoopConfig = field(default_factory=PlayLoopConfig)
    window: WindowConfig = field(default_factory=WindowConfig)


ConfigStore.instance().store(name="play_schema", node=PlayConfig)

SHIPPED_MODELS = {"builtin": DEFAULT_CHECKPOINT, "doom": "assets/teacher_doom_v1"}
"""The model ``play.py env=<name>`` plays when no ``checkpoint`` is given (DOOM's is a first,
blurry model of one level: its README)."""


def settle_model(pc: PlayConfig) -> PlayConfig:
    """``pc`` with ``checkpoint`` and ``env`` both set: no checkpoint plays the model shipped for
    ``env`` (the built-in world's by default), no env is the checkpoint's own (the built-in world
    for the ground truth, ``checkpoint=""``). Raises ``WorldsimError`` when ``env`` has no shipped
    model, is not a world, or names another world than the checkpoint was trained on."""
    env, checkpoint = pc.env, pc.checkpoint
    if env and env not in available_envs():
        raise unknown_name("env", env, available_envs())
    if checkpoint is None:
        env = env or "builtin"
        if env not in SHIPPED_MODELS:
            raise WorldsimError(
                f"no model is shipped for env={env} (shipped: {', '.join(SHIPPED_MODELS)}); "
                f"checkpoint= plays the {env} world itself"
            )
        checkpoint = SHIPPED_MODELS[env]
    if checkpoint:
        trained_on = read_checkpoint_config(checkpoint).env
        if env and env != trained_on:
            raise WorldsimError(
                f"{checkpoint} was trained on env {trained_on}, not env={env} "
                f"(leave env out to play it, or pick a model of {env}: {SHIPPED_MODELS.get(env, 'none shipped')})"
            )
        env = trained_on
    return replace(pc, checkpoint=checkpoint, env=env or "builtin")


def _threads(value: str) -> int | str:
    """``threads=``: ``auto`` or a whole number >= 1; anything else is one line."""
    if value == "auto":
        return value
    try:
        n = int(value)
    except ValueError:
        n = 0
    if n < 1 or str(n) != str(value).strip():
        raise WorldsimError(f"threads must be 'auto' or a whole number >= 1, got {value!r}")
    return n


class EnvSource(SyncSource):
    """The ground-truth world as a chunk source (one frame per chunk, its render time as
    ``render_s``), drawn on the loop's thread in the window's GL context: one context, no
    switching between two (drawn from another thread it showed black frames)."""

    chunk_frames = 1

    def __init__(self, cfg: PlayConfig, window: Window):
        assert cfg.env is not None, "settle_model first"
        frame_size = parse_frame_size(cfg.frame_size)
        world = env_section(cfg.env, cfg.world, cfg.doom)
        self.env = make_env(cfg.env, seed=cfg.seed, frame_size=frame_size, cfg=world, gl_context=window.ctx)
        self.controller = world_controller(world)
        self.name, self.key_names, self.fps = cfg.env, list(self.env.key_names), self.env.fps
        self.frame_size, self.intrinsics = self.env.frame_size, self.env.intrinsics

    def reset(self) -> Chunk:
        """The world's spawn view: a one-frame start."""
        obs = self.env.reset()
        return Chunk(obs.frame[None], obs.c2w[None].astype(np.float32))

    def step(self, keys: np.ndarray, mouse: np.ndarray) -> Chunk:
        """One rendered frame from the first input row, with its render time."""
        t0 = time.perf_counter()
        obs = self.env.step(keys[0], mouse[0])
        render_s = time.perf_counter() - t0
        timings = ChunkTimings(render_s=render_s, critical_s=render_s)  # all of it needs the input
        return Chunk(obs.frame[None], obs.c2w[None].astype(np.float32), timings)

    def close(self) -> None:
        """Release the world's GL resources."""
        self.env.close()


def memory_setting(pc: PlayConfig, ground_truth: bool = False) -> str:
    """``pc.memory`` with ``auto`` resolved: on for a model, off for the ground-truth world."""
    if pc.memory == "auto":
        return "off" if ground_truth else "on"
    return pc.memory


def engine_options(pc: PlayConfig) -> dict[str, Any]:
    """The keywords of :func:`load_engine` that ``pc`` sets (beyond checkpoint and seed), one
    dict for the window's generation process and for headless play alike."""
    return {
        "bf16": pc.bf16,
        "sampler": pc.sampler,
        "threads": _threads(pc.threads),
        "memory": memory_config(memory_setting(pc), pc.memory_top_k),
        "quantize": pc.quantize,
        "compile": pc.compile,
    }


def engine_source_factory(pc: PlayConfig) -> Callable[[], EngineSource]:
    """What the window's generation process calls to load ``pc``'s model as a source (picklable)."""
    assert pc.checkpoint is not None, "settle_model first"
    return partial(open_engine_source, pc.checkpoint, pc.seed, pc.doom, **engine_options(pc))


def _engine(pc: PlayConfig) -> Engine:
    assert pc.checkpoint is not None, "settle_model first"
    return load_engine(pc.checkpoint, seed=pc.seed, **engine_options(pc))


def _headless(pc: PlayConfig) -> None:
    from worldsim.cli.rollout import RolloutConfig, run_rollout

    if not pc.checkpoint:
        raise WorldsimError("headless play runs the model; for the ground-truth world use worldsim-record")
    if pc.record:  # refused rather than ignored: it would write nothing there
        raise WorldsimError(
            f"record={pc.record} records a window's session; headless play writes its rollout dataset to out= "
            f"(now {pc.out})"
        )
    rc = RolloutConfig(
        checkpoint=pc.checkpoint,
        seed=pc.seed,
        policy=pc.policy,
        replay_from=pc.replay_from,
        frames=pc.steps,
        out=pc.out,
        bf16=pc.bf16,
        sampler=pc.sampler,
        memory=memory_setting(pc),
        memory_top_k=pc.memory_top_k,
        quantize=pc.quantize,
        doom=pc.doom,
    )
    check_open_loop(pc.policy)  # one line before the checkpoint loads
    r = run_rollout(rc, _engine(pc))
    print(f"headless: {len(r['arrays']['frames'])} frames -> {pc.out} (rollout.mp4)")


@one_line_config_errors("play")
@hydra.main(version_base=None, config_path=str(CONFIG_DIR), config_name="play")
@clean_errors
def main(cfg: Any) -> None:
    """Play a checkpoint (or the ground-truth world) in a window, or headless (``headless=true``)."""
    pc = to_schema(cfg, PlayConfig)
    ground_truth = pc.checkpoint == ""  # None: the shipped model
    if pc.memory != "auto":  # a bad value: one line, before anything loads
        try:
            memory_config(pc.memory)
        except WorldsimError:
            raise WorldsimError(f"memory must be 'auto', 'on' or 'off', got {pc.memory!r}") from None
    memory = memory_config(memory_setting(pc, ground_truth), pc.memory_top_k)
    if memory is not None and ground_truth:
        raise WorldsimError("memory=on needs a model (checkpoint=...); the ground-truth world remembers by itself")
    check_quantize(pc.quantize, "cpu", pc.bf16)  # likewise
    if pc.quantize != "none" and ground_truth:
        raise WorldsimError(f"quantize={pc.quantize} needs a model (checkpoint=...)")
    check_compile(pc.compile, pc.threads, pc.quantize)  # likewise
    if pc.compile != "none" and ground_truth:
        raise WorldsimError(f"compile={pc.compile} needs a model (checkpoint=...)")
    pc = settle_model(pc)  # reads the checkpoint's config: after the checks that need nothing loaded
    if pc.checkpoint and pc.quantize == "none":
        print(describe_bf16(pc.bf16))
    elif pc.checkpoint:
        print(f"quantize={pc.quantize}: int8 weights in the model's token-wise layers, bf16 autocast off")
    if pc.headless:
        _headless(pc)
        return
    require_display()  # no screen: say how to run instead of loading anything
    key_codes(pc.window.bindings)  # a key name pygame does not know: refused before a window opens
    source: EnvSource | ProcessSource | None = None
    try:
        if not pc.checkpoint:
            window = Window(pc.window, parse_frame_size(pc.frame_size), title=f"worldsim: {pc.env}")
            source = EnvSource(pc, window)
            window.fps = display_rate(pc.window.target_fps, source.fps)
        else:  # a bad checkpoint (or bindings or a display rate that do not fit it) fails before a window opens
            # (the world draws in the window's GL context, so its rate is checked once it exists)
            source = ProcessSource(engine_source_factory(pc))
            resolve_bindings(pc.window.bindings, list(source.key_names))
            fps = display_rate(pc.window.target_fps, source.fps)
            window = Window(pc.window, source.frame_size, title=f"worldsim: {pc.checkpoint}")
            window.fps = fps
        stats = play(source, pc.loop, window, record=pc.record)
        s = stats.summary()
        print(
            f"played {s['displayed_frames']} frames; input polled at {s['poll_hz']:.1f} Hz; "
            f"latency p50 {s['latency_p50_ms']:.0f} ms p95 {s['latency_p95_ms']:.0f} ms; "
            f"chunk {s['chunk_ms_mean']:.0f} ms, critical p95 {s['critical_ms_p95']:.0f} ms; "
            f"drawing a frame p50 {s['draw_ms_p50']:.1f} ms p95 {s['draw_ms_p95']:.1f} ms; "
            f"first frame {s['first_frame_s']:.2f} s"
            + (f"; chunks with memory hits {s['memory_hit_chunks']}" if memory is not None else "")
        )
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
    finally:
        if source is not None:
            source.close()


if __name__ == "__main__":
    main()
