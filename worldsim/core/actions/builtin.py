"""Built-in action encoders: keyboard multi-hot, compressed mouse motion, and both."""

from __future__ import annotations

import numpy as np

from worldsim.core.actions.encoder import ActionEncoder
from worldsim.core.actions.registry import register_action_encoder

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


@register_action_encoder
class KeyboardMouseEncoder(CompositeEncoder):
    """The default: keyboard multi-hot followed by the two mouse channels."""

    name = "keyboard_mouse"
    version = 1
    parts = (KeyboardEncoder, MouseEncoder)
