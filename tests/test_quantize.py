"""Int8 weights at play time (worldsim/inference/quantize.py) through the engine the product runs."""

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from torch.ao.nn.quantized.dynamic import Linear as DynamicLinear

from envs.starts import world_start
from tests.test_engine import make_tiny_checkpoint
from worldsim.core.errors import WorldsimError
from worldsim.inference.engine import load_engine
from worldsim.inference.quantize import check_quantize, quantized_layers

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def ckpt(tmp_path_factory):
    return make_tiny_checkpoint(tmp_path_factory.mktemp("q") / "tiny", camera_reference="session")


def _frames(engine, chunks=6):
    engine.reset(*world_start(2, engine.context_frames, engine.key_names, engine.frame_size).arrays())
    k, rng = engine.chunk_frames, np.random.default_rng(0)
    out = []
    for _ in range(chunks):
        keys = (rng.random((k, len(engine.key_names))) < 0.3).astype(np.uint8)
        out.append(engine.step(keys, rng.normal(0, 20, (k, 2)).astype(np.float32)).frames)
    return np.concatenate(out).astype(np.float64)


def test_int8_replaces_exactly_the_token_wise_layers(ckpt):
    model = load_engine(ckpt, quantize="int8").model
    named = dict(model.named_modules())
    int8 = {name for name, m in named.items() if isinstance(m, DynamicLinear)}
    assert int8 == set(quantized_layers(model)) and len(int8) == 4 * len(model.blocks)
    # the conditioning path keeps fp32: AdaLN modulation, embeddings, output
    for name in ("blocks.0.ada.1", "t_embed.0", "action_embed.2", "camera_embed", "patch_embed", "out", "ada_out.1"):
        assert type(named[name]) is torch.nn.Linear, name
    assert all(named[name].weight().qscheme() == torch.per_channel_affine for name in int8)  # a scale per output


def test_int8_turns_bf16_autocast_off_where_it_would_be_on(ckpt, monkeypatch):
    import worldsim.inference.engine as engine_module

    monkeypatch.setattr(engine_module, "resolve_bf16", lambda setting, device: True)  # a CPU with native bf16
    assert load_engine(ckpt).bf16 and not load_engine(ckpt, quantize="int8").bf16


def test_int8_plays_close_to_fp32_but_not_identically(ckpt):
    fp32 = _frames(load_engine(ckpt, bf16=False))
    int8 = _frames(load_engine(ckpt, quantize="int8"))
    psnr = 10 * np.log10(255**2 / np.mean((fp32 - int8) ** 2))
    assert 30 < psnr < np.inf  # the int8 layers run (frames differ) and stay close over 12 frames of rollout


@pytest.mark.parametrize(
    ("mode", "device", "bf16", "message"),
    [
        ("int4", "cpu", None, r"quantize must be one of none, int8, got 'int4'"),
        ("int8", "cuda", None, r"quantize=int8 runs on the CPU only"),
        ("int8", "cpu", True, r"cannot run under bf16 autocast"),
    ],
)
def test_bad_quantize_options_are_refused_in_one_line(mode, device, bf16, message):
    with pytest.raises(WorldsimError, match=message):
        check_quantize(mode, device, bf16)


def test_load_engine_refuses_before_loading(tmp_path):
    with pytest.raises(WorldsimError, match="quantize must be one of"):
        load_engine(tmp_path / "missing", quantize="fp8")  # the option's error, not the missing folder's


def test_play_refuses_a_bad_quantize_in_one_line():
    env = dict(os.environ, SDL_VIDEODRIVER="offscreen")
    r = subprocess.run(
        [sys.executable, "play.py", "quantize=int4"], cwd=ROOT, env=env, capture_output=True, text=True, timeout=60
    )
    assert r.returncode == 2 and r.stderr.strip() == "error: quantize must be one of none, int8, got 'int4'"


class _Loaded(Exception):
    """Raised by the spy once load_engine's keywords are seen."""


@pytest.mark.parametrize("module", ["worldsim.cli.rollout", "worldsim.eval.evaluate"])
def test_rollout_and_eval_hand_quantize_to_load_engine(module, monkeypatch, tmp_path):
    import importlib

    mod = importlib.import_module(module)
    seen = {}

    def spy(path, **kw):
        seen.update(kw)
        raise _Loaded

    monkeypatch.setattr(mod, "load_engine", spy)
    with pytest.raises(_Loaded):
        if module.endswith("rollout"):
            mod.run_rollout(mod.RolloutConfig(checkpoint="x", quantize="int8", out=str(tmp_path / "r")))
        else:
            mod.evaluate(mod.EvalConfig(checkpoint="x", quantize="int8", out=str(tmp_path / "e")))
    assert seen["quantize"] == "int8"


def test_every_engine_option_of_play_reaches_load_engine():
    """The window's generation process and headless play build their engine from one dict."""
    import dataclasses
    import inspect

    from worldsim.cli.play import PlayConfig, engine_options

    takes = set(inspect.signature(load_engine).parameters) | {"threads"}  # threads: an Engine keyword
    options = {f.name for f in dataclasses.fields(PlayConfig)} & takes - {"seed", "memory_top_k"}
    kw = engine_options(PlayConfig(quantize="int8", memory="on", memory_top_k=2))
    assert options <= set(kw) and kw["quantize"] == "int8" and kw["memory"].top_k == 2
