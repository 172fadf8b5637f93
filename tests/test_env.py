import numpy as np
import pytest

from envs import available_envs, make_env
from worldsim.core.camera import pixel_centres, project, unproject
from worldsim.core.errors import WorldsimError
from worldsim.data.policies import make_policy


def _run(seed, keys, mouse):
    with make_env("builtin", seed=seed, frame_size=(48, 64)) as env:
        frames = [env.reset().frame]
        for k, m in zip(keys, mouse, strict=True):
            frames.append(env.step(k, m).frame)
    return np.stack(frames)


def _actions(n, seed=0):
    with make_env("builtin", seed=0, frame_size=(8, 8)) as env:
        a = make_policy("explore", env.key_names, env.cfg.controller).actions(n, np.random.default_rng(seed))
    return a.keys, a.mouse


def test_same_seed_and_inputs_give_byte_identical_frames():
    keys, mouse = _actions(30)
    a = _run(3, keys, mouse)
    b = _run(3, keys, mouse)
    assert a.shape == (31, 48, 64, 3) and a.dtype == np.uint8
    assert a.tobytes() == b.tobytes()
    assert _run(4, keys, mouse).tobytes() != a.tobytes()  # another seed is another world


def test_light_key_changes_frame_but_not_pose(env64):
    k = np.zeros(len(env64.key_names), np.uint8)
    o0 = env64.reset()
    day = env64.step(k, np.zeros(2)).frame
    env64.reset()
    k_light = k.copy()
    k_light[env64.key_names.index("l")] = 1
    o1 = env64.step(k_light, np.zeros(2))
    assert o1.info["night"]
    np.testing.assert_array_equal(o1.c2w, env64.controller.step(env64.spawn_state(), k, np.zeros(2)).c2w())
    assert np.abs(o1.frame.astype(int) - day.astype(int)).mean() > 40  # night is much darker
    # Holding the key does not toggle again; releasing and pressing does.
    assert env64.step(k_light, np.zeros(2)).info["night"]
    env64.step(k, np.zeros(2))
    assert not env64.step(k_light, np.zeros(2)).info["night"]
    assert o0.frame.shape == (64, 64, 3)


def test_frames_reproject_consistently_with_depth_and_poses():
    """Back-project frame t with its depth and pose, project into t+k: depth and colour agree."""
    keys, mouse = _actions(40, seed=5)
    with make_env("builtin", seed=11, frame_size=(64, 64)) as env:
        obs = [env.reset()]
        for k, m in zip(keys[:-1], mouse[:-1], strict=True):
            obs.append(env.step(k, m))
    checked = 0
    for t, dt in [(5, 2), (10, 4), (20, 3)]:
        a, b = obs[t], obs[t + dt]
        uv = pixel_centres(64, 64)
        d = a.depth.reshape(-1).astype(np.float64)
        ground = d < 60.0  # skip sky (depth = far) and far fog
        pts = unproject(uv[ground], d[ground], a.c2w, a.intrinsics)
        uv_b, z_b = project(pts, b.c2w, b.intrinsics)
        col = np.floor(uv_b).astype(int)
        inside = (z_b > 0.2) & (col[:, 0] >= 0) & (col[:, 0] < 64) & (col[:, 1] >= 0) & (col[:, 1] < 64)
        col, z_b = col[inside], z_b[inside]
        d_b = b.depth[col[:, 1], col[:, 0]]
        rel = np.abs(d_b - z_b) / z_b
        visible = rel < 0.05
        assert visible.mean() > 0.85, (t, dt, visible.mean())  # the rest are occlusions and edges
        src_rgb = a.frame.reshape(-1, 3)[ground][inside][visible].astype(int)
        dst_rgb = b.frame[col[visible, 1], col[visible, 0]].astype(int)
        assert np.median(np.abs(src_rgb - dst_rgb).sum(1)) < 24
        checked += visible.sum()
    assert checked > 3000


