"""Evaluation against ground truth (``worldsim-eval``; Python API: :func:`evaluate`).

Every number compares frames the engine generated with frames the environment rendered for the
same inputs, on held-out data:

* **rollouts**: from each episode's first ``context`` frames, generate ``horizon`` frames under the
  episode's recorded inputs; PSNR / SSIM per frame vs horizon, the same for the "repeat the last
  context frame" baseline on exactly the same frames, and a sharpness ratio (calibration lesson 5).
* **action following**: an inverse-dynamics model trained on ground-truth pairs (idm.py) predicts
  the raw action of each generated pair; accuracy per action on ground truth and on generated
  frames, beside chance.
* **revisits**: episodes of the go_and_return / full_turn / retrace policies generated to their end,
  where the camera is back where it started (retrace: steered back by the pose, in worlds with
  walls): PSNR of the last chunk vs ground truth and vs the baseline, and how many went dark
  (a frame's mean below ``DARK_MEAN``) where the ground truth did not.
* **turning**: from the same start (a world seed's spawn, or a place in recorded episodes:
  ``turn_data``), turn-left and turn-right inputs; a start counts when each
  rollout is closer (MSE) to its own ground truth than to the other's. Beside it, the same score
  with the truth pasted wherever the start view still reaches: the part of the view no model
  could know from the context decides the rest.
* **drift**: one long rollout under the explore policy; per-chunk mean and contrast (std) of
  generated frames vs the range seen in ground truth for the same inputs, and how often the
  generated frame is dark exactly when the true one is (the light action followed).

Outputs in ``out``: ``metrics.json`` (keys documented in docs/evaluation.md), PNG plots of each
metric vs horizon, a contact sheet (ground truth above generated) and one of every revisit
episode generated to its end (``revisit_sheet.png``).
"""

from __future__ import annotations

import json
import sys
from dataclasses import asdict, dataclass, field, replace
from typing import Any

import hydra
import numpy as np
from hydra.core.config_store import ConfigStore
from tqdm import tqdm

from envs.doom import DoomConfig
from worldsim.core.atomic import require_writable_dir, write_text
from worldsim.core.config import CONFIG_DIR, DEFAULT_CHECKPOINT, one_line_config_errors, to_schema
from worldsim.core.errors import WorldsimError, clean_errors
from worldsim.data.frames import open_datasets
from worldsim.data.metrics import PSNR_MAX_DB, frame_means, high_frequency_ratio, psnr, ssim
from worldsim.diffusion.sampler import SamplerOverrides
from worldsim.eval.ground_truth import DARK_MEAN, light_flips_followed, plot, rollout_against, went_dark, world_rollout
from worldsim.eval.idm import InverseDynamics, Pairs, idm_accuracy, load_idm, save_idm, train_idm
from worldsim.eval.memory_revisit import MemoryEvalConfig, memory_lines, memory_revisit
from worldsim.eval.stability import StabilityConfig, stability, stability_lines
from worldsim.inference.engine import Engine, load_engine
from worldsim.memory.bank import MemoryConfig

REVISIT_POLICIES = ("go_and_return", "full_turn", "retrace")  # episodes that end at their start view


@dataclass
class EvalConfig:
    """What ``worldsim-eval`` measures and on which data; mirrors ``configs/eval.yaml``."""

    checkpoint: str = DEFAULT_CHECKPOINT  # relative: the current folder, then the worldsim checkout
    # Ground truth of held-out world seeds; None: the built-in world's recorded at the checkpoint's
    # rate (HELD_OUT_DATA: data/builtin_v1/val at 15 frames/s, data/builtin_v1_30fps/val at 30)
    data: str | None = None
    out: str = "runs/eval"
    # Generated frames per rollout (rounded up to whole chunks); None: HORIZON_S of world time at the
    # checkpoint's rate (32 frames at 15 frames/s, 64 at 30)
    horizon: int | None = None
    max_episodes: int = 32
    # 0: one rollout per episode, from its start; N: one from every N-th frame of each episode that
    # leaves room for the context and the horizon (0, N, 2N, ...: places beyond a level's spawn)
    start_every: int = 0
    seed: int = 0
    bf16: bool | None = None  # bf16 autocast; None = on where the CPU computes bf16 natively
    sampler: SamplerOverrides = field(default_factory=SamplerOverrides)  # None fields keep the checkpoint's
    memory: str = "off"  # "on": keep a spatial memory bank and bring back views of places seen before
    memory_top_k: int | None = None  # memory on: entries a chunk may retrieve (None: the bank's default, 1)
    quantize: str = "none"  # "int8": int8 weights in the DiT's token-wise linear layers (CPU; docs/engine.md)
    idm: str = ""  # a trained inverse-dynamics folder; empty = train one on idm_data (saved in out/idm)
    idm_data: str | None = None  # None: the train split beside the default data (HELD_OUT_DATA)
    idm_steps: int = 400
    turn_starts: int = 32  # 0 = skip
    turn_seed0: int = 95000  # world seeds turn_seed0 .. turn_seed0 + turn_starts - 1
    # Turn from places in recorded episodes instead (a dataset folder): turn_starts starts spread
    # over its episodes (several per episode when fewer), at frames drawn from turn_seed0 (a
    # single DOOM level has one spawn view)
    turn_data: str = ""
    # Mouse pixels per frame of the turns; None: TURN_DEG_PER_S at the checkpoint's rate and mouse
    # sensitivity (the built-in controller's 0.25 deg/px: 12 at 15 frames/s, 6 at 30)
    turn_dx: float | None = None
    # Noise seeds per turn start (seed, seed + 1, ...): each start's pair of rollouts once per
    # seed, every pair counted. For some starts the side a pair lands on changes with the noise
    # once the view has turned new, so one seed's share moves by several starts (docs/evaluation.md).
    turn_seeds: int = 1
    drift_frames: int = 1000  # 0 = skip
    drift_seed: int = 96000
    # Held-out episodes that toggle the light (e.g. recorded with policy=explore_lights): night
    # drawn from day context, the first day-to-night toggle of each. "" = skip.
    night_data: str = ""
    night_episodes: int = 24
    stability: StabilityConfig = field(default_factory=StabilityConfig)  # worldsim/eval/stability.py
    # A DOOM checkpoint's ground truth for the parts that start from world seeds (turning, drift,
    # stability, memory revisits): e.g. doom.wad=freedoom1.wad for levels it was not trained on;
    # no wad or map: the levels the checkpoint was trained on (its config.json's `levels`).
    doom: DoomConfig = field(default_factory=DoomConfig)
    memory_revisits: MemoryEvalConfig = field(default_factory=MemoryEvalConfig)  # worldsim/eval/memory_revisit.py


