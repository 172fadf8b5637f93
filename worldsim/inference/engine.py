"""The engine: raw inputs in, generated frames out. No UI code, no worlds (design §3-5).

    engine = load_engine("assets/student_builtin_v11")
    engine.reset(frames, c2w, keys, mouse)        # ground-truth context, rollout order
    chunk = engine.step(keys, mouse)              # chunk_frames inputs -> a Chunk
    chunk.frames, chunk.c2w, chunk.timings        # (k, H, W, 3) uint8, (k, 4, 4), seconds by stage

It owns the codec, the world model, the rollout (``worldsim.inference.rollout``), the action
encoder and the camera controller. The controller turns each frame's input into its pose,
exactly as when the data was recorded, and the encoder turns it into the action vector; frame
``i`` of a chunk is conditioned on input ``i`` (the input that produced it). A session (context,
KV cache, pose, RNG, step count) can be saved and restored; a restored session continues
bit-for-bit on the same machine. Starting from a world or a dataset episode is the caller's
business (``envs.starts``): the engine takes frames, poses and inputs.

With ``memory`` on, the engine keeps the session's spatial memory bank
(``worldsim.memory.bank``): every clean chunk (the start's and each generated one) goes in
with its poses, first frame and state (the parity of the memory's ``state_key`` presses: day or
night in the built-in world; a place keeps its first chunk); before each chunk, the entries
that best cover its view, wholly older than the window, are retrieved and given to the rollout
(``step(memory=...)``; :mod:`worldsim.memory.bank` for the rules and their options), except,
when ``MemoryConfig.retrieve_across_press`` is False (the checkpoint's choice by default:
:func:`resolve_press_rule`), while the window or the chunk being made holds a press of the
state key.
The bank is part of a saved session.

**Ahead of the input** (reference.md §6b, design §10): :meth:`Engine.prepare` does the next
chunk's work that does not need its inputs, so that a player's input waits only for the work that
does (``ChunkTimings.critical_s``; with the ``cached`` policy, the denoising passes and the
decode). With ``cached`` it runs the last chunk's deferred cache write and, memory on, retrieves
for the poses the next chunk would have if the last input row went on (keys held, the same mouse
motion) and runs the retrieved chunks' context passes. :meth:`Engine.step` runs the cache write
when the caller has not prepared (then there is no guess: it has the real poses), retrieves for the
real poses (a few milliseconds) and, when that picks other entries than a guess, runs their passes
again inside the step from the same noise
(``Engine.memory_reloads`` counts those chunks). So a step's result is the same, bit for bit, as
if nothing had been done ahead, whether or when ``prepare`` was called (a prepare that raised
leaves the generator as it found it, so the step's retry is exact too); the generation process of
play.py calls it while the player's next input is still being polled. ``rebuild`` has nothing to
do ahead: its context pass, retrieved chunks included, needs the new chunk's rays.
"""

from __future__ import annotations

import hashlib
import json
import time
from collections.abc import Iterator
from contextlib import contextmanager, nullcontext
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np
import torch
from safetensors.torch import load_file, save

from worldsim.core.actions import make_action_encoder
from worldsim.core.atomic import staged_dir, write_bytes, write_text
from worldsim.core.controller import CameraController, CameraControllerConfig, CameraState
from worldsim.core.errors import WorldsimError
from worldsim.core.precision import resolve_bf16
from worldsim.core.threads import ThreadGovernor
from worldsim.core.validate import check_c2w, check_frames, check_keys, check_mouse
from worldsim.diffusion.sampler import SamplerConfig, SamplerOverrides
from worldsim.inference.checkpoint import CheckpointConfig, find_checkpoint, load_checkpoint
from worldsim.inference.compiled import check_compile, compile_decoder, compile_model
from worldsim.inference.context import History
from worldsim.inference.kv_cache import KVCache
from worldsim.inference.quantize import check_quantize, quantize_model
from worldsim.inference.rollout import ChunkRollout, MemoryPass, RolloutTimings, default_policy
from worldsim.memory.bank import MemoryBank, MemoryConfig, MemoryHit
from worldsim.model.codec import Codec, decode_for_display, frames_to_tensor, tensor_to_frames
from worldsim.model.dit import WorldModel

SESSION_VERSION = 5
# A saved session's kept pass i (MemoryConfig.reuse): tensors kept.<i>.<field>, its chunk then its keys and values
KEPT_FIELDS = ("latents", "actions", "c2w", "ray_ref", "frame_idx", "k", "v")


