"""The teacher stage on a tiny config: exact resume, a loadable export, bad input, and DDP."""

import dataclasses
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from omegaconf import OmegaConf
from safetensors.torch import load_file

from worldsim.core.config import CONFIG_DIR
from worldsim.core.errors import WorldsimError
from worldsim.diffusion.sampler import SamplerConfig
from worldsim.inference.checkpoint import load_checkpoint, save_codec
from worldsim.model.codec import Codec, CodecConfig
from worldsim.model.dit import WorldModelConfig
from worldsim.train.config import OptimConfig, TeacherConfig, TrainConfig
from worldsim.train.teacher_stage import train_teacher

ROOT = Path(__file__).resolve().parent.parent

TINY = WorldModelConfig(
    latent_channels=4, latent_size=(16, 16), patch=4, width=32, depth=2, heads=2, chunk_frames=2
)  # as configured: action_dim is derived
BUILT = dataclasses.replace(TINY, action_dim=9)  # as the stage builds it: keyboard_mouse over the built-in keys
PREVIEW = SamplerConfig(num_steps=2, mode="few_step")  # previews and the export's sampler


@pytest.fixture(scope="module")
def tiny_codec(tmp_path_factory):
    torch.manual_seed(0)
    path = tmp_path_factory.mktemp("codec") / "codec"
    save_codec(path, Codec(CodecConfig(latent_channels=4, downsample=4, base_channels=16)), {"test": True})
    return path


def _cfg(data, codec, out, steps, resume=False, schedule_steps=0, **teacher):
    return TrainConfig(
        schedule_steps=schedule_steps,
        stage="teacher",
        data=str(data),
        val_data=str(data),
        out=str(out),
        steps=steps,
        batch_size=4,
        bf16=False,
        log_every=1,
        val_every=2,
        val_batches=1,
        ckpt_every=100,
        resume=resume,
        model=TINY,
        teacher=TeacherConfig(codec_path=str(codec), preview_every=4, sampler=PREVIEW, **teacher),
        optim=OptimConfig(lr=1e-3, warmup_steps=2),
    )


def _overrides(data, codec, out, steps, resume=False):
    m = [f"model.{k}={v}" for k, v in vars(TINY).items() if k != "latent_size" and v is not None]
    m += ["model.latent_size=[16,16]"]
    return [
        "stage=teacher",
        f"data={data}",
        f"val_data={data}",
        f"out={out}",
        f"steps={steps}",
        "batch_size=4",
        "bf16=false",
        "log_every=1",
        "val_every=2",
        "val_batches=1",
        f"resume={str(resume).lower()}",
        "schedule_steps=4",
        f"teacher.codec_path={codec}",
        "teacher.preview_every=1000",
        *m,
    ]


def test_teacher_resume_is_bit_exact_and_exports_a_loadable_checkpoint(small_dataset, tiny_codec, tmp_path):
    train_teacher(_cfg(small_dataset.root, tiny_codec, tmp_path / "a", 4))
    train_teacher(_cfg(small_dataset.root, tiny_codec, tmp_path / "b", 2, schedule_steps=4))
    summary = train_teacher(_cfg(small_dataset.root, tiny_codec, tmp_path / "b", 4, resume=True))
    for name in ("weights", "ema", "optim"):
        a = load_file(str(tmp_path / "a" / "last" / f"{name}.safetensors"))
        b = load_file(str(tmp_path / "b" / "last" / f"{name}.safetensors"))
        assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a), name
    assert set(summary) >= {"val_loss", "rollout_psnr_db", "copy_last_psnr_db"}
    assert (tmp_path / "b" / "previews" / "step_000004.png").is_file()
    cfg, model, codec = load_checkpoint(tmp_path / "b" / "model")
    assert cfg.model == BUILT and cfg.provenance["step"] == 4 and len(cfg.conditioning.latent_mean) == 4
    assert cfg.sampler == PREVIEW  # the run's teacher.sampler, which the engine then plays with
    ema = load_file(str(tmp_path / "b" / "last" / "ema.safetensors"))
    assert all(torch.equal(ema[k], v) for k, v in model.state_dict().items())


