"""The student stages on tiny configs: ODE pairs are the teacher's Euler path for the same noise,
shards resume, the student's ODE regression resumes bit for bit with the schedule fixed by the
run, its export plays, and bad input fails before slow work with one line."""

import copy
import dataclasses
import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

from envs.recipe import load_recipe
from envs.starts import world_start
from worldsim.core.actions import make_action_encoder
from worldsim.core.controller import CameraState
from worldsim.core.errors import WorldsimError
from worldsim.core.optim import lr_at
from worldsim.diffusion.sampler import SamplerConfig
from worldsim.diffusion.schedule import shift_sigma, sigma_schedule
from worldsim.inference.checkpoint import load_checkpoint, save_checkpoint
from worldsim.inference.context import CameraRays
from worldsim.inference.engine import load_engine
from worldsim.inference.kv_cache import KVCache
from worldsim.inference.rollout import ChunkRollout
from worldsim.model.attention import chunk_mask
from worldsim.model.codec import Codec, CodecConfig
from worldsim.model.dit import WorldModelConfig
from worldsim.train import student_dmd_stage as stage
from worldsim.train.config import DistillConfig, OptimConfig, TeacherConfig, TrainConfig
from worldsim.train.objectives import ScoreMemory, chunk_ids_of_tokens, ode_regression_loss, rollout_scores
from worldsim.train.ode_pairs import OdePairs, grid_indices, make_ode_pairs, student_levels
from worldsim.train.student_dmd_stage import DMDNetworks, RolloutPlan, SelfForcingDMD, train_student_dmd
from worldsim.train.student_ode_stage import train_student_ode
from worldsim.train.teacher_data import ClipSampler, EncodedSplit, follows_press
from worldsim.train.teacher_stage import train_teacher

ROOT = Path(__file__).resolve().parent.parent
TINY = WorldModelConfig(latent_channels=4, latent_size=(16, 16), patch=4, width=32, depth=2, heads=2, chunk_frames=2)


def _teacher(data, out, codec, seed=0, reference="chunk"):
    """A tiny exported teacher through the teacher stage, then given random weights (a 2-step
    teacher's zero-initialised output layers would make its ODE nearly a straight line)."""
    train_teacher(
        TrainConfig(
            stage="teacher",
            data=str(data),
            val_data=None,
            out=str(out),
            steps=1,
            batch_size=2,
            bf16=False,
            model=TINY,
            teacher=TeacherConfig(
                codec_path=str(codec), encoder="keyboard_press_mouse", camera_reference=reference, preview_every=1000
            ),
        )
    )
    ck, model, codec_m = load_checkpoint(out / "model")
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in model.parameters():
            p.copy_(torch.randn(p.shape, generator=g) * 0.1)
    save_checkpoint(out / "model", ck, model, codec_m)
    return out / "model"


@pytest.fixture(scope="module")
def teacher(small_dataset, tmp_path_factory):
    from worldsim.inference.checkpoint import save_codec

    root = tmp_path_factory.mktemp("distill")
    torch.manual_seed(0)
    save_codec(root / "codec", Codec(CodecConfig(latent_channels=4, downsample=4, base_channels=16)), {"test": True})
    return _teacher(small_dataset.root, root / "teacher", root / "codec")


def _pairs_cfg(data, teacher, out, resume=False, **distill):
    dc = {"teacher": str(teacher), "ode_steps": 8, "grid_steps": 4, "num_pairs": 6, "num_val_pairs": 2}
    dc.update(pairs_per_shard=4, **distill)
    return TrainConfig(
        stage="ode_pairs",
        data=str(data),
        val_data=str(data),
        out=str(out),
        resume=resume,
        teacher=TeacherConfig(memory_prob=0.5),
        distill=DistillConfig(**dc),
    )


@pytest.fixture(scope="module")
def pairs(small_dataset, teacher, tmp_path_factory):
    out = tmp_path_factory.mktemp("pairs") / "pairs"
    make_ode_pairs(_pairs_cfg(small_dataset.root, teacher, out))
    return out


def _student_cfg(data, teacher, pairs, out, steps, resume=False, schedule_steps=0, **distill):
    return TrainConfig(
        stage="student_ode",
        data=str(data),
        val_data=str(data),
        out=str(out),
        steps=steps,
        schedule_steps=schedule_steps,
        batch_size=3,
        bf16=False,
        log_every=1,
        val_every=2,
        val_batches=1,
        resume=resume,
        distill=DistillConfig(teacher=str(teacher), pairs=str(pairs), preview_every=4, **distill),
        optim=OptimConfig(lr=1e-3, warmup_steps=2, ema_decay=0.9),
    )


def test_ode_pairs_are_the_teachers_euler_path_for_the_same_noise(pairs, teacher):
    """Integrate each stored pair again from its stored noise with the full block-causal forward
    (not the rollout's cache): the states at the grid levels and the end point must match."""
    ck, model, _ = load_checkpoint(teacher)
    meta = json.loads((pairs / "pairs.json").read_text())
    sig = sigma_schedule(8, ck.sampler.shift).tolist()
    assert meta["grid_sigmas"] == [sig[i] for i in (0, 2, 4, 6)]
    rays = CameraRays(ck.conditioning, ck.conditioning.intrinsics_matrix(), ck.frame_size, (16, 16))
    for split, count in (("train", 6), ("val", 2)):
        p = OdePairs.open(pairs, split).tensors
        assert len(p["end"]) == count and p["states"].shape[1] == 4
        ctx, n, k = p["context"], p["context"].shape[1], 2
        plucker = rays.relative_to(p["c2w"], p["ray_ref"], torch.float32)
        ids = chunk_ids_of_tokens(n + k, k, TINY.tokens_per_frame, torch.device("cpu"))
        x, states = p["states"][:, 0], [p["states"][:, 0]]
        with torch.no_grad():
            for i in range(8):
                levels = torch.cat([torch.zeros(len(x), n), torch.full((len(x), k), sig[i])], 1)
                v = model(
                    torch.cat([ctx, x], 1), levels, p["actions"], plucker, torch.arange(n + k), chunk_mask(ids, ids)
                )
                x = x + (sig[i + 1] - sig[i]) * v[:, n:]
                states.append(x)
        for j, i in enumerate((0, 2, 4, 6)):
            torch.testing.assert_close(p["states"][:, j], states[i], atol=1e-4, rtol=1e-4)
        torch.testing.assert_close(p["end"], states[-1], atol=1e-4, rtol=1e-4)
        assert (p["end"] - p["states"][:, 0]).abs().mean() > 0.1  # the path goes somewhere
    assert OdePairs.open(pairs, "train").tensors["memory"].sum() > 0  # retrieved views are among the clips


def test_a_student_equal_to_its_teacher_regresses_a_one_step_path_exactly(small_dataset, teacher, tmp_path):
    """With as many ODE steps as grid levels, the teacher's last Euler step from level sigma to 0
    is ``x - sigma v``: the student's clean estimate. A student that is its teacher has zero
    ODE-regression loss there, through the full block-causal forward the stage trains with."""
    make_ode_pairs(_pairs_cfg(small_dataset.root, teacher, tmp_path / "p", ode_steps=4, num_val_pairs=0))
    p = OdePairs.open(tmp_path / "p", "train")
    ck, model, _ = load_checkpoint(teacher)
    rays = CameraRays(ck.conditioning, ck.conditioning.intrinsics_matrix(), ck.frame_size, (16, 16))
    t = p.tensors
    plucker = rays.relative_to(t["c2w"], t["ray_ref"], torch.float32)
    sigma = torch.full((len(p),), p.grid_sigmas[-1])
    with torch.no_grad():
        loss = ode_regression_loss(model, t["context"], t["states"][:, -1], sigma, t["end"], t["actions"], plucker)
        other = ode_regression_loss(model, t["context"], t["states"][:, -2], sigma, t["end"], t["actions"], plucker)
    assert loss < 1e-12 and other > 1e-4


def test_ode_pairs_resume_makes_the_missing_shards_and_refuses_other_settings(small_dataset, teacher, pairs, tmp_path):
    out = tmp_path / "p"
    cfg = _pairs_cfg(small_dataset.root, teacher, out)
    make_ode_pairs(cfg)
    (out / "train" / "shard_000001.safetensors").unlink()
    with pytest.raises(WorldsimError, match="1 of 2 train shards are missing"):
        OdePairs.open(out, "train")
    with pytest.raises(WorldsimError, match="already holds ODE pairs; pass resume=true"):
        make_ode_pairs(cfg)
    with pytest.raises(WorldsimError, match=r"other settings \(\['distill'\]\)"):
        make_ode_pairs(_pairs_cfg(small_dataset.root, teacher, out, resume=True, ode_steps=12))
    summary = make_ode_pairs(_pairs_cfg(small_dataset.root, teacher, out, resume=True))
    assert summary["shards_made"] == 1
    for split in ("train", "val"):
        for f in sorted((pairs / split).iterdir()):
            a, b = load_file(str(f)), load_file(str(out / split / f.name))
            assert all(torch.equal(a[n], b[n]) for n in a), f.name


def test_ode_pairs_refuse_bad_settings_before_slow_work(small_dataset, teacher, tmp_path):
    data = small_dataset.root
    with pytest.raises(WorldsimError, match=r"ode_steps \(10\) must be a multiple of distill.grid_steps \(4\)"):
        make_ode_pairs(_pairs_cfg(data, teacher, tmp_path / "a", ode_steps=10))
    latest = _teacher(data, tmp_path / "latest", teacher.parent.parent / "codec", reference="latest")
    with pytest.raises(WorldsimError, match="camera_reference 'latest'.*cacheable"):
        make_ode_pairs(_pairs_cfg(data, latest, tmp_path / "b"))
    with pytest.raises(WorldsimError, match="does not exist"):
        make_ode_pairs(_pairs_cfg(data, tmp_path / "no_teacher", tmp_path / "c"))
    assert not (tmp_path / "a").exists() and not (tmp_path / "b").exists() and not (tmp_path / "c").exists()
    assert grid_indices(48, 4) == [0, 12, 24, 36] and grid_indices(48, 1) == [0]


def test_the_student_trains_at_exactly_the_levels_its_sampler_starts_from():
    grid = SamplerConfig(num_steps=48, shift=5.0).sigmas()
    grid = [grid[i] for i in grid_indices(48, 4)]
    for steps, want in ((1, [0]), (2, [0, 2]), (4, [0, 1, 2, 3])):
        assert student_levels(grid, steps, 5.0) == want
        assert [grid[i] for i in want] == pytest.approx(SamplerConfig(num_steps=steps, shift=5.0).sigmas()[:-1])
    with pytest.raises(WorldsimError, match="does not hold the student's levels"):
        student_levels(grid, 2, 3.0)


