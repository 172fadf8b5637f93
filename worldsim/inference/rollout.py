"""The chunk-autoregressive rollout: the one loop that turns a clean context and per-frame inputs
into new chunks, used by the engine, the evaluation, the training previews and benchmarks.

Per chunk (``step``):

1. rays and temporal positions of ``[context | chunk]`` (``worldsim.inference.context``): the
   chunk's rays relative to its reference (the newest context frame; ``session``: the session's
   first pose), the context's as the conditioning prescribes;
2. the context's keys and values: recomputed into a fresh cache (``rebuild``: one clean pass per
   context chunk, shared by all denoising steps; HY-WorldPlay's choice, needed when the camera
   reference moves every chunk), or already in the session's cache (``cached``);
3. the denoising passes of the new chunk against that context (``worldsim.diffusion.sampler``);
4. ``cached`` only: one clean pass writes the finished chunk's keys and values into the cache
   (Self-Forcing's "context noise 0" re-run; re-noised to ``context_sigma`` when that is > 0),
   or, with the sampler's ``cache_write="last_step"``, the chunk's last denoising pass, which
   starts at ``context_sigma``, already did (``worldsim.diffusion.sampler``);
5. the clean chunk joins the history, which keeps the sink and the newest ``context_chunks``.

Work the next chunk does not need its inputs for can be done ahead, before those inputs are
polled (reference.md §6b; the engine's ``prepare``): with ``defer_cache_write`` the clean pass of
step 4 waits in :meth:`flush` until the next step (or a caller that reads the cache) asks for
it, so the new chunk's latents are returned as soon as they are denoised; :meth:`load_memory`
runs the retrieved chunks' passes for the next step. Both draw the sampler's context noise in the
same order as a step that does everything itself, so a session's numbers do not depend on
whether the work was done ahead.

Chunks retrieved from the memory bank (``step(memory=...)``) enter the context as the teacher
learnt to read them (``worldsim.train.teacher_data``: a retrieved chunk replaced the oldest
context chunk of half the training clips): in place of the oldest window chunks (the chunk sees
``context_chunks`` in all), at their temporal positions, just before the rest of the window,
with rays relative to the generated chunk's reference, each attending to itself alone, and
marked as retrieved for a network with a memory embedding (``worldsim.model.dit``).
``rebuild`` puts them in front of the context it recomputes; ``cached`` runs one clean pass per
retrieved chunk into the cache's memory slots before denoising and hides the replaced chunks for
this chunk's passes. They never join the history.

A retrieved chunk's keys and values depend on its latents, actions and poses, on the reference
its rays are taken against (the generated chunk's) and on its context noise; not on where it sits
in time, since it attends to itself alone and RoPE scores only position differences. So with
``memory_reuse`` (``cached``) a step given a chunk that the last step with memory was given too,
at the same reference (a player standing still in front of a place the bank brings back), runs
no pass for it: its kept keys and values (:class:`MemoryPass`) go back into the memory slot,
the keys turned by RoPE to the new positions (``worldsim.model.rope.shift_time``, always from the
positions they were computed at, so that rounding does not build up over a long stand), and no
context noise is drawn for it: the chunk keeps the noise it was first given, as a window chunk
keeps its own for as long as it stays in the window.

The rollout is gradient-agnostic: under ``torch.inference_mode`` it is the engine's loop; with
gradients enabled it is Self-Forcing's training rollout, where only the pass of the chunk's exit
step (``step(exit_step=...)``, the last step by default) carries gradient, and the context's
keys and values, the other denoising passes and the cache write run without it (the retrieved
chunks' passes too, unless ``memory_grad``). It is
batch-first (``B`` sessions at once) and device-agnostic (every tensor it makes is created on
the device of the context it was reset with; the generator must live there too).

Past the window the two policies differ by construction when the network has more than one
block: a cached chunk's keys were computed while it attended to chunks that have since left the
window, a rebuilt one's only to the chunks still in it. Each is pinned to a full block-causal
forward with the mask that describes it (tests/test_rollout.py).
"""

from __future__ import annotations

import time
from dataclasses import dataclass

import torch

from worldsim.core.errors import WorldsimError, unknown_name
from worldsim.diffusion.sampler import SamplerConfig, context_input, denoise_update, guided
from worldsim.inference.context import CameraRays, ConditioningConfig, History
from worldsim.inference.kv_cache import KVCache
from worldsim.model.dit import WorldModel
from worldsim.model.rope import shift_time

