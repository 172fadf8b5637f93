"""What a chunk is conditioned on besides its own inputs: the context frames, their temporal
positions and the camera rays of every frame, as the checkpoint's conditioning prescribes.

Three camera references (``ConditioningConfig.camera_reference``):

* ``latest`` (the shipped teacher v1): rays of ``[context | chunk]`` relative to the newest
  context frame, translations divided by ``max(translation_scale_m, max |t|)`` over that
  sequence, temporal positions compact (``0 .. n + k - 1``). The reference moves every chunk,
  so the context's keys and values must be recomputed every chunk (``rebuild``).
* ``session``: rays relative to the session's first frame, translations divided by
  ``translation_scale_m`` alone, positions the absolute frame index since the session began.
  A frame's rays and position then never change, so its keys and values stay valid for as long
  as it stays in the window (``cached``).
* ``chunk`` (the real-time teacher v2): each chunk's rays relative to the pose just before the
  chunk (the newest frame of the context it was generated after; a session's oldest chunk: the
  frame before it when the start provides one, else its own first frame), translations divided
  by ``translation_scale_m`` alone, positions absolute. The generated chunk sees the camera
  exactly as under ``latest``; each context chunk keeps the rays it was made with, carrying its
  own motion, so its keys and values stay valid too (``cached``), and no pose is ever far from
  its reference however far the player walks (``session`` leaves the training range once the
  player is a few clip lengths away from the start). A retrieved memory chunk is the exception:
  its rays are relative to the generated chunk's reference (teacher_data.py).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from worldsim.core.errors import WorldsimError
from worldsim.model.plucker import clip_rays

CAMERA_REFERENCES = ("latest", "session", "chunk")


@dataclass(frozen=True)
class ConditioningConfig:
    """How a trained model expects its inputs; stored in checkpoints (``config.json`` ``conditioning``)."""

    context_chunks: int = 2  # finished chunks a new chunk sees (the window; the sink comes on top)
    translation_scale_m: float = 8.0
    latent_mean: tuple[float, ...] = ()  # per latent channel; empty = 0
    latent_std: tuple[float, ...] = ()  # per latent channel; empty = 1
    intrinsics: tuple[float, ...] = ()  # 3x3 row-major, pixels of the training frames; empty = unknown
    camera_reference: str = "latest"  # latest | session | chunk (module docstring)
    sink: bool = False  # keep the session's first chunk in the context for good (LongLive's sink)

    def __post_init__(self) -> None:
        if self.camera_reference not in CAMERA_REFERENCES:
            raise WorldsimError(
                f"unknown camera_reference {self.camera_reference!r}; valid: {', '.join(CAMERA_REFERENCES)}"
            )
        if self.context_chunks < 1:
            raise WorldsimError(f"context_chunks must be >= 1, got {self.context_chunks}")

    @property
    def cacheable(self) -> bool:
        """Whether a context frame's keys and values stay valid from chunk to chunk."""
        return self.camera_reference in ("session", "chunk")

    def stats(self, channels: int) -> tuple[torch.Tensor, torch.Tensor]:
        """Latent normalisation ``(mean, std)``, each ``(channels, 1, 1)`` float32."""
        mean = torch.tensor(self.latent_mean or [0.0] * channels).view(channels, 1, 1)
        std = torch.tensor(self.latent_std or [1.0] * channels).view(channels, 1, 1)
        return mean, std

    def intrinsics_matrix(self) -> torch.Tensor | None:
        """``(3, 3)`` float32 pixels of the training frames, or None when not recorded."""
        return torch.tensor(self.intrinsics, dtype=torch.float32).view(3, 3) if self.intrinsics else None


