"""Headless rollouts through the engine (``worldsim-rollout``; ``play.py headless=true`` uses the
same code). Python API: :func:`run_rollout`.

checkpoint + start (a world seed, or frames of a recorded episode) + actions (a scripted policy,
``policy=replay replay_from=DATASET`` for a dataset's raw actions, or ``actions_file=X.npz`` with
``keys`` and ``mouse``) -> a rollout dataset of one episode (the context frames, then the
generated ones; ``source = "model"``) and an mp4. With ``compare=true`` the environment renders
the same inputs from the same start into ``<out>/truth`` and the mp4 shows both side by side
(generated left, ground truth right) with PSNR per frame printed at the end.
"""

from __future__ import annotations

import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import hydra
import numpy as np
from hydra.core.config_store import ConfigStore
from tqdm import tqdm

from envs.doom import DoomConfig
from envs.record import rollout as env_rollout
from envs.record import world_config_for
from envs.starts import engine_world_start
from worldsim.core.config import CONFIG_DIR, DEFAULT_CHECKPOINT, one_line_config_errors, to_schema
from worldsim.core.errors import WorldsimError, clean_errors
from worldsim.core.validate import check_keys, check_mouse
from worldsim.data.format import RolloutMeta, controller_extra
from worldsim.data.metrics import psnr
from worldsim.data.policies import check_open_loop, make_policy
from worldsim.data.preview import write_mp4
from worldsim.data.starts import episode_start
from worldsim.data.writer import RolloutWriter
from worldsim.diffusion.sampler import SamplerOverrides
from worldsim.inference.engine import Engine, load_engine


@dataclass
class RolloutConfig:
    """``worldsim-rollout``'s config (``worldsim/configs/rollout.yaml`` picks groups)."""

    checkpoint: str = DEFAULT_CHECKPOINT  # relative: the current folder, then the worldsim checkout
    seed: int = 0  # world seed of the start (and of the ground truth) when start_data is empty
    start_data: str = ""  # or start from a recorded episode of this dataset
    start_episode: int = 0
    policy: str = "explore"  # scripted policy, or "replay" (raw actions of replay_from)
    replay_from: str = ""
    actions_file: str = ""  # .npz with keys (T, K) uint8 and mouse (T, 2) float32; overrides policy
    policy_seed: int = 0
    frames: int = 64  # generated frames (rounded up to whole chunks)
    compare: bool = False
    out: str = "runs/rollout"
    bf16: bool | None = None  # bf16 autocast; None = on where the CPU computes bf16 natively
    sampler: SamplerOverrides = field(default_factory=SamplerOverrides)  # None fields keep the checkpoint's
    memory: str = "off"  # "on": keep a spatial memory bank and bring back views of places seen before
    memory_top_k: int | None = None  # memory on: entries a chunk may retrieve (None: the bank's default, 1)
    quantize: str = "none"  # "int8": int8 weights in the DiT's token-wise linear layers (CPU; docs/engine.md)
    # A DOOM checkpoint: the levels of a live start and of the compare=true ground truth (e.g.
    # doom.wad=freedoom1.wad for Freedoom 1's; no wad or map: the checkpoint's training levels); the motion
    # settings come from the checkpoint.
    doom: DoomConfig = field(default_factory=DoomConfig)


class RolloutInterrupted(KeyboardInterrupt):
    """Ctrl-C during generation, after ``done`` of ``total`` chunks were written to ``out``."""

    def __init__(self, done: int, total: int, out: str):
        super().__init__(f"interrupted: {done} of {total} chunks kept in {out}")
        self.done, self.total, self.out = done, total, out


def _actions(cfg: RolloutConfig, engine: Engine, count: int) -> tuple[np.ndarray, np.ndarray]:
    if cfg.actions_file:
        path = Path(cfg.actions_file)
        if not path.is_file():
            raise WorldsimError(f"actions file {path} does not exist")
        with np.load(path) as f:
            if "keys" not in f or "mouse" not in f:
                raise WorldsimError(f"{path} must hold arrays 'keys' (T, K) and 'mouse' (T, 2)")
            # Checked before any cast: astype(uint8) would turn -1 into 255 and 0.5 into 0.
            keys = check_keys(f"{path}: 'keys'", f["keys"], len(engine.key_names))
            mouse = check_mouse(f"{path}: 'mouse'", f["mouse"], len(keys))
    else:
        policy = make_policy(cfg.policy, engine.key_names, engine.cfg.controller, cfg.replay_from or None)
        a = policy.actions(count, np.random.default_rng(cfg.policy_seed))
        keys, mouse = a.keys, a.mouse
    if len(keys) < count:  # a short file or replay: hold still for the rest
        pad = count - len(keys)
        keys = np.concatenate([keys, np.zeros((pad, keys.shape[1]), np.uint8)])
        mouse = np.concatenate([mouse, np.zeros((pad, 2), np.float32)])
    return keys[:count], mouse[:count]


