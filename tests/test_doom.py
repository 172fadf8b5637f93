"""DOOM through ViZDoom: the pose convention, the install hint, replay determinism, recording.

Tests that run the game skip without the ``[doom]`` extra; the convention and the hint do not.
"""

import math

import numpy as np
import pytest

from envs import make_env
from envs.builtin import KEY_NAMES
from worldsim.core.camera import c2w_from_doom, intrinsics_from_fov, project
from worldsim.core.controller import CameraState
from worldsim.core.errors import WorldsimError


def _doom_cfg(**kw):
    pytest.importorskip("vizdoom", reason="the [doom] extra is not installed")
    from envs.doom import DoomConfig

    return DoomConfig(map="MAP01", **kw)


def _keys(*names):
    k = np.zeros(len(KEY_NAMES), np.uint8)
    for n in names:
        k[KEY_NAMES.index(n)] = 1
    return k


def test_doom_angle_zero_looks_along_doom_x_and_angle_grows_to_the_left():
    c2w = c2w_from_doom(np.array([64.0, -32.0, 41.0]), 0.0, 0.0, 1 / 32)
    np.testing.assert_allclose(c2w[:3, 2], [1, 0, 0], atol=1e-6)  # forward: DOOM +x
    np.testing.assert_allclose(c2w[:3, 0], [0, -1, 0], atol=1e-6)  # right: DOOM -y (x east, y north)
    np.testing.assert_allclose(c2w[:3, 1], [0, 0, -1], atol=1e-6)  # down: world -z
    np.testing.assert_allclose(c2w[:3, 3], [2.0, -1.0, 41 / 32], atol=1e-6)  # metres
    north = c2w_from_doom(np.zeros(3), 90.0, 0.0, 1.0)
    np.testing.assert_allclose(north[:3, 2], [0, 1, 0], atol=1e-6)  # DOOM angle is counter-clockwise
    # A point straight ahead along DOOM +x lands on the image centre; one to DOOM's -y, right of it.
    k = intrinsics_from_fov(74.0, 64, 64)
    uv, z = project(np.array([[10.0, -1.0, 41 / 32], [10.0, -2.0, 41 / 32]]), c2w, k)
    np.testing.assert_allclose(uv[0], [32.0, 32.0], atol=1e-4)
    assert z[0] == pytest.approx(8.0) and uv[1, 0] > 32.0
    looking_down = c2w_from_doom(np.zeros(3), 0.0, 20.0, 1.0)  # ZDoom pitch > 0 looks down
    assert looking_down[2, 2] == pytest.approx(-math.sin(math.radians(20.0)), abs=1e-6)


def test_a_checkpoints_doom_controller_finds_its_world_and_a_foreign_one_is_refused():
    from dataclasses import replace

    from envs.builtin import BuiltinWorldConfig
    from envs.doom import DoomConfig
    from envs.record import world_config_for
    from worldsim.core.controller import CameraControllerConfig

    assert world_config_for("doom", DoomConfig().controller()) == DoomConfig()
    # the levels come from `doom`, the motion from the controller
    held_out = DoomConfig(wad="freedoom1.wad", map="E1M4", tics_per_step=3)
    assert world_config_for("doom", DoomConfig().controller(), held_out) == DoomConfig(wad="freedoom1.wad", map="E1M4")
    slow = DoomConfig(tics_per_step=3, mouse_deg_per_px=0.5)
    assert world_config_for("doom", slow.controller()) == slow
    with pytest.raises(WorldsimError, match="no DOOM setting moves like the controller"):
        world_config_for("doom", replace(DoomConfig().controller(), momentum=0.0))
    with pytest.raises(WorldsimError, match="no DOOM setting moves like"):
        world_config_for("doom", CameraControllerConfig(fps=17.5))  # DOOM data recorded before the controller
    assert world_config_for("builtin", CameraControllerConfig(fps=10.0)) == BuiltinWorldConfig(
        controller=CameraControllerConfig(fps=10.0)
    )
    # no wad or map given (None, or a command's default section): the checkpoint's training levels;
    # either one given wins whole; none recorded: the default
    levels = {"wad": "freedoom1.wad", "map": "E1M4"}
    ctrl = DoomConfig().controller()
    assert world_config_for("doom", ctrl, None, levels) == world_config_for("doom", ctrl, DoomConfig(), levels)
    assert world_config_for("doom", ctrl, None, levels) == DoomConfig(**levels)
    assert world_config_for("doom", ctrl, DoomConfig(map="MAP05"), levels) == DoomConfig(map="MAP05")
    assert world_config_for("doom", ctrl, DoomConfig(wad="freedoom2.wad"), levels) == DoomConfig(wad="freedoom2.wad")
    assert world_config_for("doom", ctrl, None, {}) == DoomConfig()
    with pytest.raises(WorldsimError, match=r"unknown keys \['skill'\]"):
        world_config_for("doom", DoomConfig().controller(), None, {"wad": "freedoom1.wad", "skill": 3})


