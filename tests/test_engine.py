"""The engine API of design §5 on a tiny random checkpoint: shapes, poses, timings, save/restore."""

import json

import numpy as np
import pytest
import torch
from hydra import compose, initialize_config_dir

from envs.starts import world_start
from worldsim import load_engine
from worldsim.core.actions import make_action_encoder
from worldsim.core.camera import intrinsics_from_fov, make_c2w
from worldsim.core.config import CONFIG_DIR
from worldsim.core.controller import CameraControllerConfig, CameraState
from worldsim.core.errors import WorldsimError
from worldsim.diffusion.sampler import SamplerConfig, SamplerOverrides
from worldsim.inference import checkpoint as checkpoint_module
from worldsim.inference.checkpoint import (
    CheckpointConfig,
    CheckpointDefaultsWarning,
    read_checkpoint_config,
    save_checkpoint,
)
from worldsim.inference.context import ConditioningConfig
from worldsim.model.codec import Codec, CodecConfig
from worldsim.model.dit import WorldModel, WorldModelConfig

KEYS = ["w", "a", "s", "d", "space", "left shift", "l"]


def make_tiny_checkpoint(
    path,
    seed=0,
    keys=KEYS,
    controller=None,
    camera_reference="latest",
    encoder="keyboard_mouse",
    env="builtin",
    levels=None,
    chunk_frames=2,
    sampler=None,
    memory_adapter_rank=0,
):
    torch.manual_seed(seed)
    enc = make_action_encoder(encoder, keys)
    mcfg = WorldModelConfig(
        latent_channels=4,
        latent_size=(16, 16),
        patch=4,
        width=32,
        depth=2,
        heads=2,
        chunk_frames=chunk_frames,
        action_dim=enc.dim,
        memory_embedding=memory_adapter_rank > 0,
        memory_adapter_rank=memory_adapter_rank,
    )
    k = intrinsics_from_fov(60.0, 64, 64)
    model = WorldModel(mcfg)
    for p in model.parameters():  # random, not zero-init, so every path matters
        torch.nn.init.normal_(p, std=0.02)
    cfg = CheckpointConfig(
        model=mcfg,
        codec=CodecConfig(latent_channels=4, downsample=4, base_channels=16),
        sampler=sampler or SamplerConfig(num_steps=2, mode="euler"),
        action_encoder=enc.spec(),
        frame_size=(64, 64),
        conditioning=ConditioningConfig(
            2, 8.0, (0.0,) * 4, (1.0,) * 4, tuple(k.flatten().tolist()), camera_reference=camera_reference
        ),
        controller=controller or CameraControllerConfig(),
        env=env,
        levels=levels or {},
    )
    save_checkpoint(path, cfg, model, Codec(cfg.codec))
    return path


@pytest.fixture(scope="module")
def tiny_ckpt(tmp_path_factory):
    return make_tiny_checkpoint(tmp_path_factory.mktemp("ck") / "tiny")


def _world_reset(eng, seed):
    """Reset on the spawn view of world ``seed`` held still (what play.py starts from)."""
    start = world_start(seed, eng.context_frames, eng.key_names, eng.frame_size)
    eng.reset(*start.arrays())
    return start.frames


def _inputs(k, key=None, dx=0.0):
    keys = np.zeros((k, len(KEYS)), np.uint8)
    if key:
        keys[:, KEYS.index(key)] = 1
    return keys, np.tile(np.array([dx, 0.0], np.float32), (k, 1))


def test_camera_state_round_trips_through_c2w():
    for yaw, pitch in ((0.3, -0.2), (-2.5, 0.7), (3.0, 0.0)):
        st = CameraState.from_c2w(make_c2w(np.array([1.0, 2.0, 3.0]), yaw, pitch))
        assert np.allclose([st.yaw_rad, st.pitch_rad], [yaw, pitch], atol=1e-5)
        np.testing.assert_allclose(st.position, [1, 2, 3], atol=1e-6)


