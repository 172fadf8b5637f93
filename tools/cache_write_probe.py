"""Paired timing of the cache write's pass: ``WorldModel.write_chunk`` (stops after the last
block's keys and values) against a whole ``forward_chunk``, alternating chunk by chunk in one
engine session, so machine speed changes hit both alike. Prints the median cache write and
chunk time of each. Run alone on the machine:

    .venv/bin/python tools/cache_write_probe.py [checkpoint] [chunks]
"""

from __future__ import annotations

import sys

import numpy as np

import worldsim
from worldsim.core.config import DEFAULT_CHECKPOINT


def main() -> None:
    path = sys.argv[1] if len(sys.argv) > 1 else DEFAULT_CHECKPOINT
    chunks = int(sys.argv[2]) if len(sys.argv) > 2 else 80
    eng = worldsim.load_engine(path, bf16=False, threads=2)
    t = 5 * eng.chunk_frames
    h, w = eng.frame_size
    frames = np.random.default_rng(0).integers(0, 255, (t, h, w, 3), dtype=np.uint8)
    n_keys, k = len(eng.key_names), eng.chunk_frames
    eng.reset(
        frames,
        np.tile(np.eye(4, dtype=np.float32), (t, 1, 1)),
        np.zeros((t, n_keys), np.uint8),
        np.zeros((t, 2), np.float32),
    )
    model = eng.model
    short = model.write_chunk

    def whole(*args: object) -> None:
        model.forward_chunk(*args)  # type: ignore[arg-type]

    keys, mouse = np.zeros((k, n_keys), np.uint8), np.zeros((k, 2), np.float32)
    for _ in range(6):
        eng.step(keys, mouse)
    rows: dict[str, list[tuple[float, float]]] = {"write_chunk": [], "forward_chunk": []}
    for i in range(chunks):
        name = "write_chunk" if i % 2 else "forward_chunk"
        model.write_chunk = short if name == "write_chunk" else whole  # type: ignore[method-assign]
        chunk = eng.step(keys, mouse)  # its cache write is the previous chunk's, run with this pass
        rows[name].append((chunk.timings.cache_write_s, chunk.timings.total_s))
    for name, r in rows.items():
        ms = np.array(r[2:]) * 1000
        print(
            f"{name:14s} cache write {np.median(ms[:, 0]):6.2f} ms   chunk {np.median(ms[:, 1]):6.1f} ms  (n={len(ms)})"
        )


if __name__ == "__main__":
    main()
