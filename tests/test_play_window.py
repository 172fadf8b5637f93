"""play.py end to end under Xvfb, driven by real X events from xdotool."""

import json
import math
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

ROOT = Path(__file__).resolve().parent.parent
pytestmark = pytest.mark.display


def test_play_without_display_says_how_to_run(tmp_path):
    env = {k: v for k, v in os.environ.items() if k not in ("DISPLAY", "WAYLAND_DISPLAY", "SDL_VIDEODRIVER")}
    r = subprocess.run([sys.executable, "play.py"], cwd=ROOT, env=env, capture_output=True, text=True, timeout=60)
    assert r.returncode == 2 and "Traceback" not in r.stderr
    assert "no display found" in r.stderr and "xvfb-run" in r.stderr


@pytest.mark.parametrize(
    "args, message",
    [
        (["checkpoint=", "window.bindings.w=notakey"], "binding 'w': 'notakey' is not a key name pygame knows"),
        (["window.bindings.w=notakey"], "binding 'w': 'notakey' is not a key name pygame knows"),
        (["~window.bindings.l"], "bindings must map exactly the keys"),
        (["window.target_fps=15"], "window.target_fps=15 would play this source's 30 frames/s of world time at 0.5x"),
        (
            ["checkpoint=assets/student_builtin_v8", "window.target_fps=30"],
            "window.target_fps=30 would play this source's 15 frames/s of world time at 2x",
        ),
    ],
)
def test_play_rejects_bad_bindings_and_display_rates_before_a_window_opens(tmp_path, args, message):
    """DISPLAY names an X screen that does not exist: opening a window fails with its own
    message, so the binding's error proves it came first."""
    env = dict(os.environ, SDL_VIDEODRIVER="x11", DISPLAY=":987")
    r = subprocess.run(
        [sys.executable, "play.py", *args, "loop.max_steps=1"],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert r.returncode == 2 and "Traceback" not in r.stderr, r.stderr
    assert message in r.stderr and "cannot open" not in r.stderr, r.stderr


def test_play_on_a_display_that_is_not_there_says_so_in_one_line(tmp_path):
    env = dict(os.environ, SDL_VIDEODRIVER="x11", DISPLAY=":987")
    r = subprocess.run(
        [sys.executable, "play.py", "checkpoint=", "loop.max_steps=1"],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert r.returncode == 2 and "Traceback" not in r.stderr, r.stderr
    assert "error: cannot open a window on DISPLAY=':987'" in r.stderr


def test_play_refuses_a_missing_checkpoint_and_an_unwritable_record_path(tmp_path):
    env = dict(os.environ, SDL_VIDEODRIVER="offscreen")
    r = subprocess.run(
        [sys.executable, "play.py", f"checkpoint={tmp_path / 'none'}"],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert r.returncode == 2 and "Traceback" not in r.stderr and "does not exist" in r.stderr
    (tmp_path / "file").write_text("not a folder")
    r = subprocess.run(
        [sys.executable, "play.py", "checkpoint=", f"record={tmp_path / 'file' / 'rec'}", "loop.max_steps=1"],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert r.returncode == 2 and "Traceback" not in r.stderr, r.stderr
    assert "error:" in r.stderr


@pytest.fixture
def xvfb():
    if not shutil.which("Xvfb") or not shutil.which("xdotool"):
        pytest.skip("Xvfb and xdotool are installed by .ci/setup")
    display = ":87"
    proc = subprocess.Popen(["Xvfb", display, "-screen", "0", "1024x768x24", "-nolisten", "tcp"])
    time.sleep(1.0)
    yield display
    proc.terminate()
    proc.wait(10)


def _xdo(display, *args):
    return subprocess.run(
        ["xdotool", *args], env=dict(os.environ, DISPLAY=display), capture_output=True, text=True, timeout=30
    )


@pytest.mark.parametrize("source", ["model", "world"])
def test_play_under_xvfb_follows_real_key_and_mouse_events(xvfb, tmp_path, source):
    from test_engine import make_tiny_checkpoint

    model = make_tiny_checkpoint(tmp_path / "tiny") if source == "model" else ""
    rec, shots = tmp_path / "rec", tmp_path / "shots"
    env = dict(os.environ, DISPLAY=xvfb)
    env.pop("SDL_VIDEODRIVER", None)
    proc = subprocess.Popen(
        [
            sys.executable,
            "play.py",
            f"checkpoint={model}",
            "bf16=false",
            f"record={rec}",
            f"loop.screenshot_dir={shots}",
            "window.scale=4",
        ],
        cwd=ROOT,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        win = _xdo(xvfb, "search", "--sync", "--pid", str(proc.pid)).stdout.split()[0]
        _xdo(xvfb, "windowactivate", "--sync", win)
        _xdo(xvfb, "windowfocus", "--sync", win)
        time.sleep(0.8)
        _xdo(xvfb, "keydown", "w")
        time.sleep(1.5)  # several chunks' worth, even on a loaded machine
        _xdo(xvfb, "keyup", "w")
        for _ in range(10):
            _xdo(xvfb, "mousemove_relative", "--", "12", "0")
            time.sleep(0.07)
        _xdo(xvfb, "key", "l")  # a quick tap, pressed and released between two input polls
        time.sleep(1.5)  # the chunk made with the tap must be shown (and so recorded) before quitting
        _xdo(xvfb, "key", "F12")
        time.sleep(0.5)
        _xdo(xvfb, "key", "Escape")  # release the mouse
        time.sleep(0.3)
        _xdo(xvfb, "key", "Escape")  # quit
        out, err = proc.communicate(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 0, err

    from worldsim.data.reader import RolloutDataset

    data = RolloutDataset(rec)
    assert len(data) == 1 and data.meta.source == "human"
    ep = data.load(0)
    c2w = ep["c2w"]
    w_idx = data.meta.key_names.index("w")
    assert ep["keys"][:, w_idx].sum() >= 5  # forward was held for several frames
    assert ep["keys"][:, data.meta.key_names.index("l")].sum() >= 1  # the tap was not lost
    start_fwd = c2w[0, :3, 2]
    moved = c2w[-1, :3, 3] - c2w[0, :3, 3]
    assert np.dot(moved, start_fwd) > 2.0  # moved forward along the initial heading
    yaw = [math.atan2(m[0, 2], m[1, 2]) for m in c2w]
    turned = math.remainder(yaw[-1] - yaw[0], 2 * math.pi)
    assert turned > math.radians(5)  # mouse right -> yaw right (positive)
    assert ep["mouse"][:, 0].sum() > 0
    assert not np.array_equal(ep["frames"][0], ep["frames"][-1])

    import imageio.v3 as iio

    shot = iio.imread(next(shots.glob("*.png")))
    assert shot.shape == (64 * 4, 64 * 4, 3)
    # The screenshot is a frame shown in the window, upscaled 4x with nearest filtering.
    small = shot[::4, ::4]
    assert np.array_equal(shot, small.repeat(4, 0).repeat(4, 1))
    diffs = [np.abs(small.astype(int) - f.astype(int)).mean() for f in ep["frames"]]
    assert min(diffs) < 1.0


def test_a_short_fuzz_of_random_x_events_neither_crashes_nor_loses_the_recording(tmp_path):
    """The reduced form of `python tools/fuzz_play.py --seconds 600` (keys, mouse bursts, clicks,
    focus lost and found, pause, reset, record on/off, screenshots, help, HUD, Esc)."""
    if not shutil.which("Xvfb") or not shutil.which("xdotool"):
        pytest.skip("Xvfb and xdotool are installed by .ci/setup")
    from test_engine import make_tiny_checkpoint

    model = make_tiny_checkpoint(tmp_path / "tiny")
    r = subprocess.run(
        [sys.executable, "tools/fuzz_play.py", "--seconds", "12", f"--checkpoint={model}"]
        + [f"--out={tmp_path / 'fuzz'}", "--seed", "1", "--display", ":88"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert r.returncode == 0 and "fuzz ok" in r.stdout, r.stdout + r.stderr
    assert "recording: " in r.stdout and " 0 frames read back" not in r.stdout


@pytest.mark.parametrize("world", ["builtin", "doom"])
def test_the_world_in_the_window_shows_the_frames_it_renders_alone(xvfb, tmp_path, world):
    """Play the ground-truth world in the window (the built-in world in its GL context, DOOM in
    ViZDoom's own process), record, then re-render the recorded inputs headless
    (`worldsim-record policy=replay`): frame for frame the same."""
    if world == "doom":
        pytest.importorskip("vizdoom", reason="the [doom] extra is not installed")
    rec = tmp_path / "rec"
    env = dict(os.environ, DISPLAY=xvfb)
    env.pop("SDL_VIDEODRIVER", None)
    proc = subprocess.Popen(
        [sys.executable, "play.py", "checkpoint=", f"env={world}", f"record={rec}"],
        cwd=ROOT,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        win = _xdo(xvfb, "search", "--sync", "--pid", str(proc.pid)).stdout.split()[0]
        _xdo(xvfb, "windowactivate", "--sync", win)
        _xdo(xvfb, "windowfocus", "--sync", win)
        time.sleep(0.5)
        _xdo(xvfb, "keydown", "w")
        for _ in range(12):
            _xdo(xvfb, "mousemove_relative", "--", "9", "2")
            time.sleep(0.05)
        _xdo(xvfb, "keyup", "w")
        _xdo(xvfb, "key", "l")
        time.sleep(0.8)
        _xdo(xvfb, "key", "Escape")
        time.sleep(0.3)
        _xdo(xvfb, "key", "Escape")
        _, err = proc.communicate(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 0, err
    from envs.record import RecordConfig, record
    from worldsim.data.reader import RolloutDataset

    data = RolloutDataset(rec)
    shown = data.load(0)
    n = len(shown["frames"])
    replay = RecordConfig(
        env=world,
        policy="replay",
        replay_from=str(rec),
        num_episodes=1,
        episode_len=n,
        out=str(tmp_path / "re"),
        preview=False,
    )
    alone = record(replay).load(0)
    light = data.meta.key_names.index("l")
    assert n >= 10 and shown["keys"][:, light].sum() >= 1  # walked, turned and toggled the light
    np.testing.assert_allclose(alone["c2w"], shown["c2w"], atol=1e-5)
    diff = np.abs(alone["frames"].astype(int) - shown["frames"].astype(int)).mean(axis=(1, 2, 3))
    assert diff.max() < 1.0, diff  # every frame, within a grey level on average
    assert np.abs(np.diff(shown["frames"].astype(int), axis=0)).mean() > 1.0  # and the frames do change


def test_the_on_screen_latency_tool_times_light_toggles_of_the_world(tmp_path):
    """`tools/latency_on_screen.py` on the ground-truth world (a toggle is drawn at the next
    display tick): every press is seen, within a few ticks."""
    if not shutil.which("Xvfb") or not shutil.which("xdotool"):
        pytest.skip("Xvfb and xdotool are installed by .ci/setup")
    out = tmp_path / "screen.json"
    r = subprocess.run(
        [sys.executable, "tools/latency_on_screen.py", "--checkpoint=", "--presses", "3", "--interval", "1.2"]
        + ["--display", ":89", f"--out={out}"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert r.returncode == 0, r.stdout + r.stderr
    res = json.loads(out.read_text())
    assert res["seen"] == 3 and res["missed"] == 0 and "on screen: key-down -> visible change" in r.stdout
    assert 0 < res["latency_p50_ms"] < 1000 and res["grabs_per_s"] > 20
    assert 0 < res["draw_ms_p50"] <= res["draw_ms_p95"]  # play.py's own drawing times, read from its summary


def test_one_esc_after_losing_focus_releases_nothing_and_quits_nothing(xvfb, tmp_path):
    """Focus lost and found (the window unmapped and mapped), then one Esc: still playing; a
    second Esc in a row quits. (Before, a late focus-lost event left the mouse released and the
    next single Esc ended the session: found by tools/fuzz_play.py.)"""
    env = dict(os.environ, DISPLAY=xvfb)
    env.pop("SDL_VIDEODRIVER", None)
    proc = subprocess.Popen(
        [sys.executable, "play.py", "checkpoint="], cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE
    )
    try:
        win = _xdo(xvfb, "search", "--sync", "--pid", str(proc.pid)).stdout.split()[0]
        _xdo(xvfb, "windowfocus", "--sync", win)
        time.sleep(0.5)
        _xdo(xvfb, "windowunmap", "--sync", win)
        time.sleep(0.3)
        _xdo(xvfb, "windowmap", "--sync", win)
        _xdo(xvfb, "windowfocus", "--sync", win)
        time.sleep(0.5)
        _xdo(xvfb, "key", "Escape")
        time.sleep(1.0)
        assert proc.poll() is None  # one Esc: still playing
        _xdo(xvfb, "key", "Escape")
        proc.communicate(timeout=30)
        assert proc.returncode == 0
    finally:
        if proc.poll() is None:
            proc.kill()


def test_memory_hits_show_on_the_way_back_in_a_real_window(tmp_path):
    """The reduced form of `python tools/memory_on_screen.py`: walk out, turn, walk back under
    Xvfb with xdotool; with memory on play.py reports chunks with hits, with it off none."""
    if not shutil.which("Xvfb") or not shutil.which("xdotool"):
        pytest.skip("Xvfb and xdotool are installed by .ci/setup")
    from test_engine import make_tiny_checkpoint

    model = make_tiny_checkpoint(tmp_path / "tiny", camera_reference="chunk", encoder="keyboard_press_mouse")
    out = tmp_path / "screen"
    r = subprocess.run(
        [sys.executable, "tools/memory_on_screen.py", f"--checkpoint={model}", "--walk", "1.5", "--settle", "1.5"]
        + [f"--out={out}", "--display", ":89"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert r.returncode == 0, r.stdout + r.stderr
    res = json.loads((out / "memory_screen.json").read_text())
    assert res["off"]["chunks_with_memory_hits"] is None and res["on"]["chunks_with_memory_hits"] > 0
    assert (out / "on_hud.png").is_file() and (out / "off_return.png").is_file()
