"""The play loop: poll input every display tick, generate chunks asynchronously, show frames at
a steady rate, record what was shown.

The loop takes any chunk source (``worldsim.play.sources``: ``reset() -> Chunk``,
``submit(keys, mouse)``, ``poll(timeout_s) -> Chunk | None``, at most one chunk in flight); the
ground-truth world (k = 1) and the neural engine in a generation process are both sources. It
runs on one thread: nothing here waits except the display tick and the pipe of a source.

Per display tick (the source's frame rate, ``worldsim.play.window.display_rate``): the window is
polled and the input row (keys held, mouse motion, poll time) is queued; a chunk the source has
finished is taken, and its frames join the display queue as rows ``(frame, c2w, keys, mouse,
first_of_chunk, poll_times)``; when no chunk is in flight and the frames waiting no longer cover
the time a chunk takes to come back (``lead``: the p95 of the last chunks' submit-to-arrival times
plus ``lead_margin_ms``, in frames at the source's fps, so that a chunk lands just as the queue
empties and an input waits no longer than it must; a source that prepares its next chunk ahead, as
the engine does, answers in its critical time, ``ChunkTimings.critical_s``), the rows polled since
the last submission become the next chunk's inputs (the newest ``k``; the mouse motion of older
rows is added to the first kept row and their keys held in it, so no tap is lost; missing rows
repeat the held keys with no motion) and are submitted, to be generated while earlier frames are
shown; one frame is shown. While a chunk is in flight, the rest of the tick is spent polling the
source for it, so a chunk that finishes mid-tick is queued and the next one submitted at once. When
the queue is empty the last frame stays up and the HUD says generation is behind. Input is polled
every tick whatever the source is doing. Latency of an input row = display time of the first frame
generated with it minus its poll time, for every row polled, folded ones included. The HUD's frame
rate counts the new frames shown in the last second (a held frame is not a frame: it falls to 0
within a second when generation stalls), beside the number of ticks that held a frame.
"""

from __future__ import annotations

import math
import time
from collections import deque
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any, Protocol

import numpy as np

from worldsim.data.format import RolloutMeta, controller_extra
from worldsim.data.preview import write_png
from worldsim.data.writer import RolloutWriter
from worldsim.inference.engine import Chunk, ChunkTimings
from worldsim.memory.bank import MemoryHit
from worldsim.play.sources import ChunkSource

InputRow = tuple[np.ndarray, np.ndarray, float]  # keys held (K,) uint8, mouse (2,) pixels, poll time


class Display(Protocol):
    """What the loop needs from a window (worldsim.play.window.Window, or a stand-in in tests)."""

    def bind_keys(self, key_names: list[str]) -> None:
        """Map the source's key list (pygame key names) to physical keys."""
        ...

    def poll(self) -> tuple[np.ndarray, np.ndarray, set[str]]:
        """-> keys held ``(K,)`` uint8, mouse motion since the last poll ``(2,)`` pixels, commands."""
        ...

    def show(self, frame_u8: np.ndarray | None, hud_lines: list[str]) -> None:
        """Draw ``frame_u8 (H, W, 3)`` (None: keep the last one) and the HUD lines."""
        ...

    def screenshot(self) -> np.ndarray:
        """What the window shows now, ``(H, W, 3)`` uint8."""
        ...

    def tick(self) -> None:
        """Wait for the next display tick (the source's frame rate)."""
        ...

    def help_text(self) -> str:
        """The key bindings, for the terminal."""
        ...

    def close(self) -> None:
        """Close the window and release the mouse."""
        ...


@dataclass
class PlayLoopConfig:
    """Options of the play loop (``loop.*`` in ``play.yaml``)."""

    screenshot_dir: str = "screenshots"
    max_steps: int = 0  # stop after this many displayed frames (0 = until quit); for scripted checks
    lead_margin_ms: float = 10.0  # submit the next chunk this much earlier than its measured p95 return time


@dataclass
class ShownFrame:
    """A row of the display queue: one frame of a Chunk with the input row that produced it."""

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
            extra=controller_extra(source.controller),  # the poses' motion (DOOM: its momentum)
        )
        self.writer = RolloutWriter(root, meta)  # fails now, before play, if root is not writable
        self.source = source
        self.rows: dict[str, list[Any]] = {}

    @property
    def active(self) -> bool:
        """Whether an episode is being recorded."""
        return bool(self.rows)

    def start(self, frame: np.ndarray, c2w: np.ndarray) -> None:
        """Begin an episode at the frame on screen ``(H, W, 3)`` and its pose ``(4, 4)``."""
        self.rows = {"frames": [frame], "c2w": [c2w.copy()], "keys": [], "mouse": [], "t": [0.0]}
        self.t0 = time.perf_counter()

    def add(self, shown: ShownFrame) -> None:
        """Append a displayed frame with the input row that produced it (rollout order)."""
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