@dataclass(frozen=True)
class ChunkTimings:
    """Seconds spent on one chunk, by stage: the rollout's (context, denoising, cache write) and
    decoding the latents to pixels; ``render_s`` is a ground-truth world's drawing of its frames
    (a world has no model stages, an engine no render)."""

    context_s: float = 0.0
    denoise_s: float = 0.0
    cache_write_s: float = 0.0
    decode_s: float = 0.0
    render_s: float = 0.0
    memory_s: float = 0.0  # retrieving from and adding to the memory bank (the passes over retrieved chunks: context_s)
    # Wall time of the work that needed the chunk's inputs (from the inputs to decoded frames:
    # poses, a retrieval check, the denoising passes, decode; a world's render). A view of the
    # stages above, not another one: total_s does not add it.
    critical_s: float = 0.0

    @property
    def model_s(self) -> float:
        """The rollout's share: context + denoising + cache write."""
        return self.context_s + self.denoise_s + self.cache_write_s

    @property
    def total_s(self) -> float:
        """Model, decode, memory retrieval and (a ground-truth world's) render."""
        return self.model_s + self.decode_s + self.render_s + self.memory_s

    @classmethod
    def of(cls, r: RolloutTimings, decode_s: float, memory_s: float = 0.0, critical_s: float = 0.0) -> ChunkTimings:
        """The rollout's stage timings plus the decode, retrieval and critical-path times."""
        return cls(r.context_s, r.denoise_s, r.cache_write_s, decode_s, memory_s=memory_s, critical_s=critical_s)


@dataclass(frozen=True)
class _Prepared:
    """What :meth:`Engine.prepare` did for the next chunk: the bank slots it retrieved and loaded
    (best first; None: no guess, the step retrieves and loads), the generator's state before its
    context passes drew noise (a saved session restarts there) and the seconds it spent retrieving."""

    slots: tuple[int, ...] | None
    rng_before: torch.Tensor | None
    memory_s: float


@dataclass(frozen=True)
class Chunk:
    """What one step of a chunk source returns: the new frames and their poses.

    ``frames`` ``(k, H, W, 3)`` uint8, ``c2w`` ``(k, 4, 4)`` float32 (OpenCV camera-to-world,
    metres), ``timings`` seconds by stage, ``memory`` the bank entries retrieved for it (best
    first; empty with memory off). The same record travels from the engine (or a ground-truth
    world) through the generation process to the display and the recorder.
    """

    frames: np.ndarray
    c2w: np.ndarray
    timings: ChunkTimings = ChunkTimings()
    memory: tuple[MemoryHit, ...] = ()

    def __post_init__(self) -> None:
        if self.frames.ndim != 4 or self.frames.dtype != np.uint8 or self.c2w.shape != (len(self.frames), 4, 4):
            raise WorldsimError(
                f"a chunk is frames (k, H, W, 3) uint8 and c2w (k, 4, 4); got {self.frames.shape} "
                f"{self.frames.dtype} and {self.c2w.shape}"
            )


