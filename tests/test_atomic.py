"""Atomic writes: a writer killed (SIGKILL) or interrupted mid-write leaves the old file or folder or
the new one, never a torn one; every writer goes through ``worldsim.core.atomic``."""

import json
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import numpy as np
import pytest
import torch

from worldsim.core import atomic
from worldsim.data.format import RolloutMeta
from worldsim.data.reader import RolloutDataset
from worldsim.data.writer import RolloutWriter
from worldsim.inference.checkpoint import load_codec, save_codec, state_dict_equal
from worldsim.model.codec import Codec, CodecConfig

ROOT = Path(__file__).resolve().parent.parent
SIZE = 2 << 20  # bytes per version

# Writes versions 0, 1, 2, ... of one file (a whole file of that byte) and of one folder (two
# files that must agree) forever, saying "ready" once the first version of each is in place. The
# disk is made slow (64 KiB pieces, a millisecond apart) so that a kill lands inside a write.
WRITER = textwrap.dedent(
    f"""
    import builtins, sys, time
    from pathlib import Path
    from worldsim.core import atomic

    class SlowFile:
        def __init__(self, f):
            self.f = f
        def write(self, data):
            for i in range(0, len(data), 1 << 16):
                self.f.write(data[i : i + (1 << 16)])
                self.f.flush()
                time.sleep(0.001)
        def __getattr__(self, name):
            return getattr(self.f, name)
        def __enter__(self):
            return self
        def __exit__(self, *exc):
            self.f.close()

    atomic.open = lambda *a, **k: SlowFile(builtins.open(*a, **k))
    root = Path(sys.argv[1])
    for v in range(10**9):
        b = bytes([v % 251]) * {SIZE}
        atomic.write_bytes(root / "f.bin", b)
        with atomic.staged_dir(root / "d") as d:
            atomic.write_bytes(d / "a.bin", b)
            atomic.write_bytes(d / "b.bin", b[: {SIZE} // 2])
        if v == 0:
            print("ready", flush=True)
    """
)


def _whole(data: bytes, size: int) -> bool:
    return len(data) == size and data == data[:1] * size


@pytest.mark.parametrize("kill_after_s", [0.0, 0.011, 0.023, 0.041, 0.067, 0.089])
def test_a_writer_killed_mid_write_leaves_the_old_or_the_new_file_never_a_torn_one(tmp_path, kill_after_s):
    p = subprocess.Popen([sys.executable, "-c", WRITER, str(tmp_path)], cwd=ROOT, stdout=subprocess.PIPE, text=True)
    try:
        assert p.stdout is not None and p.stdout.readline().strip() == "ready"
        time.sleep(kill_after_s)
    finally:
        os.kill(p.pid, signal.SIGKILL)
        p.wait()
    assert _whole((tmp_path / "f.bin").read_bytes(), SIZE)
    atomic.recover_dir(tmp_path / "d")
    a, b = (tmp_path / "d" / "a.bin").read_bytes(), (tmp_path / "d" / "b.bin").read_bytes()
    assert _whole(a, SIZE) and _whole(b, SIZE // 2) and a[:1] == b[:1]  # one version, both files


def test_an_interrupted_write_keeps_the_old_file_and_leaves_no_temp(tmp_path, monkeypatch):
    target = tmp_path / "x.json"
    atomic.write_text(target, "old")

    def interrupted(src, dst):
        raise KeyboardInterrupt  # between the temp write and the rename

    monkeypatch.setattr(atomic.os, "replace", interrupted)
    with pytest.raises(KeyboardInterrupt):
        atomic.write_text(target, "new")
    assert target.read_text() == "old" and [f.name for f in tmp_path.iterdir()] == ["x.json"]


def test_a_folder_swap_interrupted_at_the_rename_keeps_the_old_folder(tmp_path, monkeypatch):
    with atomic.staged_dir(tmp_path / "d") as d:
        atomic.write_text(d / "a.txt", "old")

    def interrupted(src, dst):
        raise KeyboardInterrupt

    monkeypatch.setattr(atomic.os, "replace", interrupted)  # the rename, or
    monkeypatch.setattr(atomic, "_exchange", interrupted)  # the one-step swap
    with pytest.raises(KeyboardInterrupt), atomic.staged_dir(tmp_path / "d") as d:
        (d / "a.txt").write_text("new")
    monkeypatch.undo()
    atomic.recover_dir(tmp_path / "d")
    assert (tmp_path / "d" / "a.txt").read_text() == "old"
    assert sorted(f.name for f in tmp_path.iterdir()) == ["d"]


def test_an_interrupted_codec_export_keeps_the_previous_one(tmp_path, monkeypatch):
    torch.manual_seed(0)
    old, new = Codec(CodecConfig(4, 4, 16)), Codec(CodecConfig(4, 4, 16))
    save_codec(tmp_path / "c", old, {"v": 1})

    def interrupted(staged, final):
        raise KeyboardInterrupt

    monkeypatch.setattr(atomic, "replace_dir", interrupted)
    with pytest.raises(KeyboardInterrupt):
        save_codec(tmp_path / "c", new, {"v": 2})
    assert state_dict_equal(load_codec(tmp_path / "c").state_dict(), old.state_dict())
    assert json.loads((tmp_path / "c" / "codec.json").read_text())["provenance"] == {"v": 1}
    assert sorted(f.name for f in tmp_path.iterdir()) == ["c"]  # no staged folder left behind


def test_an_interrupted_episode_write_keeps_the_dataset_readable(tmp_path, monkeypatch):
    meta = RolloutMeta(env="builtin", fps=15.0, frame_size=(8, 8), key_names=list("wasdxyz"))
    t = 3
    ep = {
        "frames": np.zeros((t, 8, 8, 3), np.uint8),
        "c2w": np.tile(np.eye(4, dtype=np.float32), (t, 1, 1)),
        "intrinsics": np.eye(3, dtype=np.float32),
        "keys": np.zeros((t, 7), np.uint8),
        "mouse": np.zeros((t, 2), np.float32),
        "timestamp_s": np.arange(t, dtype=np.float64),
    }
    w = RolloutWriter(tmp_path / "d", meta)
    w.write_episode(0, ep)
    real = os.replace

    def interrupted(src, dst):
        if str(dst).endswith(".safetensors"):
            raise KeyboardInterrupt
        real(src, dst)

    monkeypatch.setattr(atomic.os, "replace", interrupted)
    with pytest.raises(KeyboardInterrupt):
        w.write_episode(1, ep)
    monkeypatch.undo()
    data = RolloutDataset(tmp_path / "d")
    assert len(data) == 1
    data.verify()
    assert sorted(f.name for f in (tmp_path / "d" / "episodes").iterdir()) == ["000000.safetensors"]


def test_bench_writes_its_out_in_a_folder_it_makes(tmp_path):
    """A missing --out folder is made (the writable check ran before the work), not an error after it."""
    out = tmp_path / "missing" / "bench.json"
    cmd = [sys.executable, "-m", "worldsim.cli.bench", "env", "--size", "16", "--frames", "20", "--out", str(out)]
    r = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr
    assert "env" in json.loads(out.read_text())
