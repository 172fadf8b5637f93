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
    np.testing.assert_array_equal(batch, enc.encode_sequence(keys, mouse, None))  # nothing held before
    # One row at a time, each continuing after the row before, as the engine steps: the same rows.
    single = np.stack(
        [enc.encode_sequence(keys[t : t + 1], mouse[t : t + 1], keys[t - 1] if t else None)[0] for t in range(16)]
    )
    np.testing.assert_array_equal(batch, single)
    np.testing.assert_array_equal(batch, enc.encode_batch(keys, mouse))  # deterministic
    null = enc.null_action()
    assert null.shape == (enc.dim,) and null.dtype == np.float32
    # Inputs that differ in what the encoder reads must be told apart from the null action.
    assert np.abs(batch - null).sum() > 0
    assert len(enc.channels()) == enc.dim and len(set(enc.channels())) == enc.dim
    with pytest.raises(WorldsimError):
        enc.encode_batch(keys[:, :3], mouse)
    spec = enc.spec()
    assert spec["name"] == name and spec["dim"] == enc.dim and spec["version"] == enc.version


def test_unknown_encoder_lists_valid_names():
    with pytest.raises(WorldsimError, match="unknown action encoder 'joystick'; valid: key_press, keyboard, "):
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


def test_press_edges_mark_the_row_a_key_goes_down_and_continue_across_calls():
    enc = make_action_encoder("key_press", KEYS)
    l_col = KEYS.index("l")
    keys = np.zeros((6, 7), np.uint8)
    keys[1:5, l_col] = 1  # held 4 rows
    edges = enc.encode_batch(keys, np.zeros((6, 2), np.float32))[:, l_col]
    np.testing.assert_array_equal(edges, [0, 1, 0, 0, 0, 0])
    # The same hold split across two chunks of 3: the second chunk continues the hold, no press.
    a = enc.encode_sequence(keys[:3], np.zeros((3, 2), np.float32), None)[:, l_col]
    b = enc.encode_sequence(keys[3:], np.zeros((3, 2), np.float32), keys[2])[:, l_col]
    np.testing.assert_array_equal(np.concatenate([a, b]), edges)
    with pytest.raises(WorldsimError, match="previous_keys"):
        enc.encode_sequence(keys[3:], np.zeros((3, 2), np.float32), np.full(7, 2, np.uint8))


def test_the_null_flag_makes_the_null_action_no_players_input():
    enc = make_action_encoder("keyboard_press_mouse", KEYS)
    assert enc.dim == 2 * len(KEYS) + 3
    assert enc.channels()[-1] == "null" and enc.channels()[:2] == ["key:w", "key:a"]
    idle = enc.encode(np.zeros(7, np.uint8), np.zeros(2, np.float32))
    null = enc.null_action()
    np.testing.assert_array_equal(null[:-1], idle[:-1])
    assert null[-1] == 1.0 and idle[-1] == 0.0
    rng = np.random.default_rng(0)
    real = enc.encode_batch(rng.integers(0, 2, (256, 7)).astype(np.uint8), rng.normal(0, 30, (256, 2)))
    assert (real[:, -1] == 0).all()  # the flag is off for every real input
    # v1's encoder keeps its null action: an idle player (checkpoints trained with it play as before).
    v1 = make_action_encoder("keyboard_mouse", KEYS)
    np.testing.assert_array_equal(v1.null_action(), v1.encode(np.zeros(7, np.uint8), np.zeros(2, np.float32)))
