import json
import re
import shutil
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file

from worldsim.core.actions import make_action_encoder
from worldsim.core.errors import WorldsimError
from worldsim.diffusion.sampler import SamplerConfig
from worldsim.inference.checkpoint import (
    CheckpointConfig,
    load_checkpoint,
    load_codec,
    save_checkpoint,
    save_codec,
    state_dict_equal,
)
from worldsim.model.codec import Codec, CodecConfig, frames_to_tensor, tensor_to_frames
from worldsim.model.dit import WorldModel, WorldModelConfig

ROOT = Path(__file__).resolve().parent.parent
KEYS = ["w", "a", "s", "d", "space", "left shift", "l"]


@pytest.mark.parametrize("size", [(64, 64), (96, 96), (48, 80)])
def test_codec_maps_any_divisible_size_to_a_latent_grid_and_back(size):
    codec = Codec(CodecConfig(latent_channels=4, downsample=4, base_channels=16))
    frames = torch.randint(0, 256, (2, *size, 3), dtype=torch.uint8)
    x = frames_to_tensor(frames)
    assert x.shape == (2, 3, *size) and x.min() >= -1 and x.max() <= 1
    z = codec.encode(x)
    assert z.shape == (2, 4, size[0] // 4, size[1] // 4)
    assert codec.decode(z).shape == x.shape
    assert torch.equal(tensor_to_frames(x), frames)  # the uint8 <-> float mapping is exact


def _ckpt(tmp_path):
    enc = make_action_encoder("keyboard_mouse", KEYS)
    mcfg = WorldModelConfig(latent_channels=4, latent_size=(4, 4), width=32, depth=1, heads=2, action_dim=enc.dim)
    cfg = CheckpointConfig(mcfg, CodecConfig(4, 4, 16), SamplerConfig(), enc.spec(), (16, 16), provenance={"steps": 0})
    torch.manual_seed(0)
    model, codec = WorldModel(mcfg), Codec(cfg.codec)
    save_checkpoint(tmp_path / "ck", cfg, model, codec)
    return cfg, model, codec, enc


def _strip_integrity(folder):
    """Make ``folder`` look like a checkpoint exported before hashes were recorded."""
    f = folder / "config.json"
    d = json.loads(f.read_text())
    d.pop("integrity", None)
    f.write_text(json.dumps(d))


def test_checkpoint_round_trip_is_exact(tmp_path):
    cfg, model, codec, enc = _ckpt(tmp_path)
    cfg2, model2, codec2 = load_checkpoint(tmp_path / "ck", expect_encoder=enc.spec(), expect_frame_size=(16, 16))
    assert cfg2 == cfg
    assert state_dict_equal(model.state_dict(), model2.state_dict())
    assert state_dict_equal(codec.state_dict(), codec2.state_dict())


def test_checkpoint_mismatches_and_damage_fail_clearly(tmp_path):
    _, _, _, enc = _ckpt(tmp_path)
    other = make_action_encoder("keyboard", KEYS)
    with pytest.raises(
        WorldsimError, match="another action encoder.*name: checkpoint 'keyboard_mouse' vs given 'keyboard'"
    ):
        load_checkpoint(tmp_path / "ck", expect_encoder=other.spec())
    with pytest.raises(WorldsimError, match=r"for frames \(16, 16\), given \(64, 64\)"):
        load_checkpoint(tmp_path / "ck", expect_frame_size=(64, 64))
    with pytest.raises(WorldsimError, match="does not exist"):
        load_checkpoint(tmp_path / "nope")
    f = tmp_path / "ck" / "model.safetensors"
    f.write_bytes(f.read_bytes()[:200])
    with pytest.raises(WorldsimError, match="model.safetensors is not the file exported.*changed or damaged"):
        load_checkpoint(tmp_path / "ck")
    _strip_integrity(tmp_path / "ck")  # an old checkpoint: the damage is found by reading
    with pytest.raises(WorldsimError, match="model.safetensors is corrupt or truncated"):
        load_checkpoint(tmp_path / "ck")
    _ckpt(tmp_path)
    cfg_file = tmp_path / "ck" / "config.json"
    d = json.loads(cfg_file.read_text())
    d["model"]["width"] = 64
    cfg_file.write_text(json.dumps(d))
    with pytest.raises(WorldsimError, match="config.json was edited after export"):
        load_checkpoint(tmp_path / "ck")
    _strip_integrity(tmp_path / "ck")
    d.pop("integrity")
    with pytest.raises(WorldsimError, match="does not match its config.json"):
        load_checkpoint(tmp_path / "ck")
    d["model"]["widht"] = 64
    cfg_file.write_text(json.dumps(d))
    with pytest.raises(WorldsimError, match=r"unknown keys \['widht'\]"):
        load_checkpoint(tmp_path / "ck")


def _edit_tensor(file, fill):
    state = load_file(str(file))
    name = sorted(state)[0]
    state[name] = torch.full_like(state[name], fill)
    save_file(state, str(file))
    return name


@pytest.mark.parametrize("hashes", [True, False])
def test_a_changed_or_nan_tensor_is_refused_at_load(tmp_path, hashes):
    _ckpt(tmp_path)
    if not hashes:
        _strip_integrity(tmp_path / "ck")
    name = _edit_tensor(tmp_path / "ck" / "model.safetensors", float("nan"))
    message = (
        "not the file exported with config.json" if hashes else rf"tensor '{re.escape(name)}' .* holds \d+ NaN or inf"
    )
    with pytest.raises(WorldsimError, match=message) as e:
        load_checkpoint(tmp_path / "ck")
    assert "\n" not in str(e.value)
    if hashes:  # a finite change is refused too: only the hash can tell
        _ckpt(tmp_path)
        _edit_tensor(tmp_path / "ck" / "codec.safetensors", 0.5)
        with pytest.raises(WorldsimError, match="codec.safetensors is not the file exported"):
            load_checkpoint(tmp_path / "ck")


@pytest.mark.parametrize(
    "edit, message",
    [
        (lambda d: d["model"].update(chunk_frames=8), r"model.chunk_frames is 8 but the weights were trained with 4"),
        (lambda d: d.update(frame_size=[128, 128]), r"model.latent_size is \(16, 16\) but frame_size \(128, 128\)"),
        (
            lambda d: d["model"].update(latent_size=[8, 8]),
            r"model.latent_size is \[8, 8\] but the weights were trained with \[16, 16\]",
        ),
        (lambda d: d.update(chunk_frames=8), r"chunk_frames is 8 but model.chunk_frames is 4"),
    ],
)
def test_the_shipped_teacher_loads_and_refuses_an_edited_config_naming_the_field(tmp_path, edit, message):
    """assets/teacher_builtin_v1 has no hashes: its training record and the derived sizes catch edits."""
    src = ROOT / "assets" / "teacher_builtin_v1"
    dst = tmp_path / "teacher"
    dst.mkdir()
    for name in ("config.json", "model.safetensors", "codec.safetensors"):
        shutil.copyfile(src / name, dst / name)
    load_checkpoint(dst)
    d = json.loads((dst / "config.json").read_text())
    assert "integrity" not in d
    edit(d)
    (dst / "config.json").write_text(json.dumps(d))
    with pytest.raises(WorldsimError, match=message) as e:
        load_checkpoint(dst)
    assert "\n" not in str(e.value)


def test_an_exported_config_edited_by_hand_is_refused(tmp_path):
    """chunk_frames leaves every weight's shape alone: the config's own hash is what catches it."""
    _ckpt(tmp_path)
    f = tmp_path / "ck" / "config.json"
    d = json.loads(f.read_text())
    d["model"]["chunk_frames"] = d["chunk_frames"] = 8
    f.write_text(json.dumps(d))
    with pytest.raises(WorldsimError, match="config.json was edited after export"):
        load_checkpoint(tmp_path / "ck")


def test_a_codec_folder_refuses_changed_weights(tmp_path):
    codec = Codec(CodecConfig(4, 4, 16))
    save_codec(tmp_path / "c", codec, {"stage": "codec"})
    assert state_dict_equal(load_codec(tmp_path / "c").state_dict(), codec.state_dict())
    _edit_tensor(tmp_path / "c" / "codec.safetensors", 0.25)
    with pytest.raises(WorldsimError, match="codec.safetensors is not the file exported with codec.json"):
        load_codec(tmp_path / "c")