def test_student_ode_resumes_bit_exactly_with_the_schedule_fixed_by_the_run(small_dataset, teacher, pairs, tmp_path):
    """The first leg ends after warm-up (2 steps) and says how long the schedule is; the resumed
    command does not repeat it and still trains exactly as one uninterrupted run."""
    data = small_dataset.root
    train_student_ode(_student_cfg(data, teacher, pairs, tmp_path / "a", 5, schedule_steps=6))
    train_student_ode(_student_cfg(data, teacher, pairs, tmp_path / "b", 3, schedule_steps=6))
    summary = train_student_ode(_student_cfg(data, teacher, pairs, tmp_path / "b", 5, resume=True))
    for name in ("weights", "ema", "optim"):
        a = load_file(str(tmp_path / "a" / "last" / f"{name}.safetensors"))
        b = load_file(str(tmp_path / "b" / "last" / f"{name}.safetensors"))
        assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a), name
    assert {"val_loss", "rollout_psnr_db", "copy_last_psnr_db"} <= set(summary)
    logs = [(tmp_path / r / "log.csv").read_text().splitlines() for r in ("a", "b")]
    assert [row.split(",")[2] for row in logs[0]] == [row.split(",")[2] for row in logs[1]]  # the same lr, step by step
    optim = _student_cfg(data, teacher, pairs, tmp_path, 1).optim
    assert logs[1][-1].split(",")[2] == f"{lr_at(4, 6, optim):.3g}"  # step 5 on the 6-step schedule
    with pytest.raises(WorldsimError, match="learning-rate schedule is 6 steps long, schedule_steps=8 was given"):
        train_student_ode(_student_cfg(data, teacher, pairs, tmp_path / "b", 8, resume=True, schedule_steps=8))
    ck, _, _ = load_checkpoint(tmp_path / "b" / "model")
    assert ck.sampler == SamplerConfig(num_steps=2, shift=5.0, mode="few_step")
    assert ck.provenance["stage"] == "student_ode" and ck.provenance["step"] == 5
    engine = load_engine(tmp_path / "b" / "model")
    assert engine.rollout.policy == "cached"
    start = world_start(0, engine.context_frames, engine.key_names, engine.frame_size)
    engine.reset(*start.arrays())
    chunk = engine.step(np.zeros((2, len(engine.key_names)), np.uint8), np.zeros((2, 2), np.float32))
    assert chunk.frames.shape == (2, *engine.frame_size, 3)


def test_student_ode_refuses_a_mismatch_with_its_teacher_before_slow_work(small_dataset, teacher, pairs, tmp_path):
    data = small_dataset.root
    other = _teacher(data, tmp_path / "other", teacher.parent.parent / "codec", seed=1)
    with pytest.raises(WorldsimError, match=r"the pairs in .* were made by teacher .*, distill.teacher .* is another"):
        train_student_ode(_student_cfg(data, other, pairs, tmp_path / "a", 2))
    with pytest.raises(WorldsimError, match=r"student_steps \(3\) must divide the pairs' grid_steps \(4\)"):
        train_student_ode(_student_cfg(data, teacher, pairs, tmp_path / "a", 2, student_steps=3))
    with pytest.raises(WorldsimError, match="holds no ODE pairs"):
        train_student_ode(_student_cfg(data, teacher, tmp_path / "nothing", tmp_path / "a", 2))
    ck, model, codec = load_checkpoint(teacher)
    wide = dataclasses.replace(ck, model=dataclasses.replace(ck.model, width=64))
    from worldsim.model.dit import WorldModel

    save_checkpoint(tmp_path / "wide", wide, WorldModel(wide.model), codec)
    cfg = _student_cfg(data, teacher, pairs, tmp_path / "a", 2)
    cfg.init_from = str(tmp_path / "wide")
    with pytest.raises(WorldsimError, match="does not match its teacher .*: model.width is 64, the teacher's 32"):
        train_student_ode(cfg)
    assert not (tmp_path / "a").exists()


def _dmd_cfg(data, teacher, init, out, steps, resume=False, schedule_steps=0, **distill):
    dc = {"teacher": str(teacher), "rollout_chunks": 3, "generator_every": 2, "preview_every": 4, **distill}
    return TrainConfig(
        stage="student_dmd",
        data=str(data),
        val_data=str(data),
        out=str(out),
        init_from=str(init),
        steps=steps,
        schedule_steps=schedule_steps,
        batch_size=2,
        bf16=False,
        log_every=1,
        resume=resume,
        distill=DistillConfig(**dc),
        optim=OptimConfig(lr=1e-3, warmup_steps=2, ema_decay=0.9),
    )


def _dmd(teacher, fake_seed=None, rollout_chunks=3, context_sigma=0.0, student_shift=None):
    """The stage's iteration object on the tiny teacher; the fake score is the teacher itself,
    or, with ``fake_seed``, other random weights. Its idle input is a row of 0.5 (visible in a test)."""
    ck, model, _ = load_checkpoint(teacher)
    _, student, _ = load_checkpoint(teacher)
    fake = copy.deepcopy(model)
    if fake_seed is not None:
        g = torch.Generator().manual_seed(fake_seed)
        with torch.no_grad():
            for p in fake.parameters():
                p.add_(torch.randn(p.shape, generator=g) * 0.05)
    dc = DistillConfig(teacher=str(teacher), rollout_chunks=rollout_chunks)
    shift = ck.sampler.shift if student_shift is None else student_shift
    sampler = SamplerConfig(num_steps=2, shift=shift, mode="few_step", context_sigma=context_sigma)
    enc = make_action_encoder(ck.action_encoder["name"], ck.action_encoder["key_names"])
    null = torch.from_numpy(enc.null_action())
    nets = DMDNetworks(student, fake)
    idle = torch.full_like(null, 0.5)
    intr = ck.conditioning.intrinsics_matrix()
    return SelfForcingDMD(nets, model.requires_grad_(False), ck, sampler, dc, intr, null, idle, enc)


def _clips(dmd, data, teacher, extra_chunks=0):
    ck = dmd.ck
    enc = make_action_encoder(ck.action_encoder["name"], ck.action_encoder["key_names"])
    _, _, codec = load_checkpoint(teacher)
    split = EncodedSplit.encode(str(data), codec, enc, "encode")
    tcfg = TeacherConfig(
        context_chunks=ck.conditioning.context_chunks + dmd.dc.rollout_chunks + extra_chunks - 1,
        camera_reference="chunk",
        memory_prob=0.0,
        action_drop=0.0,
        camera_drop=0.0,
    )
    null = torch.from_numpy(enc.null_action())
    return ClipSampler(split, 2, tcfg, ck.conditioning, (16, 16), null).batch(0, 0, 2)


def test_a_student_rollout_with_gradients_equals_the_inference_rollout_frame_for_frame(small_dataset, teacher):
    """Past the window (5 chunks after a 2-chunk context), exit at the last step: the training
    rollout (gradients on) gives the engine's frames, and its gradient reaches the student."""
    dmd = _dmd(teacher, rollout_chunks=5)
    batch = _clips(dmd, small_dataset.root, teacher)
    with torch.inference_mode():
        want, _ = dmd.rollout(batch, [1] * 5, torch.Generator().manual_seed(3))
    got, gen = dmd.rollout(batch, [1] * 5, torch.Generator().manual_seed(3))
    assert got.requires_grad and not gen.cache.k.requires_grad and not gen.history.latents.requires_grad
    torch.testing.assert_close(got, want, atol=1e-6, rtol=0)
    got.square().mean().backward()
    grads = [p.grad for p in dmd.nets.generator.parameters()]
    assert all(g is not None for g in grads) and sum(g.abs().sum() for g in grads) > 0
    early, _ = dmd.rollout(batch, [0] * 5, torch.Generator().manual_seed(3))
    assert (early - got).abs().max() > 1e-3  # an early exit returns that step's estimate


def test_a_long_rollout_runs_its_free_chunks_without_gradient_as_the_engine_would(small_dataset, teacher):
    """Self-Forcing++'s long rollout: 2 free chunks of the clip's inputs, then the window (exit
    at the last step) are the inference rollout's 5 chunks frame for frame; only the window
    carries gradient; a still player holds the last context pose and the idle input."""
    dmd = _dmd(teacher, rollout_chunks=3, context_sigma=0.3)
    batch = _clips(dmd, small_dataset.root, teacher, extra_chunks=2)
    plan = RolloutPlan([1, 1, 1], free=2)
    with torch.inference_mode():
        want, _ = dmd.rollout(batch, [1] * 5, torch.Generator().manual_seed(3))
    got, _ = dmd.rollout(batch, plan, torch.Generator().manual_seed(3))
    assert got.shape == (2, 10, 4, 16, 16) and got.requires_grad
    torch.testing.assert_close(got, want, atol=1e-6, rtol=0)
    got[:, 4:].square().mean().backward(retain_graph=True)
    assert sum(p.grad.abs().sum() for p in dmd.nets.generator.parameters()) > 0
    dmd.nets.generator.zero_grad(set_to_none=True)
    got[:, :4].square().mean().backward()  # the free chunks' graph is empty
    assert all(p.grad is None or not p.grad.any() for p in dmd.nets.generator.parameters())
    # A still player: the context's own inputs, then 4 chunks of the idle input at the last context pose.
    actions, c2w, ray_ref = dmd.inputs(batch, RolloutPlan([1, 1], free=2, still=True))
    assert actions.shape[1] == c2w.shape[1] == ray_ref.shape[1] == 12
    torch.testing.assert_close(actions[:, :4], batch.actions[:, :4], atol=0, rtol=0)
    assert (actions[:, 4:] == 0.5).all()
    held = batch.c2w[:, 3:4].expand(2, 8, 4, 4)
    torch.testing.assert_close(c2w[:, 4:], held, atol=0, rtol=0)
    torch.testing.assert_close(ray_ref[:, 4:], held, atol=0, rtol=0)
    torch.testing.assert_close(c2w[:, :4], batch.c2w[:, :4], atol=0, rtol=0)
    # Fewer free chunks start later in the clip: the window always ends with the clip's last
    # chunk (where a light-press focus clip has its press).
    short = RolloutPlan([1, 1, 1], free=0)
    actions, c2w, _ = dmd.inputs(batch, short)
    torch.testing.assert_close(actions, batch.actions[:, 4:], atol=0, rtol=0)
    torch.testing.assert_close(c2w, batch.c2w[:, 4:], atol=0, rtol=0)
    torch.testing.assert_close(dmd.context(batch, short), batch.x0[:, 4:8], atol=0, rtol=0)
    with pytest.raises(WorldsimError, match="a rollout of 22 frames needs longer clips than the batch's 14"):
        dmd.inputs(batch, RolloutPlan([1, 1, 1], free=6))
    plan = RolloutPlan([0, 1, 1], free=1, still=True)
    out = dmd(batch, True, plan, torch.Generator().manual_seed(0), torch.Generator().manual_seed(1))
    with torch.no_grad():
        full, _ = dmd.rollout(batch, plan, torch.Generator().manual_seed(1))
    assert out.generator_loss is not None  # the DMD step reads the window, not the free chunk before it
    torch.testing.assert_close(out.samples.detach(), full[:, 2:], atol=1e-6, rtol=0)