def chunk_inputs(rows: list[InputRow], k: int, num_keys: int) -> tuple[np.ndarray, np.ndarray, list[float]]:
    """The next chunk's ``k`` input rows from the rows polled since the last submission, and the
    poll times of every one of those rows (the chunk's first frame answers all of them). With
    more than ``k``, the newest ``k`` are kept and the older rows fold into the first kept one:
    their mouse motion is added to it and any key down in them is down in it, so a tap (the
    light key) is never lost when generation falls behind. Fewer than ``k``: the held keys
    repeat with no motion (those padding rows were never polled: no poll time)."""
    polled = [t for _, _, t in rows]
    if len(rows) > k:
        older, rows = rows[: len(rows) - k], rows[len(rows) - k :]
        extra = np.sum([m for _, m, _ in older], axis=0)
        down = np.max([keys for keys, _, _ in older] + [rows[0][0]], axis=0)
        rows = [(down, rows[0][1] + extra, rows[0][2])] + rows[1:]
    if not rows:
        rows = [(np.zeros(num_keys, np.uint8), np.zeros(2, np.float32), time.perf_counter())]
    held_keys, _, t_last = rows[-1]
    rows = rows + [(held_keys, np.zeros(2, np.float32), t_last)] * (k - len(rows))
    return np.stack([r[0] for r in rows]), np.stack([r[1] for r in rows]).astype(np.float32), polled


@dataclass
class PlayStats:
    """What the loop counted: frames shown, held ticks, poll times, latencies, chunk times."""

    displayed: int = 0
    held_ticks: int = 0  # ticks with no new frame to show (generation behind)
    held_after_first: int = 0  # of those, the ticks after the first frame was shown (the start's wait excluded)
    ticks: int = 0
    polls: list[float] = field(default_factory=list)  # poll times
    latencies_s: list[float] = field(default_factory=list)
    chunk_s: list[float] = field(default_factory=list)
    critical_s: list[float] = field(default_factory=list)  # per chunk: the work that needed its inputs
    turnaround_s: list[float] = field(default_factory=list)  # per chunk: submitted -> in the loop's hands
    draw_s: list[float] = field(default_factory=list)  # per new frame: the window's show (upload, draw, swap)
    memory_hits: int = 0  # chunks generated with at least one entry retrieved from the memory bank
    first_frame_s: float = float("nan")  # from loop start to the first generated frame shown
    shown_at: deque[float] = field(default_factory=deque)  # display times of the new frames of the last second

    def frame_shown(self, t: float) -> None:
        """Count a new frame displayed at ``t`` (perf_counter seconds)."""
        self.displayed += 1
        self.shown_at.append(t)

    def fps_now(self, now: float) -> float:
        """New frames shown in the last second before ``now``: the HUD's honest frame rate."""
        while self.shown_at and self.shown_at[0] <= now - 1.0:
            self.shown_at.popleft()
        return float(len(self.shown_at))

    def summary(self) -> dict[str, float]:
        """Displayed frames, poll rate (Hz), latency p50/p95 (ms), mean chunk time (ms), critical
        time, turnaround and drawing p50/p95 (ms), first frame (s)."""
        lat = np.array(self.latencies_s) if self.latencies_s else np.array([np.nan])
        span = (self.polls[-1] - self.polls[0]) if len(self.polls) > 1 else float("nan")
        return {
            "ticks": self.ticks,
            "displayed_frames": self.displayed,
            "held_ticks": self.held_ticks,
            "held_ticks_after_first": self.held_after_first,
            "poll_hz": (len(self.polls) - 1) / span if span == span and span > 0 else float("nan"),
            "latency_p50_ms": float(np.percentile(lat, 50) * 1000),
            "latency_p95_ms": float(np.percentile(lat, 95) * 1000),
            "chunk_ms_mean": float(np.mean(self.chunk_s) * 1000) if self.chunk_s else float("nan"),
            **_percentiles_ms("critical", self.critical_s),
            **_percentiles_ms("turnaround", self.turnaround_s),
            **_percentiles_ms("draw", self.draw_s),
            "first_frame_s": self.first_frame_s,
            "memory_hit_chunks": self.memory_hits,
        }