@dataclass
class History:
    """The clean frames a session's next chunk is conditioned on, batch first: normalised
    latents ``(B, T, C, h, w)``, encoded actions ``(B, T, A)``, poses ``(B, T, 4, 4)``, the pose
    each frame's rays are relative to ``ray_ref (B, T, 4, 4)`` (fixed when the frame joined:
    ``session``, ``chunk``; ``latest`` recomputes against the newest frame and ignores it) and
    each frame's index since the session began ``(T,)`` int64 (the sink chunk first when kept)."""

    latents: torch.Tensor
    actions: torch.Tensor
    c2w: torch.Tensor
    ray_ref: torch.Tensor
    frame_idx: torch.Tensor

    @property
    def num_frames(self) -> int:
        """Frames in the history (T)."""
        return int(self.latents.shape[1])

    def select(self, idx: torch.Tensor | slice) -> History:
        """The frames at ``idx`` (along T)."""
        return History(
            self.latents[:, idx], self.actions[:, idx], self.c2w[:, idx], self.ray_ref[:, idx], self.frame_idx[idx]
        )

    def clone(self) -> History:
        """A copy whose tensors share no memory with this one's."""
        return History(
            self.latents.clone(), self.actions.clone(), self.c2w.clone(), self.ray_ref.clone(), self.frame_idx.clone()
        )

    def concat(self, later: History) -> History:
        """This history's frames followed by ``later``'s (retrieved chunks in front of a context)."""
        return History(
            torch.cat([self.latents, later.latents], 1),
            torch.cat([self.actions, later.actions], 1),
            torch.cat([self.c2w, later.c2w], 1),
            torch.cat([self.ray_ref, later.ray_ref], 1),
            torch.cat([self.frame_idx, later.frame_idx]),
        )

    def append(self, latents: torch.Tensor, actions: torch.Tensor, c2w: torch.Tensor, ray_ref: torch.Tensor) -> History:
        """This history followed by one more chunk, whose rays were taken relative to
        ``ray_ref (B, 4, 4)`` (its frame indices continue the count)."""
        k = latents.shape[1]
        nxt = int(self.frame_idx[-1]) + 1
        idx = torch.arange(nxt, nxt + k, device=self.frame_idx.device)
        ref = ray_ref.to(self.ray_ref.dtype)[:, None].expand(-1, k, 4, 4)
        return History(
            torch.cat([self.latents, latents], 1),
            torch.cat([self.actions, actions.to(self.actions.dtype)], 1),
            torch.cat([self.c2w, c2w.to(self.c2w.dtype)], 1),
            torch.cat([self.ray_ref, ref], 1),
            torch.cat([self.frame_idx, idx]),
        )

    def window(self, chunk_frames: int, window_chunks: int, sink: bool) -> History:
        """The frames a new chunk sees: the sink chunk (frames 0 .. k-1 of the session, when
        kept and still here) and the newest ``window_chunks`` chunks."""
        keep = window_chunks * chunk_frames
        if self.num_frames <= keep:
            return self
        recent = torch.arange(self.num_frames - keep, self.num_frames)
        if sink and int(self.frame_idx[0]) == 0 and self.num_frames - keep >= chunk_frames:
            recent = torch.cat([torch.arange(chunk_frames), recent])
        return self.select(recent)


class CameraRays:
    """Plücker rays and temporal positions for the model, per the checkpoint's conditioning."""

    def __init__(
        self,
        cond: ConditioningConfig,
        intrinsics: torch.Tensor,  # (3, 3) pixels of the decoded frame
        frame_size: tuple[int, int],  # (H, W) of the decoded frame
        latent_size: tuple[int, int],  # (h, w)
    ):
        if intrinsics.shape != (3, 3):
            raise WorldsimError(f"intrinsics must be (3, 3), got {tuple(intrinsics.shape)}")
        self.cond, self.frame_size, self.latent_size = cond, frame_size, latent_size
        self.intrinsics = intrinsics.float()

    def relative_to_latest(self, c2w: torch.Tensor, ref: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
        """``latest``: rays of ``c2w (B, T, 4, 4)`` relative to ``ref (B, 4, 4)`` with translations
        normalised over the sequence -> ``(B, T, 6, h, w)`` in ``dtype`` (``plucker.clip_rays``)."""
        k = self.intrinsics.to(c2w.device).expand(c2w.shape[0], 3, 3)
        return clip_rays(c2w, ref, k, self.frame_size, self.latent_size, self.cond.translation_scale_m, dtype)

    def relative_to(self, c2w: torch.Tensor, ref: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
        """``session`` and ``chunk``: rays of ``c2w (B, T, 4, 4)`` relative to ``ref`` (``(B, 4,
        4)`` for all, or ``(B, T, 4, 4)`` one per pose), translations divided by
        ``translation_scale_m`` -> ``(B, T, 6, h, w)`` in ``dtype``. A pose's rays depend on that
        pose and its reference alone."""
        k = self.intrinsics.to(c2w.device).expand(c2w.shape[0], 3, 3)
        scale = self.cond.translation_scale_m
        return clip_rays(c2w, ref, k, self.frame_size, self.latent_size, scale, dtype, per_sequence_scale=False)