def test_batch_workers_change_nothing_that_is_trained(small_dataset, tiny_codec, tmp_path):
    """Batches built ahead by worker processes, across a stop and resume, give the same weights."""
    train_teacher(_cfg(small_dataset.root, tiny_codec, tmp_path / "a", 4))
    for steps, resume in ((2, False), (4, True)):
        cfg = _cfg(small_dataset.root, tiny_codec, tmp_path / "b", steps, resume=resume, schedule_steps=4)
        cfg.num_workers = 2
        train_teacher(cfg)
    for name in ("weights", "ema"):
        a = load_file(str(tmp_path / "a" / "last" / f"{name}.safetensors"))
        b = load_file(str(tmp_path / "b" / "last" / f"{name}.safetensors"))
        assert all(torch.equal(a[k], b[k]) for k in a), name
    assert "num_workers" not in _cfg(small_dataset.root, tiny_codec, tmp_path / "x", 1).identity()


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the refusal on a machine without CUDA")
def test_a_device_this_machine_lacks_is_refused_before_slow_work(small_dataset, tiny_codec, tmp_path):
    for device, message in (("cuda", "sees no CUDA GPU"), ("tpu", "not a device name"), ("meta", "cpu or cuda")):
        cfg = _cfg(small_dataset.root, tiny_codec, tmp_path / "o", 1)
        cfg.device = device
        with pytest.raises(WorldsimError, match=message):
            train_teacher(cfg)
    assert not (tmp_path / "o").exists()


@pytest.mark.cuda
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU (run on a GPU machine)")
def test_a_cuda_run_matches_the_cpu_and_resumes_on_the_cpu(small_dataset, tiny_codec, tmp_path):
    """device=cuda trains the function the CPU trains (fp32, TF32 off), saves CPU-readable state,
    and a run stopped on the GPU resumes on the CPU."""
    torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = False
    train_teacher(_cfg(small_dataset.root, tiny_codec, tmp_path / "cpu", 4))
    for steps, resume, device in ((2, False, "cuda"), (4, True, "cpu")):
        cfg = _cfg(small_dataset.root, tiny_codec, tmp_path / "gpu", steps, resume=resume, schedule_steps=4)
        cfg.device, cfg.num_workers = device, 2
        train_teacher(cfg)
    losses = {
        r: [float(x.split(",")[1]) for x in (tmp_path / r / "log.csv").read_text().splitlines()[1:]]
        for r in ("cpu", "gpu")
    }
    assert len(losses["gpu"]) == 4 and torch.allclose(
        torch.tensor(losses["gpu"]), torch.tensor(losses["cpu"]), rtol=1e-3
    )
    from worldsim.model.dit import WorldModel

    torch.manual_seed(0)  # the run's initial weights (train_teacher seeds, then builds the model)
    init = WorldModel(BUILT).state_dict()
    a = load_file(str(tmp_path / "cpu" / "last" / "weights.safetensors"))
    b = load_file(str(tmp_path / "gpu" / "last" / "weights.safetensors"))
    apart = sum(float((a[k] - b[k]).pow(2).sum()) for k in a) ** 0.5
    moved = sum(float((a[k] - init[k]).pow(2).sum()) for k in a) ** 0.5
    assert moved > 0 and apart < 0.02 * moved, (apart, moved)
    load_checkpoint(tmp_path / "gpu" / "model")


def test_teacher_learns_on_a_tiny_config(small_dataset, tiny_codec, tmp_path):
    cfg = _cfg(small_dataset.root, tiny_codec, tmp_path / "l", 60, memory_prob=1.0)
    cfg.val_every = 60
    cfg.optim.lr = 3e-3
    cfg.teacher.preview_every = 1000
    train_teacher(cfg)
    rows = [r.split(",") for r in (tmp_path / "l" / "log.csv").read_text().splitlines()[1:]]
    first, last = sum(float(r[1]) for r in rows[:5]) / 5, sum(float(r[1]) for r in rows[-5:]) / 5
    assert last < 0.85 * first