# What the rate-following defaults of EvalConfig become (at_model_rate). The built-in world's
# held-out and train splits by the frame rate they were recorded at (recipes builtin_v1 and
# builtin_v1_30fps: the same world seeds and policies, one tick every 1/15 or 1/30 s).
HELD_OUT_DATA = {15.0: "data/builtin_v1", 30.0: "data/builtin_v1_30fps"}
HORIZON_S = 32 / 15  # seconds of world time a rollout generates (32 frames at 15 frames/s)
TURN_DEG_PER_S = 45.0  # the turning evaluation's yaw rate (12 px per frame at 15 frames/s, 0.25 deg/px)


def at_model_rate(cfg: EvalConfig, engine: Engine) -> EvalConfig:
    """``cfg`` with its rate-following defaults (the fields left None) set for ``engine``'s
    checkpoint: ``horizon`` = ``HORIZON_S`` of world time in frames, ``turn_dx`` =
    ``TURN_DEG_PER_S`` in mouse pixels per frame, ``data`` / ``idm_data`` the built-in world's val
    / train split recorded at the checkpoint's rate (``idm_data`` only where no trained ``idm`` is
    given). A 15 frames/s model gets what these fields held before they followed the rate (32
    frames, 12 px, data/builtin_v1). Fields given keep their values.

    Raises ``WorldsimError`` (one line) where a default is needed and none exists: data of another
    world or rate than ``HELD_OUT_DATA`` holds."""
    ctl = engine.cfg.controller
    fps = float(ctl.fps)
    horizon = cfg.horizon if cfg.horizon is not None else max(1, round(HORIZON_S * fps))
    turn_dx = cfg.turn_dx if cfg.turn_dx is not None else ctl.mouse_px_per_frame(TURN_DEG_PER_S)
    data, idm_data = cfg.data, cfg.idm_data
    if data is None or (idm_data is None and not cfg.idm):
        root = HELD_OUT_DATA.get(fps) if engine.cfg.env == "builtin" else None
        if root is None:
            missing = "data=<a held-out folder>" if data is None else "idm_data=<a train folder> or idm=<a trained one>"
            raise WorldsimError(
                f"no default data for a {engine.cfg.env} checkpoint at {fps:g} frames/s "
                f"(defaults: the built-in world at {', '.join(f'{f:g}' for f in HELD_OUT_DATA)}): pass {missing}"
            )
        data = f"{root}/val" if data is None else data
        idm_data = f"{root}/train" if idm_data is None and not cfg.idm else idm_data  # unused with idm
    return replace(cfg, data=data, horizon=horizon, turn_dx=turn_dx, idm_data=idm_data)


def _episodes(data: str, engine: Engine, limit: int) -> list[tuple[Any, int]]:
    sets = open_datasets(data)
    for ds in sets:
        if list(ds.meta.key_names) != engine.key_names:
            raise WorldsimError(f"{ds.root} records keys {ds.meta.key_names}, the checkpoint {engine.key_names}")
        if tuple(ds.meta.frame_size) != engine.frame_size:
            raise WorldsimError(f"{ds.root} has {tuple(ds.meta.frame_size)} frames, the checkpoint {engine.frame_size}")
        if ds.meta.controller() != engine.cfg.controller:  # the same inputs would move the camera otherwise
            raise WorldsimError(
                f"{ds.root} was recorded with {ds.meta.controller()}, the checkpoint plays {engine.cfg.controller}: "
                f"evaluate it on data recorded with its controller (a 30 frames/s model: data/builtin_v1_30fps/val)"
            )
    every = [(ds, i) for ds in sets for i in range(len(ds))]
    picks = np.linspace(0, len(every) - 1, min(limit, len(every))).round().astype(int)
    return [every[p] for p in sorted(set(picks.tolist()))]


