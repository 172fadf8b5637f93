"""The asynchronous play loop without a screen: input keeps its rate while generation is slow,
sources hand back Chunks (in process, or over the generation process's pipe) and a recorded
session replays through the engine to the same frames."""

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
from worldsim.inference.engine import Chunk, ChunkTimings
from worldsim.play.loop import ChunkScheduler, PlayLoopConfig, PlayStats, chunk_inputs, play
from worldsim.play.sources import EngineSource, ProcessSource, SyncSource, open_engine_source


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
    """Any asynchronous chunk source; each chunk is done ``delay_s`` after its submission (far
    slower than the display)."""

    name, key_names, fps, chunk_frames = "slow", KEYS, 15.0, 4
    frame_size, intrinsics = (8, 8), np.eye(3, dtype=np.float32)

    def __init__(self, delay_s):
        self.delay_s, self.n, self.done_at = delay_s, 0, None

    def reset(self):
        return Chunk(np.zeros((4, 8, 8, 3), np.uint8), np.tile(np.eye(4, dtype=np.float32), (4, 1, 1)))

    def submit(self, keys, mouse):
        assert self.done_at is None, "at most one chunk in flight"
        self.done_at = time.perf_counter() + self.delay_s

    def poll(self, timeout_s=0.0):
        if self.done_at is None:
            return None
        wait = self.done_at - time.perf_counter()
        if timeout_s is not None and wait > timeout_s:
            time.sleep(max(0.0, timeout_s))
            return None
        time.sleep(max(0.0, wait))
        self.done_at, self.n = None, self.n + 1
        c2w = np.tile(np.eye(4, dtype=np.float32), (4, 1, 1))
        return Chunk(
            np.full((4, 8, 8, 3), self.n % 255, np.uint8),
            c2w,
            ChunkTimings(denoise_s=self.delay_s, critical_s=self.delay_s),
        )

    def close(self):
        pass


def test_input_is_polled_at_the_display_rate_while_generation_is_slow():
    window = FakeWindow(ticks=45)
    stats = play(SlowSource(delay_s=1.0), PlayLoopConfig(), window).summary()
    assert stats["poll_hz"] > 0.85 * 15.0  # 45 polls in ~3 s although each chunk takes 1 s
    assert stats["held_ticks"] > 10 and stats["displayed_frames"] >= 4
    first = next(i for i, (frame, _) in enumerate(window.shown) if i and frame is not None)  # [0]: the start view
    before_first = sum(frame is None for frame, _ in window.shown[:first])  # ticks that held the start
    assert before_first > 0 and stats["held_ticks"] - stats["held_ticks_after_first"] == before_first
    assert stats["held_ticks_after_first"] > 0  # each 1 s chunk leaves ticks with nothing new
    assert any("generation behind" in hud[0] for _, hud in window.shown)
    assert "denoise 1000 ms" in window.shown[-1][1][2]  # the HUD's stage times: the last chunk's
    assert "critical 1000 ms" in window.shown[-1][1][1]
    assert stats["latency_p50_ms"] >= 1000.0  # an input waits for its 1 s chunk


def test_chunk_inputs_keep_the_newest_rows_all_mouse_motion_and_every_key_press():
    rows = [(np.array([i % 2, 0, 0], np.uint8), np.array([1.0, 0.0], np.float32), float(i)) for i in range(6)]
    rows[0][0][1] = 1  # a tap (down for one poll) in a row older than the newest 4
    keys, mouse, times = chunk_inputs(rows, 4, 3)
    assert mouse[:, 0].tolist() == [3.0, 1.0, 1.0, 1.0]
    assert times == [0.0, 1.0, 2.0, 3.0, 4.0, 5.0]  # every row's latency counts, the folded ones too
    assert keys[:, 1].tolist() == [1, 0, 0, 0]  # the tap is held in the first kept row, not lost
    assert keys[:, 0].tolist() == [1, 1, 0, 1]  # down in the older row 1: down in the first kept row too
    assert keys[:, 2].tolist() == [0, 0, 0, 0]
    keys, mouse, times = chunk_inputs(rows[1:5], 4, 3)  # exactly k rows: as polled
    assert keys[:, 0].tolist() == [1, 0, 1, 0] and keys[:, 1].tolist() == [0, 0, 0, 0]
    keys, mouse, times = chunk_inputs(rows[1:2], 4, 3)  # missing rows repeat the held keys, no motion
    assert keys[:, 0].tolist() == [1, 1, 1, 1] and mouse[:, 0].tolist() == [1.0, 0.0, 0.0, 0.0]
    assert times == [1.0]  # padding rows were never polled: no latency of their own