def test_context_sigma_max_bounds_the_noise_of_context_chunks_only(small_dataset, tiny_codec, tmp_path):
    from worldsim.model.dit import WorldModel
    from worldsim.train.objectives import diffusion_forcing_loss

    model = WorldModel(BUILT)
    seen = []

    def spy(x, sigma, *rest):
        seen.append(sigma)
        return torch.zeros_like(x)

    x0 = torch.randn(64, 6, 4, 16, 16)
    actions, rays = torch.zeros(64, 6, 9), torch.zeros(64, 6, 6, 16, 16)
    for cap in (1.0, 0.3):
        g = torch.Generator().manual_seed(0)
        diffusion_forcing_loss(model, x0, actions, rays, g, net=spy, clean_context_prob=0.0, context_sigma_max=cap)
    full, capped = seen
    k = TINY.chunk_frames
    assert torch.equal(capped[:, -k:], full[:, -k:])  # the generated chunk keeps U(0, 1)
    assert torch.allclose(capped[:, :-k], 0.3 * full[:, :-k])  # the context is scaled into [0, 0.3)
    assert full[:, :-k].max() > 0.5
    # 1.0 (the default) stays out of the resume identity; anything else is in it, and out of range is refused
    cfg = _cfg(small_dataset.root, tiny_codec, tmp_path / "o", 1)
    assert "context_sigma_max" not in cfg.identity()["teacher"]
    capped_cfg = _cfg(small_dataset.root, tiny_codec, tmp_path / "o", 1, context_sigma_max=0.3)
    assert capped_cfg.identity()["teacher"]["context_sigma_max"] == 0.3
    with pytest.raises(WorldsimError, match=r"context_sigma_max must be in \(0, 1\], got 0.0"):
        train_teacher(_cfg(small_dataset.root, tiny_codec, tmp_path / "o", 1, context_sigma_max=0.0))


@pytest.mark.parametrize("name", ["diffusion_forcing", "teacher_forcing"])
def test_frame_weight_makes_the_loss_a_weighted_mean_of_per_frame_errors(name):
    from worldsim.model.dit import WorldModel
    from worldsim.train.objectives import OBJECTIVES

    model = WorldModel(BUILT)
    seen = {}

    def spy(x, sigma, *rest):  # predicts zero velocity, so each frame's error is |eps - x0|^2
        seen["x"], seen["sigma"] = x, sigma
        return torch.zeros_like(x)

    b, t = 8, 6
    x0 = torch.randn(b, t, 4, 16, 16)
    actions, rays = torch.zeros(b, t, 9), torch.zeros(b, t, 6, 16, 16)
    weight = torch.ones(b, t)
    weight[:, 4:], weight[0] = 5.0, 0.5
    kw = {"clean_context_prob": 0.0} if name == "diffusion_forcing" else {}  # every frame noisy
    losses = [
        OBJECTIVES[name](model, x0, actions, rays, torch.Generator().manual_seed(0), net=spy, frame_weight=w, **kw)
        for w in (weight, None)
    ]
    s = seen["sigma"][:, -t:, None, None, None]
    eps = (seen["x"][:, -t:] - (1 - s) * x0) / s
    per_frame = (eps - x0).pow(2).mean(dim=(2, 3, 4))
    assert torch.allclose(losses[0], (per_frame * weight).sum() / weight.sum(), rtol=1e-4)
    assert torch.allclose(losses[1], per_frame.mean(), rtol=1e-4)
    assert not torch.allclose(losses[0], losses[1], rtol=1e-3)


