"""``torch.compile`` at play time (``load_engine(compile=...)``): regional, static shapes, compiled
before the first chunk, the compiled artifacts cached on disk.

What is compiled, by mode:

* ``"none"`` (the default): nothing.
* ``"decoder"``: the codec's decoder (``Codec.decoder``, convolutions, group norms and SiLUs at
  every scale), for batches of one chunk's frames, the one shape the engine decodes.
* ``"full"``: the decoder, and in every DiT block the two token-wise regions around attention
  (``Block.attention_in``: AdaLN modulation, norm, ``qkv``, RoPE; ``Block.attention_out``:
  ``proj``, the MLP and the gated residuals). Attention itself is not compiled: the number of
  keys it reads changes as the cache fills and with retrieved memory.

How: inductor (the CPU backend generates C++ with OpenMP; a C compiler must be installed),
``dynamic=False``, so a region is compiled for the shapes of its first call and recompiled for
another. The engine warms every compiled region once at load (one chunk of each shape it will
see), so no compilation lands in a step. That holds for a fixed thread count only (dynamo
guards on it and inductor's kernels are built for it), so the engine refuses ``threads="auto"``
with compile; and compile with int8 weights (``quantize``) is refused as not measured. Inductor
caches what it compiled on disk (``TORCHINDUCTOR_CACHE_DIR``; here
``~/.cache/worldsim/inductor`` unless that variable is set):
the first load on a machine compiles (tens of seconds on 2 cores), later ones read the cache.
Whether a mode pays is measured, not assumed: ``worldsim-bench engine --compile``
steps a compiled and an eager engine one chunk each in turn (``docs/engine.md``).
"""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar, cast

import torch

from worldsim.core.errors import WorldsimError
from worldsim.model.codec import Codec
from worldsim.model.dit import Block, WorldModel

COMPILE_MODES = ("none", "decoder", "full")
CACHE_DIR = Path.home() / ".cache" / "worldsim" / "inductor"


def check_compile(mode: str, threads: int | str | None = None, quantize: str = "none", on_cpu: bool = True) -> None:
    """``WorldsimError`` in one line unless ``mode`` is one of :data:`COMPILE_MODES` and can run
    with the engine's other settings: not with ``threads="auto"`` on the CPU (module docstring:
    the kernels are built for one thread count) and not with int8 weights (``quantize``)."""
    if mode not in COMPILE_MODES:
        raise WorldsimError(f"compile must be one of {', '.join(COMPILE_MODES)}, got {mode!r}")
    if mode != "none" and threads == "auto" and on_cpu:
        raise WorldsimError(
            f"compile={mode} needs a fixed thread count (threads=N, e.g. threads=2): inductor builds its kernels "
            f"for one, and threads=auto changes it when other processes take cores"
        )
    if mode != "none" and quantize != "none":
        raise WorldsimError(f"compile={mode} with quantize={quantize} is not supported (not measured); choose one")


Fn = TypeVar("Fn", bound=Callable[..., Any])


def _compiled(fn: Fn) -> Fn:
    """``fn`` through inductor with static shapes, its artifacts cached in :data:`CACHE_DIR`
    (unless ``TORCHINDUCTOR_CACHE_DIR`` says elsewhere)."""
    os.environ.setdefault("TORCHINDUCTOR_CACHE_DIR", str(CACHE_DIR))
    return cast(Fn, torch.compile(fn, dynamic=False))


def compile_decoder(codec: Codec, mode: str) -> Callable[[torch.Tensor], torch.Tensor]:
    """``(B, C, h, w) -> (B, 3, H, W)``: the codec's decoder, compiled when ``mode`` asks for it
    (module docstring), else ``codec.decoder`` itself."""
    check_compile(mode)
    return codec.decoder if mode == "none" else _compiled(codec.decoder)


def compile_model(model: WorldModel, mode: str) -> None:
    """``mode`` ``"full"``: every block's :meth:`Block.attention_in` and ``attention_out``
    replaced, on that block, by its compiled version (in place; the module's weights are shared,
    so a state dict loaded later is what runs). Other modes leave ``model`` as it is."""
    check_compile(mode)
    if mode != "full":
        return
    for block in model.blocks:
        assert isinstance(block, Block)
        block.attention_in = _compiled(block.attention_in)  # type: ignore[method-assign]
        block.attention_out = _compiled(block.attention_out)  # type: ignore[method-assign]
