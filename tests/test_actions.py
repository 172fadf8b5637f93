import importlib
import sys
from pathlib import Path

import numpy as np
import pytest

from worldsim.core.actions import available_action_encoders, load_plugins, make_action_encoder
from worldsim.core.errors import WorldsimError

KEYS = ["w", "a", "s", "d", "space", "left shift", "l"]
PLUGIN_SITE = Path(__file__).resolve().parent.parent / "docs" / "examples" / "plugin_site"


# Make the example plugin distribution visible as if pip had installed it, before collection
# parametrises the conformance test over every registered encoder (so the plugin is included).
sys.path.insert(0, str(PLUGIN_SITE))
importlib.invalidate_caches()
load_plugins(force=True)


def test_entry_point_plugin_is_found_by_name():
    assert "move_direction" in available_action_encoders()
    enc = make_action_encoder("move_direction", KEYS)
    keys = np.zeros((2, 7), np.uint8)
    keys[0, KEYS.index("w")] = 1
    keys[1, KEYS.index("s")] = 1
    keys[1, KEYS.index("a")] = 1
    out = enc.encode_batch(keys, np.zeros((2, 2), np.float32))
    assert out[0, :9].argmax() == 2 * 3 + 1  # forward, no strafe
    assert out[1, :9].argmax() == 0 * 3 + 0  # back-left


def test_builtin_encoders_are_registered():
    assert {"keyboard", "mouse", "keyboard_mouse"} <= set(available_action_encoders())


@pytest.mark.parametrize("name", available_action_encoders())
def test_conformance_of_every_registered_encoder(name):
    enc = make_action_encoder(name, KEYS)
    assert enc.name == name and isinstance(enc.version, int) and enc.version >= 1
    assert isinstance(enc.dim, int) and enc.dim > 0
    rng = np.random.default_rng(0)
    keys = rng.integers(0, 2, (16, len(KEYS))).astype(np.uint8)
    mouse = rng.normal(0, 20, (16, 2)).astype(np.float32)
    batch = enc.encode_batch(keys, mouse)
    assert batch.shape == (16, enc.dim) and batch.dtype == np.float32 and np.isfinite(batch).all()
    single = np.stack([enc.encode(k, m) for k, m in zip(keys, mouse, strict=True)])
    np.testing.assert_array_equal(batch, single)  # batch == per-frame
    np.testing.assert_array_equal(batch, enc.encode_batch(keys, mouse))  # deterministic
    null = enc.null_action()
    assert null.shape == (enc.dim,)
    np.testing.assert_array_equal(null, enc.encode(np.zeros(len(KEYS), np.uint8), np.zeros(2, np.float32)))
    # Inputs that differ in what the encoder reads must be told apart from the null action.
    assert np.abs(batch - null).sum() > 0
    with pytest.raises(WorldsimError):
        enc.encode_batch(keys[:, :3], mouse)
    spec = enc.spec()
    assert spec["name"] == name and spec["dim"] == enc.dim and spec["version"] == enc.version


def test_unknown_encoder_lists_valid_names():
    with pytest.raises(WorldsimError, match="unknown action encoder 'joystick'; valid: keyboard"):
        make_action_encoder("joystick", KEYS)


def test_encoder_that_cannot_use_the_keys_fails_clearly():
    with pytest.raises(WorldsimError, match="cannot work with keys"):
        make_action_encoder("move_direction", ["x", "y"])


def test_mouse_encoding_is_odd_and_monotonic():
    enc = make_action_encoder("mouse", KEYS)
    dx = np.array([-100, -10, -1, 0, 1, 10, 100], np.float32)
    out = enc.encode_batch(np.zeros((7, 7), np.uint8), np.stack([dx, dx], 1))[:, 0]
    assert np.all(np.diff(out) > 0)
    np.testing.assert_allclose(out, -out[::-1])


def test_a_taken_name_cannot_be_registered_by_another_class():
    from worldsim.core.actions import register_action_encoder
    from worldsim.core.actions.builtin import KeyboardEncoder

    class Impostor(KeyboardEncoder):
        name = "keyboard"

    with pytest.raises(ValueError, match="'keyboard' is taken by worldsim.core.actions.builtin.KeyboardEncoder"):
        register_action_encoder(Impostor)


@pytest.mark.parametrize("name", available_action_encoders())
@pytest.mark.parametrize(
    "keys, mouse, message",
    [
        (np.full((1, 7), 255, np.uint8), np.zeros((1, 2)), r"keys must be 0/1 integers \(T, 7\); got 255 at \[0, 0\]"),
        (np.full((1, 7), 0.5), np.zeros((1, 2)), r"keys must be 0/1 integers .*; got 0.5"),
        (np.full((1, 7), -1), np.zeros((1, 2)), r"keys must be 0/1 integers .*; got -1"),
        (np.full((1, 7), "1"), np.zeros((1, 2)), r"keys must be 0/1 integers .*; got dtype <U1"),
        (np.zeros((1, 7), np.uint8), np.array([[np.nan, 0.0]]), r"mouse must be finite pixels \(1, 2\); got nan"),
        (np.zeros((1, 7), np.uint8), np.array([[0.0, -np.inf]]), r"mouse must be finite pixels \(1, 2\); got -inf"),
    ],
)
def test_every_encoder_refuses_out_of_range_inputs_in_one_line(name, keys, mouse, message):
    enc = make_action_encoder(name, KEYS)
    with pytest.raises(WorldsimError, match=message) as e:
        enc.encode_batch(keys, mouse)
    assert "\n" not in str(e.value)