def test_a_turning_still_player_gets_the_poses_inputs_and_ray_references_the_engine_makes(
    small_dataset, teacher, monkeypatch
):
    """distill.still_turn_prob: a still plan with a turn gives its generated frames the poses,
    encoded inputs and per-chunk ray references the engine gives a player who turns in place
    with the same mouse from the last context pose (Engine.step, recorded where it hands them to
    the rollout): the first generated frame already turned, each chunk's rays relative to the
    frame before it, and the yaw rate in degrees per second of the data's controller."""
    dmd = _dmd(teacher, rollout_chunks=2)
    dmd.controller = dataclasses.replace(dmd.controller, fps=30.0)  # a data controller not the teacher's
    batch = _clips(dmd, small_dataset.root, teacher, extra_chunks=1)
    plan = RolloutPlan([1, 1], free=1, still=True, turn_deg_per_s=-60.0)
    actions, c2w, ray_ref = dmd.inputs(batch, plan)
    n0, k = 4, 2
    engine = load_engine(teacher, bf16=False)
    engine.controller.cfg = dmd.controller
    seen = []
    step = engine.rollout.step
    engine.rollout.step = lambda a, c, rng: seen.append((a, c)) or step(a, c, rng)
    names = engine.key_names
    engine.reset(
        np.zeros((n0, *engine.frame_size, 3), np.uint8),
        batch.c2w[0, :n0].double().numpy(),
        np.zeros((n0, len(names)), np.uint8),
        np.zeros((n0, 2), np.float32),
    )
    px = -60.0 / 30.0 / dmd.controller.mouse_deg_per_px  # 2 degrees a frame to the left
    for _ in range(3):
        engine.step(np.zeros((k, len(names)), np.uint8), np.full((k, 2), (px, 0.0), np.float32))
    want_actions = torch.cat([a[0] for a, _ in seen])
    want_c2w = torch.cat([c[0] for _, c in seen])
    torch.testing.assert_close(actions[0, n0:], want_actions.to(actions), atol=1e-6, rtol=0)
    torch.testing.assert_close(c2w[0, n0:], want_c2w.to(c2w), atol=1e-5, rtol=0)
    h = engine.rollout.history  # the engine's window: the last context_chunks chunks it keeps
    torch.testing.assert_close(ray_ref[0, -h.num_frames :], h.ray_ref[0].to(ray_ref), atol=1e-5, rtol=0)
    yaw = np.degrees([CameraState.from_c2w(p).yaw_rad for p in c2w[0, n0 - 1 :].double().numpy()])
    turned = (yaw[1:] - yaw[0] + 180.0) % 360.0 - 180.0
    np.testing.assert_allclose(turned, -2.0 * np.arange(1, 7), atol=1e-3)  # the first generated frame turned
    torch.testing.assert_close(c2w[:, n0:, :3, 3], batch.c2w[:, n0 - 1 : n0, :3, 3].expand(2, 6, 3), atol=1e-5, rtol=0)
    # Its window is judged by the scores alone: no still regression, no memory, no press.
    dmd.dc = dataclasses.replace(dmd.dc, idle_prob=1.0, idle_chunks=1, still_regression=1.0, still_turn_prob=1.0)
    assert dmd(batch, True, plan, torch.Generator(), torch.Generator()).still_mse is None
    dmd.dc = dataclasses.replace(dmd.dc, still_turn_prob=0.5, still_memory_prob=1.0, still_press_prob=1.0)
    plans = [dmd.plan(torch.Generator().manual_seed(s)) for s in range(200)]
    turns = [p for p in plans if p.turn_deg_per_s]
    rates = np.array([p.turn_deg_per_s for p in turns])
    assert 0.35 < len(turns) / len(plans) < 0.65 and (np.abs(rates) <= 90.0).all() and 0.3 < (rates > 0).mean() < 0.7
    assert not any(p.memory or p.press for p in turns)
    assert all(p.memory and p.press for p in plans if not p.turn_deg_per_s)
    # distill.still_turn_memory: a turning player reads memory as often as a still one, never
    # presses, and the plans draw the same turns; the window still has no still regression
    dmd.dc = dataclasses.replace(dmd.dc, still_turn_memory="held", still_memory_prob=0.5)
    with_memory = [dmd.plan(torch.Generator().manual_seed(s)) for s in range(200)]
    assert [p.turn_deg_per_s for p in with_memory] == [p.turn_deg_per_s for p in plans]
    reading = [p.memory for p in with_memory if p.turn_deg_per_s]
    assert 0.3 < np.mean(reading) < 0.7 and not any(p.press for p in with_memory if p.turn_deg_per_s)
    turning = next(p for p in with_memory if p.turn_deg_per_s and p.memory)
    out = dmd(batch, True, turning, torch.Generator(), torch.Generator())
    assert out.still_mse is None and turning.reads_memory(1, k) and not turning.reads_memory(0, k)
    assert dmd.memory(batch, turning) is not None and not turning.memory_own
    # "own": the same draws; a turn that reads memory reads its own first chunk from chunk w + 1
    # on, the rollout and the scores alike (the bank gives a turn its own earlier chunks)
    dmd.dc = dataclasses.replace(dmd.dc, still_turn_memory="own")
    own = [dmd.plan(torch.Generator().manual_seed(s)) for s in range(200)]
    assert [(p.turn_deg_per_s, p.memory) for p in own] == [(p.turn_deg_per_s, p.memory) for p in with_memory]
    w = dmd.cond.context_chunks
    assert all(p.memory_own and p.memory_from == w + 1 for p in own if p.turn_deg_per_s and p.memory)
    assert not any(p.memory_own or p.memory_from != 1 for p in own if not (p.turn_deg_per_s and p.memory))
    plan = RolloutPlan(
        [1, 1], free=w, still=True, memory=True, turn_deg_per_s=-60.0, memory_from=w + 1, memory_own=True
    )
    given, scored = [], []
    step, scores = ChunkRollout.step, stage.rollout_scores
    monkeypatch.setattr(
        ChunkRollout,
        "step",
        lambda self, *a, memory=None, **kw: given.append(memory) or step(self, *a, memory=memory, **kw),
    )
    monkeypatch.setattr(stage, "rollout_scores", lambda *a: scored.append(a[10]) or scores(*a))
    g = torch.Generator().manual_seed(0)
    gen, _ = dmd.rollout(batch, plan, g)
    assert [m is not None for m in given] == [False] * (w + 1) + [True]
    actions, c2w, _ = dmd.inputs(batch, plan)
    n0 = w * k
    latents, acts, poses = given[-1]
    assert (
        torch.equal(latents, gen[:, :k])
        and torch.equal(poses, c2w[:, n0 : n0 + k])
        and torch.equal(acts, actions[:, n0 : n0 + k])
    )
    given.clear()
    dmd(batch, True, plan, torch.Generator(), g)
    assert [m is not None for m in given] == [False] * (w + 1) + [True] and scored  # the real and fake scores
    first = given[-1][0]  # this iteration's own first chunk
    assert all(m is not None and torch.equal(m.latents, first) and m.readers == [w + 1] for m in scored)
    with pytest.raises(WorldsimError, match=r"^distill.still_turn_memory must be one of off, held, own, got 'yes'$"):
        train_student_dmd(_dmd_cfg(small_dataset.root, teacher, teacher, "unused", 1, still_turn_memory="yes"))


def test_the_plan_draws_nothing_more_for_a_run_without_long_rollouts(teacher):
    """Runs started before the long-rollout options resume bit for bit: their plan is the same
    exit steps from the same generator state and nothing else; with the options on, the drawn
    lengths cover their ranges."""
    dmd = _dmd(teacher, rollout_chunks=3)
    for seed in range(5):
        g, h = torch.Generator().manual_seed(seed), torch.Generator().manual_seed(seed)
        assert dmd.plan(g) == RolloutPlan(dmd.exit_steps(h)) and torch.equal(g.get_state(), h.get_state())
    dmd.dc = DistillConfig(rollout_chunks=3, free_chunks=2, idle_prob=0.5, idle_chunks=6)
    plans = [dmd.plan(torch.Generator().manual_seed(s)) for s in range(200)]
    assert {p.free for p in plans if not p.still} == {0, 1, 2}
    assert {p.free for p in plans if p.still} == set(range(7))
    assert 0.35 < np.mean([p.still for p in plans]) < 0.65
    for seed in range(20):  # still_memory_prob and still_press_prob 0: no draw beyond the exits, still and free
        g, h = torch.Generator().manual_seed(seed), torch.Generator().manual_seed(seed)
        plan = dmd.plan(g)
        dmd.exit_steps(h), torch.rand(1, generator=h), torch.randint(7 if plan.still else 3, (1,), generator=h)
        assert not plan.memory and plan.press is None and torch.equal(g.get_state(), h.get_state())
    assert (
        TrainConfig(stage="student_dmd")
        .identity()["distill"]
        .keys()
        .isdisjoint(
            {"free_chunks", "idle_prob", "idle_chunks", "context_sigma", "still_regression", "recorded_regression"}
            | {"cache_write", "student_shift", "focus_window", "still_memory_prob"}
            | {"still_press_prob", "still_press_key", "still_press_frames", "still_turn_prob", "still_turn_deg_per_s"}
            | {"revisit_prob", "revisit_regression", "revisit_free_chunks", "recorded_memory_prob"}
        )
    )


def test_the_dmd_generator_gradient_is_zero_when_the_fake_score_equals_the_real_one(small_dataset, teacher):
    for fake_seed, zero in ((None, True), (1, False)):
        dmd = _dmd(teacher, fake_seed)
        batch = _clips(dmd, small_dataset.root, teacher)
        g = torch.Generator().manual_seed(0)
        out = dmd(batch, True, dmd.exit_steps(g), g, torch.Generator().manual_seed(1))
        assert out.samples.shape == (2, 6, 4, 16, 16) and out.fake_loss.item() > 0
        out.generator_loss.backward()
        total = sum(p.grad.abs().sum() for p in dmd.nets.generator.parameters() if p.grad is not None)
        assert (total == 0) == zero, (fake_seed, total)
        assert all(p.grad is None for p in dmd.teacher.parameters())
    dmd = _dmd(teacher, 1)
    out = dmd(batch, False, [0, 1, 1], torch.Generator().manual_seed(0), torch.Generator().manual_seed(1))
    assert out.generator_loss is None and not out.samples.requires_grad