def test_engine_steps_from_a_world_start_and_moves_the_camera_by_the_controller(tiny_ckpt):
    eng = load_engine(tiny_ckpt)
    assert eng.key_names == KEYS and eng.chunk_frames == 2 and eng.frame_size == (64, 64)
    ctx = _world_reset(eng, 3)
    assert ctx.shape == (eng.context_frames, 64, 64, 3)
    start = eng.c2w.copy()
    chunk = eng.step(*_inputs(2, "w"))
    assert chunk.frames.shape == (2, 64, 64, 3) and chunk.frames.dtype == np.uint8
    np.testing.assert_array_equal(chunk.c2w[-1], eng.c2w)  # the chunk carries its own poses
    moved = eng.c2w[:3, 3] - start[:3, 3]
    assert np.dot(moved, start[:3, 2]) == pytest.approx(2 * 6.0 / 15.0, rel=1e-5)  # forward, 2 frames at 6 m/s
    timings = eng.step(*_inputs(2, dx=40.0)).timings
    assert CameraState.from_c2w(eng.c2w).yaw_rad > CameraState.from_c2w(start).yaw_rad  # mouse right turns right
    assert timings.denoise_s > 0 and timings.context_s > 0 and timings.decode_s > 0 and eng.steps == 4
    assert timings.cache_write_s < timings.denoise_s  # rebuild writes nothing after denoising


def test_the_engine_decodes_channels_last_in_its_own_precision(tiny_ckpt):
    """A step's decode runs on channels-last tensors (the codec's weights too) and under the
    engine's autocast: bf16 convolutions when the engine is bf16, fp32 otherwise; the frames of
    the two decodes of the same latents differ by rounding only."""
    frames = {}
    for bf16 in (False, True):
        eng = load_engine(tiny_ckpt, bf16=bf16)
        convs = [m for m in eng.codec.decoder.modules() if isinstance(m, torch.nn.Conv2d)]
        assert all(c.weight.is_contiguous(memory_format=torch.channels_last) for c in convs)
        seen: list[tuple[bool, torch.dtype]] = []

        def record(m, i, o, seen=seen):
            seen.append((i[0].is_contiguous(memory_format=torch.channels_last), o.dtype))

        hook = convs[0].register_forward_hook(record)
        _world_reset(eng, 3)
        eng.step(*_inputs(2, "w"))
        hook.remove()
        assert seen == [(True, torch.bfloat16 if bf16 else torch.float32)]
        c, h, w = eng.cfg.model.latent_shape()
        frames[bf16] = eng._decode(torch.randn(2, c, h, w, generator=torch.Generator().manual_seed(0)))
    diff = np.abs(frames[True].astype(int) - frames[False].astype(int))
    assert frames[True].shape == (2, 64, 64, 3) and diff.mean() < 1.0 and diff.max() <= 8


FAST = CameraControllerConfig(fps=10.0, move_speed_mps=12.0, vertical_speed_mps=5.0, mouse_deg_per_px=0.5)


def test_a_checkpoint_round_trips_what_an_input_does(tmp_path):
    path = make_tiny_checkpoint(tmp_path / "fast", controller=FAST, levels={"wad": "freedoom1.wad", "map": "E1M2"})
    ck = read_checkpoint_config(path)
    assert ck.controller == FAST and ck.env == "builtin" and ck.levels == {"wad": "freedoom1.wad", "map": "E1M2"}
    save_checkpoint(tmp_path / "again", ck, WorldModel(ck.model), Codec(ck.codec))
    assert read_checkpoint_config(tmp_path / "again") == ck


def test_a_checkpoint_without_controller_and_env_gets_todays_defaults_and_one_notice(tmp_path, monkeypatch):
    import json
    import warnings

    monkeypatch.setattr(checkpoint_module, "_warned", set())
    path = make_tiny_checkpoint(tmp_path / "old", controller=FAST)
    d = json.loads((path / "config.json").read_text())
    del d["controller"], d["env"], d["integrity"]  # as exported before all three existed
    (path / "config.json").write_text(json.dumps(d))
    with warnings.catch_warnings(record=True) as seen:
        warnings.simplefilter("always")
        cks = [read_checkpoint_config(path) for _ in range(2)]
        eng = load_engine(path)
        shipped = read_checkpoint_config("assets/teacher_builtin_v1")  # written before the fields existed
    notices = [str(w.message) for w in seen if issubclass(w.category, CheckpointDefaultsWarning)]
    assert len(notices) == 2 and "does not record its controller and env" in notices[0]  # one per checkpoint
    assert all(ck.controller == CameraControllerConfig() and ck.env == "builtin" for ck in (*cks, shipped))
    assert all(ck.levels == {} for ck in (*cks, shipped))  # no levels recorded: none assumed
    assert eng.cfg.controller == CameraControllerConfig() and eng.fps == 15.0


