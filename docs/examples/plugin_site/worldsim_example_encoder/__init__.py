"""An example third-party action encoder package for worldsim.

It registers ``move_direction``: the held movement keys as a one-hot over nine compass
directions (eight headings and "none"), plus the two mouse channels of the built-in encoder.
Installed as a distribution, its entry point in group ``worldsim.action_encoders`` makes
worldsim import this module, which registers the class.
"""

import numpy as np

from worldsim.core.actions import ActionEncoder, register_action_encoder
from worldsim.core.actions.builtin import MouseEncoder


@register_action_encoder
class MoveDirectionEncoder(ActionEncoder):
    name = "move_direction"
    version = 1

    def __init__(self, key_names):
        super().__init__(key_names)
        self._idx = [self.key_names.index(k) for k in ("w", "s", "a", "d")]  # KeyError if absent
        self._mouse = MouseEncoder(key_names)

    @property
    def dim(self):
        return 9 + 2

    def encode_batch(self, keys, mouse):
        k, _ = self.check_inputs(keys, mouse)
        w, s, a, d = (k[:, i] for i in self._idx)
        fwd, right = (w - s).astype(int), (d - a).astype(int)  # float inputs: no uint8 wrap
        onehot = np.zeros((len(k), 9), np.float32)
        onehot[np.arange(len(k)), (fwd + 1) * 3 + (right + 1)] = 1.0
        return np.concatenate([onehot, self._mouse.encode_batch(keys, mouse)], axis=1)
