"""Built-in action encoders: keyboard multi-hot, key-press edges, compressed mouse motion, and
their compositions (``keyboard_mouse``, v1's; ``keyboard_press_mouse`` with a null flag, v2's)."""

from __future__ import annotations

import numpy as np

from worldsim.core.actions.encoder import ActionEncoder
from worldsim.core.actions.registry import register_action_encoder
from worldsim.core.validate import check_keys

# Mouse deltas are heavy-tailed (a flick can be 100 px, a slow pan 1 px): a signed log keeps
# small motions distinguishable while bounding flicks. This many pixels maps to 1.0.
MOUSE_UNIT_PX = 64.0


@register_action_encoder
class KeyboardEncoder(ActionEncoder):
    """Multi-hot of the held keys, in ``key_names`` order."""

    name = "keyboard"
    version = 1

    @property
    def dim(self) -> int:
        """One channel per key in ``key_names``."""
        return len(self.key_names)

    def encode_batch(self, keys: np.ndarray, mouse: np.ndarray) -> np.ndarray:
        """``keys (T, K)`` uint8 -> ``(T, K)`` float32 clipped to [0, 1]; ``mouse`` is checked, then ignored."""
        k, _ = self.check_inputs(keys, mouse)
        return np.clip(k, 0.0, 1.0)

    def channels(self) -> list[str]:
        """``key:<name>`` per key."""
        return [f"key:{k}" for k in self.key_names]


@register_action_encoder
class KeyPressEncoder(ActionEncoder):
    """Press edges: 1 on the row where a key goes down (up on the row before), else 0, so a model
    can tell a press from a hold (a toggle acts on the press alone)."""

    name = "key_press"
    version = 1

    @property
    def dim(self) -> int:
        """One channel per key in ``key_names``."""
        return len(self.key_names)

    def encode_batch(self, keys: np.ndarray, mouse: np.ndarray) -> np.ndarray:
        """``keys (T, K)`` -> ``(T, K)`` float32 edges, with nothing held before the first row."""
        return self.encode_sequence(keys, mouse, None)

    def encode_sequence(self, keys: np.ndarray, mouse: np.ndarray, previous_keys: np.ndarray | None) -> np.ndarray:
        """``keys (T, K)`` after ``previous_keys (K,)`` (None: all up) -> ``(T, K)`` float32,
        ``keys[t] * (1 - keys[t - 1])``. Raises ``WorldsimError`` on keys that are not 0/1."""
        k, _ = self.check_inputs(keys, mouse)
        before = np.zeros((1, k.shape[1]), np.float32)
        if previous_keys is not None:
            before = check_keys("key_press previous_keys", np.asarray(previous_keys)[None], k.shape[1])
        return k * (1.0 - np.concatenate([before.astype(np.float32), k[:-1]], 0))

    def channels(self) -> list[str]:
        """``press:<name>`` per key."""
        return [f"press:{k}" for k in self.key_names]


@register_action_encoder
class MouseEncoder(ActionEncoder):
    """``sign(d) * log1p(|d|) / log1p(MOUSE_UNIT_PX)`` for dx and dy."""

    name = "mouse"
    version = 1

    @property
    def dim(self) -> int:
        """Two channels: dx then dy."""
        return 2

    def encode_batch(self, keys: np.ndarray, mouse: np.ndarray) -> np.ndarray:
        """``mouse (T, 2)`` pixels -> ``(T, 2)`` float32; +-64 px maps to +-1, unbounded but log-compressed.

        Raises ``WorldsimError`` (via ``check_inputs``) on a keys/mouse shape mismatch.
        """
        _, m = self.check_inputs(keys, mouse)
        return (np.sign(m) * np.log1p(np.abs(m)) / np.log1p(MOUSE_UNIT_PX)).astype(np.float32)

    def channels(self) -> list[str]:
        """``mouse:dx``, ``mouse:dy``."""
        return ["mouse:dx", "mouse:dy"]


class NullFlag(ActionEncoder):
    """One channel, 0 for every real input and 1 in :meth:`null_action`: the input that action
    dropout trains with and guidance compares against is then distinct from an idle player's.
    A part of composite encoders, not registered alone."""

    name = "null_flag"
    version = 1

    @property
    def dim(self) -> int:
        """One channel."""
        return 1

    def encode_batch(self, keys: np.ndarray, mouse: np.ndarray) -> np.ndarray:
        """``(T, 1)`` zeros (inputs checked)."""
        k, _ = self.check_inputs(keys, mouse)
        return np.zeros((len(k), 1), np.float32)

    def null_action(self) -> np.ndarray:
        """``[1.0]``."""
        return np.ones(1, np.float32)

    def channels(self) -> list[str]:
        """``null``."""
        return ["null"]


class CompositeEncoder(ActionEncoder):
    """Concatenation of other encoders' outputs; subclass with ``parts`` to register one."""

    parts: tuple[type[ActionEncoder], ...] = ()

    def __init__(self, key_names: list[str]):
        super().__init__(key_names)
        self.encoders = [p(key_names) for p in self.parts]

    @property
    def dim(self) -> int:
        """Sum of the parts' dims."""
        return sum(e.dim for e in self.encoders)

    def encode_batch(self, keys: np.ndarray, mouse: np.ndarray) -> np.ndarray:
        """``(T, sum of part dims)`` float32: each part's ``encode_batch`` concatenated in ``parts`` order."""
        self.check_inputs(keys, mouse)
        return np.concatenate([e.encode_batch(keys, mouse) for e in self.encoders], axis=1)

    def encode_sequence(self, keys: np.ndarray, mouse: np.ndarray, previous_keys: np.ndarray | None) -> np.ndarray:
        """Each part's ``encode_sequence`` concatenated in ``parts`` order."""
        self.check_inputs(keys, mouse)
        return np.concatenate([e.encode_sequence(keys, mouse, previous_keys) for e in self.encoders], axis=1)

    def null_action(self) -> np.ndarray:
        """Each part's null action concatenated."""
        return np.concatenate([e.null_action() for e in self.encoders]).astype(np.float32)

    def channels(self) -> list[str]:
        """Each part's channel names concatenated."""
        return [c for e in self.encoders for c in e.channels()]


@register_action_encoder
class KeyboardMouseEncoder(CompositeEncoder):
    """The default: keyboard multi-hot followed by the two mouse channels."""

    name = "keyboard_mouse"
    version = 1
    parts = (KeyboardEncoder, MouseEncoder)


@register_action_encoder
class KeyboardPressMouseEncoder(CompositeEncoder):
    """The real-time teacher's (``teacher_builtin_v2``): held keys, press edges, the two mouse
    channels and a null flag, ``2K + 3`` channels. A press and a hold differ from the first row,
    and the null action (flag 1, the rest 0) is no player's input."""

    name = "keyboard_press_mouse"
    version = 1
    parts = (KeyboardEncoder, KeyPressEncoder, MouseEncoder, NullFlag)
