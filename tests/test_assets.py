"""Every shipped asset loads and still scores what its README and metadata claim."""

import json
from pathlib import Path

import pytest
from safetensors.torch import load_file

from envs.record import RecordConfig, record
from worldsim.inference.checkpoint import load_codec
from worldsim.train.codec_eval import codec_psnr

ASSETS = Path(__file__).resolve().parent.parent / "assets"


def test_every_asset_folder_has_a_readme_and_stays_small():
    folders = [p for p in ASSETS.iterdir() if p.is_dir()]
    assert folders, "no shipped assets"
    for folder in folders:
        assert (folder / "README.md").is_file(), folder
        size = sum(f.stat().st_size for f in folder.rglob("*") if f.is_file())
        assert size < 40e6, (folder, size)


def test_shipped_codec_reconstructs_unseen_worlds_as_claimed(tmp_path):
    folder = ASSETS / "codec_builtin_v1"
    codec = load_codec(folder)
    claimed = json.loads((folder / "codec.json").read_text())["provenance"]["heldout_psnr_mean_db"]
    # World seeds 95000+ are outside every range of the recipe the codec was trained on.
    record(RecordConfig(num_episodes=2, episode_len=32, seed=95000, out=str(tmp_path / "d"), preview=False))
    r = codec_psnr(str(folder), str(tmp_path / "d"))
    assert r["psnr_mean_db"] > claimed - 2.5, (r, claimed)
    assert codec.cfg.downsample == 4
    # A bf16 engine decodes under bf16 autocast (docs/engine.md, "Decode"): no visible loss.
    bf16 = codec_psnr(str(folder), str(tmp_path / "d"), bf16=True)
    assert abs(bf16["psnr_mean_db"] - r["psnr_mean_db"]) < 0.05, (bf16, r)


def test_shipped_codec_keeps_night_frames_brightness_and_contrast(tmp_path):
    """The decoder was fine-tuned so dark frames come back as bright and as contrasted as they
    were (the first decoder lost 1.2 of their mean pixel value): checked on unseen worlds."""
    record(
        RecordConfig(
            policy="explore_lights", num_episodes=2, episode_len=48, seed=95100, out=str(tmp_path / "d"), preview=False
        )
    )
    r = codec_psnr(str(ASSETS / "codec_builtin_v1"), str(tmp_path / "d"))
    assert r["dark_frames"] >= 10, r  # the light key was pressed: night frames to measure
    assert abs(r["dark_brightness_error"]) < 0.5 and abs(r["dark_contrast_error"]) < 0.5, r


def test_shipped_slim_decoder_reads_the_shipped_latents_within_its_tolerance(tmp_path):
    """codec_builtin_v1_slim (README: 64 / 48 / 32 decoder channels, 0.45 dB below the shipped
    decoder on held-out frames): its encoder is the shipped one bit for bit (the same latent
    space), and on two fresh episodes of unseen worlds it stays within 0.75 dB of the shipped
    decoder (the README's 0.45 over 2,048 frames, with room for 64 frames' spread)."""
    slim_folder, shipped_folder = ASSETS / "codec_builtin_v1_slim", ASSETS / "codec_builtin_v1"
    slim, shipped = load_codec(slim_folder), load_codec(shipped_folder)
    assert slim.cfg.decoder_widths() == [64, 48, 32] and shipped.cfg.decoder_widths() == [64, 64, 64]
    ref = shipped.state_dict()
    encoder = {k: v for k, v in slim.state_dict().items() if k.startswith("encoder.")}
    assert encoder and all(v.equal(ref[k]) for k, v in encoder.items())
    record(RecordConfig(num_episodes=2, episode_len=32, seed=95000, out=str(tmp_path / "d"), preview=False))
    ours = codec_psnr(str(slim_folder), str(tmp_path / "d"))["psnr_mean_db"]
    theirs = codec_psnr(str(shipped_folder), str(tmp_path / "d"))["psnr_mean_db"]
    assert theirs - 0.75 < ours, (ours, theirs)


