"""worldsim-eval on a tiny checkpoint: every metric and plot; metrics checked against references."""

import json
from dataclasses import replace
from types import SimpleNamespace

import numpy as np
import pytest
from skimage.metrics import peak_signal_noise_ratio, structural_similarity
from test_engine import make_tiny_checkpoint  # noqa: E402  (tests/ is on sys.path)

from envs.builtin import BuiltinWorldConfig
from worldsim.core.camera import intrinsics_from_fov
from worldsim.core.controller import CameraControllerConfig
from worldsim.core.errors import WorldsimError
from worldsim.data.metrics import PSNR_MAX_DB, psnr, ssim
from worldsim.eval.evaluate import (
    NIGHT_FRAMES,
    EvalConfig,
    episode_turn_starts,
    evaluate,
    finite_or_null,
    light_flips_followed,
    night_from_day,
    rollout_against,
    spawn_turn_starts,
    summary_lines,
    toggle_windows,
    went_dark,
)
from worldsim.eval.ground_truth import dark_frames
from worldsim.eval.idm import Pairs, idm_accuracy, train_idm
from worldsim.eval.memory_revisit import MemoryEvalConfig
from worldsim.eval.stability import StabilityConfig
from worldsim.inference.engine import Chunk


def test_psnr_and_ssim_match_scikit_image():
    rng = np.random.default_rng(0)
    a = rng.integers(0, 256, (3, 40, 56, 3), dtype=np.uint8)
    b = np.clip(a.astype(int) + rng.integers(-40, 40, a.shape), 0, 255).astype(np.uint8)
    b[2] = a[2] // 2 + 60  # a structural change, not just noise
    for i in range(3):
        ref = structural_similarity(
            a[i], b[i], channel_axis=-1, gaussian_weights=True, sigma=1.5, use_sample_covariance=False, data_range=255
        )
        assert ssim(a, b)[i] == pytest.approx(ref, abs=1e-9)
        assert psnr(a, b)[i] == pytest.approx(peak_signal_noise_ratio(a[i], b[i], data_range=255), abs=1e-9)
    assert ssim(a[:1], a[:1])[0] == pytest.approx(1.0)


def test_psnr_stops_at_its_ceiling_where_frames_are_identical_or_nearly():
    a = np.full((3, 8, 8, 3), 100, np.uint8)
    b = a.copy()
    b[1, 0, 0, 0] += 1  # one subpixel in 192 off by one level: 70.96 dB uncapped
    b[2, :2] += 1  # 48 of 192 (MSE 0.25): 54.16 dB, under the ceiling
    got = psnr(a, b)
    assert got[0] == got[1] == PSNR_MAX_DB == 60.0
    assert got[2] == pytest.approx(10 * np.log10(255**2 / 0.25))


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    return make_tiny_checkpoint(tmp_path_factory.mktemp("ck") / "tiny")


@pytest.fixture(scope="module")
def gt_data(tmp_path_factory):
    from envs.record import RecordConfig, record

    root = tmp_path_factory.mktemp("gt")
    for policy, n in (("explore", 3), ("go_and_return", 1), ("idle", 1)):
        record(RecordConfig(num_episodes=n, episode_len=24, policy=policy, seed=80000, out=str(root / policy)))
    return root


def test_the_inverse_dynamics_model_reads_actions_from_ground_truth_well_above_chance(gt_data):
    keys = ["w", "a", "s", "d", "space", "left shift", "l"]
    idm = train_idm(gt_data, keys, steps=150, batch=32)
    from worldsim.data.frames import open_datasets

    ds = open_datasets(gt_data)[0]
    arr = ds.load(0, ("frames", "keys", "mouse"))
    acc = idm_accuracy(idm, Pairs.from_rollout(arr["frames"], arr["keys"], arr["mouse"]), keys)
    assert acc["mouse x"]["accuracy"] > acc["mouse x"]["chance"] + 0.15


