import math

import numpy as np
import pytest

from worldsim.core.controller import CameraController, CameraControllerConfig, CameraState
from worldsim.core.errors import WorldsimError
from worldsim.data.policies import POLICIES, make_policy

KEYS = ["w", "a", "s", "d", "space", "left shift", "l"]


def _keys(*held):
    k = np.zeros(len(KEYS), np.uint8)
    for h in held:
        k[KEYS.index(h)] = 1
    return k


def test_forward_moves_along_heading_and_mouse_right_turns_right():
    cfg = CameraControllerConfig(fps=10.0, move_speed_mps=5.0)
    ctrl = CameraController(cfg, KEYS)
    s = ctrl.step(CameraState(), _keys("w"), np.zeros(2))
    np.testing.assert_allclose(s.position, [0, 0.5, 0], atol=1e-9)  # yaw 0 faces +y
    s = ctrl.step(CameraState(), _keys(), np.array([4.0, 0.0]))
    assert s.yaw_rad == pytest.approx(math.radians(4 * cfg.mouse_deg_per_px))
    s = ctrl.step(CameraState(), _keys(), np.array([0.0, 1000.0]))  # dy > 0 looks down, clamped
    assert s.pitch_rad == pytest.approx(-math.radians(cfg.max_pitch_deg))


def test_uint8_keys_never_wrap_when_subtracted():
    ctrl = CameraController(CameraControllerConfig(), KEYS)
    s = ctrl.step(CameraState(), _keys("s"), np.zeros(2))  # w - s on uint8 would be 255
    assert s.position[1] < 0 and abs(s.position[1]) < 1.0
    s = ctrl.step(CameraState(), _keys("w", "s"), np.zeros(2))
    np.testing.assert_allclose(s.position, 0.0)


MOMENTUM = CameraControllerConfig(fps=17.5, move_speed_mps=9.0, momentum=0.9, ticks_per_frame=2)


def test_momentum_accelerates_to_the_set_speed_and_coasts_to_a_stop():
    """DOOM's player physics: per tick, thrust then move then keep ``momentum`` of the velocity."""
    ctrl = CameraController(MOMENTUM, KEYS)
    tick = 1.0 / (MOMENTUM.fps * MOMENTUM.ticks_per_frame)
    thrust = MOMENTUM.move_speed_mps * (1 - MOMENTUM.momentum) * tick
    s = ctrl.step(CameraState(), _keys("w"), np.zeros(2))
    # two ticks from rest: thrust, then thrust again on the velocity kept from the first
    np.testing.assert_allclose(s.position, [0, thrust + (0.9 * thrust + thrust), 0], atol=1e-12)
    for _ in range(200):
        s = ctrl.step(s, _keys("w"), np.zeros(2))
    before = s.position.copy()
    coast = ctrl.step(s, _keys(), np.zeros(2))
    held = ctrl.step(s, _keys("w"), np.zeros(2))
    # settled: a held key moves move_speed_mps, the velocity carried is what friction leaves of it
    assert held.position[1] - before[1] == pytest.approx(MOMENTUM.move_speed_mps / MOMENTUM.fps, rel=1e-6)
    np.testing.assert_allclose(s.velocity_mps, [0, 0.9 * MOMENTUM.move_speed_mps, 0], rtol=1e-6)
    assert 0 < coast.position[1] - before[1] < held.position[1] - before[1]  # released: still moving, slower
    np.testing.assert_allclose(coast.velocity_mps, s.velocity_mps * 0.9**2, rtol=1e-12)
    turned = ctrl.step(CameraState(), _keys("w"), np.array([40.0, 0.0]))  # half the turn on each tick
    assert turned.yaw_rad == pytest.approx(math.radians(40 * MOMENTUM.mouse_deg_per_px))
    assert turned.position[0] > 0  # the thrust of each tick follows that tick's heading (turning right)