def test_shipped_doom_decoder_reconstructs_held_out_levels_as_claimed(tmp_path):
    """codec_doom_v1 (README: 29.59 dB on doom_v1's Freedoom 1 validation frames, the built-in
    decoder 24.74) on two fresh episodes of Freedoom 1, whose levels it never trained on."""
    pytest.importorskip("vizdoom", reason="the [doom] extra is not installed")
    from envs.doom import DoomConfig

    doom = DoomConfig(wad="freedoom1.wad")
    record(RecordConfig(env="doom", doom=doom, num_episodes=2, episode_len=48, seed=3, out=str(tmp_path / "d")))
    ours = codec_psnr(str(ASSETS / "codec_doom_v1"), str(tmp_path / "d"))
    builtin = codec_psnr(str(ASSETS / "codec_builtin_v1"), str(tmp_path / "d"))
    assert ours["psnr_mean_db"] > 29.59 - 2.5, ours
    assert ours["psnr_mean_db"] > builtin["psnr_mean_db"] + 2.0, (ours, builtin)
    encoder = {k: v for k, v in load_codec(ASSETS / "codec_doom_v1").state_dict().items() if k.startswith("encoder.")}
    shipped = load_codec(ASSETS / "codec_builtin_v1").state_dict()
    assert encoder and all(v.equal(shipped[k]) for k, v in encoder.items())  # the same latent space


def _first8_psnr(engine, folder, seeds):
    """(claimed, measured): the mean PSNR of the first 8 generated frames in the asset's
    ``eval/metrics.json``, and over explore rollouts from the spawn of each world seed (outside the
    recipes' and the evaluation's seeds), on the checkpoint's own world and levels."""
    import numpy as np

    from worldsim.data.metrics import psnr
    from worldsim.data.policies import make_policy
    from worldsim.eval.evaluate import rollout_against, world_rollout

    claimed = json.loads((folder / "eval" / "metrics.json").read_text())
    scores = []
    for seed in seeds:
        n = engine.context_frames
        acts = make_policy("explore", engine.key_names, engine.controller.cfg).actions(
            n + 8, np.random.default_rng(seed)
        )
        arrays = world_rollout(engine, seed, acts.keys, acts.mouse)
        gen, gt = rollout_against(engine, arrays, 8)
        scores.append(psnr(gen, gt).mean())
    return float(np.mean(claimed["by_frame"]["psnr_db"][:8])), float(np.mean(scores))


def test_shipped_teacher_loads_and_still_scores_as_claimed_on_unseen_worlds():
    from worldsim import load_engine

    folder = ASSETS / "teacher_builtin_v1"
    engine = load_engine(folder, bf16=False)  # as the claimed metrics were measured
    assert engine.frame_size == (64, 64) and engine.cfg.action_encoder["name"] == "keyboard_mouse"
    claimed, measured = _first8_psnr(engine, folder, (97000, 97001))
    assert measured > claimed - 4.0, (measured, claimed)


@pytest.mark.parametrize(
    "name, step, num_steps",
    [
        ("student_builtin_v2", 500, 2),
        ("student_builtin_v3", 300, 2),
        ("student_builtin_v4", 300, 2),
        ("student_builtin_v5", 200, 1),
        ("student_builtin_v6", 200, 1),
        ("student_builtin_v7", 200, 1),
        ("student_builtin_v8", 200, 1),
        ("student_builtin_v9", 200, 1),
        ("student_builtin_v10", 200, 1),
        ("student_builtin_v11", 200, 1),
        ("student_revisit_v1", 300, 1),
    ],
)
def test_shipped_dmd_student_loads_and_still_scores_as_claimed_on_unseen_worlds(name, step, num_steps):
    """student_builtin_v2, v3 and v4 (READMEs; v4 the default until v8): 2-step students of
    teacher_builtin_v2, and v5 to v11 its 1-step students (v8 the default until v10; v9, v10,
    v11 and student_revisit_v1 at 30 frames/s, their claims measured on worlds played at that
    rate), playing with their context noised to 0.4, as they were trained and evaluated."""
    from worldsim import load_engine

    folder = ASSETS / name
    engine = load_engine(folder, bf16=False)  # as the claimed metrics were measured
    sampler = engine.cfg.sampler
    assert (sampler.mode, sampler.num_steps, sampler.context_sigma) == ("few_step", num_steps, 0.4)
    assert engine.cfg.provenance["stage"] == "student_dmd" and engine.cfg.provenance["step"] == step
    assert engine.fps == (
        30.0
        if name in ("student_builtin_v9", "student_builtin_v10", "student_builtin_v11", "student_revisit_v1")
        else 15.0
    )
    claimed, measured = _first8_psnr(engine, folder, (97000, 97001))
    assert measured > claimed - 4.0, (measured, claimed)


