"""Training data of the AR teacher: every episode encoded once to latents, then seeded clips.

A clip is ``context_chunks + 1`` chunks of one episode. With probability ``memory_prob`` its
oldest chunk is replaced by an earlier, non-adjacent chunk of the same episode chosen by field
of view overlap with the clip's last chunk (reference.md §5), placed at the compact positions
just before the recent context, so the network learns to use retrieved views (scored as
``memory_scoring`` says: teachers v1 and v2 used a Monte-Carlo overlap; ``bank`` scores as the
play-time memory bank does). With probability ``revisit_prob`` a memory clip is drawn from the
revisit clips instead, where only the retrieved chunk shows what the generated chunk must draw
(:meth:`ClipSampler._revisit_clips`). With probability
``focus_prob`` a training clip is drawn from those whose generated chunk shows the effect of a
press of one of ``focus_keys`` (a rare action, such as the light key). Each frame carries a
loss weight (``dark_weight`` where the frame, or with ``dark_weight_by="context"`` the last
frame of the chunk before it, is darker than ``dark_mean``; else 1). Batch ``i`` of run
seed ``s`` is a pure function of ``(s, i)``.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from safetensors.torch import load_file, save
from tqdm import tqdm

from worldsim.core.actions.encoder import ActionEncoder
from worldsim.core.atomic import write_bytes
from worldsim.core.errors import WorldsimError, unknown_name
from worldsim.data.format import INDEX_FILE
from worldsim.data.frames import open_datasets
from worldsim.data.metrics import frame_means
from worldsim.data.reader import RolloutDataset
from worldsim.inference.context import ConditioningConfig
from worldsim.memory.bank import MemoryConfig, view_coverage, view_points
from worldsim.memory.scoring import fov_overlap
from worldsim.model.codec import Codec, frames_to_tensor
from worldsim.model.plucker import clip_rays
from worldsim.train.config import TeacherConfig

DARK_WEIGHT_BY = ("target", "context")  # teacher.dark_weight_by: whose darkness weighs a frame
MEMORY_SCORING = ("monte_carlo", "bank")  # teacher.memory_scoring
BANK = MemoryConfig()  # the play-time bank's scoring settings (radius, points, distance weight)


def check_memory_clips(tc: TeacherConfig) -> None:
    """The memory-clip options of ``tc``; ``WorldsimError`` in one line for a bad one."""
    if tc.memory_scoring not in MEMORY_SCORING:
        raise unknown_name("teacher.memory_scoring", tc.memory_scoring, MEMORY_SCORING)
    if not 0.0 <= tc.revisit_prob <= 1.0 or not 0.0 <= tc.revisit_context_max < tc.revisit_min <= 1.0:
        raise WorldsimError(
            f"teacher.revisit_prob must be in [0, 1] and 0 <= revisit_context_max < revisit_min <= 1, got "
            f"{tc.revisit_prob}, {tc.revisit_context_max}, {tc.revisit_min}"
        )
    if tc.revisit_prob > 0 and tc.memory_prob == 0:
        raise WorldsimError("teacher.revisit_prob draws memory clips: it needs memory_prob > 0")


def focus_columns(names: list[str], key_names: list[str]) -> list[int]:
    """Columns of ``teacher.focus_keys`` in the data's keys; a clear error for none or a typo."""
    unknown = [n for n in names if n not in key_names]
    if not names or unknown:
        raise WorldsimError(
            f"teacher.focus_keys must name keys of the data {key_names} when focus_prob > 0, got {list(names)}"
        )
    return [key_names.index(n) for n in names]


def follows_press(keys: np.ndarray) -> np.ndarray:
    """``(T,)`` bool from an episode's ``keys (T, K)``: frame ``f`` follows a press (up, then
    down) of any of the K keys on row ``f - 1``. Row ``t`` takes frame ``t`` to ``t + 1``, and keys
    are up before the first row."""
    down = keys.astype(bool)
    pressed = (down & ~np.vstack([np.zeros_like(down[:1]), down[:-1]])).any(axis=1)
    return np.concatenate([[False], pressed[:-1]])


