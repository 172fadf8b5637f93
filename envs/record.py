"""``worldsim-record``: record a rollout dataset from a ground-truth world (hydra app).

    worldsim-record env=builtin policy=explore num_episodes=8 episode_len=64 \
        frame_size=[64,64] seed=0 out=runs/dataset
    worldsim-record env=doom doom.map=MAP01 ...     # needs the [doom] extra (docs/environments.md)

Episode ``i`` is world ``seed + i`` driven by the policy with RNG seed ``(seed, i)``; rerunning
the same command resumes an interrupted dataset by skipping finished episodes.

``avoid_obstacles=true`` (built-in world, scripted policies) redraws an episode's actions, with
RNG seed ``(seed, i, attempt)``, while its camera path would enter a tree, a landmark or the
ground (:func:`envs.builtin.path_collision`); episodes that stay clear on the first draw are the
same as without it.
"""

from __future__ import annotations

import sys
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from typing import Any

import hydra
import numpy as np
from hydra.core.config_store import ConfigStore
from tqdm import tqdm

from envs import available_envs, make_env
from envs.builtin import BuiltinWorldConfig, path_collision
from envs.doom import DEFAULT_WAD, DoomConfig
from worldsim.core.config import CONFIG_DIR, one_line_config_errors, to_schema
from worldsim.core.controller import CameraControllerConfig
from worldsim.core.errors import WorldsimError, clean_errors, unknown_name
from worldsim.core.validate import check_key_row, check_mouse_row
from worldsim.data.format import RolloutMeta, controller_extra, parse_frame_size
from worldsim.data.policies import Actions, ClosedLoopPolicy, Policy, ReplayPolicy, make_policy
from worldsim.data.preview import contact_sheet, write_mp4, write_png
from worldsim.data.reader import RolloutDataset
from worldsim.data.writer import RolloutWriter


@dataclass
class RecordConfig:
    """One ``worldsim-record`` run (mirrors ``configs/record.yaml``); ``frame_size`` is pixels,
    ``episode_len`` frames per episode, ``seed`` the first episode's world seed.
    """

    env: str = "builtin"
    policy: str = "explore"
    replay_from: str | None = None  # dataset whose raw actions policy=replay re-renders
    num_episodes: int = 8
    episode_len: int = 64
    frame_size: Any = field(default_factory=lambda: [64, 64])  # int or [height, width]
    seed: int = 0
    out: str = "runs/dataset"
    preview: bool = True  # write preview.mp4 and contact_sheet.png when done
    save_depth: bool = True
    avoid_obstacles: bool = False  # redraw actions whose camera path enters an object or the ground
    max_attempts: int = 50  # draws per episode before avoid_obstacles gives up with an error
    world: BuiltinWorldConfig = field(default_factory=BuiltinWorldConfig)
    doom: DoomConfig = field(default_factory=DoomConfig)  # env=doom only

    def world_config(self) -> BuiltinWorldConfig | DoomConfig:
        """The config section of ``env`` (``make_env``'s ``cfg``): :func:`env_section`."""
        return env_section(self.env, self.world, self.doom)

    def controller(self) -> CameraControllerConfig:
        """The controller whose motion the world's poses follow (:func:`world_controller`)."""
        return world_controller(self.world_config())


def env_section(env: str, world: BuiltinWorldConfig, doom: DoomConfig) -> BuiltinWorldConfig | DoomConfig:
    """Of a command's two world sections (``world``: the built-in world's, ``doom``), the one
    world ``env`` is made with (``make_env``'s ``cfg``)."""
    return doom if env == "doom" else world


def world_controller(world: BuiltinWorldConfig | DoomConfig) -> CameraControllerConfig:
    """The controller whose motion a world's poses follow: the built-in world's own, or the one
    that moves like DOOM's player (:meth:`envs.doom.DoomConfig.controller`)."""
    return world.controller() if isinstance(world, DoomConfig) else world.controller


def doom_levels(doom: DoomConfig) -> dict[str, Any]:
    """The part of a DOOM config that says where the game plays (``wad``, ``map``): what the
    recorder writes into ``meta.json`` (``extra.levels``) and a checkpoint keeps (``levels``)."""
    return {"wad": doom.wad or DEFAULT_WAD, "map": doom.map}


