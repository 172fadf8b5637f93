"""play.py in a window on its own Xvfb screen, driven by xdotool: what tools/fuzz_play.py and
tools/latency_on_screen.py share."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def xdo(display: str, *args: str) -> subprocess.CompletedProcess[str]:
    """Run ``xdotool args`` on ``display``."""
    return subprocess.run(
        ["xdotool", *args], env=dict(os.environ, DISPLAY=display), capture_output=True, text=True, timeout=30
    )


def start(display: str, play_args: list[str]) -> tuple[subprocess.Popen[bytes], subprocess.Popen[str], str]:
    """Start Xvfb on ``display`` and ``play.py play_args`` on it; wait for its window and focus it
    -> (Xvfb, play.py, window id). ``RuntimeError`` when a tool is missing or no window opens
    (both processes are stopped then)."""
    for tool in ("Xvfb", "xdotool"):
        if not shutil.which(tool):
            raise RuntimeError(f"{tool} is not installed (apt install xvfb xdotool)")
    xvfb = subprocess.Popen(["Xvfb", display, "-screen", "0", "1024x768x24", "-nolisten", "tcp"])
    time.sleep(1.0)
    env = dict(os.environ, DISPLAY=display)
    env.pop("SDL_VIDEODRIVER", None)
    play = subprocess.Popen(
        [sys.executable, "play.py", *play_args],
        cwd=ROOT,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    found = xdo(display, "search", "--sync", "--pid", str(play.pid)).stdout.split()
    if not found:
        stop(xvfb, play)
        raise RuntimeError("play.py opened no window")
    win = found[0]
    xdo(display, "windowactivate", "--sync", win)
    xdo(display, "windowfocus", "--sync", win)
    return xvfb, play, win


def stop(xvfb: subprocess.Popen[bytes], play: subprocess.Popen[str]) -> None:
    """Kill play.py if it still runs, then stop Xvfb."""
    if play.poll() is None:
        play.kill()
    xvfb.terminate()
    xvfb.wait(10)