class Engine:
    """A loaded checkpoint ready to play; see the module docstring. Build with :func:`load_engine`."""

    def __init__(
        self,
        ck: CheckpointConfig,
        model: WorldModel,
        codec: Codec,
        sampler: SamplerConfig | None = None,
        seed: int = 0,
        bf16: bool = False,
        controller: CameraControllerConfig | None = None,
        fingerprint: str = "",
        context_policy: str | None = None,
        threads: int | str | None = None,
        memory: MemoryConfig | None = None,
        compile: str = "none",
    ):
        self.cfg, self.model, self.codec = ck, model, codec
        self.device = next(model.parameters()).device
        check_compile(compile, threads, on_cpu=self.device.type == "cpu")  # one line before any slow work
        # CPU threads: None leaves torch's count alone (reproducible runs: evaluation, tests);
        # "auto" follows the cores other processes leave free, re-measured after every chunk
        # (play); a number pins it.
        if threads not in (None, "auto") and not isinstance(threads, int):
            raise WorldsimError(f"threads must be a number >= 1, 'auto' or null, got {threads!r}")
        self.governor = None
        if threads is not None and self.device.type == "cpu":
            self.governor = ThreadGovernor(None if threads == "auto" else int(threads))
        spec = ck.action_encoder
        self.encoder = make_action_encoder(str(spec["name"]), list(spec["key_names"]))
        if self.encoder.spec() != spec:
            raise WorldsimError(
                f"the checkpoint's action encoder {spec} differs from the installed {self.encoder.spec()}"
            )
        self.key_names: list[str] = list(self.encoder.key_names)
        self.chunk_frames: int = ck.chunk_frames
        self.frame_size: tuple[int, int] = ck.frame_size
        intrinsics = ck.conditioning.intrinsics_matrix()
        if intrinsics is None:
            raise WorldsimError("the checkpoint does not record the camera intrinsics it was trained with")
        self.intrinsics: np.ndarray = intrinsics.numpy()
        self.controller = CameraController(controller or CameraControllerConfig(), self.key_names)
        self.fps = self.controller.cfg.fps
        self.sampler_cfg = sampler or ck.sampler
        self.context_policy = context_policy or default_policy(ck.conditioning)
        null = torch.from_numpy(self.encoder.null_action()).to(self.device)
        self.memory_cfg = resolve_press_rule(memory, ck)
        memory = self.memory_cfg
        self.rollout = ChunkRollout(
            model,
            self.sampler_cfg,
            ck.conditioning,
            intrinsics,
            ck.frame_size,
            self.context_policy,
            null,
            memory_chunks=memory.top_k if memory else 0,
            defer_cache_write=True,  # run by prepare(), off the next input's critical path
            memory_reuse=bool(memory and memory.reuse),
        )
        self.memory: MemoryBank | None = None  # the session's bank (memory on), made by reset()
        key = memory.state_key if memory else ""
        self._state_key = self.key_names.index(key) if key in self.key_names else None
        self.memory_state = 0  # parity of the state key's presses since the session began
        # session index of the frame the newest state-key press made; below the window's first frame
        # (-1 with none): none in view
        self.state_press_frame = -1
        # where the last step's chunk went in the bank: -1 when its place kept an earlier entry,
        # None before a step
        self.last_memory_slot: int | None = None
        mean, std = ck.conditioning.stats(ck.model.latent_shape()[0])
        self.mean, self.std = mean.to(self.device), std.to(self.device)
        self.bf16 = bf16
        self.amp = torch.autocast(self.device.type, dtype=torch.bfloat16) if bf16 else nullcontext()
        self.seed = seed
        self.rng = self._generator(seed)
        self.state: CameraState | None = None
        self.previous_keys = np.zeros(len(self.key_names), np.uint8)  # the last input row (press edges)
        self.previous_mouse = np.zeros(2, np.float32)  # its mouse motion (prepare's guess of the next)
        self._prepared: _Prepared | None = None
        self.memory_reloads = 0  # chunks whose retrieval for the real poses differed from prepare()'s guess
        self.steps = 0  # frames generated since reset
        self.fingerprint = fingerprint
        # torch.compile (worldsim.inference.compiled): compiled, and warmed on one chunk of each
        # shape a step uses, here, so that no compilation lands in a step; compile_s says how long.
        self.compile = compile
        compile_model(model, compile)
        # The codec's convolutions in channels-last layout (decode_for_display).
        codec.channels_last()
        self._decoder = compile_decoder(codec, compile)
        t0 = time.perf_counter()
        if compile != "none":
            self._warm_compiled()
        self.compile_s = time.perf_counter() - t0

    def _generator(self, seed: int) -> torch.Generator:
        return torch.Generator(device=self.device).manual_seed(seed)

    # -- state -----------------------------------------------------------------------------
    @property
    def c2w(self) -> np.ndarray:
        """``(4, 4)`` float32 pose of the last frame (context or generated)."""
        if self.state is None:
            raise WorldsimError("the engine has no session yet: call reset() first")
        return self.state.c2w()

    @property
    def context_frames(self) -> int:
        """Frames of ground-truth context :meth:`reset` keeps (the rolling window)."""
        return self.rollout.context_frames

    def _check_inputs(self, keys: np.ndarray, mouse: np.ndarray, n: int | None) -> tuple[np.ndarray, np.ndarray]:
        keys = check_keys("keys", keys, len(self.key_names), n)
        return keys, check_mouse("mouse", mouse, len(keys))

    @torch.inference_mode()
    def _encode(self, frames: np.ndarray) -> torch.Tensor:
        x = frames_to_tensor(torch.from_numpy(np.ascontiguousarray(frames)).to(self.device))
        return ((self.codec.encode(x) - self.mean) / self.std).contiguous()  # NCHW, as the model reads it

    @torch.inference_mode()
    def _decode(self, z: torch.Tensor) -> np.ndarray:
        """One chunk's latents ``(k, C, h, w)`` -> frames ``(k, H, W, 3)`` uint8, channels-last and
        in the engine's precision (:func:`decode_for_display`); the compiled decoder when the
        engine has one (it is compiled for exactly that shape)."""
        decode = self._decoder if z.shape[0] == self.chunk_frames else self.codec.decoder
        return tensor_to_frames(decode_for_display(decode, z.float() * self.std + self.mean, self.bf16)).cpu().numpy()

    @torch.inference_mode()
    def _warm_compiled(self) -> None:
        """Run every compiled region once on zeros of a step's shapes (batch 1, one chunk; the
        model's passes under the engine's autocast, as a step runs them), so it compiles, or
        reads inductor's cache, now."""
        k, (c, h, w) = self.chunk_frames, self.cfg.model.latent_shape()
        self._decode(torch.zeros(k, c, h, w, device=self.device))
        if self.compile == "full":
            mc = self.model.cfg
            cache = KVCache(mc.depth, k * mc.tokens_per_frame, 1)
            x = torch.zeros(1, k, c, h, w, device=self.device)
            inputs = (
                x,
                torch.zeros(1, k, device=self.device),
                torch.zeros(1, k, self.encoder.dim, device=self.device),
                torch.zeros(1, k, 6, h, w, device=self.device),
                torch.arange(k, device=self.device),
                cache,
            )
            with self.amp:
                self.model.forward_chunk(*inputs)
                if mc.memory_adapter_rank and self.memory_cfg is not None:  # a retrieved chunk's pass is its own shape
                    self.model.write_chunk(*inputs, memory=True)

    # -- the API of design §5 ---------------------------------------------------------------
    def reset(
        self, frames: np.ndarray, c2w: np.ndarray, keys: np.ndarray, mouse: np.ndarray, seed: int | None = None
    ) -> None:
        """Start a session from ground-truth context in rollout order: ``frames (T, H, W, 3)``
        uint8, ``c2w (T, 4, 4)``, ``keys (T, K)``, ``mouse (T, 2)`` (``keys[t]`` took frame t to
        t+1; the last row is unused). The newest whole chunks are kept. ``seed`` restarts the
        noise generator (default: the engine's seed). Raises ``WorldsimError`` on a bad shape,
        dtype or value (keys not 0/1, non-finite mouse, a c2w that is not a finite rigid
        transform); a refused reset leaves the session as it was."""
        # Everything is checked before anything changes: a refused reset keeps the old session.
        frames = check_frames("context frames", frames, self.frame_size)
        keys, mouse = self._check_inputs(keys, mouse, len(frames))
        c2w = check_c2w("c2w", c2w, len(frames))
        actions = torch.from_numpy(self.encoder.frame_actions(keys, mouse)).to(self.device)
        latents = self._encode(frames)[None]
        # keys[-1] is unused (it would make frame T): the first step's inputs follow keys[-2].
        previous = keys[-2] if len(keys) >= 2 else np.zeros(len(self.key_names), np.uint8)
        # The session's noise starts here (the cached policy's context noise comes from it too);
        # it replaces the old session's only once the rollout has taken the context.
        rng = self._generator(self.seed if seed is None else seed)
        with torch.inference_mode(), self.amp:  # the cached policy writes the context's keys here
            self.rollout.reset(latents, actions[None], torch.from_numpy(c2w).to(self.device)[None], rng)
        self.rng = rng
        # Frame t's state counts the presses that made frames 1 .. t (keys[t - 1]).
        presses = self._presses(keys[:-1], np.zeros_like(keys[0]))
        states = np.concatenate([[0], np.cumsum(presses)]) % 2
        h = self.rollout.history
        assert h is not None
        k, t0 = self.chunk_frames, len(frames)
        if self.memory_cfg is not None:
            self.memory = MemoryBank(self.memory_cfg, torch.from_numpy(self.intrinsics), self.frame_size)
            for s in range(0, h.num_frames, k):  # the kept context, chunk by chunk
                last = t0 - h.num_frames + s + k - 1  # the chunk's newest frame, in the given context
                self.memory.add(
                    h.latents[0, s : s + k].float(), h.actions[0, s : s + k], h.c2w[0, s : s + k],
                    int(h.frame_idx[s]), int(states[last]),
                )  # fmt: skip
        self.memory_state = int(states[-1])
        pressed = np.flatnonzero(presses)  # row t made the given frame t + 1
        first = int(h.frame_idx[0]) - (t0 - h.num_frames)  # the session index of the given frame 0
        self.state_press_frame = first + int(pressed[-1]) + 1 if len(pressed) else -1
        self.last_memory_slot = None
        # With momentum (DOOM) the camera keeps the velocity of the last context step.
        if len(c2w) >= 2:
            self.state = self.controller.settle(c2w[-2], c2w[-1], keys[-2], mouse[-2])
        else:
            self.state = CameraState.from_c2w(c2w[-1])
        self.previous_keys = previous.astype(np.uint8)
        self.previous_mouse = (mouse[-2] if len(mouse) >= 2 else np.zeros(2)).astype(np.float32)
        self._prepared = None
        self.steps = 0

    def prepare(self, guess: bool = True) -> None:
        """Do the next chunk's input-independent work now (module docstring: the deferred cache
        write; memory on and ``guess``, retrieval for the guessed poses and the retrieved chunks'
        passes). Calling it again before the next :meth:`step` does nothing. ``step`` calls it
        itself with ``guess=False`` when the caller has not: it has the real poses already.
        ``WorldsimError`` before :meth:`reset`."""
        if self.state is None:
            raise WorldsimError("the engine has no session yet: call reset() first")
        if self._prepared is not None:
            return
        with torch.inference_mode(), self.amp, self._same_noise_on_error():
            self.rollout.flush(self.rng)
        if self.memory is None:
            self._prepared = _Prepared((), None, 0.0)  # nothing to retrieve: no memory, as guessed
            return
        if self.context_policy != "cached" or not guess:
            self._prepared = _Prepared(None, None, 0.0)
            return
        k = self.chunk_frames  # the last input row going on: keys held, the same motion
        _, poses = self.controller.run(
            self.state, np.repeat(self.previous_keys[None], k, 0), np.repeat(self.previous_mouse[None], k, 0)
        )
        t0 = time.perf_counter()
        hits, retrieved = self._retrieve(poses, self.memory_state, self.state_press_frame)  # no press
        memory_s = time.perf_counter() - t0
        rng_before = self.rng.get_state()
        with torch.inference_mode(), self.amp, self._same_noise_on_error():
            self.rollout.load_memory(retrieved, self.rng)
        self._prepared = _Prepared(tuple(h.slot for h in hits), rng_before, memory_s)

    @contextmanager
    def _same_noise_on_error(self) -> Iterator[None]:
        """Put the generator back where it was if the body raises (work ahead that failed is
        redone from the same noise)."""
        state = self.rng.get_state()
        try:
            yield
        except BaseException:
            self.rng.set_state(state)
            raise

    def step(self, keys: np.ndarray, mouse: np.ndarray) -> Chunk:
        """``k = chunk_frames`` raw inputs ``keys (k, K)`` uint8 multi-hot, ``mouse (k, 2)``
        pixels, applied one per frame from the latest frame -> the :class:`Chunk` they produce.

        Keys must be 0/1 and the mouse finite (``worldsim.core.validate``); anything else raises
        ``WorldsimError`` before the session changes, so the next good step is as if the bad
        one never came."""
        if self.state is None:
            raise WorldsimError("the engine has no session yet: call reset() first")
        keys, mouse = self._check_inputs(keys, mouse, self.chunk_frames)
        self.prepare(guess=False)  # no-op when the caller prepared already
        prepared, self._prepared = self._prepared, None
        assert prepared is not None
        t_inputs = time.perf_counter()  # the critical path starts: everything below needs the inputs
        # Step 1: poses from the controller, actions from the encoder (frame i <- input i).
        state, c2w_np = self.controller.run(self.state, keys, mouse)
        encoded = self.encoder.encode_sequence(keys, mouse, self.previous_keys)
        actions = torch.from_numpy(encoded).to(self.device)[None]
        c2w = torch.from_numpy(c2w_np).to(self.device)[None]
        pressed = np.flatnonzero(self._presses(keys, self.previous_keys))  # row i made the chunk's frame i
        memory_state = (self.memory_state + len(pressed)) % 2
        first = self._next_frame()
        press_frame = first + int(pressed[-1]) if len(pressed) else self.state_press_frame
        # Step 2: the memory bank's entries for this view (memory on); when prepare() guessed
        # other ones, their context passes run again now.
        t0 = time.perf_counter()
        hits, retrieved = self._retrieve(c2w_np, memory_state, press_frame)
        memory_s = prepared.memory_s + (time.perf_counter() - t0 if self.memory is not None else 0.0)
        if tuple(h.slot for h in hits) != prepared.slots:
            if prepared.rng_before is not None:  # the noise the guess drew is drawn again, for these
                self.rng.set_state(prepared.rng_before)
            with torch.inference_mode(), self.amp:
                self.rollout.load_memory(retrieved, self.rng)
            self.memory_reloads += prepared.slots is not None
        # Step 3: the rollout generates the chunk's latents (with what was loaded); then they are decoded.
        with torch.inference_mode(), self.amp:
            z = self.rollout.step(actions, c2w, self.rng)
        t0 = time.perf_counter()
        frames = self._decode(z[0])
        decode_s = time.perf_counter() - t0
        critical_s = time.perf_counter() - t_inputs
        if self.memory is not None:  # the clean chunk joins the bank
            t0 = time.perf_counter()
            self.last_memory_slot = self.memory.add(z[0].float(), actions[0], c2w[0], first, memory_state)
            memory_s += time.perf_counter() - t0
        self.state = state
        self.previous_keys, self.previous_mouse = keys[-1].astype(np.uint8), mouse[-1].astype(np.float32)
        self.memory_state, self.state_press_frame = memory_state, press_frame
        self.steps += self.chunk_frames
        if self.governor is not None:
            self.governor.observe()
        timings = ChunkTimings.of(self.rollout.timings, decode_s, memory_s, critical_s)
        return Chunk(frames, c2w_np, timings, tuple(hits))

    # -- memory --------------------------------------------------------------------------------
    def _presses(self, keys: np.ndarray, previous: np.ndarray) -> np.ndarray:
        """``(n,)`` int: 1 where row i presses the memory's state key (up in the row before)."""
        if self._state_key is None:
            return np.zeros(len(keys), np.int64)
        col = np.concatenate([[previous[self._state_key]], keys[:, self._state_key]]).astype(np.int64)
        return ((col[1:] == 1) & (col[:-1] == 0)).astype(np.int64)

    def remember_truth(self, frames: np.ndarray) -> None:
        """Replace the latents the last :meth:`step` put in the memory bank with the encoding of
        the true frames ``(k, H, W, 3)`` uint8 of that chunk: a bank of what the world really
        looked like (the revisit evaluation's oracle); nothing when the bank did not keep that
        chunk (its place holds an earlier view, ``MemoryConfig.keep="first"``: that view's own
        step replaced it). ``WorldsimError`` with memory off or before a step."""
        if self.memory is None or self.memory.latents is None or self.last_memory_slot is None:
            raise WorldsimError("remember_truth() needs memory on and a step to replace")
        frames = check_frames("true frames", frames, self.frame_size)
        if len(frames) != self.chunk_frames:
            raise WorldsimError(f"remember_truth() takes one chunk of {self.chunk_frames} frames, got {len(frames)}")
        if self.last_memory_slot < 0:
            return
        # A guess that prepare() loaded never holds this slot: the newest chunk is in the window,
        # and only entries wholly older than the window are retrieved.
        self.memory.latents[self.last_memory_slot] = self._encode(frames).to(self.memory.latents.dtype)

    def _next_frame(self) -> int:
        """Session index of the next chunk's first frame."""
        h = self.rollout.history
        assert h is not None
        return int(h.frame_idx[-1]) + 1

    def _retrieve(
        self, c2w: np.ndarray, state: int, press_frame: int
    ) -> tuple[list[MemoryHit], tuple[torch.Tensor, torch.Tensor, torch.Tensor] | None]:
        """The hits for a chunk with poses ``c2w (k, 4, 4)`` in ``state`` and the rollout's
        ``memory`` input (best hit last, nearest the window), or ``([], None)``: also when the
        newest state-key press made frame ``press_frame`` (session index) of the window or the
        chunk, unless ``MemoryConfig.retrieve_across_press``."""
        h = self.rollout.history
        if self.memory is None or h is None:
            return [], None
        recent = min(h.num_frames, self.rollout.context_frames)
        window_start = int(h.frame_idx[-recent])
        if press_frame >= window_start and not self.memory.cfg.retrieve_across_press:
            return [], None
        shown = h.c2w[0, h.num_frames - recent + self.chunk_frames - 1 :: self.chunk_frames]  # the window's anchors
        hits = self.memory.retrieve(torch.from_numpy(c2w), before_frame=window_start, state=state, context_c2w=shown)
        if not hits:
            return [], None
        lat, act, cam = self.memory.entries([hit.slot for hit in reversed(hits)])
        dtype = h.latents.dtype
        return hits, (lat[None].to(self.device, dtype), act[None].to(self.device, dtype), cam[None].to(self.device))

    # -- session save / restore --------------------------------------------------------------
    def save_session(self, path: str | Path) -> None:
        """Context, KV cache (``cached`` policy), pose, last input row, RNG and step count, the
        memory bank and the kept passes of retrieved chunks (``MemoryConfig.reuse``), as
        ``session.safetensors`` + ``session.json`` in folder ``path`` (the folder swapped in as a whole)."""
        h = self.rollout.history
        if self.state is None or h is None:
            raise WorldsimError("nothing to save: call reset() first")
        with torch.inference_mode(), self.amp:  # the cache is saved with the last chunk written
            self.rollout.flush(self.rng)
        p = self._prepared  # retrieval done ahead is not saved: the restored engine does it again, from the same noise
        rng = p.rng_before if p is not None and p.rng_before is not None else self.rng.get_state()
        tensors = {
            "latents": h.latents,
            "actions": h.actions,
            "c2w": h.c2w,
            "ray_ref": h.ray_ref.clone(),  # may share memory with the history's poses
            "frame_idx": h.frame_idx,
            "previous_keys": torch.from_numpy(self.previous_keys.copy()),
            "previous_mouse": torch.from_numpy(self.previous_mouse.copy()),
            "rng": rng,
        }
        cache = self.rollout.cache
        if cache is not None:
            tensors.update({f"cache.{k}": v for k, v in cache.state_dict().items()})
        if self.memory is not None:
            tensors.update({f"memory.{k}": v for k, v in self.memory.state_dict().items()})
        for i, kept in enumerate(self.rollout.kept):  # memory reuse: the last retrieved chunks' passes
            c = kept.chunk
            values = (c.latents, c.actions, c.c2w, c.ray_ref, c.frame_idx, kept.k, kept.v)
            tensors.update({f"kept.{i}.{n}": t.clone() for n, t in zip(KEPT_FIELDS, values, strict=True)})
        meta: dict[str, Any] = {
            "version": SESSION_VERSION,
            "checkpoint": self.fingerprint,
            "sampler": asdict(self.sampler_cfg),
            "context_policy": self.context_policy,
            "memory": None if self.memory_cfg is None else asdict(self.memory_cfg),
            "memory_state": self.memory_state,
            "state_press_frame": self.state_press_frame,
            "steps": self.steps,
            "position": self.state.position.tolist(),
            "yaw_rad": self.state.yaw_rad,
            "pitch_rad": self.state.pitch_rad,
            "velocity_mps": self.state.velocity_mps.tolist(),
        }
        with staged_dir(path, keep=True) as out:  # the folder is swapped in as a whole
            write_bytes(
                out / "session.safetensors", save({k: v.detach().cpu().contiguous() for k, v in tensors.items()})
            )
            write_text(out / "session.json", json.dumps(meta, indent=2))

    def load_session(self, path: str | Path) -> None:
        """Restore a session written by :meth:`save_session` with this checkpoint, context policy
        and sampler (each refused in one line when it differs)."""
        root = Path(path)
        if not (root / "session.json").is_file() or not (root / "session.safetensors").is_file():
            raise WorldsimError(f"{root} is not a saved session (needs session.json and session.safetensors)")
        meta = json.loads((root / "session.json").read_text())
        if meta.get("version") != SESSION_VERSION:
            raise WorldsimError(f"{root}: session format {meta.get('version')}, this worldsim reads {SESSION_VERSION}")
        if meta["checkpoint"] != self.fingerprint:
            raise WorldsimError(f"{root} was saved with another checkpoint; load it with the one it came from")
        if meta["context_policy"] != self.context_policy:
            raise WorldsimError(
                f"{root} was saved with context policy {meta['context_policy']!r}, "
                f"this engine runs {self.context_policy!r}"
            )
        sampler = json.loads(json.dumps(asdict(self.sampler_cfg)))  # as the JSON holds it (lists)
        # Saved before cache_write: every chunk took the clean pass.
        saved_sampler = {"cache_write": "clean_pass", **(meta.get("sampler") or {})}
        if saved_sampler != sampler:
            diff = {k: (saved_sampler.get(k), v) for k, v in sampler.items() if saved_sampler.get(k) != v}
            raise WorldsimError(
                f"{root} was saved with another sampler (saved vs this engine: {diff}); "
                f"load it with the sampler it was saved with"
            )
        memory = None if self.memory_cfg is None else asdict(self.memory_cfg)
        saved = meta.get("memory")
        # Saved before keep, discount_window, reuse or retrieve_across_press: the rules of then.
        if isinstance(saved, dict):
            saved = {"keep": "newest", "discount_window": True, "reuse": False, "retrieve_across_press": True, **saved}
        if saved != memory:
            raise WorldsimError(
                f"{root} was saved with memory {saved}, this engine runs {memory}; "
                f"load it with the memory settings it was saved with"
            )
        try:
            t = load_file(str(root / "session.safetensors"), device=str(self.device))
        except Exception as e:  # safetensors raises its own error types for a damaged file
            raise WorldsimError(f"{root}/session.safetensors cannot be read ({e})") from None
        bank = None
        if self.memory_cfg is not None:
            bank = MemoryBank(self.memory_cfg, torch.from_numpy(self.intrinsics), self.frame_size)
            bank.load_state_dict({k[len("memory.") :]: v.cpu() for k, v in t.items() if k.startswith("memory.")})
            if bank.latents is not None and bank.actions is not None:
                bank.latents, bank.actions = bank.latents.to(self.device), bank.actions.to(self.device)
        hist = History(t["latents"], t["actions"], t["c2w"], t["ray_ref"], t["frame_idx"])
        cache = None
        if self.context_policy == "cached":
            cache = KVCache.from_state_dict(
                {k[len("cache.") :]: v for k, v in t.items() if k.startswith("cache.")},
                self.model.cfg.depth,
            )
        count = sum(n.startswith("kept.") and n.endswith(".k") for n in t)
        kept = [self._kept_pass(t, i, root, hist, cache) for i in range(count)]
        self.rollout.restore(hist, cache, kept=kept)
        self.memory, self.memory_state = bank, int(meta.get("memory_state", 0))
        self.state_press_frame = int(meta.get("state_press_frame", -1))  # sessions from before it: no press kept
        self.previous_keys = t["previous_keys"].cpu().numpy().astype(np.uint8)
        self.previous_mouse = t["previous_mouse"].cpu().numpy().astype(np.float32)
        self._prepared = None
        self.rng = torch.Generator(device=self.device)
        self.rng.set_state(t["rng"].cpu())
        self.steps = int(meta["steps"])
        velocity = meta.get("velocity_mps", [0.0, 0.0, 0.0])  # sessions saved before momentum are at rest
        self.state = CameraState(
            np.array(meta["position"], np.float64),
            float(meta["yaw_rad"]),
            float(meta["pitch_rad"]),
            np.array(velocity, np.float64),
        )

    def _kept_pass(
        self, t: dict[str, torch.Tensor], i: int, root: Path, hist: History, cache: KVCache | None
    ) -> MemoryPass:
        """Saved kept pass ``i`` (``save_session``'s ``kept.<i>.*``), checked against the restored
        history and KV cache, or one line saying what is wrong."""
        if any(f"kept.{i}.{n}" not in t for n in KEPT_FIELDS):
            raise WorldsimError(f"{root}: the saved pass of retrieved chunk {i} is incomplete")
        f = {n: t[f"kept.{i}.{n}"] for n in KEPT_FIELDS}
        k, b = self.chunk_frames, hist.latents.shape[0]
        shapes = {
            "latents": (b, k, *hist.latents.shape[2:]),
            "actions": (b, k, hist.actions.shape[2]),
            "c2w": (b, k, 4, 4),
            "ray_ref": (b, k, 4, 4),
            "frame_idx": (k,),
        }
        if cache is None or cache.k is None:
            raise WorldsimError(f"{root}: a saved pass of a retrieved chunk, but no KV cache to hold it")
        layers, _, heads, _, hd = cache.k.shape  # (layers, B, H, slots * L, hd) -> one chunk's
        shapes["k"] = shapes["v"] = (layers, b, heads, cache.chunk_tokens, hd)
        wrong = [n for n, want in shapes.items() if tuple(f[n].shape) != want]
        if f["k"].dtype != cache.k.dtype or f["v"].dtype != cache.k.dtype or f["frame_idx"].is_floating_point():
            wrong.append("dtype")
        if wrong:
            raise WorldsimError(
                f"{root}: the saved pass of retrieved chunk {i} does not fit this model and session: {', '.join(wrong)}"
            )
        return MemoryPass(History(f["latents"], f["actions"], f["c2w"], f["ray_ref"], f["frame_idx"]), f["k"], f["v"])