def _assert_same_generator_gradient(dmd, loss, expected):
    """``loss`` and ``expected`` (scalars of the same graph) give the student the same, nonzero
    gradient; the student's gradients are cleared after."""
    loss.backward(retain_graph=True)
    got = [p.grad.clone() for p in dmd.nets.generator.parameters()]
    dmd.nets.generator.zero_grad(set_to_none=True)
    expected.backward()
    for a, b in zip(got, (p.grad for p in dmd.nets.generator.parameters()), strict=True):
        torch.testing.assert_close(a, b, atol=1e-6, rtol=1e-5)
    assert any(a.abs().sum() > 0 for a in got)
    dmd.nets.generator.zero_grad(set_to_none=True)


def test_a_still_players_window_regresses_to_the_last_context_frame(small_dataset, teacher):
    """distill.still_regression: with the fake score equal to the real one (a zero DMD step), a
    still plan's generator gradient is exactly that of the weighted mean squared error of the
    window to the true context's last frame; recorded plans and fake-score-only iterations add
    nothing."""
    dmd = _dmd(teacher, rollout_chunks=2)
    batch = _clips(dmd, small_dataset.root, teacher, extra_chunks=1)
    dmd.dc = dataclasses.replace(dmd.dc, idle_prob=0.5, idle_chunks=1, still_regression=0.5)
    plan = RolloutPlan([0, 1], free=1, still=True)
    out = dmd(batch, True, plan, torch.Generator().manual_seed(0), torch.Generator().manual_seed(1))
    truth = batch.x0[:, 3:4].expand_as(out.samples)  # a still rollout starts at the clip's start: 2 chunks of 2 frames
    want = torch.nn.functional.mse_loss(out.samples, truth)
    torch.testing.assert_close(out.still_mse, want, atol=1e-6, rtol=0)
    _assert_same_generator_gradient(dmd, out.generator_loss, 0.5 * want)
    recorded = dmd(batch, True, RolloutPlan([0, 1], free=1), torch.Generator(), torch.Generator())
    fake_only = dmd(batch, False, plan, torch.Generator(), torch.Generator())
    assert recorded.still_mse is None and fake_only.still_mse is None and fake_only.generator_loss is None
    assert recorded.recorded_mse is None and out.recorded_mse is None  # recorded_regression is off


def test_a_recorded_rollouts_window_regresses_to_the_clips_recorded_frames(small_dataset, teacher):
    """distill.recorded_regression: with a zero DMD step, a recorded plan's generator gradient is
    exactly that of the weighted mean squared error of the window to the clip's last frames (the
    rollout ends where the clip ends, whatever its free chunks); still plans add nothing."""
    dmd = _dmd(teacher, rollout_chunks=2)
    batch = _clips(dmd, small_dataset.root, teacher, extra_chunks=1)  # 2 + 1 + 2 chunks of 2 frames
    dmd.dc = dataclasses.replace(dmd.dc, free_chunks=1, idle_prob=0.5, idle_chunks=1, recorded_regression=0.25)
    for free in (0, 1):
        plan = RolloutPlan([0, 1], free=free)
        out = dmd(batch, True, plan, torch.Generator().manual_seed(0), torch.Generator().manual_seed(1))
        actions, c2w, _ = dmd.inputs(batch, plan)  # the window followed the clip's last 4 frames' inputs
        assert torch.equal(actions[:, -4:], batch.actions[:, 6:10]) and torch.equal(c2w[:, -4:], batch.c2w[:, 6:10])
        want = torch.nn.functional.mse_loss(out.samples, batch.x0[:, 6:10])
        torch.testing.assert_close(out.recorded_mse, want, atol=1e-6, rtol=0)
        assert out.still_mse is None
        _assert_same_generator_gradient(dmd, out.generator_loss, 0.25 * want)
    still = dmd(batch, True, RolloutPlan([0, 1], free=1, still=True), torch.Generator(), torch.Generator())
    assert still.recorded_mse is None and still.still_mse is None


def test_a_revisit_rollout_reads_the_earlier_view_in_every_window_chunk_and_regresses_to_the_truth(
    small_dataset, teacher
):
    """distill.revisit_prob: a revisit plan's true context starts after the clip's first chunk
    (the earlier view the window returns to), every window chunk reads that chunk through the
    memory slot and the scores give it to the same chunks; its window regresses to the clip's last
    frames with revisit_regression on every iteration, DMD step or not (with the fake score equal
    to the real one the student's gradient is exactly the regression's), where recorded_regression
    does not apply; revisits are drawn among recorded rollouts only, without free chunks."""
    dmd = _dmd(teacher, rollout_chunks=2)
    batch = _clips(dmd, small_dataset.root, teacher, extra_chunks=1)  # the earlier view, 2 context and 2 window chunks
    dmd.dc = dataclasses.replace(dmd.dc, revisit_prob=1.0, revisit_regression=0.5, recorded_regression=0.25)
    plain, revisit = RolloutPlan([1, 1]), RolloutPlan([1, 1], revisit=True)
    assert torch.equal(dmd.context(batch, revisit), batch.x0[:, 2:6]) and torch.equal(
        dmd.context(batch, plain), batch.x0[:, 2:6]
    )
    with torch.no_grad():
        a, _ = dmd.rollout(batch, plain, torch.Generator().manual_seed(1))
        b, gen = dmd.rollout(batch, revisit, torch.Generator().manual_seed(1))
    assert (a[:, :2] - b[:, :2]).abs().max() > 1e-3  # the window's first chunk reads it already
    kept = gen.kept[0].chunk  # the retrieved chunk, as the rollout took it
    torch.testing.assert_close(kept.latents, batch.x0[:, :2], atol=0, rtol=0)
    torch.testing.assert_close(kept.c2w, batch.c2w[:, :2], atol=0, rtol=0)
    ray_ref = dmd.inputs(batch, revisit)[2][:, -8:]
    got = dmd._score_memory(batch, revisit, ray_ref, torch.Generator())
    assert got.readers == [2, 3]  # of the w + M = 4 chunks the scores read, the window's
    torch.testing.assert_close(got.latents, batch.x0[:, :2], atol=0, rtol=0)
    for generator_step in (False, True):
        out = dmd(batch, generator_step, revisit, torch.Generator().manual_seed(0), torch.Generator().manual_seed(1))
        want = torch.nn.functional.mse_loss(out.samples, batch.x0[:, 6:10])
        torch.testing.assert_close(out.revisit_mse, want, atol=1e-6, rtol=0)
        assert out.recorded_mse is None and (out.dmd_loss is not None) == generator_step
        _assert_same_generator_gradient(dmd, out.generator_loss, 0.5 * want)
    # only the frames the batch weighs (those the retrieved chunk shows) are scored
    shown = dataclasses.replace(batch, weight=torch.tensor([[0.0] * 6 + [1, 0, 0, 1], [0.0] * 9 + [1]]))
    out = dmd(shown, False, revisit, torch.Generator().manual_seed(0), torch.Generator().manual_seed(1))
    err = (out.samples - batch.x0[:, 6:10]).square().mean(dim=(2, 3, 4))
    torch.testing.assert_close(out.revisit_mse, (err[0, 0] + err[0, 3] + err[1, 3]) / 3, atol=1e-6, rtol=0)
    recorded = dmd(batch, True, plain, torch.Generator(), torch.Generator())
    assert recorded.revisit_mse is None and recorded.recorded_mse is not None
    dmd.dc = dataclasses.replace(dmd.dc, revisit_regression=0.0)
    off = dmd(batch, False, revisit, torch.Generator(), torch.Generator())
    assert off.generator_loss is None and off.revisit_mse is None and not off.samples.requires_grad
    dmd.dc = dataclasses.replace(dmd.dc, free_chunks=2, idle_prob=0.5, idle_chunks=2, revisit_prob=0.5)
    plans = [dmd.plan(torch.Generator().manual_seed(s)) for s in range(400)]
    assert not any(p.revisit for p in plans if p.still) and all(p.free == 0 for p in plans if p.revisit)
    assert {p.free for p in plans if not p.still and not p.revisit} == {0, 1, 2}
    assert 0.35 < np.mean([p.revisit for p in plans if not p.still]) < 0.65
    dmd.dc = dataclasses.replace(dmd.dc, revisit_free_chunks=1)
    again = [dmd.plan(torch.Generator().manual_seed(s)) for s in range(400)]
    assert all(p.free == 1 for p in again if p.revisit)  # the same draws otherwise
    assert [dataclasses.replace(p, free=0) if p.revisit else p for p in again] == plans


def test_a_revisit_rollouts_free_chunks_follow_the_clip_without_memory_before_the_window_reads_it(
    small_dataset, teacher
):
    """distill.revisit_free_chunks: the clip is the earlier view, the true context, the free
    chunks and the window; the free chunks follow the clip's inputs and read no memory (they
    come out as a plain recorded rollout's), the window chunks read the earlier view, the scores
    give it to the window's chunks only, and the window regresses to the clip's last frames."""
    dmd = _dmd(teacher, rollout_chunks=2)
    batch = _clips(dmd, small_dataset.root, teacher, extra_chunks=2)  # earlier view, 2 context, 1 free, 2 window
    dmd.dc = dataclasses.replace(dmd.dc, revisit_prob=1.0, revisit_free_chunks=1)
    plain, revisit = RolloutPlan([1, 1], free=1), RolloutPlan([1, 1], free=1, revisit=True)
    assert torch.equal(dmd.context(batch, revisit), batch.x0[:, 2:6])
    with torch.no_grad():
        a, _ = dmd.rollout(batch, plain, torch.Generator().manual_seed(1))
        b, gen = dmd.rollout(batch, revisit, torch.Generator().manual_seed(1))
    torch.testing.assert_close(a[:, :2], b[:, :2], atol=0, rtol=0)  # the free chunk reads nothing retrieved
    assert (a[:, 2:4] - b[:, 2:4]).abs().max() > 1e-3  # the window's first chunk reads it
    torch.testing.assert_close(gen.kept[0].chunk.latents, batch.x0[:, :2], atol=0, rtol=0)
    ray_ref = dmd.inputs(batch, revisit)[2][:, -8:]
    got = dmd._score_memory(batch, revisit, ray_ref, torch.Generator())
    assert got.readers == [2, 3]  # the scores read the last context chunk, the free chunk, then the window
    out = dmd(batch, False, revisit, torch.Generator().manual_seed(0), torch.Generator().manual_seed(1))
    assert out.samples.shape[1] == 4
    want = torch.nn.functional.mse_loss(out.samples, batch.x0[:, 8:12])
    torch.testing.assert_close(out.revisit_mse, want, atol=1e-6, rtol=0)


@pytest.fixture(scope="module")
def glance_dataset(tmp_path_factory):
    """One recorded glance_back episode (quick turns away and back to the first view), in the
    small dataset's world and controller."""
    from envs.record import RecordConfig, record

    out = tmp_path_factory.mktemp("ds") / "glance"
    return record(RecordConfig(policy="glance_back", num_episodes=1, episode_len=64, out=str(out), preview=False))


