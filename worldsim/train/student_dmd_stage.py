"""``worldsim-train stage=student_dmd``: Self-Forcing distribution matching (DMD) on the student's
own rollouts (reference.md §6; Self-Forcing, CausVid).

Per iteration, on a seeded batch of clips of ``data`` (true context of ``context_chunks`` chunks,
then the inputs and poses of ``distill.rollout_chunks`` more, clips showing light-key presses
mixed in as the teacher was trained):

1. the student generates the chunks after the true context through the rollout the engine plays
   with (``ChunkRollout``, ``cached`` context, the sampler's context noise): each chunk of the
   DMD window stops at a random step of its sampler (Self-Forcing's exit step) and only that
   pass carries gradient; its clean keys and values join the cache without gradient, so later
   chunks read the student's own outputs. Long rollouts (Self-Forcing++) put chunks generated
   without any gradient before the window: the clip's recorded inputs (``free_chunks``), or a
   player standing still (``idle_prob``, ``idle_chunks``), so the window is read after the
   context the student's own long rollouts make. On a share of the still rollouts
   (``still_memory_prob``) every chunk after the first also reads the last true context chunk
   through the rollout's memory slot, as the play-time bank brings a still player's view back,
   and on another share (``still_press_prob``) the still player presses ``still_press_key`` (the
   light key) once, held 1 to ``still_press_frames`` frames, as the stability evaluation's
   presses come; on a third (``still_turn_prob``) the player turns in place at a constant rate
   (up to ``still_turn_deg_per_s``, either way), as the evaluation's turning inputs do, so
   the window shows views the student made itself after turning away from its context;
2. every generated chunk of the window is noised to its own level (uniform in
   ``[dmd_sigma_min, dmd_sigma_max]``, shifted like the teacher's sampler) and read by two score networks
   after the clean chunks a rolling cache would hold (``objectives.rollout_scores``; the clean
   chunks noised to the sampler's ``context_sigma`` as the rollout read them, and the retrieved
   chunk where the rollout read one): the frozen teacher (real score) and a trainable copy of it
   (fake score);
3. every ``generator_every``-th iteration (the first after ``generator_every - 1`` fake-score
   updates: a fake score that is still the teacher gives a zero step) the student takes the DMD step
   (``objectives.dmd_loss``: ``(fake - real) / mean|x - real|``); every iteration the fake
   score learns the student's current samples by flow matching. On a still player's iterations
   (those without a press or a turn) ``distill.still_regression`` (ours) adds the window's
   regression to its truth, the last context frame (the world does not change while nothing is
   pressed): DMD's regression loss (Yin et al. 2024) where the truth needs no recording, against
   the teacher's own drift to night and noise on long idle rollouts, which DMD alone copies. On the other iterations
   ``distill.recorded_regression`` (ours) regresses the window to the clip's recorded frames,
   which the student's rollout followed the inputs and poses of: against DMD's trade of PSNR
   to the truth for sharpness.

Both networks train in fp32 master weights (bf16 autocast where the CPU has it) with AdamW
(``beta1``), each with its own gradient clipping and learning rate (``fake_lr_scale``), under
the shared loop (loop.py: schedule, EMA, CSV log, checkpoints with exact resume, Ctrl-C/SIGTERM,
torchrun). The EMA student is exported to ``<out>/model``; previews roll it out on held-out
episodes every ``distill.preview_every`` steps.
"""

from __future__ import annotations

import copy
import dataclasses
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from worldsim.core.actions import ActionEncoder, make_action_encoder
from worldsim.core.controller import MOVE_KEYS, CameraController, CameraControllerConfig, CameraState
from worldsim.core.errors import WorldsimError
from worldsim.data.frames import input_meaning, open_datasets
from worldsim.diffusion.sampler import SamplerConfig
from worldsim.diffusion.schedule import shift_sigma
from worldsim.inference.checkpoint import CheckpointConfig, find_checkpoint, load_checkpoint, save_checkpoint
from worldsim.inference.context import CameraRays, ConditioningConfig, History
from worldsim.inference.rollout import ChunkRollout, default_policy
from worldsim.memory.bank import MemoryConfig
from worldsim.model.codec import Codec
from worldsim.model.dit import WorldModel
from worldsim.train.config import DistillConfig, TeacherConfig, TrainConfig
from worldsim.train.distributed import init_distributed
from worldsim.train.loop import TrainLoop
from worldsim.train.objectives import ScoreMemory, dmd_loss, rollout_scores
from worldsim.train.ode_pairs import load_teacher, require_clips, teacher_sha256
from worldsim.train.student_ode_stage import check_student_start
from worldsim.train.teacher_data import Batch, ClipSampler, EncodedSplit
from worldsim.train.teacher_stage import preview_episodes, preview_frames, preview_inputs, psnr_db, rollout_preview


class DMDNetworks(nn.Module):
    """The two networks DMD trains: the student (``generator``) and the ``fake_score``, both of
    the teacher's architecture (the student may add a memory embedding). One module, so that one
    loop checkpoints, resumes and averages both."""

    def __init__(self, model: WorldModel, fake_score: WorldModel):
        super().__init__()
        self.generator = model
        self.fake_score = fake_score


@dataclass
class DMDStep:
    """What one iteration computed. ``samples (B, M * k, C, h, w)``: the window's generated frames
    (with gradient when the generator stepped); ``dmd_loss``: the DMD loss (None on iterations
    where only the fake score learns); ``fake_loss``: the fake score's flow loss; ``still_mse``:
    on a still player's generator steps without a press, with ``distill.still_regression`` on, the mean squared
    error (normalised latents) of the window to the last context frame, else None;
    ``recorded_mse``: the same to the clip's recorded frames on the other generator steps with
    ``distill.recorded_regression`` on, else None; ``revisit_mse``: on a revisit or memory clip
    iteration with ``distill.revisit_regression`` on (every one: it needs no fake score), the
    same to the clip's recorded frames over the frames the batch weighs (``Batch.weight``: those
    a revisit's retrieved chunk shows, every one of a memory clip), else None."""

    samples: torch.Tensor
    dmd_loss: torch.Tensor | None
    fake_loss: torch.Tensor
    still_mse: torch.Tensor | None = None
    still_weight: float = 0.0
    recorded_mse: torch.Tensor | None = None
    recorded_weight: float = 0.0
    revisit_mse: torch.Tensor | None = None
    revisit_weight: float = 0.0

    @property
    def generator_loss(self) -> torch.Tensor | None:
        """What the student minimises: the DMD loss (if computed) plus each regression that was
        computed, times its weight; None when the student does not step."""
        terms = [] if self.dmd_loss is None else [self.dmd_loss]
        for mse, weight in (
            (self.still_mse, self.still_weight),
            (self.recorded_mse, self.recorded_weight),
            (self.revisit_mse, self.revisit_weight),
        ):
            if mse is not None:
                terms.append(weight * mse)
        return sum(terms[1:], terms[0]) if terms else None