def test_the_checkpoints_controller_moves_the_engines_camera(tmp_path):
    eng = load_engine(make_tiny_checkpoint(tmp_path / "fast", controller=FAST))
    assert eng.cfg.env == "builtin" and eng.fps == FAST.fps
    _world_reset(eng, 3)
    start = eng.c2w.copy()
    eng.step(*_inputs(2, "w"))
    moved = eng.c2w[:3, 3] - start[:3, 3]
    assert np.dot(moved, start[:3, 2]) == pytest.approx(2 * 12.0 / 10.0, rel=1e-5)  # 2 frames at 12 m/s, 10 fps
    yaw0 = CameraState.from_c2w(eng.c2w).yaw_rad
    eng.step(*_inputs(2, dx=10.0))
    turned = np.degrees(CameraState.from_c2w(eng.c2w).yaw_rad - yaw0)
    assert turned == pytest.approx(2 * 10.0 * 0.5, rel=1e-4)  # 0.5 degrees per pixel, 2 frames


MOMENTUM = CameraControllerConfig(fps=17.5, move_speed_mps=9.0, vertical_speed_mps=0.0, momentum=0.9, ticks_per_frame=2)


@pytest.fixture(scope="module")
def tiny_momentum_ckpt(tmp_path_factory):
    """A tiny checkpoint whose camera moves with momentum (DOOM's physics)."""
    return make_tiny_checkpoint(tmp_path_factory.mktemp("ck") / "tiny_momentum", controller=MOMENTUM)


def test_a_momentum_camera_starts_with_the_contexts_velocity(tiny_momentum_ckpt):
    """The engine's camera continues the world's: a context that ends walking keeps walking,
    and one released key coasts as the world's camera does (the built-in world driven by the
    same controller is the ground truth)."""
    from envs.builtin import BuiltinWorldConfig
    from envs.record import rollout

    eng = load_engine(tiny_momentum_ckpt)
    n = eng.context_frames
    keys, mouse = _inputs(n + 6, "w", dx=3.0)
    keys[n + 1 :] = 0  # released after the first generated frame: coasting from then on
    truth = rollout("builtin", 3, (64, 64), BuiltinWorldConfig(controller=MOMENTUM), keys, mouse, save_depth=False)
    # The context's last row is unused (it would make frame n): the velocity comes from the row before.
    ctx_keys, ctx_mouse = keys[:n].copy(), mouse[:n].copy()
    ctx_keys[-1], ctx_mouse[-1] = 0, (-20.0, 0.0)
    eng.reset(truth["frames"][:n], truth["c2w"][:n], ctx_keys, ctx_mouse)
    poses = np.concatenate([eng.step(keys[s : s + 2], mouse[s : s + 2]).c2w for s in range(n - 1, n + 5, 2)])
    np.testing.assert_allclose(poses, truth["c2w"][n : n + 6], atol=2e-5)
    moved = np.linalg.norm(np.diff(truth["c2w"][n - 1 : n + 6, :3, 3], axis=0), axis=1)
    assert moved[0] > 0.2 and moved[-1] > 0.05 and np.all(np.diff(moved[2:]) < 0)  # walking, then coasting


@pytest.fixture(scope="module")
def tiny_session_ckpt(tmp_path_factory):
    """A tiny checkpoint whose camera is relative to the session's first frame: keys stay valid."""
    return make_tiny_checkpoint(tmp_path_factory.mktemp("ck") / "tiny_session", camera_reference="session")


@pytest.fixture(scope="module")
def tiny_chunk_ckpt(tmp_path_factory):
    """The real-time teacher's conditioning: per-chunk camera reference, press edges, null flag."""
    path = tmp_path_factory.mktemp("ck") / "tiny_chunk"
    return make_tiny_checkpoint(path, camera_reference="chunk", encoder="keyboard_press_mouse")


