"""The Gymnasium ids: check_env over every registered id, the world model through gymnasium.make
and SyncVectorEnv, one registry shared with make_env, clear errors."""

import subprocess
import sys

import gymnasium
import numpy as np
import pytest
from gymnasium.utils.env_checker import check_env

import envs
from envs.gym import make, registered_ids, split_action
from tests.test_engine import make_tiny_checkpoint
from worldsim.core.errors import WorldsimError

WORLD_MODEL = "worldsim/WorldModel-v1"


@pytest.fixture(scope="module")
def tiny_ckpt(tmp_path_factory):
    return str(make_tiny_checkpoint(tmp_path_factory.mktemp("ck") / "tiny"))


def _kwargs(env_id, tiny_ckpt):
    if env_id == WORLD_MODEL:
        return {"checkpoint": tiny_ckpt}
    if env_id == "worldsim/Doom-v1":
        pytest.importorskip("vizdoom", reason="the [doom] extra is not installed")
        return {"cfg": __import__("envs.doom", fromlist=["DoomConfig"]).DoomConfig(map="MAP01")}
    return {}


def test_registered_ids_are_the_env_registry_plus_the_world_model():
    worlds = {entry.gym_id for entry in envs.ENV_REGISTRY.values()}
    assert set(registered_ids()) == worlds | {WORLD_MODEL}
    assert {"worldsim/Builtin-v1", "worldsim/Doom-v1"} <= worlds


@pytest.mark.slow
@pytest.mark.parametrize("env_id", registered_ids())
def test_check_env_passes_for_every_registered_id(env_id, tiny_ckpt, monkeypatch):
    monkeypatch.setenv("SDL_VIDEODRIVER", "dummy")  # check_env also makes the env with render_mode="human"
    # check_env wants a deterministic info: leave out the wall-clock timings.
    env = gymnasium.make(env_id, render_mode="rgb_array", timings=False, **_kwargs(env_id, tiny_ckpt))
    check_env(env.unwrapped)
    env.close()


def test_world_model_random_policy_through_gymnasium_make(tiny_ckpt):
    env = gymnasium.make(WORLD_MODEL, checkpoint=tiny_ckpt, max_episode_steps=3, render_mode="rgb_array")
    env.action_space.seed(0)
    obs, info = env.reset(seed=5)
    assert obs["frame"].shape == (64, 64, 3) and obs["frame"].dtype == np.uint8
    assert obs["c2w"].shape == (4, 4) and info["intrinsics"].shape == (3, 3) and info["world_seed"] == 5
    truncated, steps = False, 0
    while not truncated:
        obs, reward, terminated, truncated, info = env.step(env.action_space.sample())
        steps += 1
        assert env.observation_space.contains(obs) and reward == 0.0 and not terminated
        assert info["frames"].shape == (2, 64, 64, 3) and info["c2w_chunk"].shape == (2, 4, 4)
        assert np.array_equal(info["frames"][-1], obs["frame"]) and info["timings"]["denoise_s"] > 0
    assert steps == 3 and np.array_equal(env.render(), obs["frame"])
    env.close()


def test_world_model_holds_the_action_for_the_chunk_and_replays(tiny_ckpt):
    env = gymnasium.make(WORLD_MODEL, checkpoint=tiny_ckpt)
    keys = np.zeros(7, np.int8)
    keys[0] = 1  # w: forward
    action = {"keys": keys, "mouse": np.zeros(2, np.float32)}
    runs = []
    for _ in range(2):
        obs0, _ = env.reset(seed=3)
        obs1, *_, info = env.step(action)
        runs.append(info["frames"])
    assert np.array_equal(runs[0], runs[1])  # same seed and actions -> same frames
    forward = obs0["c2w"][:3, 2]
    steps = np.diff(np.concatenate([obs0["c2w"][None, :3, 3], info["c2w_chunk"][:, :3, 3]]), axis=0)
    assert (steps @ forward > 0).all()  # every frame of the chunk moved forward: w was held
    env.close()


def test_world_model_starts_from_a_dataset_episode(tiny_ckpt, small_dataset):
    env = gymnasium.make(WORLD_MODEL, checkpoint=tiny_ckpt)
    obs, info = env.reset(options={"dataset": str(small_dataset.root), "episode": 1, "start_frame": 4})
    eng = env.unwrapped.engine
    frames = small_dataset.load(1, ("frames",))["frames"]
    assert np.array_equal(obs["frame"], frames[4 + eng.context_frames - 1]) and info["world_seed"] == 1
    with pytest.raises(WorldsimError, match="unknown reset options"):
        env.reset(options={"episdoe": 1})
    env.close()


def test_sync_vector_env_of_world_models_and_worlds(tiny_ckpt):
    for env_id, kwargs in ((WORLD_MODEL, {"checkpoint": tiny_ckpt}), ("worldsim/Builtin-v1", {})):
        vec = gymnasium.vector.SyncVectorEnv([lambda i=env_id, k=kwargs: gymnasium.make(i, **k) for _ in range(2)])
        obs, _ = vec.reset(seed=[0, 1])
        assert obs["frame"].shape == (2, 64, 64, 3)
        assert not np.array_equal(obs["frame"][0], obs["frame"][1])  # two worlds
        vec.action_space.seed(0)
        for _ in range(2):
            obs, reward, terminated, truncated, _ = vec.step(vec.action_space.sample())
        assert obs["c2w"].shape == (2, 4, 4) and reward.shape == (2,) and not terminated.any()
        vec.close()


def test_world_env_info_has_depth_intrinsics_timings():
    env = gymnasium.make("worldsim/Builtin-v1", frame_size=(32, 48))
    obs, info = env.reset()
    assert obs["frame"].shape == (32, 48, 3)
    assert info["depth"].shape == (32, 48) and info["intrinsics"].shape == (3, 3) and info["timings"]["render_s"] > 0
    obs2, _ = env.reset(seed=1)  # another seed is another world
    assert not np.array_equal(obs["frame"], obs2["frame"])
    env.close()


def test_unknown_id_lists_the_registered_ones_in_one_line():
    with pytest.raises(WorldsimError) as e:
        make("worldsim/Quake-v1")
    msg = str(e.value)
    assert "\n" not in msg and all(i in msg for i in registered_ids())


def test_bad_action_and_render_mode_fail_in_one_line(monkeypatch):
    with pytest.raises(WorldsimError, match=r"keys must be \(7,\)"):
        split_action({"keys": np.zeros(3), "mouse": np.zeros(2)}, 7)
    with pytest.raises(WorldsimError, match="an action is a dict"):
        split_action(np.zeros(9), 7)
    with pytest.raises(WorldsimError, match="unknown render_mode 'ansi'"):
        gymnasium.make("worldsim/Builtin-v1", render_mode="ansi")
    for var in ("DISPLAY", "WAYLAND_DISPLAY", "SDL_VIDEODRIVER"):
        monkeypatch.delenv(var, raising=False)
    env = gymnasium.make("worldsim/Builtin-v1", render_mode="human", disable_env_checker=True)
    with pytest.raises(WorldsimError, match="needs a display"):
        env.reset()
    env.close()


def test_import_registers_every_id_without_torch():
    code = (
        "import sys, gymnasium, worldsim; "
        "ids = sorted(i for i in gymnasium.registry if i.startswith('worldsim/')); "
        "print(ids, 'torch' in sys.modules, 'moderngl' in sys.modules)"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == f"{registered_ids()} False False"
