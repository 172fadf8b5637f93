"""``load_engine(compile=...)`` (issue 23; ``worldsim.inference.compiled``): the compiled engine
plays the eager engine's frames, every region compiles at load and none in a step, and a bad
mode is refused in one line. A tiny random checkpoint with the real-time teacher's conditioning."""

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from tests.test_engine import _inputs, _world_reset, make_tiny_checkpoint
from worldsim import load_engine
from worldsim.core.errors import WorldsimError
from worldsim.diffusion.sampler import SamplerOverrides

ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture(scope="module")
def ckpt(tmp_path_factory):
    path = tmp_path_factory.mktemp("ck") / "tiny_chunk"
    return make_tiny_checkpoint(path, camera_reference="chunk", encoder="keyboard_press_mouse")


def _frames(eng, n=4):
    _world_reset(eng, 1)
    out = []
    for i in range(n):
        eng.prepare()
        out.append(eng.step(*_inputs(2, "w" if i % 2 else None, dx=20.0)).frames)
    return np.concatenate(out)


def test_the_compiled_engine_plays_the_eager_frames_and_compiles_only_at_load(ckpt, inductor_cache):
    """``decoder`` compiles one graph, ``full`` two more (every block's two regions share their
    graphs); all at load, none in a step; the frames are the eager engine's (within one level
    of rounding)."""
    torch._dynamo.reset()
    graphs = torch._dynamo.utils.counters["stats"]
    sampler = SamplerOverrides(context_sigma=0.2)
    want = _frames(load_engine(ckpt, seed=3, sampler=sampler, bf16=False))
    assert graphs["unique_graphs"] == 0
    for mode, compiled in (("decoder", 1), ("full", 3)):
        eng = load_engine(ckpt, seed=3, sampler=sampler, compile=mode, bf16=False)
        assert eng.compile_s > 0 and graphs["unique_graphs"] == compiled, mode
        got = _frames(eng)
        assert graphs["unique_graphs"] == compiled, f"{mode}: compiled in a step"
        assert got.shape == want.shape and np.abs(got.astype(int) - want.astype(int)).max() <= 1, mode
    assert inductor_cache.is_dir()  # inductor's cache, for the next load


def test_a_memory_adapter_compiles_at_load_and_plays_the_eager_frames_with_memory_hits(tmp_path, inductor_cache):
    """A network with a memory adapter runs its retrieved chunks' passes through regions of
    their own (the adapter's updates): those compile at load too, not at the first memory hit,
    and a still player's steps, which retrieve the start's chunk once the window has left it,
    are the eager engine's frames."""
    ck = make_tiny_checkpoint(
        tmp_path / "tiny_adapter", camera_reference="chunk", encoder="keyboard_press_mouse", memory_adapter_rank=2
    )
    torch._dynamo.reset()
    graphs = torch._dynamo.utils.counters["stats"]

    def still(eng):
        _world_reset(eng, 1)
        steps = [eng.step(*_inputs(2)) for _ in range(8)]
        return np.concatenate([s.frames for s in steps]), sum(bool(s.memory) for s in steps)

    want, hits = still(load_engine(ck, seed=3, memory="on", bf16=False))
    assert hits > 0
    before = graphs["unique_graphs"]
    eng = load_engine(ck, seed=3, memory="on", compile="full", bf16=False)
    at_load = graphs["unique_graphs"]
    got, compiled_hits = still(eng)
    assert at_load > before and graphs["unique_graphs"] == at_load, "compiled in a step"
    assert compiled_hits == hits and np.abs(got.astype(int) - want.astype(int)).max() <= 1


def test_the_compiled_decoder_plays_the_eager_bf16_frames(ckpt, inductor_cache):
    """With bf16 (play's default on a CPU with native bf16) the decode runs under autocast too:
    the compiled decoder compiles at load, not in a step, and its frames are the eager bf16
    engine's within two levels (inductor's bf16 kernels round differently from oneDNN's)."""
    torch._dynamo.reset()
    graphs = torch._dynamo.utils.counters["stats"]
    want = _frames(load_engine(ckpt, seed=3, bf16=True))
    before = graphs["unique_graphs"]  # the counters outlive dynamo's reset (earlier tests' graphs)
    eng = load_engine(ckpt, seed=3, bf16=True, compile="decoder")
    at_load = graphs["unique_graphs"]
    got = _frames(eng)
    assert at_load - before == 1 and graphs["unique_graphs"] == at_load, "compiled in a step"
    diff = np.abs(got.astype(int) - want.astype(int))
    assert got.shape == want.shape and diff.max() <= 2 and diff.mean() < 0.5, (diff.max(), diff.mean())


def test_an_unknown_compile_mode_is_refused_in_one_line(ckpt):
    with pytest.raises(WorldsimError, match="compile must be one of none, decoder, full, got 'fast'"):
        load_engine(ckpt, compile="fast")
    # Compiled kernels are built for one thread count: threads=auto would change it under load.
    auto = r"compile=decoder needs a fixed thread count \(threads=N, e\.g\. threads=2\)"
    with pytest.raises(WorldsimError, match=auto):
        load_engine(ckpt, compile="decoder", threads="auto")
    with pytest.raises(WorldsimError, match="compile=full with quantize=int8 is not supported"):
        load_engine(ckpt, compile="full", quantize="int8")
    env = dict(os.environ, SDL_VIDEODRIVER="offscreen")
    r = subprocess.run(
        [sys.executable, "play.py", "compile=fast"], cwd=ROOT, env=env, capture_output=True, text=True, timeout=60
    )
    assert r.returncode == 2 and r.stderr.strip() == "error: compile must be one of none, decoder, full, got 'fast'"
    r = subprocess.run(
        [sys.executable, "play.py", "compile=full"], cwd=ROOT, env=env, capture_output=True, text=True, timeout=60
    )
    assert r.returncode == 2 and r.stderr == (
        "error: compile=full needs a fixed thread count (threads=N, e.g. threads=2): inductor builds its kernels "
        "for one, and threads=auto changes it when other processes take cores\n"
    )