# A student's sampler whose last denoising pass is its context (cache_write last_step, the
# shift that starts that pass at context_sigma 0.4).
LAST_STEP = SamplerConfig(num_steps=2, shift=0.4 / 0.6, mode="few_step", context_sigma=0.4, cache_write="last_step")


@pytest.fixture(scope="module")
def tiny_last_step_ckpt(tmp_path_factory):
    path = tmp_path_factory.mktemp("ck") / "tiny_last_step"
    return make_tiny_checkpoint(path, camera_reference="chunk", encoder="keyboard_press_mouse", sampler=LAST_STEP)


def _session_state(eng):
    """Everything a session carries, as tensors: history, ray references, KV cache, RNG, pose,
    last input row, steps."""
    h = eng.rollout.history
    out = {"latents": h.latents, "actions": h.actions, "c2w": h.c2w, "ray_ref": h.ray_ref, "frame_idx": h.frame_idx}
    out["previous_keys"] = torch.from_numpy(eng.previous_keys)
    out["previous_mouse"] = torch.from_numpy(eng.previous_mouse)
    out["rng"] = eng.rng.get_state()
    out["pose"] = torch.from_numpy(eng.c2w)
    out["velocity"] = torch.from_numpy(eng.state.velocity_mps)
    out["steps"] = torch.tensor(eng.steps)
    if eng.rollout.cache is not None:
        out.update({f"cache.{k}": v for k, v in eng.rollout.cache.state_dict().items()})
    return {k: v.detach().cpu().clone() for k, v in out.items()}


@pytest.mark.parametrize(
    "which", ["tiny_ckpt", "tiny_session_ckpt", "tiny_chunk_ckpt", "tiny_momentum_ckpt", "tiny_last_step_ckpt"]
)
def test_session_restore_continues_bit_for_bit(which, request, tmp_path):
    ckpt = request.getfixturevalue(which)
    eng = load_engine(ckpt, seed=5)
    assert eng.context_policy == ("rebuild" if which in ("tiny_ckpt", "tiny_momentum_ckpt") else "cached")
    assert eng.sampler_cfg.cache_write == ("last_step" if which == "tiny_last_step_ckpt" else "clean_pass")
    if which == "tiny_last_step_ckpt":  # its chunks' context came from their last pass: not the clean pass's
        other = load_engine(ckpt, sampler=SamplerOverrides(cache_write="clean_pass"))
        _world_reset(other, 1)
        other.save_session(tmp_path / "clean")
        with pytest.raises(WorldsimError, match=r"another sampler .*'cache_write': \('clean_pass', 'last_step'\)"):
            eng.load_session(tmp_path / "clean")
    _world_reset(eng, 1)
    eng.step(*_inputs(2, "w"))
    eng.step(*_inputs(2, "l"))  # held at the save: the first restored row must not read as a press
    eng.save_session(tmp_path / "s")  # runs the deferred cache write first (the saved cache holds the last chunk)
    before = _session_state(eng)
    a = [eng.step(*_inputs(2, "d", dx=5.0)).frames for _ in range(3)]
    pose_a = eng.c2w
    other = load_engine(ckpt, seed=99)
    other.load_session(tmp_path / "s")
    # The restored state itself, tensor by tensor: a uint8 frame can hide a small change (a restore
    # that zeroed the context's actions moved 1 value in 73,000 of the frames).
    after = _session_state(other)
    assert before.keys() == after.keys()
    for name, value in before.items():
        assert torch.equal(value, after[name]), f"{name} differs after restore"
    b = [other.step(*_inputs(2, "d", dx=5.0)).frames for _ in range(3)]
    assert all(np.array_equal(x, y) for x, y in zip(a, b, strict=True))
    np.testing.assert_array_equal(pose_a, other.c2w)
    assert other.steps == eng.steps


@pytest.mark.parametrize("which", ["tiny_ckpt", "tiny_chunk_ckpt"])
def test_the_same_seed_and_start_play_the_same_frames_with_context_noise(which, request):
    """Everything random in a session comes from the engine's seed: the context noise the
    ``cached`` policy draws at ``reset`` too, whatever the program did to torch's global RNG."""
    ckpt = request.getfixturevalue(which)
    runs = []
    for global_seed in (1, 2):
        torch.manual_seed(global_seed)
        eng = load_engine(ckpt, seed=3, sampler=SamplerOverrides(context_sigma=0.2))
        _world_reset(eng, 1)
        runs.append([eng.step(*_inputs(2, "w", dx=3.0)).frames for _ in range(3)])
    assert all(np.array_equal(a, b) for a, b in zip(*runs, strict=True))