def test_settle_recovers_the_velocity_a_moving_camera_carries():
    ctrl = CameraController(MOMENTUM, KEYS)
    rng = np.random.default_rng(0)
    s = CameraState(np.array([1.0, -2.0, 1.3]), 0.4, 0.0)
    for _ in range(40):
        keys, mouse = _keys(*rng.choice(["w", "a", "d", "s"], size=rng.integers(0, 3))), rng.normal(0, 8, 2)
        prev, s = s, ctrl.step(s, keys, mouse)
        settled = ctrl.settle(prev.c2w().astype(np.float64), s.c2w().astype(np.float64), keys, mouse)
        np.testing.assert_allclose(settled.velocity_mps, s.velocity_mps, atol=2e-5)  # float32 poses
    assert np.abs(s.velocity_mps).max() > 1.0
    at_rest = CameraController(CameraControllerConfig(), KEYS).settle(prev.c2w(), s.c2w(), keys, mouse)
    np.testing.assert_array_equal(at_rest.velocity_mps, 0.0)  # no momentum: nothing is carried


@pytest.mark.parametrize("bad", [{"momentum": 1.0}, {"momentum": -0.1}, {"ticks_per_frame": 0}])
def test_bad_momentum_settings_are_refused(bad):
    with pytest.raises(WorldsimError, match="controller"):
        CameraControllerConfig(**bad)


def test_controller_refuses_key_lists_without_movement_keys():
    with pytest.raises(WorldsimError, match="needs keys"):
        CameraController(CameraControllerConfig(), ["w", "x"])


def _integrate(policy_name, n=80, episode=0):
    cfg = CameraControllerConfig()
    acts = make_policy(policy_name, KEYS, cfg).actions(n, np.random.default_rng(1), episode)
    ctrl = CameraController(cfg, KEYS)
    states = [CameraState()]
    for k, m in zip(acts.keys[:-1], acts.mouse[:-1], strict=True):
        states.append(ctrl.step(states[-1], k, m))
    return acts, states


@pytest.mark.parametrize("name", [n for n in POLICIES if n != "replay" and not POLICIES[n].closed_loop])
def test_policies_give_valid_action_arrays(name):
    acts, _ = _integrate(name)
    assert acts.keys.shape == (80, 7) and acts.keys.dtype == np.uint8
    assert acts.mouse.shape == (80, 2) and acts.mouse.dtype == np.float32
    assert not acts.keys[-1].any() and not acts.mouse[-1].any()  # last row unused


def test_go_and_return_comes_back_to_the_start():
    acts, states = _integrate("go_and_return", 97)
    far = max(np.linalg.norm(s.position) for s in states)
    assert far > 10.0
    assert np.linalg.norm(states[-1].position) < 0.05 * far
    assert abs(math.remainder(states[-1].yaw_rad, 2 * math.pi)) < math.radians(2)


def test_full_turn_turns_360_degrees_in_place():
    acts, states = _integrate("full_turn", 61)
    assert acts.mouse[:-1, 0].sum() * CameraControllerConfig().mouse_deg_per_px == pytest.approx(360.0)
    np.testing.assert_allclose(states[-1].position, 0.0)


def test_glance_back_turns_away_quickly_and_back_to_the_first_heading():
    for episode in range(4):
        acts, states = _integrate("glance_back", 64, episode)
        yaw = np.degrees([s.yaw_rad for s in states])
        assert yaw[0] == 0.0 and acts.mouse[:, 1].sum() == 0.0
        away = np.flatnonzero(np.abs(yaw) >= 89.0)
        assert len(away) >= 8  # faces 90+ degrees away for a while
        back = [t for t in range(away[0], len(yaw)) if abs(yaw[t]) < 1e-3]
        assert back and back[0] - away[0] <= 30  # and comes back to the first heading
        moving = np.flatnonzero(acts.mouse[:-1, 0])
        assert np.abs(acts.mouse[moving, 0] * CameraControllerConfig().mouse_deg_per_px).min() >= 15.0  # quick turns