def _told_apart(gens: dict[str, np.ndarray], gts: dict[str, np.ndarray], h: int) -> tuple[bool, dict[str, float]]:
    """Whether each side's first ``h`` generated frames are closer (MSE) to its own truth than to
    the other side's, and each side's MSE to its own truth."""
    mse = {(g, t): float(((gens[g][:h].astype(float) - gts[t][:h]) ** 2).mean()) for g in gens for t in gts}
    ok = mse["left", "left"] < mse["left", "right"] and mse["right", "right"] < mse["right", "left"]
    return ok, {side: mse[side, side] for side in gens}


@dataclass(frozen=True)
class TurnStart:
    """Where a turn starts: world ``seed`` of ``world`` (an env config, as
    :func:`worldsim.eval.ground_truth.world_rollout` takes it) driven by ``keys (p, K)`` uint8 and
    ``mouse (p, 2)`` float32 up to the turn (``p >= context - 1``); the turn's first input takes
    frame ``p`` to ``p + 1``, and the context is frames ``p + 1 - context .. p``. ``recorded``: the
    frames a recording showed for that context (the replay must draw them again), or None."""

    seed: int
    world: Any
    keys: np.ndarray
    mouse: np.ndarray
    label: str
    recorded: np.ndarray | None = None


def spawn_turn_starts(engine: Engine, seeds: list[int], world: Any) -> list[TurnStart]:
    """The spawn view of each world seed held still for the context."""
    p, kk = engine.context_frames - 1, len(engine.key_names)
    zeros = np.zeros((p, kk), np.uint8), np.zeros((p, 2), np.float32)
    return [TurnStart(seed, world, *zeros, f"world {seed}") for seed in seeds]


def episode_turn_starts(data: str, engine: Engine, count: int, seed: int) -> list[TurnStart]:
    """``count`` starts in recorded episodes of ``data`` (spread over them as the rollouts'
    episodes are, round after round when ``count`` exceeds them), each at a frame drawn from
    ``seed`` + its index: the world the recording played (its seed, levels and controller)
    driven by the recorded inputs up to that frame. For a world with one spawn (a single DOOM
    level) these are the places a turn can differ. Each start is replayed here, before any slow
    work: ``WorldsimError`` when the replay draws other frames than the recording, when the data
    are another world's or recorded with another controller than the checkpoint's, or when an
    episode is shorter than the context."""
    from envs.record import world_config_for

    n = engine.context_frames
    picked = _episodes(data, engine, count) if count > 0 else []
    starts = []
    for j in range(count):
        ds, i = picked[j % len(picked)]
        where = f"turn_data {ds.root}"
        if ds.meta.env != engine.cfg.env:
            raise WorldsimError(f"{where} records the {ds.meta.env!r} world, the checkpoint plays {engine.cfg.env!r}")
        ep = ds.load(i, ("frames", "keys", "mouse"))
        if len(ep["frames"]) < n:
            raise WorldsimError(f"{where} episode {i} has {len(ep['frames'])} frames, fewer than the {n} of context")
        at = int(np.random.default_rng(seed + j).integers(n, len(ep["frames"]) + 1))  # context: frames at-n .. at-1
        world = world_config_for(ds.meta.env, ds.meta.controller(), None, ds.meta.levels())
        start = TurnStart(
            ds.episodes[i].seed,
            world,
            ep["keys"][: at - 1].copy(),
            ep["mouse"][: at - 1].copy(),
            f"{ds.root.name} episode {i} frame {at}",
            ep["frames"][at - n : at].copy(),
        )
        replay = world_rollout(engine, start.seed, ep["keys"][:at], ep["mouse"][:at], world)  # frames 0 .. at-1
        _check_replay(start, replay["frames"][at - n : at])
        starts.append(start)
    return starts


def _check_replay(start: TurnStart, frames: np.ndarray) -> None:
    """``WorldsimError`` when a recorded start's context, replayed, is not what was recorded."""
    if start.recorded is not None and not np.array_equal(frames, start.recorded):
        raise WorldsimError(
            f"turning: {start.label} does not replay to its recorded frames (recorded with another world config?)"
        )