def test_a_refused_reset_leaves_the_session_as_it_was(tiny_chunk_ckpt):
    """A context the rollout refuses (shorter than a chunk) changes nothing: the next chunks are
    those of a session that never saw the call, noise included."""
    runs = []
    for refuse in (False, True):
        eng = load_engine(tiny_chunk_ckpt, seed=3, sampler=SamplerOverrides(context_sigma=0.2))
        _world_reset(eng, 1)
        first = eng.step(*_inputs(2, "w")).frames
        if refuse:
            start = world_start(2, eng.context_frames, eng.key_names, eng.frame_size)
            with pytest.raises(WorldsimError, match="shorter than one"):
                eng.reset(start.frames[:1], start.c2w[:1], start.keys[:1], start.mouse[:1], seed=9)
        runs.append([first] + [eng.step(*_inputs(2, "d", dx=4.0)).frames for _ in range(2)])
    assert all(np.array_equal(a, b) for a, b in zip(*runs, strict=True))


def test_engine_device_and_context_policy_are_checked_with_one_line(tiny_ckpt, tiny_session_ckpt):
    if not torch.cuda.is_available():
        with pytest.raises(WorldsimError, match="this torch sees no CUDA GPU") as e:
            load_engine(tiny_ckpt, device="cuda")
        assert "\n" not in str(e.value)
    with pytest.raises(WorldsimError, match="unknown device 'gpu'"):
        load_engine(tiny_ckpt, device="gpu")
    with pytest.raises(WorldsimError, match="context policy 'cached' needs"):
        load_engine(tiny_ckpt, context_policy="cached")
    assert load_engine(tiny_session_ckpt, context_policy="rebuild").context_policy == "rebuild"


@pytest.mark.cuda
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
@pytest.mark.parametrize("which", ["tiny_ckpt", "tiny_session_ckpt"])
def test_engine_runs_the_same_rollout_on_cuda(which, request):
    """Every tensor on the GPU; the frames agree with the CPU's up to kernel rounding."""
    ckpt = request.getfixturevalue(which)
    outs = []
    for device in ("cpu", "cuda"):
        eng = load_engine(ckpt, device=device)
        _world_reset(eng, 2)
        outs.append(np.concatenate([eng.step(*_inputs(2, "w", dx=3.0)).frames for _ in range(3)]))
    assert np.abs(outs[0].astype(int) - outs[1].astype(int)).mean() < 2.0


def test_engine_refuses_bad_input(tiny_ckpt, tmp_path):
    with pytest.raises(WorldsimError, match="does not exist"):
        load_engine(tmp_path / "nothing")
    eng = load_engine(tiny_ckpt)
    with pytest.raises(WorldsimError, match="call reset"):
        eng.step(*_inputs(2))
    _world_reset(eng, 0)
    with pytest.raises(WorldsimError, match=r"keys must be 0/1 integers \(2, 7\); got shape \(3, 7\)"):
        eng.step(*_inputs(3))
    with pytest.raises(WorldsimError, match="context frames must be"):
        eng.reset(np.zeros((4, 32, 32, 3), np.uint8), np.tile(np.eye(4), (4, 1, 1)), *_inputs(4))
    eng.save_session(tmp_path / "s")
    other = load_engine(make_tiny_checkpoint(tmp_path / "other", seed=1))
    with pytest.raises(WorldsimError, match="another checkpoint"):
        other.load_session(tmp_path / "s")
    with pytest.raises(WorldsimError, match="not a saved session"):
        other.load_session(tmp_path / "nope")
    # a session saved before the memory bank joined it (format 3)
    meta_path = tmp_path / "s" / "session.json"
    meta = json.loads(meta_path.read_text())
    meta_path.write_text(json.dumps({**meta, "version": 4}))
    with pytest.raises(WorldsimError, match=r"session format 4, this worldsim reads 5$"):
        eng.load_session(tmp_path / "s")
    # a session saved before the sampler's cache_write: its chunks took the clean pass
    meta_path.write_text(
        json.dumps({**meta, "sampler": {k: v for k, v in meta["sampler"].items() if k != "cache_write"}})
    )
    eng.load_session(tmp_path / "s")
    meta_path.write_text(json.dumps(meta))
    fewer = load_engine(tiny_ckpt, sampler=SamplerOverrides(num_steps=1))
    with pytest.raises(WorldsimError, match=r"saved with another sampler .*'num_steps': \(2, 1\)"):
        fewer.load_session(tmp_path / "s")
    alien = load_engine(make_tiny_checkpoint(tmp_path / "alien", keys=["w", "a", "s", "d", "space", "left shift", "e"]))
    with pytest.raises(WorldsimError, match="world 'builtin' has keys"):
        _world_reset(alien, 0)


