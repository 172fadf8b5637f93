"""The ActionEncoder contract: raw inputs -> the model's per-frame action vector."""

from __future__ import annotations

from abc import ABC, abstractmethod
from typing import ClassVar

import numpy as np

from worldsim.core.validate import check_keys, check_mouse


class ActionEncoder(ABC):
    """Turns raw inputs into a fixed-size float32 vector per frame. Not learned.

    Raw inputs are what datasets store: ``keys`` a uint8 multi-hot over ``key_names`` and
    ``mouse`` the ``(dx, dy)`` pixels moved during that frame. Subclasses set ``name`` (the
    registry key, stable forever), ``version`` (bump when the output for the same input
    changes: checkpoints refuse a different version) and compute ``dim``.
    """

    name: ClassVar[str]
    version: ClassVar[int]

    def __init__(self, key_names: list[str]):
        self.key_names = list(key_names)

    @property
    @abstractmethod
    def dim(self) -> int:
        """Length of the encoded vector."""

    @abstractmethod
    def encode_batch(self, keys: np.ndarray, mouse: np.ndarray) -> np.ndarray:
        """``keys (T, K)`` uint8, ``mouse (T, 2)`` float32 -> ``(T, dim)`` float32."""

    def encode_sequence(self, keys: np.ndarray, mouse: np.ndarray, previous_keys: np.ndarray | None) -> np.ndarray:
        """Inputs in time order: ``keys (T, K)``, ``mouse (T, 2)`` continuing after
        ``previous_keys (K,)``, the input row just before ``keys[0]`` (None: nothing held) ->
        ``(T, dim)`` float32. An encoder whose output depends on the previous row (a press edge)
        overrides this; the others encode row by row (:meth:`encode_batch`)."""
        return self.encode_batch(keys, mouse)

    def channels(self) -> list[str]:
        """One name per output channel (``"<encoder name>:<i>"`` unless a subclass says better);
        ``init_from`` maps an older model's action weights onto this encoder's by these names."""
        return [f"{self.name}:{i}" for i in range(self.dim)]

    def encode(self, keys: np.ndarray, mouse: np.ndarray) -> np.ndarray:
        """One frame: ``keys (K,)``, ``mouse (2,)`` -> ``(dim,)`` float32."""
        return self.encode_batch(np.asarray(keys)[None], np.asarray(mouse)[None])[0]

    def frame_actions(self, keys: np.ndarray, mouse: np.ndarray, before: np.ndarray | None = None) -> np.ndarray:
        """Per-frame conditioning ``(T, dim)``: row ``t`` is the encoded input that produced
        frame ``t`` (``action[t-1]`` in rollout order); frame 0 gets ``before`` or the null
        action. Training and the engine both condition through this."""
        enc = self.encode_sequence(keys, mouse, None)
        first = self.null_action() if before is None else before
        return np.concatenate([first[None], enc[:-1]], 0).astype(np.float32)

    def null_action(self) -> np.ndarray:
        """``(dim,)``: what action dropout trains with and guidance compares against, and the
        action of a session's first frame (no input produced it). Here the encoding of "nothing
        pressed, mouse still", the same vector as an idle player; an encoder with a null flag
        (``keyboard_press_mouse``) makes it distinct from every real input."""
        return self.encode(np.zeros(len(self.key_names), np.uint8), np.zeros(2, np.float32))

    def check_inputs(self, keys: np.ndarray, mouse: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Validate (:mod:`worldsim.core.validate`: keys 0/1 ``(T, K)``, mouse finite ``(T, 2)``)
        and cast both to float32 (uint8 arithmetic wraps). Raises ``WorldsimError`` otherwise."""
        k = check_keys(f"{self.name} keys", keys, len(self.key_names))
        m = check_mouse(f"{self.name} mouse", mouse, len(k))
        return k.astype(np.float32), m

    def spec(self) -> dict[str, object]:
        """What a checkpoint records to refuse a mismatched encoder later."""
        return {"name": self.name, "version": self.version, "dim": self.dim, "key_names": self.key_names}