def turn_discrimination(
    engine: Engine, starts: list[TurnStart], horizon: int, dx: float, noise_seeds: list[int] | None = None
) -> dict[str, Any]:
    """Left vs right from each start (:class:`TurnStart`): after the context, the mouse turns by
    ``dx`` pixels per frame one way or the other and no key is pressed. A start counts when
    each rollout's MSE to its own ground truth is below its MSE to the other's, over the whole
    horizon (``discrimination``) and over its first 4, 8, 16... frames (``by_horizon``: where
    tracking is lost). ``start_view_bound`` scores the generated frames with the truth pasted
    wherever the start view reaches (the camera only turns, so that part is fixed by the context
    frames): what tracking alone can reach; the rest of the view is new to the model.
    ``noise_seeds``: each start's pair of rollouts is made once per seed (the engine's noise
    restarted at it) and every pair counts (None: once, from the engine's own seed); the share
    is over starts times seeds, each pair in ``per_start`` with its ``noise_seed``. Raises
    ``WorldsimError`` when a recorded start's replay draws other frames than its recording."""
    from worldsim.core.camera import rotation_reprojection

    n, kk = engine.context_frames, len(engine.key_names)
    seeds: list[int | None] = [None] if noise_seeds is None else list(noise_seeds)
    prefixes = sorted({h for h in (4, 8, 16) if h < horizon} | {horizon})
    wins = dict.fromkeys(prefixes, 0)
    bound_wins = 0
    per_start = []
    for start, noise in tqdm([(s, z) for s in starts for z in seeds], desc="turning", unit="rollout pair"):
        p = len(start.keys)
        gens, gts, pasted = {}, {}, {}
        for side, sign in (("left", -1.0), ("right", 1.0)):
            keys = np.zeros((p + 1 + horizon, kk), np.uint8)
            mouse = np.zeros((p + 1 + horizon, 2), np.float32)
            keys[:p], mouse[:p] = start.keys, start.mouse
            mouse[p:, 0] = sign * dx
            whole = world_rollout(engine, start.seed, keys, mouse, start.world)
            arrays = {name: whole[name][p + 1 - n :] for name in ("frames", "c2w", "keys", "mouse")}
            _check_replay(start, arrays["frames"][:n])
            gens[side], gts[side] = rollout_against(engine, arrays, horizon, seed=noise)
            c2w = arrays["c2w"]
            _, seen = rotation_reprojection(c2w[n : n + horizon], c2w[n - 1], engine.intrinsics, *engine.frame_size)
            pasted[side] = np.where(seen[..., None], gts[side], gens[side])
        for h in prefixes:  # the last prefix is the whole horizon: its result is the start's record
            ok, own = _told_apart(gens, gts, h)
            wins[h] += ok
        bound_ok, _ = _told_apart(pasted, gts, horizon)
        bound_wins += bound_ok
        own_mse = [own["left"], own["right"]]
        record = {"seed": start.seed, "start": start.label, "own_mse": own_mse, "correct": ok}
        per_start.append(record if noise is None else {**record, "noise_seed": noise})
    count = max(1, len(starts) * len(seeds))
    return {
        "starts": len(starts),
        **({} if noise_seeds is None else {"noise_seeds": len(seeds)}),
        "discrimination": wins[horizon] / count,
        "by_horizon": {str(h): w / count for h, w in wins.items()},
        "start_view_bound": bound_wins / count,
        "per_start": per_start,
    }


