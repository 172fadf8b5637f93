"""The engine: raw inputs in, generated frames out. No UI code (design §3-5).

    engine = load_engine("assets/teacher_builtin_v1")
    engine.reset(frames, c2w, keys, mouse)        # ground-truth context, rollout order
    frames = engine.step(keys, mouse)             # chunk_frames inputs -> chunk_frames frames

It owns the codec, the world model, the sampler (through :class:`ChunkGenerator`), the action
encoder and the camera controller. The controller turns each frame's input into its pose,
exactly as when the data was recorded, and the encoder turns it into the action vector; frame
``i`` of a chunk is conditioned on input ``i`` (the input that produced it). Every chunk leaves
per-stage timings in :attr:`Engine.timings`. A session (context, pose, RNG, step count) can be
saved and restored; a restored session continues bit-for-bit on the same machine.
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
from safetensors.torch import load_file, save_file

from worldsim.core.actions import make_action_encoder
from worldsim.core.controller import CameraController, CameraControllerConfig, CameraState
from worldsim.core.errors import WorldsimError
from worldsim.core.precision import resolve_bf16
from worldsim.diffusion.sampler import SamplerConfig, SamplerOverrides
from worldsim.inference.checkpoint import CheckpointConfig, find_checkpoint, load_checkpoint
from worldsim.inference.rollout import ChunkGenerator, History
from worldsim.model.codec import Codec, frames_to_tensor, tensor_to_frames
from worldsim.model.dit import WorldModel

SESSION_VERSION = 1


@dataclass
class ChunkTimings:
    """Seconds spent on the last chunk: the model (context rebuild + denoising), decoding."""

    model_s: float = 0.0
    decode_s: float = 0.0

    @property
    def total_s(self) -> float:
        return self.model_s + self.decode_s


class Engine:
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
    ):
        self.cfg, self.model, self.codec = ck, model, codec
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
        null = torch.from_numpy(self.encoder.null_action())
        self.gen = ChunkGenerator(model, self.sampler_cfg, ck.conditioning, intrinsics, ck.frame_size, null)
        self.mean, self.std = ck.conditioning.stats(ck.model.latent_channels)
        self.amp = torch.autocast("cpu", dtype=torch.bfloat16) if bf16 else nullcontext()
        self.seed = seed
        self.rng = torch.Generator().manual_seed(seed)
        self.state: CameraState | None = None
        self.steps = 0  # frames generated since reset
        self.timings = ChunkTimings()
        self.chunk_c2w = np.zeros((0, 4, 4), np.float32)  # poses of the frames the last step returned
        self.fingerprint = fingerprint

    # -- state -----------------------------------------------------------------------------
    @property
    def c2w(self) -> np.ndarray:
        """``(4, 4)`` pose of the last frame (context or generated)."""
        if self.state is None:
            raise WorldsimError("the engine has no session yet: call reset() first")
        return self.state.c2w()

    @property
    def context_frames(self) -> int:
        return self.gen.context_frames

    def _check_inputs(self, keys: np.ndarray, mouse: np.ndarray, n: int | None) -> tuple[np.ndarray, np.ndarray]:
        keys, mouse = np.asarray(keys), np.asarray(mouse, np.float32)
        t = keys.shape[0] if keys.ndim == 2 else -1
        if keys.ndim != 2 or keys.shape[1] != len(self.key_names) or (n is not None and t != n):
            want = f"({n if n is not None else 'T'}, {len(self.key_names)})"
            raise WorldsimError(f"keys must be {want} over {self.key_names}, got {keys.shape}")
        if mouse.shape != (t, 2):
            raise WorldsimError(f"mouse must be ({t}, 2), got {mouse.shape}")
        return keys, mouse

    @torch.no_grad()
    def _encode(self, frames: np.ndarray) -> torch.Tensor:
        z = self.codec.encode(frames_to_tensor(torch.from_numpy(np.ascontiguousarray(frames))))
        return (z - self.mean) / self.std

    @torch.no_grad()
    def _decode(self, z: torch.Tensor) -> np.ndarray:
        return tensor_to_frames(self.codec.decode(z.float() * self.std + self.mean)).numpy()

    # -- the API of design §5 ---------------------------------------------------------------
    def reset(
        self, frames: np.ndarray, c2w: np.ndarray, keys: np.ndarray, mouse: np.ndarray, seed: int | None = None
    ) -> None:
        """Ground-truth context in rollout order (``keys[t]`` took frame t to t+1; the last row is unused)."""
        frames = np.asarray(frames)
        if frames.ndim != 4 or tuple(frames.shape[1:3]) != self.frame_size or frames.shape[3] != 3:
            raise WorldsimError(
                f"context frames must be (T, {self.frame_size[0]}, {self.frame_size[1]}, 3), got {frames.shape}"
            )
        t0 = len(frames)
        keys, mouse = self._check_inputs(keys, mouse, t0)
        c2w = np.asarray(c2w, np.float32)
        if c2w.shape != (t0, 4, 4):
            raise WorldsimError(f"c2w must be ({t0}, 4, 4), got {c2w.shape}")
        actions = torch.from_numpy(self.encoder.frame_actions(keys, mouse))
        self.gen.reset(self._encode(frames)[None], actions[None], torch.from_numpy(c2w)[None])
        self.state = CameraState.from_c2w(c2w[-1])
        self.chunk_c2w = c2w[-1:].copy()
        self.rng = torch.Generator().manual_seed(self.seed if seed is None else seed)
        self.steps = 0

    def step(self, keys: np.ndarray, mouse: np.ndarray) -> np.ndarray:
        """``k = chunk_frames`` raw inputs ``(k, K)``, ``(k, 2)`` -> the frames they produce ``(k, H, W, 3)``."""
        if self.state is None:
            raise WorldsimError("the engine has no session yet: call reset() first")
        keys, mouse = self._check_inputs(keys, mouse, self.chunk_frames)
        # Step 1: poses from the controller, actions from the encoder (frame i <- input i).
        state, poses = self.state, []
        for i in range(self.chunk_frames):
            state = self.controller.step(state, keys[i], mouse[i])
            poses.append(state.c2w())
        actions = torch.from_numpy(self.encoder.encode_batch(keys, mouse))[None]
        c2w = torch.from_numpy(np.stack(poses))[None]
        # Step 2: generate the chunk's latents, then decode them.
        t0 = time.perf_counter()
        with self.amp:
            z = self.gen.step(actions, c2w, self.rng)
        t1 = time.perf_counter()
        frames = self._decode(z[0])
        self.timings = ChunkTimings(model_s=t1 - t0, decode_s=time.perf_counter() - t1)
        self.chunk_c2w = np.stack(poses)
        self.state = state
        self.steps += self.chunk_frames
        return frames

    # -- session save / restore --------------------------------------------------------------
    def save_session(self, path: str | Path) -> None:
        """Context, pose, RNG and step count, as ``session.safetensors`` + ``session.json``."""
        if self.state is None or self.gen.history is None:
            raise WorldsimError("nothing to save: call reset() first")
        out = Path(path)
        out.mkdir(parents=True, exist_ok=True)
        h = self.gen.history
        tensors = {"latents": h.latents, "actions": h.actions, "c2w": h.c2w, "rng": self.rng.get_state()}
        save_file({k: v.contiguous() for k, v in tensors.items()}, str(out / "session.safetensors"))
        meta: dict[str, Any] = {
            "version": SESSION_VERSION,
            "checkpoint": self.fingerprint,
            "sampler": asdict(self.sampler_cfg),
            "steps": self.steps,
            "position": self.state.position.tolist(),
            "yaw_rad": self.state.yaw_rad,
            "pitch_rad": self.state.pitch_rad,
        }
        (out / "session.json").write_text(json.dumps(meta, indent=2))

    def load_session(self, path: str | Path) -> None:
        root = Path(path)
        if not (root / "session.json").is_file() or not (root / "session.safetensors").is_file():
            raise WorldsimError(f"{root} is not a saved session (needs session.json and session.safetensors)")
        meta = json.loads((root / "session.json").read_text())
        if meta.get("version") != SESSION_VERSION:
            raise WorldsimError(f"{root}: session format {meta.get('version')}, this worldsim reads {SESSION_VERSION}")
        if meta["checkpoint"] != self.fingerprint:
            raise WorldsimError(f"{root} was saved with another checkpoint; load it with the one it came from")
        t = load_file(str(root / "session.safetensors"))
        self.gen.history = History(t["latents"], t["actions"], t["c2w"])
        self.rng = torch.Generator()
        self.rng.set_state(t["rng"])
        self.steps = int(meta["steps"])
        self.state = CameraState(
            np.array(meta["position"], np.float64), float(meta["yaw_rad"]), float(meta["pitch_rad"])
        )

    # -- starts ------------------------------------------------------------------------------
    def reset_from_world(self, seed: int, env: str = "builtin", gl_context: Any = None) -> np.ndarray:
        """Start from ground truth of a seeded world: the spawn view held still for the context."""
        from envs import make_env

        world = make_env(env, seed=seed, frame_size=self.frame_size, gl_context=gl_context)
        try:
            if list(world.key_names) != self.key_names:
                raise WorldsimError(f"world {env!r} has keys {world.key_names}, the checkpoint {self.key_names}")
            n = self.context_frames
            keys = np.zeros((n, len(self.key_names)), np.uint8)
            mouse = np.zeros((n, 2), np.float32)
            obs = [world.reset()] + [world.step(keys[i], mouse[i]) for i in range(n - 1)]
        finally:
            world.close()
        frames = np.stack([o.frame for o in obs])
        self.reset(frames, np.stack([o.c2w for o in obs]), keys, mouse)
        return frames

    def reset_from_episode(self, dataset: str | Path, episode: int = 0, start: int = 0) -> np.ndarray:
        """Start from frames ``[start, start + context)`` of a recorded episode."""
        from worldsim.data.reader import RolloutDataset

        ds = RolloutDataset(dataset)
        ds.require_nonempty()
        if not 0 <= episode < len(ds):
            raise WorldsimError(f"{dataset} has episodes 0..{len(ds) - 1}, not {episode}")
        if list(ds.meta.key_names) != self.key_names:
            raise WorldsimError(f"{dataset} records keys {ds.meta.key_names}, the checkpoint {self.key_names}")
        if tuple(ds.meta.frame_size) != self.frame_size:
            raise WorldsimError(f"{dataset} has {tuple(ds.meta.frame_size)} frames, the checkpoint {self.frame_size}")
        a = ds.load_slice(episode, start, start + self.context_frames, ("frames", "c2w", "keys", "mouse"))
        if len(a["frames"]) < self.chunk_frames:
            raise WorldsimError(f"episode {episode} of {dataset} has too few frames after {start} for a context")
        self.reset(a["frames"], a["c2w"], a["keys"], a["mouse"])
        return a["frames"]


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
    **rest: Any,
) -> Engine:
    """An :class:`Engine` from a checkpoint folder (``config.json``, ``model.safetensors``, ``codec.safetensors``).

    ``sampler`` changes the checkpoint's own sampler settings field by field (None keeps them all);
    ``bf16``: autocast on or off, None = on where ``device`` computes bf16 natively
    (:func:`worldsim.core.precision.resolve_bf16`). The camera controller (speeds, fps) is the
    checkpoint's, so an input moves the camera as it did in the training data; any other keyword
    goes to :class:`Engine` unchanged."""
    if device != "cpu":  # generation builds its tensors on the CPU; refuse rather than fail mid-chunk
        raise WorldsimError(f"the engine runs on the CPU only for now (device={device!r} asked); use device='cpu'")
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
        **rest,
    )