def test_unknown_env_and_bad_frame_size_fail_clearly():
    with pytest.raises(WorldsimError, match="unknown env 'nope'; valid: builtin, doom"):
        make_env("nope")
    for bad in (0, -2, [64], [64, 0], "64", 6.5, [True, 4]):
        if bad == [64]:
            continue  # a single-element list means square
        with pytest.raises(WorldsimError, match="frame_size"):
            make_env("builtin", frame_size=bad)
    assert "builtin" in available_envs()


def test_keys_of_wrong_shape_are_refused(env64):
    env64.reset()
    with pytest.raises(WorldsimError, match=r"keys must be 0/1 integers \(7,\); got shape \(3,\)"):
        env64.step(np.zeros(3, np.uint8), np.zeros(2))


@pytest.mark.parametrize(
    "keys, mouse, message",
    [
        (np.zeros(7), [np.nan, 0.0], r"^mouse must be finite pixels .*; got nan at \[0\]$"),
        (np.zeros(7), [0.0, np.inf], r"^mouse must be finite pixels .*; got inf at \[1\]$"),
        (np.zeros(7), [1.0, 2.0, 3.0], r"^mouse must be finite pixels \(dx, dy\) \(2,\); got shape \(3,\)$"),
        (np.full(7, 255, np.uint8), [0.0, 0.0], r"^keys must be 0/1 integers \(7,\); got 255 at \[0\]$"),
        (np.array(list("0000000")), [0.0, 0.0], r"^keys must be 0/1 integers \(7,\); got dtype <U1"),
    ],
)
def test_the_world_refuses_bad_input_and_keeps_its_pose(env64, keys, mouse, message):
    env64.reset()
    before = env64.step(np.zeros(7, np.uint8), np.array([3.0, 1.0])).c2w
    with pytest.raises(WorldsimError, match=message):
        env64.step(keys, mouse)
    np.testing.assert_array_equal(env64.state.c2w(), before)
    assert np.isfinite(env64.step(np.zeros(7, np.uint8), np.zeros(2)).c2w).all()


def test_path_collision_finds_the_frame_a_walk_enters_a_tree():
    import math

    from envs.builtin import BuiltinWorldConfig, path_collision, spawn_state
    from envs.world_gen import generate_world

    cfg, seed = BuiltinWorldConfig(), 3
    geom = generate_world(seed, cfg.gen)
    assert len(geom.obstacles) == cfg.gen.num_landmarks + cfg.gen.num_trees
    start = spawn_state(geom, cfg)
    trees = geom.obstacles[cfg.gen.num_landmarks :]
    x, y, radius, _ = trees[np.argmin(np.hypot(trees[:, 0], trees[:, 1]))]
    # Face the nearest tree on frame 0, then walk straight at it.
    turn_deg = math.degrees(math.remainder(math.atan2(x, y) - start.yaw_rad, 2 * math.pi))
    n = 60
    keys, mouse = np.zeros((n, 7), np.uint8), np.zeros((n, 2), np.float32)
    mouse[0, 0] = turn_deg / cfg.controller.mouse_deg_per_px
    keys[1:, 0] = 1  # w
    step_m = cfg.controller.move_speed_mps / cfg.controller.fps
    expected = 2 + (math.hypot(x, y) - radius - 0.5) / step_m  # frame 1 faces it; row t moves to t + 1
    hit = path_collision(seed, cfg, keys, mouse)
    assert hit is not None and abs(hit - expected) <= 1.0
    assert path_collision(seed, cfg, keys[:1], mouse[:1]) is None  # turning on the spot is clear
    # Inside the tree the screen is one dark colour: what the clean recipe keeps out of the data.
    with make_env("builtin", seed=seed, frame_size=(32, 32)) as env:
        inside = start.copy()
        inside.position = np.array([x, y, start.position[2]])
        frame = env.reset(inside).frame.astype(np.float64)
    assert frame.mean() < 60 and frame.std(axis=(0, 1)).max() < 10