def _percentiles_ms(name: str, seconds: list[float]) -> dict[str, float]:
    """``{name}_ms_p50`` and ``{name}_ms_p95`` of ``seconds`` (NaN when empty)."""
    ms = 1000 * np.array(seconds) if seconds else np.array([np.nan])
    return {f"{name}_ms_p50": float(np.percentile(ms, 50)), f"{name}_ms_p95": float(np.percentile(ms, 95))}


class ChunkScheduler:
    """Input rows in, frames to show out: submits the rows polled since the last submission to
    ``source`` when the queue runs low (:meth:`lead`), and turns each chunk that comes back into
    queue rows. At most one chunk in flight; ``in_flight`` holds its inputs."""

    def __init__(self, source: ChunkSource, stats: PlayStats, margin_s: float = 0.01):
        self.source, self.stats, self.margin_s = source, stats, margin_s
        self.pending: list[InputRow] = []
        self.in_flight: tuple[np.ndarray, np.ndarray, list[float]] | None = None
        self.submitted_at = 0.0
        self.shown: deque[ShownFrame] = deque()
        self.timings = ChunkTimings()  # of the last chunk (the HUD's stage times)
        self.memory: tuple[MemoryHit, ...] = ()  # the last chunk's memory hits (the HUD's)

    def reset(self) -> Chunk:
        """Drop the chunk in flight, the queue and the pending rows; the source's start."""
        if self.in_flight is not None:
            self.source.poll(None)
        self.in_flight = None
        self.shown.clear()
        self.pending.clear()
        return self.source.reset()

    def pump(self, paused: bool, timeout_s: float = 0.0) -> None:
        """Queue the chunk in flight if it is done (waiting up to ``timeout_s``), then submit the
        next when the frames still queued cover about one chunk time."""
        if self.in_flight is not None and (chunk := self.source.poll(timeout_s)) is not None:
            keys, mouse, times = self.in_flight
            self.in_flight = None
            self.timings, self.memory = chunk.timings, chunk.memory
            self.stats.turnaround_s.append(time.perf_counter() - self.submitted_at)
            self.stats.chunk_s.append(chunk.timings.total_s)
            self.stats.critical_s.append(chunk.timings.critical_s)
            self.stats.memory_hits += bool(chunk.memory)
            for i in range(len(chunk.frames)):
                rows_polled = times if i == 0 else []  # latency is counted at a chunk's first frame
                self.shown.append(ShownFrame(chunk.frames[i], chunk.c2w[i], keys[i], mouse[i], i == 0, rows_polled))
        if not paused and self.in_flight is None and len(self.shown) <= self.lead() and self.pending:
            src = self.source
            self.in_flight = chunk_inputs(self.pending, src.chunk_frames, len(src.key_names))
            self.pending = []
            self.submitted_at = time.perf_counter()
            src.submit(self.in_flight[0], self.in_flight[1])

    def lead(self) -> int:
        """Queued frames at or below which the next chunk is submitted: the p95 of the last 8
        chunks' submit-to-arrival times plus the margin, in frames at the source's fps (0 before
        the first chunk: submit at once)."""
        recent = self.stats.turnaround_s[-8:]
        if not recent:
            return 0
        return math.ceil((float(np.percentile(recent, 95)) + self.margin_s) * self.source.fps)