TURN_MEMORY = ("off", "held", "own")  # distill.still_turn_memory: what a turning player reads as memory


@dataclass
class RolloutPlan:
    """What one iteration rolls out after the true context (the same on every rank): ``free``
    chunks without gradient, then the DMD window of ``len(exits)`` chunks, chunk ``j`` stopping
    at step ``exits[j]``; ``still``: the player stands still for both (nothing pressed, the last
    context pose held; ``press`` aside) instead of following the clip's recorded inputs;
    ``memory`` (a still player only, a turning one with ``distill.still_turn_memory``): every
    chunk from ``memory_from`` on reads a retrieved chunk (:meth:`SelfForcingDMD.memory`): the
    last context chunk, or with ``memory_own`` the rollout's own first generated chunk, which a
    turn's later chunks are given once it is older than the window (``memory_from`` =
    ``context_chunks + 1``), as the play-time bank gives a turning player its own earlier
    chunks; ``press`` (a still player only): ``(start, length)``,
    ``distill.still_press_key`` held for ``length`` generated frames from generated frame
    ``start`` (free chunks' frames first); ``turn_deg_per_s`` (a still player only): nonzero, the
    player turns in place at that yaw rate instead of holding the pose (> 0: to the right),
    nothing pressed, from the first generated frame on; ``revisit`` (a recorded rollout whose
    free chunks are ``distill.revisit_free_chunks``): the batch holds revisit clips
    (``distill.revisit_prob``, :func:`revisit_clips`) and every window chunk reads the clip's
    first chunk, the earlier view the window returns to, as a retrieved one; ``memory_clip`` (a
    recorded rollout that is not a revisit, as many free chunks): the same with memory clips
    (``distill.recorded_memory_prob``, :func:`memory_clips`), whose first chunk is the bank's
    best earlier chunk for the window's last view, whatever it shows."""

    exits: list[int]
    free: int = 0
    still: bool = False
    memory: bool = False
    press: tuple[int, int] | None = None
    turn_deg_per_s: float = 0.0
    revisit: bool = False
    memory_from: int = 1
    memory_own: bool = False
    memory_clip: bool = False

    @property
    def clip_memory(self) -> bool:
        """The batch's clips start with a retrieved chunk that the window reads (a revisit or a
        memory clip)."""
        return self.revisit or self.memory_clip

    def reads_memory(self, j: int, k: int) -> bool:
        """Whether generated chunk ``j`` (free chunks first; ``k`` frames each) reads the
        retrieved chunk: with ``memory``, every chunk from ``memory_from`` on (after the first
        unless ``memory_own``), up to the chunk the press starts in. The play-time bank
        retrieves only entries older than the window, so a still start's first chunk comes back
        once one chunk has been made; from a press on it asks
        for the other state (``MemoryConfig.state_key``), which the retrieved chunk is not in.
        An approximation from the press's chunk plus ``context_chunks`` + 1 on: the bank files
        the press's chunk under the new state and brings it back once it is older than the
        window, which a rollout here never gives. A ``revisit``: every window chunk, none of the
        free chunks before it (the earlier view is older than the true context; at play time the
        bank brings back what covers each chunk's view by ``MemoryConfig.min_score``, here the one
        chunk the window ends facing, which by the clip's choice no free chunk's view shows
        much of). A ``memory_clip``: every window chunk, as a revisit."""
        if self.clip_memory:
            return j >= self.free
        before_press = self.press is None or j < self.press[0] // k
        return self.memory and j >= self.memory_from and before_press


