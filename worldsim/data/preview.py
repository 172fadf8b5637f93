"""Previews of frame sequences: an mp4 and a PNG contact sheet."""

from __future__ import annotations

from pathlib import Path

import imageio.v3 as iio
import numpy as np


def contact_sheet(rows: list[np.ndarray], max_cols: int = 16, gap_px: int = 2) -> np.ndarray:
    """Tile sequences (each ``(T, H, W, 3)`` uint8) as rows of evenly spaced frames."""
    if not rows:
        raise ValueError("contact_sheet needs at least one sequence")
    h, w = rows[0].shape[1:3]
    cols = min(max_cols, max(len(r) for r in rows))
    sheet = np.full((len(rows) * (h + gap_px) - gap_px, cols * (w + gap_px) - gap_px, 3), 255, np.uint8)
    for r, seq in enumerate(rows):
        picks = np.linspace(0, len(seq) - 1, num=min(cols, len(seq))).round().astype(int)
        for c, t in enumerate(picks):
            y, x = r * (h + gap_px), c * (w + gap_px)
            sheet[y : y + h, x : x + w] = seq[t]
    return sheet


def upscale(frames_u8: np.ndarray, factor: int) -> np.ndarray:
    """Nearest-neighbour upscale ``(T, H, W, 3)`` -> ``(T, H*f, W*f, 3)``."""
    return frames_u8.repeat(factor, axis=1).repeat(factor, axis=2)


def write_mp4(path: str | Path, frames_u8: np.ndarray, fps: float, min_side_px: int = 256) -> None:
    """H.264 mp4, upscaled (nearest) so the short side is at least ``min_side_px``."""
    factor = max(1, -(-min_side_px // min(frames_u8.shape[1:3])))
    big = upscale(frames_u8, factor)
    iio.imwrite(path, big, fps=fps, codec="libx264")


def write_png(path: str | Path, image_u8: np.ndarray) -> None:
    """Write one ``(H, W, 3)`` uint8 image as PNG at its own size (no upscaling)."""
    iio.imwrite(path, image_u8)