def test_eval_produces_every_metric_and_plot_and_the_baseline_uses_the_same_frames(tiny, gt_data, tmp_path):
    cfg = EvalConfig(
        checkpoint=str(tiny),
        data=str(gt_data),
        out=str(tmp_path / "e"),
        horizon=4,
        max_episodes=5,
        idm_data=str(gt_data),
        idm_steps=10,
        turn_starts=2,
        drift_frames=8,
        memory_revisits=MemoryEvalConfig(starts=1, lengths=[16], kinds=["turn"]),
        stability=StabilityConfig(starts=1, idle_frames=8, hold_frames=4),  # its own tests: test_stability.py
    )
    m = evaluate(cfg)
    assert m["memory_revisits"]["runs"][0]["kind"] == "turn" and "memory_turn.png" in {
        f.name for f in (tmp_path / "e").iterdir()
    }
    saved = json.loads((tmp_path / "e" / "metrics.json").read_text())
    assert saved["psnr_gain_db"] == pytest.approx(m["psnr_db_mean"] - m["copy_last_psnr_db_mean"])
    for key in ("psnr_db", "copy_last_psnr_db", "ssim", "copy_last_ssim", "idm_accuracy_generated"):
        assert len(saved["by_frame"][key]) == 4
    assert set(saved["idm"]["generated"]) == {f"key {k}" for k in ["w", "a", "s", "d", "space", "left shift", "l"]} | {
        "mouse x",
        "mouse y",
    }
    assert saved["went_dark"] in range(saved["episodes"] + 1)
    assert {"idle", "holds", "presses"} <= set(saved["stability"])  # the section runs inside evaluate
    rv = saved["revisit"]["go_and_return"]
    assert rv["episodes"] == 1 and rv["went_dark"] in (0, 1) and len(rv["per_episode_psnr_db"]) == 1
    assert saved["turning"]["starts"] == 2 and 0.0 <= saved["turning"]["discrimination"] <= 1.0
    assert 0.0 <= saved["turning"]["start_view_bound"] <= 1.0
    assert saved["drift"]["frames"] == 8 and len(saved["drift"]["gen_mean"]) == 8
    d = saved["drift"]
    agree = (np.array(d["gen_mean"]) < 60) == (np.array(d["gt_mean"]) < 60)
    assert d["light_agreement"] == pytest.approx(agree.mean())
    assert (d["light_flips"], d["light_flips_followed"]) == light_flips_followed(d["gen_mean"], d["gt_mean"])
    printed = "\n".join(summary_lines(saved))
    assert "revisit go_and_return" in printed and "went dark in" in printed and "dark where the ground truth" in printed
    assert "where the ground truth stays light" in printed and "turns to dark or light followed" in printed
    assert "what tracking alone can reach" in printed
    for png in ("psnr_vs_horizon", "ssim_vs_horizon", "idm_vs_horizon", "drift", "contact_sheet", "revisit_sheet"):
        assert (tmp_path / "e" / f"{png}.png").stat().st_size > 1000
    # Model and baseline are scored on exactly the same ground-truth frames (recomputed here).
    from worldsim.data.frames import open_datasets
    from worldsim.inference.engine import load_engine

    eng = load_engine(tiny)
    n = eng.context_frames
    ours, base, policy = [], [], []
    for ds in open_datasets(gt_data):
        for i in range(len(ds)):
            arr = ds.load(i, ("frames", "c2w", "keys", "mouse"))
            gen, gt = rollout_against(eng, arr, 4)
            np.testing.assert_array_equal(gt, arr["frames"][n : n + 4])
            ours.append(psnr(gen, gt))
            base.append(psnr(np.repeat(arr["frames"][n - 1 : n], 4, 0), gt))
            policy.append(ds.episodes[i].policy)
    assert saved["episodes"] == len(ours) == 5
    np.testing.assert_allclose(np.mean(ours, 0), saved["by_frame"]["psnr_db"], rtol=1e-12)
    np.testing.assert_allclose(np.mean(base, 0), saved["by_frame"]["copy_last_psnr_db"], rtol=1e-12)
    # Per policy, and without the episodes where repeat-last is exact (the idle player's view never changes).
    ours_p, base_p, policy = np.array(ours), np.array(base), np.array(policy)
    for p in ("explore", "go_and_return", "idle"):
        got = saved["by_policy"][p]
        assert got["episodes"] == (policy == p).sum()
        assert got["psnr_db"] == pytest.approx(ours_p[policy == p].mean(), rel=1e-12)
        assert got["psnr_gain_db"] == pytest.approx(got["psnr_db"] - base_p[policy == p].mean(), rel=1e-12)
    assert saved["by_policy"]["idle"]["copy_last_psnr_db"] == PSNR_MAX_DB  # finite: the file is strict JSON
    assert saved["static_episodes"] == 1 and saved["moving"]["episodes"] == 4
    moving = policy != "idle"
    assert saved["moving"]["psnr_gain_db"] == pytest.approx(ours_p[moving].mean() - base_p[moving].mean(), rel=1e-12)
    assert "1 episodes where the truth never moves" in printed and "idle: 1 episodes" in printed


