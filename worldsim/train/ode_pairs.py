"""``worldsim-train stage=ode_pairs``: causal ODE pairs from the AR teacher (Causal Forcing's ODE
initialisation, reference.md §6), the data of ``stage=student_ode``.

For each pair, a training clip (teacher_data.py: recent context, or a retrieved earlier view plus
recent context, and clips that show a light-key press, as the teacher was trained) gives the
true clean context; the teacher, through the same rollout the engine plays with
(``ChunkRollout``, ``cached`` context), integrates the flow ODE of the next chunk from fresh
noise with ``distill.ode_steps`` deterministic Euler steps on the shifted schedule. The chunk's
state is kept at every level of the ``distill.grid_steps``-step schedule (where a 1-, 2- or
4-step student starts each of its steps) and at the end of the path.

Files, under ``<out>``::

    pairs.json                      the teacher (path, sha256 of its weights), the grid levels,
                                    counts and the run's identity
    train/shard_000000.safetensors  pairs_per_shard pairs each (the last shard may hold fewer)
    val/shard_000000.safetensors    the same from the clips of ``val_data``

A shard's tensors, ``B`` pairs of ``T = n + k`` frames (``n`` context frames, ``k`` per chunk):
``context (B, n, C, h, w)`` normalised clean latents; ``actions (B, T, A)`` encoded;
``c2w (B, T, 4, 4)`` poses and ``ray_ref (B, T, 4, 4)`` the pose each frame's rays are relative
to; ``states (B, G, k, C, h, w)`` the chunk at the ``G`` grid levels (level 0 is the noise);
``end (B, k, C, h, w)`` the ODE's end point; ``truth (B, k, C, h, w)`` the recorded chunk;
``memory (B,)`` whether the oldest context chunk is a retrieved view. All float32.

Shard ``i`` of a split is a pure function of the run's seed and ``i``; each is written atomically,
and a stopped run (Ctrl-C, SIGTERM, a crash) resumes with ``resume=true`` at the shards still
missing. Under ``torchrun`` rank ``r`` of ``w`` makes shards ``r, r + w, ...``.
"""

from __future__ import annotations

import dataclasses
import json
import math
import signal
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, save
from tqdm import tqdm

from worldsim.core.actions import make_action_encoder
from worldsim.core.atomic import write_bytes, write_text
from worldsim.core.errors import WorldsimError
from worldsim.data.frames import open_datasets
from worldsim.diffusion.sampler import SamplerConfig
from worldsim.inference.checkpoint import CONFIG_FILE, CheckpointConfig, find_checkpoint, load_checkpoint
from worldsim.inference.context import History
from worldsim.inference.rollout import ChunkRollout
from worldsim.model.dit import WorldModel
from worldsim.train.config import TrainConfig
from worldsim.train.distributed import barrier, init_distributed
from worldsim.train.teacher_data import ClipSampler, EncodedSplit

PAIRS_FILE = "pairs.json"
PAIRS_VERSION = 1
SPLITS = ("train", "val")
TENSORS = ("context", "actions", "c2w", "ray_ref", "states", "end", "truth", "memory")


def teacher_sha256(path: str | Path) -> str:
    """The sha256 of an exported teacher's weights as its ``config.json`` records it
    (``integrity``): what pairs, students and resumed runs compare to know their teacher."""
    root = find_checkpoint(path)
    try:
        sha = json.loads((root / CONFIG_FILE).read_text()).get("integrity", {}).get("model.safetensors")
    except (OSError, json.JSONDecodeError) as e:
        raise WorldsimError(f"distill.teacher: {root} is not a readable checkpoint ({e})") from e
    if not sha:
        raise WorldsimError(f"distill.teacher: {root} records no sha256 of its weights; export it again")
    return str(sha)