def test_revisit_rollouts_train_the_student_on_every_iteration_and_resume_bit_exactly(
    glance_dataset, teacher, tmp_path, capsys
):
    """The stage with distill.revisit_prob 1: the clips are revisit clips whose first chunk
    covers the window's last view and no true context chunk does (:func:`revisit_clips`), the
    student moves on an iteration that takes no DMD step (its revisit regression), the log has
    revisit_mse, the thresholds enter the run's identity, and a resumed run ends bit for bit as
    an uninterrupted one."""
    import worldsim.train.student_dmd_stage as stage
    from tests.test_memory_context import _bank_coverage

    data = glance_dataset.root
    kw = {"rollout_chunks": 2, "revisit_prob": 1.0, "generator_every": 100}
    summary = train_student_dmd(_dmd_cfg(data, teacher, teacher, tmp_path / "one", 1, **kw))
    assert re.search(r"student_dmd: [1-9]\d* of \d+ clips of .* are revisits", capsys.readouterr().out)
    w = load_file(str(tmp_path / "one" / "last" / "weights.safetensors"))
    _, t, _ = load_checkpoint(teacher)
    assert any(not torch.equal(w[f"generator.{n}"], p) for n, p in t.state_dict().items())
    assert summary["revisit_mse"] > 0
    cfg = _dmd_cfg(data, teacher, teacher, tmp_path / "a", 3, **kw)
    assert cfg.identity()["teacher"] == {"revisit_min": 0.5, "revisit_context_max": 0.3}
    assert "revisit_min" not in _dmd_cfg(data, teacher, teacher, tmp_path / "x", 3).identity()["teacher"]
    ck, _, codec = load_checkpoint(teacher)
    enc = make_action_encoder(ck.action_encoder["name"], ck.action_encoder["key_names"])
    split = EncodedSplit.encode(str(data), codec, enc, "encode")
    clips = stage.revisit_clips(split, ck, cfg, torch.from_numpy(enc.null_action()))
    b = clips.batch(0, 0, 6)
    assert b.x0.shape[1] == (1 + 2 + 2) * 2 and b.memory.all()
    cover = _bank_coverage(split)  # the play-time bank's coverage of one stored chunk
    for i in range(6):
        query = b.c2w[i, -1]
        assert cover(query, b.c2w[i, :2]) >= 0.5
        assert all(cover(query, b.c2w[i, j : j + 2]) < 0.3 for j in (2, 4))
        # each frame after the retrieved chunk weighs 1 where that chunk shows half its view or more
        assert b.weight[i].tolist() == [0, 0] + [float(cover(b.c2w[i, t], b.c2w[i, :2]) >= 0.5) for t in range(2, 10)]
    assert 0 < b.weight[:, 2:].sum() < b.weight[:, 2:].numel()
    # with a free chunk: the clip holds it before the window, and it may not show the view either
    cfg.distill.revisit_free_chunks = 1
    b = stage.revisit_clips(split, ck, cfg, torch.from_numpy(enc.null_action())).batch(0, 0, 6)
    assert b.x0.shape[1] == (1 + 2 + 1 + 2) * 2 and b.memory.all()
    for i in range(6):
        query = b.c2w[i, -1]
        assert cover(query, b.c2w[i, :2]) >= 0.5
        assert all(cover(query, b.c2w[i, j : j + 2]) < 0.3 for j in (2, 4, 6))
    cfg.distill.revisit_free_chunks = 0
    train_student_dmd(cfg)
    train_student_dmd(_dmd_cfg(data, teacher, teacher, tmp_path / "b", 2, schedule_steps=3, **kw))
    train_student_dmd(_dmd_cfg(data, teacher, teacher, tmp_path / "b", 3, resume=True, **kw))
    for name in ("weights", "ema", "optim"):
        a = load_file(str(tmp_path / "a" / "last" / f"{name}.safetensors"))
        c = load_file(str(tmp_path / "b" / "last" / f"{name}.safetensors"))
        assert a.keys() == c.keys() and all(torch.equal(a[k], c[k]) for k in a), name


def test_a_memory_clip_rollout_reads_the_banks_earlier_chunk_and_regresses_every_window_frame(
    glance_dataset, small_dataset, teacher, tmp_path, monkeypatch
):
    """distill.recorded_memory_prob: of the recorded rollouts that are not revisits, that share
    reads a memory clip (as many free chunks as a revisit; none when off);
    every window chunk reads the clip's first chunk, which :func:`memory_clips` makes the bank's
    best earlier chunk for the window's last view (coverage less the distance term, overlapping
    much or little), and every window frame regresses to the truth on every iteration, where
    recorded_regression does not apply; the stage draws those batches from the memory clips."""
    import worldsim.train.student_dmd_stage as stage
    from tests.test_memory_context import _bank_coverage

    dmd = _dmd(teacher, rollout_chunks=2)
    batch = _clips(dmd, small_dataset.root, teacher, extra_chunks=1)
    dmd.dc = dataclasses.replace(dmd.dc, recorded_memory_prob=1.0, revisit_regression=0.5, recorded_regression=0.25)
    clip = RolloutPlan([1, 1], memory_clip=True)
    with torch.no_grad():
        a, _ = dmd.rollout(batch, RolloutPlan([1, 1]), torch.Generator().manual_seed(1))
        b, gen = dmd.rollout(batch, clip, torch.Generator().manual_seed(1))
    assert (a[:, :2] - b[:, :2]).abs().max() > 1e-3  # the window's first chunk reads it
    torch.testing.assert_close(gen.kept[0].chunk.latents, batch.x0[:, :2], atol=0, rtol=0)
    got = dmd._score_memory(batch, clip, dmd.inputs(batch, clip)[2][:, -8:], torch.Generator())
    assert got.readers == [2, 3]
    for generator_step in (False, True):
        out = dmd(batch, generator_step, clip, torch.Generator().manual_seed(0), torch.Generator().manual_seed(1))
        want = torch.nn.functional.mse_loss(out.samples, batch.x0[:, 6:10])
        torch.testing.assert_close(out.revisit_mse, want, atol=1e-6, rtol=0)
        assert out.recorded_mse is None
        _assert_same_generator_gradient(dmd, out.generator_loss, 0.5 * want)
    dmd.dc = dataclasses.replace(dmd.dc, idle_prob=0.5, idle_chunks=2, revisit_prob=0.5, revisit_free_chunks=1)
    plans = [dmd.plan(torch.Generator().manual_seed(s)) for s in range(400)]
    recorded = [p for p in plans if not p.still]
    assert not any(p.memory_clip for p in plans if p.still or p.revisit)
    assert all(p.memory_clip for p in recorded if not p.revisit) and all(p.free == 1 for p in recorded)
    dmd.dc = dataclasses.replace(dmd.dc, recorded_memory_prob=0.5)
    half = [dmd.plan(torch.Generator().manual_seed(s)) for s in range(400)]
    assert 0.35 < np.mean([p.memory_clip for p in half if not p.still and not p.revisit]) < 0.65
    dmd.dc = dataclasses.replace(dmd.dc, recorded_memory_prob=0.0)
    off = [dmd.plan(torch.Generator().manual_seed(s)) for s in range(400)]
    assert not any(p.memory_clip for p in off)
    assert [p for p in off if p.still] == [p for p in plans if p.still]  # the still players' draws are the same
    # the memory clips: the bank's best earlier chunk for the window's last view, every frame weighing 1
    data = glance_dataset.root
    kw = {"rollout_chunks": 2, "recorded_memory_prob": 1.0, "generator_every": 100}
    cfg = _dmd_cfg(data, teacher, teacher, tmp_path / "a", 1, **kw)
    ck, _, codec = load_checkpoint(teacher)
    enc = make_action_encoder(ck.action_encoder["name"], ck.action_encoder["key_names"])
    split = EncodedSplit.encode(str(data), codec, enc, "encode")
    b = stage.memory_clips(split, ck, cfg, torch.from_numpy(enc.null_action())).batch(0, 0, 16)
    assert b.x0.shape[1] == (1 + 2 + 2) * 2 and torch.equal(b.weight, torch.ones_like(b.weight))
    cover = _bank_coverage(split)
    c2w = split.c2w[0]
    shown = []
    for i in range(16):
        if not b.memory[i]:
            continue
        query = b.c2w[i, -1]

        def score(chunk, query=query):
            dist = (chunk[-1, :3, 3] - query[:3, 3]).double().norm()
            return cover(query, chunk) - 0.1 * float(dist) / 20.0

        # where the clip's recent chunks and window lie in the episode (a glance back repeats poses)
        at = [s for s in range(2, len(c2w) - 7) if torch.equal(c2w[s : s + 8], b.c2w[i, 2:])]
        best = [max(score(c2w[m : m + 2]) for m in range(0, s - 3)) for s in at]  # chunks ending before the clip
        assert any(score(b.c2w[i, :2]) == pytest.approx(x) for x in best), (score(b.c2w[i, :2]), best)
        shown.append(cover(query, b.c2w[i, :2]))
    assert len(shown) >= 8 and min(shown) < 0.5 <= max(shown)  # not only revisits: some show little of the view
    # the stage reads the memory clips for those rollouts, steps the student on each and logs revisit_mse
    calls = []
    real = stage.memory_clips

    def spy(*args):
        sampler = real(*args)
        batch_of = sampler.batch
        sampler.batch = lambda *a, **k: calls.append(a) or batch_of(*a, **k)
        return sampler

    monkeypatch.setattr(stage, "memory_clips", spy)
    summary = train_student_dmd(cfg)
    assert len(calls) == 1 and summary["revisit_mse"] > 0
    w = load_file(str(tmp_path / "a" / "last" / "weights.safetensors"))
    _, t, _ = load_checkpoint(teacher)
    assert any(not torch.equal(w[f"generator.{n}"], p) for n, p in t.state_dict().items())
    assert cfg.identity()["distill"]["recorded_memory_prob"] == 1.0
    assert "recorded_memory_prob" not in _dmd_cfg(data, teacher, teacher, tmp_path / "x", 1).identity()["distill"]
    with pytest.raises(WorldsimError, match=r"^distill.recorded_memory_prob must be in \[0, 1\].* got 1.5 with"):
        train_student_dmd(_dmd_cfg(data, teacher, teacher, tmp_path / "c", 1, recorded_memory_prob=1.5))