def _rollouts_only():
    """EvalConfig settings that skip every section but the rollouts (fresh objects per call)."""
    return {
        "idm_steps": 5,
        "turn_starts": 0,
        "drift_frames": 0,
        "memory_revisits": MemoryEvalConfig(starts=0),
        "stability": StabilityConfig(idle_frames=0, hold_frames=0, press_frames=False),
    }


def test_the_evaluations_memory_top_k_reaches_the_revisit_bank_unless_the_revisits_set_their_own(
    tiny, gt_data, tmp_path
):
    """``memory_top_k`` sets the revisit evaluation's bank too; ``memory_revisits.top_k`` wins."""
    data = str(gt_data / "explore")
    only = {**_rollouts_only(), "memory_revisits": MemoryEvalConfig(starts=1, lengths=[16], kinds=["turn"])}
    cfg = EvalConfig(
        checkpoint=str(tiny), data=data, out=str(tmp_path / "e"), horizon=4, idm_data=data, max_episodes=1, **only
    )
    cfg = replace(cfg, memory="on", memory_top_k=2)
    assert evaluate(cfg)["memory_revisits"]["top_k"] == 2
    own = replace(
        cfg, out=str(tmp_path / "o"), memory_revisits=MemoryEvalConfig(starts=1, lengths=[16], kinds=["turn"], top_k=3)
    )
    assert evaluate(own)["memory_revisits"]["top_k"] == 3


def test_start_every_rolls_out_from_every_nth_frame_on_that_places_own_context(tiny, gt_data, tmp_path):
    """``start_every``: a rollout from frames 0, N, 2N, ... of each episode that leave room for
    the context and the horizon, each against the truth and repeat-last of its own start."""
    from worldsim.data.frames import open_datasets
    from worldsim.inference.engine import load_engine

    only = _rollouts_only()
    data = str(gt_data / "explore")
    cfg = EvalConfig(checkpoint=str(tiny), data=data, out=str(tmp_path / "e"), horizon=4, idm_data=data, **only)
    m = evaluate(replace(cfg, start_every=6))
    eng = load_engine(tiny)
    n = eng.context_frames
    ours, base = [], []
    ds = open_datasets(data)[0]
    for i in range(len(ds)):
        arr = ds.load(i, ("frames", "c2w", "keys", "mouse"))
        for s in range(0, 24 - n - 4 + 1, 6):  # 24-frame episodes
            gen, gt = rollout_against(eng, {k: v[s:] for k, v in arr.items()}, 4)
            np.testing.assert_array_equal(gt, arr["frames"][s + n : s + n + 4])
            ours.append(psnr(gen, gt))
            base.append(psnr(np.repeat(arr["frames"][s + n - 1 : s + n], 4, 0), gt))
    assert m["episodes"] == 3 and m["rollouts"] == len(ours) == 3 * 3
    np.testing.assert_allclose(np.mean(ours, 0), m["by_frame"]["psnr_db"], rtol=1e-12)
    np.testing.assert_allclose(np.mean(base, 0), m["by_frame"]["copy_last_psnr_db"], rtol=1e-12)
    assert m["by_policy"]["explore"]["episodes"] == 9 and "rollouts: 9 from 3 episodes" in summary_lines(m)[0]
    with pytest.raises(WorldsimError, match="start_every must be >= 0"):
        evaluate(replace(cfg, start_every=-1, out=str(tmp_path / "x")))
    assert not (tmp_path / "x").exists()


