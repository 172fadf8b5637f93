"""How closely a camera controller predicts DOOM's own poses: drives DOOM with a scripted policy
(``envs.record.rollout``, what the recorder runs), then from every recorded frame starts the
controller with the velocity of the step before it (``CameraController.settle``, what the engine
does at ``reset``) and integrates the next ``--chunk`` frames' inputs. Prints the position error
in the ground plane against the game's pose for DOOM's controller (``DoomConfig.controller()``:
momentum) and for the same controller without momentum (today's built-in motion at DOOM's speed).
Walls and steps, which no controller sees, make the remaining error.

    python tools/doom_controller_check.py --episodes 6 --frames 96       # needs worldsim[doom]
"""

from __future__ import annotations

import argparse
from dataclasses import replace

import numpy as np

from envs.builtin import KEY_NAMES
from envs.doom import DoomConfig
from envs.record import rollout
from worldsim.core.controller import CameraController
from worldsim.data.policies import make_policy


def main() -> None:
    """Parse the options, drive DOOM, print one line per controller."""
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--policy", default="explore")
    p.add_argument("--episodes", type=int, default=6)
    p.add_argument("--frames", type=int, default=96)
    p.add_argument("--chunk", type=int, default=2, help="frames integrated from each start")
    args = p.parse_args()
    doom = DoomConfig()
    controllers = {"momentum": doom.controller(), "no momentum": replace(doom.controller(), momentum=0.0)}
    errors: dict[str, list[float]] = {name: [] for name in controllers}
    moved: list[float] = []
    for seed in range(args.episodes):
        policy = make_policy(args.policy, KEY_NAMES, doom.controller())
        acts = policy.actions(args.frames, np.random.default_rng(seed))
        c2w = rollout("doom", seed, (64, 64), doom, acts.keys, acts.mouse, save_depth=False)["c2w"].astype(np.float64)
        for t in range(1, len(c2w) - args.chunk):
            moved.append(float(np.linalg.norm(c2w[t + args.chunk, :2, 3] - c2w[t, :2, 3])))
            for name, cfg in controllers.items():
                ctrl = CameraController(cfg, KEY_NAMES)
                state = ctrl.settle(c2w[t - 1], c2w[t], acts.keys[t - 1], acts.mouse[t - 1])
                for j in range(args.chunk):
                    state = ctrl.step(state, acts.keys[t + j], acts.mouse[t + j])
                errors[name].append(float(np.linalg.norm(state.position[:2] - c2w[t + args.chunk, :2, 3])))
    print(
        f"{args.episodes} episodes of {args.policy}, {len(moved)} starts; the game moved {np.mean(moved):.3f} m "
        f"on average in {args.chunk} frames"
    )
    for name, e in errors.items():
        a = np.asarray(e)
        print(
            f"{name:12s} position error after {args.chunk} frames: mean {a.mean():.3f} m, median {np.median(a):.3f} m, "
            f"p90 {np.quantile(a, 0.9):.3f} m"
        )


if __name__ == "__main__":
    main()
