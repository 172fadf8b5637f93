"""How far a long play session's camera leaves the range training covers, for each fixed ray
reference (issue 20: the real-time teacher's conditioning chosen by measurement).

Plücker rays (reference.md §4) carry the camera relative to a reference pose; with a fixed
translation scale, the ray moment grows with the reference-relative translation. A conditioning
whose references stay within the translations (and turns) of the training clips keeps the network
inside what it learned, however long the session. This prints, for ``session`` (every frame
relative to the session's first pose) and ``chunk`` (each chunk relative to the frame before it):
the reference-relative translation and rotation over every training clip frame (the references
``ClipSampler`` gives), and the share of a long scripted play session's frames that fall beyond
the training maximum, after 500, 1,000 and the whole session.

    .venv/bin/python tools/ray_coverage.py --data data/builtin_v5/train --frames 2000
"""

from __future__ import annotations

import argparse

import numpy as np

from worldsim.core.controller import CameraController, CameraControllerConfig, CameraState
from worldsim.data.frames import open_datasets
from worldsim.data.policies import make_policy


def relative(c2w: np.ndarray, ref: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Translation norm (m) and rotation angle (deg) of each pose ``c2w (T,4,4)`` relative to its
    reference ``ref (T,4,4)``."""
    rel = np.linalg.inv(ref) @ c2w
    cos = np.clip((np.trace(rel[:, :3, :3], axis1=1, axis2=2) - 1) / 2, -1.0, 1.0)
    return np.linalg.norm(rel[:, :3, 3], axis=-1), np.degrees(np.arccos(cos))


def reference_index(t: int, k: int, reference: str) -> np.ndarray:
    """The frame each of ``t`` frames counted from the session's (episode's) first is relative to."""
    f = np.arange(t)
    return np.zeros(t, int) if reference == "session" else np.maximum(f - f % k - 1, 0)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--data", default="data/builtin_v5/train", help="training episodes (a recipe's train folder)")
    ap.add_argument("--frames", type=int, default=2000, help="frames of the scripted play session")
    ap.add_argument("--policy", default="explore", help="the play session's scripted policy")
    ap.add_argument("--chunk-frames", type=int, default=2)
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()
    sets = open_datasets(args.data)
    keys = list(sets[0].meta.key_names)
    episodes = [ds.load(i, ("c2w",))["c2w"].astype(np.float64) for ds in sets for i in range(len(ds))]
    controller_cfg = CameraControllerConfig()
    actions = make_policy(args.policy, keys, controller_cfg).actions(args.frames, np.random.default_rng(args.seed))
    controller, state, play = CameraController(controller_cfg, keys), CameraState(), []
    for i in range(args.frames):
        state = controller.step(state, actions.keys[i], actions.mouse[i])
        play.append(state.c2w())
    play_c2w = np.stack(play)
    frames = sum(len(e) for e in episodes)
    print(f"training: {len(episodes)} episodes, {frames} frames; play: {args.policy}, {args.frames} frames")
    for reference in ("session", "chunk"):
        tr = [relative(e, e[reference_index(len(e), args.chunk_frames, reference)]) for e in episodes]
        t_train, r_train = np.concatenate([a for a, _ in tr]), np.concatenate([b for _, b in tr])
        t_play, r_play = relative(play_c2w, play_c2w[reference_index(args.frames, args.chunk_frames, reference)])
        tol = 1e-4  # the same step of the same controller, up to float32 rounding far from the origin
        beyond = (t_play > t_train.max() + tol) | (r_play > r_train.max() + tol)
        shares = ", ".join(
            f"{100 * beyond[:n].mean():.1f}% of the first {n}" for n in (500, 1000, args.frames) if n <= args.frames
        )
        print(
            f"{reference:8s} training: translation p99 {np.percentile(t_train, 99):6.2f} m, max {t_train.max():6.2f} m;"
            f" rotation p99 {np.percentile(r_train, 99):6.1f} deg, max {r_train.max():6.1f} deg\n"
            f"{'':8s} play: translation max {t_play.max():7.2f} m, rotation max {r_play.max():6.1f} deg;"
            f" beyond the training maximum: {shares}"
        )


if __name__ == "__main__":
    main()