def test_eval_turns_from_the_episodes_turn_data_names(tiny, gt_data, tmp_path):
    from worldsim.inference.engine import load_engine

    data = str(gt_data / "explore")
    only = {**_rollouts_only(), "turn_starts": 2}
    cfg = EvalConfig(checkpoint=str(tiny), data=data, out=str(tmp_path / "e"), horizon=4, idm_data=data, **only)
    m = evaluate(replace(cfg, turn_data=data))
    want = [s.label for s in episode_turn_starts(data, load_engine(tiny), 2, cfg.turn_seed0)]
    assert [p["start"] for p in m["turning"]["per_start"]] == want and "episode" in want[0]
    with pytest.raises(WorldsimError, match="turn_starts must be >= 0"):
        evaluate(replace(cfg, turn_data=data, turn_starts=-1, out=str(tmp_path / "x")))


def test_metrics_json_holds_null_where_a_value_is_undefined():
    m = {"a": float("nan"), "b": [1.0, float("inf"), {"c": -float("inf")}], "d": (2, "x"), "e": np.float64(np.nan)}
    assert finite_or_null(m) == {"a": None, "b": [1.0, None, {"c": None}], "d": [2, "x"], "e": None}
    json.dumps(finite_or_null(m), allow_nan=False)


def test_went_dark_counts_dark_frames_only_where_the_truth_has_none():
    day = np.full((6, 8, 8, 3), 130, np.uint8)
    night = day.copy()
    night[3:] = 12  # the last three frames dark
    assert went_dark(night, day)  # the model went dark, the world did not
    assert not went_dark(night, night)  # the world went dark too (a light toggle): followed, not spontaneous
    assert not went_dark(day, day) and not went_dark(day, night)
    # frame by frame: a run whose truth is dark for a while still counts the frames it went dark for
    dusk = day.copy()
    dusk[:1] = 12  # the truth's first frame dark, as after a light toggle
    assert not went_dark(night, dusk) and dark_frames(night, dusk) == 3
    assert dark_frames(night, night) == 0 and dark_frames(day, night) == 0 and dark_frames(night, day) == 3


def test_light_flips_count_each_missed_turn_once():
    truth = np.array([130.0] * 10 + [12.0] * 10 + [130.0] * 10 + [12.0] * 10)  # turns at 9, 19, 29
    late = np.roll(truth, 2)  # every turn two frames late: followed
    late[:2] = 130.0
    assert light_flips_followed(late, truth) == (3, 3)
    assert light_flips_followed(np.roll(truth, 3), truth) == (3, 0)  # three frames late: missed
    missed_one = truth.copy()
    missed_one[10:20] = 130.0  # misses the turn to dark at 9 and the turn back at 19; follows 29
    assert light_flips_followed(missed_one, truth) == (3, 1)
    inverted = np.where(truth < 60, 130.0, 12.0)  # every frame wrong, every turn followed
    assert light_flips_followed(inverted, truth) == (3, 3)
    assert light_flips_followed(truth[:10], truth[:10]) == (0, 0)


