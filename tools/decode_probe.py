"""Paired timing of one chunk's decode: the engine's (``Engine._decode``: channels-last, fp32 or
bf16 by the engine's setting; ``worldsim.model.codec.decode_for_display``) against the plain
decode it replaced (the codec's decoder on NCHW tensors, fp32), and any other codec folder's
decoder (``--codec``, e.g. a slimmer one trained on the same encoder) decoded as the engine
does, all in turn chunk by chunk on the same latents, so machine speed changes hit all alike.
Prints the median of each and its ratio to the plain decode. Run alone on the machine:

    .venv/bin/python tools/decode_probe.py [checkpoint] [--chunks 60] [--codec FOLDER ...]
"""

from __future__ import annotations

import argparse
import time
from collections.abc import Callable

import numpy as np
import torch

import worldsim
from worldsim.core.config import DEFAULT_CHECKPOINT
from worldsim.core.errors import clean_errors
from worldsim.inference.checkpoint import find_checkpoint, load_checkpoint, load_codec
from worldsim.model.codec import Codec, decode_for_display, tensor_to_frames


@clean_errors
def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("checkpoint", nargs="?", default=DEFAULT_CHECKPOINT)
    parser.add_argument("--chunks", type=int, default=60)
    parser.add_argument("--codec", action="append", default=[], help="another codec folder to time (repeatable)")
    args = parser.parse_args()
    if args.chunks < 1:
        parser.error(f"--chunks must be at least 1, got {args.chunks}")
    torch.set_num_threads(2)
    fp32 = worldsim.load_engine(args.checkpoint, bf16=False)
    bf16 = worldsim.load_engine(args.checkpoint, bf16=True)
    plain = load_checkpoint(find_checkpoint(args.checkpoint))[2]  # a codec of its own, left NCHW
    c, h, w = fp32.cfg.model.latent_shape()
    z = torch.randn(fp32.chunk_frames, c, h, w, generator=torch.Generator().manual_seed(0))

    @torch.inference_mode()
    def nchw(z: torch.Tensor) -> np.ndarray:
        return tensor_to_frames(plain.decoder(z * fp32.std + fp32.mean)).numpy()

    def as_engine(codec: Codec, on: bool) -> Callable[[torch.Tensor], np.ndarray]:
        codec.channels_last()
        return torch.inference_mode()(
            lambda z: tensor_to_frames(decode_for_display(codec.decoder, z * fp32.std + fp32.mean, on)).numpy()
        )

    runs: dict[str, Callable[[torch.Tensor], np.ndarray]] = {
        "plain NCHW fp32": nchw,
        "engine fp32": fp32._decode,
        "engine bf16": bf16._decode,
    }
    for folder in args.codec:
        other = load_codec(folder)
        runs[f"{folder} fp32"] = as_engine(other, False)
        runs[f"{folder} bf16"] = as_engine(other, True)
    ms: dict[str, list[float]] = {name: [] for name in runs}
    for i in range(args.chunks + 5):
        for name, decode in runs.items():
            t0 = time.perf_counter()
            decode(z)
            if i >= 5:
                ms[name].append(1000 * (time.perf_counter() - t0))
    base = float(np.median(ms["plain NCHW fp32"]))
    width = max(len(name) for name in runs)
    for name, m in ms.items():
        print(
            f"{name:{width}s} {np.median(m):6.2f} ms per {fp32.chunk_frames}-frame chunk"
            f"  ratio {np.median(m) / base:.2f}"
        )
    ref = nchw(z).astype(int)
    for name in ("engine fp32", "engine bf16"):
        d = np.abs(runs[name](z).astype(int) - ref)
        print(f"{name} vs plain: {(d > 0).mean():.4%} of values differ, by at most {d.max()} level(s)")


if __name__ == "__main__":
    main()
