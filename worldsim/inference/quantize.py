"""Int8 weights for the DiT's token-wise linear layers at play time (``load_engine(quantize="int8")``).

What is quantised: in every block, the attention's ``qkv`` and ``proj`` and the MLP's two layers,
the layers that run once per token and hold almost all of the model's multiply-adds. What is not:
the AdaLN modulation (``ada``, once per frame, and the path through which actions and the noise
level steer every block), the embeddings and the output layer, so the conditioning keeps fp32.

How: PyTorch's dynamic quantisation (``torch.ao.quantization.quantize_dynamic``), weights int8
per output channel, activations quantised per batch at run time, accumulation in int32 and the
result in fp32 (the FBGEMM/oneDNN int8 GEMM). CPU only; inference only (the quantised layers have
no gradient). Whether it pays, and what it costs in quality, is measured, not assumed:
``worldsim-bench engine`` prints its rows beside fp32 and bf16, ``worldsim-eval quantize=int8``
its quality beside the fp32 run (``docs/engine.md``).
"""

from __future__ import annotations

import warnings

import torch

from worldsim.core.errors import WorldsimError
from worldsim.model.dit import WorldModel

QUANTIZE_MODES = ("none", "int8")


def quantized_layers(model: WorldModel) -> list[str]:
    """The names of the linear layers :func:`quantize_model` replaces (module docstring)."""
    return [f"blocks.{i}.{name}" for i in range(len(model.blocks)) for name in ("qkv", "proj", "mlp.0", "mlp.2")]


def check_quantize(mode: str, device: str, bf16: bool | None) -> None:
    """``WorldsimError`` in one line unless ``mode`` can run: one of :data:`QUANTIZE_MODES`; int8
    on the CPU and without bf16 autocast asked for (``bf16=True``; None is taken as off)."""
    if mode not in QUANTIZE_MODES:
        raise WorldsimError(f"quantize must be one of {', '.join(QUANTIZE_MODES)}, got {mode!r}")
    if mode != "none" and torch.device(device).type != "cpu":
        raise WorldsimError(f"quantize={mode} runs on the CPU only (PyTorch's dynamic int8 kernels), not {device}")
    if mode != "none" and bf16:
        raise WorldsimError(f"quantize={mode} computes in int8 and fp32: it cannot run under bf16 autocast (bf16=true)")


def quantize_model(model: WorldModel, mode: str) -> WorldModel:
    """``model`` with its token-wise linear layers in ``mode`` (``"none"``: unchanged; ``"int8"``:
    int8 weights per output channel, in place; module docstring); ``mode`` as
    :func:`check_quantize` accepts it."""
    if mode == "none":
        return model
    from torch.ao.quantization import per_channel_dynamic_qconfig, quantize_dynamic

    spec = dict.fromkeys(quantized_layers(model), per_channel_dynamic_qconfig)
    with warnings.catch_warnings():  # torch.ao announces its move to torchao; the API is the one torch ships
        warnings.simplefilter("ignore")
        quantize_dynamic(model, spec, dtype=torch.qint8, inplace=True)
    return model.eval()