def test_doom_without_vizdoom_says_how_to_install(monkeypatch):
    import sys

    monkeypatch.setitem(sys.modules, "vizdoom", None)  # import vizdoom -> ImportError
    with pytest.raises(WorldsimError) as e:
        make_env("doom")
    assert str(e.value).startswith("DOOM needs ViZDoom: pip install 'worldsim[doom]'") and "\n" not in str(e.value)


def test_doom_forward_moves_along_the_camera_axis_and_mouse_turns_right():
    with make_env("doom", seed=0, frame_size=(48, 64), cfg=_doom_cfg()) as env:
        obs = env.reset()
        assert obs.frame.shape == (48, 64, 3) and obs.frame.dtype == np.uint8 and np.isnan(obs.depth).all()
        assert env.fps == 17.5 and env.intrinsics[0, 0] == pytest.approx(env.intrinsics[1, 1])  # square pixels
        start = obs.c2w
        for _ in range(8):
            obs = env.step(_keys("w"), np.zeros(2))
        moved = obs.c2w[:3, 3] - start[:3, 3]
        assert moved @ start[:3, 2] > 1.0  # metres along the camera's forward axis
        assert abs(moved @ start[:3, 0]) < 0.1 * (moved @ start[:3, 2])  # hardly sideways
        yaw0 = CameraState.from_c2w(obs.c2w).yaw_rad
        obs = env.step(np.zeros(len(KEY_NAMES), np.uint8), np.array([40.0, 0.0]))  # 40 px * 0.25 deg
        turned = CameraState.from_c2w(obs.c2w).yaw_rad - yaw0
        assert turned == pytest.approx(math.radians(10.0), abs=1e-3)  # dx > 0 turns right (yaw grows)
        with pytest.raises(WorldsimError, match=r"keys must have shape \(7,\)"):
            env.step(np.zeros(3), np.zeros(2))


def test_doom_controller_moves_like_the_doom_player_on_open_floor():
    """``DoomConfig.controller()`` (momentum, thrust, ticks, turn per tick) against the game: from
    MAP01's spawn, walking and turning for 6 steps, coasting for 4, strafing right for 4 and
    coasting again (no wall on the way)."""
    from worldsim.core.controller import CameraController

    cfg = _doom_cfg()
    ctrl = CameraController(cfg.controller(), KEY_NAMES)
    with make_env("doom", seed=0, frame_size=(32, 32), cfg=cfg) as env:
        obs = env.reset()
        state = CameraState.from_c2w(obs.c2w)
        for t in range(18):
            keys = _keys("w") if t < 6 else _keys("d") if 10 <= t < 14 else _keys()
            mouse = np.array([8.0, 0.0]) if t < 6 else np.zeros(2)
            obs, state = env.step(keys, mouse), ctrl.step(state, keys, mouse)
            # metres; z bobs, and DOOM turns in steps of 360/65536 deg (about 1 mm off after 10 steps)
            np.testing.assert_allclose(state.position[:2], obs.c2w[:2, 3], atol=3e-3)
            assert state.yaw_rad == pytest.approx(CameraState.from_c2w(obs.c2w).yaw_rad, abs=1e-3)
    assert np.linalg.norm(state.velocity_mps) > 1.0  # still coasting at the end


def test_doom_same_inputs_replay_the_same_frames():
    rng = np.random.default_rng(0)
    keys = rng.integers(0, 2, (40, len(KEY_NAMES))).astype(np.uint8)
    mouse = rng.normal(0, 10, (40, 2)).astype(np.float32)

    def run():
        with make_env("doom", seed=0, frame_size=(32, 32), cfg=_doom_cfg()) as env:
            obs = [env.reset()] + [env.step(k, m) for k, m in zip(keys, mouse, strict=True)]
        return np.stack([o.frame for o in obs]), np.stack([o.c2w for o in obs])

    (f1, c1), (f2, c2) = run(), run()
    assert f1.tobytes() == f2.tobytes() and c1.tobytes() == c2.tobytes()
    assert len({f.tobytes() for f in f1}) > 10  # the inputs did move the view