class StallingSource(SlowSource):
    """Chunks take ``delays[i]`` seconds, one after another: quick, then a stall."""

    def __init__(self, delays):
        super().__init__(delays[0])
        self.delays = list(delays)

    def submit(self, keys, mouse):
        self.delay_s = self.delays[min(self.n, len(self.delays) - 1)]
        super().submit(keys, mouse)


def test_the_hud_frame_rate_counts_new_frames_and_falls_to_zero_within_a_second_of_a_stall():
    window = FakeWindow(ticks=60)  # 4 s at 15 Hz
    shown_at = []
    show = window.show

    def record_show(frame, hud):
        shown_at.append((time.perf_counter(), frame is not None, hud[0]))
        show(frame, hud)

    window.show = record_show
    stats = play(StallingSource([0.05, 0.05, 0.05, 10.0]), PlayLoopConfig(), window).summary()
    new = [t for t, is_new, _ in shown_at if is_new]
    assert len(new) >= 8 and stats["held_ticks"] > 20
    last_new = max(new)
    after = [hud for t, _, hud in shown_at if t > last_new + 1.05]
    assert after and all(hud.startswith(" 0.0 fps") for hud in after), after[:3]
    assert f"held {stats['held_ticks']} |" in shown_at[-1][2]  # the HUD counts the held ticks
    live = [hud for t, is_new, hud in shown_at if is_new and t > new[0] + 0.5]
    assert any(not hud.startswith(" 0.0 fps") for hud in live)  # while frames come, it counts them


@pytest.mark.parametrize("generate_in", ["loop", "process"])
def test_a_recorded_session_replays_headless_to_the_same_frames(tmp_path, generate_in):
    """Recorded through either source (the engine on the loop's thread, or in a child process as
    play.py does), the session replays in this process to identical frames. The checkpoint's
    camera has momentum (DOOM's motion): the recording says so, as recorded data does."""
    from test_engine import MOMENTUM

    ck = make_tiny_checkpoint(tmp_path / "tiny", controller=MOMENTUM)

    def script(n):
        keys = np.zeros(len(KEYS), np.uint8)
        keys[KEYS.index("w")] = n % 3 != 0
        return keys, np.array([3.0 * (n % 5), 0.0], np.float32)

    if generate_in == "process":
        source = ProcessSource(partial(open_engine_source, str(ck), 11, bf16=False))
    else:
        source = EngineSource(load_engine(ck, seed=11, bf16=False), seed=11)
    try:
        # Until 12 frames are shown (not a fixed time: a loaded machine generates fewer per second).
        window = FakeWindow(3000, fps=30.0, script=script)
        play(source, PlayLoopConfig(max_steps=12), window, record=str(tmp_path / "rec"))
    finally:
        source.close()
    rec = RolloutDataset(tmp_path / "rec")
    ep = rec.load(0)
    assert len(ep["frames"]) > 8 and ep["keys"][:, KEYS.index("w")].sum() > 0
    assert rec.meta.controller() == MOMENTUM  # what moved the poses
    eng = load_engine(ck, seed=11, bf16=False)
    eng.reset(*world_start(11, eng.context_frames, eng.key_names, eng.frame_size).arrays())
    k = eng.chunk_frames
    replay = [
        eng.step(ep["keys"][s : s + k], ep["mouse"][s : s + k]).frames
        for s in range(0, len(ep["frames"]) - 1 - k + 1, k)
    ]
    got = np.concatenate(replay)
    np.testing.assert_array_equal(got, ep["frames"][1 : 1 + len(got)])


class SteppingSource(SyncSource):
    """A SyncSource over a counter, each step taking ``delay_s``: ``submit`` computes, ``poll``
    hands over (module level, so that a generation process can build it too)."""

    name, key_names, fps, chunk_frames = "count", KEYS, 15.0, 1
    frame_size, intrinsics = (8, 8), np.eye(3, dtype=np.float32)

    def __init__(self, delay_s=0.0):
        self.n, self.delay_s = 0, delay_s

    def reset(self):
        return Chunk(np.zeros((1, 8, 8, 3), np.uint8), np.eye(4, dtype=np.float32)[None])

    def step(self, keys, mouse):
        time.sleep(self.delay_s)
        self.n += 1
        return Chunk(np.full((1, 8, 8, 3), self.n, np.uint8), np.eye(4, dtype=np.float32)[None])