def test_a_memory_embedding_learns_through_the_retrieved_chunks_pass_and_the_student_continues_from_it(
    glance_dataset, teacher, tmp_path
):
    """distill.memory_embedding: the student gains a memory embedding, zero at first, which its
    revisit rollouts train through the retrieved chunk's pass (the rollout's memory_grad) at
    distill.memory_embedding_lr_scale; the export records it, the engine loads it, a run starting
    from that student keeps it without the option, and the teacher's architecture check accepts it."""
    data = glance_dataset.root
    kw = {"rollout_chunks": 2, "revisit_prob": 1.0, "generator_every": 100}
    out = tmp_path / "emb"
    train_student_dmd(_dmd_cfg(data, teacher, teacher, out, 2, memory_embedding=True, **kw))
    ck, student, _ = load_checkpoint(out / "model")
    assert ck.model.memory_embedding and student.cfg.memory_embedding
    last = load_file(str(out / "last" / "weights.safetensors"))
    assert last["generator.memory_embed"].abs().min() > 0  # every coordinate moved
    assert "fake_score.memory_embed" not in last  # the scores read memory as the teacher was trained to
    # at a scale of 1 it moves about lr per step: far less than at the default 100
    train_student_dmd(
        _dmd_cfg(
            data, teacher, teacher, tmp_path / "slow", 2, memory_embedding=True, memory_embedding_lr_scale=1.0, **kw
        )
    )
    slow = load_file(str(tmp_path / "slow" / "last" / "weights.safetensors"))["generator.memory_embed"]
    assert slow.abs().max() < 0.1 * last["generator.memory_embed"].abs().max()
    load_engine(str(out / "model"), memory="on")
    train_student_dmd(_dmd_cfg(data, teacher, out / "model", tmp_path / "next", 1, **kw))
    assert "generator.memory_embed" in load_file(str(tmp_path / "next" / "last" / "weights.safetensors"))
    assert "memory_embedding" in _dmd_cfg(data, teacher, teacher, out, 1, memory_embedding=True).identity()["distill"]
    assert "memory_embedding" not in _dmd_cfg(data, teacher, teacher, out, 1).identity()["distill"]


def test_memory_only_trains_the_embedding_and_adapter_alone_and_every_other_weight_stays_its_starts(
    glance_dataset, teacher, tmp_path
):
    """distill.memory_only with distill.memory_adapter_rank: the student gains a memory adapter
    (and an embedding); its revisit rollouts train those alone, and every other weight of the
    exported student and of its training state is its start's bit for bit (with no retrieved
    chunk it computes exactly what its start does), while the fake score learns; the export
    records the adapter and the engine loads it; the run resumes bit for bit; a start without
    memory parameters, an adapter of another rank and a negative rank are refused in one line."""
    data = glance_dataset.root
    kw = {"rollout_chunks": 2, "revisit_prob": 1.0, "generator_every": 100, "memory_embedding": True}
    kw |= {"memory_adapter_rank": 2, "memory_only": True}
    out = tmp_path / "mem"
    train_student_dmd(_dmd_cfg(data, teacher, teacher, out, 3, **kw))
    ck, student, _ = load_checkpoint(out / "model")
    _, start, _ = load_checkpoint(teacher)
    assert ck.model.memory_adapter_rank == 2 and student.cfg.memory_adapter_rank == 2
    memory = dict(student.memory_parameters())
    base = start.state_dict()
    assert set(student.state_dict()) - set(memory) == set(base)
    last = load_file(str(out / "last" / "weights.safetensors"))
    for n, t in base.items():
        assert torch.equal(student.state_dict()[n], t), n  # the EMA export
        assert torch.equal(last[f"generator.{n}"], t), n  # the weights
    ups = [n for n in memory if n.endswith(".up.weight")]
    assert len(ups) == 4 * (start.cfg.depth - 1) + 1 and all(memory[n].abs().sum() > 0 for n in ups)
    assert memory["memory_embed"].abs().min() > 0
    assert any(not torch.equal(last[f"fake_score.{n}"], t) for n, t in base.items())
    load_engine(str(out / "model"), memory="on")
    # resumed after 2 of 3 steps: the same state
    train_student_dmd(_dmd_cfg(data, teacher, teacher, tmp_path / "b", 2, schedule_steps=3, **kw))
    train_student_dmd(_dmd_cfg(data, teacher, teacher, tmp_path / "b", 3, resume=True, **kw))
    for name in ("weights", "ema", "optim"):
        a = load_file(str(out / "last" / f"{name}.safetensors"))
        c = load_file(str(tmp_path / "b" / "last" / f"{name}.safetensors"))
        assert a.keys() == c.keys() and all(torch.equal(a[k], c[k]) for k in a), name
    with pytest.raises(WorldsimError, match=r"^distill.memory_only trains the student's memory embedding and adapter"):
        train_student_dmd(_dmd_cfg(data, teacher, teacher, tmp_path / "c", 1, memory_only=True))
    with pytest.raises(WorldsimError, match=r"^distill.memory_adapter_rank: init_from .* adapter of rank 2, not 3$"):
        train_student_dmd(_dmd_cfg(data, teacher, out / "model", tmp_path / "d", 1, memory_adapter_rank=3))
    with pytest.raises(WorldsimError, match=r"^distill.memory_adapter_rank must be >= 0 .* got -1, 10.0$"):
        train_student_dmd(_dmd_cfg(data, teacher, teacher, tmp_path / "e", 1, memory_adapter_rank=-1))


LONG = {
    "free_chunks": 1,
    "idle_prob": 0.5,
    "idle_chunks": 2,
    "context_sigma": 0.2,
    "still_regression": 1.0,
    "recorded_regression": 0.5,
}


# The student's context from its last denoising pass (the sampler's cache_write), on the shift
# that starts that pass at context_sigma 0.2: 0.2 / (1 - 0.2).
LAST_STEP = {**LONG, "cache_write": "last_step", "student_shift": 0.25}


@pytest.mark.parametrize("long", [{}, LONG, LAST_STEP], ids=["window", "long_rollouts", "last_step"])
def test_student_dmd_resumes_bit_exactly_and_exports_a_playable_student(small_dataset, teacher, tmp_path, long):
    data = small_dataset.root
    train_student_dmd(_dmd_cfg(data, teacher, teacher, tmp_path / "a", 5, schedule_steps=6, **long))
    train_student_dmd(_dmd_cfg(data, teacher, teacher, tmp_path / "b", 3, schedule_steps=6, **long))
    summary = train_student_dmd(_dmd_cfg(data, teacher, teacher, tmp_path / "b", 5, resume=True, **long))
    for name in ("weights", "ema", "optim"):
        a = load_file(str(tmp_path / "a" / "last" / f"{name}.safetensors"))
        b = load_file(str(tmp_path / "b" / "last" / f"{name}.safetensors"))
        assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a), name
    assert {"dmd_loss", "fake_loss", "rollout_psnr_db"} <= set(summary)
    assert ("still_psnr_db" in summary) == bool(long) and 0 < summary.get("still_psnr_db", 1) < 100
    w = load_file(str(tmp_path / "b" / "last" / "weights.safetensors"))
    _, t, _ = load_checkpoint(teacher)
    moved = [n for n, p in t.state_dict().items() if not torch.equal(w[f"generator.{n}"], p)]
    assert moved and any(not torch.equal(w[f"fake_score.{n}"], p) for n, p in t.state_dict().items())
    ck, _, _ = load_checkpoint(tmp_path / "b" / "model")
    assert ck.provenance["stage"] == "student_dmd" and ck.sampler.num_steps == 2
    assert ck.sampler.context_sigma == long.get("context_sigma", 0.0)  # the student plays as it was rolled out
    assert ck.sampler.cache_write == long.get("cache_write", "clean_pass")
    assert ck.sampler.shift == long.get("student_shift", load_checkpoint(teacher)[0].sampler.shift)
    engine = load_engine(tmp_path / "b" / "model")
    start = world_start(0, engine.context_frames, engine.key_names, engine.frame_size)
    engine.reset(*start.arrays())
    assert (
        engine.step(np.zeros((2, len(engine.key_names)), np.uint8), np.zeros((2, 2), np.float32)).frames.shape[0] == 2
    )


def test_focus_window_puts_a_focus_clips_press_anywhere_in_the_dmd_window(
    small_dataset, teacher, tmp_path, monkeypatch
):
    """``distill.focus_window``: the stage's clips are focus clips when the press falls anywhere in
    the DMD window (3 chunks of 2 frames here), not only in its last chunk; it enters the run's
    identity only when on."""
    import worldsim.train.student_dmd_stage as stage

    made = []

    class Recorded(ClipSampler):
        def __init__(self, *a, **kw):
            super().__init__(*a, **kw)
            made.append(self)

    monkeypatch.setattr(stage, "ClipSampler", Recorded)
    # a key with a press whose effect lands in a clip's last chunk: a frame from 8 on (clips of 10)
    keys = [small_dataset.load(e, ("keys",))["keys"] for e in range(len(small_dataset))]
    names = small_dataset.meta.key_names
    key = next(n for j, n in enumerate(names) if any(follows_press(k[:, [j]])[8:].any() for k in keys))
    teacher_group = TeacherConfig(focus_keys=[key], focus_prob=1.0)
    for on in (False, True):
        cfg = _dmd_cfg(small_dataset.root, teacher, teacher, tmp_path / str(on), 1, focus_window=on)
        cfg.teacher = teacher_group
        train_student_dmd(cfg)
        assert ("focus_window" in cfg.identity()["distill"]) == on
    last_chunk, window = made
    assert last_chunk.focus_frames == 2 and window.focus_frames == 3 * 2
    assert set(last_chunk.focus) < set(window.focus)


def test_a_student_start_may_have_another_decoder_but_not_another_encoder(teacher, tmp_path):
    """``with_codec`` gives a student a slimmer decoder on the same latents: it still starts a
    student stage; a codec of other widths at the encoder is refused, naming the field."""
    from worldsim.model.codec import Codec
    from worldsim.train.student_ode_stage import check_student_start

    ck, model, _ = load_checkpoint(teacher)
    for name, codec_cfg in (
        ("slim", dataclasses.replace(ck.codec, decoder_channels=[16, 8, 8])),
        ("wide", dataclasses.replace(ck.codec, base_channels=32)),
    ):
        save_checkpoint(tmp_path / name, dataclasses.replace(ck, codec=codec_cfg), model, Codec(codec_cfg))
    check_student_start(str(tmp_path / "slim"), ck, str(teacher))
    with pytest.raises(WorldsimError, match="codec.base_channels is 32, the teacher's 16"):
        check_student_start(str(tmp_path / "wide"), ck, str(teacher))


