"""Key-down to visible change, measured on the screen: play.py under Xvfb, real key events from
xdotool, the window captured continuously from the X server.

    python tools/latency_on_screen.py                                # the default model, 30 presses
    python tools/latency_on_screen.py --checkpoint= --presses 10     # the ground-truth world
    python tools/latency_on_screen.py --checkpoint assets/teacher_builtin_v2 --out runs/screen.json

Starts its own Xvfb (``--display``) and ``play.py`` (HUD hidden with F3, so only the game view
changes), then a capture thread grabs the window (``mss``: XGetImage) as fast as it can and keeps
each grab's time and mean brightness, and whether it differs from the grab before it. Every
``--interval`` seconds (jittered) it presses the light key ``l`` (key-down, then key-up 100 ms
later) and reports, per press, the time from just before the key-down to the first grab whose
mean brightness left the level held before the press by more than ``--threshold`` of it (day and
night differ by far more) while the grab before it had not. Printed and written to ``--out``:
latency p50 / p95 / max over the presses seen, the presses whose change never came (within
``--timeout`` seconds), the grab rate, and the new frames per second on the screen (grabs that
differ from the previous grab, over the whole run), and how much of it is drawing: play.py's own
measure of the time its window takes to show a new frame (texture upload, scaled draw, HUD, buffer
swap; llvmpipe draws on the same cores under Xvfb), read from the summary play.py prints when it
quits. Run it on an otherwise idle machine: it times what the player sees.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import re
import sys
import threading
import time
from pathlib import Path

import numpy as np
from xplay import start, stop, xdo


class Capture(threading.Thread):
    """Grabs ``region`` of the X screen in a loop: ``(time, mean brightness, changed)`` per grab."""

    def __init__(self, display: str, region: dict[str, int]):
        super().__init__(daemon=True)
        self.display, self.region = display, region
        self.grabs: list[tuple[float, float, bool]] = []
        self.stop = threading.Event()

    def run(self) -> None:
        import mss

        os.environ["DISPLAY"] = self.display
        last = None
        factory = getattr(mss, "MSS", None) or mss.mss  # mss 10.2 renamed the class
        with factory(display=self.display) as sct:
            while not self.stop.is_set():
                t0 = time.perf_counter()
                img = np.asarray(sct.grab(self.region))[..., :3]
                t = 0.5 * (t0 + time.perf_counter())  # the image is from somewhere inside the grab
                changed = last is not None and not np.array_equal(img, last)
                self.grabs.append((t, float(img.mean()), changed))
                last = img

    def since(self, t: float) -> list[tuple[float, float, bool]]:
        """The grabs after time ``t``."""
        return [g for g in list(self.grabs) if g[0] > t]


def _transition(grabs: list[tuple[float, float, bool]], t0: float, level: float, tol: float) -> float | None:
    """The time of the first grab after ``t0`` whose brightness is off ``level`` by more than
    ``tol`` while the grab before it was still at the level: the change happened after ``t0``."""
    for (_, prev, _), (t, m, _) in zip(grabs, grabs[1:], strict=False):
        if t > t0 and abs(m - level) > tol and abs(prev - level) <= tol:
            return t
    return None


def measure(
    checkpoint: str, presses: int, interval: float, threshold: float, timeout: float, display: str, seed: int
) -> dict[str, object]:
    """Run the measurement of the module docstring -> its numbers; ``RuntimeError`` on a failure."""
    xvfb, play, win = start(display, [f"checkpoint={checkpoint}"])
    rng = random.Random(seed)
    capture = None
    try:
        geo = dict(
            line.split("=") for line in xdo(display, "getwindowgeometry", "--shell", win).stdout.split() if "=" in line
        )
        region = {"left": int(geo["X"]), "top": int(geo["Y"]), "width": int(geo["WIDTH"]), "height": int(geo["HEIGHT"])}
        xdo(display, "key", "F3")  # hide the HUD: only the game view changes
        capture = Capture(display, region)
        capture.start()
        time.sleep(max(3.0, interval))  # the first frames, the start-up
        t_begin = time.perf_counter()
        latencies, missed = [], 0
        for _ in range(presses):
            time.sleep(interval * rng.uniform(0.8, 1.2))
            if play.poll() is not None:
                raise RuntimeError(f"play.py exited with code {play.returncode}: {play.stderr.read()[-2000:]}")
            before = [m for t, m, _ in capture.since(time.perf_counter() - 0.3)]
            level = float(np.median(before)) if before else float("nan")
            t0 = time.perf_counter()
            xdo(display, "keydown", "l")
            time.sleep(0.1)
            xdo(display, "keyup", "l")
            seen = None
            while seen is None and time.perf_counter() < t0 + timeout:
                seen = _transition(capture.since(t0 - 0.05), t0, level, threshold * max(level, 1.0))
                time.sleep(0.005)
            if seen is None:
                missed += 1
            else:
                latencies.append(seen - t0)
        t_end = time.perf_counter()
        xdo(display, "key", "Escape")
        time.sleep(0.3)
        xdo(display, "key", "Escape")
        summary, _ = play.communicate(timeout=60)
    finally:
        if capture is not None:
            capture.stop.set()
            capture.join(5)
        stop(xvfb, play)
    drawn = re.search(r"drawing a frame p50 ([\d.]+) ms p95 ([\d.]+) ms", summary)
    if drawn is None:
        raise RuntimeError(f"play.py printed no drawing times: {summary[-500:]!r}")
    grabs = [g for g in capture.grabs if t_begin <= g[0] <= t_end] if capture else []
    span = t_end - t_begin
    lat = np.array(latencies) * 1000 if latencies else np.array([np.nan])
    return {
        "checkpoint": checkpoint,
        "presses": presses,
        "seen": len(latencies),
        "missed": missed,
        "latency_p50_ms": float(np.percentile(lat, 50)),
        "latency_p95_ms": float(np.percentile(lat, 95)),
        "latency_max_ms": float(np.max(lat)),
        "latencies_ms": [round(x, 1) for x in lat.tolist()] if latencies else [],
        "grabs_per_s": len(grabs) / span,
        "new_frames_per_s_on_screen": sum(c for _, _, c in grabs) / span,
        "draw_ms_p50": float(drawn.group(1)),
        "draw_ms_p95": float(drawn.group(2)),
    }


def main() -> None:
    """Command line (module docstring)."""
    from worldsim.core.config import DEFAULT_CHECKPOINT

    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--checkpoint", default=DEFAULT_CHECKPOINT, help="what play.py plays (empty: the world)")
    p.add_argument("--presses", type=int, default=30, help="light-key presses timed")
    p.add_argument("--interval", type=float, default=3.0, help="seconds between presses (jittered 20%%)")
    p.add_argument("--threshold", type=float, default=0.25, help="brightness change that counts, share of the level")
    p.add_argument("--timeout", type=float, default=5.0, help="seconds after which a press counts as missed")
    p.add_argument("--display", default=":94", help="the Xvfb display to start")
    p.add_argument("--seed", type=int, default=0, help="seed of the jitter")
    p.add_argument("--out", default="", help="write the numbers as JSON here too")
    a = p.parse_args()
    try:
        res = measure(a.checkpoint, a.presses, a.interval, a.threshold, a.timeout, a.display, a.seed)
    except RuntimeError as e:
        print(f"measurement failed: {e}", file=sys.stderr)
        sys.exit(1)
    print(
        "on screen: key-down -> visible change "
        f"p50 {res['latency_p50_ms']:.0f} ms, p95 {res['latency_p95_ms']:.0f} ms, "
        f"max {res['latency_max_ms']:.0f} ms over {res['seen']} of {res['presses']} presses ({res['missed']} missed); "
        f"{res['new_frames_per_s_on_screen']:.1f} new frames/s on screen, {res['grabs_per_s']:.0f} grabs/s; "
        f"drawing a frame p50 {res['draw_ms_p50']:.1f} ms, p95 {res['draw_ms_p95']:.1f} ms"
    )
    if a.out:
        from worldsim.core.atomic import write_text

        Path(a.out).parent.mkdir(parents=True, exist_ok=True)
        write_text(a.out, json.dumps(res, indent=2))


if __name__ == "__main__":
    main()