def test_a_sync_source_computes_on_submit_and_hands_the_chunk_to_one_poll():
    source = SteppingSource()
    assert source.poll(0.0) is None  # nothing in flight
    source.submit(np.zeros((1, len(KEYS)), np.uint8), np.zeros((1, 2), np.float32))
    assert source.n == 1  # computed in submit, on this thread
    assert source.poll(0.0).frames[0, 0, 0, 0] == 1 and source.poll(0.0) is None


def test_the_generation_process_returns_the_chunk_the_engine_gives_in_process(tmp_path):
    """Same checkpoint, seed and inputs: the Chunk from the child is the in-process engine's, its
    poses bit-exact."""
    ck = str(make_tiny_checkpoint(tmp_path / "tiny"))
    local = open_engine_source(ck, 5, bf16=False)
    source = ProcessSource(partial(open_engine_source, ck, 5, bf16=False))
    try:
        start, local_start = source.reset(), local.reset()
        assert isinstance(start, Chunk) and len(start.frames) == local.engine.context_frames
        np.testing.assert_array_equal(start.c2w, local_start.c2w)
        k, nk = source.chunk_frames, len(source.key_names)
        rng = np.random.default_rng(0)
        for _ in range(3):
            keys = (rng.random((k, nk)) < 0.4).astype(np.uint8)
            mouse = rng.normal(0, 20, (k, 2)).astype(np.float32)
            source.submit(keys, mouse)
            chunk = source.poll(None)
            want = local.step(keys, mouse)
            assert isinstance(chunk, Chunk) and chunk.c2w.dtype == np.float32
            np.testing.assert_array_equal(chunk.c2w, want.c2w)
            assert chunk.frames.shape == want.frames.shape and chunk.timings.total_s > 0
    finally:
        source.close()


def test_polling_a_busy_generation_process_with_timeout_zero_returns_none_without_blocking():
    source = ProcessSource(partial(SteppingSource, 1.0))
    try:
        source.reset()
        source.submit(np.zeros((1, len(KEYS)), np.uint8), np.zeros((1, 2), np.float32))
        t0 = time.perf_counter()
        assert source.poll(0.0) is None and source.poll(0.1) is None
        assert time.perf_counter() - t0 < 0.5  # 0.1 s of waiting, not the 1 s chunk
        with pytest.raises(WorldsimError, match="already in flight"):
            source.submit(np.zeros((1, len(KEYS)), np.uint8), np.zeros((1, 2), np.float32))
        chunk = source.poll(None)
        assert chunk is not None and chunk.frames[0, 0, 0, 0] == 1 and source.poll(0.0) is None
    finally:
        source.close()


def test_the_generation_process_reports_a_bad_checkpoint_and_its_own_death(tmp_path):
    with pytest.raises(WorldsimError, match="does not exist"):
        ProcessSource(partial(open_engine_source, str(tmp_path / "missing"), 0))
    source = ProcessSource(partial(open_engine_source, str(make_tiny_checkpoint(tmp_path / "tiny")), 0))
    try:
        start = source.reset()
        assert start.frames.shape[1:] == (*source.frame_size, 3) and start.c2w.shape == (len(start.frames), 4, 4)
        k = source.chunk_frames
        source.submit(np.zeros((k, 99), np.uint8), np.zeros((k, 2), np.float32))
        with pytest.raises(WorldsimError, match="keys must be"):  # the engine's own message, from the child
            source.poll(None)
        os.kill(source._proc.pid, signal.SIGKILL)
        with pytest.raises(WorldsimError, match="generation process"):
            source.submit(np.zeros((k, len(source.key_names)), np.uint8), np.zeros((k, 2), np.float32))
            source.poll(None)
    finally:
        source.close()


def test_a_screenshot_into_an_unwritable_folder_is_a_message_not_the_end(tmp_path, capsys):
    """F12 with a screenshot folder that cannot be made: the session goes on to its quit."""
    (tmp_path / "file").write_text("not a folder")

    class ShotWindow(FakeWindow):
        def poll(self):
            keys, mouse, commands = super().poll()
            return keys, mouse, commands | ({"screenshot"} if self.n == 3 else set())

    window = ShotWindow(12, fps=60.0)
    stats = play(SlowSource(0.01), PlayLoopConfig(screenshot_dir=str(tmp_path / "file" / "shots")), window)
    assert window.n == 12 and stats.ticks >= 12
    assert "screenshot not saved: cannot write" in capsys.readouterr().out


