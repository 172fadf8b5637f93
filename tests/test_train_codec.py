import json

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

from envs.starts import world_start
from worldsim.core.errors import WorldsimError
from worldsim.model.codec import Codec, CodecConfig
from worldsim.train.codec_stage import train_codec
from worldsim.train.config import OptimConfig, TrainConfig


def _cfg(data, out, steps, resume=False, schedule_steps=0):
    return TrainConfig(
        schedule_steps=schedule_steps,
        data=str(data),
        val_data=str(data),
        out=str(out),
        steps=steps,
        batch_size=4,
        bf16=False,
        log_every=1,
        val_every=3,
        val_batches=1,
        ckpt_every=100,
        resume=resume,
        codec=CodecConfig(latent_channels=4, downsample=4, base_channels=16),
        optim=OptimConfig(warmup_steps=2),
    )


def test_codec_resume_is_bit_exact(small_dataset, tmp_path):
    train_codec(_cfg(small_dataset.root, tmp_path / "a", 6))
    # The first leg ends after warm-up and fixes the run's schedule; the resumed command keeps it.
    train_codec(_cfg(small_dataset.root, tmp_path / "b", 3, schedule_steps=6))
    # A run killed between checkpoints has logged steps after its last save; the resume replays them.
    with open(tmp_path / "b" / "log.csv", "a") as f:
        f.write("4,9.99999,0,0,\r\n")
    train_codec(_cfg(small_dataset.root, tmp_path / "b", 6, resume=True))
    for name in ("weights", "ema", "optim"):
        a = load_file(str(tmp_path / "a" / "last" / f"{name}.safetensors"))
        b = load_file(str(tmp_path / "b" / "last" / f"{name}.safetensors"))
        assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a), name
    log = (tmp_path / "b" / "log.csv").read_text().splitlines()
    assert log[0].startswith("step,loss") and [int(r.split(",")[0]) for r in log[1:]] == [1, 2, 3, 4, 5, 6]
    assert "9.99999" not in "".join(log)


def test_codec_training_reduces_loss_and_reports_psnr(small_dataset, tmp_path):
    summary = train_codec(_cfg(small_dataset.root, tmp_path / "c", 30))
    rows = [r.split(",") for r in (tmp_path / "c" / "log.csv").read_text().splitlines()[1:]]
    assert float(rows[-1][1]) < 0.7 * float(rows[0][1])
    assert summary["val_psnr_db"] > 5.0


def test_codec_training_refuses_bad_input(small_dataset, tmp_path):
    with pytest.raises(WorldsimError, match="does not exist"):
        train_codec(_cfg(tmp_path / "missing", tmp_path / "o", 1))
    (tmp_path / "empty").mkdir()
    with pytest.raises(WorldsimError, match="holds no rollout dataset"):
        train_codec(_cfg(tmp_path / "empty", tmp_path / "o", 1))
    train_codec(_cfg(small_dataset.root, tmp_path / "r", 1))
    with pytest.raises(WorldsimError, match="already holds a run"):
        train_codec(_cfg(small_dataset.root, tmp_path / "r", 2))
    other = _cfg(small_dataset.root, tmp_path / "r", 2, resume=True)
    other.optim.lr = 5e-4
    with pytest.raises(WorldsimError, match=r"config differs in \['optim'\]"):
        train_codec(other)


def test_train_cli_runs_a_stage_and_names_bad_input(small_dataset, tmp_path):
    import subprocess
    import sys
    from pathlib import Path

    root = Path(__file__).resolve().parent.parent

    def run(*args):
        return subprocess.run(
            [sys.executable, "-m", "worldsim.cli.train", *args], cwd=root, capture_output=True, text=True, timeout=300
        )

    ok = run(
        f"data={small_dataset.root}",
        "val_data=null",
        f"out={tmp_path / 'o'}",
        "steps=2",
        "batch_size=2",
        "codec.base_channels=16",
        "codec.latent_channels=4",
    )
    assert ok.returncode == 0, ok.stderr
    assert "codec: " in ok.stdout and (tmp_path / "o" / "last" / "weights.safetensors").exists()
    bad = run("stage=teacherr", f"out={tmp_path / 'x'}")
    # Stages are hydra presets (worldsim/configs/stage/): one line names the bad choice and lists the valid ones.
    assert bad.returncode == 2 and bad.stderr.count("\n") == 1 and "Could not find 'stage/teacherr'" in bad.stderr
    names = ("codec", "teacher", "ode_pairs", "student_ode", "student_dmd")
    assert all(f" {name}," in bad.stderr or bad.stderr.endswith(f" {name}\n") for name in names)
    missing = run(f"data={tmp_path / 'nope'}", f"out={tmp_path / 'y'}")
    assert missing.returncode == 2 and "does not exist" in missing.stderr and "Traceback" not in missing.stderr