@dataclass
class EncodedSplit:
    """All episodes of a split in memory: raw latents float16, per-frame actions, poses."""

    latents: list[torch.Tensor]  # (T, C, h, w)
    actions: list[torch.Tensor]  # (T, A)
    c2w: list[torch.Tensor]  # (T, 4, 4)
    intrinsics: torch.Tensor  # (3, 3)
    frame_size: tuple[int, int]
    key_names: list[str]
    sources: list[tuple[RolloutDataset, int]]  # where each episode's frames are on disk

    def frames(self, e: int, start: int, stop: int) -> np.ndarray:
        """Raw frames ``[start, stop)`` of episode ``e``, read from disk: ``(stop - start, H, W, 3)`` uint8."""
        ds, i = self.sources[e]
        return ds.load_slice(i, start, stop, ("frames",))["frames"]

    @classmethod
    @torch.no_grad()
    def encode(
        cls, path: str, codec: Codec, encoder: ActionEncoder, desc: str, cache_dir: Path | None = None, batch: int = 128
    ) -> EncodedSplit:
        """Encode every episode under ``path`` (on the codec's device); reuses
        ``cache_dir/<desc>-<key>.safetensors`` when the codec weights, the episode index and the
        encoder are the same as when it was written."""
        sets = open_datasets(path)
        meta = sets[0].meta
        for ds in sets:
            if list(ds.meta.key_names) != list(encoder.key_names):
                raise WorldsimError(
                    f"{ds.root} records keys {ds.meta.key_names}, the encoder expects {encoder.key_names}"
                )
        size = (int(meta.frame_size[0]), int(meta.frame_size[1]))
        out = cls([], [], [], torch.zeros(3, 3), size, list(encoder.key_names), [])
        out.sources = [(ds, i) for ds in sets for i in range(len(ds))]
        dev = next(codec.parameters()).device
        key = hashlib.sha1(json.dumps(encoder.spec(), sort_keys=True).encode())
        for name, t in codec.state_dict().items():
            key.update(name.encode() + t.float().cpu().numpy().tobytes())
        for ds in sets:
            key.update((ds.root / INDEX_FILE).read_bytes())
        cache = cache_dir / f"{desc.replace(' ', '_')}-{key.hexdigest()[:16]}.safetensors" if cache_dir else None
        if cache is not None and cache.is_file():
            arrays = load_file(str(cache))
            n = len(out.sources)
            out.latents = [arrays[f"latents.{e}"] for e in range(n)]
            out.actions = [arrays[f"actions.{e}"] for e in range(n)]
            out.c2w = [arrays[f"c2w.{e}"] for e in range(n)]
            out.intrinsics = arrays["intrinsics"]
            return out
        for ds, i in tqdm(out.sources, desc=desc, unit="episode"):
            a = ds.load(i, ("frames", "c2w", "intrinsics", "keys", "mouse"))
            frames = torch.from_numpy(a["frames"]).to(dev)
            z = torch.cat([codec.encode(frames_to_tensor(frames[s : s + batch])) for s in range(0, len(frames), batch)])
            z = z.cpu()
            out.latents.append(z.half().contiguous())
            out.actions.append(torch.from_numpy(encoder.frame_actions(a["keys"], a["mouse"])))
            out.c2w.append(torch.from_numpy(a["c2w"]).float())
            out.intrinsics = torch.from_numpy(a["intrinsics"]).float()
        if cache is not None:
            cache.parent.mkdir(parents=True, exist_ok=True)
            arrays = {"intrinsics": out.intrinsics}
            for e in range(len(out.sources)):
                arrays.update({f"latents.{e}": out.latents[e], f"actions.{e}": out.actions[e], f"c2w.{e}": out.c2w[e]})
            write_bytes(cache, save(arrays))
        return out

    def latent_stats(self) -> tuple[list[float], list[float]]:
        """Per-channel mean and std of all raw latents (over frames and pixels), ``C`` floats each."""
        z = torch.cat(self.latents).float()
        return z.mean(dim=(0, 2, 3)).tolist(), z.std(dim=(0, 2, 3)).tolist()