class _RecordingSource(SlowSource):
    """Chunks come back at once; records how many frames were queued at each submission."""

    def __init__(self, sched_ref):
        super().__init__(0.0)
        self.sched_ref, self.queued_at_submit = sched_ref, []

    def submit(self, keys, mouse):
        self.queued_at_submit.append(len(self.sched_ref[0].shown))
        super().submit(keys, mouse)


def test_the_next_chunk_is_submitted_when_the_queue_covers_the_p95_return_time_plus_the_margin():
    ref = [None]
    source = _RecordingSource(ref)
    sched = ChunkScheduler(source, PlayStats(), margin_s=0.01)
    ref[0] = sched
    assert sched.lead() == 0  # nothing measured yet: submit at once
    # 8 returns of 100 ms and one of 500 ms: p95 over the last 8 is 0.1 + 0.65 * 0.4 = 0.36 s;
    # with the 10 ms margin, 0.37 s at 15 frames/s is 5.55 frames, so 6 (a mean would give 2).
    sched.stats.turnaround_s = [0.1] * 8 + [0.5]
    assert sched.lead() == 6
    sched.stats.turnaround_s = [0.1] * 8
    assert sched.lead() == 2  # ceil(0.11 * 15)
    row = (np.zeros(len(KEYS), np.uint8), np.zeros(2, np.float32), 0.0)
    for frames in range(5):  # 0 .. 4 queued frames: submitted only at 2 or fewer
        sched.shown.clear()
        sched.shown.extend([None] * frames)
        sched.pending = [row]
        sched.pump(paused=False)
        submitted = sched.in_flight is not None
        assert submitted == (frames <= 2), frames
        if submitted:
            sched.pump(paused=False, timeout_s=None)  # take it back: it counts a turnaround
    assert source.queued_at_submit == [0, 1, 2] and len(sched.stats.turnaround_s) == 8 + 3


class _SlowDrawWindow(FakeWindow):
    """Drawing a new frame takes 20 ms; holding the last one nothing."""

    def show(self, frame, hud_lines):
        super().show(frame, hud_lines)
        if frame is not None:
            time.sleep(0.02)


def test_the_loop_times_drawing_each_new_frame():
    stats = play(SlowSource(delay_s=0.2), PlayLoopConfig(), _SlowDrawWindow(ticks=30))
    assert len(stats.draw_s) == stats.displayed > 0  # new frames only: held ticks draw nothing new
    summary = stats.summary()
    assert 20.0 <= summary["draw_ms_p50"] <= summary["draw_ms_p95"]


def test_play_settles_its_model_and_world_from_either_one(tmp_path, monkeypatch):
    """play.py: no checkpoint plays the model shipped for ``env``; no env is the checkpoint's own."""
    import worldsim.cli.play as cli
    from envs.doom import DoomConfig
    from worldsim.cli.play import PlayConfig, settle_model

    doom = str(make_tiny_checkpoint(tmp_path / "doom", controller=DoomConfig().controller(), env="doom"))
    built = str(make_tiny_checkpoint(tmp_path / "builtin"))

    def settled(**kw):
        pc = settle_model(PlayConfig(**kw))
        return pc.checkpoint, pc.env

    assert settled() == ("assets/student_builtin_v11", "builtin")  # the shipped default
    assert settled(env="doom") == ("assets/teacher_doom_v1", "doom")
    monkeypatch.delitem(cli.SHIPPED_MODELS, "doom")
    with pytest.raises(WorldsimError, match="no model is shipped for env=doom .shipped: builtin.; checkpoint= plays"):
        settled(env="doom")
    monkeypatch.setitem(cli.SHIPPED_MODELS, "doom", doom)
    assert settled(env="doom") == (doom, "doom")
    assert settled(checkpoint=doom) == (doom, "doom")  # the world a checkpoint was trained on
    assert settled(checkpoint=built) == (built, "builtin")
    assert settled(checkpoint="") == ("", "builtin") and settled(checkpoint="", env="doom") == ("", "doom")
    with pytest.raises(WorldsimError, match=f"{doom} was trained on env doom, not env=builtin"):
        settled(checkpoint=doom, env="builtin")
    with pytest.raises(WorldsimError, match="unknown env 'mars'"):
        settled(env="mars")
