"""Chunk sources: where the play loop's frames come from.

A source has ``name``, ``key_names``, ``frame_size``, ``fps``, ``chunk_frames`` and ``intrinsics``;
``reset() -> Chunk`` (the start's frames and their poses, zero timings), ``submit(keys (k, K),
mouse (k, 2))`` and ``poll(timeout_s) -> Chunk | None`` (at most one chunk in flight: submit,
then poll until it comes), ``close()``. Every result is a :class:`~worldsim.inference.engine.Chunk`,
returned, never left behind as an attribute.

In-process sources (:class:`SyncSource`: the ground-truth world drawn in the window's own GL
context, an engine in this process) compute the chunk in ``submit`` on the calling thread, the
loop's; ``poll`` hands it over. :class:`ProcessSource` runs a SyncSource in a child process:
``submit`` writes the inputs to the pipe and returns at once, ``poll`` waits on the pipe for up to
``timeout_s``. No thread anywhere. Between a chunk sent and the next inputs received, the child
runs the source's ``prepare()`` (the engine's input-independent work for the next chunk,
``Engine.prepare``), so the player's next input waits only for the work that needs it.
"""

from __future__ import annotations

import multiprocessing as mp
import signal
from abc import ABC, abstractmethod
from collections.abc import Callable
from typing import Any, Protocol

import numpy as np

from envs.doom import DoomConfig
from worldsim.core.controller import CameraControllerConfig
from worldsim.core.errors import WorldsimError
from worldsim.inference.engine import Chunk, Engine


class ChunkSource(Protocol):
    """What the play loop plays: a ground-truth world or the engine, in this process or a child.
    At most one chunk is in flight: ``submit`` starts it, ``poll`` collects it."""

    name: str
    key_names: list[str]
    frame_size: tuple[int, int]
    fps: float
    chunk_frames: int
    intrinsics: np.ndarray
    controller: CameraControllerConfig  # what moves the poses: the world's, or the checkpoint's

    def reset(self) -> Chunk:
        """Start (again) from the source's start -> its frames and their poses."""
        ...

    def submit(self, keys: np.ndarray, mouse: np.ndarray) -> None:
        """Start the next chunk from ``chunk_frames`` input rows ``keys (k, K)`` uint8, ``mouse (k, 2)``."""
        ...

    def poll(self, timeout_s: float | None = 0.0) -> Chunk | None:
        """The chunk in flight when done, waiting up to ``timeout_s`` seconds (None: until done)."""
        ...

    def close(self) -> None:
        """Release what the source holds (a child process, a GL context)."""
        ...


class SyncSource(ABC):
    """A source that computes in this thread: ``step`` is the work, ``submit`` runs it at once and
    ``poll`` returns its chunk (``timeout_s`` is never needed). Fine for sources much faster than
    a display tick (the ground-truth world); an engine here blocks input while it generates."""

    name: str
    key_names: list[str]
    frame_size: tuple[int, int]
    fps: float
    chunk_frames: int
    intrinsics: np.ndarray
    # What moves the poses (recordings write it down); a source that does not set it moves as the
    # built-in world's default camera.
    controller: CameraControllerConfig = CameraControllerConfig()
    _done: Chunk | None = None

    @abstractmethod
    def reset(self) -> Chunk:
        """Start from the source's start -> its frames and their poses."""

    @abstractmethod
    def step(self, keys: np.ndarray, mouse: np.ndarray) -> Chunk:
        """Compute one chunk from ``k`` input rows (the work ``submit`` runs)."""

    def submit(self, keys: np.ndarray, mouse: np.ndarray) -> None:
        """Compute the chunk now, on this thread."""
        self._done = self.step(keys, mouse)

    def poll(self, timeout_s: float | None = 0.0) -> Chunk | None:
        """The chunk the last ``submit`` computed, once; None after that."""
        done, self._done = self._done, None
        return done

    def prepare(self) -> None:  # noqa: B027 (most sources have nothing to do ahead)
        """Do the next step's work that does not need its inputs (nothing by default)."""

    def close(self) -> None:  # noqa: B027 (most sources hold nothing to release)
        """Nothing to release by default."""


class EngineSource(SyncSource):
    """The neural engine, started from ground truth of world ``seed`` (drawn in ``gl_context``
    when given: under X11 the world must share the window's context); ``doom`` picks the levels
    of a DOOM checkpoint's start (None: those it was trained on, its ``levels``)."""

    name = "model"

    def __init__(self, engine: Engine, seed: int, gl_context: Any = None, doom: DoomConfig | None = None):
        from envs.record import world_config_for

        self.engine, self.seed, self.gl_context = engine, seed, gl_context
        # the start's world, worked out here so a checkpoint no world fits fails before a window opens
        self.world = world_config_for(engine.cfg.env, engine.cfg.controller, doom, engine.cfg.levels)
        self.key_names, self.fps, self.chunk_frames = engine.key_names, engine.fps, engine.chunk_frames
        self.frame_size, self.intrinsics = engine.frame_size, engine.intrinsics
        self.controller = engine.cfg.controller

    def reset(self) -> Chunk:
        """The engine restarts from the spawn view of world ``seed`` held still -> that context."""
        from envs.starts import world_start

        e = self.engine
        start = world_start(
            self.seed, e.context_frames, e.key_names, e.frame_size, e.cfg.env, self.gl_context, world=self.world
        )
        e.reset(*start.arrays())
        return Chunk(start.frames, start.c2w)

    def step(self, keys: np.ndarray, mouse: np.ndarray) -> Chunk:
        """One ``Engine.step``."""
        return self.engine.step(keys, mouse)

    def prepare(self) -> None:
        """``Engine.prepare``: the next chunk's cache write and memory retrieval, ahead of its inputs."""
        self.engine.prepare()


