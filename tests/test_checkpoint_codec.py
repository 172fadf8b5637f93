import json

import pytest
import torch

from worldsim.core.actions import make_action_encoder
from worldsim.core.errors import WorldsimError
from worldsim.diffusion.sampler import SamplerConfig
from worldsim.inference.checkpoint import CheckpointConfig, load_checkpoint, save_checkpoint, state_dict_equal
from worldsim.model.codec import Codec, CodecConfig, frames_to_tensor, tensor_to_frames
from worldsim.model.dit import WorldModel, WorldModelConfig

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
    with pytest.raises(WorldsimError, match="model.safetensors is corrupt or truncated"):
        load_checkpoint(tmp_path / "ck")
    _ckpt(tmp_path)
    cfg_file = tmp_path / "ck" / "config.json"
    d = json.loads(cfg_file.read_text())
    d["model"]["width"] = 64
    cfg_file.write_text(json.dumps(d))
    with pytest.raises(WorldsimError, match="does not match its config.json"):
        load_checkpoint(tmp_path / "ck")
    d["model"]["widht"] = 64
    cfg_file.write_text(json.dumps(d))
    with pytest.raises(WorldsimError, match=r"unknown keys \['widht'\]"):
        load_checkpoint(tmp_path / "ck")
