"""Reconstruction quality of a codec folder on a dataset: ``python -m worldsim.train.codec_eval CODEC DATA``.

Prints PSNR (dB, frames in [0, 1]) over every frame of every episode under DATA (a dataset or a
folder of datasets), the mean and the 5th percentile per frame, so shipped numbers can be rerun.
"""

from __future__ import annotations

import argparse
import math

import numpy as np
import torch

from worldsim.checkpoint import load_codec
from worldsim.errors import clean_errors
from worldsim.model.codec import frames_to_tensor
from worldsim.train.frames import open_datasets


@torch.inference_mode()
def codec_psnr(codec_path: str, data_path: str, batch: int = 64) -> dict[str, float]:
    codec = load_codec(codec_path)
    per_frame = []
    for ds in open_datasets(data_path):
        for i in range(len(ds)):
            frames = ds.load(i, ("frames",))["frames"]
            for s in range(0, len(frames), batch):
                x = frames_to_tensor(torch.from_numpy(frames[s : s + batch]))
                err = (codec(x).clamp(-1, 1) - x).pow(2).mean(dim=(1, 2, 3)) / 4.0  # [0, 1] range
                per_frame += [10 * math.log10(1.0 / max(e, 1e-12)) for e in err.tolist()]
    arr = np.array(per_frame)
    return {"frames": float(len(arr)), "psnr_mean_db": float(arr.mean()), "psnr_p5_db": float(np.percentile(arr, 5))}


@clean_errors
def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m worldsim.train.codec_eval", description=__doc__)
    parser.add_argument("codec", help="a codec folder (codec.json + codec.safetensors)")
    parser.add_argument("data", help="a rollout dataset or a folder of them")
    args = parser.parse_args(argv)
    r = codec_psnr(args.codec, args.data)
    print(f"frames {int(r['frames'])}  PSNR mean {r['psnr_mean_db']:.2f} dB  p5 {r['psnr_p5_db']:.2f} dB")


if __name__ == "__main__":
    main()
