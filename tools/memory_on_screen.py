"""The memory bank as a player sees it: play.py under Xvfb, real key and mouse events from xdotool.

    python tools/memory_on_screen.py --checkpoint assets/teacher_builtin_v2 --out runs/memory_screen

For memory ``off`` and then ``on``, from the same world start (``--seed``): hide the HUD (F3),
grab the window (the outbound view), walk forward for ``--walk`` seconds, turn 180 degrees,
walk back as long, show the HUD for a grab half way back (its memory line), turn 180 degrees
again, wait ``--settle`` seconds for generation to catch up, and grab the window again (the
return view). Printed and written to ``--out`` (``memory_screen.json`` and the PNGs
``<mode>_outbound.png``, ``<mode>_hud.png``, ``<mode>_return.png``): per mode, the PSNR of the
return view to the outbound view and the chunks with memory hits play.py reports when it quits.
The walk is real time: how far it goes depends on how fast the model generates (inputs polled
while a chunk is generated fold into it, turns add up, held keys count once), so the return is
near the start, not on it. Run it on an otherwise idle machine.
"""

from __future__ import annotations

import argparse
import json
import re
import sys
import time
from pathlib import Path

import numpy as np
from xplay import start, stop, xdo

TURN_PX = 720  # 180 degrees at the controller's 0.25 degrees per pixel
TURN_STEPS = 12


def _grab(display: str, win: str) -> np.ndarray:
    """The window's pixels ``(H, W, 3)`` uint8, from the X server."""
    import mss

    geo = dict(
        line.split("=") for line in xdo(display, "getwindowgeometry", "--shell", win).stdout.split() if "=" in line
    )
    region = {"left": int(geo["X"]), "top": int(geo["Y"]), "width": int(geo["WIDTH"]), "height": int(geo["HEIGHT"])}
    factory = getattr(mss, "MSS", None) or mss.mss  # mss 10.2 renamed the class
    with factory(display=display) as sct:
        return np.ascontiguousarray(np.asarray(sct.grab(region))[..., 2::-1])  # BGRA -> RGB


def _turn(display: str) -> None:
    for _ in range(TURN_STEPS):
        xdo(display, "mousemove_relative", "--", str(TURN_PX // TURN_STEPS), "0")
        time.sleep(0.07)


def _psnr(a: np.ndarray, b: np.ndarray) -> float:
    mse = float(np.mean((a.astype(np.float64) - b.astype(np.float64)) ** 2))
    return 10 * np.log10(255.0**2 / max(mse, 1e-10))


def run_mode(checkpoint: str, memory: str, seed: int, walk: float, settle: float, display: str, out: Path) -> dict:
    """One play session of the module docstring with memory ``memory`` -> its numbers."""
    import imageio.v3 as iio

    xvfb, play, win = start(display, [f"checkpoint={checkpoint}", f"memory={memory}", f"seed={seed}", "window.scale=4"])
    try:
        time.sleep(1.0)
        xdo(display, "key", "F3")  # HUD off: only the game view
        time.sleep(settle)
        outbound = _grab(display, win)
        xdo(display, "keydown", "w")
        time.sleep(walk)
        xdo(display, "keyup", "w")
        _turn(display)
        xdo(display, "keydown", "w")
        time.sleep(walk / 2)
        xdo(display, "key", "F3")
        time.sleep(0.3)
        hud = _grab(display, win)
        xdo(display, "key", "F3")
        time.sleep(walk / 2)
        xdo(display, "keyup", "w")
        _turn(display)
        time.sleep(settle)
        back = _grab(display, win)
        if play.poll() is not None:
            raise RuntimeError(f"play.py exited early with code {play.returncode}: {play.stderr.read()[-2000:]}")
        xdo(display, "key", "Escape")
        time.sleep(0.3)
        xdo(display, "key", "Escape")
        stdout, stderr = play.communicate(timeout=60)
    finally:
        stop(xvfb, play)
    if play.returncode != 0:
        raise RuntimeError(f"play.py failed with code {play.returncode}: {stderr[-2000:]}")
    for name, img in (("outbound", outbound), ("hud", hud), ("return", back)):
        iio.imwrite(out / f"{memory}_{name}.png", img)
    hits = re.search(r"chunks with memory hits (\d+)", stdout)
    return {
        "return_vs_outbound_psnr_db": _psnr(back, outbound),
        "chunks_with_memory_hits": int(hits.group(1)) if hits else None,
        "summary": stdout.strip().splitlines()[-1] if stdout.strip() else "",
    }


def main() -> None:
    """Command line (module docstring)."""
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--checkpoint", default="assets/teacher_builtin_v2", help="what play.py plays")
    p.add_argument("--seed", type=int, default=3, help="world seed of the start")
    p.add_argument("--walk", type=float, default=4.0, help="seconds of walking each way")
    p.add_argument("--settle", type=float, default=4.0, help="seconds for generation to catch up before a grab")
    p.add_argument("--display", default=":93", help="the Xvfb display to start")
    p.add_argument("--out", default="runs/memory_screen", help="folder for the JSON and the PNGs")
    a = p.parse_args()
    out = Path(a.out)
    out.mkdir(parents=True, exist_ok=True)
    try:
        res = {m: run_mode(a.checkpoint, m, a.seed, a.walk, a.settle, a.display, out) for m in ("off", "on")}
    except RuntimeError as e:
        print(f"error: {e}", file=sys.stderr)
        sys.exit(1)
    res["settings"] = vars(a)
    (out / "memory_screen.json").write_text(json.dumps(res, indent=2))
    for m in ("off", "on"):
        r = res[m]
        print(
            f"memory {m}: return view vs outbound view {r['return_vs_outbound_psnr_db']:.2f} dB; "
            f"chunks with memory hits {r['chunks_with_memory_hits']}"
        )


if __name__ == "__main__":
    main()