def test_student_dmd_refuses_bad_input_before_slow_work(small_dataset, teacher, tmp_path):
    data = small_dataset.root
    cfg = _dmd_cfg(data, teacher, teacher, tmp_path / "a", 2)
    cfg.init_from = ""
    with pytest.raises(WorldsimError, match="stage=student_dmd needs init_from"):
        train_student_dmd(cfg)
    with pytest.raises(WorldsimError, match=r"no episode holds a 52-frame clip \(longest: 24 frames\)"):
        train_student_dmd(_dmd_cfg(data, teacher, teacher, tmp_path / "a", 2, rollout_chunks=24))
    with pytest.raises(WorldsimError, match=r"no episode holds a 28-frame clip \(longest: 24 frames\)"):
        train_student_dmd(_dmd_cfg(data, teacher, teacher, tmp_path / "a", 2, free_chunks=9))
    with pytest.raises(WorldsimError, match=r"idle_prob in \[0, 1\] .* got 0, 0, 1.5, 0.0"):
        train_student_dmd(_dmd_cfg(data, teacher, teacher, tmp_path / "a", 2, idle_prob=1.5))
    with pytest.raises(WorldsimError, match=r"still_regression .* needs still rollouts .* got 1.0 with idle_prob 0.0"):
        train_student_dmd(_dmd_cfg(data, teacher, teacher, tmp_path / "a", 2, still_regression=1.0))
    with pytest.raises(WorldsimError, match=r"recorded_regression .* needs recorded .* got 1.0 with idle_prob 1.0"):
        train_student_dmd(_dmd_cfg(data, teacher, teacher, tmp_path / "a", 2, idle_prob=1.0, recorded_regression=1.0))
    with pytest.raises(WorldsimError, match=r"needs the last step to start at context_sigma 0.2; at shift 5 .*0.25"):
        train_student_dmd(
            _dmd_cfg(data, teacher, teacher, tmp_path / "a", 2, context_sigma=0.2, cache_write="last_step")
        )
    with pytest.raises(WorldsimError, match=r"distill.student_shift must be > 0 .* got -1"):
        train_student_dmd(_dmd_cfg(data, teacher, teacher, tmp_path / "a", 2, student_shift=-1.0))
    with pytest.raises(WorldsimError, match=r"focus_window needs focus clips .* got focus_prob 0.0 and idle_prob 0.0"):
        train_student_dmd(_dmd_cfg(data, teacher, teacher, tmp_path / "a", 2, focus_window=True))
    with pytest.raises(WorldsimError, match=r"focus_window needs .* got focus_prob 0.5 and idle_prob 1.0"):
        cfg = _dmd_cfg(data, teacher, teacher, tmp_path / "a", 2, focus_window=True, idle_prob=1.0)
        cfg.teacher = TeacherConfig(focus_keys=["w"], focus_prob=0.5)
        train_student_dmd(cfg)
    with pytest.raises(WorldsimError, match=r"still_memory_prob must be in \[0, 1\].* got 0.5 with idle_prob 0.0"):
        train_student_dmd(_dmd_cfg(data, teacher, teacher, tmp_path / "a", 2, still_memory_prob=0.5))
    with pytest.raises(WorldsimError, match=r"still_memory_prob must be in \[0, 1\].* got 1.5 with idle_prob 0.5"):
        train_student_dmd(_dmd_cfg(data, teacher, teacher, tmp_path / "a", 2, idle_prob=0.5, still_memory_prob=1.5))
    with pytest.raises(WorldsimError, match=r"still_press_prob must be in \[0, 1\].* got 0.5, 8 with idle_prob 0.0"):
        train_student_dmd(_dmd_cfg(data, teacher, teacher, tmp_path / "a", 2, still_press_prob=0.5))
    with pytest.raises(WorldsimError, match=r"still_press_frames >= 1.* got 0.5, 0 with idle_prob 0.5"):
        train_student_dmd(
            _dmd_cfg(
                data, teacher, teacher, tmp_path / "a", 2, idle_prob=0.5, still_press_prob=0.5, still_press_frames=0
            )
        )
    with pytest.raises(WorldsimError, match=r"still_press_key must be one of the teacher's keys .* got 'q'"):
        train_student_dmd(
            _dmd_cfg(
                data, teacher, teacher, tmp_path / "a", 2, idle_prob=0.5, still_press_prob=0.5, still_press_key="q"
            )
        )
    with pytest.raises(WorldsimError, match=r"still_press_key must not move the camera .* got 'w'"):
        train_student_dmd(
            _dmd_cfg(
                data, teacher, teacher, tmp_path / "a", 2, idle_prob=0.5, still_press_prob=0.5, still_press_key="w"
            )
        )
    with pytest.raises(WorldsimError, match=r"still_press_key with still_memory_prob must be .* 'l' .* got 'm'"):
        cfg = _dmd_cfg(data, teacher, teacher, tmp_path / "a", 2, idle_prob=0.5, still_press_prob=0.5)
        cfg.distill.still_memory_prob, cfg.distill.still_press_key = 0.5, "m"
        train_student_dmd(cfg)
    with pytest.raises(WorldsimError, match=r"revisit_prob must be in \[0, 1\].* got 0.5, 1.0, 0 with idle_prob 1.0"):
        train_student_dmd(_dmd_cfg(data, teacher, teacher, tmp_path / "a", 2, idle_prob=1.0, revisit_prob=0.5))
    with pytest.raises(WorldsimError, match=r"revisit_free_chunks >= 0.* got 0.5, -1.0, 0 with idle_prob 0.0"):
        train_student_dmd(
            _dmd_cfg(data, teacher, teacher, tmp_path / "a", 2, revisit_prob=0.5, revisit_regression=-1.0)
        )
    with pytest.raises(WorldsimError, match=r"revisit_free_chunks >= 0.* got 0.5, 1.0, -1 with idle_prob 0.0"):
        train_student_dmd(_dmd_cfg(data, teacher, teacher, tmp_path / "a", 2, revisit_prob=0.5, revisit_free_chunks=-1))
    with pytest.raises(
        WorldsimError, match=r"memory_embedding_lr_scale and real_guidance must be > 0.* got 0.2, 0.0, 1"
    ):
        train_student_dmd(_dmd_cfg(data, teacher, teacher, tmp_path / "a", 2, memory_embedding_lr_scale=0.0))
    with pytest.raises(WorldsimError, match=r"dmd_sigma_min and dmd_sigma_max must satisfy"):
        train_student_dmd(_dmd_cfg(data, teacher, teacher, tmp_path / "a", 2, dmd_sigma_min=0.5, dmd_sigma_max=0.4))
    ck, model, codec = load_checkpoint(teacher)
    wide = dataclasses.replace(ck, model=dataclasses.replace(ck.model, depth=3))
    from worldsim.model.dit import WorldModel

    save_checkpoint(tmp_path / "deep", wide, WorldModel(wide.model), codec)
    with pytest.raises(WorldsimError, match="does not match its teacher .*: model.depth is 3, the teacher's 2"):
        train_student_dmd(_dmd_cfg(data, teacher, tmp_path / "deep", tmp_path / "a", 2))
    assert not (tmp_path / "a").exists()
    with pytest.raises(WorldsimError, match=r"no clip is a revisit .*: teacher.revisit_prob needs data that returns"):
        train_student_dmd(_dmd_cfg(data, teacher, teacher, tmp_path / "n", 2, revisit_prob=0.5))  # after encoding
    # A run resumed against a teacher whose weights changed is refused, naming it.
    moving = tmp_path / "teacher"
    shutil.copytree(teacher, moving)
    train_student_dmd(_dmd_cfg(data, moving, moving, tmp_path / "r", 1))
    with torch.no_grad():
        next(model.parameters()).add_(1.0)
    save_checkpoint(moving, ck, model, codec)
    with pytest.raises(WorldsimError, match=r"config differs in \['teacher_sha256'\]"):
        train_student_dmd(_dmd_cfg(data, moving, moving, tmp_path / "r", 2, resume=True))


