"""The environment interface every ground-truth world implements (design §5)."""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from worldsim.core.controller import CameraState


@dataclass
class Observation:
    """One frame of ground truth.

    ``frame (H, W, 3)`` uint8; ``depth (H, W)`` float32 metres along camera +z (sky = far);
    ``c2w (4, 4)`` float32, OpenCV axes; ``intrinsics (3, 3)`` float32 pixels; ``time_s``.
    """

    frame: np.ndarray
    depth: np.ndarray
    c2w: np.ndarray
    intrinsics: np.ndarray
    time_s: float
    info: dict[str, Any] = field(default_factory=dict)


class Env(ABC):
    """A seeded world driven by raw inputs. Same seed + same inputs -> identical frames.

    ``reset()`` returns frame 0; ``step(keys, mouse)`` applies one tick of raw input (``keys``
    ``(K,)`` uint8 multi-hot over ``key_names``, ``mouse`` ``(2,)`` dx, dy pixels) and returns
    the next frame. ``state`` is the camera state the controller integrates.
    """

    key_names: list[str]
    fps: float
    frame_size: tuple[int, int]
    intrinsics: np.ndarray
    state: CameraState
    has_depth: bool = True  # False: ``depth`` is NaN (the recorder then stores none)

    @abstractmethod
    def reset(self, state: CameraState | None = None, night: bool = False) -> Observation:
        """Start an episode and return frame 0: at ``state`` (default: the world's spawn pose), by day
        unless ``night``; ``time_s`` restarts at 0."""

    @abstractmethod
    def step(self, keys: np.ndarray, mouse: np.ndarray) -> Observation:
        """Apply one tick (``1 / fps`` s) of raw input and return the next frame. ``keys (K,)`` uint8
        multi-hot over ``key_names``, ``mouse (2,)`` dx, dy pixels. Inputs go through
        ``worldsim.core.validate`` first: a wrong shape, a key other than 0/1 or a non-finite mouse
        raises ``WorldsimError`` and leaves the world as it was."""

    def close(self) -> None:  # noqa: B027  (optional hook: worlds without resources need nothing)
        """Release GL or game resources."""

    def __enter__(self) -> Env:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