def drift(engine: Engine, seed: int, frames: int, world: Any = None) -> dict[str, Any]:
    """A long rollout under the explore policy: per-chunk mean / std of frames, generated and true."""
    from worldsim.data.policies import make_policy

    n, k = engine.context_frames, engine.chunk_frames
    horizon = -(-frames // k) * k
    acts = make_policy("explore", engine.key_names, engine.cfg.controller).actions(
        n + horizon, np.random.default_rng(seed)
    )
    arrays = world_rollout(engine, seed, acts.keys, acts.mouse, world)
    gen, gt = [], arrays["frames"][n : n + horizon]
    engine.reset(arrays["frames"][:n], arrays["c2w"][:n], acts.keys[:n], acts.mouse[:n])
    for s in tqdm(range(0, horizon, k), desc="drift", unit="chunk"):
        sl = slice(n - 1 + s, n - 1 + s + k)
        gen.append(engine.step(acts.keys[sl], acts.mouse[sl]).frames)
    g = np.concatenate(gen).astype(np.float64)
    gm, gs = frame_means(g), g.std(axis=(1, 2, 3))
    tm, ts = frame_means(gt), gt.astype(np.float64).std(axis=(1, 2, 3))
    inside = (gm >= tm.min()) & (gm <= tm.max()) & (gs >= ts.min()) & (gs <= ts.max())
    truth_flips, followed = light_flips_followed(gm, tm)
    return {
        "light_agreement": float(((gm < DARK_MEAN) == (tm < DARK_MEAN)).mean()),
        "light_flips": truth_flips,
        "light_flips_followed": followed,
        "frames": horizon,
        "gen_mean": gm.tolist(),
        "gen_std": gs.tolist(),
        "gt_mean": tm.tolist(),
        "gt_std": ts.tolist(),
        "within_gt_range": float(inside.mean()),
    }


NIGHT_FRAMES = 16  # generated frames per toggle, from 2 frames before the first dark one


def toggle_windows(episodes: list[tuple[Any, int]], context: int) -> list[tuple[dict[str, np.ndarray], int]]:
    """For each episode, its first turn from light to dark (frame mean below ``DARK_MEAN``) with
    ``context`` light frames ending 2 frames before it and ``NIGHT_FRAMES`` frames after them:
    ``(arrays, start of the context)``. Episodes without one are left out."""
    out = []
    for ds, i in episodes:
        a = ds.load(i, ("frames", "c2w", "keys", "mouse"))
        dark = frame_means(a["frames"]) < DARK_MEAN
        for f in np.flatnonzero(~dark[:-1] & dark[1:]) + 1:
            s = int(f) - 2 - context
            if s >= 0 and s + context + NIGHT_FRAMES <= len(dark) and not dark[s:f].any():
                out.append((a, s))
                break
    return out


def night_from_day(engine: Engine, windows: list[tuple[dict[str, np.ndarray], int]]) -> dict[str, Any]:
    """Through a toggle from day context (:func:`toggle_windows`), under the recorded inputs: the
    contrast (std) and mean of the generated frames where the truth is dark, against the truth's.
    A model that draws this scene's night (its lit landmarks) keeps the truth's contrast; a
    generic night is flatter."""
    gen_std, gt_std, gen_mean, gt_mean, ratios = [], [], [], [], []
    for a, s in tqdm(windows, desc="night", unit="toggle"):
        gen, gt = rollout_against(engine, {k: v[s:] for k, v in a.items()}, NIGHT_FRAMES)
        night = frame_means(gt) < DARK_MEAN
        g, t = gen[night].astype(np.float64), gt[night].astype(np.float64)
        gen_std.append(g.std(axis=(1, 2, 3)))
        gt_std.append(t.std(axis=(1, 2, 3)))
        gen_mean.append(frame_means(g))
        gt_mean.append(frame_means(t))
        ratios.append(float(np.median(gen_std[-1]) / np.median(gt_std[-1])))
    gs, ts, gm = np.concatenate(gen_std), np.concatenate(gt_std), np.concatenate(gen_mean)
    return {
        "toggles": len(windows),
        "night_frames": len(gs),
        "gen_contrast_median": float(np.median(gs)),
        "gt_contrast_median": float(np.median(ts)),
        "gen_mean_median": float(np.median(gm)),
        "gt_mean_median": float(np.median(np.concatenate(gt_mean))),
        "gen_dark_share": float(np.mean(gm < DARK_MEAN)),
        "contrast_ratio_median": float(np.median(ratios)),  # per toggle: generated / true median contrast
        "per_toggle_contrast_ratio": ratios,
    }


def evaluate(cfg: EvalConfig) -> dict[str, Any]:
    """Run every evaluation in the module docstring; returns what ``metrics.json`` holds."""
    from envs.record import world_config_for
    from worldsim.data.preview import contact_sheet, write_png

    if cfg.start_every < 0:
        raise WorldsimError(f"start_every must be >= 0 (0: one rollout per episode), got {cfg.start_every}")
    if cfg.turn_starts < 0 or cfg.turn_seeds < 1:
        raise WorldsimError(
            f"turn_starts must be >= 0 (0: no turning) and turn_seeds >= 1, got {cfg.turn_starts} and {cfg.turn_seeds}"
        )
    out = require_writable_dir(cfg.out, "out")
    engine = load_engine(
        cfg.checkpoint,
        seed=cfg.seed,
        bf16=cfg.bf16,
        sampler=cfg.sampler,
        memory=cfg.memory,
        memory_top_k=cfg.memory_top_k,
        quantize=cfg.quantize,
    )
    cfg = at_model_rate(cfg, engine)
    assert cfg.data is not None and cfg.horizon is not None and cfg.turn_dx is not None  # for mypy
    episodes = _episodes(cfg.data, engine, cfg.max_episodes)  # validates before any slow work
    world = world_config_for(engine.cfg.env, engine.cfg.controller, cfg.doom, engine.cfg.levels)
    if cfg.turn_data:
        turn_starts = episode_turn_starts(cfg.turn_data, engine, cfg.turn_starts, cfg.turn_seed0)
    else:
        seeds = list(range(cfg.turn_seed0, cfg.turn_seed0 + cfg.turn_starts))
        turn_starts = spawn_turn_starts(engine, seeds, world)
    if cfg.memory_revisits.starts:
        cfg.memory_revisits.bank()
    windows = []
    if cfg.night_data:
        windows = toggle_windows(_episodes(cfg.night_data, engine, cfg.night_episodes), engine.context_frames)
        if not windows:
            raise WorldsimError(
                f"no episode of {cfg.night_data} turns dark after {engine.context_frames} light frames "
                f"with {NIGHT_FRAMES} frames left (record it with policy=explore_lights)"
            )
    out.mkdir(parents=True, exist_ok=True)
    k = engine.chunk_frames
    horizon = -(-cfg.horizon // k) * k
    short = min(ds.episodes[i].num_frames for ds, i in episodes)
    if short < engine.context_frames + horizon:  # refuse before the slow inverse-dynamics training
        raise WorldsimError(
            f"an episode of {short} frames is too short for {engine.context_frames} context + {horizon} frames"
        )
    # Step 1: the inverse-dynamics model (trained on ground truth only).
    if cfg.idm:
        idm: InverseDynamics = load_idm(cfg.idm, engine.key_names)
    else:
        assert cfg.idm_data is not None  # at_model_rate set it
        idm = train_idm(cfg.idm_data, engine.key_names, steps=cfg.idm_steps, seed=cfg.seed)
        save_idm(out / "idm", idm, engine.key_names, {"data": cfg.idm_data, "steps": cfg.idm_steps})
    # Step 2: rollouts under recorded inputs, and revisits where the episode returns.
    scores: dict[str, list[np.ndarray]] = {"psnr": [], "ssim": [], "base_psnr": [], "base_ssim": []}
    gen_pairs: list[Pairs] = []
    gt_pairs: list[Pairs] = []
    sheet: list[np.ndarray] = []
    sharp: list[float] = []
    dark: list[bool] = []
    revisit: dict[str, dict[str, list[float]]] = {}
    revisit_sheet: list[np.ndarray] = []
    n = engine.context_frames
    starts = [
        (ds, i, s)
        for ds, i in episodes
        for s in range(0, ds.episodes[i].num_frames - n - horizon + 1, cfg.start_every or ds.episodes[i].num_frames)
    ]
    loaded = None  # the starts of an episode follow each other: load it once
    for ds, i, start in tqdm(starts, desc="rollouts", unit="rollout"):
        if loaded != (ds.root, i):
            episode, loaded = ds.load(i, ("frames", "c2w", "keys", "mouse")), (ds.root, i)
        arrays = {name: v[start:] for name, v in episode.items()}
        gen, gt = rollout_against(engine, arrays, horizon)
        last = np.repeat(arrays["frames"][n - 1 : n], horizon, 0)
        scores["psnr"].append(psnr(gen, gt))
        scores["ssim"].append(ssim(gen, gt))
        scores["base_psnr"].append(psnr(last, gt))
        scores["base_ssim"].append(ssim(last, gt))
        sharp.append(high_frequency_ratio(gen, gt))
        dark.append(went_dark(gen, gt))
        keys, mouse = arrays["keys"][n - 1 : n - 1 + horizon], arrays["mouse"][n - 1 : n - 1 + horizon]
        gen_pairs.append(Pairs(np.concatenate([arrays["frames"][n - 1 : n], gen[:-1]]), gen, keys, mouse))
        gt_pairs.append(Pairs(arrays["frames"][n - 1 : n - 1 + horizon], gt, keys, mouse))
        if len(sheet) < 8:
            sheet += [gt, gen]
        policy = ds.episodes[i].policy
        full = (len(arrays["frames"]) - n) // k * k
        if start == 0 and policy in REVISIT_POLICIES and full > horizon:  # the whole episode, once
            g_all, t_all = rollout_against(engine, arrays, full)
            r = revisit.setdefault(policy, {"psnr_db": [], "copy_last_psnr_db": [], "went_dark": []})
            r["psnr_db"].append(float(psnr(g_all[-k:], t_all[-k:]).mean()))
            r["copy_last_psnr_db"].append(float(psnr(np.repeat(arrays["frames"][n - 1 : n], k, 0), t_all[-k:]).mean()))
            r["went_dark"].append(went_dark(g_all, t_all))
            revisit_sheet += [t_all, g_all]
    per = {name: np.stack(v) for name, v in scores.items()}  # (episodes, horizon)
    policies = np.array([ds.episodes[i].policy or "unrecorded" for ds, i, _ in starts])
    static = (per["base_psnr"] == PSNR_MAX_DB).all(1)  # the truth never left the last context frame
    # (per rollout: with start_every, "episodes" in static_episodes, moving and by_policy count rollouts)
    gen_p, gt_p = Pairs.concat(gen_pairs), Pairs.concat(gt_pairs)
    idm_gen_by_frame = []
    for t in range(horizon):
        sel = np.arange(t, len(gen_p.a), horizon)
        acc = idm_accuracy(idm, Pairs(gen_p.a[sel], gen_p.b[sel], gen_p.keys[sel], gen_p.mouse[sel]), engine.key_names)
        idm_gen_by_frame.append(float(np.mean([v["accuracy"] for v in acc.values()])))
    metrics: dict[str, Any] = {
        "checkpoint": cfg.checkpoint,
        "config": asdict(cfg),
        "sampler": asdict(engine.sampler_cfg),
        "memory_bank": None if engine.memory_cfg is None else asdict(engine.memory_cfg),  # as the engine resolved it
        "episodes": len(episodes),
        "rollouts": len(starts),
        "horizon": horizon,
        "psnr_db_mean": float(np.mean(per["psnr"])),
        "copy_last_psnr_db_mean": float(np.mean(per["base_psnr"])),
        "psnr_gain_db": float(np.mean(per["psnr"]) - np.mean(per["base_psnr"])),
        "ssim_mean": float(np.mean(per["ssim"])),
        "copy_last_ssim_mean": float(np.mean(per["base_ssim"])),
        "sharpness_ratio": float(np.nanmean(sharp)),
        "went_dark": int(sum(dark)),
        "static_episodes": int(static.sum()),
        "moving": _rollout_scores(per, ~static),
        "by_policy": {str(p): _rollout_scores(per, policies == p) for p in sorted(set(policies))},
        "by_frame": {
            "psnr_db": per["psnr"].mean(0).tolist(),
            "copy_last_psnr_db": per["base_psnr"].mean(0).tolist(),
            "ssim": per["ssim"].mean(0).tolist(),
            "copy_last_ssim": per["base_ssim"].mean(0).tolist(),
            "idm_accuracy_generated": idm_gen_by_frame,
        },
        "idm": {
            "ground_truth": idm_accuracy(idm, gt_p, engine.key_names),
            "generated": idm_accuracy(idm, gen_p, engine.key_names),
        },
        "revisit": {
            p: {
                "psnr_db": float(np.mean(r["psnr_db"])),
                "copy_last_psnr_db": float(np.mean(r["copy_last_psnr_db"])),
                "episodes": len(r["psnr_db"]),
                "went_dark": int(sum(r["went_dark"])),
                "per_episode_psnr_db": r["psnr_db"],
            }
            for p, r in revisit.items()
        },
    }
    # Step 3: turning (from held-out world seeds, or places in turn_data) and drift (a held-out world seed).
    if cfg.turn_starts:
        noise = None if cfg.turn_seeds == 1 else [cfg.seed + j for j in range(cfg.turn_seeds)]
        metrics["turning"] = turn_discrimination(engine, turn_starts, horizon, cfg.turn_dx, noise)
    if cfg.drift_frames:
        metrics["drift"] = drift(engine, cfg.drift_seed, cfg.drift_frames, world)
    if windows:
        metrics["night_from_day"] = night_from_day(engine, windows)
    metrics["stability"] = stability(engine, cfg.stability, out, world)
    if cfg.memory_revisits.starts:

        def make_engine(memory: str | MemoryConfig, top_k: int | None) -> Engine:
            return load_engine(
                cfg.checkpoint,
                seed=cfg.seed,
                bf16=cfg.bf16,
                sampler=cfg.sampler,
                memory=memory,
                memory_top_k=top_k,
                quantize=cfg.quantize,
            )

        revisits = cfg.memory_revisits
        if revisits.top_k is None:  # the evaluation's own memory_top_k reaches the revisits too
            revisits = replace(revisits, top_k=cfg.memory_top_k)
        metrics["memory_revisits"] = memory_revisit(make_engine, revisits, out, world)
    # Step 4: files.
    write_text(out / "metrics.json", json.dumps(finite_or_null(metrics), indent=2, allow_nan=False))
    bf = metrics["by_frame"]
    plot(
        out, "psnr_vs_horizon.png", "PSNR (dB)", {"model": bf["psnr_db"], "repeat last frame": bf["copy_last_psnr_db"]}
    )
    plot(out, "ssim_vs_horizon.png", "SSIM", {"model": bf["ssim"], "repeat last frame": bf["copy_last_ssim"]})
    plot(out, "idm_vs_horizon.png", "IDM accuracy (mean over actions)", {"generated": bf["idm_accuracy_generated"]})
    if "drift" in metrics:
        d = metrics["drift"]
        series = {
            "generated mean": d["gen_mean"],
            "generated std": d["gen_std"],
            "truth mean": d["gt_mean"],
            "truth std": d["gt_std"],
        }
        plot(out, "drift.png", "pixel value (0-255)", series, xlabel="frame")
    write_png(out / "contact_sheet.png", contact_sheet(sheet))
    if revisit_sheet:
        write_png(out / "revisit_sheet.png", contact_sheet(revisit_sheet))
    return metrics


def _rollout_scores(per: dict[str, np.ndarray], sel: np.ndarray) -> dict[str, Any]:
    """Mean PSNR / SSIM of the model and of repeat-last over the episodes ``sel`` picks from
    ``per`` (name -> ``(episodes, horizon)`` scores); the means are None where it picks none."""
    n = int(sel.sum())

    def mean(name: str) -> float | None:
        return float(per[name][sel].mean()) if n else None

    p, b = mean("psnr"), mean("base_psnr")
    gain = None if p is None or b is None else p - b
    return {
        "episodes": n,
        "psnr_db": p,
        "copy_last_psnr_db": b,
        "psnr_gain_db": gain,
        "ssim": mean("ssim"),
        "copy_last_ssim": mean("base_ssim"),
    }


def finite_or_null(obj: Any) -> Any:
    """``obj`` (nested dicts, lists, tuples, floats) with every NaN or infinity replaced by None, so
    that ``metrics.json`` is strict JSON (``json.dumps`` would write ``NaN`` / ``Infinity``)."""
    if isinstance(obj, dict):
        return {k: finite_or_null(v) for k, v in obj.items()}
    if isinstance(obj, list | tuple):
        return [finite_or_null(v) for v in obj]
    if isinstance(obj, float) and not np.isfinite(obj):
        return None
    return obj


def summary_lines(m: dict[str, Any]) -> list[str]:
    """The human-readable summary of an :func:`evaluate` metrics dict, one string per printed line."""
    lines = [
        f"rollouts: {m.get('rollouts', m['episodes'])} from {m['episodes']} episodes x {m['horizon']} frames"
        + (f" of {m['config']['data']}" if "config" in m else ""),
        f"  PSNR {m['psnr_db_mean']:.2f} dB vs repeat-last {m['copy_last_psnr_db_mean']:.2f} dB "
        f"(gain {m['psnr_gain_db']:+.2f} dB); SSIM {m['ssim_mean']:.3f} vs {m['copy_last_ssim_mean']:.3f}; "
        f"sharpness {m['sharpness_ratio']:.2f}",
    ]
    if m.get("static_episodes"):  # repeat-last is exact there: the gain without them
        mv = m["moving"]
        gain = "n/a" if mv["psnr_gain_db"] is None else f"{mv['psnr_gain_db']:+.2f} dB"
        lines.append(
            f"  {m['static_episodes']} episodes where the truth never moves (repeat-last scores {PSNR_MAX_DB:.0f} dB); "
            f"the other {mv['episodes']}: gain {gain}"
        )
    for p, r in m.get("by_policy", {}).items():
        lines.append(
            f"  {p}: {r['episodes']} episodes, PSNR {r['psnr_db']:.2f} dB vs repeat-last "
            f"{r['copy_last_psnr_db']:.2f} dB (gain {r['psnr_gain_db']:+.2f} dB)"
        )
    lines.append(
        f"  went dark in {m['went_dark']} of {m.get('rollouts', m['episodes'])} where the ground truth stays light"
    )
    for name, acc in m["idm"]["generated"].items():
        gt = m["idm"]["ground_truth"][name]
        lines.append(
            f"  IDM {name:<16} truth {gt['accuracy']:.3f} (chance {gt['chance']:.3f})  generated {acc['accuracy']:.3f}"
        )
    for p, r in m["revisit"].items():
        lines.append(
            f"  revisit {p}: last chunk {r['psnr_db']:.2f} dB vs repeat-last {r['copy_last_psnr_db']:.2f} dB; "
            f"went dark in {r['went_dark']} of {r['episodes']}"
        )
    if "turning" in m:
        t = m["turning"]
        seeds = f" x {t['noise_seeds']} noise seeds" if "noise_seeds" in t else ""
        lines.append(
            f"turning: left/right told apart in {t['discrimination'] * 100:.1f}% of {t['starts']} starts{seeds}"
        )
        if "by_horizon" in t:
            by = ", ".join(f"{h} frames {v * 100:.0f}%" for h, v in t["by_horizon"].items())
            lines.append(f"turning over the first: {by}")
        if "start_view_bound" in t:
            lines.append(
                f"  with the truth pasted wherever the start view reaches: {t['start_view_bound'] * 100:.1f}% "
                "(what tracking alone can reach)"
            )
    if "drift" in m:
        d = m["drift"]
        lines.append(
            f"drift: {d['frames']} frames, {d['within_gt_range'] * 100:.1f}% within ground truth's mean/contrast range"
        )
        lines.append(
            f"  dark where the ground truth is dark and light where it is light: {d['light_agreement'] * 100:.1f}%"
        )
        lines.append(f"  turns to dark or light followed: {d['light_flips_followed']} of {d['light_flips']}")
    if "night_from_day" in m:
        n = m["night_from_day"]
        lines.append(
            f"night from day context: {n['toggles']} toggles, {n['night_frames']} night frames; contrast generated "
            f"{n['gen_contrast_median']:.2f} vs truth {n['gt_contrast_median']:.2f} (median ratio per toggle "
            f"{n['contrast_ratio_median']:.3f}); mean {n['gen_mean_median']:.1f} vs {n['gt_mean_median']:.1f}; "
            f"drawn dark {n['gen_dark_share'] * 100:.1f}%"
        )
    return lines + stability_lines(m.get("stability", {})) + memory_lines(m.get("memory_revisits", {}))


ConfigStore.instance().store(name="eval_schema", node=EvalConfig)


@one_line_config_errors("eval")
@hydra.main(version_base=None, config_path=str(CONFIG_DIR), config_name="eval")
@clean_errors
def _main(cfg: Any) -> None:
    ec = to_schema(cfg, EvalConfig)
    try:
        m = evaluate(ec)
    except KeyboardInterrupt:
        sys.exit(130)
    print("\n".join(summary_lines(m)))
    print(f"-> {ec.out}/metrics.json")


def main() -> None:
    """Console entry point ``worldsim-eval`` (hydra; config ``configs/eval.yaml``)."""
    _main()


if __name__ == "__main__":
    main()