def test_doom_records_through_the_project_recorder(tmp_path):
    from envs.record import RecordConfig, record

    cfg = RecordConfig(env="doom", num_episodes=2, episode_len=12, out=str(tmp_path / "d"), preview=False)
    cfg.doom = _doom_cfg()
    data = record(cfg)
    ep = data.load(1)
    assert data.meta.env == "doom" and data.meta.fps == 17.5 and data.meta.key_names == KEY_NAMES
    assert data.meta.levels() == {"wad": "freedoom2.wad", "map": "MAP01"}  # where a model trained on it starts
    assert ep["frames"].shape == (12, 64, 64, 3) and ep["c2w"].shape == (12, 4, 4) and "depth" not in ep


def test_bench_env_times_doom(tmp_path):
    _doom_cfg()
    from worldsim.cli.bench import bench_env

    row = bench_env(32, 20, 0, "doom")
    assert row["env"] == "doom" and row["frames"] == 20 and row["render_frames_per_s"] > 0


def test_doom_look_pitch_mouse_down_looks_down():
    with make_env("doom", seed=0, frame_size=(32, 32), cfg=_doom_cfg(look_pitch=True)) as env:
        env.reset()
        down = env.step(np.zeros(len(KEY_NAMES), np.uint8), np.array([0.0, 120.0]))  # 30 deg
    assert down.c2w[2, 2] == pytest.approx(-0.5, abs=1e-3)  # the forward axis points below the horizon


@pytest.mark.slow
def test_doom_use_key_opens_a_door_without_moving_the_camera():
    """Freedoom 2 MAP01: 80 steps east from the start reach a door; ``l`` (USE) opens it."""
    with make_env("doom", seed=0, frame_size=(64, 64), cfg=_doom_cfg()) as env:

        def run(first_key):
            env.reset()
            for _ in range(80):
                env.step(_keys("w"), np.zeros(2))
            for _ in range(3):  # come to rest
                env.step(_keys(), np.zeros(2))
            obs = env.step(first_key, np.zeros(2))
            for _ in range(30):
                obs = env.step(_keys(), np.zeros(2))
            return obs

        idle, used = run(_keys()), run(_keys("l"))
    assert np.array_equal(idle.c2w, used.c2w)  # the effect is not in the pose
    assert np.abs(used.frame.astype(int) - idle.frame).mean() > 20  # ... but in the picture


def test_doom_unknown_map_or_wad_fails_in_one_line_before_starting_the_game():
    cfg = _doom_cfg()
    from envs.doom import DoomConfig

    with pytest.raises(WorldsimError, match=r"unknown map of freedoom2.wad 'MAP99'; valid: MAP01, MAP02"):
        make_env("doom", cfg=DoomConfig(map="MAP99"))  # ViZDoom itself would hang
    with pytest.raises(WorldsimError, match="no DOOM wad 'nope.wad'"):
        make_env("doom", cfg=DoomConfig(wad="nope.wad"))
    assert cfg.map == "MAP01"


@pytest.fixture(scope="module")
def doom_ckpt(tmp_path_factory):
    """A tiny checkpoint of a DOOM model (env ``doom``, DOOM's controller): random weights."""
    pytest.importorskip("vizdoom", reason="the [doom] extra is not installed")
    from test_engine import make_tiny_checkpoint

    from envs.doom import DoomConfig

    return make_tiny_checkpoint(
        tmp_path_factory.mktemp("ck") / "doom", controller=DoomConfig().controller(), env="doom"
    )


def _spawn(seed, wad):
    from envs.doom import DoomConfig

    world = make_env("doom", seed=seed, frame_size=(64, 64), cfg=DoomConfig(wad=wad))
    try:
        return world.reset().frame
    finally:
        world.close()


