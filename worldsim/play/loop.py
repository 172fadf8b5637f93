"""The play loop: poll input every display tick, generate chunks asynchronously, show frames at
a steady rate, record what was shown.

A chunk source has ``key_names``, ``frame_size``, ``fps``, ``chunk_frames``, ``intrinsics``,
``name``, ``reset() -> context frames``, ``step(keys (k, K), mouse (k, 2)) -> frames (k, H, W, 3)``,
``chunk_c2w`` (the poses of the frames the last step returned) and ``timings`` (seconds per
stage of the last step). The ground-truth world (k = 1) and the neural engine are both sources.

Per display tick (``target_fps``): the window is polled and the input row (keys held, mouse
motion, poll time) is queued; when the worker is idle and fewer than a chunk of frames is
waiting (``lead``: the frames that cover the recent chunk time at the source's fps, so a chunk
lands just as the queue empties), the rows polled since the last submission become the next
chunk's inputs (the newest ``k``; the mouse motion of older rows is added to the first kept row
and their keys held in it, so no tap is lost; missing rows repeat the held keys with no motion)
and the worker generates it while earlier frames are shown; a finished chunk's frames join the
display queue; one frame is shown. While the worker is busy, the rest of the tick is spent
waiting for it, so a chunk that finishes mid-tick is queued and the next one submitted at once.
When the queue is empty the last frame stays up and the HUD says generation is behind. Polling
happens every tick whatever the worker is doing. Latency of an input row = display time of the
first frame generated with it minus its poll time.
"""

from __future__ import annotations

import math
import multiprocessing as mp
import queue
import signal
import threading
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

import numpy as np

from worldsim.core.errors import WorldsimError
from worldsim.data.format import RolloutMeta
from worldsim.data.preview import write_png
from worldsim.data.writer import RolloutWriter


class ChunkSource(Protocol):
    key_names: list[str]
    frame_size: tuple[int, int]
    fps: float
    chunk_frames: int
    intrinsics: np.ndarray
    name: str
    chunk_c2w: np.ndarray  # (k, 4, 4) poses of the frames the last step returned
    timings: dict[str, float]

    def reset(self) -> np.ndarray: ...

    def step(self, keys: np.ndarray, mouse: np.ndarray) -> np.ndarray: ...


class Display(Protocol):
    """What the loop needs from a window (worldsim.play.window.Window, or a stand-in in tests)."""

    def bind_keys(self, key_names: list[str]) -> None: ...

    def poll(self) -> tuple[np.ndarray, np.ndarray, set[str]]: ...

    def show(self, frame_u8: np.ndarray | None, hud_lines: list[str]) -> None: ...

    def screenshot(self) -> np.ndarray: ...

    def tick(self) -> None: ...

    def help_text(self) -> str: ...

    def close(self) -> None: ...


class EngineSource:
    """The neural engine as a chunk source, started from ground truth of world ``seed`` (drawn in
    ``gl_context`` when given: under X11 the world must share the window's context)."""

    name = "model"

    def __init__(self, engine: Any, seed: int, gl_context: Any = None):
        self.engine, self.seed, self.gl_context = engine, seed, gl_context
        self.key_names, self.fps, self.chunk_frames = engine.key_names, engine.fps, engine.chunk_frames
        self.frame_size, self.intrinsics = engine.frame_size, engine.intrinsics
        self.chunk_c2w: np.ndarray = np.eye(4, dtype=np.float32)[None]
        self.timings: dict[str, float] = {}

    def reset(self) -> np.ndarray:
        from envs.starts import world_start

        e = self.engine
        start = world_start(self.seed, e.context_frames, e.key_names, e.frame_size, e.cfg.env, self.gl_context)
        e.reset(*start.arrays())
        self.chunk_c2w = start.c2w[-1:]
        return start.frames

    def step(self, keys: np.ndarray, mouse: np.ndarray) -> np.ndarray:
        chunk = self.engine.step(keys, mouse)
        self.chunk_c2w = chunk.c2w
        self.timings = {"model": chunk.timings.model_s, "decode": chunk.timings.decode_s}
        return chunk.frames

    def close(self) -> None:
        pass