CONTEXT_POLICIES = ("rebuild", "cached")


@dataclass
class RolloutTimings:
    """Seconds spent on the last chunk, by stage (wall clock; CUDA work synchronised)."""

    context_s: float = 0.0  # the context's keys and values (rebuild) and retrieved chunks' (cached)
    denoise_s: float = 0.0  # the denoising passes of the new chunk
    # the clean pass that writes a chunk's keys and values (cached; when deferred, the last chunk's)
    cache_write_s: float = 0.0

    def __add__(self, other: RolloutTimings) -> RolloutTimings:
        return RolloutTimings(
            self.context_s + other.context_s, self.denoise_s + other.denoise_s, self.cache_write_s + other.cache_write_s
        )

    @property
    def model_s(self) -> float:
        """All three stages."""
        return self.context_s + self.denoise_s + self.cache_write_s


@dataclass(eq=False)  # compared by identity: is it one of the kept passes
class MemoryPass:
    """A retrieved chunk's clean pass (``cached``), kept for ``memory_reuse`` (module docstring):
    the chunk as it went in (``History`` of ``k`` frames: latents, actions, poses, the reference
    of its rays and the temporal positions it was computed at) and the keys (after RoPE at those
    positions) and values it wrote, ``(layers, B, H, L, hd)`` each."""

    chunk: History
    k: torch.Tensor
    v: torch.Tensor

    def serves(self, chunk: History) -> bool:
        """Whether this pass is ``chunk``'s, wherever ``chunk`` sits in time: the same latents,
        actions, poses and reference, so the same rays and hidden states from the same noise."""
        a = self.chunk
        pairs = ((a.latents, chunk.latents), (a.actions, chunk.actions), (a.c2w, chunk.c2w), (a.ray_ref, chunk.ray_ref))
        return all(x.shape == y.shape and torch.equal(x, y) for x, y in pairs)


def default_policy(cond: ConditioningConfig) -> str:
    """``cached`` where the conditioning keeps keys valid across chunks, else ``rebuild``."""
    return "cached" if cond.cacheable else "rebuild"