def test_a_student_trained_with_still_presses_plays_without_retrieval_across_a_press():
    """The bank's press rule follows the checkpoint (MemoryConfig.retrieve_across_press None):
    v7's, v8's and v10's DMD stages gave no retrieved chunk from a press on, v4's never pressed in its still
    rollouts, and each is evaluated as it was trained."""
    from worldsim import load_engine

    rules = {}
    for name in ("student_builtin_v7", "student_builtin_v8", "student_builtin_v10", "student_builtin_v4"):
        cfg = load_engine(ASSETS / name, bf16=False, memory="on").memory_cfg
        assert cfg is not None
        rules[name] = cfg.retrieve_across_press
    assert rules == {
        "student_builtin_v7": False,
        "student_builtin_v8": False,
        "student_builtin_v10": False,
        "student_builtin_v4": True,
    }


def test_play_rollout_and_eval_default_to_the_shipped_distilled_student():
    """play.py (its built-in world), worldsim-rollout and worldsim-eval load one default,
    ``DEFAULT_CHECKPOINT`` (worldsim-bench's argparse defaults name the same constant), when no
    checkpoint is given, and it is the 1-step DMD student at 30 frames/s with the slim decoder
    (assets/student_builtin_v11, README: v10's network, codec_builtin_v1_slim's codec) that plays
    without retrieval across a press of the light key (it was trained with still players'
    presses); worldsim-eval's defaults follow its rate to the 30 frames/s held-out data."""
    from worldsim import load_engine
    from worldsim.cli.play import SHIPPED_MODELS
    from worldsim.cli.rollout import RolloutConfig
    from worldsim.core.config import DEFAULT_CHECKPOINT
    from worldsim.eval.evaluate import EvalConfig, at_model_rate
    from worldsim.inference.checkpoint import read_checkpoint_config
    from worldsim.inference.engine import trained_with_presses
    from worldsim.memory.bank import MemoryConfig

    assert RolloutConfig().checkpoint == EvalConfig().checkpoint == SHIPPED_MODELS["builtin"] == DEFAULT_CHECKPOINT
    assert DEFAULT_CHECKPOINT == "assets/student_builtin_v11"
    cfg = read_checkpoint_config(DEFAULT_CHECKPOINT)
    assert cfg.provenance["stage"] == "student_dmd" and cfg.sampler.num_steps == 1 and cfg.chunk_frames == 2
    assert cfg.controller.fps == 30.0
    # v10's network bit for bit, the slim decoder's codec bit for bit
    for ours, theirs in (("model", "student_builtin_v10"), ("codec", "codec_builtin_v1_slim")):
        a = load_file(str(ASSETS / DEFAULT_CHECKPOINT.split("/")[-1] / f"{ours}.safetensors"))
        b = load_file(str(ASSETS / theirs / f"{ours}.safetensors"))
        assert a.keys() == b.keys() and all(a[k].equal(b[k]) for k in a), (ours, theirs)
    settled = at_model_rate(EvalConfig(), load_engine(DEFAULT_CHECKPOINT, bf16=False))
    assert (settled.data, settled.horizon, settled.turn_dx) == ("data/builtin_v1_30fps/val", 64, 6.0)
    assert trained_with_presses(cfg, MemoryConfig().state_key)  # so it plays without retrieval across a press


def test_play_keeps_a_memory_bank_for_a_model_by_default():
    """play.py's default ``memory=auto`` plays a model with the default bank (the anchor that holds
    a still player's view, docs/memory.md) and headless play's rollout gets it too; ``memory=off``
    turns it off."""
    from worldsim.cli.play import PlayConfig, engine_options, memory_setting
    from worldsim.memory.bank import MemoryConfig

    pc = PlayConfig(checkpoint="assets/student_builtin_v4")
    assert pc.memory == "auto" and memory_setting(pc) == "on" and memory_setting(pc, ground_truth=True) == "off"
    assert engine_options(pc)["memory"] == MemoryConfig()
    off = PlayConfig(checkpoint="assets/student_builtin_v4", memory="off")
    assert memory_setting(off) == "off" and engine_options(off)["memory"] is None


def test_shipped_doom_teacher_starts_on_its_level_and_still_scores_as_claimed():
    """teacher_doom_v1 (README): trained on Freedoom 2's MAP01, which its config.json records as
    its levels, so its rollouts start there; on fresh explore episodes of that level (seeds
    outside the recipe's) its first 8 frames score what its evaluation claims, within 2 dB."""
    pytest.importorskip("vizdoom", reason="the [doom] extra is not installed")
    from worldsim import load_engine

    folder = ASSETS / "teacher_doom_v1"
    engine = load_engine(folder, bf16=False)  # as the claimed metrics were measured
    assert engine.cfg.env == "doom" and engine.cfg.levels == {"wad": "freedoom2.wad", "map": "MAP01"}
    claimed, measured = _first8_psnr(engine, folder, (97000, 97001))
    assert measured > claimed - 2.0, (measured, claimed)
