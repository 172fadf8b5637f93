"""Reconstruction quality of a codec folder on a dataset: ``python -m worldsim.train.codec_eval CODEC DATA``.

Prints PSNR (dB, frames in [0, 1]) over every frame of every episode under DATA (a dataset or a
folder of datasets), the mean and the 5th percentile per frame, so shipped numbers can be rerun;
then the same split into light and dark frames (a true frame's mean pixel value below
``--dark-mean``, night in the built-in world), each with the mean error of the frames'
brightness (mean pixel value, 0-255) and contrast (standard deviation): a codec that darkens
or flattens night shows it there, where the overall PSNR hides it. ``--bf16`` decodes under bf16
autocast, as an engine with bf16 on does (default: fp32).
"""

from __future__ import annotations

import argparse
import math

import numpy as np
import torch

from worldsim.core.errors import clean_errors
from worldsim.data.frames import open_datasets
from worldsim.inference.checkpoint import load_codec
from worldsim.model.codec import decode_for_display, frames_to_tensor


@torch.inference_mode()
def codec_psnr(
    codec_path: str, data_path: str, batch: int = 64, dark_mean: float = 60.0, bf16: bool = False
) -> dict[str, float]:
    """The decoder runs as the engine runs it (:func:`worldsim.model.codec.decode_for_display`:
    channels-last, bf16 autocast when ``bf16``), the encoder in fp32. Keys: ``frames``,
    ``psnr_mean_db``, ``psnr_p5_db``, and per subset ``light`` / ``dark``:
    ``<subset>_frames``, ``<subset>_psnr_mean_db``, ``<subset>_brightness_error``,
    ``<subset>_contrast_error`` (reconstruction minus truth, 0-255; NaN for an empty subset)."""
    codec = load_codec(codec_path).channels_last()
    psnr, moments = [], []  # per frame: PSNR; truth mean, truth std, reconstruction mean, std
    for ds in open_datasets(data_path):
        for i in range(len(ds)):
            frames = ds.load(i, ("frames",))["frames"]
            for s in range(0, len(frames), batch):
                x = frames_to_tensor(torch.from_numpy(frames[s : s + batch]))
                rec = decode_for_display(codec.decoder, codec.encode(x), bf16).clamp(-1, 1)
                err = (rec - x).pow(2).mean(dim=(1, 2, 3)) / 4.0  # [0, 1] range
                psnr += [10 * math.log10(1.0 / max(e, 1e-12)) for e in err.tolist()]
                pixels = [(t.flatten(1) + 1) * 127.5 for t in (x, rec)]
                moments.append(torch.stack([f(p, dim=1) for p in pixels for f in (torch.mean, torch.std)], 1))
    arr, m = np.array(psnr), torch.cat(moments).double().numpy()
    out = {"frames": float(len(arr)), "psnr_mean_db": float(arr.mean()), "psnr_p5_db": float(np.percentile(arr, 5))}
    dark = m[:, 0] < dark_mean
    for name, sel in (("light", ~dark), ("dark", dark)):
        out[f"{name}_frames"] = float(sel.sum())
        out[f"{name}_psnr_mean_db"] = _mean(arr[sel])
        out[f"{name}_brightness_error"] = _mean(m[sel, 2] - m[sel, 0])
        out[f"{name}_contrast_error"] = _mean(m[sel, 3] - m[sel, 1])
    return out


def _mean(a: np.ndarray) -> float:
    return float(a.mean()) if len(a) else float("nan")


@clean_errors
def main(argv: list[str] | None = None) -> None:
    """CLI: print a codec's PSNR (dB) on a dataset, overall and split into light and dark frames."""
    parser = argparse.ArgumentParser(prog="python -m worldsim.train.codec_eval", description=__doc__)
    parser.add_argument("codec", help="a codec folder (codec.json + codec.safetensors)")
    parser.add_argument("data", help="a rollout dataset or a folder of them")
    parser.add_argument("--dark-mean", type=float, default=60.0, help="a frame darker than this (0-255) is dark")
    parser.add_argument("--bf16", action="store_true", help="decode under bf16 autocast (as a bf16 engine does)")
    args = parser.parse_args(argv)
    r = codec_psnr(args.codec, args.data, dark_mean=args.dark_mean, bf16=args.bf16)
    print(f"frames {int(r['frames'])}  PSNR mean {r['psnr_mean_db']:.2f} dB  p5 {r['psnr_p5_db']:.2f} dB")
    for name in ("light", "dark"):
        print(
            f"{name} frames {int(r[f'{name}_frames'])}  PSNR mean {r[f'{name}_psnr_mean_db']:.2f} dB  "
            f"brightness error {r[f'{name}_brightness_error']:+.2f}  contrast error {r[f'{name}_contrast_error']:+.2f}"
        )


if __name__ == "__main__":
    main()
