"""Stability under what players do (``worldsim-eval``'s ``stability`` section): standing still for
a long time, holding each key, and pressing the light key for 1 to 8 frames.

Every number compares the engine's frames with the world's for the same inputs, from
ground-truth starts in held-out world seeds (``seed0 ..``, never recorded for training):

* **idle**: ``idle_frames`` frames of no input at all. The true view never changes; the model's
  must not sink into darkness or noise. PSNR to the truth by frame, over the last tenth of the
  frames (at least ``IDLE_TAIL``: the last 200 of 2,000, the last 1,000 of 10,000, as the
  real-time issues' bars read), and the share of frames whose mean and contrast (std) stay within the
  truth's range widened by ``IDLE_MEAN_TOL`` and ``IDLE_STD_TOL`` (a still truth has a range of
  one value).
* **holds**: each key held for ``hold_frames`` frames: PSNR to the truth against repeating the
  last context frame, and the light toggles made (held, the light key toggles once).
* **presses**: for each press length of ``PRESS_FRAMES``, the light key pressed twice (16
  frames apart) at every phase of the chunk: the light turns (frame mean crossing
  ``DARK_MEAN``) the model makes against the truth's; exact when every true turn is matched
  within 2 frames and there is no other.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from tqdm import tqdm

from worldsim.data.metrics import frame_means, psnr
from worldsim.eval.ground_truth import DARK_MEAN, light_flips_followed, plot, rollout_against, world_rollout
from worldsim.inference.engine import Engine

IDLE_TAIL = 200  # fewest frames at the end of an idle rollout that the headline PSNR averages
IDLE_MEAN_TOL = 8.0  # pixel values (0-255) the truth's mean range is widened by, either side
IDLE_STD_TOL = 0.2  # share of the truth's contrast (std) its range is widened by, either side
PRESS_FRAMES = (1, 2, 4, 8)
PRESS_GAP = 16  # frames from one press's start to the next
LIGHT_KEY = "l"


@dataclass
class StabilityConfig:
    """What the stability evaluation runs (``worldsim-eval stability.*``); 0 frames skips a part."""

    seed0: int = 99000  # held-out world seeds seed0 .. seed0 + starts - 1
    starts: int = 3
    idle_frames: int = 2000
    idle_night: bool = False  # also idle from night starts (the light key pressed on the first row)
    hold_frames: int = 32
    press_frames: bool = True  # the light presses of PRESS_FRAMES


def idle_tail(frames: int) -> int:
    """Frames at the end of an idle rollout of ``frames`` frames that its headline PSNR averages:
    the last tenth, at least ``IDLE_TAIL`` (all of a shorter rollout)."""
    return min(frames, max(IDLE_TAIL, frames // 10))


def _episode(
    engine: Engine, seed: int, keys: np.ndarray, mouse: np.ndarray | None = None, world: Any = None
) -> dict[str, np.ndarray]:
    """The world's frames for ``keys`` (and a still mouse unless given) from world ``seed``'s spawn
    (``world``: :func:`world_rollout`'s)."""
    m = np.zeros((len(keys), 2), np.float32) if mouse is None else mouse
    return world_rollout(engine, seed, keys, m, world)


def _flips(means: np.ndarray) -> int:
    return int(np.count_nonzero(np.diff(means < DARK_MEAN)))


def _with_start(frames: np.ndarray, arrays: dict[str, np.ndarray], n: int) -> np.ndarray:
    """Frame means of the last context frame followed by ``frames``: a turn on the first
    generated frame is a turn from the start view."""
    return frame_means(np.concatenate([arrays["frames"][n - 1 : n], frames]))


def light_turns(frames: np.ndarray, arrays: dict[str, np.ndarray], n: int) -> int:
    """Light turns (frame mean crossing ``DARK_MEAN``) in ``frames`` ``(T, H, W, 3)`` uint8, the
    generated or true frames after the ``n`` context frames of ``arrays``, counted from the last
    context frame."""
    return _flips(_with_start(frames, arrays, n))


def press_keys(engine: Engine, length: int, phase: int) -> tuple[np.ndarray, int]:
    """The presses part's inputs for one run: ``(keys (n + horizon, K) uint8, horizon)``, the
    light key held ``length`` frames twice, ``PRESS_GAP`` frames apart, the first from generated
    frame ``phase`` on (its input row is the last context row's successor), with ``horizon``
    whole chunks that cover both."""
    n, k = engine.context_frames, engine.chunk_frames
    horizon = -(-(phase + 2 * PRESS_GAP) // k) * k
    keys = np.zeros((n + horizon, len(engine.key_names)), np.uint8)
    for start in (phase, phase + PRESS_GAP):
        keys[n - 1 + start : n - 1 + start + length, engine.key_names.index(LIGHT_KEY)] = 1
    return keys, horizon


def idle(engine: Engine, seed: int, frames: int, night: bool = False, world: Any = None) -> dict[str, Any]:
    """``frames`` generated frames of no input after a still ground-truth context in world ``seed``
    (``night``: the light key pressed on the first row) against the world's; see the module docstring."""
    n, k = engine.context_frames, engine.chunk_frames
    horizon = -(-frames // k) * k
    keys = np.zeros((n + horizon, len(engine.key_names)), np.uint8)
    if night:
        keys[0, engine.key_names.index(LIGHT_KEY)] = 1
    arrays = _episode(engine, seed, keys, world=world)
    gen, gt = rollout_against(engine, arrays, horizon, desc=f"idle {seed}{' night' if night else ''}")
    p = psnr(gen, gt)
    gm, gs = frame_means(gen), gen.astype(np.float64).std(axis=(1, 2, 3))
    tm, ts = frame_means(gt), gt.astype(np.float64).std(axis=(1, 2, 3))
    inside = (
        (gm >= tm.min() - IDLE_MEAN_TOL)
        & (gm <= tm.max() + IDLE_MEAN_TOL)
        & (gs >= ts.min() * (1 - IDLE_STD_TOL))
        & (gs <= ts.max() * (1 + IDLE_STD_TOL))
    )
    tail = slice(horizon - idle_tail(horizon), horizon)
    return {
        "seed": seed,
        "night": night,
        "frames": horizon,
        "psnr_db_by_frame": p.tolist(),
        "psnr_db_first_100": float(p[:100].mean()),
        "tail_frames": idle_tail(horizon),
        "psnr_db_tail": float(p[tail].mean()),
        "within_truth_range": float(inside.mean()),
        "gen_mean_tail": float(gm[tail].mean()),
        "gt_mean": float(tm.mean()),
        "gen_std_tail": float(gs[tail].mean()),
        "gt_std": float(ts.mean()),
        "gen_mean_by_frame": gm.tolist(),
        "gen_std_by_frame": gs.tolist(),
    }


def holds(engine: Engine, seed: int, frames: int, world: Any = None) -> dict[str, Any]:
    """Each key held for ``frames`` frames after a still context in world ``seed``: PSNR to the
    truth and to it from the last context frame repeated, and light turns generated vs true."""
    n, k = engine.context_frames, engine.chunk_frames
    horizon = -(-frames // k) * k
    out: dict[str, Any] = {}
    for j, name in enumerate(tqdm(engine.key_names, desc=f"holds {seed}", unit="key")):
        keys = np.zeros((n + horizon, len(engine.key_names)), np.uint8)
        keys[n - 1 :, j] = 1  # from the first generated frame's input on
        arrays = _episode(engine, seed, keys, world=world)
        gen, gt = rollout_against(engine, arrays, horizon)
        last = np.repeat(arrays["frames"][n - 1 : n], horizon, 0)
        out[name] = {
            "psnr_db": float(psnr(gen, gt).mean()),
            "copy_last_psnr_db": float(psnr(last, gt).mean()),
            "light_turns_generated": light_turns(gen, arrays, n),
            "light_turns_truth": light_turns(gt, arrays, n),
        }
    return out


def presses(engine: Engine, seeds: list[int], world: Any = None) -> dict[str, Any]:
    """For each press length of :data:`PRESS_FRAMES`, two presses of the light key ``PRESS_GAP``
    frames apart, starting at every phase of the chunk, from a still day context in each world
    of ``seeds``; light turns generated vs true (module docstring)."""
    n, k = engine.context_frames, engine.chunk_frames
    out: dict[str, Any] = {}
    for length in tqdm(PRESS_FRAMES, desc="presses", unit="length"):
        runs = []
        for seed in seeds:
            for phase in range(k):
                keys, horizon = press_keys(engine, length, phase)
                arrays = _episode(engine, seed, keys, world=world)
                gen, gt = rollout_against(engine, arrays, horizon)
                gm, tm = _with_start(gen, arrays, n), _with_start(gt, arrays, n)
                truth, matched = light_flips_followed(gm, tm)
                made = _flips(gm)
                runs.append({"seed": seed, "phase": phase, "truth": truth, "generated": made, "matched": matched})
        exact = [r["truth"] == r["matched"] == r["generated"] for r in runs]
        out[str(length)] = {
            "runs": len(runs),
            "exact": int(sum(exact)),
            "truth_turns": int(sum(r["truth"] for r in runs)),
            "generated_turns": int(sum(r["generated"] for r in runs)),
            "matched_turns": int(sum(r["matched"] for r in runs)),
            "per_run": runs,
        }
    return out


def stability(engine: Engine, cfg: StabilityConfig, out: Path, world: Any = None) -> dict[str, Any]:
    """Every part of the module docstring that ``cfg`` asks for, with plots in ``out``
    (``idle_psnr.png``, ``idle_brightness.png``); returns the ``stability`` section of ``metrics.json``."""
    seeds = list(range(cfg.seed0, cfg.seed0 + cfg.starts))
    m: dict[str, Any] = {"seeds": seeds}
    if cfg.idle_frames:
        runs = [idle(engine, s, cfg.idle_frames, world=world) for s in seeds]
        if cfg.idle_night:
            runs += [idle(engine, s, cfg.idle_frames, night=True, world=world) for s in seeds]
        m["idle"] = {
            "frames": runs[0]["frames"],
            "tail_frames": runs[0]["tail_frames"],
            "psnr_db_tail_min": min(r["psnr_db_tail"] for r in runs),
            "psnr_db_tail_mean": float(np.mean([r["psnr_db_tail"] for r in runs])),
            "within_truth_range_min": min(r["within_truth_range"] for r in runs),
            "runs": runs,
        }
        label = {True: "night", False: "day"}
        by_run = {f"{r['seed']} {label[r['night']]}": r["psnr_db_by_frame"] for r in runs}
        plot(out, "idle_psnr.png", "PSNR to the truth (dB)", by_run)
        series = {}
        for r in runs:
            series[f"{r['seed']} mean"] = r["gen_mean_by_frame"]
            series[f"{r['seed']} std"] = r["gen_std_by_frame"]
        plot(out, "idle_brightness.png", "generated pixel value (0-255)", series)
    if cfg.hold_frames:
        m["holds"] = holds(engine, seeds[0], cfg.hold_frames, world)
    if cfg.press_frames:
        m["presses"] = presses(engine, seeds, world)
    return m


def stability_lines(m: dict[str, Any]) -> list[str]:
    """The printed summary of a ``stability`` section, one string per line."""
    lines = []
    if "idle" in m:
        i = m["idle"]
        lines.append(
            f"idle: {len(i['runs'])} starts x {i['frames']} frames of no input; PSNR to the truth over the last "
            f"{i['tail_frames']} frames {i['psnr_db_tail_mean']:.2f} dB (worst start {i['psnr_db_tail_min']:.2f}); "
            f"within the truth's mean/contrast range {i['within_truth_range_min'] * 100:.1f}% of frames (worst start)"
        )
        for r in i["runs"]:
            lines.append(
                f"  world {r['seed']}{' night' if r['night'] else ''}: first 100 frames "
                f"{r['psnr_db_first_100']:.2f} dB, last {i['tail_frames']} {r['psnr_db_tail']:.2f} dB; "
                f"mean {r['gen_mean_tail']:.1f} vs truth {r['gt_mean']:.1f}, "
                f"contrast {r['gen_std_tail']:.1f} vs {r['gt_std']:.1f}"
            )
    if "holds" in m:
        for name, h in m["holds"].items():
            lines.append(
                f"hold {name:<11} PSNR {h['psnr_db']:.2f} dB vs repeat-last {h['copy_last_psnr_db']:.2f} dB; "
                f"light turns {h['light_turns_generated']} (truth {h['light_turns_truth']})"
            )
    if "presses" in m:
        for length, p in m["presses"].items():
            lines.append(
                f"light pressed {length} frame(s): exact in {p['exact']} of {p['runs']} runs; turns generated "
                f"{p['generated_turns']}, true {p['truth_turns']}, matched {p['matched_turns']}"
            )
    return lines