def test_dark_weight_is_checked_before_slow_work_enters_the_identity_when_on_and_trains(
    small_dataset, tiny_codec, tmp_path, capsys
):
    assert "dark_weight" not in _cfg(small_dataset.root, tiny_codec, tmp_path / "o", 1).identity()["teacher"]
    on = _cfg(small_dataset.root, tiny_codec, tmp_path / "d", 2, dark_weight=4.0, dark_mean=120.0)
    assert (on.identity()["teacher"]["dark_weight"], on.identity()["teacher"]["dark_mean"]) == (4.0, 120.0)
    assert "dark_weight_by" not in on.identity()["teacher"]  # "target": runs from before the option keep theirs
    by_context = _cfg(small_dataset.root, tiny_codec, tmp_path / "c", 2, dark_weight=4.0, dark_weight_by="context")
    assert by_context.identity()["teacher"]["dark_weight_by"] == "context"
    for bad in ({"dark_weight": 0.0}, {"dark_weight": 2.0, "dark_mean": 300.0}):
        with pytest.raises(WorldsimError, match=r"dark_weight must be > 0 and dark_mean in \(0, 255\]"):
            train_teacher(_cfg(small_dataset.root, tiny_codec, tmp_path / "o", 1, **bad))
    with pytest.raises(WorldsimError, match=r"unknown teacher.dark_weight_by 'contxt'; valid: context, target"):
        train_teacher(_cfg(small_dataset.root, tiny_codec, tmp_path / "o", 1, dark_weight=2.0, dark_weight_by="contxt"))
    assert not (tmp_path / "o").exists()
    assert "val_loss" in train_teacher(on)
    out = capsys.readouterr().out
    assert "dark frames (mean below 120): " in out and "weight 4 by the target's darkness" in out


def test_teacher_refuses_bad_input_before_slow_work(small_dataset, tiny_codec, tmp_path):
    from envs.record import RecordConfig, record

    with pytest.raises(WorldsimError, match="does not exist"):
        train_teacher(_cfg(tmp_path / "missing", tiny_codec, tmp_path / "o", 1))
    (tmp_path / "empty").mkdir()
    with pytest.raises(WorldsimError, match="holds no rollout dataset"):
        train_teacher(_cfg(tmp_path / "empty", tiny_codec, tmp_path / "o", 1))
    with pytest.raises(WorldsimError, match="not a codec folder"):
        train_teacher(_cfg(small_dataset.root, tmp_path / "nocodec", tmp_path / "o", 1))
    small = record(RecordConfig(num_episodes=1, episode_len=8, frame_size=[32, 32], out=str(tmp_path / "s32")))
    cfg = _cfg(small_dataset.root, tiny_codec, tmp_path / "o", 1)
    cfg.val_data = str(small.root)
    with pytest.raises(WorldsimError, match=r"validation frames are \(32, 32\)"):
        train_teacher(cfg)
    with pytest.raises(
        WorldsimError, match=r"model.latent_size is \(16, 16\), but \(32, 32\) frames encode to \(8, 8\)"
    ):
        train_teacher(_cfg(small.root, tiny_codec, tmp_path / "o", 1))
    cfg = _cfg(small_dataset.root, tiny_codec, tmp_path / "o", 1)
    cfg.model = dataclasses.replace(TINY, action_dim=5)  # derived, so a configured value must agree
    with pytest.raises(WorldsimError, match="model.action_dim is 5, encoder 'keyboard_mouse' gives 9"):
        train_teacher(cfg)
    with pytest.raises(WorldsimError, match="unknown teacher objective 'flow'"):
        train_teacher(_cfg(small_dataset.root, tiny_codec, tmp_path / "o", 1, objective="flow"))
    train_teacher(_cfg(small_dataset.root, tiny_codec, tmp_path / "r", 1))
    with pytest.raises(WorldsimError, match="already holds a run"):
        train_teacher(_cfg(small_dataset.root, tiny_codec, tmp_path / "r", 2))
    with pytest.raises(WorldsimError, match=r"config differs in \['teacher'\]"):
        train_teacher(_cfg(small_dataset.root, tiny_codec, tmp_path / "r", 2, resume=True, camera_drop=0.5))


