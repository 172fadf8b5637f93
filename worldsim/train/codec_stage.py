"""``worldsim-train stage=codec``: train the frame autoencoder, resumably.

Per step: a seeded batch of frames -> L1 + MSE reconstruction (bf16 autocast optional), per
frame, with dark frames weighted ``codec_train.dark_weight`` and an optional loss on each frame's
mean and contrast (``codec_train.moment_weight``); ``codec_train.freeze_encoder`` trains the
decoder alone, keeping the latent space a teacher was trained on. The
shared loop (loop.py) does the optimizer, EMA, log, checkpoints and Ctrl-C. Validation PSNR on
held-out data every ``val_every`` steps; the EMA codec is written to ``<out>/codec`` as a
stand-alone folder (``load_codec``) at every checkpoint.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from functools import partial

import torch
import torch.nn.functional as F

from worldsim.core.errors import WorldsimError
from worldsim.data.frames import FrameSampler
from worldsim.inference.checkpoint import save_codec
from worldsim.model.codec import Codec, frames_to_tensor
from worldsim.train.config import CodecTrainConfig, TrainConfig
from worldsim.train.distributed import init_distributed
from worldsim.train.loop import TrainLoop
from worldsim.train.prefetch import Prefetcher


def psnr(a: torch.Tensor, b: torch.Tensor) -> float:
    """PSNR in dB of float images in [-1, 1]."""
    mse = F.mse_loss(a.float().clamp(-1, 1), b.float()).item() / 4.0  # to the [0, 1] range
    return 10 * math.log10(1.0 / max(mse, 1e-12))


def train_codec(cfg: TrainConfig) -> dict[str, float]:
    """Run the codec stage and export the EMA codec to ``<out>/codec``; returns the loop's summary.

    Raises ``WorldsimError`` if validation and training frame sizes differ or the frame size does
    not divide by ``codec.downsample``.
    """
    d = init_distributed(cfg.device)
    data = FrameSampler(cfg.data)
    val = FrameSampler(cfg.val_data) if cfg.val_data else None
    if val is not None and val.frame_size != data.frame_size:
        raise WorldsimError(f"validation frames are {val.frame_size}, training frames {data.frame_size}")
    h, w = data.frame_size
    if h % cfg.codec.downsample or w % cfg.codec.downsample:
        raise WorldsimError(f"frame size {data.frame_size} is not divisible by codec downsample {cfg.codec.downsample}")
    ct = cfg.codec_train
    if ct.dark_weight <= 0 or ct.moment_weight < 0:
        raise WorldsimError(
            f"codec_train.dark_weight must be > 0 and moment_weight >= 0, got {ct.dark_weight} and {ct.moment_weight}"
        )
    if ct.freeze_encoder and not (cfg.init_from or cfg.resume):
        raise WorldsimError("codec_train.freeze_encoder needs init_from= (the codec whose encoder stays)")
    if ct.decoder_init not in DECODER_INITS:
        raise WorldsimError(
            f"codec_train.decoder_init must be one of {', '.join(DECODER_INITS)}, got {ct.decoder_init!r}"
        )
    torch.manual_seed(cfg.seed)
    codec = Codec(cfg.codec)
    codec.encoder.requires_grad_(not ct.freeze_encoder)  # before the optimizer sees it
    # A decoder of other widths than init_from's (asked for: codec.decoder_channels) starts from
    # scratch where its shapes differ, or with decoder_init=slice from init_from's decoder cut to
    # its widths; without the option, a decoder that does not fit is refused.
    slimmer = ct.freeze_encoder and cfg.codec.decoder_channels is not None
    adapt = DECODER_INITS[ct.decoder_init](codec) if slimmer else None
    loop = TrainLoop(cfg, codec, ["val_psnr_db"], d, adapt_init=adapt)
    amp = loop.autocast()
    batches = Prefetcher(partial(data.batch, cfg.seed, batch_size=cfg.batch_size), cfg.steps, cfg.num_workers)

    def loss_at(step: int) -> tuple[torch.Tensor, int]:
        x = frames_to_tensor(d.shard(batches(step)).to(d.device, non_blocking=True))
        with amp:
            recon = loop.net(x)
        return reconstruction_loss(recon.float(), x, ct), len(x)

    def periodic(step: int) -> dict[str, float]:
        if val is None or not (step % cfg.val_every == 0 or step == cfg.steps):
            return {}
        return {"val_psnr_db": evaluate(loop.ema, val, cfg, cfg.val_batches)}

    def export(step: int, metrics: dict[str, float]) -> None:
        save_codec(loop.out / "codec", loop.ema, {"stage": "codec", "step": step, **cfg.identity(), **metrics})

    return loop.run(loss_at, periodic, export)


Tensors = dict[str, torch.Tensor]


def decoder_from_scratch(fresh: Tensors) -> Callable[[Tensors], Tensors]:
    """``init_from`` for a decoder trained on a kept encoder (``freeze_encoder``): a codec's
    tensors with the encoder taken whole, and each decoder tensor taken where its shape is this
    run's, else this run's fresh one (a decoder of other widths, ``codec.decoder_channels``,
    starts from scratch). Tensors whose encoder does not fit this run's are returned as they
    are, so ``init_from`` refuses them (the latent space would change)."""

    def adapt(t: Tensors) -> Tensors:
        enc = [k for k in fresh if k.startswith("encoder.")]
        if not all(k in t and t[k].shape == fresh[k].shape for k in enc):
            return t
        return {k: t[k] if k in t and t[k].shape == v.shape else v for k, v in fresh.items()}

    return adapt


def slice_decoder(fresh: Codec) -> Callable[[Tensors], Tensors]:
    """``init_from`` for a narrower decoder on a kept encoder (``codec_train.decoder_init:
    slice``): the init's decoder cut to ``fresh``'s widths. At each scale it keeps the channels of
    the residual stream that the layer reading that stream weighs most (L1 norm of its weights
    over each input channel: the next scale's convolution, or the output convolution), in their
    order, and every tensor of the scale (its input convolution's outputs, its residual block,
    the next layer's inputs, the output norm) is indexed by that set; the encoder is taken whole.
    A decoder whose widths are the init's comes back unchanged. Tensors that do not fit the
    slicing (another layout, an encoder of other shapes, a narrower init) are returned as they
    are, so ``init_from`` refuses them."""
    widths = fresh.cfg.decoder_widths()
    stages = fresh.cfg.stages
    # Module indices in Codec.decoder: scale k's input conv (0, then 3k after each upsample), its
    # residual block (3k + 1), the output norm (3 * stages + 2) and conv (3 * stages + 4).
    conv_in = [0] + [3 * k for k in range(1, stages + 1)]
    out_norm, out_conv = 3 * stages + 2, 3 * stages + 4
    readers = conv_in[1:] + [out_conv]  # the layer that reads scale k's stream

    def adapt(t: Tensors) -> Tensors:
        shapes = {k: v.shape for k, v in fresh.state_dict().items()}
        if not all(k in t and t[k].shape == shapes[k] for k in shapes if k.startswith("encoder.")):
            return t
        try:
            keep = []
            for k, width in enumerate(widths):
                weight = t[f"decoder.{readers[k]}.weight"]  # (out, stream channels, 3, 3)
                if width > weight.shape[1]:
                    return t
                order = weight.abs().sum((0, 2, 3)).argsort(descending=True, stable=True)
                keep.append(order[:width].sort().values)
            cut: Tensors = {}
            for k in range(stages + 1):
                s, prev = keep[k], (keep[k - 1] if k else None)
                conv, res = f"decoder.{conv_in[k]}", f"decoder.{conv_in[k] + 1}"
                w = t[f"{conv}.weight"][s]
                cut[f"{conv}.weight"] = w if prev is None else w[:, prev]
                cut[f"{conv}.bias"] = t[f"{conv}.bias"][s]
                for name in ("conv1.bias", "conv2.bias", "norm.weight", "norm.bias"):
                    cut[f"{res}.{name}"] = t[f"{res}.{name}"][s]
                for name in ("conv1.weight", "conv2.weight"):
                    cut[f"{res}.{name}"] = t[f"{res}.{name}"][s][:, s]
            for name in ("weight", "bias"):
                cut[f"decoder.{out_norm}.{name}"] = t[f"decoder.{out_norm}.{name}"][keep[-1]]
            cut[f"decoder.{out_conv}.weight"] = t[f"decoder.{out_conv}.weight"][:, keep[-1]]
            cut[f"decoder.{out_conv}.bias"] = t[f"decoder.{out_conv}.bias"]
        except (KeyError, IndexError):
            return t
        if set(cut) != {k for k in shapes if k.startswith("decoder.")}:
            return t
        return {**{k: t[k] for k in shapes if k.startswith("encoder.")}, **{k: v.contiguous() for k, v in cut.items()}}

    return adapt


DECODER_INITS: dict[str, Callable[[Codec], Callable[[Tensors], Tensors]]] = {
    "scratch": lambda codec: decoder_from_scratch(codec.state_dict()),
    "slice": slice_decoder,
}


def reconstruction_loss(recon: torch.Tensor, x: torch.Tensor, ct: CodecTrainConfig) -> torch.Tensor:
    """Per frame L1 + MSE (+ ``moment_weight`` times the L1 error of each channel's mean and
    std), averaged with weight ``dark_weight`` on frames darker than ``dark_mean``, 1 elsewhere.
    ``recon`` and ``x`` are ``(B, 3, H, W)`` in [-1, 1]."""
    err = recon - x
    per_frame = err.abs().mean((1, 2, 3)) + err.square().mean((1, 2, 3))
    if ct.moment_weight:
        moments = (recon.mean((2, 3)) - x.mean((2, 3))).abs() + (recon.std((2, 3)) - x.std((2, 3))).abs()
        per_frame = per_frame + ct.moment_weight * moments.mean(1)
    dark = x.mean((1, 2, 3)) < ct.dark_mean / 127.5 - 1.0
    weight = torch.where(dark, ct.dark_weight, 1.0)
    return (per_frame * weight).sum() / weight.sum()


@torch.inference_mode()
def evaluate(codec: Codec, val: FrameSampler, cfg: TrainConfig, batches: int) -> float:
    """Mean PSNR (dB) of reconstructions on fixed held-out batches."""
    scores = []
    dev = next(codec.parameters()).device
    for i in range(batches):
        x = frames_to_tensor(val.batch(cfg.seed + 7919, i, cfg.batch_size).to(dev))
        scores.append(psnr(codec(x), x))
    return sum(scores) / len(scores)