class SelfForcingDMD:
    """One DMD iteration (module docstring, steps 1-3) for batches of clips of ``context_chunks
    + free_chunks + rollout_chunks`` chunks. ``intrinsics (3, 3)`` pixels of ``frame_size``;
    ``null_action (A,)`` the encoder's null input (guidance); ``idle_action (A,)`` its encoding
    of a still player, which the ``still`` rollouts need; ``encoder`` the teacher's action
    encoder, which the still players' presses and turns (``distill.still_press_prob``,
    ``still_turn_prob``) need; ``controller`` the camera controller of the data (None: the
    teacher's, ``ck.controller``), which turns a still player."""

    def __init__(
        self,
        nets: DMDNetworks,
        teacher: WorldModel,
        ck: CheckpointConfig,
        sampler: SamplerConfig,
        dc: DistillConfig,
        intrinsics: torch.Tensor,
        null_action: torch.Tensor,
        idle_action: torch.Tensor | None = None,
        encoder: ActionEncoder | None = None,
        controller: CameraControllerConfig | None = None,
    ):
        self.nets, self.teacher, self.ck, self.sampler, self.dc = nets, teacher, ck, sampler, dc
        self.cond = ck.conditioning
        self.intrinsics = intrinsics
        self.rays = CameraRays(self.cond, intrinsics, ck.frame_size, ck.model.latent_shape()[1:])
        self.null = null_action
        self.idle = idle_action
        self.encoder = encoder
        self.controller = ck.controller if controller is None else controller
        self.k = ck.chunk_frames

    def _start(self, batch: Batch, plan: RolloutPlan) -> int:
        """The clip frame the ``plan``'s true context starts at: a recorded rollout ends where the
        clip ends (so its window holds the clip's last chunks, where a light-press focus clip has
        its press: in the last one, or anywhere with ``distill.focus_window``, whatever the number
        of free chunks), a still one starts at the clip's start."""
        t = (self.cond.context_chunks + plan.free + len(plan.exits)) * self.k
        if plan.still:
            return 0
        if t > batch.c2w.shape[1]:
            raise WorldsimError(f"a rollout of {t} frames needs longer clips than the batch's {batch.c2w.shape[1]}")
        return batch.c2w.shape[1] - t

    def context(self, batch: Batch, plan: RolloutPlan) -> torch.Tensor:
        """``(B, context_chunks * k, C, h, w)``: the clean latents of the ``plan``'s true context."""
        s = self._start(batch, plan)
        return batch.x0[:, s : s + self.cond.context_chunks * self.k]

    def inputs(self, batch: Batch, plan: RolloutPlan) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """``(actions (B, T, A), c2w (B, T, 4, 4), ray_ref (B, T, 4, 4))`` of the true context and
        the ``plan``'s chunks, ``T = (context_chunks + free + window) * k``: the clip's last ``T``
        frames, or, for a still player, the clip's first context and then the idle action (or
        the plan's press, :meth:`press_actions`) at the last context pose (or the plan's turn
        from it, :meth:`turn_inputs`), each chunk's rays relative to the pose before it
        (``chunk``) or the session's first (``session``), as the rollout keeps them."""
        n0 = self.cond.context_chunks * self.k
        t = n0 + (plan.free + len(plan.exits)) * self.k
        s = self._start(batch, plan)
        if not plan.still:
            return batch.actions[:, s : s + t], batch.c2w[:, s : s + t], batch.ray_ref[:, s : s + t]
        if self.idle is None:
            raise WorldsimError("a still rollout needs the action encoder's idle input (idle_action)")
        b, rest = batch.c2w.shape[0], t - n0
        if plan.turn_deg_per_s:
            rows, poses = self.turn_inputs(batch.c2w[:, n0 - 1], rest, plan.turn_deg_per_s)
        else:  # the last context pose held, nothing pressed but the plan's press
            poses = batch.c2w[:, n0 - 1 : n0].expand(b, rest, 4, 4)
            rows = self.idle[None] if plan.press is None else self.press_actions(rest, *plan.press)
        if self.cond.camera_reference == "session":
            ref = batch.ray_ref[:, :1].expand(b, rest, 4, 4)
        else:  # each chunk's rays relative to the pose of the frame before its first
            before = torch.cat([batch.c2w[:, n0 - 1 : n0], poses[:, self.k - 1 : -1 : self.k]], 1)
            ref = before.repeat_interleave(self.k, 1)
        actions = torch.cat([batch.actions[:, :n0], rows.to(batch.actions).expand(b, rest, -1)], 1)
        c2w = torch.cat([batch.c2w[:, :n0], poses], 1)
        ray_ref = torch.cat([batch.ray_ref[:, :n0], ref], 1)
        return actions, c2w, ray_ref

    def turn_inputs(self, start: torch.Tensor, frames: int, deg_per_s: float) -> tuple[torch.Tensor, torch.Tensor]:
        """A player turning in place from the poses ``start (B, 4, 4)`` at ``deg_per_s`` (> 0: to
        the right) for ``frames`` generated frames, through the camera controller the engine
        steps (``self.controller``, whose ``mouse_px_per_frame`` gives the mouse pixels per
        frame) -> ``(actions (frames, A)`` as the encoder makes them for the engine, nothing
        pressed before or during, ``c2w (B, frames, 4, 4))``: generated frame ``i`` is the pose
        after input row ``i``, as :meth:`Engine.step` places it. ``WorldsimError`` without an
        encoder."""
        if self.encoder is None:
            raise WorldsimError("a still player's turn needs the action encoder (encoder)")
        names = self.encoder.key_names
        keys = np.zeros((frames, len(names)), np.uint8)
        mouse = np.zeros((frames, 2), np.float32)
        mouse[:, 0] = self.controller.mouse_px_per_frame(deg_per_s)
        ctl = CameraController(self.controller, names)
        poses = [ctl.run(CameraState.from_c2w(pose), keys, mouse)[1] for pose in start.detach().cpu().double().numpy()]
        rows = self.encoder.encode_sequence(keys, mouse, np.zeros(len(names), np.uint8))
        return torch.from_numpy(rows), torch.from_numpy(np.stack(poses)).to(start)

    def press_actions(self, frames: int, start: int, length: int) -> torch.Tensor:
        """``(frames, A)``: a still player's per-frame conditioning over ``frames`` generated
        frames in which ``distill.still_press_key`` is held for ``length`` frames from frame
        ``start`` (nothing else pressed, the mouse still, nothing held before), as the encoder
        makes it for the engine (the press edge on its first frame; the engine takes the row
        before from the context, so a context that ends with the key held gives it a hold there,
        which a still start never does). ``WorldsimError`` without an encoder (the stage checks
        the key before any slow work)."""
        if self.encoder is None:
            raise WorldsimError("a still player's press needs the action encoder (encoder)")
        names = self.encoder.key_names
        keys = np.zeros((frames, len(names)), np.uint8)
        keys[start : start + length, names.index(self.dc.still_press_key)] = 1
        rows = self.encoder.encode_sequence(keys, np.zeros((frames, 2), np.float32), np.zeros(len(names), np.uint8))
        return torch.from_numpy(rows)

    def rollout(
        self, batch: Batch, plan: RolloutPlan | list[int], generator: torch.Generator | None
    ) -> tuple[torch.Tensor, ChunkRollout]:
        """The student's own rollout after the batch's true context (a list: the window's exit
        steps, nothing before it) -> generated latents ``(B, (free + M) * k, C, h, w)``, the free
        chunks first, and the rollout (its final state). Gradient flows where the caller enables
        it, through the window's exit passes only."""
        plan = plan if isinstance(plan, RolloutPlan) else RolloutPlan(list(plan))
        n0 = self.cond.context_chunks * self.k
        actions, c2w, ray_ref = self.inputs(batch, plan)
        frames = torch.arange(n0, device=batch.x0.device)
        gen = ChunkRollout(
            self.nets.generator,
            self.sampler,
            self.cond,
            self.intrinsics,
            self.ck.frame_size,
            "cached",
            memory_chunks=int(plan.memory or plan.clip_memory),
            memory_reuse=True,  # as the engine plays (MemoryConfig.reuse)
            memory_grad=bool(self.nets.generator.memory_parameters()),  # so that the embedding and adapter learn
        )
        context = History(self.context(batch, plan), actions[:, :n0], c2w[:, :n0], ray_ref[:, :n0], frames)
        gen.restore(context, None, generator)
        retrieved = None if plan.memory_own else self.memory(batch, plan)
        out: list[torch.Tensor] = []
        exits = [None] * plan.free + list(plan.exits)
        for j, e in enumerate(exits):
            s = n0 + j * self.k
            if plan.memory_own and j == 1:  # the bank holds the first chunk once it is made
                retrieved = self.memory(batch, plan, out[0])
            mem = retrieved if plan.reads_memory(j, self.k) else None
            with torch.set_grad_enabled(torch.is_grad_enabled() and e is not None):
                out.append(
                    gen.step(actions[:, s : s + self.k], c2w[:, s : s + self.k], generator, exit_step=e, memory=mem)
                )
        return torch.cat(out, 1), gen

    def memory(
        self, batch: Batch, plan: RolloutPlan, generated: torch.Tensor | None = None
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor] | None:
        """What a ``plan`` with ``memory`` retrieves for its chunks from ``memory_from`` on: the last
        true context chunk ``(latents (B, k, C, h, w), actions (B, k, A), c2w (B, k, 4, 4))``, the
        view of the pose a still player holds; None without ``memory``. The play-time bank gives
        a still start its first chunk once that chunk has left the window, while the window still
        shows the same view (``MemoryConfig``: ``keep="first"``, ``discount_window`` off); from
        the second chunk on, as here. After a moving context it would bring the held view back
        only once the last context chunk, or an earlier chunk of the place, is older than the
        window: for those clips this is an approximation (a still start's view, at the held pose).
        A turning player's is the same view, which its turn leaves (at play time the bank drops
        it once its overlap with the view falls below ``MemoryConfig.min_score``; here every
        chunk after the first reads it, overlapping or not).
        A ``revisit`` plan's: the clip's first chunk, the earlier view (:func:`revisit_clips`); a
        ``memory_clip`` plan's: the clip's first chunk (:func:`memory_clips`).
        A ``memory_own`` plan's: its own first generated chunk, ``generated (B, >= k, C, h, w)``
        (the rollout's output, detached: the bank holds clean latents), with the inputs and
        poses the rollout gave it."""
        if plan.memory and plan.memory_own:
            if generated is None:
                raise ValueError("a memory_own plan retrieves its own first chunk: pass the rollout's output")
            n0 = self.cond.context_chunks * self.k
            actions, c2w, _ = self.inputs(batch, plan)
            sl = slice(n0, n0 + self.k)
            return generated[:, : self.k].detach(), actions[:, sl], c2w[:, sl]
        if plan.clip_memory:
            sl = slice(0, self.k)
            return batch.x0[:, sl], batch.actions[:, sl], batch.c2w[:, sl]
        if not plan.memory:
            return None
        end = self._start(batch, plan) + self.cond.context_chunks * self.k  # the true context's end
        sl = slice(end - self.k, end)
        return batch.x0[:, sl], batch.actions[:, sl], batch.c2w[:, sl]

    def _score_memory(
        self,
        batch: Batch,
        plan: RolloutPlan,
        ray_ref: torch.Tensor,
        g: torch.Generator,
        generated: torch.Tensor | None = None,
    ) -> ScoreMemory | None:
        """The retrieved chunk of a ``plan`` with ``memory`` as the scores read it, beside the
        ``w + M`` chunks they read (``ray_ref (B, (w + M) * k, 4, 4)``: those chunks' references):
        read by the chunks the rollout gave it to (:meth:`RolloutPlan.reads_memory`),
        noised to the context level with one draw from ``g`` as the rollout's kept pass was;
        ``generated``: the rollout's output (a ``memory_own`` plan's retrieved chunk)."""
        retrieved = self.memory(batch, plan, generated)
        if retrieved is None:
            return None
        latents, actions, c2w = retrieved
        w, k, cs = self.cond.context_chunks, self.k, self.sampler.context_sigma
        readers = [i for i in range(w + len(plan.exits)) if plan.reads_memory(plan.free + i - w, k)]
        if not readers:  # one window chunk and no free chunk: nothing the scores read had it
            return None
        if cs > 0:
            noise = torch.randn(latents.shape, generator=g, dtype=latents.dtype).to(latents.device)
            latents = (1 - cs) * latents + cs * noise
        refs = [ray_ref[:, i * k : i * k + 1].expand(-1, k, 4, 4) for i in readers]
        plucker = torch.cat([self.rays.relative_to(c2w, ref, latents.dtype) for ref in refs], 1)
        return ScoreMemory(latents, actions, readers, plucker)

    def _levels(self, b: int, m: int, g: torch.Generator, device: torch.device) -> torch.Tensor:
        """``(B, M * k)``: one noise level per generated chunk, uniform then shifted like the
        teacher's sampler (the scores' levels; the student's own shift, ``distill.student_shift``,
        places its steps, not these)."""
        lo, hi = self.dc.dmd_sigma_min, self.dc.dmd_sigma_max
        u = lo + (hi - lo) * torch.rand(b, m, generator=g, dtype=torch.float64)
        return shift_sigma(u, self.ck.sampler.shift).float().repeat_interleave(self.k, 1).to(device)

    def exit_steps(self, g: torch.Generator) -> list[int]:
        """One random exit step per generated chunk (Self-Forcing; the same on every rank)."""
        return torch.randint(self.sampler.num_steps, (self.dc.rollout_chunks,), generator=g).tolist()

    def plan(self, g: torch.Generator) -> RolloutPlan:
        """This iteration's :class:`RolloutPlan` from ``g`` (seeded alike on every rank): the exit
        steps, then, when the options are on, whether the player stands still and the number of
        free chunks (uniform up to ``idle_chunks`` or ``free_chunks``), whether a still player
        turns (at a rate uniform in ``(0, still_turn_deg_per_s]``, either way with equal odds),
        and if not, whether it reads memory and whether it presses (a turning one, whether it
        reads memory, and which chunk, with ``distill.still_turn_memory``); a recorded rollout, whether it
        is a revisit (``distill.revisit_free_chunks`` free chunks then), and if not, whether it
        reads a memory clip (as many free chunks)."""
        exits = self.exit_steps(g)
        still = self.dc.idle_prob > 0 and torch.rand(1, generator=g).item() < self.dc.idle_prob
        most = self.dc.idle_chunks if still else self.dc.free_chunks
        free = int(torch.randint(most + 1, (1,), generator=g)) if most > 0 else 0
        turn = 0.0
        p = self.dc.still_turn_prob
        if still and p > 0 and torch.rand(1, generator=g).item() < p:  # no draw when off: old runs replay
            u = torch.rand(2, generator=g).tolist()
            turn = self.dc.still_turn_deg_per_s * (1.0 - u[0]) * (1.0 if u[1] < 0.5 else -1.0)
        still_only = still and not turn  # a turning player does not press, and reads memory only with still_turn_memory
        turn_memory = self.dc.still_turn_memory if turn else "off"
        reader = still_only or turn_memory != "off"  # no draw when off: old runs replay
        p = self.dc.still_memory_prob
        memory = reader and p > 0 and torch.rand(1, generator=g).item() < p
        own = memory and turn_memory == "own"  # its own first chunk, once older than the window
        memory_from = self.cond.context_chunks + 1 if own else 1
        press = None
        p = self.dc.still_press_prob
        if still_only and p > 0 and torch.rand(1, generator=g).item() < p:
            n, k = self.dc.still_press_frames, self.k
            lo, hi = max(0, free * k - n), (free + len(exits)) * k  # the window shows the press, its hold or after
            start = int(torch.randint(lo, hi, (1,), generator=g))
            press = (start, int(torch.randint(1, n + 1, (1,), generator=g)))
        revisit = False
        p = self.dc.revisit_prob
        if not still and p > 0 and torch.rand(1, generator=g).item() < p:  # no draw when off: old runs replay
            revisit, free = True, self.dc.revisit_free_chunks
        memory_clip = False
        p = self.dc.recorded_memory_prob
        if not still and not revisit and p > 0 and torch.rand(1, generator=g).item() < p:  # no draw when off
            memory_clip, free = True, self.dc.revisit_free_chunks
        return RolloutPlan(exits, free, still, memory, press, turn, revisit, memory_from, own, memory_clip)

    def __call__(
        self,
        batch: Batch,
        generator_step: bool,
        plan: RolloutPlan | list[int],
        g: torch.Generator,
        g_dev: torch.Generator,
    ) -> DMDStep:
        """One iteration on ``batch`` (on the networks' device) as ``plan`` says (a list: the
        window's exit steps); ``generator_step``: the student takes the DMD step (and the
        regressions that come with it), which a revisit or memory clip plan's regression does on
        every iteration. ``g`` (CPU) draws the noise levels and noise; ``g_dev`` the rollout's noise."""
        plan = plan if isinstance(plan, RolloutPlan) else RolloutPlan(list(plan))
        m, w = len(plan.exits), self.cond.context_chunks
        regress_revisit = plan.clip_memory and self.dc.revisit_regression > 0  # the student steps on every one
        with torch.set_grad_enabled(generator_step or regress_revisit):
            out, _ = self.rollout(batch, plan, g_dev)
        x = out[:, plan.free * self.k :]
        # What the scores read: the window after the w chunks before it, which a rolling cache of w
        # chunks holds. (After free chunks, those w start the scores' pass, as the teacher's
        # training clips start: their keys are not the ones computed with the chunks before them.)
        keep = (w + m) * self.k
        actions, c2w, ray_ref = (a[:, -keep:] for a in self.inputs(batch, plan))
        clean = torch.cat([self.context(batch, plan), out.detach()], 1)[:, -keep:]
        cs = self.sampler.context_sigma
        b, dev = x.shape[0], x.device
        if cs > 0:
            clean = (1 - cs) * clean + cs * torch.randn(clean.shape, generator=g, dtype=clean.dtype).to(dev)
        rays = self.rays.relative_to(c2w, ray_ref, clean.dtype)
        memory = self._score_memory(batch, plan, ray_ref, g, out)

        def noised(levels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
            eps = torch.randn(x.shape, generator=g, dtype=x.dtype).to(dev)
            s = levels[:, :, None, None, None]
            return (1 - s) * x.detach() + s * eps, eps

        def score(net: WorldModel, xt: torch.Tensor, levels: torch.Tensor, guidance: float = 1.0) -> torch.Tensor:
            return rollout_scores(net, clean, xt, levels, actions, rays, w, self.null, guidance, cs, memory)

        loss_g = None
        if generator_step:
            levels = self._levels(b, m, g, dev)
            xt, _ = noised(levels)
            s = levels[:, :, None, None, None]
            with torch.no_grad():
                real = score(self.teacher, xt, levels, self.dc.real_guidance)
                fake = score(self.nets.fake_score, xt, levels)
            loss_g = dmd_loss(x, xt - s * real, xt - s * fake)
        still = recorded = None
        held = plan.still and plan.press is None and not plan.turn_deg_per_s
        if generator_step and held and self.dc.still_regression > 0:
            # The world does not change while nothing is pressed and the pose is held: every frame
            # of the window is, in truth, the last context frame.
            truth = self.context(batch, plan)[:, -1:].expand_as(x)
            still = F.mse_loss(x.float(), truth.float())
        # A recorded rollout ends where the clip ends (``_start``): the window's truth is the
        # clip's last frames, whose inputs and poses it followed.
        truth = batch.x0[:, -x.shape[1] :]
        if generator_step and not plan.still and not plan.clip_memory and self.dc.recorded_regression > 0:
            recorded = F.mse_loss(x.float(), truth.float())
        revisit = None
        if regress_revisit:  # over the frames the batch weighs: those a revisit's chunk shows, a memory clip's all
            shown = batch.weight[:, -x.shape[1] :].to(x.device)
            err = (x.float() - truth.float()).square().mean(dim=(2, 3, 4))
            revisit = (shown * err).sum() / shown.sum().clamp_min(1.0)
        levels = self._levels(b, m, g, dev)
        xt, eps = noised(levels)
        v = score(self.nets.fake_score, xt, levels)
        loss_f = F.mse_loss(v.float(), (eps - x.detach()).float())
        dc = self.dc
        return DMDStep(
            x,
            loss_g,
            loss_f,
            still,
            dc.still_regression,
            recorded,
            dc.recorded_regression,
            revisit,
            dc.revisit_regression,
        )


STILL_PREVIEW_CHUNKS = 64  # chunks a still player stands in the previews


@torch.no_grad()
def still_preview(
    model: WorldModel,
    codec: Codec,
    val: EncodedSplit,
    cond: ConditioningConfig,
    sampler: SamplerConfig,
    idle_action: torch.Tensor,
    seed: int,
) -> dict[str, float]:
    """A still player on the preview episodes (``preview_episodes``): after each one's true
    context, ``STILL_PREVIEW_CHUNKS`` chunks of the idle input ``idle_action (A,)`` at the last
    context pose, through the engine's rollout -> ``still_psnr_db``: the PSNR (dB) of the last
    chunk's decoded frames to the last context frame, which is the truth (the world does not
    change); ``{}`` when no episode holds a context."""
    k = model.cfg.chunk_frames
    n_ctx, n_gen = cond.context_chunks * k, STILL_PREVIEW_CHUNKS * k
    eps = preview_episodes(val, n_ctx)
    if not eps:
        return {}
    lat, act, c2w = preview_inputs(model, val, cond, eps, n_ctx)
    gen = ChunkRollout(model, sampler, cond, val.intrinsics, val.frame_size, default_policy(cond))
    g = torch.Generator(device=lat.device).manual_seed(seed)
    gen.reset(lat, act, c2w, g)
    still_act = idle_action.to(act).expand(len(eps), n_gen, -1)
    z = gen.rollout(still_act, c2w[:, -1:].expand(len(eps), n_gen, 4, 4), g)[:, -k:]
    frames = preview_frames(model, codec, cond, z)
    truth = [np.repeat(val.frames(e, n_ctx - 1, n_ctx), k, 0) for e in eps]
    return {"still_psnr_db": float(np.mean([psnr_db(f, t) for f, t in zip(frames, truth, strict=True)]))}


def _check(dc: DistillConfig) -> None:
    if dc.rollout_chunks < 1 or dc.generator_every < 1 or dc.student_steps < 1:
        raise WorldsimError(
            f"distill.rollout_chunks, generator_every and student_steps must be >= 1, got "
            f"{dc.rollout_chunks}, {dc.generator_every}, {dc.student_steps}"
        )
    if not 0.0 < dc.dmd_sigma_min < dc.dmd_sigma_max < 1.0:
        raise WorldsimError(
            f"distill.dmd_sigma_min and dmd_sigma_max must satisfy 0 < min < max < 1, got "
            f"{dc.dmd_sigma_min} and {dc.dmd_sigma_max}"
        )
    if min(dc.free_chunks, dc.idle_chunks) < 0 or not 0.0 <= dc.idle_prob <= 1.0 or not 0.0 <= dc.context_sigma < 1.0:
        raise WorldsimError(
            f"distill.free_chunks and idle_chunks must be >= 0, idle_prob in [0, 1] and context_sigma in [0, 1), "
            f"got {dc.free_chunks}, {dc.idle_chunks}, {dc.idle_prob}, {dc.context_sigma}"
        )
    if dc.still_regression < 0 or (dc.still_regression > 0 and dc.idle_prob == 0):
        raise WorldsimError(
            f"distill.still_regression must be >= 0, and needs still rollouts (distill.idle_prob > 0), got "
            f"{dc.still_regression} with idle_prob {dc.idle_prob}"
        )
    if dc.recorded_regression < 0 or (dc.recorded_regression > 0 and dc.idle_prob == 1):
        raise WorldsimError(
            f"distill.recorded_regression must be >= 0, and needs recorded rollouts (distill.idle_prob < 1), got "
            f"{dc.recorded_regression} with idle_prob {dc.idle_prob}"
        )
    if dc.fake_lr_scale <= 0 or dc.memory_embedding_lr_scale <= 0 or dc.real_guidance <= 0 or not 0.0 <= dc.beta1 < 1.0:
        raise WorldsimError(
            f"distill.fake_lr_scale, memory_embedding_lr_scale and real_guidance must be > 0 and beta1 in [0, 1), "
            f"got {dc.fake_lr_scale}, {dc.memory_embedding_lr_scale}, {dc.real_guidance}, {dc.beta1}"
        )
    if dc.memory_adapter_rank < 0 or dc.memory_adapter_lr_scale <= 0:
        raise WorldsimError(
            f"distill.memory_adapter_rank must be >= 0 and memory_adapter_lr_scale > 0, "
            f"got {dc.memory_adapter_rank}, {dc.memory_adapter_lr_scale}"
        )
    if not 0.0 <= dc.still_memory_prob <= 1.0 or (dc.still_memory_prob > 0 and dc.idle_prob == 0):
        raise WorldsimError(
            f"distill.still_memory_prob must be in [0, 1], and needs still rollouts (distill.idle_prob > 0), got "
            f"{dc.still_memory_prob} with idle_prob {dc.idle_prob}"
        )
    if (
        not 0.0 <= dc.still_press_prob <= 1.0
        or dc.still_press_frames < 1
        or (dc.still_press_prob > 0 and dc.idle_prob == 0)
    ):
        raise WorldsimError(
            f"distill.still_press_prob must be in [0, 1] and still_press_frames >= 1, and presses need still "
            f"rollouts (distill.idle_prob > 0), got {dc.still_press_prob}, {dc.still_press_frames} with idle_prob "
            f"{dc.idle_prob}"
        )
    if dc.still_press_prob > 0 and dc.still_press_key in MOVE_KEYS:
        raise WorldsimError(
            f"distill.still_press_key must not move the camera (a still player holds the pose), got "
            f"{dc.still_press_key!r}"
        )
    state_key = MemoryConfig().state_key
    if dc.still_press_prob > 0 and dc.still_memory_prob > 0 and dc.still_press_key != state_key:
        raise WorldsimError(
            f"distill.still_press_key with still_memory_prob must be the memory bank's state key {state_key!r} "
            f"(its press stops retrieval), got {dc.still_press_key!r}"
        )
    if (
        not 0.0 <= dc.still_turn_prob <= 1.0
        or dc.still_turn_deg_per_s <= 0
        or (dc.still_turn_prob > 0 and dc.idle_prob == 0)
    ):
        raise WorldsimError(
            f"distill.still_turn_prob must be in [0, 1] and still_turn_deg_per_s > 0, and turns need still "
            f"rollouts (distill.idle_prob > 0), got {dc.still_turn_prob}, {dc.still_turn_deg_per_s} with idle_prob "
            f"{dc.idle_prob}"
        )
    if dc.still_turn_memory not in TURN_MEMORY:
        raise WorldsimError(
            f"distill.still_turn_memory must be one of {', '.join(TURN_MEMORY)}, got {dc.still_turn_memory!r}"
        )
    if (
        not 0.0 <= dc.revisit_prob <= 1.0
        or dc.revisit_regression < 0
        or dc.revisit_free_chunks < 0
        or (dc.revisit_prob > 0 and dc.idle_prob == 1)
    ):
        raise WorldsimError(
            f"distill.revisit_prob must be in [0, 1], revisit_regression and revisit_free_chunks >= 0, and "
            f"revisits are recorded rollouts (distill.idle_prob < 1), got {dc.revisit_prob}, "
            f"{dc.revisit_regression}, {dc.revisit_free_chunks} with idle_prob {dc.idle_prob}"
        )
    if not 0.0 <= dc.recorded_memory_prob <= 1.0 or (dc.recorded_memory_prob > 0 and dc.idle_prob == 1):
        raise WorldsimError(
            f"distill.recorded_memory_prob must be in [0, 1], and memory clips are recorded rollouts "
            f"(distill.idle_prob < 1), got {dc.recorded_memory_prob} with idle_prob {dc.idle_prob}"
        )
    if dc.student_shift is not None and dc.student_shift <= 0:
        raise WorldsimError(f"distill.student_shift must be > 0 (or null: the teacher's), got {dc.student_shift}")


def clip_config(cfg: TrainConfig, cond: ConditioningConfig, chunks: int) -> TeacherConfig:
    """The clip sampler's settings for the stage's clips of ``chunks`` chunks: ``cfg.teacher``'s
    clip mixing (focus clips), the teacher's camera conditioning ``cond``, and none of the
    teacher stage's training-only changes (no retrieved chunk, no action or camera dropout, every
    frame weighing 1)."""
    return dataclasses.replace(
        cfg.teacher,
        context_chunks=chunks - 1,
        camera_reference=cond.camera_reference,
        translation_scale_m=cond.translation_scale_m,
        memory_prob=0.0,
        action_drop=0.0,
        camera_drop=0.0,
        dark_weight=1.0,
    )


def revisit_clips(split: EncodedSplit, ck: CheckpointConfig, cfg: TrainConfig, null: torch.Tensor) -> ClipSampler:
    """The clips of the revisit rollouts (``distill.revisit_prob``) in ``split``: the true context,
    the free chunks and the DMD window (``context_chunks + revisit_free_chunks + rollout_chunks``
    chunks), after a first chunk that is the earlier view the window returns to. A clip qualifies
    when a chunk of the episode ending before it covers at least ``teacher.revisit_min`` of the
    window's last view while no chunk of the true context or the free chunks covers
    ``teacher.revisit_context_max`` of it (the play-time bank's
    coverage, ``worldsim.memory.bank``); its first chunk is then the bank's best earlier chunk
    for that view (coverage less the distance term: the one play would bring back, which may be
    a nearer one covering less than ``revisit_min``). Each clip frame after the
    first chunk weighs 1 where that chunk covers at least ``revisit_min`` of its view, else 0
    (``Batch.weight``: the frames the revisit regression scores).
    ``WorldsimError`` when no clip of ``split`` is a revisit."""
    return _retrieval_clips(split, ck, cfg, null, revisit=True)


def memory_clips(split: EncodedSplit, ck: CheckpointConfig, cfg: TrainConfig, null: torch.Tensor) -> ClipSampler:
    """The clips of the memory clip rollouts (``distill.recorded_memory_prob``) in ``split``: as
    :func:`revisit_clips`'s, from every clip: its first chunk is the bank's best earlier chunk
    (one ending before the clip's first frame) for the window's last view (coverage less the
    distance term), whatever its coverage and whatever the true context shows (a clip at its
    episode's start keeps its own first chunk, older than the window too), and every frame
    weighs 1."""
    return _retrieval_clips(split, ck, cfg, null, revisit=False)


def _retrieval_clips(
    split: EncodedSplit, ck: CheckpointConfig, cfg: TrainConfig, null: torch.Tensor, revisit: bool
) -> ClipSampler:
    cond, dc = ck.conditioning, cfg.distill
    recent = cond.context_chunks + dc.revisit_free_chunks  # what the rollout reads before the window
    # the retrieved chunk, the recent chunks and the window: the retrieved chunk replaces the first
    clip = clip_config(cfg, cond, recent + dc.rollout_chunks + 1)
    tcfg = dataclasses.replace(
        clip, memory_prob=1.0, memory_top=1, memory_scoring="bank", revisit_prob=float(revisit), focus_prob=0.0
    )
    latent = ck.model.latent_shape()[1:]
    return ClipSampler(split, ck.chunk_frames, tcfg, cond, latent, null, recent_chunks=recent, weight_by_memory=revisit)


def train_student_dmd(cfg: TrainConfig) -> dict[str, float]:
    """Run the stage (module docstring) and export the EMA student to ``<out>/model``; returns the
    loop's summary. ``WorldsimError`` before any training for bad settings, no ``init_from``, a
    start that does not match the teacher, data the teacher cannot read, or a resumed run whose
    teacher changed."""
    d = init_distributed(cfg.device)
    dc = cfg.distill
    # Step 1: everything that can be wrong with the inputs, before any slow work.
    _check(dc)
    if not cfg.init_from:
        raise WorldsimError(
            "stage=student_dmd needs init_from: the student to improve (an exported student_ode model, "
            "or the teacher itself for DMD without the ODE stage)"
        )
    if dc.focus_window and (cfg.teacher.focus_prob == 0 or dc.idle_prob == 1):
        raise WorldsimError(
            f"distill.focus_window needs focus clips (teacher.focus_prob > 0) and recorded rollouts "
            f"(distill.idle_prob < 1), got focus_prob {cfg.teacher.focus_prob} and idle_prob {dc.idle_prob}"
        )
    ck, teacher, codec = load_teacher(dc.teacher)
    names = list(ck.action_encoder["key_names"])
    if dc.still_press_prob > 0 and dc.still_press_key not in names:
        raise WorldsimError(
            f"distill.still_press_key must be one of the teacher's keys {names}, got {dc.still_press_key!r}"
        )
    shift = ck.sampler.shift if dc.student_shift is None else dc.student_shift
    sampler = SamplerConfig(  # a cache_write that does not fit the schedule: one line, before any slow work
        num_steps=dc.student_steps,
        shift=shift,
        mode="few_step",
        context_sigma=dc.context_sigma,
        cache_write=dc.cache_write,
    )
    sha = teacher_sha256(dc.teacher)
    init = str(find_checkpoint(cfg.init_from))
    check_student_start(init, ck, dc.teacher)
    meta = input_meaning(open_datasets(cfg.data)).meta  # what an input does, every part alike
    size = tuple(meta.frame_size)
    if size != ck.frame_size:
        raise WorldsimError(f"{cfg.data} holds {size} frames, the teacher {dc.teacher} was trained on {ck.frame_size}")
    controller = meta.controller()
    if controller != ck.controller and not dc.data_controller:
        raise WorldsimError(
            f"{cfg.data} was recorded with {controller}, the teacher {dc.teacher} with {ck.controller}; "
            f"distill.data_controller=true distils a student for the data's"
        )
    recorded = dc.free_chunks + dc.rollout_chunks if dc.idle_prob < 1 else 1  # chunks that follow the clip's inputs
    clip = (ck.conditioning.context_chunks + recorded) * ck.chunk_frames
    require_clips(cfg.data, clip, f"a rollout of {recorded} recorded chunks after the true context")
    intr = ck.conditioning.intrinsics_matrix()
    if intr is None:
        raise WorldsimError(f"distill.teacher {dc.teacher} records no camera intrinsics (conditioning.intrinsics)")
    encoder = make_action_encoder(str(ck.action_encoder["name"]), list(ck.action_encoder["key_names"]))
    # The student's start and the fake score (the teacher's weights), then the loop over both.
    _, student, _ = load_checkpoint(init)
    if dc.memory_embedding:
        student.add_memory_embedding()
    if dc.memory_adapter_rank:
        try:
            student.add_memory_adapter(dc.memory_adapter_rank, torch.Generator().manual_seed(cfg.seed))
        except ValueError as e:
            raise WorldsimError(f"distill.memory_adapter_rank: init_from {init}: {e}") from None
    memory = dict(student.memory_parameters())
    if dc.memory_only:
        if not memory:
            raise WorldsimError(
                "distill.memory_only trains the student's memory embedding and adapter, and it has neither: "
                "set distill.memory_embedding=true or distill.memory_adapter_rank"
            )
        student.requires_grad_(False)  # no gradient, so AdamW leaves them (and the EMA's lerp) exactly as they are
        for p in memory.values():
            p.requires_grad_(True)
    nets = DMDNetworks(student, copy.deepcopy(teacher))
    teacher.requires_grad_(False).to(d.device)
    identity = {**cfg.identity(), "init_from": cfg.init_from, "teacher_sha256": sha}
    groups = [
        {"params": [p for n, p in student.named_parameters() if n not in memory], "lr_scale": 1.0},
        {"params": list(nets.fake_score.parameters()), "lr_scale": dc.fake_lr_scale},
    ]
    # last, so that a student without them keeps its optimiser state's layout
    if "memory_embed" in memory:
        groups.append({"params": [memory["memory_embed"]], "lr_scale": dc.memory_embedding_lr_scale})
    adapter = [p for n, p in memory.items() if n != "memory_embed"]
    if adapter:
        groups.append({"params": adapter, "lr_scale": dc.memory_adapter_lr_scale})
    metrics = ["dmd_loss", "fake_loss", "rollout_psnr_db", "copy_last_psnr_db"]
    if dc.still_regression > 0:  # runs from before the option keep their log's columns
        metrics += ["still_mse", "still_psnr_db"]
    if dc.recorded_regression > 0:
        metrics += ["recorded_mse"]
    if dc.revisit_prob > 0 or dc.recorded_memory_prob > 0:
        metrics += ["revisit_mse"]
    loop = TrainLoop(
        dataclasses.replace(cfg, init_from=""),
        nets,
        metrics,
        d,
        identity=identity,
        param_groups=groups,
        betas=(dc.beta1, 0.999),
        ddp=False,
    )
    # Step 2: latents of every episode (cached in <out>/latents), the clips the rollouts start from.
    cache = loop.out / "latents" if d.is_main else None
    codec.to(d.device)
    train = EncodedSplit.encode(cfg.data, codec, encoder, "encode train", cache)
    val = EncodedSplit.encode(cfg.val_data, codec, encoder, "encode val", cache) if cfg.val_data else None
    codec.cpu()
    cond = ck.conditioning
    tcfg = clip_config(cfg, cond, cond.context_chunks + recorded)  # true context, then the recorded rollout
    null = torch.from_numpy(encoder.null_action())
    keys = np.zeros((1, len(encoder.key_names)), np.uint8)
    idle = torch.from_numpy(encoder.encode_sequence(keys, np.zeros((1, 2), np.float32), keys[0])[0])
    window = dc.rollout_chunks * ck.chunk_frames if dc.focus_window else None  # where a focus clip's press lies
    clips = ClipSampler(train, ck.chunk_frames, tcfg, cond, ck.model.latent_shape()[1:], null, window)
    revisits = revisit_clips(train, ck, cfg, null) if dc.revisit_prob > 0 else None
    if revisits is not None and d.is_main:
        print(f"student_dmd: {len(revisits.revisit)} of {len(revisits)} clips of {cfg.data} are revisits")
    recalled = memory_clips(train, ck, cfg, null) if dc.recorded_memory_prob > 0 else None
    dmd = SelfForcingDMD(
        loop.module,
        teacher,
        ck,
        sampler,
        dc,
        intr.to(d.device),
        null.to(d.device),
        idle.to(d.device),
        encoder,
        controller,
    )
    amp = loop.autocast()
    last: dict[str, float] = {}

    def loss_at(step: int) -> tuple[torch.Tensor, int]:
        # Exit steps are the same on every rank (Self-Forcing synchronises them); levels and noise are not.
        seed = cfg.seed * 1_000_003 + step
        plan = dmd.plan(torch.Generator().manual_seed(seed))
        source = revisits if plan.revisit else recalled if plan.memory_clip else clips
        assert source is not None  # a plan draws revisits and memory clips only when their share is > 0
        b = source.batch(cfg.seed, step, cfg.batch_size, True)
        fields = {f.name: d.shard(getattr(b, f.name)).to(d.device) for f in dataclasses.fields(b)}
        batch = Batch(**fields)
        g = torch.Generator().manual_seed(seed * 64 + 1 + d.rank)
        g_dev = torch.Generator(device=d.device).manual_seed(seed * 64 + d.rank)
        # The fake score learns first: at step 0 it is still the teacher, and the DMD step would be 0.
        generator_step = (step + 1) % dc.generator_every == 0
        with amp:
            out = dmd(batch, generator_step, plan, g, g_dev)
        loss = out.fake_loss.float()
        last["fake_loss"] = loss.item()
        if out.generator_loss is not None:
            loss = loss + out.generator_loss.float()
        if out.dmd_loss is not None:
            last["dmd_loss"] = out.dmd_loss.item()
        if out.still_mse is not None:
            last["still_mse"] = out.still_mse.item()
        if out.recorded_mse is not None:
            last["recorded_mse"] = out.recorded_mse.item()
        if out.revisit_mse is not None:
            last["revisit_mse"] = out.revisit_mse.item()
        return loss, len(batch.x0)

    def periodic(step: int) -> dict[str, float]:
        out = dict(last) if step % cfg.log_every == 0 else {}
        if val is not None and d.is_main and (step % dc.preview_every == 0 or step == cfg.steps):
            student = loop.ema.generator if d.device.type == "cpu" else copy.deepcopy(loop.ema.generator).cpu()
            png = loop.out / "previews" / f"step_{step:06d}.png"
            out.update(rollout_preview(student, codec, val, cond, sampler, cfg.seed, png))
            if dc.still_regression > 0:
                out.update(still_preview(student, codec, val, cond, sampler, idle, cfg.seed))
        return out

    def export(step: int, metrics: dict[str, float]) -> None:
        provenance = {
            "stage": "student_dmd",
            "step": step,
            "teacher": str(dc.teacher),
            "teacher_sha256": sha,
            "init_from": cfg.init_from,
            "config": identity,
            "metrics": dict(metrics),
        }
        model = loop.ema.generator.cfg  # the teacher's, with the student's memory embedding and adapter
        student_ck = dataclasses.replace(ck, model=model, sampler=sampler, controller=controller, provenance=provenance)
        save_checkpoint(loop.out / "model", student_ck, loop.ema.generator, codec)

    return loop.run(loss_at, periodic, export)