def test_turns_hold_steady_rates_both_ways_from_rest():
    deg = CameraControllerConfig().mouse_deg_per_px
    rates = []
    for episode in range(6):
        acts = make_policy("turns", KEYS, CameraControllerConfig()).actions(64, np.random.default_rng(episode))
        yaw = acts.mouse[:-1, 0] * deg
        assert yaw[0] == 0.0 and acts.mouse[:, 1].sum() == 0.0  # starts at rest; no pitch
        moving = yaw != 0
        starts = np.flatnonzero(moving & ~np.roll(moving, 1))
        assert len(starts) >= 2  # several turns, each after a pause
        rates += [yaw[i] for i in starts]
        assert all(1.0 <= abs(r) <= 6.0 for r in yaw[moving])
    assert min(rates) < 0 < max(rates)


def test_unknown_policy_lists_the_valid_ones():
    with pytest.raises(WorldsimError, match="unknown policy 'wander'; valid: explore, explore_lights, full_turn"):
        make_policy("wander", KEYS, CameraControllerConfig())
    with pytest.raises(WorldsimError, match="replay_from"):
        make_policy("replay", KEYS, CameraControllerConfig())


def test_go_and_return_redraw_faces_elsewhere_and_still_comes_back():
    cfg = CameraControllerConfig()
    policy = make_policy("go_and_return", KEYS, cfg)
    first = policy.actions(97, np.random.default_rng(1))
    redraw = policy.actions(97, np.random.default_rng(1), attempt=1)
    assert not np.array_equal(first.mouse, redraw.mouse)
    ctrl = CameraController(cfg, KEYS)
    states = [CameraState()]
    for k, m in zip(redraw.keys[:-1], redraw.mouse[:-1], strict=True):
        states.append(ctrl.step(states[-1], k, m))
    turned = next(i for i, k in enumerate(redraw.keys) if k.any())  # the walk starts here
    assert turned > 0 and np.allclose(states[turned].position, 0.0)
    assert np.linalg.norm(states[-1].position) < 0.5
    assert abs(math.remainder(states[-1].yaw_rad - states[turned].yaw_rad, 2 * math.pi)) < math.radians(2)


def test_explore_lights_toggles_the_light_about_four_times_as_often_as_explore():
    light = KEYS.index("l")
    presses = {}
    for name in ("explore", "explore_lights"):
        policy = make_policy(name, KEYS, CameraControllerConfig())
        rng = np.random.default_rng(3)
        presses[name] = sum(int(policy.actions(64, rng, e).keys[:, light].sum()) for e in range(200))
    # 200 episodes of 63 action rows: about 189 presses at 1.5% per frame, 756 at 6%.
    assert 120 < presses["explore"] < 260
    assert 600 < presses["explore_lights"] < 920


def _closed_loop(n, drift_deg=0.0, slip=1.0, seed=1):
    """``retrace`` driving the camera controller, the world answering with a yaw drift per frame
    and a share ``slip`` of each step's motion (momentum and walls bend DOOM's path like this)."""
    cfg = CameraControllerConfig()
    policy, ctrl = make_policy("retrace", KEYS, cfg), CameraController(cfg, KEYS)
    policy.start(n, np.random.default_rng(seed))
    states = [CameraState()]
    for t in range(n - 1):
        keys, mouse = policy.act(t, states[-1].c2w())
        nxt = ctrl.step(states[-1], keys, mouse)
        moved = states[-1].position + slip * (nxt.position - states[-1].position)
        states.append(CameraState(moved, nxt.yaw_rad + math.radians(drift_deg), nxt.pitch_rad))
    return states


@pytest.mark.parametrize(("drift_deg", "slip"), [(0.0, 1.0), (0.7, 0.8), (-0.7, 0.6)])
def test_retrace_comes_back_to_the_start_view_where_the_world_bends_its_path(drift_deg, slip):
    states = _closed_loop(160, drift_deg, slip)
    far = max(np.linalg.norm(s.position) for s in states)
    assert far > 5.0
    assert np.linalg.norm(states[-1].position) < 0.5  # the last breadcrumb is the start
    assert abs(math.remainder(states[-1].yaw_rad, 2 * math.pi)) < math.radians(8)


