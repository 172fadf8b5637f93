"""Does the memory bank bring places back? (``worldsim-eval``'s ``memory_revisits`` section, issue 22.)

Scripted trajectories from ground-truth starts in held-out world seeds (``seed0 ..``, never
recorded for training) leave the start and come back to it **after more frames than the context
holds**, so only the memory bank can remember what was there:

* ``out_and_back``: walk forward, turn 180 degrees in place (``TURN_FRAMES`` frames), walk back
  to the start and turn 180 degrees again: the last view is the first;
* ``loop``: walk forward while turning, 1.25 turns of a circle over the trajectory (the last
  fifth retraces the first quarter's views);
* ``turn``: 1.25 turns in place.

each ``length`` frames long. Every trajectory is generated three ways from the same start and
noise: memory ``off``; ``on`` (the engine's bank, holding what it generated); and ``oracle``
(the same bank, but each chunk's entry replaced by the encoding of the true frames:
:meth:`Engine.remember_truth`), the bound a perfect memory would reach.

A generated frame is a **return frame** when it belongs to the way back (after the 180-degree
turn; after the first full turn) and its true view overlaps (:func:`fov_overlap`, at least
``overlap``) a frame of the way out at least ``context + chunk`` frames older: a view the context
can no longer hold. (Overlap alone would count walking forward too: the view ahead overlaps the
view from a few metres back.) PSNR and SSIM to the truth are averaged over the return frames and over the others;
``went dark`` counts trajectories whose frames sink into darkness while the truth stays lit.
The headline is the mean over trajectories of the return-frame PSNR, on minus off. A contact
sheet per kind (``memory_<kind>.png``) shows, for the return frame that overlaps the outbound
views most: the outbound true view it overlaps, the truth at return, and the three modes.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from tqdm import tqdm

from worldsim.core.errors import WorldsimError
from worldsim.data.metrics import psnr, ssim
from worldsim.data.preview import contact_sheet, upscale, write_png
from worldsim.eval.ground_truth import dark_frames, went_dark, world_rollout
from worldsim.inference.engine import Engine
from worldsim.memory.bank import MemoryConfig, with_settings
from worldsim.memory.scoring import fov_overlap

KINDS = ("out_and_back", "loop", "turn")
MODES = ("off", "on", "oracle")
TURN_FRAMES = 12  # out_and_back: frames of the 180-degree turn


@dataclass
class MemoryEvalConfig:
    """What the revisit evaluation runs (``worldsim-eval memory_revisits.*``); ``starts: 0`` skips it."""

    seed0: int = 98000  # held-out world seeds seed0 .. seed0 + starts - 1
    starts: int = 2
    lengths: list[int] = field(default_factory=lambda: [64, 128, 256])
    kinds: list[str] = field(default_factory=lambda: list(KINDS))
    overlap: float = 0.5  # FOV overlap with an older frame that makes a return frame
    # entries a chunk may retrieve, memory on and oracle (None: worldsim-eval's memory_top_k, else
    # the bank's default, 1)
    top_k: int | None = None
    # memory on and oracle: the bank's retrieval threshold (None: MemoryConfig's, 0.1); lower
    # retrieves also where the window shows most of the view (docs/memory.md)
    min_score: float | None = None
    keep: str | None = None  # which chunk a place keeps, "first" or "newest" (None: MemoryConfig's, first)
    discount_window: bool | None = None  # what the window shows counts as covered (None: MemoryConfig's, no)
    reuse: bool | None = None  # a still player's retrieved chunk keeps its pass (None: MemoryConfig's, yes)

    def bank(self) -> MemoryConfig:
        """The evaluated bank's config; ``WorldsimError`` in one line for an unknown kind or a bad
        threshold (``worldsim-eval`` calls it before any slow work)."""
        for kind in self.kinds:
            if kind not in KINDS:
                raise WorldsimError(f"unknown revisit trajectory {kind!r}; valid: {', '.join(KINDS)}")
        return with_settings(
            MemoryConfig(),
            min_score=self.min_score,
            keep=self.keep,
            discount_window=self.discount_window,
            reuse=self.reuse,
        )


def trajectory(
    kind: str, length: int, deg_per_px: float, num_keys: int, forward: int
) -> tuple[np.ndarray, np.ndarray, int]:
    """Inputs of one scripted trajectory (module docstring): ``keys (length, K)`` uint8 with key
    column ``forward`` as the walk, ``mouse (length, 2)`` float32 pixels, and the first frame of
    the way back (input row ``i`` makes frame ``i + 1``)."""
    if kind not in KINDS:
        raise WorldsimError(f"unknown revisit trajectory {kind!r}; valid: {', '.join(KINDS)}")
    keys = np.zeros((length, num_keys), np.uint8)
    mouse = np.zeros((length, 2), np.float32)
    if kind == "out_and_back":
        walk, turn = (length - 2 * TURN_FRAMES) // 2, 180.0 / deg_per_px / TURN_FRAMES
        keys[:walk, forward] = 1
        mouse[walk : walk + TURN_FRAMES, 0] = turn
        keys[walk + TURN_FRAMES : 2 * walk + TURN_FRAMES, forward] = 1
        mouse[2 * walk + TURN_FRAMES : 2 * walk + 2 * TURN_FRAMES, 0] = turn
        return keys, mouse, walk + TURN_FRAMES + 1
    mouse[:, 0] = 450.0 / deg_per_px / length
    if kind == "loop":
        keys[:, forward] = 1
    return keys, mouse, int(np.ceil(length * 360.0 / 450.0)) + 1


def return_frames(c2w: np.ndarray, intrinsics: np.ndarray, size: tuple[int, int], gap: int, back: int) -> np.ndarray:
    """``(T,)`` best FOV overlap of each pose of the way back (from frame ``back`` of ``c2w (T, 4,
    4)``) with the poses of the way out (before ``back``) at least ``gap`` frames older; 0 for the
    way out. A fixed point draw, so the split is deterministic."""
    t = len(c2w)
    cams = torch.from_numpy(c2w).double()
    overlap = fov_overlap(
        cams, cams, torch.from_numpy(intrinsics), size, num_points=512, generator=torch.Generator().manual_seed(0)
    ).numpy()
    i, j = np.arange(t)[:, None], np.arange(t)[None, :]
    counted = (j <= i - gap) & (j < back) & (i >= back)
    return np.where(counted, overlap, 0.0).max(axis=1)


def _generate(engine: Engine, arrays: dict[str, np.ndarray], n: int, oracle: bool, seed: int) -> tuple[np.ndarray, int]:
    """Frames after the ``n``-frame context under the recorded inputs, and the chunks with a hit."""
    k = engine.chunk_frames
    frames, keys, mouse = arrays["frames"], arrays["keys"], arrays["mouse"]
    engine.reset(frames[:n], arrays["c2w"][:n], keys[:n], mouse[:n], seed=seed)
    out, hits = [], 0
    for s in range(n, len(frames) - k + 1, k):
        chunk = engine.step(keys[s - 1 : s - 1 + k], mouse[s - 1 : s - 1 + k])
        if oracle:
            engine.remember_truth(frames[s : s + k])
        out.append(chunk.frames)
        hits += bool(chunk.memory)
    return np.concatenate(out), hits


def revisit_run(
    engines: dict[str, Engine], kind: str, length: int, seed: int, overlap: float, world: Any = None
) -> dict[str, Any]:
    """One trajectory generated by each engine of ``engines`` (``off``, ``on``; ``oracle`` runs
    the ``on`` engine with :meth:`Engine.remember_truth`), scored against the world's frames."""
    off = engines["off"]
    n, k = off.context_frames, off.chunk_frames
    forward = off.key_names.index("w")
    length = -(-length // k) * k
    keys, mouse, back = trajectory(kind, length, off.cfg.controller.mouse_deg_per_px, len(off.key_names), forward)
    still = np.zeros((n - 1, keys.shape[1]), np.uint8)  # a still context; row n - 1 makes frame n
    keys = np.concatenate([still, keys, still[:1]])
    mouse = np.concatenate([np.zeros((n - 1, 2), np.float32), mouse, np.zeros((1, 2), np.float32)])
    arrays = world_rollout(off, seed, keys, mouse, world)
    truth = arrays["frames"][n : n + length]
    best = return_frames(arrays["c2w"], off.intrinsics, off.frame_size, n + k, n - 1 + back)[n : n + length]
    is_return = best >= overlap
    out: dict[str, Any] = {"kind": kind, "length": length, "seed": seed, "return_frames": int(is_return.sum())}
    gens = {}
    for mode in MODES:
        engine = engines["off" if mode == "off" else "on"]
        gen, hits = _generate(engine, arrays, n, mode == "oracle", seed)
        gens[mode] = gen
        p, s = psnr(gen, truth), ssim(gen, truth)
        out[mode] = {
            "psnr_db_return": float(p[is_return].mean()) if is_return.any() else float("nan"),
            "psnr_db_other": float(p[~is_return].mean()) if (~is_return).any() else float("nan"),
            "ssim_return": float(s[is_return].mean()) if is_return.any() else float("nan"),
            "ssim_other": float(s[~is_return].mean()) if (~is_return).any() else float("nan"),
            "went_dark": bool(went_dark(gen, truth)),
            "dark_frames": dark_frames(gen, truth),
            "chunks_with_hits": hits,
        }
    if is_return.any():  # the sheet's frame: the return frame that overlaps older views most
        r = int(np.argmax(np.where(is_return, best, -1.0)))
        c2w = torch.from_numpy(arrays["c2w"]).double()
        frame = n + r
        ov = fov_overlap(
            c2w[frame : frame + 1], c2w[: frame - n - k + 1], torch.from_numpy(off.intrinsics), off.frame_size,
            num_points=512, generator=torch.Generator().manual_seed(0),
        )[0].numpy()  # fmt: skip
        out["sheet"] = [arrays["frames"][int(np.argmax(ov))], truth[r], *(gens[m][r] for m in MODES)]
    return out


def memory_revisit(
    make_engine: Callable[[str | MemoryConfig, int | None], Engine],
    cfg: MemoryEvalConfig,
    out: Path,
    world: Any = None,
) -> dict[str, Any]:
    """Every trajectory of ``cfg`` three ways (module docstring); ``make_engine(memory, top_k)``
    builds the evaluated checkpoint's engine with memory ``"off"``, or on with the bank config
    ``memory`` (:func:`load_engine`'s argument). Writes one contact sheet per kind to ``out`` and
    returns the ``memory_revisits`` section of ``metrics.json``."""
    bank = cfg.bank()
    engines = {"off": make_engine("off", None), "on": make_engine(bank, cfg.top_k)}  # None: the bank's
    built = engines["on"].memory_cfg
    assert built is not None  # memory on
    seeds = list(range(cfg.seed0, cfg.seed0 + cfg.starts))
    jobs = [(kind, length, seed) for kind in cfg.kinds for length in cfg.lengths for seed in seeds]
    runs = [
        revisit_run(engines, kd, n, sd, cfg.overlap, world)
        for kd, n, sd in tqdm(jobs, desc="memory revisits", unit="run")
    ]
    sheets: dict[str, list[np.ndarray]] = {}
    for r in runs:
        if "sheet" in r:
            sheets.setdefault(r["kind"], []).append(np.stack(r.pop("sheet")))
    for kind, rows in sheets.items():
        write_png(out / f"memory_{kind}.png", upscale(contact_sheet(rows, max_cols=len(MODES) + 2)[None], 4)[0])
    scored = [r for r in runs if r["return_frames"]]

    def mean(mode: str, key: str, rs: list[dict[str, Any]]) -> float:
        vals = [r[mode][key] for r in rs if np.isfinite(r[mode][key])]
        return float(np.mean(vals)) if vals else float("nan")

    summary = {
        mode: {
            "psnr_db_return": mean(mode, "psnr_db_return", scored),
            "psnr_db_other": mean(mode, "psnr_db_other", runs),
            "ssim_return": mean(mode, "ssim_return", scored),
            "ssim_other": mean(mode, "ssim_other", runs),
            "went_dark": int(sum(r[mode]["went_dark"] for r in runs)),
            "dark_frames": int(sum(r[mode]["dark_frames"] for r in runs)),
        }
        for mode in MODES
    }
    return {
        "seeds": seeds,
        "overlap": cfg.overlap,
        "top_k": built.top_k,  # what the evaluated bank was built with
        "min_score": bank.min_score,
        "keep": bank.keep,
        "discount_window": bank.discount_window,
        "reuse": bank.reuse,
        "runs_with_return_frames": len(scored),
        "return_gain_db": summary["on"]["psnr_db_return"] - summary["off"]["psnr_db_return"],
        "other_change_db": summary["on"]["psnr_db_other"] - summary["off"]["psnr_db_other"],
        "summary": summary,
        "runs": runs,
    }


def memory_lines(m: dict[str, Any]) -> list[str]:
    """The printed summary of a ``memory_revisits`` section, one string per line."""
    if not m:
        return []
    s = m["summary"]
    lines = [
        f"memory revisits: {len(m['runs'])} runs ({m['runs_with_return_frames']} with return frames); return frames "
        f"PSNR off {s['off']['psnr_db_return']:.2f} / on {s['on']['psnr_db_return']:.2f} / oracle "
        f"{s['oracle']['psnr_db_return']:.2f} dB (on - off {m['return_gain_db']:+.2f} dB); other frames on - off "
        f"{m['other_change_db']:+.2f} dB; went dark off {s['off']['went_dark']} / on {s['on']['went_dark']} / "
        f"oracle {s['oracle']['went_dark']}; dark frames where the truth is light off {s['off']['dark_frames']} / "
        f"on {s['on']['dark_frames']} / oracle {s['oracle']['dark_frames']}"
    ]
    for r in m["runs"]:
        lines.append(
            f"  {r['kind']:<12} {r['length']:>4} frames world {r['seed']}: {r['return_frames']} return frames; "
            + ", ".join(
                f"{mode} {r[mode]['psnr_db_return']:.2f} dB ({r[mode]['chunks_with_hits']} hit chunks)"
                for mode in MODES
            )
        )
    return lines