def world_config_for(
    env: str,
    controller: CameraControllerConfig,
    doom: DoomConfig | None = None,
    levels: dict[str, Any] | None = None,
) -> BuiltinWorldConfig | DoomConfig:
    """The config of world ``env`` whose inputs move as ``controller`` does (a checkpoint's, read
    from the data it was trained on): the ground truth for its rollouts. For DOOM, ``doom`` picks
    the levels (its wad and map); where it sets neither (None, or a command's default section):
    ``levels``, the checkpoint's training levels (:func:`doom_levels`), or with none recorded the
    default wad, world seed ``s`` playing map ``s`` mod 32. It gets the controller's motion
    settings. Raises ``WorldsimError`` when no DOOM setting moves like ``controller`` or ``levels``
    holds other keys than ``wad`` and ``map``."""
    if env != "doom":
        return BuiltinWorldConfig(controller=controller)
    doom = doom or DoomConfig()
    if doom.wad is None and doom.map is None:
        unknown = sorted(set(levels or {}) - {"wad", "map"})
        if unknown:
            raise WorldsimError(f"a checkpoint's levels hold unknown keys {unknown} (expected wad, map)")
        doom = replace(doom, **(levels or {}))
    doom = replace(
        doom,
        tics_per_step=controller.ticks_per_frame,
        mouse_deg_per_px=controller.mouse_deg_per_px,
        look_pitch=controller.max_pitch_deg > 0,
    )
    if doom.controller() != controller:
        raise WorldsimError(
            f"no DOOM setting moves like the controller {controller} (DOOM's: {doom.controller()}); "
            "was the model trained on DOOM data recorded before worldsim wrote DOOM's controller, "
            "or with another metres_per_unit?"
        )
    return doom


ConfigStore.instance().store(name="record_schema", node=RecordConfig)


def record(cfg: RecordConfig) -> RolloutDataset:
    """Record (or finish recording) the dataset ``cfg`` describes; returns it, read back."""
    if cfg.env not in available_envs():
        raise unknown_name("env", cfg.env, available_envs())
    frame_size = parse_frame_size(cfg.frame_size)
    if cfg.num_episodes < 1 or cfg.episode_len < 2:
        raise WorldsimError(f"need num_episodes >= 1 and episode_len >= 2, got {cfg.num_episodes}, {cfg.episode_len}")
    probe = make_env(cfg.env, seed=cfg.seed, frame_size=frame_size, cfg=cfg.world_config())
    key_names, fps = list(probe.key_names), probe.fps
    probe.close()
    # The policy turns by the world's degrees per mouse pixel (DOOM has its own setting).
    ctrl = cfg.controller()
    policy = make_policy(cfg.policy, key_names, ctrl, cfg.replay_from)
    if cfg.avoid_obstacles and (cfg.env != "builtin" or isinstance(policy, ReplayPolicy | ClosedLoopPolicy)):
        raise WorldsimError(
            "avoid_obstacles needs env=builtin and an open-loop scripted policy (replayed actions and a "
            "closed-loop policy's cannot be redrawn)"
        )
    # Non-default motion is written down, so a model trained on the data moves as it did; DOOM's
    # levels too, so the model's rollouts start where it learned (world_config_for).
    extra = controller_extra(ctrl)
    if cfg.env == "doom":
        extra["levels"] = doom_levels(cfg.doom)
    meta = RolloutMeta(env=cfg.env, fps=fps, frame_size=frame_size, key_names=key_names, source="env", extra=extra)
    writer = RolloutWriter(cfg.out, meta)
    todo = [i for i in range(cfg.num_episodes) if i not in writer.finished]
    if len(todo) < cfg.num_episodes:
        print(f"resuming {cfg.out}: {cfg.num_episodes - len(todo)} of {cfg.num_episodes} episodes already finished")
    for ep in tqdm(todo, desc="episodes", unit="ep", disable=not todo):
        world_seed = cfg.seed + ep
        if isinstance(policy, ReplayPolicy):  # re-render in the world the source was recorded in
            source_seed = policy.source_seed(ep)
            world_seed = world_seed if source_seed is None else source_seed
        rng, world, seed = np.random.default_rng([cfg.seed, ep]), cfg.world_config(), int(world_seed)
        if isinstance(policy, ClosedLoopPolicy):
            n = cfg.episode_len
            arrays = closed_loop_rollout(cfg.env, seed, frame_size, world, policy, n, rng, ep, cfg.save_depth)
        else:
            acts = policy.actions(cfg.episode_len, rng, episode=ep)
            if cfg.avoid_obstacles:
                acts = _clear_actions(cfg, policy, ep, seed, acts)
            arrays = rollout(cfg.env, seed, frame_size, world, acts.keys, acts.mouse, cfg.save_depth)
        writer.write_episode(ep, arrays, seed=int(world_seed), policy=cfg.policy)
    data = RolloutDataset(cfg.out)
    if cfg.preview:
        write_previews(data)
    return data


def _clear_actions(cfg: RecordConfig, policy: Policy, ep: int, world_seed: int, acts: Actions) -> Actions:
    """``acts``, or the first redraw whose camera path stays out of objects and the ground."""
    attempt = 0
    while path_collision(world_seed, cfg.world, acts.keys, acts.mouse) is not None:
        attempt += 1
        if attempt == cfg.max_attempts:
            raise WorldsimError(
                f"episode {ep} (world {world_seed}): policy {cfg.policy!r} walked into an object or the ground "
                f"in all {cfg.max_attempts} draws; raise max_attempts or shorten episode_len"
            )
        acts = policy.actions(
            cfg.episode_len, np.random.default_rng([cfg.seed, ep, attempt]), episode=ep, attempt=attempt
        )
    return acts


