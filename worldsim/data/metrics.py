"""Image metrics against ground truth, per frame: PSNR and SSIM on uint8 RGB frames.

SSIM follows Wang et al. 2004 as scikit-image computes it with ``gaussian_weights=True,
sigma=1.5, use_sample_covariance=False, data_range=255, channel_axis=-1``: Gaussian window of
radius 5 (truncate 3.5), reflected borders, the mean taken away from a 5-pixel border, averaged
over channels. ``tests/test_metrics.py`` checks both against scikit-image.
"""

from __future__ import annotations

import math

import numpy as np
import torch
import torch.nn.functional as F


def frame_means(frames: np.ndarray) -> np.ndarray:
    """Mean pixel value (0-255) of each frame of ``(T, H, W, 3)`` frames, as float64."""
    return frames.reshape(len(frames), -1).mean(axis=1, dtype=np.float64)


PSNR_MAX_DB = 60.0
"""The ceiling of :func:`psnr`: 8-bit frames closer than this (MSE below 255² / 10⁶, i.e. fewer than
one subpixel in 15 off by one level) count as identical. Netflix VMAF's PSNR uses the same 60 dB
for 8-bit video (``psnr_tools.c``); it keeps means finite where a baseline is exact (repeat-last
on a world where nothing moves, as DOOM without monsters)."""


def psnr(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """``(T, H, W, 3)`` uint8 pairs -> ``(T,)`` PSNR in dB (peak 255), at most ``PSNR_MAX_DB``
    (identical frames give exactly ``PSNR_MAX_DB``)."""
    a64, b64 = np.asarray(a, np.float64), np.asarray(b, np.float64)
    mse = ((a64 - b64) ** 2).reshape(len(a64), -1).mean(1)
    with np.errstate(divide="ignore"):
        return np.minimum(10 * np.log10(255.0**2 / mse), PSNR_MAX_DB)


def _gaussian_window(sigma: float = 1.5, truncate: float = 3.5) -> torch.Tensor:
    r = int(truncate * sigma + 0.5)
    x = torch.arange(-r, r + 1, dtype=torch.float64)
    g = torch.exp(-(x**2) / (2 * sigma**2))
    return g / g.sum()


def ssim(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """``(T, H, W, 3)`` uint8 pairs -> ``(T,)`` mean SSIM (see the module docstring)."""
    x = torch.from_numpy(np.asarray(a, np.float64)).permute(0, 3, 1, 2)  # (T, 3, H, W)
    y = torch.from_numpy(np.asarray(b, np.float64)).permute(0, 3, 1, 2)
    g = _gaussian_window()
    r = (len(g) - 1) // 2
    c = x.shape[1]

    def blur(z: torch.Tensor) -> torch.Tensor:  # separable Gaussian, reflected borders
        z = F.pad(z, (r, r, r, r), mode="reflect")
        z = F.conv2d(z, g.view(1, 1, 1, -1).expand(c, 1, 1, -1), groups=c)
        return F.conv2d(z, g.view(1, 1, -1, 1).expand(c, 1, -1, 1), groups=c)

    c1, c2 = (0.01 * 255) ** 2, (0.03 * 255) ** 2
    mx, my = blur(x), blur(y)
    vx, vy, cxy = blur(x * x) - mx * mx, blur(y * y) - my * my, blur(x * y) - mx * my
    s = ((2 * mx * my + c1) * (2 * cxy + c2)) / ((mx * mx + my * my + c1) * (vx + vy + c2))
    return s[:, :, r:-r, r:-r].mean(dim=(1, 2, 3)).numpy()


def high_frequency_ratio(gen: np.ndarray, gt: np.ndarray) -> float:
    """Energy of the Laplacian of generated frames over that of ground truth: < 1 means blurrier
    (calibration lesson 5: PSNR rewards blur, so report sharpness beside it)."""

    def energy(f: np.ndarray) -> float:
        z = np.asarray(f, np.float64).mean(-1)
        lap = 4 * z[:, 1:-1, 1:-1] - z[:, :-2, 1:-1] - z[:, 2:, 1:-1] - z[:, 1:-1, :-2] - z[:, 1:-1, 2:]
        return float((lap**2).mean())

    e = energy(gt)
    return energy(gen) / e if e > 0 else math.nan
