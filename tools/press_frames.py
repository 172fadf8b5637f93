"""The frame means behind the evaluation's light-press counts: for one press length, the runs of
``worldsim.eval.stability.presses`` (two presses of the light key ``PRESS_GAP`` frames apart, at
every phase of the chunk, from the still day spawn of each world), printed frame by frame as mean
pixel value (0-255), the last context frame first (a turn on the first generated frame is a turn
from it), generated above truth, with the light turns each side makes (a frame mean
crossing ``DARK_MEAN``). Shows whether extra turns are a second toggle or a single bright frame.

    .venv/bin/python tools/press_frames.py [checkpoint] [--length 8] [--steps N] [--seeds 3] [--memory]
        [--across-press auto|on|off]
"""

from __future__ import annotations

import argparse

import numpy as np

from worldsim import load_engine
from worldsim.core.config import DEFAULT_CHECKPOINT
from worldsim.core.errors import clean_errors
from worldsim.data.metrics import frame_means
from worldsim.diffusion.sampler import SamplerOverrides
from worldsim.eval.ground_truth import DARK_MEAN, rollout_against, world_rollout
from worldsim.eval.stability import LIGHT_KEY, PRESS_GAP, StabilityConfig, light_turns, press_keys
from worldsim.inference.checkpoint import read_checkpoint_config
from worldsim.memory.bank import MemoryConfig


@clean_errors
def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("checkpoint", nargs="?", default=DEFAULT_CHECKPOINT)
    parser.add_argument("--length", type=int, default=8, help="frames the light key is held per press")
    parser.add_argument("--steps", type=int, default=0, help="sampler steps (0: the checkpoint's own)")
    parser.add_argument("--seeds", type=int, default=StabilityConfig.starts, help="worlds from the evaluation's first")
    parser.add_argument("--memory", action="store_true", help="the memory bank on (as play.py plays a model)")
    parser.add_argument(
        "--across-press",
        choices=("auto", "on", "off"),
        default="auto",
        help="with --memory, MemoryConfig.retrieve_across_press: on, retrieve while the window holds a "
        "light press (the only rule before 2026-12-04); off, not; auto, as the checkpoint was trained",
    )
    args = parser.parse_args()
    if args.length < 1 or args.steps < 0 or args.seeds < 1:
        parser.error("--length and --seeds must be at least 1, --steps not negative")
    if args.across_press != "auto" and not args.memory:
        parser.error("--across-press needs --memory")
    own = read_checkpoint_config(args.checkpoint).sampler
    sampler = own.at_steps(args.steps) if args.steps else SamplerOverrides()
    memory = "on" if args.memory else "off"
    across = {"auto": None, "on": True, "off": False}[args.across_press]
    bank = MemoryConfig(retrieve_across_press=across) if args.memory else "off"
    engine = load_engine(args.checkpoint, bf16=False, sampler=sampler, memory=bank)
    n, k = engine.context_frames, engine.chunk_frames
    steps = engine.sampler_cfg.num_steps
    rule = f" (retrieve_across_press {engine.memory_cfg.retrieve_across_press})" if engine.memory_cfg else ""
    print(f"{args.checkpoint}, {steps} step(s), memory {memory}{rule};")
    print(f"light key '{LIGHT_KEY}' held {args.length} frames,", end=" ")
    print(f"twice, {PRESS_GAP} frames apart; a frame mean below {DARK_MEAN:g} is night")
    turns = {"generated": 0, "truth": 0}
    for seed in range(StabilityConfig.seed0, StabilityConfig.seed0 + args.seeds):
        for phase in range(k):
            keys, horizon = press_keys(engine, args.length, phase)
            arrays = world_rollout(engine, seed, keys, np.zeros((len(keys), 2), np.float32))  # a still mouse
            gen, gt = rollout_against(engine, arrays, horizon)
            for name, frames in (("generated", gen), ("truth", gt)):
                t = light_turns(frames, arrays, n)
                turns[name] += t
                ctx = frame_means(arrays["frames"][n - 1 : n])[0]
                means = " ".join(f"{m:3.0f}" for m in frame_means(frames))
                print(f"world {seed} phase {phase} {name:9s} turns {t:2d}: {ctx:3.0f} | {means}")
    print(f"light turns: generated {turns['generated']}, truth {turns['truth']}")


if __name__ == "__main__":
    main()