def rollout(
    env_name: str,
    seed: int,
    frame_size: tuple[int, int],
    world: BuiltinWorldConfig | DoomConfig,
    keys: np.ndarray,
    mouse: np.ndarray,
    save_depth: bool = True,
) -> dict[str, np.ndarray]:
    """Drive a fresh world (``make_env(env_name, ..., cfg=world)``) with raw actions; frame 0 is
    the reset, row t takes t to t+1. Depth is kept when ``save_depth`` and the world has it."""
    return _drive(env_name, seed, frame_size, world, len(keys), lambda t, c2w: (keys[t], mouse[t]), save_depth)


def closed_loop_rollout(
    env_name: str,
    seed: int,
    frame_size: tuple[int, int],
    world: BuiltinWorldConfig | DoomConfig,
    policy: ClosedLoopPolicy,
    num_frames: int,
    rng: np.random.Generator,
    episode: int = 0,
    save_depth: bool = True,
) -> dict[str, np.ndarray]:
    """:func:`rollout` with the rows ``policy`` gives from each frame's pose as the world returns
    it (``ClosedLoopPolicy.act``); the rows it gave are stored like any other (the last left at
    zero), so the episode replays through :func:`rollout`."""
    policy.start(num_frames, rng, episode)
    return _drive(env_name, seed, frame_size, world, num_frames, policy.act, save_depth)


def _drive(
    env_name: str,
    seed: int,
    frame_size: tuple[int, int],
    world: BuiltinWorldConfig | DoomConfig,
    num_frames: int,
    row: Callable[[int, np.ndarray], tuple[np.ndarray, np.ndarray]],
    save_depth: bool,
) -> dict[str, np.ndarray]:
    """The one loop of both rollouts: ``row(t, c2w of frame t)`` -> the inputs taking it to t+1."""
    with make_env(env_name, seed=seed, frame_size=frame_size, cfg=world) as env:
        obs = env.reset()
        frames, depth, c2w, times = [obs.frame], [obs.depth], [obs.c2w], [obs.time_s]
        keys = np.zeros((num_frames, len(env.key_names)), np.uint8)
        mouse = np.zeros((num_frames, 2), np.float32)
        for t in range(num_frames - 1):
            k, m = row(t, obs.c2w)  # checked before the casts: uint8 would turn -1 into 255, 0.5 into 0
            keys[t] = check_key_row(f"keys row {t}", k, len(env.key_names))
            mouse[t] = check_mouse_row(f"mouse row {t}", m)
            obs = env.step(keys[t], mouse[t])
            frames.append(obs.frame)
            depth.append(obs.depth)
            c2w.append(obs.c2w)
            times.append(obs.time_s)
        arrays = {
            "frames": np.stack(frames),
            "c2w": np.stack(c2w).astype(np.float32),
            "intrinsics": env.intrinsics.astype(np.float32),
            "keys": keys,
            "mouse": mouse,
            "timestamp_s": np.asarray(times, np.float64),
        }
        save_depth = save_depth and env.has_depth
    if save_depth:
        arrays["depth"] = np.stack(depth).astype(np.float16)
    return arrays


def write_previews(data: RolloutDataset, max_rows: int = 8) -> None:
    """``preview.mp4`` (first episode) and ``contact_sheet.png`` (first episodes as rows)."""
    data.require_nonempty()
    first = data.load(0, ("frames",))["frames"]
    write_mp4(data.root / "preview.mp4", first, fps=data.meta.fps)
    rows = [data.load(i, ("frames",))["frames"] for i in range(min(max_rows, len(data)))]
    write_png(data.root / "contact_sheet.png", contact_sheet(rows))


@one_line_config_errors("record")
@hydra.main(version_base=None, config_path=str(CONFIG_DIR), config_name="record")
@clean_errors
def _main(cfg: Any) -> None:
    rc = to_schema(cfg, RecordConfig)
    try:
        data = record(rc)
    except KeyboardInterrupt:
        print(
            f"\ninterrupted: finished episodes are kept in {rc.out}; rerun the same command to resume", file=sys.stderr
        )
        sys.exit(130)
    frames = sum(e.num_frames for e in data.episodes)
    print(f"recorded {len(data)} episodes, {frames} frames at {data.meta.frame_size} -> {data.root}")


def main() -> None:
    """Console entry point ``worldsim-record`` (hydra; config ``configs/record.yaml``)."""
    _main()


if __name__ == "__main__":
    main()