def test_two_process_torchrun_trains_what_one_process_trains_on_the_same_global_batch(
    small_dataset, tiny_codec, tmp_path
):
    """Two ranks, each on half of every batch and its rows of the batch's noise, stopped and
    resumed, end where one process on the whole batch ends (up to float summation order). Every
    sample's context is clean (clean_context_prob 1), so each rank's loss averages as many noisy
    frames and DDP's mean of the ranks' gradients is the gradient of the global mean."""
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    run = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node=2", "-m", "worldsim.cli.train"]
    out, alone = tmp_path / "ddp", tmp_path / "one"
    same = ["teacher.clean_context_prob=1.0"]
    args = _overrides(small_dataset.root, tiny_codec, alone, 4) + same
    p = subprocess.run(
        [sys.executable, "-m", "worldsim.cli.train", *args],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert p.returncode == 0, p.stderr[-3000:]
    for steps, resume in ((2, False), (4, True)):
        args = _overrides(small_dataset.root, tiny_codec, out, steps, resume) + same
        p = subprocess.run(run + args, cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
        assert p.returncode == 0, p.stderr[-3000:]
        assert "ranks_in_sync 1" in p.stdout, p.stdout
        assert p.stdout.count("ranks_in_sync") == p.stdout.count("bf16 autocast") == 1  # only rank 0 reports
    rows = (out / "log.csv").read_text().splitlines()
    assert [r.split(",")[0] for r in rows[1:]] == ["1", "2", "3", "4"]
    assert '"step": 4' in (out / "last" / "state.json").read_text()
    torch.manual_seed(0)  # the run's initial weights (train_teacher seeds, then builds the model)
    from worldsim.model.dit import WorldModel

    init = WorldModel(BUILT).state_dict()
    a = load_file(str(out / "last" / "weights.safetensors"))
    b = load_file(str(alone / "last" / "weights.safetensors"))
    apart = sum(float((a[k] - b[k]).pow(2).sum()) for k in a) ** 0.5
    moved = sum(float((b[k] - init[k]).pow(2).sum()) for k in b) ** 0.5
    assert moved > 0 and apart < 1e-3 * moved, (apart, moved)
    # The export plays with the run's sampler, composed from the preset worldsim/configs/sampler/teacher.yaml.
    preset = OmegaConf.to_container(OmegaConf.load(CONFIG_DIR / "sampler" / "teacher.yaml"))
    assert json.loads((out / "model" / "config.json").read_text())["sampler"] == preset


_SHUTDOWN_PROBE = """
import os, sys, torch
from worldsim.train.distributed import init_distributed, shutdown, weights_in_sync, wrap
d = init_distributed("cpu")
net = wrap(torch.nn.Linear(3, 3), d)  # DDP, as the teacher stage trains
opt = torch.optim.AdamW(net.parameters())  # the first optimizer imports torch._dynamo
net(torch.ones(2, 3)).sum().backward()
opt.step()
assert weights_in_sync(net.module, d)
del net, opt
shutdown()
tasks = os.listdir("/proc/self/task")
gloo = [n for n in (open(f"/proc/self/task/{t}/comm").read().strip() for t in tasks) if "gloo" in n]
with open(os.path.join(sys.argv[1], f"rank{d.rank}.txt"), "w") as f:
    print(gloo, file=f)
sys.exit(1 if gloo else 0)
"""


@pytest.mark.skipif(not Path("/proc/self/task").is_dir(), reason="reads a process's threads from Linux's /proc")
def test_shutdown_joins_the_process_groups_threads_before_the_interpreter_exits(tmp_path):
    """After ``shutdown()`` no gloo thread is left: one that outlives it may free a collective's
    tensors while Python finalizes and abort the process (SIGABRT after a finished run, seen in
    the two-process DMD test about once in 5-25 runs). Deterministic where the crash is a race:
    it checks that the threads are gone, not that the race was lost."""
    probe = tmp_path / "probe.py"
    probe.write_text(_SHUTDOWN_PROBE)
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    run = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node=2", str(probe), str(tmp_path)]
    p = subprocess.run(run, cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    left = {r: (tmp_path / f"rank{r}.txt").read_text().strip() for r in (0, 1) if (tmp_path / f"rank{r}.txt").exists()}
    assert left == {0: "[]", 1: "[]"}, (left, p.stderr[-3000:])  # the gloo threads each rank still ran
    assert p.returncode == 0, p.stderr[-3000:]


def test_init_from_starts_a_new_run_from_earlier_weights(small_dataset, tiny_codec, tmp_path):
    from worldsim.model.dit import WorldModel
    from worldsim.train.distributed import Dist
    from worldsim.train.loop import TrainLoop

    train_teacher(_cfg(small_dataset.root, tiny_codec, tmp_path / "a", 3))
    state = {n: load_file(str(tmp_path / "a" / "last" / f"{n}.safetensors")) for n in ("weights", "ema")}
    exported = load_file(str(tmp_path / "a" / "model" / "model.safetensors"))
    for source, weights, ema in (("last", state["weights"], state["ema"]), ("model", exported, exported)):
        cfg = _cfg(small_dataset.root, tiny_codec, tmp_path / source, 2)
        cfg.init_from = str(tmp_path / "a" / source)
        loop = TrainLoop(cfg, WorldModel(BUILT), [], Dist())
        assert loop.step == 0
        assert all(torch.equal(weights[k], v) for k, v in loop.module.state_dict().items()), source
        assert all(torch.equal(ema[k], v) for k, v in loop.ema.state_dict().items()), source
        assert cfg.identity()["init_from"] == cfg.init_from  # resuming it needs the same init_from
    assert "init_from" not in _cfg(small_dataset.root, tiny_codec, tmp_path / "x", 2).identity()
    wider = _cfg(small_dataset.root, tiny_codec, tmp_path / "w", 2)
    wider.model = WorldModelConfig(**{**vars(BUILT), "width": 64})
    for bad, message in ((tmp_path / "a" / "model", "do not fit"), (tmp_path / "nothing", "is not a folder")):
        wider.init_from = str(bad)
        with pytest.raises(WorldsimError, match=message):
            TrainLoop(wider, WorldModel(wider.model), [], Dist())


def test_focus_options_are_checked_before_slow_work_and_enter_the_identity_when_on(small_dataset, tiny_codec, tmp_path):
    cfg = _cfg(small_dataset.root, tiny_codec, tmp_path / "o", 1)
    assert "focus_prob" not in cfg.identity()["teacher"] and "focus_keys" not in cfg.identity()["teacher"]
    on = _cfg(small_dataset.root, tiny_codec, tmp_path / "o", 1, focus_keys=["l"], focus_prob=0.5)
    assert on.identity()["teacher"]["focus_keys"] == ["l"] and on.identity()["teacher"]["focus_prob"] == 0.5
    with pytest.raises(WorldsimError, match=r"focus_prob must be in \[0, 1\], got 1.5"):
        train_teacher(_cfg(small_dataset.root, tiny_codec, tmp_path / "o", 1, focus_keys=["l"], focus_prob=1.5))
    with pytest.raises(WorldsimError, match=r"focus_keys must name keys of the data .* got \['L'\]"):
        train_teacher(_cfg(small_dataset.root, tiny_codec, tmp_path / "o", 1, focus_keys=["L"], focus_prob=0.5))
    assert not (tmp_path / "o").exists()  # refused before the run folder or the latents were written


def test_a_focused_run_trains_and_validates_on_uniform_clips(small_dataset, tiny_codec, tmp_path, capsys):
    from envs.record import RecordConfig, record
    from worldsim.train.teacher_data import follows_press

    # a key whose presses reach a generated chunk (frames 4-5 of a 6-frame clip) in the training data
    names = list(small_dataset.meta.key_names)
    keys = [small_dataset.load(e, ("keys",))["keys"] for e in range(len(small_dataset))]
    key = next(
        n
        for j, n in enumerate(names)
        if any(f[s + 4 : s + 6].any() for f in (follows_press(k[:, [j]]) for k in keys) for s in range(len(f) - 5))
    )
    # validation data that never presses a key: focus must not apply to it
    still = record(RecordConfig(num_episodes=1, episode_len=12, policy="look_around", out=str(tmp_path / "still")))
    assert not still.load(0, ("keys",))["keys"].any()
    cfg = _cfg(small_dataset.root, tiny_codec, tmp_path / "f", 2, focus_keys=[key], focus_prob=0.5)
    cfg.val_data = str(still.root)
    metrics = train_teacher(cfg)
    assert "val_loss" in metrics and f"training clips follow a press of ['{key}']" in capsys.readouterr().out


def test_stats_from_init_keeps_the_latent_statistics_the_weights_were_trained_with(small_dataset, tiny_codec, tmp_path):
    from envs.record import RecordConfig, record
    from worldsim.inference.checkpoint import read_checkpoint_config

    train_teacher(_cfg(small_dataset.root, tiny_codec, tmp_path / "a", 2))
    first = read_checkpoint_config(tmp_path / "a" / "model").conditioning
    other = record(RecordConfig(num_episodes=2, episode_len=24, seed=500, out=str(tmp_path / "other")))
    default = _cfg(other.root, tiny_codec, tmp_path / "default", 2)
    default.init_from = str(tmp_path / "a" / "model")
    train_teacher(default)
    own = read_checkpoint_config(tmp_path / "default" / "model").conditioning
    assert own.latent_mean != first.latent_mean  # by default the run's own data sets them
    assert "stats_from_init" not in default.identity()["teacher"]
    for source in ("model", "last"):  # an exported teacher, or a run's last/ beside its model/
        cfg = _cfg(other.root, tiny_codec, tmp_path / f"ft_{source}", 2, stats_from_init=True)
        cfg.init_from = str(tmp_path / "a" / source)
        assert cfg.identity()["teacher"]["stats_from_init"] is True
        train_teacher(cfg)
        kept = read_checkpoint_config(tmp_path / f"ft_{source}" / "model").conditioning
        assert (kept.latent_mean, kept.latent_std) == (first.latent_mean, first.latent_std), source
    with pytest.raises(WorldsimError, match="stats_from_init=true needs init_from"):
        train_teacher(_cfg(other.root, tiny_codec, tmp_path / "x", 2, stats_from_init=True))
    bad = _cfg(other.root, tiny_codec, tmp_path / "y", 2, stats_from_init=True)
    bad.init_from = str(tiny_codec)  # a codec folder records no latent statistics
    with pytest.raises(WorldsimError, match="is an exported teacher with latent statistics"):
        train_teacher(bad)
    assert not (tmp_path / "x").exists() and not (tmp_path / "y").exists()  # refused before slow work


def test_the_models_latent_shape_is_derived_from_the_codec_and_frame_size():
    from worldsim.train.teacher_stage import _derive_shapes

    codec = Codec(CodecConfig(latent_channels=4, downsample=4, base_channels=16))
    unset = TrainConfig(model=WorldModelConfig(patch=4, width=32, depth=2, heads=2))
    assert unset.model.latent_size is None and unset.model.latent_channels is None  # nothing configured
    derived = _derive_shapes(unset, codec, (64, 48)).model
    assert derived.latent_shape() == (4, 16, 12)
    agreeing = TrainConfig(model=dataclasses.replace(unset.model, latent_channels=4, latent_size=(16, 12)))
    assert _derive_shapes(agreeing, codec, (64, 48)).model == derived
    wrong = TrainConfig(model=dataclasses.replace(unset.model, latent_channels=8))
    with pytest.raises(WorldsimError, match="model.latent_channels is 8, the codec makes 4"):
        _derive_shapes(wrong, codec, (64, 48))
    with pytest.raises(WorldsimError, match="not divisible by the codec's downsample 4"):
        _derive_shapes(unset, codec, (66, 48))


def test_the_export_keeps_the_levels_its_data_played_when_every_dataset_agrees(small_dataset, tiny_codec, tmp_path):
    """A DOOM run's export starts its rollouts where the data played (meta.json's extra.levels);
    data from several levels records none."""
    import shutil

    from worldsim.inference.checkpoint import read_checkpoint_config

    def copy(name, levels):
        root = shutil.copytree(small_dataset.root, tmp_path / "data" / name)
        meta = json.loads((root / "meta.json").read_text())
        meta["extra"] = {**meta.get("extra", {}), "levels": levels}
        (root / "meta.json").write_text(json.dumps(meta))
        return root

    one = copy("one", {"wad": "freedoom2.wad", "map": "MAP01"})
    train_teacher(_cfg(one, tiny_codec, tmp_path / "one", 1))
    assert read_checkpoint_config(tmp_path / "one" / "model").levels == {"wad": "freedoom2.wad", "map": "MAP01"}
    copy("other", {"wad": "freedoom2.wad", "map": "MAP02"})
    train_teacher(_cfg(tmp_path / "data", tiny_codec, tmp_path / "both", 1))
    assert read_checkpoint_config(tmp_path / "both" / "model").levels == {}
    train_teacher(_cfg(small_dataset.root, tiny_codec, tmp_path / "builtin", 1))
    assert read_checkpoint_config(tmp_path / "builtin" / "model").levels == {}