def check_device(device: str) -> torch.device:
    """``device`` as a ``torch.device``, or one line saying why it cannot run here."""
    try:
        dev = torch.device(device)
    except RuntimeError:
        raise WorldsimError(f"unknown device {device!r}; use 'cpu' or 'cuda' (or 'cuda:N')") from None
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise WorldsimError(f"device {device!r} asked, but this torch sees no CUDA GPU (torch {torch.__version__})")
    if dev.type not in ("cpu", "cuda"):
        raise WorldsimError(f"device {device!r} is not supported; use 'cpu' or 'cuda'")
    return dev


def _fingerprint(path: Path) -> str:
    h = hashlib.sha1((path / "config.json").read_bytes())
    h.update((path / "model.safetensors").read_bytes())
    return h.hexdigest()[:16]


def load_engine(
    path: str | Path,
    device: str = "cpu",
    seed: int = 0,
    bf16: bool | None = None,
    sampler: SamplerOverrides | None = None,
    context_policy: str | None = None,
    memory: str | bool | MemoryConfig = "off",
    memory_top_k: int | None = None,
    quantize: str = "none",
    compile: str = "none",
    **rest: Any,
) -> Engine:
    """An :class:`Engine` from a checkpoint folder (``config.json``, ``model.safetensors``, ``codec.safetensors``).

    ``device``: ``cpu`` or ``cuda[:n]`` (every tensor of the session is made there; a machine
    without CUDA gets one line saying so). ``sampler`` changes the checkpoint's own sampler
    settings field by field (None keeps them all); ``bf16``: autocast on or off, None = on where
    ``device`` computes bf16 natively (:func:`worldsim.core.precision.resolve_bf16`);
    ``context_policy``: ``rebuild`` or ``cached`` (None = ``cached`` where the checkpoint's
    conditioning keeps keys valid across chunks, else ``rebuild``); ``threads`` (keyword, CPU):
    None leaves torch's thread count as it is, ``"auto"`` follows the cores other processes leave
    free (:mod:`worldsim.core.threads`; what play.py does), a number pins it; ``memory``: ``"on"``
    (or True) keeps a spatial memory bank with the default :class:`MemoryConfig`, a
    ``MemoryConfig`` sets it up, ``"off"`` (False, the default) plays without one;
    ``memory_top_k`` changes how many entries a chunk may retrieve; ``quantize``: ``"int8"``
    gives the DiT's token-wise linear layers int8 weights (CPU only; bf16 autocast is then off,
    and ``bf16=True`` is refused: :mod:`worldsim.inference.quantize`), ``"none"`` (the default)
    keeps fp32; ``compile``: ``"decoder"`` or ``"full"`` compiles the codec's decoder (and the
    DiT blocks' token-wise regions) with ``torch.compile`` before returning (the engine's
    ``compile_s``; :mod:`worldsim.inference.compiled`), ``"none"`` (the default) runs eager. The
    camera controller (speeds, fps) is the checkpoint's, so an input moves the
    camera as it did in the training data; any other keyword goes to :class:`Engine` unchanged."""
    check_device(device)
    check_quantize(quantize, device, bf16)  # one line before the checkpoint loads
    check_compile(compile, rest.get("threads"), quantize, torch.device(device).type == "cpu")
    path = find_checkpoint(path)
    ck, model, codec = load_checkpoint(path, device=device)
    model = quantize_model(model, quantize)
    sampler_cfg = (sampler or SamplerOverrides()).apply(ck.sampler)
    return Engine(
        ck,
        model,
        codec,
        sampler=sampler_cfg,
        seed=seed,
        bf16=False if quantize != "none" else resolve_bf16(bf16, device),
        controller=ck.controller,
        fingerprint=_fingerprint(path),
        context_policy=context_policy,
        memory=memory_config(memory, memory_top_k),
        compile=compile,
        **rest,
    )


