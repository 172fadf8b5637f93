"""Writes the golden rollouts that pin the shipped teacher's output (issue 19, "outputs unchanged").

For two world seeds and two scripted policies (explore, look_around) it renders the ground-truth
start (the spawn view held still for the checkpoint's context), draws 64 frames of raw inputs,
and generates them with the shipped teacher at its own sampler settings, in fp32, engine seed 0.
Everything the test needs is stored (start frames and poses, inputs, generated frames), so the
test replays it through today's engine without the world or the policies:

    .venv/bin/python tools/golden_rollouts.py --out tests/golden/teacher_v1_rollouts.npz

The file also records the machine it was made on (torch version and the CPU's matmul ISA).
Bit-identity holds on the same kind of machine; elsewhere fp32 kernels differ in the last bits
and the test compares with a tolerance instead (tests/test_golden.py).
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

SEEDS = (3, 11)
POLICIES = ("explore", "look_around")
FRAMES = 64
CHECKPOINT = ROOT / "assets" / "teacher_builtin_v1"


def machine_key() -> str:
    """torch version and the CPU flags that pick fp32 matmul kernels (oneDNN / MKL paths)."""
    flags: set[str] = set()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("flags"):
                flags = set(line.split(":", 1)[1].split())
                break
    except OSError:
        pass
    isa = [f for f in ("avx2", "fma", "avx512f", "avx512_bf16", "amx_tile", "amx_bf16") if f in flags]
    return f"torch {torch.__version__}; {'+'.join(isa) or 'unknown'}; threads {torch.get_num_threads()}"


def _imports():  # the layout moved in issue 19; support both sides so the file is made on old main
    try:
        from worldsim import load_engine
        from worldsim.core.controller import CameraControllerConfig
        from worldsim.data.policies import make_policy
    except ImportError:
        from worldsim import load_engine
        from worldsim.controller import CameraControllerConfig  # type: ignore[no-redef]
        from worldsim.policies import make_policy  # type: ignore[no-redef]
    from envs import make_env

    return load_engine, CameraControllerConfig, make_policy, make_env


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--out", default=str(ROOT / "tests" / "golden" / "teacher_v1_rollouts.npz"))
    args = ap.parse_args()
    load_engine, CameraControllerConfig, make_policy, make_env = _imports()
    engine = load_engine(CHECKPOINT, bf16=False)
    n, k = engine.context_frames, engine.chunk_frames
    arrays: dict[str, np.ndarray] = {}
    for seed in SEEDS:
        world = make_env("builtin", seed=seed, frame_size=engine.frame_size)
        still_k = np.zeros((n, len(engine.key_names)), np.uint8)
        still_m = np.zeros((n, 2), np.float32)
        obs = [world.reset()] + [world.step(still_k[i], still_m[i]) for i in range(n - 1)]
        world.close()
        start = np.stack([o.frame for o in obs])
        start_c2w = np.stack([o.c2w for o in obs]).astype(np.float32)
        for policy in POLICIES:
            a = make_policy(policy, engine.key_names, CameraControllerConfig()).actions(
                FRAMES, np.random.default_rng(seed)
            )
            engine.reset(start, start_c2w, still_k, still_m)
            out = []
            for s in range(0, FRAMES, k):
                res = engine.step(a.keys[s : s + k], a.mouse[s : s + k])
                out.append(getattr(res, "frames", res))
            name = f"seed{seed}_{policy}"
            arrays[f"{name}/start_frames"] = start
            arrays[f"{name}/start_c2w"] = start_c2w
            arrays[f"{name}/keys"] = a.keys
            arrays[f"{name}/mouse"] = a.mouse
            arrays[f"{name}/frames"] = np.concatenate(out)
            print(f"{name}: {FRAMES} frames, mean {arrays[name + '/frames'].mean():.2f}")
    arrays["machine"] = np.array(machine_key())
    out_path = Path(args.out)
    out_path.parent.mkdir(parents=True, exist_ok=True)
    tmp = out_path.with_suffix(".tmp.npz")
    np.savez_compressed(tmp, **arrays)
    os.replace(tmp, out_path)
    print(f"wrote {out_path} ({out_path.stat().st_size / 1e6:.1f} MB); machine: {arrays['machine']}")


if __name__ == "__main__":
    main()