class ChunkRollout:
    """Generates chunk after chunk for ``B`` sessions; see the module docstring.

    ``intrinsics (3, 3)`` pixels of the decoded ``frame_size``; ``null_action (A,)`` the input
    classifier-free guidance compares against (required when ``sampler.guidance != 1``);
    ``memory_chunks`` the most retrieved chunks a step may be given (``cached``: the cache's
    memory slots); ``defer_cache_write`` (``cached``): a chunk's clean pass runs at the next
    :meth:`flush` (module docstring); ``memory_reuse`` (``cached``): a retrieved chunk the last
    step with memory had too, at the same reference, reuses that step's pass (module docstring;
    :attr:`memory_reused` counts them per step); ``memory_grad`` (``cached``, training): a
    retrieved chunk's pass carries gradient when the step does (a pass reused from an earlier
    step does not), so that a network learns what it writes for a retrieved chunk (its memory
    embedding, ``worldsim.model.dit``), where the context's passes run without. Raises
    ``WorldsimError`` for an unknown policy, ``cached`` with a conditioning whose keys go stale,
    or inputs of the wrong length.
    """

    def __init__(
        self,
        model: WorldModel,
        sampler: SamplerConfig,
        cond: ConditioningConfig,
        intrinsics: torch.Tensor,
        frame_size: tuple[int, int],
        policy: str = "rebuild",
        null_action: torch.Tensor | None = None,
        memory_chunks: int = 0,
        defer_cache_write: bool = False,
        memory_reuse: bool = False,
        memory_grad: bool = False,
    ):
        if policy not in CONTEXT_POLICIES:
            raise unknown_name("context policy", policy, CONTEXT_POLICIES)
        if policy == "cached" and not cond.cacheable:
            raise WorldsimError(
                f"context policy 'cached' needs a conditioning whose keys stay valid across chunks "
                f"(camera_reference 'chunk' or 'session'); this checkpoint's is "
                f"{cond.camera_reference!r}: use 'rebuild'"
            )
        if sampler.guidance != 1.0 and null_action is None:
            raise WorldsimError("classifier-free guidance needs the action encoder's null action")
        self.model, self.sampler, self.cond, self.policy = model, sampler, cond, policy
        self.k = model.cfg.chunk_frames
        self.rays = CameraRays(cond, intrinsics, frame_size, model.cfg.latent_shape()[1:])
        self.null_action = null_action
        self.memory_chunks = memory_chunks
        self.history: History | None = None
        self.cache: KVCache | None = None  # cached policy only
        self.timings = RolloutTimings()
        self.defer_cache_write = defer_cache_write
        self.memory_reuse = memory_reuse and policy == "cached"
        self.memory_grad = memory_grad
        # Work done ahead of the next step: the last chunk's cache write when deferred (clean
        # latents, actions, rays, positions), the retrieved chunks loaded for it with their
        # passes and how many of those were reused (None: "no memory" loaded), and the time both took.
        self._pending: tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor] | None = None
        self._loaded: tuple[History | None, list[MemoryPass], int] | None = None
        self._ahead = RolloutTimings()
        self.kept: list[MemoryPass] = []  # the passes of the last step with memory (memory_reuse)
        self.memory_reused = 0  # retrieved chunks of the last step whose pass was reused

    @property
    def context_frames(self) -> int:
        """Frames of the rolling window (the sink comes on top when the conditioning keeps one)."""
        return self.cond.context_chunks * self.k

    def _new_cache(self, window: int, sink: bool) -> KVCache:
        tokens = self.k * self.model.cfg.tokens_per_frame
        return KVCache(self.model.cfg.depth, tokens, window, sink, self.memory_chunks if self.policy == "cached" else 0)

    # -- session ----------------------------------------------------------------------------
    def reset(
        self,
        latents: torch.Tensor,
        actions: torch.Tensor,
        c2w: torch.Tensor,
        generator: torch.Generator | None = None,
    ) -> None:
        """Clean context ``latents (B, T0, C, h, w)``, ``actions (B, T0, A)``, ``c2w (B, T0, 4, 4)``;
        the newest whole chunks are kept (at most the window, plus the sink chunk when kept).
        ``cached`` computes the context's keys and values here, once, drawing the sampler's
        context noise (``context_sigma > 0``) from ``generator`` (None: torch's global RNG)."""
        t0 = latents.shape[1]
        if t0 < self.k:
            raise WorldsimError(f"context of {t0} frames is shorter than one {self.k}-frame chunk")
        keep = min(self.context_frames + self.k * self.cond.sink, t0 - t0 % self.k)
        dev = latents.device
        if self.cond.camera_reference == "session":  # the first kept frame, for every frame
            ref_idx = torch.full((keep,), t0 - keep, device=dev)
        else:  # each chunk's: the frame before it (a frame given before the kept ones counts), else its first
            starts = torch.arange(t0 - keep, t0, self.k, device=dev)
            ref_idx = (starts - 1).clamp_min(0).repeat_interleave(self.k)
        idx = torch.arange(keep, device=dev)
        hist = History(latents[:, -keep:], actions[:, -keep:], c2w[:, -keep:], c2w[:, ref_idx], idx)
        self.restore(hist, generator=generator)

    def restore(
        self,
        history: History,
        cache: KVCache | None = None,
        generator: torch.Generator | None = None,
        kept: list[MemoryPass] | None = None,
    ) -> None:
        """Continue a session from its history (a saved session); ``cached`` takes the saved
        ``cache`` as is, or recomputes it from the history when none is given (context noise from
        ``generator``, as in :meth:`reset`); ``kept`` the saved :attr:`kept` passes (none: the
        next retrieved chunks run their passes)."""
        self.history = history
        self._pending, self._loaded, self._ahead = None, None, RolloutTimings()
        self.kept, self.memory_reused = list(kept or []), 0
        if self.policy == "cached" and cache is None:
            with torch.no_grad():  # context keys and values never carry gradient
                cache = self._context_cache(history, generator=generator)
        self.cache = cache if self.policy == "cached" else None

    def _positions(self, ctx: History) -> tuple[torch.Tensor, torch.Tensor]:
        """Temporal positions of the context ``(n,)`` and of the new chunk ``(k,)``."""
        n, dev = ctx.num_frames, ctx.frame_idx.device
        if self.cond.camera_reference == "latest":  # compact: the context sits just before the chunk
            return torch.arange(n, device=dev), torch.arange(n, n + self.k, device=dev)
        nxt = int(ctx.frame_idx[-1]) + 1
        return ctx.frame_idx, torch.arange(nxt, nxt + self.k, device=dev)

    def _reference(self, ctx: History) -> torch.Tensor:
        """``(B, 4, 4)``: the pose the next chunk's rays are relative to (module docstring)."""
        return ctx.ray_ref[:, -1] if self.cond.camera_reference == "session" else ctx.c2w[:, -1]

    def _camera(self, ctx: History, c2w: torch.Tensor) -> torch.Tensor:
        """Rays of ``[context | chunk]`` ``(B, n + k, 6, h, w)`` in the context's dtype."""
        seq = torch.cat([ctx.c2w, c2w.to(ctx.c2w.dtype)], 1)
        ref = self._reference(ctx)
        if self.cond.camera_reference == "latest":
            return self.rays.relative_to_latest(seq, ref, ctx.latents.dtype)
        chunk_ref = ref.to(ctx.ray_ref.dtype)[:, None].expand(-1, c2w.shape[1], 4, 4)
        return self.rays.relative_to(seq, torch.cat([ctx.ray_ref, chunk_ref], 1), ctx.latents.dtype)

    def _retrieved(self, ctx: History, latents: torch.Tensor, actions: torch.Tensor, c2w: torch.Tensor) -> History:
        """Retrieved chunks ``latents (B, m, C, h, w)``, ``actions (B, m, A)``, ``c2w (B, m, 4, 4)``
        (``m`` whole chunks) as context frames: rays relative to the next chunk's reference,
        temporal positions just before the window chunks left in view (``latest``: compact, in
        front)."""
        m = latents.shape[1]
        if m % self.k or m // self.k > self.memory_chunks:
            raise WorldsimError(
                f"retrieved memory must be whole {self.k}-frame chunks, at most {self.memory_chunks}; got {m} frames"
            )
        recent, hidden = self._replaced(ctx, m)
        start = int(ctx.frame_idx[-recent]) + hidden  # the first window frame left in view
        idx = torch.arange(start - m, start, device=ctx.frame_idx.device)
        ref = self._reference(ctx).to(ctx.ray_ref.dtype)[:, None].expand(-1, m, 4, 4)
        dev, dtype = ctx.latents.device, ctx.latents.dtype
        return History(latents.to(dev, dtype), actions.to(dev, dtype), c2w.to(dev, ctx.c2w.dtype), ref, idx)

    def _replaced(self, ctx: History, m: int) -> tuple[int, int]:
        """Frames of ``ctx`` in the rolling window (the sink aside), and how many of the oldest of
        them ``m`` retrieved frames replace: the chunk sees ``context_chunks`` chunks in all."""
        recent = min(ctx.num_frames, self.context_frames)
        return recent, max(0, recent + m - self.context_frames)

    def _in_view(self, ctx: History, m: int) -> History:
        """``rebuild``: the context less its oldest window frames that ``m`` retrieved frames replace."""
        recent, hidden = self._replaced(ctx, m)
        keep = torch.cat(
            [torch.arange(ctx.num_frames - recent), torch.arange(ctx.num_frames - recent + hidden, ctx.num_frames)]
        )
        return ctx.select(keep)

    def flush(self, generator: torch.Generator | None = None) -> None:
        """Run the last chunk's deferred cache write (``defer_cache_write``; step 4), if it has not
        run yet; its context noise comes from ``generator`` (the one the steps use). A caller that
        reads :attr:`cache` flushes first; :meth:`step` and :meth:`load_memory` do it themselves."""
        if self._pending is None:
            return
        assert self.cache is not None and self.history is not None
        clean, actions, rays, pos = self._pending
        timer = _Timer(clean.device)
        self._write_chunk(self.cache, clean, actions, rays, pos, generator)
        self._pending = None  # only once written: a write that raised is still to do
        self._ahead.cache_write_s += timer.lap()

    def load_memory(
        self,
        memory: tuple[torch.Tensor, torch.Tensor, torch.Tensor] | None,
        generator: torch.Generator | None = None,
    ) -> None:
        """Make the chunks retrieved for the next step ready before its inputs come: ``memory``
        as :meth:`step` takes it (None: no memory). ``cached``: their clean passes into the
        cache's memory slots now (after the deferred cache write, so the context noise is drawn
        in a step's order); ``rebuild``: kept for the step's context pass, which needs the
        chunk's rays. The next :meth:`step` given ``memory=None`` uses them; a later call
        replaces them."""
        if self.history is None:
            raise WorldsimError("reset the rollout with a context before loading memory")
        self.flush(generator)
        ctx = self.history
        timer = _Timer(ctx.latents.device)
        mem = None if memory is None else self._retrieved(ctx, *memory)
        passes: list[MemoryPass] = []
        if self.policy == "cached":
            assert self.cache is not None
            with torch.set_grad_enabled(self.memory_grad and torch.is_grad_enabled()):
                passes = self._memory_passes(self.cache, mem, generator)
        self._loaded = (mem, passes, sum(p in self.kept for p in passes))
        self._ahead.context_s += timer.lap()

    def _write_chunk(
        self,
        cache: KVCache,
        clean: torch.Tensor,
        actions: torch.Tensor,
        rays: torch.Tensor,
        pos: torch.Tensor,
        generator: torch.Generator | None,
    ) -> None:
        """Step 4: the clean pass that writes a finished chunk's keys and values and commits them."""
        labels = torch.full(clean.shape[:2], self.sampler.context_sigma, dtype=actions.dtype, device=clean.device)
        with torch.no_grad():
            self.model.write_chunk(context_input(self.sampler, clean, generator), labels, actions, rays, pos, cache)
        cache.commit()

    def _memory_passes(
        self, cache: KVCache, mem: History | None, generator: torch.Generator | None
    ) -> list[MemoryPass]:
        """``cached``: the retrieved chunks' keys and values into the cache's memory slots (none:
        cleared), each from a kept pass that serves it (``memory_reuse``; a kept pass serves one
        chunk at most) or from its own clean pass. The chunks that run their pass draw their
        context noise in one call, as one tensor in order (without reuse, as before it existed)
        -> the passes (with ``memory_reuse``)."""
        if mem is None:
            cache.use_memory(0)
            return []
        n = mem.num_frames // self.k
        cache.use_memory(n)
        chunks = [mem.select(slice(j * self.k, (j + 1) * self.k)) for j in range(n)]
        kept: list[MemoryPass | None] = []
        for chunk in chunks:
            free = [p for p in self.kept if self.memory_reuse and not any(p is q for q in kept)]
            kept.append(next((p for p in free if p.serves(chunk)), None))
        run = [j for j in range(n) if kept[j] is None]
        b, dtype, dev = mem.latents.shape[0], mem.latents.dtype, mem.latents.device
        if run:  # rays and noise of the chunks that run their pass, each drawn as one tensor
            frames = torch.cat([torch.arange(j * self.k, (j + 1) * self.k) for j in run]).to(dev)
            todo = mem.select(frames)
            rays = self.rays.relative_to(todo.c2w, todo.ray_ref, dtype)
            x = context_input(self.sampler, todo.latents, generator)
        labels = torch.full((b, self.k), self.sampler.context_sigma, dtype=dtype, device=dev)
        passes: list[MemoryPass] = []
        for j, chunk in enumerate(chunks):
            slot, reused = cache.memory_slot(j), kept[j]
            if reused is not None:  # the same pass, moved in time
                slot.fill(shift_time(reused.k, int(chunk.frame_idx[0] - reused.chunk.frame_idx[0])), reused.v)
                passes.append(reused)
                continue
            sl = slice(run.index(j) * self.k, (run.index(j) + 1) * self.k)
            self.model.write_chunk(x[:, sl], labels, chunk.actions, rays[:, sl], chunk.frame_idx, slot, memory=True)
            if self.memory_reuse:  # a copy of what went in: the caller's tensors may change
                passes.append(MemoryPass(chunk.clone(), *slot.read()))
        return passes

    def _context_cache(
        self,
        ctx: History,
        rays: torch.Tensor | None = None,
        generator: torch.Generator | None = None,
        memory_frames: int = 0,
    ) -> KVCache:
        """A cache holding the context's keys and values, written one chunk at a time in order
        (each chunk attends to those before it), from the context input the sampler prescribes.
        ``rays (B, >= n, 6, h, w)``: the context's rays when the caller has them (``latest``
        normalises translations over context and chunk together). ``memory_frames``: how many of
        the context's first frames are retrieved chunks (``rebuild``), marked as such."""
        n_chunks = ctx.num_frames // self.k
        cached = self.policy == "cached"
        # rebuild: exactly n_chunks + 1 slots, so each pass attends to the whole buffer.
        cache = self._new_cache(self.cond.context_chunks if cached else n_chunks, self.cond.sink and cached)
        b, dtype = ctx.latents.shape[0], ctx.latents.dtype
        if rays is None:
            rays = self._camera(ctx, ctx.c2w[:, :0])
        pos, _ = self._positions(ctx)
        labels = torch.full((b, self.k), self.sampler.context_sigma, dtype=dtype, device=ctx.latents.device)
        x = context_input(self.sampler, ctx.latents, generator)
        for s in range(0, ctx.num_frames, self.k):
            sl = slice(s, s + self.k)
            self.model.write_chunk(
                x[:, sl], labels, ctx.actions[:, sl], rays[:, sl], pos[sl], cache, memory=s < memory_frames
            )
            cache.commit()
        return cache

    # -- one chunk --------------------------------------------------------------------------
    def step(
        self,
        actions: torch.Tensor,
        c2w: torch.Tensor,
        generator: torch.Generator | None = None,
        trajectory: list[torch.Tensor] | None = None,
        exit_step: int | None = None,
        memory: tuple[torch.Tensor, torch.Tensor, torch.Tensor] | None = None,
    ) -> torch.Tensor:
        """``actions (B, k, A)`` encoded, ``c2w (B, k, 4, 4)`` -> the clean chunk's normalised
        latents ``(B, k, C, h, w)``; per-stage seconds in :attr:`timings`. ``trajectory``, when
        given, receives the chunk's state at every noise level the sampler visits, ``num_steps
        + 1`` tensors ``(B, k, C, h, w)`` from the initial noise to the clean chunk (the causal
        ODE pairs of the student stages). ``exit_step`` in ``[0, num_steps)`` stops denoising
        after that step and returns its clean estimate (Self-Forcing's random exit; the last
        step by default). With gradients enabled, only that step's pass carries them; the chunk
        joins the history and the cache without them. ``memory``: chunks retrieved for this one,
        ``(latents (B, m, C, h, w), actions (B, m, A), c2w (B, m, 4, 4))``, whole chunks, at most
        ``memory_chunks`` (module docstring); None: those :meth:`load_memory` made ready since
        the last step, if any, else none. A deferred cache write still pending runs first."""
        if self.history is None:
            raise WorldsimError("reset the rollout with a context before stepping")
        if actions.shape[1] != self.k or c2w.shape[1] != self.k:
            raise WorldsimError(f"a step takes exactly {self.k} frames of input, got {actions.shape[1]}")
        last = self.sampler.num_steps - 1 if exit_step is None else exit_step
        if not 0 <= last < self.sampler.num_steps:
            raise WorldsimError(f"exit_step must be in [0, {self.sampler.num_steps}), got {exit_step}")
        if memory is not None or self._loaded is None:  # else loaded ahead (cached: passes done)
            self.load_memory(memory, generator)
        assert self._loaded is not None
        (mem, passes, self.memory_reused), self._loaded = self._loaded, None
        if mem is not None and self.memory_reuse:
            self.kept = passes
        ctx = self.history
        dev, dtype = ctx.latents.device, ctx.latents.dtype
        actions = actions.to(device=dev, dtype=dtype)
        c2w = c2w.to(dev)
        timer = _Timer(dev)
        # Step 1: rays of [context | chunk] and the chunk's temporal positions.
        _, pos = self._positions(ctx)
        # Step 2: the context's keys and values (rebuild; the retrieved chunks' were loaded above).
        if self.policy == "rebuild":
            full = ctx if mem is None else mem.concat(self._in_view(ctx, mem.num_frames))
            _, pos = self._positions(full)  # latest: compact positions count the retrieved frames
            all_rays = self._camera(full, c2w)
            rays = all_rays[:, full.num_frames :]
            with torch.no_grad():
                cache = self._context_cache(full, all_rays, generator, 0 if mem is None else mem.num_frames)
        else:  # the context's rays are in its cached keys; the chunk's need only its reference
            assert self.cache is not None
            rays = self.rays.relative_to(c2w, self._reference(ctx), dtype)
            cache = self.cache
        context_s = timer.lap()
        # Step 3: denoise the new chunk against that context.
        shape = (ctx.latents.shape[0], self.k, *ctx.latents.shape[2:])
        x0 = self._denoise(cache, actions, rays, pos, shape, generator, trajectory, last)
        denoise_s = timer.lap()
        clean = x0.detach()
        # Step 4 (cached): the finished chunk's keys and values. With the sampler's cache_write
        # last_step, those its last denoising pass left in the scratch slot (an early exit has
        # none: its clean estimate takes the clean pass, re-noised to the level the last step
        # starts at); else the clean pass writes them, now or, deferred, at the next flush
        # (before anything else touches the cache).
        if self.policy == "cached" and self.sampler.cache_write == "last_step" and last == self.sampler.num_steps - 1:
            cache.commit()
        elif self.policy == "cached" and self.defer_cache_write:
            self._pending = (clean, actions.detach(), rays.detach(), pos)
        elif self.policy == "cached":
            self._write_chunk(cache, clean, actions.detach(), rays.detach(), pos, generator)
        write_s = timer.lap()
        # Step 5: the chunk joins the history; the window slides.
        self.history = ctx.append(clean, actions, c2w, self._reference(ctx)).window(
            self.k, self.cond.context_chunks, self.cond.sink
        )
        self.timings = self._ahead + RolloutTimings(context_s, denoise_s, write_s)
        self._ahead = RolloutTimings()
        return x0

    def _denoise(
        self,
        cache: KVCache,
        actions: torch.Tensor,  # (B, k, A)
        rays: torch.Tensor,  # (B, k, 6, h, w)
        pos: torch.Tensor,  # (k,)
        shape: tuple[int, ...],  # (B, k, C, h, w)
        generator: torch.Generator | None,
        trajectory: list[torch.Tensor] | None = None,
        exit_step: int | None = None,
    ) -> torch.Tensor:
        """The sampler's loop: network passes (twice each with guidance) up to ``exit_step``
        (the last by default) -> that step's x0; the state at each level is appended to
        ``trajectory`` when given (:meth:`step`). Only the exit step's pass may carry gradient."""
        cfg = self.sampler
        last = cfg.num_steps - 1 if exit_step is None else exit_step
        grad = torch.is_grad_enabled()
        x = torch.randn(shape, generator=generator, dtype=rays.dtype, device=rays.device)
        null = None if self.null_action is None else self.null_action.to(actions).expand_as(actions)
        sig = cfg.sigmas()
        x0 = x
        if trajectory is not None:
            trajectory.append(x)
        for i in range(last + 1):
            s = torch.full(shape[:2], sig[i], dtype=x.dtype, device=x.device)
            with torch.set_grad_enabled(grad and i == last):
                v = self.model.forward_chunk(x, s, actions, rays, pos, cache)
                if cfg.guidance != 1.0:
                    assert null is not None
                    v = guided(v, self.model.forward_chunk(x, s, null, rays, pos, cache), cfg.guidance)
                if i == last < cfg.num_steps - 1:  # an early exit: its clean estimate, no re-noising
                    x0 = x - sig[i] * v
                    break
                x, x0 = denoise_update(cfg, x, v, sig[i], sig[i + 1], generator)
            if trajectory is not None:
                trajectory.append(x0 if i == cfg.num_steps - 1 else x)
        return x0

    def rollout(
        self, actions: torch.Tensor, c2w: torch.Tensor, generator: torch.Generator | None = None
    ) -> torch.Tensor:
        """Whole chunks of inputs ``(B, T, A)``, ``(B, T, 4, 4)`` -> latents ``(B, T, C, h, w)``."""
        if actions.shape[1] % self.k:
            raise WorldsimError(f"a rollout of {actions.shape[1]} frames is not whole {self.k}-frame chunks")
        outs = [
            self.step(actions[:, s : s + self.k], c2w[:, s : s + self.k], generator)
            for s in range(0, actions.shape[1], self.k)
        ]
        return torch.cat(outs, 1)


class _Timer:
    """Wall-clock laps; waits for queued CUDA work so a lap holds the work done in it."""

    def __init__(self, device: torch.device):
        self.cuda = device.type == "cuda"
        self.t = self._now()

    def _now(self) -> float:
        if self.cuda:
            torch.cuda.synchronize()
        return time.perf_counter()

    def lap(self) -> float:
        now = self._now()
        dt, self.t = now - self.t, now
        return dt
