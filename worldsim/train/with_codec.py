"""A checkpoint with another codec: ``python -m worldsim.train.with_codec CHECKPOINT CODEC OUT``.

The last step of a decoder fine-tune (``stage=codec_slim``, or ``codec_train.freeze_encoder``):
the model folder ``CHECKPOINT`` is written to ``OUT`` with the codec folder ``CODEC`` (the
stage's ``<out>/codec``) in place of its own, after checking that the encoder, and so the latent
space the model was trained on, is the same bit for bit (``worldsim.inference.checkpoint.with_codec``).
Then ``python -m worldsim.train.codec_eval`` and ``worldsim-eval`` measure what the new decoder
changes, and ``worldsim-bench engine`` what it saves.
"""

from __future__ import annotations

import argparse

from worldsim.core.errors import clean_errors
from worldsim.inference.checkpoint import with_codec


@clean_errors
def main(argv: list[str] | None = None) -> None:
    """Parse ``CHECKPOINT CODEC OUT`` and write ``OUT``."""
    p = argparse.ArgumentParser(prog="python -m worldsim.train.with_codec", description=__doc__)
    p.add_argument("checkpoint", help="a model folder (config.json, model.safetensors, codec.safetensors)")
    p.add_argument("codec", help="a codec folder (codec.json, codec.safetensors), e.g. runs/codec_slim/codec")
    p.add_argument("out", help="the new model folder (written atomically)")
    a = p.parse_args(argv)
    with_codec(a.checkpoint, a.codec, a.out)
    print(f"{a.out}: {a.checkpoint} with the codec of {a.codec}")


if __name__ == "__main__":
    main()