def test_sampler_overrides_change_steps_and_guidance_only_when_asked(tiny_ckpt):
    own = load_engine(tiny_ckpt).sampler_cfg
    eng = load_engine(tiny_ckpt, sampler=SamplerOverrides(num_steps=3, guidance=2.0))
    assert (eng.sampler_cfg.num_steps, eng.sampler_cfg.guidance) == (3, 2.0)
    assert eng.sampler_cfg.shift == own.shift and load_engine(tiny_ckpt, sampler=SamplerOverrides()).sampler_cfg == own
    plain = load_engine(tiny_ckpt, sampler=SamplerOverrides(num_steps=3))
    for e in (eng, plain):
        _world_reset(e, 0)
    keys, mouse = _inputs(2, key="w")  # walking forward: the action the guidance amplifies
    guided, unguided = eng.step(keys, mouse).frames, plain.step(keys, mouse).frames
    assert guided.shape == unguided.shape == (2, *eng.frame_size, 3)
    assert not np.array_equal(guided, unguided)  # same seed and inputs: only the guidance differs


@pytest.mark.parametrize(
    ("bad", "message"),
    [
        ({"guidance": -1.0}, "guidance must be > 0"),
        ({"guidance": 0.0}, "guidance must be > 0"),
        ({"shift": 0.0}, "shift must be > 0"),
        ({"num_steps": 0}, "num_steps must be >= 1"),
        ({"mode": "ddpm"}, "unknown sampler mode 'ddpm'"),
        ({"context_sigma": 1.5}, r"context_sigma must be in \[0, 1\)"),
    ],
)
def test_bad_sampler_overrides_are_refused_in_one_line(bad, message):
    with pytest.raises(WorldsimError, match=message) as e:
        SamplerOverrides(**bad).apply(SamplerConfig())
    assert "\n" not in str(e.value)


def test_sampler_mode_and_context_noise_overrides(tiny_ckpt):
    own = load_engine(tiny_ckpt).sampler_cfg
    assert own.mode == "euler" and own.context_sigma == 0.0
    keys, mouse = _inputs(2, key="w")
    outs = {}
    for name, over in {"own": {}, "few_step": {"mode": "few_step"}, "noisy": {"context_sigma": 0.2}}.items():
        runs = []
        for _ in range(2):  # the same seed twice: the re-noising is drawn from the engine's generator
            e = load_engine(tiny_ckpt, sampler=SamplerOverrides(**over))
            _world_reset(e, 0)
            runs.append(e.step(keys, mouse).frames)
        np.testing.assert_array_equal(*runs)
        outs[name] = runs[0]
    assert load_engine(tiny_ckpt, sampler=SamplerOverrides(context_sigma=0.2)).sampler_cfg.context_sigma == 0.2
    assert not np.array_equal(outs["own"], outs["few_step"])
    assert not np.array_equal(outs["own"], outs["noisy"])