def play(source: ChunkSource, cfg: PlayLoopConfig, window: Display, record: str | None = None) -> PlayStats:
    """Run until quit (or ``max_steps`` displayed frames); a recording in progress is always written."""
    recorder = Recorder(record, source) if record else None
    window.bind_keys(list(source.key_names))
    print(window.help_text())
    t_start = time.perf_counter()
    start = source.reset()
    last_frame, last_c2w = start.frames[-1], start.c2w[-1]
    if recorder:
        recorder.start(last_frame, last_c2w)
    stats = PlayStats()
    sched = ChunkScheduler(source, stats, cfg.lead_margin_ms / 1000)
    paused, behind = False, False
    window.show(last_frame, ["starting..."])
    try:
        while True:
            # Step 1: input, every tick, whatever the source is doing.
            keys, mouse, commands = window.poll()
            now = time.perf_counter()
            stats.polls.append(now)
            stats.ticks += 1
            if "quit" in commands:
                break
            if "pause" in commands:
                paused = not paused
            if "reset" in commands:
                start = sched.reset()
                last_frame, last_c2w = start.frames[-1], start.c2w[-1]
                if recorder and recorder.active:  # a reset starts a new episode: poses jump
                    print(f"recorded episode {recorder.flush()} -> {record}")
                    recorder.start(last_frame, last_c2w)
            if "screenshot" in commands:
                path = Path(cfg.screenshot_dir) / f"shot_{time.strftime('%Y%m%d_%H%M%S')}_{stats.displayed:06d}.png"
                try:
                    path.parent.mkdir(parents=True, exist_ok=True)
                    write_png(path, window.screenshot())
                    print(f"screenshot: {path}")
                except OSError as e:  # a message, not the end of the session
                    print(f"screenshot not saved: cannot write {path} ({e.strerror or e})")
            if "record" in commands and recorder is None:
                print("recording is off: start play with record=<dataset folder> to enable F9")
            elif "record" in commands and recorder is not None:
                if recorder.active:
                    print(f"recorded episode {recorder.flush()} -> {record}")
                else:
                    recorder.start(last_frame, last_c2w)
            if not paused:
                sched.pending.append((keys, mouse, now))
            # Step 2: take a finished chunk, then submit the next one when the queue runs low.
            sched.pump(paused)
            # Step 3: show one frame per tick, or hold the last one.
            frame = None
            if sched.shown and not paused:
                s = sched.shown.popleft()
                frame, last_frame, last_c2w = s.frame, s.frame, s.c2w
                t_show = time.perf_counter()
                if s.first_of_chunk:
                    stats.latencies_s += [t_show - t for t in s.poll_times]
                    if stats.displayed == 0:
                        stats.first_frame_s = t_show - t_start
                stats.frame_shown(t_show)
                behind = False
                if recorder and recorder.active:
                    recorder.add(s)
            elif not paused:
                stats.held_ticks += 1
                stats.held_after_first += stats.displayed > 0
                behind = True
            t_draw = time.perf_counter()
            window.show(frame, _hud(window, stats, sched, paused, behind, recorder))
            if frame is not None:  # a new frame: upload, draw, swap
                stats.draw_s.append(time.perf_counter() - t_draw)
            if cfg.max_steps and stats.displayed >= cfg.max_steps:
                break
            # Step 4: spend the rest of the tick polling the source, so that a chunk finishing
            # now is queued and the next one submitted at once instead of at the next tick.
            if sched.in_flight is not None and not paused and len(stats.polls) > 2:
                period = float(np.median(np.diff(stats.polls[-9:])))
                sched.pump(paused, timeout_s=now + 0.9 * period - time.perf_counter())
            window.tick()
    finally:
        if recorder and recorder.active:
            print(f"recorded episode {recorder.flush()} -> {record}")
        window.close()
    return stats


def _hud(
    window: Any, stats: PlayStats, sched: ChunkScheduler, paused: bool, behind: bool, rec: Recorder | None
) -> list[str]:
    """The HUD lines; the stage times and memory hits are those of the last chunk; the frame
    rate counts new frames shown in the last second."""
    timings = sched.timings
    fps = stats.fps_now(time.perf_counter())
    lat = stats.latencies_s[-32:]
    chunk = stats.chunk_s[-1] * 1000 if stats.chunk_s else float("nan")
    state = "PAUSED" if paused else ("generation behind: holding frame" if behind else "live")
    stages = [(f.name.removesuffix("_s"), getattr(timings, f.name)) for f in fields(timings) if f.name != "critical_s"]
    lines = [  # short lines: a 64-pixel frame at the default scale is a 512-pixel window
        f"{fps:4.1f} fps | chunk {chunk:5.0f} ms | frames {stats.displayed} | held {stats.held_ticks} | {state}",
        f"latency p50 {np.median(lat) * 1000 if lat else float('nan'):4.0f} ms | "
        f"critical {timings.critical_s * 1000:.0f} ms (input to frames)",
        " ".join(f"{name} {s * 1000:.0f} ms" for name, s in stages if s > 0),
    ]
    if stats.memory_hits:  # memory on, and a place has come back at least once
        best = f"{len(sched.memory)} hit, best score {sched.memory[0].score:.2f}" if sched.memory else "no hit"
        lines.append(f"memory: {best} | chunks with hits {stats.memory_hits}")
    if rec is not None and rec.active:
        lines.append(f"REC {len(rec.rows['frames'])} frames")
    return lines