@pytest.mark.parametrize("context_sigma", [0.0, 0.3])
@pytest.mark.parametrize("readers", [[], [1, 3, 5]])
@pytest.mark.parametrize("memory_embedding", [False, True])
def test_the_scores_read_each_generated_chunk_as_a_rolling_cache_holds_it(
    small_dataset, teacher, context_sigma, readers, memory_embedding
):
    """``rollout_scores`` (one windowed teacher-forcing forward) against the cache the engine
    keeps: clean chunks written in order into a window of W chunks, labelled with the context
    noise level, each noisy chunk read before its clean copy joins. With a retrieved chunk
    (:class:`ScoreMemory`) read by ``readers``: its pass into the cache's memory slot before each
    reader's passes (rays relative to the reader's reference, at the positions the rollout gives
    it), which then see it in place of their window's oldest chunk; a reader whose window is not
    yet full (chunk 1) hides nothing. A network with a memory embedding reads it marked, as the
    rollout's pass marks it."""
    dmd = _dmd(teacher, rollout_chunks=4)
    batch = _clips(dmd, small_dataset.root, teacher)
    model, k, w = copy.deepcopy(dmd.teacher), 2, dmd.cond.context_chunks
    if memory_embedding:
        model.add_memory_embedding()
        with torch.no_grad():
            model.memory_embed.normal_(0, 1.0)
    t = batch.x0.shape[1]
    g = torch.Generator().manual_seed(0)
    noisy = torch.randn(batch.x0[:, 4:].shape, generator=g)
    sigma = torch.rand(2, 4, generator=g).repeat_interleave(k, 1)
    rays = dmd.rays.relative_to(batch.c2w, batch.ray_ref, torch.float32)
    mem_lat, mem_act, mem_c2w = batch.x0[:, 2:4] + 0.5, batch.actions[:, 2:4], batch.c2w[:, 2:4]  # unlike any chunk
    mem_rays = [
        dmd.rays.relative_to(mem_c2w, batch.ray_ref[:, c * k : c * k + 1].expand(-1, k, 4, 4), torch.float32)
        for c in readers
    ]
    memory = ScoreMemory(mem_lat, mem_act, readers, torch.cat(mem_rays, 1)) if readers else None
    labels = torch.full((2, k), context_sigma)
    with torch.no_grad():
        got = rollout_scores(
            model, batch.x0, noisy, sigma, batch.actions, rays, w, context_sigma=context_sigma, memory=memory
        )
        plain = rollout_scores(model, batch.x0, noisy, sigma, batch.actions, rays, w, context_sigma=context_sigma)
        cache, want = KVCache(TINY.depth, k * TINY.tokens_per_frame, w, memory=int(bool(readers))), []
        for c in range(t // k):
            sl, pos = slice(c * k, c * k + k), torch.arange(c * k, c * k + k)
            if c in readers:
                cache.use_memory(1)
                at = torch.arange(k) + k * (c - w if c >= w else -1)
                rays_c = mem_rays[readers.index(c)]
                model.write_chunk(mem_lat, labels, mem_act, rays_c, at, cache.memory_slot(0), memory=True)
            if c >= 2:
                n = slice(sl.start - 4, sl.stop - 4)
                want.append(
                    model.forward_chunk(noisy[:, n], sigma[:, n], batch.actions[:, sl], rays[:, sl], pos, cache)
                )
            model.forward_chunk(batch.x0[:, sl], labels, batch.actions[:, sl], rays[:, sl], pos, cache)
            cache.commit()
    torch.testing.assert_close(got, torch.cat(want, 1), atol=1e-5, rtol=1e-5)
    assert ((got - plain).abs().max() > 1e-3) == bool(readers)  # the memory is read


def test_a_still_player_reads_the_last_context_chunk_from_memory_after_one_chunk(small_dataset, teacher):
    """distill.still_memory_prob: a still plan with memory gives the rollout the last true
    context chunk from its second chunk on (the first is as without memory), and the scores read
    it too: with the fake score equal to the real one the student's step is still exactly zero."""
    dmd = _dmd(teacher, rollout_chunks=2)
    batch = _clips(dmd, small_dataset.root, teacher, extra_chunks=1)
    dmd.dc = dataclasses.replace(dmd.dc, idle_prob=0.5, idle_chunks=1, still_memory_prob=1.0)
    plain, memory = RolloutPlan([1, 1], free=1, still=True), RolloutPlan([1, 1], free=1, still=True, memory=True)
    with torch.no_grad():
        a, _ = dmd.rollout(batch, plain, torch.Generator().manual_seed(1))
        b, gen = dmd.rollout(batch, memory, torch.Generator().manual_seed(1))
    torch.testing.assert_close(a[:, :2], b[:, :2], atol=0, rtol=0)
    assert (a[:, 2:] - b[:, 2:]).abs().max() > 1e-3
    kept = gen.kept[0].chunk  # the retrieved chunk, as the rollout took it
    torch.testing.assert_close(kept.latents, batch.x0[:, 2:4], atol=0, rtol=0)
    torch.testing.assert_close(kept.c2w, batch.c2w[:, 2:4], atol=0, rtol=0)
    assert [memory.reads_memory(j, 2) for j in range(3)] == [False, True, True] and not plain.reads_memory(2, 2)
    # The scores give it to the chunks the rollout did: of the w + M = 4 chunks they read, those
    # that are generated chunk 1 or later (w = 2 context chunks, M = 2 window chunks).
    for free, readers in ((0, [3]), (1, [2, 3]), (3, [0, 1, 2, 3])):
        plan = dataclasses.replace(memory, free=free)
        ray_ref = dmd.inputs(batch, plan)[2][:, -8:]
        got = dmd._score_memory(batch, plan, ray_ref, torch.Generator())
        assert got.readers == readers and got.plucker.shape[1] == 2 * len(readers)
        torch.testing.assert_close(got.latents, batch.x0[:, 2:4], atol=0, rtol=0)  # context_sigma 0: as it is
    assert dmd._score_memory(batch, RolloutPlan([1], still=True, memory=True), ray_ref, torch.Generator()) is None
    out = dmd(batch, True, memory, torch.Generator().manual_seed(0), torch.Generator().manual_seed(1))
    out.generator_loss.backward()
    assert sum(p.grad.abs().sum() for p in dmd.nets.generator.parameters() if p.grad is not None) == 0
    plans = [dmd.plan(torch.Generator().manual_seed(s)) for s in range(200)]
    assert all(p.memory == p.still for p in plans)
    dmd.dc = dataclasses.replace(dmd.dc, still_memory_prob=0.5)
    plans = [dmd.plan(torch.Generator().manual_seed(s)) for s in range(400)]
    assert not any(p.memory for p in plans if not p.still)
    assert 0.35 < np.mean([p.memory for p in plans if p.still]) < 0.65


def test_a_still_player_presses_the_key_from_the_drawn_frame_and_reads_no_memory_after_it(small_dataset, teacher):
    """distill.still_press_prob: a still plan's press conditions its generated frames with the
    encoder's press edge on the drawn frame, its hold after it and the idle input elsewhere, as
    the engine encodes the stability evaluation's presses; no chunk from the press's on reads
    memory; the still regression leaves it out (its truth is not recorded) while the DMD step
    with the fake score equal to the real one stays zero; the draws cover their ranges."""
    dmd = _dmd(teacher, rollout_chunks=2)
    batch = _clips(dmd, small_dataset.root, teacher, extra_chunks=1)
    dmd.dc = dataclasses.replace(
        dmd.dc, idle_prob=0.5, idle_chunks=1, still_regression=0.5, still_press_prob=1.0, still_press_frames=3
    )
    enc, zero = dmd.encoder, np.zeros((1, 2), np.float32)
    key = np.zeros((1, len(enc.key_names)), np.uint8)
    held = key.copy()
    held[0, enc.key_names.index("l")] = 1
    row = {  # one input row each, after the row before it
        "idle": enc.encode_sequence(key, zero, key[0])[0],
        "edge": enc.encode_sequence(held, zero, key[0])[0],
        "hold": enc.encode_sequence(held, zero, held[0])[0],
        "release": enc.encode_sequence(key, zero, held[0])[0],
    }
    assert not np.array_equal(row["edge"], row["hold"]) and not np.array_equal(row["edge"], row["idle"])
    plan = RolloutPlan([1, 1], free=1, still=True, press=(3, 2))  # generated frames 3 and 4 of 6
    got = dmd.inputs(batch, plan)[0][:, 4:]  # after the 2 context chunks of 2 frames
    want = [row[n] for n in ("idle", "idle", "idle", "edge", "hold", "release")]
    torch.testing.assert_close(got, torch.from_numpy(np.stack(want)).expand_as(got), atol=0, rtol=0)
    press = dataclasses.replace(plan, memory=True, press=(4, 2))  # from chunk 2 on
    assert [press.reads_memory(j, 2) for j in range(4)] == [False, True, False, False]
    out = dmd(batch, True, press, torch.Generator().manual_seed(0), torch.Generator().manual_seed(1))
    assert out.still_mse is None
    out.generator_loss.backward()
    assert sum(p.grad.abs().sum() for p in dmd.nets.generator.parameters() if p.grad is not None) == 0
    plans = [dmd.plan(torch.Generator().manual_seed(s)) for s in range(400)]
    assert all((p.press is not None) == p.still for p in plans)
    presses = [(p.free, *p.press) for p in plans if p.still]
    assert {n for _, _, n in presses} == {1, 2, 3}
    assert all(max(0, 2 * f - 3) <= s < 2 * f + 4 for f, s, _ in presses)  # k = 2, a window of 2 chunks
    assert {s for f, s, _ in presses if f == 1} == set(range(6)) and {s for f, s, _ in presses if f == 0} == set(
        range(4)
    )


def test_two_process_torchrun_dmd_averages_both_networks_and_keeps_ranks_in_sync(small_dataset, teacher, tmp_path):
    """DMD calls the student and the fake score directly (no DDP wrapper): the loop averages their
    gradients across ranks after backward, so the ranks end bit-identical."""
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    run = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node=2", "-m", "worldsim.cli.train"]
    args = [
        "stage=student_dmd",
        f"data={small_dataset.root}",
        "val_data=null",
        f"out={tmp_path / 'ddp'}",
        f"init_from={teacher}",
        f"distill.teacher={teacher}",
        "distill.rollout_chunks=3",
        "distill.generator_every=1",
        "teacher.focus_prob=0.0",  # the preset's light-key focus: these two episodes never press it
        "steps=2",
        "batch_size=4",
        "bf16=false",
        "log_every=1",
    ]
    p = subprocess.run(run + args, cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    assert p.returncode == 0, p.stderr[-3000:]
    assert "ranks_in_sync 1" in p.stdout and p.stdout.count("ranks_in_sync") == 1, p.stdout
    w = load_file(str(tmp_path / "ddp" / "last" / "weights.safetensors"))
    _, t, _ = load_checkpoint(teacher)
    assert any(not torch.equal(w[f"generator.{n}"], v) for n, v in t.state_dict().items())


def test_the_dmd_noise_levels_follow_the_teachers_shift_not_the_students(teacher):
    """``distill.student_shift`` places the student's own steps (``cache_write=last_step``); the
    levels the scores read stay those of the teacher's schedule, as in runs without it."""
    ck, _, _ = load_checkpoint(teacher)
    levels = [
        _dmd(teacher, student_shift=s)._levels(2, 3, torch.Generator().manual_seed(0), torch.device("cpu"))
        for s in (None, 0.25)
    ]
    assert _dmd(teacher, student_shift=0.25).sampler.shift == 0.25 != ck.sampler.shift
    torch.testing.assert_close(levels[0], levels[1], rtol=0, atol=0)
    u = 0.02 + 0.96 * torch.rand(2, 3, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    torch.testing.assert_close(levels[0][:, ::2], shift_sigma(u, ck.sampler.shift).float())


def test_a_student_for_data_at_another_frame_rate_is_exported_with_the_datas_controller(teacher, tmp_path):
    """DMD data recorded at 30 frames/s for a teacher trained at 15: refused in one line unless
    distill.data_controller, which exports the student with the data's controller (the engine then
    steps 1/30 s of motion per frame)."""
    from envs.record import RecordConfig, record

    world = load_recipe("builtin_v5_30fps").world
    data = record(RecordConfig(num_episodes=2, episode_len=24, out=str(tmp_path / "d30"), preview=False, world=world))
    with pytest.raises(
        WorldsimError, match=r"recorded with .*fps=30.0.*, the teacher .* with .*fps=15.0.*data_controller"
    ):
        train_student_dmd(_dmd_cfg(data.root, teacher, teacher, tmp_path / "a", 2))
    assert not (tmp_path / "a").exists()
    train_student_dmd(_dmd_cfg(data.root, teacher, teacher, tmp_path / "b", 2, data_controller=True))
    ck, _, _ = load_checkpoint(tmp_path / "b" / "model")
    assert ck.controller == data.meta.controller() and ck.controller.fps == 30.0
    assert load_checkpoint(teacher)[0].controller.fps == 15.0 and load_engine(tmp_path / "b" / "model").fps == 30.0
    # Parts that disagree on the controller (15 and 30 frames/s in one data folder) are refused
    # whatever data_controller says, as the teacher stage refuses them: one meaning of an input.
    record(RecordConfig(num_episodes=2, episode_len=24, out=str(tmp_path / "mixed" / "a15"), preview=False))
    shutil.copytree(data.root, tmp_path / "mixed" / "b30")
    with pytest.raises(WorldsimError, match=r"b30 was recorded in env 'builtin' with .*fps=30.0.*one meaning"):
        train_student_dmd(_dmd_cfg(tmp_path / "mixed", teacher, teacher, tmp_path / "c", 2, data_controller=True))
    assert not (tmp_path / "c").exists()


def test_the_memory_read_probe_scores_the_three_modes_on_the_same_revisit_clips(glance_dataset, teacher):
    """tools/memory_read_probe.py: on revisit clips the rollout with the earlier view in memory,
    without it and with another clip's differ on the frames the view shows, and the scores are
    finite PSNRs; the same call gives the same numbers (the clips and noise are fixed)."""
    sys.path.insert(0, str(ROOT / "tools"))
    from memory_read_probe import probe

    a = probe(str(teacher), str(glance_dataset.root), window=2, batches=1, batch_size=3)
    assert set(a) == {f"{m}_{p}_db" for m in ("memory", "none", "wrong") for p in ("shown", "other")}
    assert all(0 < v < 100 for v in a.values())
    assert a["memory_shown_db"] != a["none_shown_db"] and a["memory_shown_db"] != a["wrong_shown_db"]
    assert probe(str(teacher), str(glance_dataset.root), window=2, batches=1, batch_size=3) == a
