"""worldsim-rollout (with compare), headless play, and worldsim-bench engine on a tiny checkpoint."""

import dataclasses
import json
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from test_engine import LAST_STEP, make_tiny_checkpoint

from envs.starts import world_start
from worldsim import load_engine
from worldsim.bench.engine import (
    _paired_chunk_times,
    _rows,
    _stage_rows,
    bench_baseline,
    bench_cache_write,
    bench_compile,
    bench_engine,
)
from worldsim.cli.rollout import RolloutConfig, run_rollout
from worldsim.core.errors import WorldsimError
from worldsim.core.threads import allowed_cores
from worldsim.data.reader import RolloutDataset
from worldsim.inference.engine import ChunkTimings, Engine

ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    return make_tiny_checkpoint(tmp_path_factory.mktemp("ck") / "tiny")


def test_rollout_with_compare_writes_model_and_truth_datasets_and_a_video(tiny, tmp_path):
    r = run_rollout(
        RolloutConfig(
            checkpoint=str(tiny), seed=4, frames=6, compare=True, policy="look_around", out=str(tmp_path / "r")
        )
    )
    ds, truth = RolloutDataset(tmp_path / "r"), RolloutDataset(tmp_path / "r" / "truth")
    assert ds.meta.source == "model" and ds.meta.extra["context_frames"] == 4
    ep, gt = ds.load(0), truth.load(0)
    assert len(ep["frames"]) == 4 + 6 and len(gt["frames"]) == 4 + 6
    # Same inputs, same poses: the controller drives both.
    np.testing.assert_allclose(ep["c2w"], gt["c2w"], atol=1e-4)
    np.testing.assert_array_equal(ep["keys"], gt["keys"])
    np.testing.assert_array_equal(ep["frames"][:4], gt["frames"][:4])  # the context is ground truth
    assert len(r["psnr_db"]) == 6 and (tmp_path / "r" / "rollout.mp4").stat().st_size > 0


def test_rollout_with_compare_keeps_a_momentum_camera_and_says_so_in_both_datasets(tmp_path):
    """A checkpoint whose camera coasts (DOOM's motion): the truth moves as the model's camera
    does, and both datasets record the controller that moved their poses."""
    from test_engine import MOMENTUM

    ck = make_tiny_checkpoint(tmp_path / "momentum", controller=MOMENTUM)
    run_rollout(RolloutConfig(checkpoint=str(ck), seed=4, frames=6, compare=True, out=str(tmp_path / "r")))
    ds, truth = RolloutDataset(tmp_path / "r"), RolloutDataset(tmp_path / "r" / "truth")
    assert ds.meta.controller() == MOMENTUM == truth.meta.controller()
    np.testing.assert_allclose(ds.load(0)["c2w"], truth.load(0)["c2w"], atol=1e-4)


def test_rollout_from_a_dataset_episode_with_an_actions_file(tiny, small_dataset, tmp_path):
    keys = np.zeros((4, 7), np.uint8)
    keys[:, 0] = 1
    np.savez(tmp_path / "a.npz", keys=keys, mouse=np.zeros((4, 2), np.float32))
    cfg = RolloutConfig(
        checkpoint=str(tiny),
        start_data=str(small_dataset.root),
        actions_file=str(tmp_path / "a.npz"),
        frames=4,
        compare=True,
        out=str(tmp_path / "r"),
    )
    run_rollout(cfg)
    ep = RolloutDataset(tmp_path / "r").load(0)
    gt = RolloutDataset(tmp_path / "r" / "truth").load(0)
    np.testing.assert_array_equal(ep["frames"][:4], small_dataset.load(0)["frames"][:4])
    np.testing.assert_allclose(ep["c2w"], gt["c2w"], atol=1e-4)
    with pytest.raises(WorldsimError, match="unknown policy 'spin'"):
        run_rollout(RolloutConfig(checkpoint=str(tiny), policy="spin", out=str(tmp_path / "x")))
    with pytest.raises(WorldsimError, match="does not exist"):
        run_rollout(
            RolloutConfig(checkpoint=str(tiny), actions_file=str(tmp_path / "none.npz"), out=str(tmp_path / "x"))
        )


