"""How well a scripted policy comes back to its first view, in any world: records episodes with
``worldsim-record``'s own code and prints, per episode, how far it went, how far from the start
it ended (in the ground plane), how far its heading ended from the start heading, and the PSNR of
the last frame against the first (a revisit's view overlaps the first).

    python tools/revisit_check.py --env doom --policies go_and_return retrace     # needs worldsim[doom]
    python tools/revisit_check.py --env builtin --frames 120

Episodes go to a temporary folder (``--out`` keeps them).
"""

from __future__ import annotations

import argparse
import tempfile
from pathlib import Path

import numpy as np

from envs.record import RecordConfig, record
from worldsim.data.metrics import psnr


def main() -> None:
    """Parse the options, record, print one line per episode and a mean per policy."""
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--env", default="builtin")
    p.add_argument("--policies", nargs="+", default=["go_and_return", "retrace"])
    p.add_argument("--episodes", type=int, default=4)
    p.add_argument("--frames", type=int, default=160)
    p.add_argument("--out", default=None, help="keep the recorded datasets here")
    a = p.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(a.out or tmp)
        for name in a.policies:
            out = str(root / name)
            cfg = RecordConfig(env=a.env, policy=name, num_episodes=a.episodes, episode_len=a.frames, out=out)
            cfg.preview = False
            data = record(cfg)
            scores = []
            for i in range(a.episodes):
                ep = data.load(i)
                first, last = ep["c2w"][0], ep["c2w"][-1]
                far = float(np.linalg.norm(ep["c2w"][:, :2, 3] - first[:2, 3], axis=1).max())
                off = float(np.linalg.norm(last[:2, 3] - first[:2, 3]))
                turn = float(np.degrees(np.arccos(np.clip(last[:3, 2] @ first[:3, 2], -1.0, 1.0))))
                view = float(psnr(ep["frames"][-1:], ep["frames"][:1])[0])
                scores.append((off, turn, view))
                print(
                    f"{name:14s} world {cfg.seed + i}: farthest {far:5.1f} m, ends {off:4.2f} m from the start, "
                    f"heading {turn:5.1f} deg off, last vs first frame {view:5.1f} dB"
                )
            m = np.mean(scores, axis=0)
            print(f"{name:14s} mean: {m[0]:.2f} m, {m[1]:.1f} deg, {m[2]:.1f} dB")


if __name__ == "__main__":
    main()