def test_training_writes_a_loadable_ema_codec(small_dataset, tmp_path):
    from worldsim.inference.checkpoint import load_codec

    train_codec(_cfg(small_dataset.root, tmp_path / "e", 3))
    codec = load_codec(tmp_path / "e" / "codec")
    ema = load_file(str(tmp_path / "e" / "last" / "ema.safetensors"))
    assert all(torch.equal(v, ema[k]) for k, v in codec.state_dict().items())
    (tmp_path / "e" / "codec" / "codec.safetensors").write_bytes(b"broken")
    with pytest.raises(WorldsimError, match="not the file exported with codec.json.*changed or damaged"):
        load_codec(tmp_path / "e" / "codec")
    with pytest.raises(WorldsimError, match="not a codec folder"):
        load_codec(tmp_path)


def test_sigterm_saves_the_run_like_ctrl_c(small_dataset, tmp_path):
    import signal
    import subprocess
    import sys
    import time
    from pathlib import Path

    root = Path(__file__).resolve().parent.parent
    out = tmp_path / "t"
    args = [f"data={small_dataset.root}", "val_data=null", f"out={out}", "steps=100000", "ckpt_every=100000"]
    args += ["log_every=1", "batch_size=2", "codec.base_channels=16", "codec.latent_channels=4"]
    proc = subprocess.Popen(
        [sys.executable, "-m", "worldsim.cli.train", *args],
        cwd=root,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    deadline = time.time() + 120
    while (
        time.time() < deadline
        and len((out / "log.csv").read_text().splitlines() if (out / "log.csv").exists() else []) < 4
    ):
        time.sleep(0.5)
    proc.send_signal(signal.SIGTERM)
    out_text, err = proc.communicate(timeout=60)
    assert proc.returncode == 130, err[-2000:]
    assert "interrupted at step" in out_text
    step = json.loads((out / "last" / "state.json").read_text())["step"]
    assert step >= 3


def test_reconstruction_loss_weights_dark_frames_and_moments():
    import torch.nn.functional as F

    from worldsim.train.codec_stage import reconstruction_loss
    from worldsim.train.config import CodecTrainConfig

    g = torch.Generator().manual_seed(0)
    x = torch.rand(2, 3, 8, 8, generator=g) * 0.2 - 0.1  # mean about 127: light
    x[1] -= 0.85  # mean about 19: dark
    recon = x + 0.05 * torch.randn(2, 3, 8, 8, generator=g)
    plain = reconstruction_loss(recon, x, CodecTrainConfig())
    assert torch.allclose(plain, F.l1_loss(recon, x) + F.mse_loss(recon, x))
    per = [(F.l1_loss(recon[i], x[i]) + F.mse_loss(recon[i], x[i])).item() for i in range(2)]
    weighted = reconstruction_loss(recon, x, CodecTrainConfig(dark_weight=3.0))
    assert weighted.item() == pytest.approx((per[0] + 3 * per[1]) / 4)
    # A frame brightened by 0.1 everywhere: its moment error is 0.1 (mean) + 0 (contrast).
    moments = reconstruction_loss(x + 0.1, x, CodecTrainConfig(moment_weight=2.0))
    assert moments.item() == pytest.approx(0.1 + 0.01 + 2 * 0.1, rel=1e-4)


def test_decoder_only_finetune_keeps_the_encoder_bit_for_bit(small_dataset, tmp_path):
    from worldsim.train.config import CodecTrainConfig

    train_codec(_cfg(small_dataset.root, tmp_path / "base", 3))
    base = load_file(str(tmp_path / "base" / "codec" / "codec.safetensors"))
    cfg = _cfg(small_dataset.root, tmp_path / "dec", 4)
    cfg.init_from = str(tmp_path / "base" / "codec")
    cfg.codec_train = CodecTrainConfig(freeze_encoder=True, dark_weight=4.0, moment_weight=1.0)
    train_codec(cfg)
    for f in ("codec/codec.safetensors", "last/weights.safetensors", "last/ema.safetensors"):
        tuned = load_file(str(tmp_path / "dec" / f))
        assert all(torch.equal(tuned[k], v) for k, v in base.items() if k.startswith("encoder.")), f
        assert any(not torch.equal(tuned[k], v) for k, v in base.items() if k.startswith("decoder.")), f
    # The options are part of the run's identity: resuming with other weights is refused.
    other = _cfg(small_dataset.root, tmp_path / "dec", 6, resume=True)
    other.init_from = cfg.init_from
    other.codec_train = CodecTrainConfig(freeze_encoder=True, dark_weight=2.0, moment_weight=1.0)
    with pytest.raises(WorldsimError, match=r"config differs in \['codec_train'\]"):
        train_codec(other)


def test_a_slimmer_decoder_trains_on_the_kept_encoder_and_drops_into_a_checkpoint(small_dataset, tmp_path):
    """``codec.decoder_channels`` with ``freeze_encoder``: the encoder comes whole from
    ``init_from`` and stays bit for bit, the decoder of other widths starts from scratch; then
    ``with_codec`` puts it into a model folder that plays, and refuses a codec whose encoder differs."""
    from tests.test_engine import make_tiny_checkpoint
    from worldsim import load_engine
    from worldsim.inference.checkpoint import load_checkpoint, save_codec, with_codec
    from worldsim.train.config import CodecTrainConfig

    ck = make_tiny_checkpoint(tmp_path / "model")
    _, _, codec = load_checkpoint(ck)
    save_codec(tmp_path / "base", codec, {"stage": "codec"})
    base = load_file(str(tmp_path / "base" / "codec.safetensors"))
    cfg = _cfg(small_dataset.root, tmp_path / "slim", 3)
    cfg.init_from = str(tmp_path / "base")
    cfg.codec = CodecConfig(latent_channels=4, downsample=4, base_channels=16, decoder_channels=[16, 8, 8])
    cfg.codec_train = CodecTrainConfig(freeze_encoder=True)
    train_codec(cfg)
    slim = load_file(str(tmp_path / "slim" / "codec" / "codec.safetensors"))
    assert all(torch.equal(slim[k], v) for k, v in base.items() if k.startswith("encoder."))
    assert slim["decoder.3.weight"].shape == (8, 16, 3, 3) and slim["decoder.10.weight"].shape == (3, 8, 3, 3)
    with_codec(ck, tmp_path / "slim" / "codec", tmp_path / "model_slim")
    engine = load_engine(tmp_path / "model_slim")
    assert engine.codec.cfg.decoder_widths() == [16, 8, 8]
    start = world_start(0, engine.context_frames, engine.key_names, engine.frame_size)
    engine.reset(*start.arrays())
    frames = engine.step(np.zeros((2, len(engine.key_names)), np.uint8), np.zeros((2, 2), np.float32)).frames
    assert frames.shape == (2, 64, 64, 3)
    # A codec trained with its encoder free encodes other latents: refused, naming a tensor.
    train_codec(_cfg(small_dataset.root, tmp_path / "free", 2))
    with pytest.raises(WorldsimError, match=r"encodes other latents than .* \(encoder\.0\.weight differs\)"):
        with_codec(ck, tmp_path / "free" / "codec", tmp_path / "bad")
    assert not (tmp_path / "bad").exists()
    with pytest.raises(WorldsimError, match="model_slim exists: with_codec writes a new model folder"):
        with_codec(ck, tmp_path / "slim" / "codec", tmp_path / "model_slim")
    ck_slim, _, _ = load_checkpoint(tmp_path / "model_slim")
    assert ck_slim.provenance["codec_from"]["provenance"]["stage"] == "codec"
    with pytest.raises(ValueError, match=r"decoder_channels must be 3 multiples of 8 .* got \[16, 12\]"):
        Codec(CodecConfig(latent_channels=4, base_channels=16, decoder_channels=[16, 12]))


def test_a_sliced_decoder_keeps_the_channels_the_next_layer_reads_most(small_dataset, tmp_path):
    """``codec_train.decoder_init: slice``: at each scale the kept channels are those the layer
    reading the scale's stream weighs most (L1 over its input channel), and every tensor of the
    narrower decoder is the init's at those channels, written out per tensor here; the encoder is
    the init's; a decoder of the init's widths is the init's decoder; an init narrower than the
    new decoder, or with another encoder, is returned as it is (init_from then refuses it)."""
    from worldsim.train.codec_stage import DECODER_INITS

    torch.manual_seed(0)
    full = Codec(CodecConfig(latent_channels=4, downsample=4, base_channels=16)).state_dict()
    narrow = Codec(CodecConfig(latent_channels=4, downsample=4, base_channels=16, decoder_channels=[8, 16, 8]))
    cut = DECODER_INITS["slice"](narrow)(full)

    def kept(reader, width):
        return full[f"decoder.{reader}.weight"].abs().sum((0, 2, 3)).topk(width).indices.sort().values

    s0, s1, s2 = kept(3, 8), kept(6, 16), kept(10, 8)  # scale k's stream is read by decoder.3, .6, .10
    assert torch.equal(s1, torch.arange(16))
    expect = {"decoder.0.weight": full["decoder.0.weight"][s0], "decoder.0.bias": full["decoder.0.bias"][s0]}
    for conv, s, prev in ((0, s0, None), (3, s1, s0), (6, s2, s1)):
        w = full[f"decoder.{conv}.weight"][s]
        expect[f"decoder.{conv}.weight"] = w if prev is None else w[:, prev]
        expect[f"decoder.{conv}.bias"] = full[f"decoder.{conv}.bias"][s]
        for name in ("conv1", "conv2"):
            expect[f"decoder.{conv + 1}.{name}.weight"] = full[f"decoder.{conv + 1}.{name}.weight"][s][:, s]
            expect[f"decoder.{conv + 1}.{name}.bias"] = full[f"decoder.{conv + 1}.{name}.bias"][s]
        for name in ("weight", "bias"):
            expect[f"decoder.{conv + 1}.norm.{name}"] = full[f"decoder.{conv + 1}.norm.{name}"][s]
    expect |= {f"decoder.8.{n}": full[f"decoder.8.{n}"][s2] for n in ("weight", "bias")}
    expect |= {"decoder.10.weight": full["decoder.10.weight"][:, s2], "decoder.10.bias": full["decoder.10.bias"]}
    assert set(cut) == set(narrow.state_dict()) and sorted(k for k in cut if k.startswith("decoder.")) == sorted(expect)
    assert all(torch.equal(cut[k], v) for k, v in expect.items())
    assert all(torch.equal(cut[k], full[k]) for k in cut if k.startswith("encoder."))
    narrow.load_state_dict(cut)  # the shapes fit
    same = DECODER_INITS["slice"](Codec(CodecConfig(latent_channels=4, downsample=4, base_channels=16)))(full)
    assert all(torch.equal(same[k], v) for k, v in full.items())
    small = Codec(
        CodecConfig(latent_channels=4, downsample=4, base_channels=16, decoder_channels=[8, 8, 8])
    ).state_dict()
    assert DECODER_INITS["slice"](narrow)(small) is small  # 8 channels cannot give 16
    other = {**full, "encoder.0.weight": torch.zeros(16, 3, 5, 5)}
    assert DECODER_INITS["slice"](narrow)(other) is other
    # Through the stage: a step at learning rate 0 exports the sliced start.
    from worldsim.inference.checkpoint import save_codec
    from worldsim.train.config import CodecTrainConfig

    base = Codec(CodecConfig(latent_channels=4, downsample=4, base_channels=16))
    base.load_state_dict(full)
    save_codec(tmp_path / "base", base, {"stage": "codec"})
    cfg = _cfg(small_dataset.root, tmp_path / "sliced", 1)
    cfg.init_from, cfg.codec = str(tmp_path / "base"), narrow.cfg
    cfg.codec_train = CodecTrainConfig(freeze_encoder=True, decoder_init="slice")
    cfg.optim = OptimConfig(lr=0.0, warmup_steps=0)
    train_codec(cfg)
    exported = load_file(str(tmp_path / "sliced" / "codec" / "codec.safetensors"))
    assert all(torch.equal(exported[k], v) for k, v in cut.items())


def test_codec_train_options_refuse_bad_values(small_dataset, tmp_path):
    from worldsim.train.config import CodecTrainConfig

    cfg = _cfg(small_dataset.root, tmp_path / "f", 1)
    cfg.codec_train = CodecTrainConfig(freeze_encoder=True)
    with pytest.raises(WorldsimError, match="freeze_encoder needs init_from"):
        train_codec(cfg)
    for bad in (CodecTrainConfig(dark_weight=0.0), CodecTrainConfig(moment_weight=-1.0)):
        cfg.codec_train = bad
        with pytest.raises(WorldsimError, match="dark_weight must be > 0"):
            train_codec(cfg)
    cfg.codec_train = CodecTrainConfig(decoder_init="prune")
    with pytest.raises(WorldsimError, match="decoder_init must be one of scratch, slice, got 'prune'"):
        train_codec(cfg)