def test_eval_refuses_mismatched_or_empty_data(tiny, tmp_path):
    from envs.record import RecordConfig, record

    record(RecordConfig(num_episodes=1, episode_len=8, frame_size=[32, 32], out=str(tmp_path / "s32")))
    with pytest.raises(WorldsimError, match=r"has \(32, 32\) frames, the checkpoint \(64, 64\)"):
        evaluate(EvalConfig(checkpoint=str(tiny), data=str(tmp_path / "s32"), out=str(tmp_path / "o")))
    (tmp_path / "empty").mkdir()
    with pytest.raises(WorldsimError, match="holds no rollout dataset"):
        evaluate(EvalConfig(checkpoint=str(tiny), data=str(tmp_path / "empty"), out=str(tmp_path / "o")))
    other = record(RecordConfig(num_episodes=1, episode_len=8, out=str(tmp_path / "keys")))
    with pytest.raises(WorldsimError, match="an episode of 8 frames is too short for 4 context \\+ 32 frames"):
        evaluate(
            EvalConfig(checkpoint=str(tiny), data=str(other.root), out=str(tmp_path / "o"), idm=str(tmp_path / "none"))
        )
    # A bad revisit section fails first: before the episodes' length is checked, long before it would run.
    for bad, message in (
        (MemoryEvalConfig(kinds=["circle"]), "unknown revisit trajectory 'circle'"),
        (MemoryEvalConfig(min_score=float("nan")), "min_score must be a finite number"),
        (MemoryEvalConfig(keep="oldest"), "memory keep must be one of first, newest"),
    ):
        with pytest.raises(WorldsimError, match=message):
            evaluate(
                EvalConfig(checkpoint=str(tiny), data=str(other.root), out=str(tmp_path / "o"), memory_revisits=bad)
            )
    meta = json.loads((other.root / "meta.json").read_text())
    (other.root / "meta.json").write_text(json.dumps({**meta, "fps": 30.0}))  # recorded at 30 frames/s
    with pytest.raises(WorldsimError, match="recorded with .*fps=30.0.* the checkpoint plays .*fps=15.0"):
        evaluate(EvalConfig(checkpoint=str(tiny), data=str(other.root), out=str(tmp_path / "o")))
    meta["key_names"] = ["w", "a", "s", "d", "space", "left ctrl", "l"]
    (other.root / "meta.json").write_text(json.dumps(meta))
    with pytest.raises(WorldsimError, match="records keys .*'left ctrl'.* the checkpoint"):
        evaluate(EvalConfig(checkpoint=str(tiny), data=str(other.root), out=str(tmp_path / "o")))


def test_eval_defaults_follow_the_checkpoints_frame_rate(tiny, tmp_path):
    """``data``, ``idm_data``, ``horizon`` and ``turn_dx`` left None follow the checkpoint's rate:
    the same world time (32 frames at 15 frames/s) and yaw rate (45 deg/s), and the built-in world's
    splits recorded at that rate; values given stay; a rate with no recorded default asks for data
    in one line. ``evaluate`` runs with them (the length check names the derived horizon)."""
    from envs.record import RecordConfig, record
    from worldsim import load_engine
    from worldsim.eval.evaluate import at_model_rate

    def settled(cfg, engine):
        c = at_model_rate(cfg, engine)
        return c.data, c.idm_data, c.horizon, c.turn_dx

    at15 = load_engine(tiny, bf16=False)
    ck30 = make_tiny_checkpoint(tmp_path / "ck30", controller=CameraControllerConfig(fps=30.0))
    at30 = load_engine(ck30, bf16=False)
    assert settled(EvalConfig(), at15) == ("data/builtin_v1/val", "data/builtin_v1/train", 32, 12.0)
    assert settled(EvalConfig(), at30) == ("data/builtin_v1_30fps/val", "data/builtin_v1_30fps/train", 64, 6.0)
    assert settled(EvalConfig(idm="m"), at30)[:2] == ("data/builtin_v1_30fps/val", None)  # no IDM to train
    given = EvalConfig(data="d", idm_data="i", horizon=8, turn_dx=3.0)
    assert settled(given, at30) == ("d", "i", 8, 3.0)
    at20 = load_engine(make_tiny_checkpoint(tmp_path / "ck20", controller=CameraControllerConfig(fps=20.0)))
    with pytest.raises(WorldsimError, match="no default data for a builtin checkpoint at 20 frames/s .* pass data="):
        settled(EvalConfig(), at20)
    with pytest.raises(WorldsimError, match="at 20 frames/s .* pass idm_data=<a train folder> or idm="):
        settled(EvalConfig(data="d"), at20)
    assert settled(EvalConfig(data="d", idm="m"), at20) == ("d", None, 43, 9.0)  # 2.13 s; 45 deg/s at 0.25 deg/px
    data = record(RecordConfig(num_episodes=1, episode_len=8, out=str(tmp_path / "at30"))).root
    meta = json.loads((data / "meta.json").read_text())
    (data / "meta.json").write_text(json.dumps({**meta, "fps": 30.0}))  # recorded at 30 frames/s
    with pytest.raises(WorldsimError, match="an episode of 8 frames is too short for 4 context \\+ 64 frames"):
        evaluate(EvalConfig(checkpoint=str(ck30), data=str(data), idm="m", out=str(tmp_path / "o")))


