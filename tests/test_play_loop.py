"""The asynchronous play loop without a screen: input keeps its rate while generation is slow,
and a recorded session replays through the engine to the same frames."""

import os
import signal
import time
from functools import partial

import numpy as np
import pytest
from test_engine import KEYS, make_tiny_checkpoint

from envs.starts import world_start
from worldsim import load_engine
from worldsim.core.errors import WorldsimError
from worldsim.data.reader import RolloutDataset
from worldsim.play.loop import EngineSource, PlayLoopConfig, ProcessSource, chunk_inputs, open_engine_source, play


class FakeWindow:
    """Ticks at ``fps`` with scripted input; quits after ``ticks`` polls."""

    def __init__(self, ticks, fps=15.0, script=None):
        self.ticks, self.fps, self.n, self.script = ticks, fps, 0, script
        self.shown = []
        self.next_tick = time.perf_counter()

    def bind_keys(self, key_names):
        self.key_names = key_names

    def poll(self):
        self.n += 1
        keys, mouse = (
            self.script(self.n) if self.script else (np.zeros(len(self.key_names), np.uint8), np.zeros(2, np.float32))
        )
        return keys, mouse, ({"quit"} if self.n >= self.ticks else set())

    def show(self, frame, hud_lines):
        self.shown.append((frame, list(hud_lines)))

    def screenshot(self):
        return np.zeros((8, 8, 3), np.uint8)

    def tick(self):
        self.next_tick += 1.0 / self.fps
        time.sleep(max(0.0, self.next_tick - time.perf_counter()))

    def help_text(self):
        return "help"

    def close(self):
        pass


class SlowSource:
    """Any chunk source; each chunk takes ``delay_s`` (far slower than the display)."""

    name, key_names, fps, chunk_frames = "slow", KEYS, 15.0, 4
    frame_size, intrinsics = (8, 8), np.eye(3, dtype=np.float32)

    def __init__(self, delay_s):
        self.delay_s, self.n = delay_s, 0
        self.chunk_c2w = np.tile(np.eye(4, dtype=np.float32), (1, 1, 1))
        self.timings = {}

    def reset(self):
        return np.zeros((4, 8, 8, 3), np.uint8)

    def step(self, keys, mouse):
        time.sleep(self.delay_s)
        self.n += 1
        self.chunk_c2w = np.tile(np.eye(4, dtype=np.float32), (4, 1, 1))
        self.timings = {"model": self.delay_s}
        return np.full((4, 8, 8, 3), self.n % 255, np.uint8)


def test_input_is_polled_at_the_display_rate_while_generation_is_slow():
    window = FakeWindow(ticks=45)
    stats = play(SlowSource(delay_s=1.0), PlayLoopConfig(), window).summary()
    assert stats["poll_hz"] > 0.85 * 15.0  # 45 polls in ~3 s although each chunk takes 1 s
    assert stats["held_ticks"] > 10 and stats["displayed_frames"] >= 4
    assert any("generation behind" in hud[0] for _, hud in window.shown)
    assert stats["latency_p50_ms"] >= 1000.0  # an input waits for its 1 s chunk


def test_chunk_inputs_keep_the_newest_rows_all_mouse_motion_and_every_key_press():
    rows = [(np.array([i % 2, 0, 0], np.uint8), np.array([1.0, 0.0], np.float32), float(i)) for i in range(6)]
    rows[0][0][1] = 1  # a tap (down for one poll) in a row older than the newest 4
    keys, mouse, times = chunk_inputs(rows, 4, 3)
    assert mouse[:, 0].tolist() == [3.0, 1.0, 1.0, 1.0] and times == [2.0, 3.0, 4.0, 5.0]
    assert keys[:, 1].tolist() == [1, 0, 0, 0]  # the tap is held in the first kept row, not lost
    assert keys[:, 0].tolist() == [1, 1, 0, 1]  # down in the older row 1: down in the first kept row too
    assert keys[:, 2].tolist() == [0, 0, 0, 0]
    keys, mouse, times = chunk_inputs(rows[1:5], 4, 3)  # exactly k rows: as polled
    assert keys[:, 0].tolist() == [1, 0, 1, 0] and keys[:, 1].tolist() == [0, 0, 0, 0]
    keys, mouse, times = chunk_inputs(rows[1:2], 4, 3)  # missing rows repeat the held keys, no motion
    assert keys[:, 0].tolist() == [1, 1, 1, 1] and mouse[:, 0].tolist() == [1.0, 0.0, 0.0, 0.0]


@pytest.mark.parametrize("generate_in", ["thread", "process"])
def test_a_recorded_session_replays_headless_to_the_same_frames(tmp_path, generate_in):
    """Recorded through either play set-up (generation in a thread, or in a child process as
    play.py does), the session replays in this process to identical frames."""
    ck = make_tiny_checkpoint(tmp_path / "tiny")

    def script(n):
        keys = np.zeros(len(KEYS), np.uint8)
        keys[KEYS.index("w")] = n % 3 != 0
        return keys, np.array([3.0 * (n % 5), 0.0], np.float32)

    if generate_in == "process":
        source = ProcessSource(partial(open_engine_source, str(ck), 11, bf16=False))
    else:
        source = EngineSource(load_engine(ck, seed=11, bf16=False), seed=11)
    try:
        play(source, PlayLoopConfig(), FakeWindow(90, fps=30.0, script=script), record=str(tmp_path / "rec"))
    finally:
        source.close()
    ep = RolloutDataset(tmp_path / "rec").load(0)
    assert len(ep["frames"]) > 8 and ep["keys"][:, KEYS.index("w")].sum() > 0
    eng = load_engine(ck, seed=11, bf16=False)
    eng.reset(*world_start(11, eng.context_frames, eng.key_names, eng.frame_size).arrays())
    k = eng.chunk_frames
    replay = [
        eng.step(ep["keys"][s : s + k], ep["mouse"][s : s + k]).frames
        for s in range(0, len(ep["frames"]) - 1 - k + 1, k)
    ]
    got = np.concatenate(replay)
    np.testing.assert_array_equal(got, ep["frames"][1 : 1 + len(got)])


def test_the_generation_process_reports_a_bad_checkpoint_and_its_own_death(tmp_path):
    with pytest.raises(WorldsimError, match="does not exist"):
        ProcessSource(partial(open_engine_source, str(tmp_path / "missing"), 0))
    source = ProcessSource(partial(open_engine_source, str(make_tiny_checkpoint(tmp_path / "tiny")), 0))
    try:
        frames = source.reset()
        assert frames.shape[1:] == (*source.frame_size, 3) and source.chunk_c2w.shape[1:] == (4, 4)
        k = source.chunk_frames
        with pytest.raises(WorldsimError, match="keys must be"):  # the engine's own message, from the child
            source.step(np.zeros((k, 99), np.uint8), np.zeros((k, 2), np.float32))
        os.kill(source._proc.pid, signal.SIGKILL)
        with pytest.raises(WorldsimError, match="generation process"):
            source.step(np.zeros((k, len(source.key_names)), np.uint8), np.zeros((k, 2), np.float32))
    finally:
        source.close()