def load_teacher(path: str) -> tuple[CheckpointConfig, WorldModel, Any]:
    """``load_checkpoint`` of ``distill.teacher``; refuses a conditioning whose context keys go stale
    (``latest``): a real-time student caches its context."""
    ck, model, codec = load_checkpoint(path)
    if not ck.conditioning.cacheable:
        raise WorldsimError(
            f"distill.teacher {path} uses camera_reference {ck.conditioning.camera_reference!r}, whose context "
            "keys go stale every chunk; distil a teacher with a cacheable conditioning ('chunk' or 'session')"
        )
    return ck, model, codec


def require_clips(path: str, frames: int, what: str) -> None:
    """``WorldsimError`` before any slow work when no episode under ``path`` (from the index, no
    frames read) holds a ``frames``-frame clip, which ``what`` needs."""
    longest = max((e.num_frames for ds in open_datasets(path) for e in ds.episodes), default=0)
    if longest < frames:
        raise WorldsimError(
            f"{path}: no episode holds a {frames}-frame clip (longest: {longest} frames), which {what} needs"
        )


def grid_indices(ode_steps: int, grid_steps: int) -> list[int]:
    """Indices into the ``ode_steps``-step schedule of the ``grid_steps`` grid levels (noise
    first). The shifted schedules agree there: ``shift(1 - j / G) = shift(1 - (j * S / G) / S)``."""
    if grid_steps < 1 or ode_steps % grid_steps:
        raise WorldsimError(f"distill.ode_steps ({ode_steps}) must be a multiple of distill.grid_steps ({grid_steps})")
    return [j * ode_steps // grid_steps for j in range(grid_steps)]


def student_levels(grid_sigmas: list[float], student_steps: int, shift: float) -> list[int]:
    """Indices into the pairs' grid of the levels a ``student_steps``-step ``few_step`` sampler
    starts its steps from (its ``sigmas()`` but the final 0). ``WorldsimError`` when the grid
    does not hold them (``student_steps`` must divide ``grid_steps``)."""
    grid = len(grid_sigmas)
    if student_steps < 1 or grid % student_steps:
        raise WorldsimError(
            f"distill.student_steps ({student_steps}) must divide the pairs' grid_steps ({grid}): the pairs hold "
            f"the states a {grid}-step schedule visits"
        )
    idx = [j * grid // student_steps for j in range(student_steps)]
    want = SamplerConfig(num_steps=student_steps, shift=shift, mode="few_step").sigmas()[:-1]
    if any(abs(grid_sigmas[i] - w) > 1e-9 for i, w in zip(idx, want, strict=True)):
        raise WorldsimError(f"the pairs' grid {grid_sigmas} does not hold the student's levels {want}")
    return idx


@dataclass
class OdePairs:
    """One split of a pairs folder in memory (the tensors of the module docstring, shards
    concatenated) and the folder's ``pairs.json``."""

    meta: dict[str, Any]
    tensors: dict[str, torch.Tensor]

    def __len__(self) -> int:
        return int(self.tensors["end"].shape[0])

    @property
    def grid_sigmas(self) -> list[float]:
        """The ``G`` noise levels of ``states``, from 1 down."""
        return [float(s) for s in self.meta["grid_sigmas"]]

    @classmethod
    def open(cls, path: str | Path, split: str) -> OdePairs:
        """Read every shard of ``split`` under the pairs folder ``path``; ``WorldsimError`` when the
        folder is not a finished ``stage=ode_pairs`` run."""
        root = Path(path)
        meta_file = root / PAIRS_FILE
        if not meta_file.is_file():
            raise WorldsimError(f"{root} holds no ODE pairs (no {PAIRS_FILE}); make them with stage=ode_pairs")
        meta = json.loads(meta_file.read_text())
        if meta.get("version") != PAIRS_VERSION:
            raise WorldsimError(f"{meta_file}: pairs format {meta.get('version')}, this worldsim reads {PAIRS_VERSION}")
        n_shards = math.ceil(meta["counts"][split] / meta["pairs_per_shard"])
        files = [_shard_path(root, split, i) for i in range(n_shards)]
        missing = [f.name for f in files if not f.is_file()]
        if missing or not files:
            raise WorldsimError(
                f"{root}: {len(missing)} of {n_shards} {split} shards are missing; finish the pairs with "
                f"stage=ode_pairs out={root} resume=true"
            )
        shards = [load_file(str(f)) for f in files]
        return cls(meta, {name: torch.cat([s[name] for s in shards]) for name in TENSORS})


def _shard_path(root: Path, split: str, i: int) -> Path:
    return root / split / f"shard_{i:06d}.safetensors"


def _raise_interrupt(signum: int, frame: object) -> None:
    raise KeyboardInterrupt


@torch.no_grad()
def make_shard(
    rollout: ChunkRollout, clips: ClipSampler, seed: int, index: int, size: int, grid: list[int], device: torch.device
) -> dict[str, torch.Tensor]:
    """The tensors of one shard (module docstring): ``size`` clips of batch ``index`` of ``clips``
    (seeded by ``seed``), each chunk integrated by ``rollout`` (an Euler sampler) from true context."""
    b = clips.batch(seed, index, size, train=True)
    k = clips.k
    n = b.x0.shape[1] - k
    x0, actions, c2w, ray_ref = (t.to(device) for t in (b.x0, b.actions, b.c2w, b.ray_ref))
    # Compact positions 0 .. n-1 for the context, as the teacher was trained (RoPE: only differences count).
    g = torch.Generator(device=device).manual_seed(seed * 1_000_003 + index)
    context = History(x0[:, :n], actions[:, :n], c2w[:, :n], ray_ref[:, :n], torch.arange(n, device=device))
    rollout.restore(context, None, g)
    path: list[torch.Tensor] = []
    end = rollout.step(actions[:, n:], c2w[:, n:], g, trajectory=path)
    out = {
        "context": x0[:, :n],
        "actions": actions,
        "c2w": c2w,
        "ray_ref": ray_ref,
        "states": torch.stack([path[i] for i in grid], 1),
        "end": end,
        "truth": x0[:, n:],
        "memory": b.memory.float(),
    }
    return {name: t.float().cpu().contiguous() for name, t in out.items()}


def make_ode_pairs(cfg: TrainConfig) -> dict[str, float]:
    """Run the pairs stage (module docstring) -> ``{"train_pairs", "val_pairs", "shards_made"}``.
    Raises ``WorldsimError`` before any slow work for a bad grid, a teacher that cannot be
    distilled, data that disagrees with it, or an existing folder without ``resume=true``."""
    d = init_distributed(cfg.device)
    dc = cfg.distill
    # Step 1: everything that can be wrong with the inputs, before any slow work.
    grid = grid_indices(dc.ode_steps, dc.grid_steps)
    if dc.num_pairs < 1 or dc.num_val_pairs < 0 or dc.pairs_per_shard < 1:
        raise WorldsimError(
            f"distill.num_pairs must be >= 1, num_val_pairs >= 0 and pairs_per_shard >= 1, got "
            f"{dc.num_pairs}, {dc.num_val_pairs}, {dc.pairs_per_shard}"
        )
    if dc.num_val_pairs and not cfg.val_data:
        raise WorldsimError("distill.num_val_pairs > 0 needs val_data (held-out clips)")
    ck, teacher, codec = load_teacher(dc.teacher)
    sha = teacher_sha256(dc.teacher)
    out = Path(cfg.out)
    identity = {**cfg.identity(), "teacher_sha256": sha}
    meta_file = out / PAIRS_FILE
    if meta_file.is_file():
        if not cfg.resume:
            raise WorldsimError(
                f"{out} already holds ODE pairs; pass resume=true to finish them or choose another out="
            )
        was = json.loads(meta_file.read_text()).get("identity")
        if was != json.loads(json.dumps(identity)):
            diffs = sorted(k for k in set(was or {}) | set(identity) if (was or {}).get(k) != identity.get(k))
            raise WorldsimError(f"cannot resume {out}: its pairs were made with other settings ({diffs})")
    encoder = make_action_encoder(str(ck.action_encoder["name"]), list(ck.action_encoder["key_names"]))
    splits = {"train": (cfg.data, dc.num_pairs)}
    if dc.num_val_pairs:
        splits["val"] = (str(cfg.val_data), dc.num_val_pairs)
    cond = ck.conditioning
    for path, _ in splits.values():
        size = tuple(open_datasets(path)[0].meta.frame_size)
        if size != ck.frame_size:
            raise WorldsimError(f"{path} holds {size} frames, the teacher {dc.teacher} was trained on {ck.frame_size}")
        require_clips(path, (cond.context_chunks + 1) * ck.chunk_frames, "a pair (context and one chunk)")
    sampler = SamplerConfig(num_steps=dc.ode_steps, shift=ck.sampler.shift, mode="euler")
    schedule = sampler.sigmas()
    # The clips the teacher learnt from, without dropout: pairs teach the conditional student.
    tcfg = dataclasses.replace(
        cfg.teacher,
        context_chunks=cond.context_chunks,
        camera_reference=cond.camera_reference,
        translation_scale_m=cond.translation_scale_m,
        action_drop=0.0,
        camera_drop=0.0,
        dark_weight=1.0,
    )
    meta = {
        "version": PAIRS_VERSION,
        "teacher": str(dc.teacher),
        "teacher_sha256": sha,
        "ode_steps": dc.ode_steps,
        "shift": ck.sampler.shift,
        "grid_steps": dc.grid_steps,
        "grid_sigmas": [schedule[i] for i in grid],
        "pairs_per_shard": dc.pairs_per_shard,
        "counts": {s: n for s, (_, n) in splits.items()},
        "data": {s: p for s, (p, _) in splits.items()},
        "identity": identity,
    }
    if d.is_main:
        for s in splits:
            (out / s).mkdir(parents=True, exist_ok=True)
        write_text(meta_file, json.dumps(meta, indent=2))
    barrier(d)
    # Step 2: latents of every episode (cached in <out>/latents), then the shards still missing.
    codec.to(d.device)
    cache = out / "latents"
    encoded = {s: EncodedSplit.encode(p, codec, encoder, f"encode {s}", cache) for s, (p, _) in splits.items()}
    teacher.to(d.device)
    intr = encoded["train"].intrinsics
    rollout = ChunkRollout(teacher, sampler, cond, intr, ck.frame_size, "cached")
    latent_size = ck.model.latent_shape()[1:]
    null = torch.from_numpy(encoder.null_action())
    todo = []
    for s, (_, n) in splits.items():
        n_shards = math.ceil(n / dc.pairs_per_shard)
        for i in range(d.rank, n_shards, d.world):
            if not _shard_path(out, s, i).is_file():
                todo.append((s, i, min(dc.pairs_per_shard, n - i * dc.pairs_per_shard)))
    samplers = {s: ClipSampler(encoded[s], ck.chunk_frames, tcfg, cond, latent_size, null) for s in splits}
    seeds = {"train": cfg.seed, "val": cfg.seed + 7919}
    previous = None
    if threading.current_thread() is threading.main_thread():
        previous = signal.signal(signal.SIGTERM, _raise_interrupt)  # SIGTERM stops like Ctrl-C
    bar = tqdm(todo, desc="ode_pairs", unit="shard", disable=not d.is_main)
    try:
        for s, i, size in bar:
            tensors = make_shard(rollout, samplers[s], seeds[s], i, size, grid, d.device)
            write_bytes(_shard_path(out, s, i), save(tensors))
            bar.set_postfix(split=s, shard=i)
    except KeyboardInterrupt:
        if d.is_main:
            print(f"\ninterrupted: finished shards are kept in {out}; resume with resume=true")
        raise
    finally:
        if previous is not None:
            signal.signal(signal.SIGTERM, previous)
        bar.close()
    barrier(d)
    return {"train_pairs": float(dc.num_pairs), "val_pairs": float(dc.num_val_pairs), "shards_made": float(len(todo))}