def open_engine_source(checkpoint: str, seed: int, **engine_kw: Any) -> EngineSource:
    """Load a checkpoint as a chunk source started from world ``seed`` (the generation process's factory)."""
    from worldsim.inference.engine import load_engine

    return EngineSource(load_engine(checkpoint, seed=seed, **engine_kw), seed)


_SOURCE_META = ("name", "key_names", "frame_size", "fps", "chunk_frames", "intrinsics", "chunk_c2w")


def _send_error(conn: Any, e: BaseException) -> None:
    try:
        conn.send(("error", e))
    except Exception:  # an exception that does not pickle still reaches the player as text
        conn.send(("error", WorldsimError(f"{type(e).__name__}: {e}")))


def _serve_source(conn: Any, factory: Callable[[], ChunkSource]) -> None:
    """The generation process: build the source, then answer ``(method, args)`` calls until ``None``."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C is the parent's to handle; it stops us
    try:
        source = factory()
    except BaseException as e:
        _send_error(conn, e)
        return
    conn.send(("ok", {name: getattr(source, name) for name in _SOURCE_META}))
    try:
        while (call := conn.recv()) is not None:
            method, args = call
            try:
                out = getattr(source, method)(*args)
                conn.send(("ok", (out, source.chunk_c2w, source.timings)))
            except BaseException as e:
                _send_error(conn, e)
    except EOFError:  # the parent is gone
        pass
    finally:
        close = getattr(source, "close", None)
        if close:
            close()


class ProcessSource:
    """A chunk source that lives in a child process (``spawn``) and is called over a pipe.

    Why: on these CPUs torch's OpenMP kernels (bf16 casts, oneDNN matmuls) ran markedly slower
    when called from a Python worker thread than from a process's main thread (``worldsim-bench
    engine`` measures both: the ``play_thread_*`` rows against the ``play_*`` rows). In the child, generation runs on
    the main thread; the play loop's worker thread only waits on the pipe (the GIL is released).
    ``factory`` must pickle (a module-level function or a ``functools.partial`` of one); errors it
    raises, such as a bad checkpoint, are raised here by the constructor."""

    def __init__(self, factory: Callable[[], ChunkSource], start_timeout_s: float = 300.0):
        ctx = mp.get_context("spawn")
        self._conn, child = ctx.Pipe()
        self._proc = ctx.Process(target=_serve_source, args=(child, factory), name="worldsim-generate", daemon=True)
        self._proc.start()
        child.close()
        if not self._conn.poll(start_timeout_s):
            self.close()
            raise WorldsimError(f"the generation process did not start within {start_timeout_s:.0f} s")
        try:
            meta = self._reply()
        except BaseException:
            self.close()
            raise
        self.name: str = meta["name"]
        self.key_names: list[str] = list(meta["key_names"])
        self.frame_size: tuple[int, int] = tuple(meta["frame_size"])
        self.fps: float = meta["fps"]
        self.chunk_frames: int = meta["chunk_frames"]
        self.intrinsics: np.ndarray = meta["intrinsics"]
        self.chunk_c2w: np.ndarray = meta["chunk_c2w"]
        self.timings: dict[str, float] = {}

    def _reply(self) -> Any:
        try:
            status, payload = self._conn.recv()
        except (EOFError, OSError):
            self._proc.join(timeout=5)
            raise WorldsimError(f"the generation process exited (exit code {self._proc.exitcode})") from None
        if status == "error":
            raise payload
        return payload

    def _call(self, method: str, *args: Any) -> np.ndarray:
        try:
            self._conn.send((method, args))
        except (BrokenPipeError, OSError):
            raise WorldsimError(f"the generation process is gone (exit code {self._proc.exitcode})") from None
        out, self.chunk_c2w, self.timings = self._reply()
        return np.asarray(out)

    def reset(self) -> np.ndarray:
        return self._call("reset")

    def step(self, keys: np.ndarray, mouse: np.ndarray) -> np.ndarray:
        return self._call("step", keys, mouse)

    def close(self) -> None:
        if self._proc.is_alive():
            try:
                self._conn.send(None)
            except (BrokenPipeError, OSError):
                pass
            self._proc.join(timeout=10)
        if self._proc.is_alive():
            self._proc.terminate()
            self._proc.join(timeout=5)
        self._conn.close()


@dataclass
class PlayLoopConfig:
    screenshot_dir: str = "screenshots"
    max_steps: int = 0  # stop after this many displayed frames (0 = until quit); for scripted checks


@dataclass
class ShownFrame:
    frame: np.ndarray
    c2w: np.ndarray
    keys: np.ndarray  # the input row that produced it
    mouse: np.ndarray
    first_of_chunk: bool
    poll_times: list[float] = field(default_factory=list)  # of the chunk's rows (first frame only)


class Recorder:
    """Frames as displayed, with the inputs and poses that produced them; ``flush`` writes the
    episode atomically (rollout format, ``source = "human"``)."""

    def __init__(self, root: str, source: ChunkSource):
        meta = RolloutMeta(
            env=source.name,
            fps=source.fps,
            frame_size=source.frame_size,
            key_names=list(source.key_names),
            source="human",
        )
        self.writer = RolloutWriter(root, meta)  # fails now, before play, if root is not writable
        self.source = source
        self.rows: dict[str, list[Any]] = {}

    @property
    def active(self) -> bool:
        return bool(self.rows)

    def start(self, frame: np.ndarray, c2w: np.ndarray) -> None:
        self.rows = {"frames": [frame], "c2w": [c2w.copy()], "keys": [], "mouse": [], "t": [0.0]}
        self.t0 = time.perf_counter()

    def add(self, shown: ShownFrame) -> None:
        r = self.rows
        r["keys"].append(shown.keys.copy())
        r["mouse"].append(shown.mouse.copy())
        r["frames"].append(shown.frame)
        r["c2w"].append(shown.c2w.copy())
        r["t"].append(np.float64(time.perf_counter() - self.t0))

    def flush(self) -> int | None:
        """Write the episode (if any frames beyond the first) and stop; returns its index."""
        r, self.rows = self.rows, {}
        if not r or len(r["frames"]) < 2:
            return None
        k = len(self.source.key_names)
        index = max(self.writer.finished, default=-1) + 1
        arrays = {
            "frames": np.stack(r["frames"]),
            "c2w": np.stack(r["c2w"]).astype(np.float32),
            "intrinsics": self.source.intrinsics.astype(np.float32),
            "keys": np.concatenate([np.stack(r["keys"]), np.zeros((1, k), np.uint8)]).astype(np.uint8),
            "mouse": np.concatenate([np.stack(r["mouse"]), np.zeros((1, 2), np.float32)]).astype(np.float32),
            "timestamp_s": np.asarray(r["t"], np.float64),
        }
        self.writer.write_episode(index, arrays, policy="human")
        return index


def chunk_inputs(
    rows: list[tuple[np.ndarray, np.ndarray, float]], k: int, num_keys: int
) -> tuple[np.ndarray, np.ndarray, list[float]]:
    """The next chunk's ``k`` input rows from the rows polled since the last submission. With
    more than ``k``, the newest ``k`` are kept and the older rows fold into the first kept one:
    their mouse motion is added to it and any key down in them is down in it, so a tap (the
    light key) is never lost when generation falls behind."""
    if len(rows) > k:
        older, rows = rows[: len(rows) - k], rows[len(rows) - k :]
        extra = np.sum([m for _, m, _ in older], axis=0)
        down = np.max([keys for keys, _, _ in older] + [rows[0][0]], axis=0)
        rows = [(down, rows[0][1] + extra, rows[0][2])] + rows[1:]
    if not rows:
        rows = [(np.zeros(num_keys, np.uint8), np.zeros(2, np.float32), time.perf_counter())]
    held_keys, _, t_last = rows[-1]
    rows = rows + [(held_keys, np.zeros(2, np.float32), t_last)] * (k - len(rows))
    return np.stack([r[0] for r in rows]), np.stack([r[1] for r in rows]).astype(np.float32), [r[2] for r in rows]


class ChunkWorker:
    """One background thread that runs ``source.step``; at most one chunk in flight."""

    def __init__(self, source: ChunkSource):
        self.source = source
        self.jobs: queue.Queue[tuple[np.ndarray, np.ndarray, list[float]] | None] = queue.Queue(maxsize=1)
        self.done: queue.Queue[tuple[Any, ...]] = queue.Queue()
        self.busy = False
        self.thread = threading.Thread(target=self._run, name="worldsim-generate", daemon=True)
        self.thread.start()

    def _run(self) -> None:
        while True:
            job = self.jobs.get()
            if job is None:
                return
            keys, mouse, times = job
            try:
                frames = self.source.step(keys, mouse)
                self.done.put(
                    ("ok", frames, self.source.chunk_c2w.copy(), keys, mouse, times, dict(self.source.timings))
                )
            except BaseException as e:  # surfaced in the main thread
                self.done.put(("error", e))

    def submit(self, keys: np.ndarray, mouse: np.ndarray, times: list[float]) -> None:
        self.busy = True
        self.jobs.put((keys, mouse, times))

    def collect(self, timeout: float = 0.0) -> tuple[Any, ...] | None:
        """A finished chunk, waiting up to ``timeout`` seconds for one; None if there is none."""
        try:
            item = self.done.get(timeout=timeout) if timeout > 0 else self.done.get_nowait()
        except queue.Empty:
            return None
        self.busy = False
        if item[0] == "error":
            raise item[1]
        return item

    def wait_idle(self) -> None:
        """Block until the chunk in flight (if any) is finished and drop it (for reset)."""
        while self.busy:
            if self.collect() is None:
                time.sleep(0.005)

    def stop(self) -> None:
        self.jobs.put(None)
        self.thread.join(timeout=30)


@dataclass
class PlayStats:
    displayed: int = 0
    held_ticks: int = 0  # ticks with no new frame to show (generation behind)
    ticks: int = 0
    polls: list[float] = field(default_factory=list)  # poll times
    latencies_s: list[float] = field(default_factory=list)
    chunk_s: list[float] = field(default_factory=list)
    first_frame_s: float = float("nan")  # from loop start to the first generated frame shown

    def summary(self) -> dict[str, float]:
        lat = np.array(self.latencies_s) if self.latencies_s else np.array([np.nan])
        span = (self.polls[-1] - self.polls[0]) if len(self.polls) > 1 else float("nan")
        return {
            "ticks": self.ticks,
            "displayed_frames": self.displayed,
            "held_ticks": self.held_ticks,
            "poll_hz": (len(self.polls) - 1) / span if span == span and span > 0 else float("nan"),
            "latency_p50_ms": float(np.percentile(lat, 50) * 1000),
            "latency_p95_ms": float(np.percentile(lat, 95) * 1000),
            "chunk_ms_mean": float(np.mean(self.chunk_s) * 1000) if self.chunk_s else float("nan"),
            "first_frame_s": self.first_frame_s,
        }


def play(source: ChunkSource, cfg: PlayLoopConfig, window: Display, record: str | None = None) -> PlayStats:
    """Run until quit (or ``max_steps`` displayed frames); a recording in progress is always written."""
    recorder = Recorder(record, source) if record else None
    window.bind_keys(list(source.key_names))
    print(window.help_text())
    k, nk = source.chunk_frames, len(source.key_names)
    t_start = time.perf_counter()
    context = source.reset()
    last_frame, last_c2w = context[-1], source.chunk_c2w[-1].copy()
    if recorder:
        recorder.start(last_frame, last_c2w)
    worker = ChunkWorker(source)
    stats = PlayStats()
    pending: list[tuple[np.ndarray, np.ndarray, float]] = []
    shown: deque[ShownFrame] = deque()
    paused, behind = False, False
    window.show(last_frame, ["starting..."])
    try:
        while True:
            # Step 1: input, every tick, whatever the worker is doing.
            keys, mouse, commands = window.poll()
            now = time.perf_counter()
            stats.polls.append(now)
            stats.ticks += 1
            if "quit" in commands:
                break
            if "pause" in commands:
                paused = not paused
            if "reset" in commands:
                worker.wait_idle()
                shown.clear()
                pending.clear()
                last_frame, last_c2w = source.reset()[-1], source.chunk_c2w[-1].copy()
                if recorder and recorder.active:  # a reset starts a new episode: poses jump
                    print(f"recorded episode {recorder.flush()} -> {record}")
                    recorder.start(last_frame, last_c2w)
            if "screenshot" in commands:
                Path(cfg.screenshot_dir).mkdir(parents=True, exist_ok=True)
                path = Path(cfg.screenshot_dir) / f"shot_{time.strftime('%Y%m%d_%H%M%S')}_{stats.displayed:06d}.png"
                write_png(path, window.screenshot())
                print(f"screenshot: {path}")
            if "record" in commands and recorder is None:
                print("recording is off: start play with record=<dataset folder> to enable F9")
            elif "record" in commands and recorder is not None:
                if recorder.active:
                    print(f"recorded episode {recorder.flush()} -> {record}")
                else:
                    recorder.start(last_frame, last_c2w)
            if not paused:
                pending.append((keys, mouse, now))
            # Step 2: take a finished chunk, then hand the worker the next one when the queue runs low.
            pending = _take_and_submit(worker, worker.collect(), shown, pending, stats, source.fps, k, nk, paused)
            # Step 3: show one frame per tick, or hold the last one.
            frame = None
            if shown and not paused:
                s = shown.popleft()
                frame, last_frame, last_c2w = s.frame, s.frame, s.c2w
                t_show = time.perf_counter()
                if s.first_of_chunk:
                    stats.latencies_s += [t_show - t for t in s.poll_times]
                    if stats.displayed == 0:
                        stats.first_frame_s = t_show - t_start
                stats.displayed += 1
                behind = False
                if recorder and recorder.active:
                    recorder.add(s)
            elif not paused:
                stats.held_ticks += 1
                behind = True
            window.show(frame, _hud(window, stats, source, paused, behind, recorder))
            if cfg.max_steps and stats.displayed >= cfg.max_steps:
                break
            # Step 4: spend the rest of the tick waiting for the worker, so that a chunk finishing
            # now is queued and the next one submitted at once instead of at the next tick.
            if worker.busy and not paused and len(stats.polls) > 2:
                period = float(np.median(np.diff(stats.polls[-9:])))
                done = worker.collect(timeout=now + 0.9 * period - time.perf_counter())
                pending = _take_and_submit(worker, done, shown, pending, stats, source.fps, k, nk, paused)
            window.tick()
    finally:
        worker.stop()
        if recorder and recorder.active:
            print(f"recorded episode {recorder.flush()} -> {record}")
        window.close()
    return stats


def _take_and_submit(
    worker: ChunkWorker,
    done: tuple[Any, ...] | None,
    shown: deque[ShownFrame],
    pending: list[tuple[np.ndarray, np.ndarray, float]],
    stats: PlayStats,
    fps: float,
    k: int,
    num_keys: int,
    paused: bool,
) -> list[tuple[np.ndarray, np.ndarray, float]]:
    """Queue a finished chunk's frames; submit the next chunk when the frames still queued cover
    about one chunk time (``lead``). Returns the input rows not yet submitted."""
    if done is not None:
        _, frames, c2w, ck, cm, times, timings = done
        stats.chunk_s.append(sum(timings.values()))
        for i in range(len(frames)):
            shown.append(ShownFrame(frames[i], c2w[i], ck[i], cm[i], i == 0, times if i == 0 else []))
    lead = math.ceil(np.mean(stats.chunk_s[-4:]) * fps) if stats.chunk_s else 0
    if not paused and not worker.busy and len(shown) <= lead and pending:
        worker.submit(*chunk_inputs(pending, k, num_keys))
        return []
    return pending


def _hud(
    window: Any, stats: PlayStats, source: ChunkSource, paused: bool, behind: bool, rec: Recorder | None
) -> list[str]:
    fps = getattr(window, "fps", float("nan"))
    lat = stats.latencies_s[-32:]
    chunk = stats.chunk_s[-1] * 1000 if stats.chunk_s else float("nan")
    state = "PAUSED" if paused else ("generation behind: holding frame" if behind else "live")
    lines = [
        f"{fps:4.1f} fps | chunk {chunk:5.0f} ms | frames {stats.displayed} | {state}",
        f"latency p50 {np.median(lat) * 1000 if lat else float('nan'):4.0f} ms | "
        + " ".join(f"{k} {v * 1000:.0f} ms" for k, v in source.timings.items()),
    ]
    if rec is not None and rec.active:
        lines.append(f"REC {len(rec.rows['frames'])} frames")
    return lines