class _StandIn:
    """An engine stand-in for the turning metric: ``oracle`` returns the true next frames of the
    rollout it was reset on, otherwise it repeats the last context frame (ignores the inputs)."""

    context_frames, chunk_frames, frame_size = 4, 4, (64, 64)
    key_names = ["w", "a", "s", "d", "space", "left shift", "l"]
    intrinsics = intrinsics_from_fov(75.0, 64, 64)  # the built-in world's camera
    cfg = SimpleNamespace(controller=CameraControllerConfig(), env="builtin", levels={})  # the checkpoint's, as read

    def __init__(self, oracle):
        self.oracle, self.truth = oracle, None

    def reset(self, frames, c2w, keys, mouse, seed=None):
        self.last, self.t = frames[-1], len(frames)
        self.oracle_now = self.oracle(seed) if callable(self.oracle) else self.oracle

    def step(self, keys, mouse):
        k = self.chunk_frames
        out = self.truth[self.t : self.t + k] if self.oracle_now else np.repeat(self.last[None], k, 0)
        self.t += k
        return Chunk(out, np.tile(np.eye(4, dtype=np.float32), (k, 1, 1)))


def _turn_with(monkeypatch, stand_in, starts, horizon, given=None, noise_seeds=None):
    """``turn_discrimination`` on ``stand_in``, which learns each rollout's truth as the ground
    truth is drawn (``given``: the world config every start must reach it with)."""
    import worldsim.eval.evaluate as ev

    real = ev.world_rollout

    def recorded(engine, seed, keys, mouse, world=None):
        assert given is None or world is given  # the eval's world config (DOOM: its wad) reaches the ground truth
        arrays = real(engine, seed, keys, mouse, world)
        stand_in.truth = arrays["frames"][len(keys) - horizon - stand_in.context_frames :]  # from the context on
        return arrays

    monkeypatch.setattr(ev, "world_rollout", recorded)
    return ev.turn_discrimination(stand_in, starts, horizon=horizon, dx=12.0, noise_seeds=noise_seeds)


def test_turning_metric_credits_the_truth_and_not_a_model_that_ignores_the_mouse(monkeypatch):
    given = BuiltinWorldConfig()
    for oracle, expected in ((True, 1.0), (False, 0.0)):
        stand_in = _StandIn(oracle)
        res = _turn_with(monkeypatch, stand_in, spawn_turn_starts(stand_in, [95000, 95001], given), 8, given)
        assert res["discrimination"] == expected and res["by_horizon"] == {"4": expected, "8": expected}
        # After 24 degrees most of the view is still the start view's: with the truth pasted there,
        # even the model that ignores the mouse tells the sides apart.
        assert res["start_view_bound"] == 1.0
    # Several noise seeds: every (start, seed) pair counts, each made from its own seed. A model
    # that follows the mouse only from even seeds tells 2 of every 3 pairs apart.
    stand_in = _StandIn(lambda seed: seed is not None and seed % 2 == 0)
    starts = spawn_turn_starts(stand_in, [95000, 95001], given)
    res = _turn_with(monkeypatch, stand_in, starts, 8, given, noise_seeds=[4, 5, 6])
    assert res["discrimination"] == pytest.approx(2 / 3) and res["starts"] == 2 and res["noise_seeds"] == 3
    assert [(p["seed"], p["noise_seed"], p["correct"]) for p in res["per_start"]] == [
        (w, z, z != 5) for w in (95000, 95001) for z in (4, 5, 6)
    ]
    assert "noise_seeds" not in _turn_with(monkeypatch, stand_in, starts, 8, given)