@pytest.mark.parametrize("command", ["play", "eval", "rollout"])
def test_each_command_passes_its_sampler_group_to_the_engine(command, tiny_ckpt):
    from omegaconf import OmegaConf

    import worldsim.cli.play  # noqa: F401  (registers the play schema)
    import worldsim.cli.rollout  # noqa: F401
    import worldsim.eval.evaluate  # noqa: F401

    over = ["sampler.num_steps=3", "sampler.guidance=2.0", "sampler.mode=few_step", "sampler.context_sigma=0.25"]
    with initialize_config_dir(config_dir=str(CONFIG_DIR), version_base=None):
        cfg = OmegaConf.to_object(compose(config_name=command, overrides=over))
        plain = OmegaConf.to_object(compose(config_name=command))
        teacher = OmegaConf.to_object(compose(config_name=command, overrides=["sampler=teacher"]))
    s = load_engine(tiny_ckpt, sampler=cfg.sampler).sampler_cfg
    assert (s.num_steps, s.guidance, s.mode, s.context_sigma) == (3, 2.0, "few_step", 0.25)
    assert plain.sampler == SamplerOverrides() and plain.bf16 is None  # the checkpoint's own; bf16 where native
    assert load_engine(tiny_ckpt, sampler=plain.sampler).sampler_cfg == load_engine(tiny_ckpt).sampler_cfg
    assert (teacher.sampler.num_steps, teacher.sampler.mode) == (8, "few_step")


BAD_STEP_INPUTS = {
    "nan mouse": ("mouse", lambda k, m: (k, np.where(np.arange(m.size).reshape(m.shape) == 1, np.nan, m))),
    "inf mouse": ("mouse", lambda k, m: (k, np.full_like(m, np.inf))),
    "key 255": ("keys", lambda k, m: (np.full_like(k, 255), m)),
    "key 0.5": ("keys", lambda k, m: (k.astype(np.float32) + 0.5, m)),
    "key -1": ("keys", lambda k, m: (k.astype(np.int64) - 1, m)),
    "string keys": ("keys", lambda k, m: (k.astype(str), m)),
    "3-element mouse": ("mouse", lambda k, m: (k, np.zeros((len(m), 3), np.float32))),
}


@pytest.mark.parametrize("bad", sorted(BAD_STEP_INPUTS))
def test_a_refused_step_leaves_the_session_as_it_was(tiny_ckpt, bad):
    """One line naming the argument; the next clean step equals a session that never saw it."""
    arg, spoil = BAD_STEP_INPUTS[bad]
    clean, refused = load_engine(tiny_ckpt, seed=3), load_engine(tiny_ckpt, seed=3)
    for eng in (clean, refused):
        _world_reset(eng, 1)
        eng.step(*_inputs(2, "w", dx=2.0))
    with pytest.raises(WorldsimError, match=rf"^{arg} must be ") as e:
        refused.step(*spoil(*_inputs(2, "d", dx=4.0)))
    assert "\n" not in str(e.value) and "got" in str(e.value)
    a, b = clean.step(*_inputs(2, "d", dx=4.0)), refused.step(*_inputs(2, "d", dx=4.0))
    np.testing.assert_array_equal(a.frames, b.frames)
    np.testing.assert_array_equal(a.c2w, b.c2w)
    assert np.isfinite(b.c2w).all() and refused.steps == clean.steps


def test_a_refused_reset_keeps_the_session(tiny_ckpt):
    """A NaN or non-rigid context pose, or a key 2 in the context, is refused before anything changes."""
    eng = load_engine(tiny_ckpt)
    start = world_start(1, eng.context_frames, eng.key_names, eng.frame_size)
    eng.reset(*start.arrays())
    pose = eng.c2w.copy()
    frames, c2w, keys, mouse = start.arrays()
    nan_pose, scaled = c2w.copy(), c2w.copy()
    nan_pose[1, 0, 3] = np.nan
    scaled[2, :3, :3] *= 1.5
    two = keys.copy()
    two[0, 0] = 2
    for args, message in [
        ((frames, nan_pose, keys, mouse), r"^c2w must be finite rigid .*got nan at \[1, 0, 3\]"),
        ((frames, scaled, keys, mouse), r"^c2w must be finite rigid .*row 2 is not rigid"),
        ((frames, c2w, two, mouse), r"^keys must be 0/1 integers .*got 2 at \[0, 0\]"),
        ((frames[:0], c2w[:0], keys[:0], mouse[:0]), "at least one frame"),
    ]:
        with pytest.raises(WorldsimError, match=message):
            eng.reset(*args)
        np.testing.assert_array_equal(eng.c2w, pose)