def trained_with_presses(ck: CheckpointConfig, key: str) -> bool:
    """Whether ``ck`` is a student whose DMD stage pressed ``key`` (the bank's state key) in its
    still rollouts and gave no retrieved chunk from a press on (``distill.still_press_prob`` > 0
    and ``still_press_key`` ``key`` in the exported run's identity, ``provenance.config``)."""
    config = ck.provenance.get("config")
    distill = config.get("distill") if isinstance(config, dict) else None
    if not isinstance(distill, dict):
        return False
    return float(distill.get("still_press_prob", 0.0)) > 0 and distill.get("still_press_key", "l") == key


def resolve_press_rule(memory: MemoryConfig | None, ck: CheckpointConfig) -> MemoryConfig | None:
    """``memory`` with ``retrieve_across_press`` None decided for ``ck``: no retrieval while the
    window holds a press for a student trained so (:func:`trained_with_presses`), retrieval
    across presses, the rule its evaluation used, for every other checkpoint."""
    if memory is None or memory.retrieve_across_press is not None:
        return memory
    return replace(memory, retrieve_across_press=not trained_with_presses(ck, memory.state_key))


def memory_config(memory: str | bool | MemoryConfig | None, top_k: int | None = None) -> MemoryConfig | None:
    """``memory`` as :func:`load_engine` takes it -> the bank's config, or None for off;
    ``WorldsimError`` in one line for anything else."""
    if isinstance(memory, MemoryConfig):
        cfg: MemoryConfig | None = memory
    elif memory in (True, "on", "true", "True"):  # hydra may hand a typed str field "True"
        cfg = MemoryConfig()
    elif memory in (False, "off", "false", "False", None):
        cfg = None
    else:
        raise WorldsimError(f"memory must be 'on' or 'off', got {memory!r}")
    if top_k is not None:
        if cfg is None:
            raise WorldsimError("memory_top_k needs memory on")
        cfg = replace(cfg, top_k=top_k)
    return cfg