def test_turns_from_recorded_episodes_start_where_the_recording_was_and_must_replay(gt_data, monkeypatch):
    """``turn_data``: the context is the recorded frames before a drawn frame (the recording's
    world replayed under its inputs), and the turn is scored as from a spawn."""
    from worldsim.data.reader import RolloutDataset

    explore = RolloutDataset(gt_data / "explore")
    stand_in = _StandIn(oracle=True)
    starts = episode_turn_starts(str(gt_data / "explore"), stand_in, 3, seed=7)
    assert len(starts) == 3 and len({s.label for s in starts}) == 3
    for j, start in enumerate(starts):
        at = len(start.keys) + 1  # the context ends at frame at - 1, the turn begins there
        assert stand_in.context_frames <= at <= 24
        episode = explore.load(j, ("frames", "keys"))
        np.testing.assert_array_equal(start.recorded, episode["frames"][at - 4 : at])
        np.testing.assert_array_equal(start.keys, episode["keys"][: at - 1])
    res = _turn_with(monkeypatch, stand_in, starts, 8)
    assert res["discrimination"] == 1.0 and [p["start"] for p in res["per_start"]] == [s.label for s in starts]
    assert _turn_with(monkeypatch, _StandIn(oracle=False), starts, 8)["discrimination"] == 0.0
    # a start whose replay is not its recording (here: a frame off) is refused
    late = replace(starts[0], keys=np.concatenate([starts[0].keys, starts[0].keys[-1:]]))
    late = replace(late, mouse=np.concatenate([starts[0].mouse, starts[0].mouse[-1:]]))
    with pytest.raises(WorldsimError, match="does not replay to its recorded frames"):
        _turn_with(monkeypatch, stand_in, [late], 8)
    # more starts than episodes: round after round, each start at its own frame
    more = episode_turn_starts(str(gt_data / "explore"), stand_in, 5, seed=7)
    assert [s.label.split(" frame")[0] for s in more] == [f"explore episode {i}" for i in (0, 1, 2, 0, 1)]
    assert [s.label for s in more[:3]] == [s.label for s in starts]
    # refused before any slow work, in one line each
    import worldsim.eval.evaluate as ev

    real = ev.world_rollout

    def shifted(*args, **kwargs):  # the truth one frame late
        arrays = real(*args, **kwargs)
        return {**arrays, "frames": np.roll(arrays["frames"], 1, 0)}

    monkeypatch.setattr(ev, "world_rollout", shifted)
    with pytest.raises(WorldsimError, match="episode 0 frame .* does not replay to its recorded frames"):
        episode_turn_starts(str(gt_data / "explore"), stand_in, 1, seed=7)
    monkeypatch.setattr(ev, "world_rollout", real)
    other = _StandIn(oracle=True)
    other.cfg = SimpleNamespace(controller=replace(CameraControllerConfig(), move_speed_mps=3.0), env="builtin")
    with pytest.raises(
        WorldsimError, match=r"explore was recorded with .*move_speed_mps=6.0.* the checkpoint plays .*=3.0"
    ):
        episode_turn_starts(str(gt_data / "explore"), other, 1, seed=7)
    other.cfg = SimpleNamespace(controller=CameraControllerConfig(), env="doom")
    with pytest.raises(WorldsimError, match="records the 'builtin' world, the checkpoint plays 'doom'"):
        episode_turn_starts(str(gt_data / "explore"), other, 1, seed=7)
    stand_in.context_frames = 25  # more than the 24 frames an episode holds
    with pytest.raises(WorldsimError, match="episode 0 has 24 frames, fewer than the 25 of context"):
        episode_turn_starts(str(gt_data / "explore"), stand_in, 1, seed=7)


class _Episodes:
    """A dataset stand-in for :func:`toggle_windows`: episode ``i`` is ``arrays[i]``."""

    def __init__(self, arrays):
        self.arrays = arrays

    def load(self, i, names):
        return self.arrays[i]


