"""The engine: raw inputs in, generated frames out. No UI code, no worlds (design §3-5).

    engine = load_engine("assets/teacher_builtin_v1")
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
"""

from __future__ import annotations

import hashlib
import json
import time
from contextlib import nullcontext
from dataclasses import asdict, dataclass
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
from worldsim.inference.context import History
from worldsim.inference.kv_cache import KVCache
from worldsim.inference.rollout import ChunkRollout, RolloutTimings, default_policy
from worldsim.model.codec import Codec, frames_to_tensor, tensor_to_frames
from worldsim.model.dit import WorldModel

SESSION_VERSION = 3


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

    @property
    def model_s(self) -> float:
        """The rollout's share: context + denoising + cache write."""
        return self.context_s + self.denoise_s + self.cache_write_s

    @property
    def total_s(self) -> float:
        """Model, decode and (a ground-truth world's) render."""
        return self.model_s + self.decode_s + self.render_s

    @classmethod
    def of(cls, r: RolloutTimings, decode_s: float) -> ChunkTimings:
        """The rollout's stage timings plus the decode time."""
        return cls(r.context_s, r.denoise_s, r.cache_write_s, decode_s)


@dataclass(frozen=True)
class Chunk:
    """What one step of a chunk source returns: the new frames and their poses.

    ``frames`` ``(k, H, W, 3)`` uint8, ``c2w`` ``(k, 4, 4)`` float32 (OpenCV camera-to-world,
    metres), ``timings`` seconds by stage. The same record travels from the engine (or a
    ground-truth world) through the generation process to the display and the recorder.
    """

    frames: np.ndarray
    c2w: np.ndarray
    timings: ChunkTimings = ChunkTimings()

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
    ):
        self.cfg, self.model, self.codec = ck, model, codec
        self.device = next(model.parameters()).device
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
        self.rollout = ChunkRollout(
            model, self.sampler_cfg, ck.conditioning, intrinsics, ck.frame_size, self.context_policy, null
        )
        mean, std = ck.conditioning.stats(ck.model.latent_shape()[0])
        self.mean, self.std = mean.to(self.device), std.to(self.device)
        self.bf16 = bf16
        self.amp = torch.autocast(self.device.type, dtype=torch.bfloat16) if bf16 else nullcontext()
        self.seed = seed
        self.rng = self._generator(seed)
        self.state: CameraState | None = None
        self.previous_keys = np.zeros(len(self.key_names), np.uint8)  # the last input row (press edges)
        self.steps = 0  # frames generated since reset
        self.fingerprint = fingerprint

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
        return (self.codec.encode(x) - self.mean) / self.std

    @torch.inference_mode()
    def _decode(self, z: torch.Tensor) -> np.ndarray:
        return tensor_to_frames(self.codec.decode(z.float() * self.std + self.mean)).cpu().numpy()

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
        with torch.inference_mode(), self.amp:  # the cached policy writes the context's keys here
            self.rollout.reset(latents, actions[None], torch.from_numpy(c2w).to(self.device)[None])
        self.state = CameraState.from_c2w(c2w[-1])
        self.previous_keys = previous.astype(np.uint8)
        self.rng = self._generator(self.seed if seed is None else seed)
        self.steps = 0

    def step(self, keys: np.ndarray, mouse: np.ndarray) -> Chunk:
        """``k = chunk_frames`` raw inputs ``keys (k, K)`` uint8 multi-hot, ``mouse (k, 2)``
        pixels, applied one per frame from the latest frame -> the :class:`Chunk` they produce.

        Keys must be 0/1 and the mouse finite (``worldsim.core.validate``); anything else raises
        ``WorldsimError`` before the session changes, so the next good step is as if the bad
        one never came."""
        if self.state is None:
            raise WorldsimError("the engine has no session yet: call reset() first")
        keys, mouse = self._check_inputs(keys, mouse, self.chunk_frames)
        # Step 1: poses from the controller, actions from the encoder (frame i <- input i).
        state, poses = self.state, []
        for i in range(self.chunk_frames):
            state = self.controller.step(state, keys[i], mouse[i])
            poses.append(state.c2w())
        c2w_np = np.stack(poses)
        encoded = self.encoder.encode_sequence(keys, mouse, self.previous_keys)
        actions = torch.from_numpy(encoded).to(self.device)[None]
        c2w = torch.from_numpy(c2w_np).to(self.device)[None]
        # Step 2: the rollout generates the chunk's latents; then they are decoded.
        with torch.inference_mode(), self.amp:
            z = self.rollout.step(actions, c2w, self.rng)
        t0 = time.perf_counter()
        frames = self._decode(z[0])
        decode_s = time.perf_counter() - t0
        self.state = state
        self.previous_keys = keys[-1].astype(np.uint8)
        self.steps += self.chunk_frames
        if self.governor is not None:
            self.governor.observe()
        return Chunk(frames, c2w_np, ChunkTimings.of(self.rollout.timings, decode_s))

    # -- session save / restore --------------------------------------------------------------
    def save_session(self, path: str | Path) -> None:
        """Context, KV cache (``cached`` policy), pose, last input row, RNG and step count, as
        ``session.safetensors`` + ``session.json`` in folder ``path`` (the folder swapped in as a whole)."""
        h = self.rollout.history
        if self.state is None or h is None:
            raise WorldsimError("nothing to save: call reset() first")
        tensors = {
            "latents": h.latents,
            "actions": h.actions,
            "c2w": h.c2w,
            "ray_ref": h.ray_ref.clone(),  # may share memory with the history's poses
            "frame_idx": h.frame_idx,
            "previous_keys": torch.from_numpy(self.previous_keys.copy()),
            "rng": self.rng.get_state(),
        }
        cache = self.rollout.cache
        if cache is not None:
            tensors.update({f"cache.{k}": v for k, v in cache.state_dict().items()})
        meta: dict[str, Any] = {
            "version": SESSION_VERSION,
            "checkpoint": self.fingerprint,
            "sampler": asdict(self.sampler_cfg),
            "context_policy": self.context_policy,
            "steps": self.steps,
            "position": self.state.position.tolist(),
            "yaw_rad": self.state.yaw_rad,
            "pitch_rad": self.state.pitch_rad,
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
        if meta.get("sampler") != sampler:
            diff = {
                k: (meta.get("sampler", {}).get(k), v)
                for k, v in sampler.items()
                if meta.get("sampler", {}).get(k) != v
            }
            raise WorldsimError(
                f"{root} was saved with another sampler (saved vs this engine: {diff}); "
                f"load it with the sampler it was saved with"
            )
        t = load_file(str(root / "session.safetensors"), device=str(self.device))
        hist = History(t["latents"], t["actions"], t["c2w"], t["ray_ref"], t["frame_idx"])
        cache = None
        if self.context_policy == "cached":
            cache = KVCache.from_state_dict(
                {k[len("cache.") :]: v for k, v in t.items() if k.startswith("cache.")},
                self.model.cfg.depth,
            )
        self.rollout.restore(hist, cache)
        self.previous_keys = t["previous_keys"].cpu().numpy().astype(np.uint8)
        self.rng = torch.Generator(device=self.device)
        self.rng.set_state(t["rng"].cpu())
        self.steps = int(meta["steps"])
        self.state = CameraState(
            np.array(meta["position"], np.float64), float(meta["yaw_rad"]), float(meta["pitch_rad"])
        )


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
    free (:mod:`worldsim.core.threads`; what play.py does), a number pins it. The camera controller
    (speeds, fps) is the checkpoint's, so an input moves the camera as it did in the training
    data; any other keyword goes to :class:`Engine` unchanged."""
    check_device(device)
    path = find_checkpoint(path)
    ck, model, codec = load_checkpoint(path, device=device)
    sampler_cfg = (sampler or SamplerOverrides()).apply(ck.sampler)
    return Engine(
        ck,
        model,
        codec,
        sampler=sampler_cfg,
        seed=seed,
        bf16=resolve_bf16(bf16, device),
        controller=ck.controller,
        fingerprint=_fingerprint(path),
        context_policy=context_policy,
        **rest,
    )