@dataclass
class Batch:
    """One training batch of ``B`` clips of ``T = (context_chunks + 1) * chunk_frames`` frames."""

    x0: torch.Tensor  # (B, T, C, h, w) normalised latents
    actions: torch.Tensor  # (B, T, A)
    plucker: torch.Tensor  # (B, T, 6, h, w)
    c2w: torch.Tensor  # (B, T, 4, 4)
    ray_ref: torch.Tensor  # (B, T, 4, 4) the pose each frame's rays are relative to
    memory: torch.Tensor  # (B,) bool: the oldest chunk is a retrieved view
    weight: torch.Tensor  # (B, T) each frame's weight in the loss


class ClipSampler:
    """Seeded clips for the teacher: recent context, optionally one retrieved earlier chunk, then the
    chunk to learn. Raises ``WorldsimError`` if no episode is long enough for one clip,
    ``focus_frames`` is not between one chunk and the clip, or ``focus_prob`` > 0 and no clip
    shows a press of ``focus_keys`` in its last ``focus_frames``.
    """

    def __init__(
        self,
        split: EncodedSplit,
        chunk_frames: int,
        tcfg: TeacherConfig,
        cond: ConditioningConfig,
        latent_size: tuple[int, int],
        null_action: torch.Tensor,  # (A,) what action dropout substitutes
        focus_frames: int | None = None,  # a focus clip's press lies in its last focus_frames (None: one chunk)
        recent_chunks: int | None = None,  # chunks after the first that a revisit's context is (None: all but the last)
        weight_by_memory: bool = False,  # a memory clip's frames weigh 1 where the retrieved chunk shows their view
    ):
        self.split, self.k, self.tcfg, self.cond = split, chunk_frames, tcfg, cond
        self.null = null_action.float()
        self.latent_size = latent_size
        self.clip_len = (tcfg.context_chunks + 1) * chunk_frames
        self.index = [(e, s) for e, z in enumerate(split.latents) for s in range(len(z) - self.clip_len + 1)]
        if not self.index:
            longest = max(len(z) for z in split.latents)
            raise WorldsimError(f"no episode is long enough for {self.clip_len}-frame clips (longest: {longest})")
        c = split.latents[0].shape[1]
        self.mean, self.std = cond.stats(c)
        self.focus_frames = chunk_frames if focus_frames is None else focus_frames
        if not chunk_frames <= self.focus_frames <= self.clip_len:
            raise WorldsimError(
                f"focus_frames must lie between one chunk ({chunk_frames}) and the clip ({self.clip_len}), "
                f"got {focus_frames}"
            )
        self.focus = self._focus_clips() if tcfg.focus_prob > 0 else []
        check_memory_clips(tcfg)
        last = tcfg.context_chunks - 1  # the chunks between the first and the last
        self.recent_chunks = last if recent_chunks is None else recent_chunks
        if recent_chunks is not None and not 1 <= recent_chunks <= last:
            raise WorldsimError(f"recent_chunks must lie between 1 and {last}, got {recent_chunks}")
        self.points = view_points(split.intrinsics, split.frame_size, BANK.radius_m, BANK.num_points)
        self.revisit = self._revisit_clips() if tcfg.revisit_prob > 0 else []
        self.dark = self._dark_frames() if tcfg.dark_weight != 1.0 else None
        self.weight_by_memory = weight_by_memory
        if weight_by_memory and self.dark is not None:
            raise WorldsimError("weight_by_memory and teacher.dark_weight each set the frames' weights: use one")

    def _dark_frames(self) -> list[torch.Tensor]:
        """``(T,)`` bool per episode: the frame's mean pixel value is below ``dark_mean``."""
        means = [frame_means(ds.load(i, ("frames",))["frames"]) for ds, i in self.split.sources]
        return [torch.from_numpy(m < self.tcfg.dark_mean) for m in means]

    def _focus_clips(self) -> list[int]:
        """Positions in ``index`` of the clips whose last ``focus_frames`` frames (the generated
        chunk, by default) have a frame that follows a press of one of ``focus_keys``
        (:func:`follows_press`)."""
        names = self.tcfg.focus_keys
        cols = focus_columns(names, self.split.key_names)
        follows = [follows_press(ds.load(i, ("keys",))["keys"][:, cols]) for ds, i in self.split.sources]
        first = self.clip_len - self.focus_frames  # the first frame within a clip that may follow the press
        out = [p for p, (e, s) in enumerate(self.index) if follows[e][s + first : s + self.clip_len].any()]
        if not out:
            raise WorldsimError(
                f"no clip of {self.clip_len} frames shows a press of {list(names)}: nothing to focus on"
            )
        return out

    def __len__(self) -> int:
        return len(self.index)

    def _coverage(self, e: int, query: int, anchors: torch.Tensor) -> torch.Tensor:
        """``(M,)`` float64: the share of frame ``query``'s view points (the bank's) that the
        cameras of frames ``anchors (M,)`` of episode ``e`` see."""
        c2w = self.split.c2w[e].double()
        w2c = torch.linalg.inv(c2w[anchors])
        seen = view_coverage(
            self.points, c2w[query], w2c, self.split.intrinsics.double(), self.split.frame_size, BANK.radius_m
        )
        return seen.double().mean(1)

    def _revisit_clips(self) -> list[int]:
        """Positions in ``index`` of the clips whose generated chunk's view (its newest frame's) an
        earlier chunk (ending before the clip, placed by its newest frame) covers by at least
        ``revisit_min`` while every chunk of the recent context (the ``recent_chunks`` after the
        clip's first, which the retrieved chunk replaces: by default all up to the last) covers
        less than ``revisit_context_max``."""
        k, t, tc = self.k, self.clip_len, self.tcfg
        out = []
        for p, (e, s) in enumerate(tqdm(self.index, desc="revisit clips", unit="clip", leave=False)):
            if s < k:
                continue
            query = s + t - 1
            earlier = torch.arange(0, s - k + 1, max(1, k // 2)) + k - 1
            recent = torch.arange(s + k, s + k + self.recent_chunks * k, k) + k - 1
            cov = self._coverage(e, query, torch.cat([earlier, recent]))
            if cov[: len(earlier)].max() >= tc.revisit_min and cov[len(earlier) :].max() < tc.revisit_context_max:
                out.append(p)
        if not out:
            raise WorldsimError(
                f"no clip is a revisit (an earlier chunk covering >= {tc.revisit_min} of its view, its context "
                f"< {tc.revisit_context_max}): teacher.revisit_prob needs data that returns to places"
            )
        return out

    def _shown_by_memory(self, e: int, frames: torch.Tensor, m: int | None) -> torch.Tensor:
        """``(T,)`` float: 1 for each clip frame (episode frames ``frames``) after the first chunk
        whose view the retrieved chunk starting at episode frame ``m`` (placed by its newest
        frame) covers by at least ``revisit_min``, else 0; all 0 without a retrieved chunk."""
        w = torch.zeros(len(frames))
        if m is None:
            return w
        anchor = torch.tensor([m + self.k - 1])
        for i in range(self.k, len(frames)):
            w[i] = float(self._coverage(e, int(frames[i]), anchor)[0] >= self.tcfg.revisit_min)
        return w

    def _memory_start(self, e: int, s: int, g: torch.Generator) -> int | None:
        """Start of an earlier chunk that overlaps the clip's last chunk most (one of the top few)."""
        k = self.k
        if s < k:
            return None
        starts = torch.arange(0, s - k + 1, max(1, k // 2))  # ends at least one chunk before the clip
        c2w = self.split.c2w[e]
        if self.tcfg.memory_scoring == "bank":  # as the play-time bank scores (worldsim/memory/bank.py)
            anchors = starts + k - 1
            query = s + self.clip_len - 1
            dist = (c2w[anchors, :3, 3].double() - c2w[query, :3, 3].double()).norm(dim=1)
            score = self._coverage(e, query, anchors) - BANK.distance_weight * dist / BANK.radius_m
        else:
            query_c2w = c2w[s + self.clip_len - k : s + self.clip_len]
            score = fov_overlap(
                query_c2w,
                c2w[starts + k // 2],
                self.split.intrinsics,
                self.split.frame_size,
                num_points=512,
                generator=g,
            ).mean(0)
        top = torch.topk(score, min(self.tcfg.memory_top, len(starts))).indices
        return int(starts[top[torch.randint(len(top), (1,), generator=g)]].item())

    def _ray_references(self, frames: torch.Tensor, memory: bool) -> torch.Tensor:
        """``(T,)`` episode frame whose pose each clip frame's rays are relative to, for the
        fixed references the rollout keeps (``inference.context``): ``session``, the episode's
        first frame (where its session began); ``chunk``, the frame before each chunk's first
        (the first chunk of an episode: its own first frame), and for a retrieved memory chunk
        the generated chunk's reference, the newest context frame."""
        k = self.k
        if self.cond.camera_reference == "session":
            return torch.zeros_like(frames)
        ref = (frames[::k] - 1).clamp_min(0)
        if memory:
            ref[0] = frames[-k - 1]
        return ref.repeat_interleave(k)

    def batch(self, seed: int, step: int, batch_size: int, train: bool = True) -> Batch:
        """A deterministic :class:`Batch` for ``(seed, step)``; ``train`` adds focus picks, memory
        retrieval and action/camera dropout. Plücker rays as the conditioning prescribes
        (``latest``: relative to the latest context frame; ``chunk``, ``session``: each frame's
        fixed reference, :meth:`_ray_references`).
        """
        g = torch.Generator().manual_seed(seed * 1_000_003 + step)
        picks = torch.randint(len(self.index), (batch_size,), generator=g).tolist()
        if train and self.focus:
            on = (torch.rand(batch_size, generator=g) < self.tcfg.focus_prob).tolist()
            alt = torch.randint(len(self.focus), (batch_size,), generator=g).tolist()
            picks = [self.focus[a] if f else p for p, f, a in zip(picks, on, alt, strict=True)]
        k, t = self.k, self.clip_len
        lat, act, cam, refs, mem, wts = [], [], [], [], [], []
        for p in picks:
            e, s = self.index[p]
            use_mem = train and torch.rand(1, generator=g).item() < self.tcfg.memory_prob
            if use_mem and self.revisit and torch.rand(1, generator=g).item() < self.tcfg.revisit_prob:
                e, s = self.index[self.revisit[int(torch.randint(len(self.revisit), (1,), generator=g))]]
            frames = torch.arange(s, s + t)
            m = self._memory_start(e, s, g) if use_mem else None
            if m is not None:
                frames = torch.cat([torch.arange(m, m + k), frames[k:]])
            lat.append(self.split.latents[e][frames])
            act.append(self.split.actions[e][frames])
            cam.append(self.split.c2w[e][frames])
            refs.append(self.split.c2w[e][self._ray_references(frames, m is not None)])
            mem.append(m is not None)
            if self.weight_by_memory:
                wts.append(self._shown_by_memory(e, frames, m))
            if self.dark is not None:
                dark = self.dark[e][frames]
                if self.tcfg.dark_weight_by == "context":  # the last frame of the chunk before; none before the first
                    dark = torch.cat([torch.zeros(k, dtype=torch.bool), dark[k - 1 : -1 : k].repeat_interleave(k)])
                wts.append(torch.where(dark, self.tcfg.dark_weight, 1.0))
        x0 = (torch.stack(lat).float() - self.mean) / self.std
        actions, c2w = torch.stack(act), torch.stack(cam)
        b = len(picks)
        intrinsics = self.split.intrinsics.expand(b, 3, 3)
        if self.cond.camera_reference == "latest":
            ref = c2w[:, t - k - 1]  # the latest context frame: the camera the last chunk starts from
            ray_ref = ref[:, None].expand(b, t, 4, 4)
            rays = clip_rays(
                c2w, ref, intrinsics, self.split.frame_size, self.latent_size, self.cond.translation_scale_m
            )
        else:  # each frame relative to its own reference, as the rollout keeps them
            ray_ref = torch.stack(refs)
            rays = clip_rays(
                c2w,
                ray_ref,
                intrinsics,
                self.split.frame_size,
                self.latent_size,
                self.cond.translation_scale_m,
                per_sequence_scale=False,
            )
        if train:
            drop_a = torch.rand(b, generator=g) < self.tcfg.action_drop
            drop_c = torch.rand(b, generator=g) < self.tcfg.camera_drop
            actions = torch.where(drop_a[:, None, None], self.null[None, None], actions)
            rays = rays * (~drop_c).float()[:, None, None, None, None]
        weight = torch.stack(wts) if wts else torch.ones(b, t)
        return Batch(x0, actions, rays, c2w, ray_ref, torch.tensor(mem), weight)