def test_an_open_loop_return_misses_the_start_where_the_world_bends_its_path():
    """Why ``retrace`` exists: ``go_and_return``'s input list, in the same bent world, ends far off."""
    cfg = CameraControllerConfig()
    acts = make_policy("go_and_return", KEYS, cfg).actions(160, np.random.default_rng(1))
    ctrl = CameraController(cfg, KEYS)
    s = CameraState()
    for k, m in zip(acts.keys[:-1], acts.mouse[:-1], strict=True):
        nxt = ctrl.step(s, k, m)
        s = CameraState(s.position + 0.8 * (nxt.position - s.position), nxt.yaw_rad + math.radians(0.7), nxt.pitch_rad)
    assert np.linalg.norm(s.position) > 2.0


def test_a_closed_loop_policy_has_no_input_list_to_give_ahead():
    with pytest.raises(WorldsimError, match="policy 'retrace' steers by the pose the world returns"):
        make_policy("retrace", KEYS, CameraControllerConfig()).actions(10, np.random.default_rng(0))


@pytest.mark.parametrize("n", [2, 3])
def test_retrace_of_a_few_frames_stays_at_the_start_view(n):
    """No way out to retrace (no outbound row): it must not walk off or turn to some heading."""
    cfg = CameraControllerConfig()
    policy, ctrl = make_policy("retrace", KEYS, cfg), CameraController(cfg, KEYS)
    policy.start(n, np.random.default_rng(0))
    s = CameraState(np.zeros(3), 2.5, 0.0)
    for t in range(n - 1):
        s = ctrl.step(s, *policy.act(t, s.c2w()))
    assert np.linalg.norm(s.position) < 1e-9 and s.yaw_rad == pytest.approx(2.5)


def test_retrace_needs_a_walking_key_and_says_so():
    policy = make_policy("retrace", ["a", "s", "d"], CameraControllerConfig())
    with pytest.raises(WorldsimError, match="policy 'retrace' walks with the key 'w'"):
        policy.start(10, np.random.default_rng(0))


def test_a_policy_for_a_faster_controller_moves_as_far_per_second_and_replays_rows_as_they_are():
    """make_policy resamples an open-loop scripted policy to a controller at a whole multiple of its
    15 frames/s (a full turn at 30 frames/s is still 360 degrees, in twice the frames); a closed-loop
    policy and one at a rate that is not a multiple (DOOM's 35 / tics) play their rows as drawn."""
    from worldsim.data.policies import POLICY_FPS, Resampled

    c30 = CameraControllerConfig(fps=2 * POLICY_FPS)
    turn = make_policy("full_turn", KEYS, c30).actions(121, np.random.default_rng(0))
    assert turn.mouse[:-1, 0].sum() * c30.mouse_deg_per_px == pytest.approx(360.0)
    assert np.ptp(turn.mouse[:-1, 0]) == pytest.approx(0.0) and not turn.mouse[-1].any()
    presses = make_policy("light_presses", KEYS, c30).actions(81, np.random.default_rng(1))
    drawn = make_policy("light_presses", KEYS, CameraControllerConfig()).actions(41, np.random.default_rng(1))
    np.testing.assert_array_equal(presses.keys[:-1], np.repeat(drawn.keys[:-1], 2, axis=0))
    assert isinstance(make_policy("explore", KEYS, CameraControllerConfig(fps=60.0)), Resampled)
    assert make_policy("retrace", KEYS, c30).closed_loop
    assert not isinstance(make_policy("explore", KEYS, CameraControllerConfig(fps=35 / 2)), Resampled)
    assert not isinstance(make_policy("explore", KEYS, CameraControllerConfig()), Resampled)