def open_engine_source(checkpoint: str, seed: int, doom: DoomConfig | None = None, **engine_kw: Any) -> EngineSource:
    """Load a checkpoint as a source started from world ``seed`` (the generation process's factory);
    ``doom`` as for :class:`EngineSource`."""
    from worldsim.inference.engine import load_engine

    return EngineSource(load_engine(checkpoint, seed=seed, **engine_kw), seed, doom=doom)


_SOURCE_META = ("name", "key_names", "frame_size", "fps", "chunk_frames", "intrinsics", "controller")


def _send_error(conn: Any, e: BaseException) -> None:
    try:
        conn.send(("error", e))
    except Exception:  # an exception that does not pickle still reaches the player as text
        conn.send(("error", WorldsimError(f"{type(e).__name__}: {e}")))


def _serve_source(conn: Any, factory: Callable[[], SyncSource]) -> None:
    """The generation process: build the source, then answer ``("reset", ())`` and ``("step",
    (keys, mouse))`` with a Chunk until ``None``, preparing the next step after each answer while
    the parent polls its input. Generation runs on this process's main thread."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C is the parent's to handle; it stops us
    try:
        source = factory()
    except BaseException as e:
        _send_error(conn, e)
        return
    conn.send(("ok", {name: getattr(source, name) for name in _SOURCE_META}))
    calls: dict[str, Callable[..., Chunk]] = {"reset": source.reset, "step": source.step}
    try:
        while (call := conn.recv()) is not None:
            method, args = call
            try:
                conn.send(("ok", calls[method](*args)))
            except BaseException as e:
                _send_error(conn, e)
                continue
            try:
                source.prepare()  # while the parent polls the next inputs
            except Exception:  # nobody asked yet: the step prepares again, exactly, and raises it if it persists
                pass
    except EOFError:  # the parent is gone
        pass
    finally:
        source.close()


class ProcessSource:
    """A SyncSource that lives in a child process (``spawn``), driven over a pipe.

    Why: on these CPUs torch's OpenMP kernels (bf16 casts, oneDNN matmuls) ran markedly slower
    when called from a Python worker thread than from a process's main thread. In the child,
    generation runs on the main thread; here ``submit`` sends the inputs and ``poll`` waits on the
    pipe (the loop's own thread, no other). ``factory`` must pickle (a module-level function or a
    ``functools.partial`` of one); errors it raises, such as a bad checkpoint, are raised here by
    the constructor, errors of a step by the ``poll`` that receives it, and a child that dies is
    reported as a ``WorldsimError`` naming its exit code."""

    def __init__(self, factory: Callable[[], SyncSource], start_timeout_s: float = 300.0):
        ctx = mp.get_context("spawn")
        self._conn, child = ctx.Pipe()
        self._proc = ctx.Process(target=_serve_source, args=(child, factory), name="worldsim-generate", daemon=True)
        self._proc.start()
        child.close()
        self._busy = False
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
        self.controller: CameraControllerConfig = meta["controller"]

    def _send(self, method: str, *args: Any) -> None:
        try:
            self._conn.send((method, args))
        except (BrokenPipeError, OSError):
            raise WorldsimError(f"the generation process is gone (exit code {self._proc.exitcode})") from None

    def _reply(self) -> Any:
        try:
            status, payload = self._conn.recv()
        except (EOFError, OSError):
            self._proc.join(timeout=5)
            raise WorldsimError(f"the generation process exited (exit code {self._proc.exitcode})") from None
        if status == "error":
            raise payload
        return payload

    def reset(self) -> Chunk:
        """The child's source restarts -> its start; refused while a chunk is in flight."""
        if self._busy:
            raise WorldsimError("reset with a chunk in flight: poll it first")
        self._send("reset")
        chunk: Chunk = self._reply()
        return chunk

    def submit(self, keys: np.ndarray, mouse: np.ndarray) -> None:
        """Send the input rows to the child; refused while a chunk is in flight."""
        if self._busy:
            raise WorldsimError("a chunk is already in flight: poll it before submitting the next")
        self._send("step", keys, mouse)
        self._busy = True

    def poll(self, timeout_s: float | None = 0.0) -> Chunk | None:
        """The chunk in flight once the child has sent it, waiting up to ``timeout_s`` seconds
        (None: until it comes); None when nothing is in flight or it is not done yet."""
        if not self._busy or not self._conn.poll(None if timeout_s is None else max(0.0, timeout_s)):
            return None
        self._busy = False  # the reply (a chunk, an error, or the child's death) ends the flight
        chunk: Chunk = self._reply()
        return chunk

    def close(self) -> None:
        """Ask the child to stop, then terminate it if it does not within 10 s."""
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