def test_a_doom_models_start_and_truth_come_from_the_levels_doom_picks(doom_ckpt, tmp_path):
    """worldsim-rollout doom.wad=freedoom1.wad: the model starts where the truth starts, on
    Freedoom 1's level, not on the default wad's."""
    from envs.doom import DoomConfig
    from worldsim.cli.rollout import RolloutConfig, run_rollout
    from worldsim.data.reader import RolloutDataset

    held_out = DoomConfig(wad="freedoom1.wad")
    run_rollout(
        RolloutConfig(checkpoint=str(doom_ckpt), seed=2, frames=2, compare=True, doom=held_out, out=str(tmp_path / "r"))
    )
    model, truth = RolloutDataset(tmp_path / "r").load(0), RolloutDataset(tmp_path / "r" / "truth").load(0)
    np.testing.assert_array_equal(model["frames"][:4], truth["frames"][:4])  # the context is the truth's
    np.testing.assert_array_equal(model["frames"][0], _spawn(2, "freedoom1.wad"))
    assert not np.array_equal(model["frames"][0], _spawn(2, "freedoom2.wad"))  # the wad matters here


def test_play_and_gymnasium_start_a_doom_model_on_the_levels_doom_picks(doom_ckpt, tmp_path):
    import gymnasium

    from envs.doom import DoomConfig
    from worldsim.cli.play import PlayConfig, _headless, engine_source_factory, settle_model
    from worldsim.data.reader import RolloutDataset
    from worldsim.play.sources import ProcessSource

    held_out = DoomConfig(wad="freedoom1.wad")
    spawn = _spawn(3, "freedoom1.wad")
    pc = settle_model(
        PlayConfig(checkpoint=str(doom_ckpt), seed=3, doom=held_out, headless=True, steps=2, out=str(tmp_path / "p"))
    )
    source = ProcessSource(engine_source_factory(pc))  # the window's generation process, as play.py starts it
    try:
        np.testing.assert_array_equal(source.reset().frames[-1], spawn)
    finally:
        source.close()
    _headless(pc)
    np.testing.assert_array_equal(RolloutDataset(tmp_path / "p").load(0)["frames"][0], spawn)
    env = gymnasium.make("worldsim/WorldModel-v1", checkpoint=str(doom_ckpt), doom=held_out)
    try:
        obs, _ = env.reset(seed=3)
        np.testing.assert_array_equal(obs["frame"], spawn)
    finally:
        env.close()


def test_a_doom_model_starts_on_the_levels_it_was_trained_on_when_no_doom_is_given(tmp_path):
    """A checkpoint's ``levels`` (from its data's meta.json) are the default start of a rollout,
    the play window's generation process, the Gymnasium env and the benchmarks."""
    pytest.importorskip("vizdoom", reason="the [doom] extra is not installed")
    import gymnasium
    from test_engine import make_tiny_checkpoint

    from envs.doom import DoomConfig
    from envs.starts import engine_world_start
    from worldsim import load_engine
    from worldsim.cli.rollout import RolloutConfig, run_rollout
    from worldsim.data.reader import RolloutDataset
    from worldsim.inference.checkpoint import read_checkpoint_config
    from worldsim.play.sources import open_engine_source

    levels = {"wad": "freedoom1.wad", "map": None}
    ckpt = make_tiny_checkpoint(tmp_path / "ck", controller=DoomConfig().controller(), env="doom", levels=levels)
    assert read_checkpoint_config(ckpt).levels == levels
    spawn = _spawn(2, "freedoom1.wad")
    assert not np.array_equal(spawn, _spawn(2, "freedoom2.wad"))
    run_rollout(RolloutConfig(checkpoint=str(ckpt), seed=2, frames=2, compare=True, out=str(tmp_path / "r")))
    np.testing.assert_array_equal(RolloutDataset(tmp_path / "r").load(0)["frames"][0], spawn)
    np.testing.assert_array_equal(RolloutDataset(tmp_path / "r" / "truth").load(0)["frames"][0], spawn)
    source = open_engine_source(str(ckpt), 2)
    try:
        np.testing.assert_array_equal(source.reset().frames[-1], spawn)
    finally:
        source.close()
    env = gymnasium.make("worldsim/WorldModel-v1", checkpoint=str(ckpt))
    try:
        np.testing.assert_array_equal(env.reset(seed=2)[0]["frame"], spawn)
    finally:
        env.close()
    # worldsim-bench engine and soak start their engines the same way
    np.testing.assert_array_equal(engine_world_start(load_engine(str(ckpt)), 2).frames[0], spawn)