def test_headless_play_and_rollout_cli(tiny, tmp_path):
    p = subprocess.run(
        [
            sys.executable,
            "play.py",
            f"checkpoint={tiny}",
            "headless=true",
            "steps=4",
            "bf16=false",
            f"out={tmp_path / 'h'}",
        ],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert p.returncode == 0, p.stderr[-2000:]
    assert len(RolloutDataset(tmp_path / "h").load(0)["frames"]) == 8 and (tmp_path / "h" / "rollout.mp4").is_file()
    p = subprocess.run(
        [sys.executable, "-m", "worldsim.cli.rollout", f"checkpoint={tmp_path / 'missing'}", f"out={tmp_path / 'x'}"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert p.returncode == 2 and "Traceback" not in p.stderr and "does not exist" in p.stderr


def test_bench_engine_reports_every_row_and_agrees_with_hand_timing(tiny):
    res = bench_engine(
        str(tiny),
        chunks=4,
        step_counts=(1, 2),
        session_frames=40,
        play_seconds=2.0,
        play_steps=1,
        memory_entries=800,
        busy=True,
    )
    assert res["play_sampler_steps"] == 1
    for key in (
        "load_s",
        "first_chunk_s",
        "default_model_ms",
        "default_decode_ms",
        "default_context_ms",
        "default_denoise_ms",
        "default_frames_per_s",
        "rebuild_1step_frames_per_s",
        "rebuild_2step_context_ms",
        "rebuild_2step_denoise_ms",
        "bf16_frames_per_s",
        "bf16_decode_ms",
        "int8_frames_per_s",
        "int8_paired_fp32_model_ms",
        "int8_speedup",
        "growth_ratio_last_over_first",
        "peak_rss_MB",
        "params_MB",
        "context_MB",
        "default_critical_ms",
        "default_critical_p95_ms",
        "play_displayed_frames_per_s",
        "play_latency_p95_ms",
        "play_first_frame_s",
        "play_source_start_s",
        "play_chunk_ms_mean",
        "play_critical_ms_p95",
        "play_turnaround_ms_p95",
        "memory_on_frames_per_s",
        "memory_on_memory_ms",
        "memory_on_reload_share",
        "busy_alone_frames_per_s",
        "busy_auto_frames_per_s",
        "busy_pinned_frames_per_s",
        "busy_auto_ratio",
        "memory_on_frames_per_s_ratio",
        "memory_still_frames_per_s_ratio",
        "memory_bank_retrieve_p95_ms",
        "memory_bank_MB",
    ):
        assert np.isfinite(res[key]), key
    assert res["memory_bank_entries"] == 800 and res["memory_bank_hit_share"] > 0.5  # the walk crosses the bank
    assert res["memory_on_memory_ms"] > 0 == res["default_memory_ms"]
    assert 1 <= res["busy_auto_threads"] <= allowed_cores()
    on, off = res["memory_on_throughput_frames_per_s"], res["memory_off_paired_throughput_frames_per_s"]
    assert res["memory_on_frames_per_s_ratio"] == on / off  # throughput, not medians: retrieving chunks count
    assert res["int8_speedup"] == res["int8_frames_per_s"] / res["int8_paired_fp32_frames_per_s"]
    assert res["default_policy"] == "rebuild" and res["cached"].startswith("n/a")
    assert not any(key.startswith("play_thread") for key in res)  # play generates in a process only
    # The timed span of a chunk (model + decode) is most of the chunk's wall time, measured in
    # the same call so that a loaded machine slows both alike.
    eng = load_engine(tiny)
    eng.reset(*world_start(0, eng.context_frames, eng.key_names, eng.frame_size).arrays())
    k = eng.chunk_frames
    z = (np.zeros((k, 7), np.uint8), np.zeros((k, 2), np.float32))
    eng.step(*z)
    share = []
    for _ in range(8):
        t0 = time.perf_counter()
        timings = eng.step(*z).timings
        share.append(timings.total_s / (time.perf_counter() - t0))
    assert max(share) <= 1.0 and np.median(share) > 0.5


def test_bench_engine_times_both_policies_for_a_cacheable_checkpoint(tmp_path):
    ck = make_tiny_checkpoint(tmp_path / "session", camera_reference="session")
    res = bench_engine(str(ck), chunks=3, step_counts=(1,), session_frames=0, play_seconds=0)
    assert res["default_policy"] == "cached" and res["kv_cache_MB"] > 0
    for policy in ("rebuild", "cached"):
        assert res[f"{policy}_1step_frames_per_s"] > 0
    assert res["cached_1step_context_ms"] < res["rebuild_1step_context_ms"]
    assert res["cached_speedup_1step"] == res["cached_1step_frames_per_s"] / res["rebuild_1step_frames_per_s"]
    # Standing still, the start's chunk comes back on every chunk and keeps its pass (cached only).
    assert res["memory_reuse"] and 0 < res["memory_still_reuse_share"] <= res["memory_still_hit_share"]


def test_bench_compile_steps_a_compiled_engine_beside_an_eager_one(tiny, inductor_cache):
    res = bench_compile(str(tiny), chunks=2, modes=("decoder",))
    names = ("model_ms", "decode_ms", "frames_per_s")
    want = {f"compile_decoder_{p}{n}" for p in ("", "paired_eager_") for n in names}
    assert set(res) == want | {"compile_decoder_speedup", "compile_decoder_load_s"}
    assert all(v > 0 for v in res.values())
    fps = res["compile_decoder_frames_per_s"], res["compile_decoder_paired_eager_frames_per_s"]
    assert res["compile_decoder_speedup"] == fps[0] / fps[1]


def test_bench_rows_are_medians_and_means_of_the_steady_chunks(tiny, monkeypatch):
    eng = load_engine(tiny)
    model_s = iter([5.0, 5.0, 0.03, 0.09, 0.04])  # the 2 warm-up chunks are left out
    real_step = eng.step

    def step(keys, mouse):
        out = real_step(keys, mouse)
        return dataclasses.replace(out, timings=ChunkTimings(denoise_s=next(model_s), decode_s=0.01))

    monkeypatch.setattr(eng, "step", step)
    rows = _rows(eng, chunks=3)
    assert rows["model_ms"] == pytest.approx(40.0) and rows["decode_ms"] == pytest.approx(10.0)
    assert rows["frames_per_s"] == pytest.approx(eng.chunk_frames / 0.05)
    assert rows["throughput_frames_per_s"] == pytest.approx(eng.chunk_frames / (0.16 / 3 + 0.01))  # warm-ups out


def test_bench_cli_writes_json(tiny, tmp_path):
    p = subprocess.run(
        [
            sys.executable,
            "-m",
            "worldsim.cli.bench",
            "engine",
            f"--checkpoint={tiny}",
            "--chunks=6",  # the last chunks have entries older than the window
            "--session-frames=0",
            "--play-seconds=0",
            "--memory-min-score=-1",  # every chunk with an earlier entry in reach retrieves
            "--memory-top-k=2",
            "--memory-keep=newest",
            "--memory-discount-window",
            "--no-memory-reuse",
            f"--out={tmp_path / 'b.json'}",
        ],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert p.returncode == 0, p.stderr[-2000:]
    out = json.loads((tmp_path / "b.json").read_text())
    assert set(out) == {"machine", "engine"} and out["machine"]["cores"] >= 1 and "default_frames_per_s" in p.stdout
    eng = out["engine"]
    assert (eng["memory_min_score"], eng["memory_top_k"]) == (-1.0, 2) and eng["memory_on_hit_share"] > 0
    assert (eng["memory_keep"], eng["memory_discount_window"], eng["memory_reuse"]) == ("newest", True, False)
    assert eng["memory_on_reuse_share"] == 0 and eng["default_reuse_share"] == 0  # --no-memory-reuse
    assert eng["memory_still_reuse_share"] == 0 and eng["memory_still_frames_per_s_ratio"] > 0
    for flag, message in (
        ("--memory-min-score=nan", "memory min_score must be a finite number, got nan"),
        ("--memory-keep=last", "memory keep must be one of first, newest, got 'last'"),
    ):
        bad = subprocess.run(
            [sys.executable, "-m", "worldsim.cli.bench", "engine", f"--checkpoint={tiny}", flag],
            cwd=ROOT,
            capture_output=True,
            text=True,
            timeout=120,
        )
        assert bad.returncode != 0 and bad.stderr.strip() == f"error: {message}"


def test_bench_cli_refuses_a_bad_top_k_by_its_flag(tiny, capsys):
    from worldsim.cli.bench import main

    with pytest.raises(SystemExit):
        main(["engine", f"--checkpoint={tiny}", "--memory-top-k=0"])
    assert "--memory-top-k must be at least 1, got 0" in capsys.readouterr().err


@pytest.mark.parametrize(
    "keys_value, mouse_value, message",
    [
        (0, np.nan, r"a.npz: 'mouse' must be finite pixels \(8, 2\); got nan at \[2, 0\]"),
        (0.5, 0.0, r"a.npz: 'keys' must be 0/1 integers \(T, 7\); got 0.5 at \[2, 0\]"),
        (-1, 0.0, r"a.npz: 'keys' must be 0/1 integers \(T, 7\); got -1.0 at \[2, 0\]"),
    ],
)
def test_rollout_refuses_a_bad_actions_file_and_writes_nothing(tiny, tmp_path, keys_value, mouse_value, message):
    keys, mouse = np.zeros((8, 7)), np.zeros((8, 2), np.float32)
    keys[2, 0], mouse[2, 0] = keys_value, mouse_value
    np.savez(tmp_path / "a.npz", keys=keys, mouse=mouse)
    cfg = RolloutConfig(checkpoint=str(tiny), actions_file=str(tmp_path / "a.npz"), frames=8, out=str(tmp_path / "r"))
    with pytest.raises(WorldsimError, match=message):
        run_rollout(cfg)
    assert not (tmp_path / "r").exists()


def test_rollout_cli_with_zero_frames_is_one_line(tiny, tmp_path):
    p = subprocess.run(
        [sys.executable, "-m", "worldsim.cli.rollout", f"checkpoint={tiny}", "frames=0", f"out={tmp_path / 'r'}"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert p.returncode == 2 and "Traceback" not in p.stderr, p.stderr
    assert p.stderr.strip() == "error: frames must be at least 1 (generated frames, rounded up to whole chunks); got 0"


def test_an_interrupted_rollout_keeps_the_chunks_it_finished(tiny, tmp_path):
    from worldsim.cli.rollout import RolloutInterrupted

    eng = load_engine(tiny)
    real, calls = eng.step, []

    def step(keys, mouse):
        calls.append(1)
        if len(calls) == 3:
            raise KeyboardInterrupt  # Ctrl-C during the third of four chunks
        return real(keys, mouse)

    eng.step = step
    cfg = RolloutConfig(checkpoint=str(tiny), frames=8, policy="look_around", out=str(tmp_path / "r"))
    with pytest.raises(RolloutInterrupted, match=r"interrupted: 2 of 4 chunks kept in"):
        run_rollout(cfg, eng)
    ds = RolloutDataset(tmp_path / "r")
    ds.verify()
    ep = ds.load(0)
    assert len(ep["frames"]) == 4 + 2 * 2 and len(ep["keys"]) == len(ep["frames"])
    assert (tmp_path / "r" / "rollout.mp4").stat().st_size > 0


def test_headless_play_refuses_record_in_one_line(tiny, tmp_path):
    cmd = [sys.executable, "play.py", f"checkpoint={tiny}", "headless=true", f"record={tmp_path / 'rec'}"]
    p = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert p.returncode == 2 and "Traceback" not in p.stderr, p.stderr
    assert p.stderr.strip().startswith(f"error: record={tmp_path / 'rec'} records a window's session; headless")
    assert not (tmp_path / "rec").exists()


def test_soak_reports_each_window_mean_and_the_last_over_first_ratio(tiny, monkeypatch):
    import worldsim.bench.soak as soak

    eng = load_engine(tiny)
    k = eng.chunk_frames
    per_chunk = iter([0.01, 0.03, 0.05, 0.07, 0.02, 0.04])  # seconds of model work, chunk by chunk
    real_step = eng.step

    def step(keys, mouse):
        out = real_step(keys, mouse)
        return dataclasses.replace(out, timings=ChunkTimings(denoise_s=next(per_chunk), decode_s=0.0))

    monkeypatch.setattr(eng, "step", step)
    monkeypatch.setattr(soak, "load_engine", lambda *a, **kw: eng)
    res = soak.bench_soak(str(tiny), frames=6 * k, window=2 * k)
    assert [w["frames"] for w in res["windows"]] == [2 * k, 4 * k, 6 * k]
    assert [w["chunk_ms"] for w in res["windows"]] == pytest.approx([20.0, 60.0, 30.0])
    assert res["cost_ratio_last_over_first"] == pytest.approx(1.5) and all(w["rss_MB"] > 0 for w in res["windows"])
    with pytest.raises(WorldsimError, match="--window must be a positive multiple of the chunk length"):
        soak.bench_soak(str(tiny), frames=6 * k, window=k + 1)


def test_bench_soak_cli_prints_every_window(tiny, tmp_path):
    p = subprocess.run(
        [sys.executable, "-m", "worldsim.cli.bench", "soak", f"--checkpoint={tiny}", "--frames=32", "--window=8"]
        + [f"--out={tmp_path / 'soak.json'}"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert p.returncode == 0, p.stderr
    res = json.loads((tmp_path / "soak.json").read_text())["soak"]
    assert len(res["windows"]) == 4 and "chunk time last/first window" in p.stdout
    assert all(f"{w['frames']:>8.0f}" in p.stdout for w in res["windows"])


def test_paired_bench_steps_the_engines_in_turn_and_keeps_their_times_apart(tiny, monkeypatch):
    """Memory off and on are timed one chunk each in turn (the order reversed every chunk), so a
    machine that slows during the run slows both; each engine's rows are its own chunks."""
    order = []
    engines = [load_engine(tiny), load_engine(tiny)]
    for i, eng in enumerate(engines):
        real_step = eng.step

        def step(keys, mouse, i=i, real_step=real_step):
            order.append(i)
            out = real_step(keys, mouse)
            return dataclasses.replace(out, timings=ChunkTimings(denoise_s=0.01 * (i + 1), decode_s=0.01))

        monkeypatch.setattr(eng, "step", step)
    off, on = _paired_chunk_times(engines, chunks=3, warmup=1)
    assert order == [0, 1, 1, 0, 0, 1, 1, 0]
    assert len(off["denoise"]) == len(on["denoise"]) == 3
    assert np.all(off["denoise"] == 0.01) and np.all(on["denoise"] == 0.02)
    assert _stage_rows(on, 2)["model_ms"] == pytest.approx(20.0)


def test_a_baseline_of_another_chunk_size_is_compared_per_frame(tiny, tmp_path, monkeypatch):
    """--baseline: a checkpoint of 4-frame chunks steps its own chunks beside the 2-frame one (and
    the 2-frame one with int8 weights), one chunk each in turn; the speedup is per frame, whatever
    the chunk sizes: 25 against 15 ms per frame reads 5/3 (a chunk rate would read 10/3)."""
    wide = make_tiny_checkpoint(tmp_path / "wide", chunk_frames=4)
    frames = {2: 0, 4: 0}
    real_step = Engine.step

    int8_steps = []

    def step(self, keys, mouse):
        frames[self.chunk_frames] += len(keys)
        out = real_step(self, keys, mouse)
        int8 = isinstance(self.model.blocks[0].mlp[0], torch.ao.nn.quantized.dynamic.Linear)
        int8_steps.append((int8, self.sampler_cfg.num_steps))
        per_frame = 0.005 if int8 else 0.01 * self.chunk_frames / 2  # the baseline: 0.02 s per frame
        timings = ChunkTimings(denoise_s=per_frame * len(keys), decode_s=0.005 * len(keys))
        return dataclasses.replace(out, timings=timings)

    monkeypatch.setattr(Engine, "step", step)
    res = bench_baseline(str(tiny), str(wide), chunks=3, step_counts=(1, 2))
    assert res["baseline_checkpoint"] == str(wide) and res["baseline_chunk_frames"] == 4
    # 3 timed + 2 warm-up chunks per pairing, each its own size; the fp32 and the int8 student
    assert frames == {2: 2 * 2 * 5 * 2, 4: 2 * 5 * 4}
    # one int8 chunk in each turn of each pairing, at that pairing's step count
    assert sorted(n for q, n in int8_steps if q) == [1] * 5 + [2] * 5
    for n in (1, 2):
        assert res[f"baseline_{n}step_frames_per_s"] == pytest.approx(1 / 0.015)
        assert res[f"baseline_{n}step_paired_baseline_frames_per_s"] == pytest.approx(1 / 0.025)
        assert res[f"baseline_{n}step_speedup"] == pytest.approx(0.025 / 0.015)
        assert res[f"baseline_{n}step_model_ms"] == pytest.approx(20.0)
        assert res[f"baseline_{n}step_paired_baseline_decode_ms"] == pytest.approx(20.0)
        assert res[f"baseline_{n}step_int8_model_ms"] == pytest.approx(10.0)
        assert res[f"baseline_{n}step_int8_decode_ms"] == pytest.approx(10.0)
        assert res[f"baseline_{n}step_int8_speedup"] == pytest.approx(0.025 / 0.01)
    with pytest.raises(WorldsimError, match="does not exist"):  # before any timing
        bench_engine(str(tiny), chunks=1, baseline=str(tmp_path / "missing"))
    assert frames == {2: 40, 4: 40}


def test_bench_pairs_the_last_step_cache_write_with_the_clean_pass_where_the_sampler_allows(tiny, tmp_path):
    """``last_step_*`` rows: a student whose last pass is its context, and the same sampler's
    clean pass, stepped in turn; the step-count rows keep its last step at context_sigma (1 step:
    the clean pass). A sampler without context noise gets one ``n/a`` row naming why."""
    ck = make_tiny_checkpoint(tmp_path / "last", camera_reference="chunk", sampler=LAST_STEP)
    res = bench_engine(str(ck), chunks=2, step_counts=(1, 2, 3), session_frames=0, play_seconds=0)
    assert res["last_step_shift"] == pytest.approx(2 / 3)
    assert res["last_step_speedup"] == res["last_step_frames_per_s"] / res["last_step_paired_clean_pass_frames_per_s"]
    for n in (1, 2, 3):  # each step count ran (1 step with the clean pass: SamplerConfig.at_steps)
        assert res[f"cached_{n}step_frames_per_s"] > 0
    assert "needs context noise" in bench_cache_write(str(tiny), chunks=1)["last_step"]


def test_the_play_rows_take_the_bank_on_request_script_input_for_the_sources_rate_and_run_beside_a_busy_core(
    tmp_path, monkeypatch
):
    """``--play-memory`` puts the bank in the play loop's generation process (hits counted); the
    scripted input of the play rows is the explore policy for the source's own controller, so a
    30 frames/s model is played the same motion per second as a 15 frames/s one; ``busy`` plays
    the run again beside one busy process, which is gone afterwards."""
    from types import SimpleNamespace

    from worldsim.bench.engine import _CountingDisplay, bench_play
    from worldsim.core.controller import CameraControllerConfig
    from worldsim.data.policies import make_policy
    from worldsim.memory.bank import MemoryConfig

    c30 = CameraControllerConfig(fps=30.0)
    ck = make_tiny_checkpoint(tmp_path / "t30", controller=c30)
    off, on = bench_play(str(ck), 1.5, 1), bench_play(str(ck), 1.5, 1, MemoryConfig())
    assert (off["play_memory"], on["play_memory"]) == (False, True)
    assert not any(k.startswith("busy") for k in off)
    spinners = []
    real_popen = subprocess.Popen
    monkeypatch.setattr(subprocess, "Popen", lambda *a, **k: spinners.append(real_popen(*a, **k)) or spinners[-1])
    busy = bench_play(str(ck), 1.5, 1, busy=True)
    assert len(spinners) == 1 and spinners[0].poll() is not None  # the busy process ran and is gone
    assert busy["busy_play_ratio"] == busy["busy_play_displayed_frames_per_s"] / busy["play_displayed_frames_per_s"]
    assert busy["busy_play_displayed_frames_per_s"] > 0 and busy["busy_play_latency_p95_ms"] > 0
    shown = off["play_displayed_frames_per_s"] * 1.5  # the frames of the 1.5 s run, over its time from the first
    assert off["play_playing_frames_per_s"] == pytest.approx(shown / (1.5 - off["play_first_frame_s"]), rel=1e-12)
    assert busy["busy_play_playing_frames_per_s"] > busy["busy_play_displayed_frames_per_s"]
    assert off["play_memory_hit_chunks"] == 0 < on["play_memory_hit_chunks"]
    keys = ["w", "a", "s", "d", "space", "left shift", "l"]
    display = _CountingDisplay(SimpleNamespace(fps=30.0, key_names=keys, controller=c30), 2.0)
    want = make_policy("explore", keys, c30).actions(61, np.random.default_rng(0))
    assert display.ticks == 60
    np.testing.assert_array_equal(display.acts.mouse, want.mouse)
    np.testing.assert_array_equal(display.acts.keys, want.keys)


def test_the_busy_rows_time_the_auto_engine_only_after_it_played_settle_seconds_beside_the_load(monkeypatch):
    """``bench_busy``: the thread governor needs ``patience`` intervals of ``min_interval_s`` to
    adapt, longer than a few chunks of a fast model, so the engine plays ``SETTLE_S`` seconds
    beside the busy process before its busy rate is timed (a clock that chunks advance)."""
    from contextlib import contextmanager
    from types import SimpleNamespace

    import worldsim.bench.engine as be

    clock = [0.0]
    log = []

    def chunk_times(engine, chunks, warmup=2, seed=0):
        clock[0] += 0.03 * (chunks + warmup)  # 30 ms chunks
        log.append(("chunks", clock[0]))
        return {}

    @contextmanager
    def spinning():
        log.append(("spin", clock[0]))
        yield
        log.append(("stop", clock[0]))

    monkeypatch.setattr(be.time, "perf_counter", lambda: clock[0])
    monkeypatch.setattr(be, "_chunk_times", chunk_times)
    monkeypatch.setattr(be, "_frames_per_s", lambda engine, chunks, warmup: log.append(("timed", clock[0])) or 1.0)
    monkeypatch.setattr(be, "_spinning_core", spinning)
    monkeypatch.setattr(be, "load_engine", lambda *a, **k: SimpleNamespace(governor=SimpleNamespace(current=1)))
    be.bench_busy("unused", chunks=20)
    spin = next(t for e, t in log if e == "spin")
    timed = [t for e, t in log if e == "timed"]
    assert len(timed) == 3 and log[0][0] == "timed"  # alone, before the load
    assert timed[1] - spin >= be.SETTLE_S  # auto, once it has played SETTLE_S beside the load
