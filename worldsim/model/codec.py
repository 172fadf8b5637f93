"""Per-frame convolutional autoencoder: uint8 frames <-> latent grids (no temporal compression).

Decoding runs for every displayed frame, so the decoder is deliberately shallow: one residual
block per scale and nearest-neighbour upsampling followed by a 3x3 convolution.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import torch
import torch.nn as nn
import torch.nn.functional as F


@dataclass
class CodecConfig:
    """Sizes of the per-frame autoencoder; latents are ``(latent_channels, H / downsample, W / downsample)``."""

    latent_channels: int = 8
    downsample: int = 4  # frame pixels per latent cell, a power of two
    base_channels: int = 64
    # The decoder's channels at each scale, from the latent grid up (stages + 1 numbers, each a
    # multiple of 8 for the group norms); None: base_channels at every scale. A slimmer decoder
    # (fewer channels at the full-resolution scales, where almost all of its multiply-adds are)
    # is trained on a kept encoder (codec_train.freeze_encoder), so the latent space stays.
    decoder_channels: list[int] | None = None

    @property
    def stages(self) -> int:
        """Number of 2x down/up-sampling stages, ``log2(downsample)``."""
        return int(math.log2(self.downsample))

    def decoder_widths(self) -> list[int]:
        """The decoder's channels at each scale (``stages + 1``), from the latent grid up."""
        if self.decoder_channels is None:
            return [self.base_channels] * (self.stages + 1)
        return list(self.decoder_channels)


def frames_to_tensor(frames_u8: torch.Tensor) -> torch.Tensor:
    """``(..., H, W, 3)`` uint8 -> ``(..., 3, H, W)`` float in [-1, 1]."""
    return frames_u8.movedim(-1, -3).float().div(127.5).sub(1.0)


def tensor_to_frames(x: torch.Tensor) -> torch.Tensor:
    """``(..., 3, H, W)`` float in [-1, 1] -> ``(..., H, W, 3)`` uint8 (clamped, rounded)."""
    return x.float().add(1.0).mul(127.5).round().clamp(0, 255).to(torch.uint8).movedim(-3, -1)


class _Res(nn.Module):
    def __init__(self, ch: int):
        super().__init__()
        self.conv1 = nn.Conv2d(ch, ch, 3, padding=1)
        self.conv2 = nn.Conv2d(ch, ch, 3, padding=1)
        self.norm = nn.GroupNorm(8, ch)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.conv2(F.silu(self.conv1(F.silu(self.norm(x)))))


class Codec(nn.Module):
    """``encode (B, 3, H, W) -> (B, C, H/f, W/f)``; ``decode`` the reverse. Any H, W divisible by f."""

    def __init__(self, cfg: CodecConfig):
        super().__init__()
        if cfg.downsample < 1 or 2**cfg.stages != cfg.downsample:
            raise ValueError(f"codec downsample must be a power of two, got {cfg.downsample}")
        widths = cfg.decoder_widths()
        if len(widths) != cfg.stages + 1 or any(c < 8 or c % 8 for c in widths):
            raise ValueError(
                f"codec decoder_channels must be {cfg.stages + 1} multiples of 8 (one per scale), got {widths}"
            )
        self.cfg = cfg
        ch = cfg.base_channels
        enc: list[nn.Module] = [nn.Conv2d(3, ch, 3, padding=1)]
        for _ in range(cfg.stages):
            enc += [_Res(ch), nn.Conv2d(ch, ch, 4, stride=2, padding=1)]
        enc += [_Res(ch), nn.GroupNorm(8, ch), nn.SiLU(), nn.Conv2d(ch, cfg.latent_channels, 3, padding=1)]
        self.encoder = nn.Sequential(*enc)
        dec: list[nn.Module] = [nn.Conv2d(cfg.latent_channels, widths[0], 3, padding=1), _Res(widths[0])]
        for c_in, c_out in zip(widths, widths[1:], strict=False):
            dec += [nn.Upsample(scale_factor=2, mode="nearest"), nn.Conv2d(c_in, c_out, 3, padding=1), _Res(c_out)]
        dec += [nn.GroupNorm(8, widths[-1]), nn.SiLU(), nn.Conv2d(widths[-1], 3, 3, padding=1)]
        self.decoder = nn.Sequential(*dec)

    def encode(self, x: torch.Tensor) -> torch.Tensor:
        """``(B, 3, H, W)`` float in [-1, 1] -> ``(B, latent_channels, H/f, W/f)`` (unnormalised latents)."""
        return self.encoder(x)

    def decode(self, z: torch.Tensor) -> torch.Tensor:
        """``(B, latent_channels, h, w)`` -> ``(B, 3, h*f, w*f)`` float, roughly [-1, 1] (not clamped)."""
        return self.decoder(z)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Reconstruction ``decode(encode(x))``, same shape as ``x``."""
        return self.decode(self.encode(x))

    def channels_last(self) -> Codec:
        """This codec, in place, with its convolution weights in channels-last layout (the one
        :func:`decode_for_display` runs in; the same values out)."""
        return self.to(memory_format=torch.channels_last)  # type: ignore[call-overload]  # torch's stubs omit it


def decode_for_display(decode: Callable[[torch.Tensor], torch.Tensor], z: torch.Tensor, bf16: bool) -> torch.Tensor:
    """``(B, latent_channels, h, w)`` unnormalised latents -> ``(B, 3, H, W)`` float32, as the
    engine shows them: ``decode`` (a codec's decoder, or its compiled version) on channels-last
    tensors, oneDNN's layout for convolutions (the decoder's weights should be channels-last too:
    :meth:`Codec.channels_last`; the same values, about 0.8 of the time on a CPU), under bf16
    autocast when ``bf16`` (the shipped codec's held-out PSNR is fp32's to the 0.01 dB that
    ``python -m worldsim.train.codec_eval CODEC DATA --bf16`` prints; docs/engine.md, "Decode")."""
    with torch.autocast(z.device.type, dtype=torch.bfloat16, enabled=bf16):
        return decode(z.contiguous(memory_format=torch.channels_last)).float()