def run_rollout(cfg: RolloutConfig, engine: Engine | None = None) -> dict[str, Any]:
    """Generate and write the rollout; returns its arrays (and ``truth`` when ``compare``).

    Ctrl-C after the first chunk writes the finished chunks as a shorter rollout (no ``compare``)
    and raises :class:`RolloutInterrupted`."""
    if cfg.frames < 1:
        raise WorldsimError(
            f"frames must be at least 1 (generated frames, rounded up to whole chunks); got {cfg.frames}"
        )
    if not cfg.actions_file:
        check_open_loop(cfg.policy)  # one line before the checkpoint loads
    if engine is None:
        engine = load_engine(
            cfg.checkpoint,
            bf16=cfg.bf16,
            sampler=cfg.sampler,
            memory=cfg.memory,
            memory_top_k=cfg.memory_top_k,
            quantize=cfg.quantize,
        )
    k = engine.chunk_frames
    horizon = -(-cfg.frames // k) * k
    keys, mouse = _actions(cfg, engine, horizon)
    # Step 1: the start (ground-truth context in rollout order). A live start comes from the world
    # the truth plays: the checkpoint's controller, and for DOOM the levels ``cfg.doom`` picks.
    n = engine.context_frames
    if cfg.start_data:
        start = episode_start(cfg.start_data, cfg.start_episode, n, engine.key_names, engine.frame_size)
    else:
        start = engine_world_start(engine, cfg.seed, cfg.doom)
    world_seed = start.seed
    engine.reset(*start.arrays())
    context, ctx_keys, ctx_mouse = start.frames, start.keys, start.mouse
    poses = list(start.c2w)
    # Step 2: generate chunk by chunk. Ctrl-C keeps the chunks already finished: they are
    # written as a shorter rollout below, then the interrupt goes on to the caller.
    frames = []
    interrupted = False
    try:
        for s in tqdm(range(0, horizon, k), desc="rollout", unit="chunk"):
            chunk = engine.step(keys[s : s + k], mouse[s : s + k])
            frames.append(chunk.frames)
            poses += list(chunk.c2w)
    except KeyboardInterrupt:
        if not frames:
            raise
        interrupted = True
        horizon = len(frames) * k
        keys, mouse = keys[:horizon], mouse[:horizon]
    gen = np.concatenate(frames)
    # Rollout order: row t takes frame t to t+1; the context's last row is the first generated input.
    all_keys = np.concatenate([ctx_keys[:-1], keys, np.zeros((1, keys.shape[1]), np.uint8)])
    all_mouse = np.concatenate([ctx_mouse[:-1], mouse, np.zeros((1, 2), np.float32)])
    arrays = {
        "frames": np.concatenate([context, gen]),
        "c2w": np.stack(poses).astype(np.float32),
        "intrinsics": engine.intrinsics.astype(np.float32),
        "keys": all_keys,
        "mouse": all_mouse,
        "timestamp_s": np.arange(n + horizon, dtype=np.float64) / engine.fps,
    }
    out = Path(cfg.out)
    meta = RolloutMeta(
        env="model",
        fps=engine.fps,
        frame_size=engine.frame_size,
        key_names=engine.key_names,
        source="model",
        extra={
            "checkpoint": cfg.checkpoint,
            "context_frames": n,
            "sampler": engine.sampler_cfg.__dict__,
            **controller_extra(engine.cfg.controller),  # the poses' motion
        },
    )
    RolloutWriter(out, meta).write_episode(0, arrays, seed=world_seed, policy=cfg.policy)
    result: dict[str, Any] = {"arrays": arrays}
    if interrupted:
        write_mp4(out / "rollout.mp4", gen, fps=engine.fps)
        raise RolloutInterrupted(len(frames), -(-cfg.frames // k), str(out))
    video = gen
    # Step 3: the same inputs through the environment, from the same start.
    if cfg.compare:
        if world_seed is None:
            raise WorldsimError("compare=true needs a start whose world seed is known")
        if cfg.start_data:
            from worldsim.data.reader import RolloutDataset

            full = RolloutDataset(cfg.start_data).load(cfg.start_episode, ("keys", "mouse"))
            pre_k, pre_m = full["keys"][: n - 1], full["mouse"][: n - 1]  # took frame 0 to the last context frame
        else:
            pre_k, pre_m = ctx_keys[:-1], ctx_mouse[:-1]
        tk = np.concatenate([pre_k, keys, np.zeros((1, keys.shape[1]), np.uint8)])
        tm = np.concatenate([pre_m, mouse, np.zeros((1, 2), np.float32)])
        # The checkpoint's controller, so the world moves as the model was taught an input moves it.
        world = world_config_for(engine.cfg.env, engine.cfg.controller, cfg.doom, engine.cfg.levels)
        truth = env_rollout(engine.cfg.env, world_seed, engine.frame_size, world, tk, tm, save_depth=False)
        tmeta = RolloutMeta(
            engine.cfg.env,
            fps=engine.fps,
            frame_size=engine.frame_size,
            key_names=engine.key_names,
            extra=controller_extra(engine.cfg.controller),
        )
        RolloutWriter(out / "truth", tmeta).write_episode(0, truth, seed=world_seed, policy=cfg.policy)
        gt = truth["frames"][n : n + horizon]
        video = np.concatenate([gen, gt], axis=2)
        result["truth"] = truth
        result["psnr_db"] = psnr(gen, gt)
    write_mp4(out / "rollout.mp4", video, fps=engine.fps)
    return result


ConfigStore.instance().store(name="rollout_schema", node=RolloutConfig)


@one_line_config_errors("rollout")
@hydra.main(version_base=None, config_path=str(CONFIG_DIR), config_name="rollout")
@clean_errors
def _main(cfg: Any) -> None:
    rc = to_schema(cfg, RolloutConfig)
    try:
        r = run_rollout(rc)
    except RolloutInterrupted as e:
        print(f"\n{e}", file=sys.stderr)
        sys.exit(130)
    except KeyboardInterrupt:  # before the first chunk: nothing to keep
        sys.exit(130)
    msg = f"rollout: {len(r['arrays']['frames'])} frames -> {rc.out} (rollout.mp4)"
    if "psnr_db" in r:
        msg += f"; PSNR vs ground truth {np.mean(r['psnr_db']):.2f} dB (truth in {rc.out}/truth)"
    print(msg)


def main() -> None:
    """``worldsim-rollout`` (hydra overrides on the command line)."""
    _main()


if __name__ == "__main__":
    main()