def _episode(dark_frames, length=40, seed=0):
    """Light frames (value 130) except ``dark_frames``, which are dark with some contrast."""
    rng = np.random.default_rng(seed)
    frames = np.full((length, 8, 8, 3), 130, np.uint8)
    for t in dark_frames:
        frames[t] = rng.integers(0, 40, (8, 8, 3))
    z = np.zeros((length, 7), np.uint8)
    return {"frames": frames, "c2w": np.tile(np.eye(4, dtype=np.float32), (length, 1, 1)), "keys": z, "mouse": z[:, :2]}


class _NightStandIn:
    """Reset on a window, then each step returns the next true frames (``oracle``), a flat dark
    frame (a generic night), or the last context frame (no toggle followed)."""

    context_frames, chunk_frames = 4, 4

    def __init__(self, mode, truths):
        self.mode, self.truths = mode, list(truths)

    def reset(self, frames, c2w, keys, mouse, seed=None):
        self.truth, self.t, self.last = self.truths.pop(0), len(frames), frames[-1]

    def step(self, keys, mouse):
        k = self.chunk_frames
        out = {
            "oracle": self.truth[self.t : self.t + k],
            "flat": np.full((k, *self.last.shape), 10, np.uint8),
            "day": np.repeat(self.last[None], k, 0),
        }[self.mode]
        self.t += k
        return Chunk(out, np.tile(np.eye(4, dtype=np.float32), (k, 1, 1)))


def test_night_from_day_takes_the_first_toggle_after_light_context_and_scores_its_night():
    eps = [
        _episode(range(20, 40)),  # turns dark at 20: context 14-17, generated 18-33
        _episode([]),  # never dark: left out
        _episode([*range(0, 10), *range(25, 40)], seed=1),  # dark at the start; the turn at 25 counts
        _episode(range(30, 40)),  # turns dark too late for 16 frames after the context
        _episode([3, 4, *range(10, 40)]),  # dark at 3 (no room for context), then at 10 after a dark frame
    ]
    windows = toggle_windows([(_Episodes(eps), i) for i in range(len(eps))], context=4)
    assert [(w[0] is eps[i], w[1]) for w, i in zip(windows, (0, 2), strict=True)] == [(True, 14), (True, 19)]
    truths = [a["frames"][s:] for a, s in windows]
    res = {mode: night_from_day(_NightStandIn(mode, truths), windows) for mode in ("oracle", "flat", "day")}
    dark_after = NIGHT_FRAMES - 2  # the first two generated frames are still light
    assert res["oracle"]["toggles"] == 2 and res["oracle"]["night_frames"] == 2 * dark_after
    assert res["oracle"]["contrast_ratio_median"] == 1.0 and res["oracle"]["gen_dark_share"] == 1.0
    assert res["oracle"]["gen_contrast_median"] == res["oracle"]["gt_contrast_median"] > 5
    assert res["flat"]["contrast_ratio_median"] == 0.0 and res["flat"]["gen_dark_share"] == 1.0
    assert res["day"]["gen_dark_share"] == 0.0 and res["day"]["gen_mean_median"] == 130.0


def test_eval_scores_night_from_day_on_toggle_data_and_refuses_data_without_one(tiny, gt_data, tmp_path):
    from envs.record import RecordConfig, record

    rc = RecordConfig(num_episodes=4, episode_len=64, policy="explore_lights", seed=98000, out=str(tmp_path / "l"))
    lights = record(rc)
    base = {"checkpoint": str(tiny), "data": str(gt_data), "horizon": 4, "max_episodes": 1, "idm_data": str(gt_data)}
    only = _rollouts_only()
    m = evaluate(EvalConfig(**base, **only, out=str(tmp_path / "e"), night_data=str(lights.root)))
    n = m["night_from_day"]
    assert n["toggles"] >= 1 and n["night_frames"] >= n["toggles"]
    assert len(n["per_toggle_contrast_ratio"]) == n["toggles"]
    assert "night from day context:" in "\n".join(summary_lines(m))
    with pytest.raises(WorldsimError, match="no episode of .* turns dark after 4 light frames"):
        evaluate(EvalConfig(**base, out=str(tmp_path / "x"), idm=str(tmp_path / "none"), night_data=str(gt_data)))
    assert not (tmp_path / "x").exists()  # refused before anything was written
