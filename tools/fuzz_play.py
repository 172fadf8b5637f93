"""Fuzz play.py with random real X events under Xvfb, then check nothing broke.

    python tools/fuzz_play.py --seconds 600                     # the full fuzz: 10 minutes
    python tools/fuzz_play.py --seconds 20 --checkpoint=        # the ground-truth world instead of a model
    python tools/fuzz_play.py --seconds 15 --checkpoint DIR --out runs/fuzz --seed 3

Starts its own Xvfb (``--display``), runs ``play.py record=<out>/rec loop.screenshot_dir=<out>/shots``
and sends, from a seeded random stream: game keys pressed and released (single taps and holds,
several at once), mouse bursts, left clicks inside the window (which capture the mouse again), focus lost and found
(the window unmapped and mapped again), P (pause), F5 (reset), F9 (recording off and on), F12
(screenshots), F1 (help), F3 (HUD) and single Esc presses between clicks (mouse released, then
captured again; an Esc with the mouse released quits, by design). At the end a click and two Esc
quit.
It fails (exit code 1, with the reason) when play.py exits early or non-zero, prints a
traceback, or leaves a recording or a screenshot that cannot be read back; on success it prints
what it sent and what it found.
"""

from __future__ import annotations

import argparse
import random
import shutil
import subprocess
import sys
import time
from collections import Counter, deque
from pathlib import Path

from xplay import start, stop, xdo

GAME_KEYS = ["w", "a", "s", "d", "space", "shift", "l"]  # xdotool names of the default bindings
COMMANDS = ["p", "F5", "F9", "F12", "F1", "F3"]


def _click(display: str, win: str) -> None:
    """A left click inside the window (where the pointer is may be outside it once released)."""
    xdo(display, "mousemove", "--window", win, "40", "40")
    xdo(display, "click", "1")


def fuzz(seconds: float, checkpoint: str, out: Path, seed: int, display: str) -> dict[str, object]:
    """Run the fuzz (module docstring) -> what was sent and found; ``RuntimeError`` on a failure."""
    if out.exists():
        shutil.rmtree(out)
    rec, shots = out / "rec", out / "shots"
    xvfb, play, win = start(display, [f"checkpoint={checkpoint}", f"record={rec}", f"loop.screenshot_dir={shots}"])
    rng = random.Random(seed)
    sent: Counter[str] = Counter()
    held: set[str] = set()
    recent: deque[str] = deque(maxlen=8)  # the last events sent, for a failure's message
    try:
        end = time.perf_counter() + seconds
        while time.perf_counter() < end:
            if play.poll() is not None:
                out, err = play.communicate()
                raise RuntimeError(
                    f"play.py exited early with code {play.returncode} after {', '.join(recent)}\n"
                    f"{out[-1500:]}{err[-1500:]}"
                )
            r = rng.random()
            if r < 0.45:  # game keys: press one, or release one that is held
                key = rng.choice(GAME_KEYS)
                if key in held:
                    xdo(display, "keyup", key)
                    held.discard(key)
                else:
                    xdo(display, "keydown", key)
                    held.add(key)
                kind = f"game key {key}"
            elif r < 0.7:  # a mouse burst
                for _ in range(rng.randint(1, 8)):
                    xdo(display, "mousemove_relative", "--", str(rng.randint(-40, 40)), str(rng.randint(-20, 20)))
                kind = "mouse burst"
            elif r < 0.76:
                _click(display, win)  # captures the mouse again after an Esc or a focus loss
                kind = "click"
            elif r < 0.8:
                xdo(display, "windowunmap", "--sync", win)
                time.sleep(rng.uniform(0.05, 0.5))
                xdo(display, "windowmap", "--sync", win)
                xdo(display, "windowfocus", "--sync", win)
                kind = "focus lost and found"
            elif r < 0.83:
                # Esc releases a captured mouse (Esc with it released quits: a click captures it first)
                # The loop must have polled the click before the Esc arrives (it polls every tick).
                _click(display, win)
                time.sleep(0.3)
                xdo(display, "key", "Escape")
                time.sleep(0.3)
                _click(display, win)
                kind = "Esc"
            else:
                key = rng.choice(COMMANDS)
                xdo(display, "key", key)
                kind = key
            sent["game key" if kind.startswith("game key") else kind] += 1
            recent.append(kind)
            time.sleep(rng.uniform(0.0, 0.15))
        for key in held:
            xdo(display, "keyup", key)
        _click(display, win)
        time.sleep(0.3)
        xdo(display, "key", "Escape")
        time.sleep(0.3)
        xdo(display, "key", "Escape")
        try:
            _, err = play.communicate(timeout=60)
        except subprocess.TimeoutExpired:
            raise RuntimeError("play.py did not quit on Esc Esc within 60 s") from None
    finally:
        stop(xvfb, play)
    if play.returncode != 0 or "Traceback" in err:
        raise RuntimeError(f"play.py exited with code {play.returncode}:\n{err[-3000:]}")
    from worldsim.data.reader import RolloutDataset

    data = RolloutDataset(rec)
    frames = 0
    for i in range(len(data)):
        frames += len(data.load(i)["frames"])  # every episode reads back whole
    import imageio.v3 as iio

    pngs = sorted(shots.glob("*.png")) if shots.exists() else []
    for png in pngs:
        iio.imread(png)
    return {"sent": dict(sent), "episodes": len(data), "recorded_frames": frames, "screenshots": len(pngs)}


def main() -> None:
    """Command line (module docstring)."""
    from worldsim.core.config import DEFAULT_CHECKPOINT

    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--seconds", type=float, default=600.0, help="how long to send events")
    p.add_argument("--checkpoint", default=DEFAULT_CHECKPOINT, help="what play.py plays (empty: the world)")
    p.add_argument("--out", default="runs/fuzz", help="recording and screenshots (replaced)")
    p.add_argument("--seed", type=int, default=0, help="seed of the event stream")
    p.add_argument("--display", default=":93", help="the Xvfb display to start")
    a = p.parse_args()
    try:
        res = fuzz(a.seconds, a.checkpoint, Path(a.out), a.seed, a.display)
    except RuntimeError as e:
        print(f"fuzz failed: {e}", file=sys.stderr)
        sys.exit(1)
    sent = ", ".join(f"{k} {v}" for k, v in sorted(res["sent"].items()))  # type: ignore[union-attr]
    print(f"fuzz ok: {a.seconds:.0f} s, sent {sent}")
    print(
        f"recording: {res['episodes']} episodes, {res['recorded_frames']} frames read back; "
        f"{res['screenshots']} screenshots read back"
    )


if __name__ == "__main__":
    main()
