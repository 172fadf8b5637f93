import json
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent


def _run(module, *args, cwd=None):
    return subprocess.run(
        [sys.executable, "-m", module, *args], cwd=cwd or ROOT, capture_output=True, text=True, timeout=300
    )


@pytest.mark.parametrize(
    "args, message",
    [
        (["env=quake"], "unknown env 'quake'; valid: builtin, doom"),
        (["policy=wander"], "unknown policy 'wander'; valid: explore"),
        (["frame_size=[64,-1]"], "frame_size must be a positive integer"),
        (["frame_size=0"], "frame_size must be a positive integer"),
        (["policy=replay", "replay_from=/nonexistent/ds"], "dataset folder /nonexistent/ds does not exist"),
        (["+polcy=look_around"], "unknown config key 'polcy' (did you mean 'policy'?) for RecordConfig"),
        (["+world.fov=90"], "unknown config key 'world.fov' for RecordConfig"),
    ],
)
def test_record_bad_input_is_one_clear_line(tmp_path, args, message):
    r = _run("envs.record", f"out={tmp_path / 'o'}", *args)
    assert r.returncode == 2
    assert "Traceback" not in r.stderr
    lines = [ln for ln in r.stderr.splitlines() if ln.strip()]
    assert lines == [f"error: {lines[0][7:]}"] and message in lines[0], r.stderr


def test_record_names_a_corrupt_replay_source(tmp_path, small_dataset):
    import shutil

    src = tmp_path / "src"
    shutil.copytree(small_dataset.root, src)
    ep = src / "episodes" / "000000.safetensors"
    ep.write_bytes(ep.read_bytes()[:100])
    r = _run(
        "envs.record", f"out={tmp_path / 'o'}", "policy=replay", f"replay_from={src}", "num_episodes=1", "episode_len=8"
    )
    assert r.returncode == 2 and "Traceback" not in r.stderr
    assert "000000.safetensors is corrupt or truncated" in r.stderr


def test_record_cli_writes_a_dataset_and_previews(tmp_path):
    out = tmp_path / "ds"
    r = _run("envs.record", f"out={out}", "num_episodes=2", "episode_len=10", "frame_size=32", "policy=look_around")
    assert r.returncode == 0, r.stderr
    assert "recorded 2 episodes, 20 frames" in r.stdout
    assert (out / "preview.mp4").exists() and (out / "contact_sheet.png").exists()
    r2 = _run("envs.record", f"out={out}", "num_episodes=2", "episode_len=10", "frame_size=32", "policy=look_around")
    assert "2 of 2 episodes already finished" in r2.stdout


def test_bench_env_prints_and_writes_json(tmp_path):
    out = tmp_path / "bench.json"
    r = _run("worldsim.cli.bench", "env", "--frames", "4", "--out", str(out))
    assert r.returncode == 0, r.stderr
    assert "render_frames_per_s" in r.stdout and "write_MB_per_s" in r.stdout
    result = json.loads(out.read_text())
    assert result["env"]["render_frames_per_s"] > 0 and result["machine"]["cores"] >= 1


def test_bench_model_prints_every_measurement(tmp_path):
    out = tmp_path / "bench.json"
    r = _run("worldsim.cli.bench", "model", "--preset", "tiny", "--out", str(out))
    assert r.returncode == 0, r.stderr
    model = json.loads(out.read_text())["model"]
    for key in (
        "rebuild_1step_ms_per_chunk",
        "rebuild_1step_context_ms",
        "rebuild_2step_denoise_ms",
        "cached_1step_ms_per_chunk",
        "cached_2step_frames_per_s",
        "cached_8step_cache_write_ms",
        "cached_speedup_1step",
        "bf16_speedup_cached_2step",
        "model_GFLOP_per_s",
        "matmul_GFLOP_per_s",
        "fraction_of_matmul",
        "cached_context_1x_2step_ms_per_chunk",
        "cached_context_16x_2step_ms_per_chunk",
    ):
        assert key in model and model[key] > 0, key
        assert key in r.stdout
    # Each policy pays for what it does: rebuild recomputes the context, cached writes its chunk.
    assert model["cached_1step_context_ms"] < model["rebuild_1step_context_ms"]
    assert model["rebuild_1step_cache_write_ms"] < model["cached_1step_cache_write_ms"]
    bad = _run("worldsim.cli.bench", "model", "--preset", "huge")
    assert bad.returncode == 2 and "unknown model preset 'huge'; valid: cpu, gpu_base, tiny" in bad.stderr


@pytest.mark.parametrize(
    "module, args, option",
    [
        ("worldsim.eval.evaluate", ["checkpoint=assets/teacher_builtin_v1", "data=/nonexistent"], "out"),
        ("worldsim.cli.train", ["stage=codec", "data=/nonexistent"], "out"),
        ("worldsim.cli.bench", ["env", "--frames", "2"], "--out's folder"),
    ],
)
def test_an_output_that_cannot_be_written_is_refused_before_any_work(tmp_path, module, args, option):
    """/proc refuses new folders even to root: each command says so in one line, first."""
    bad = "/proc/worldsim-nope/x"
    out = ["--out", f"{bad}/bench.json"] if module.endswith("bench") else [f"out={bad}"]
    r = _run(module, *args, *out)
    lines = [ln for ln in r.stderr.splitlines() if ln.strip()]
    assert r.returncode == 2 and "Traceback" not in r.stderr, r.stderr
    assert lines == [f"error: {option}={bad}: cannot write there (No such file or directory)"], r.stderr


def test_the_writable_check_leaves_nothing_behind(tmp_path):
    from worldsim.core.atomic import require_writable_dir
    from worldsim.core.errors import WorldsimError

    assert require_writable_dir(tmp_path / "a" / "b", "out") == tmp_path / "a" / "b"
    assert list(tmp_path.iterdir()) == []
    (tmp_path / "file").write_text("x")
    with pytest.raises(WorldsimError, match="out=.*file/sub: cannot write there"):
        require_writable_dir(tmp_path / "file" / "sub", "out")
