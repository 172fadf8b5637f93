import numpy as np
import pytest
import torch

from envs import record as record_mod
from envs.builtin import path_collision
from envs.record import RecordConfig, record
from worldsim.core.errors import WorldsimError
from worldsim.data.clips import ClipDataset
from worldsim.data.format import RolloutMeta
from worldsim.data.reader import RolloutDataset
from worldsim.data.writer import RolloutWriter


def _rigid(rng, t):
    """``t`` random rigid camera-to-world poses (what the writer accepts)."""
    c2w = np.tile(np.eye(4, dtype=np.float32), (t, 1, 1))
    for i in range(t):
        q, r = np.linalg.qr(rng.normal(size=(3, 3)))
        q = q * np.sign(np.diag(r))
        c2w[i, :3, :3] = q * np.sign(np.linalg.det(q))
        c2w[i, :3, 3] = rng.normal(size=3) * 10
    return c2w


def _episode(t=5, h=8, w=8, k=7):
    rng = np.random.default_rng(t)
    return {
        "frames": rng.integers(0, 256, (t, h, w, 3)).astype(np.uint8),
        "c2w": _rigid(rng, t),
        "intrinsics": np.eye(3, dtype=np.float32),
        "keys": rng.integers(0, 2, (t, k)).astype(np.uint8),
        "mouse": rng.normal(size=(t, 2)).astype(np.float32),
        "timestamp_s": np.arange(t, dtype=np.float64),
        "depth": rng.uniform(0, 9, (t, h, w)).astype(np.float16),
    }


META = RolloutMeta(env="builtin", fps=15.0, frame_size=(8, 8), key_names=list("wasdxyz"))


def test_written_episodes_read_back_exactly(tmp_path):
    w = RolloutWriter(tmp_path / "d", META)
    eps = [_episode(5), _episode(7)]
    for i, e in enumerate(eps):
        w.write_episode(i, e, seed=i, policy="explore")
    data = RolloutDataset(tmp_path / "d")
    assert data.meta == META and len(data) == 2
    for i, e in enumerate(eps):
        got = data.load(i)
        assert set(got) == set(e)
        for k in e:
            assert got[k].dtype == e[k].dtype
            np.testing.assert_array_equal(got[k], e[k])
    sl = data.load_slice(1, 2, 5, ("frames", "keys", "intrinsics"))
    np.testing.assert_array_equal(sl["frames"], eps[1]["frames"][2:5])
    np.testing.assert_array_equal(sl["intrinsics"], eps[1]["intrinsics"])


def test_writer_refuses_wrong_shapes_and_mismatched_meta(tmp_path):
    w = RolloutWriter(tmp_path / "d", META)
    bad = _episode()
    bad["keys"] = bad["keys"].astype(np.int64)
    with pytest.raises(WorldsimError, match="'keys' is int64"):
        w.write_episode(0, bad)
    with pytest.raises(WorldsimError, match="different settings.*fps"):
        RolloutWriter(
            tmp_path / "d", RolloutMeta(env="builtin", fps=30.0, frame_size=(8, 8), key_names=list("wasdxyz"))
        )


@pytest.mark.parametrize(
    "spoil, message",
    [
        (lambda e: {k: (v if k == "intrinsics" else v[:0]) for k, v in e.items()}, "at least one frame; got 0 frames"),
        (
            lambda e: {**e, "mouse": np.where(np.eye(5, 2, dtype=bool), np.nan, e["mouse"]).astype(np.float32)},
            r"'mouse' must be finite pixels \(5, 2\); got nan at \[0, 0\]",
        ),
        (lambda e: {**e, "keys": np.full_like(e["keys"], 2)}, r"'keys' must be 0/1 integers \(5, 7\); got 2"),
        (lambda e: {**e, "c2w": e["c2w"] * np.float32(2)}, r"'c2w' must be finite rigid .*row 0 is not rigid"),
    ],
)
def test_writer_refuses_bad_values_and_writes_nothing(tmp_path, spoil, message):
    w = RolloutWriter(tmp_path / "d", META)
    with pytest.raises(WorldsimError, match=message) as e:
        w.write_episode(0, spoil(_episode()))
    assert "\n" not in str(e.value)
    assert not list((tmp_path / "d" / "episodes").iterdir()) and len(RolloutDataset(tmp_path / "d")) == 0


def test_reader_refuses_an_episode_with_nan_poses_written_by_another_tool(tmp_path):
    from safetensors.numpy import save_file

    w = RolloutWriter(tmp_path / "d", META)
    ep = _episode()
    w.write_episode(0, ep)
    ep["c2w"][3, 0, 0] = np.nan
    save_file(ep, str(tmp_path / "d" / w.episodes[0].file))  # bypasses the writer's checks
    data = RolloutDataset(tmp_path / "d")
    with pytest.raises(
        WorldsimError, match=r"episode file .*: array 'c2w' must be finite rigid .*got nan at \[3, 0, 0\]"
    ):
        data.load(0)
    assert data.load_slice(0, 0, 3, ("frames", "c2w"))["c2w"].shape == (3, 4, 4)  # the good rows still read


def test_truncated_or_corrupt_episode_is_named_in_the_error(tmp_path):
    w = RolloutWriter(tmp_path / "d", META)
    w.write_episode(0, _episode())
    w.write_episode(1, _episode())
    path = tmp_path / "d" / "episodes" / "000001.safetensors"
    raw = path.read_bytes()
    path.write_bytes(raw[: len(raw) // 2])
    data = RolloutDataset(tmp_path / "d")
    data.load(0)
    with pytest.raises(WorldsimError, match="000001.safetensors is corrupt or truncated"):
        data.load(1)
    path.write_bytes(b"\x00garbage" * 10)
    with pytest.raises(WorldsimError, match="000001.safetensors"):
        data.verify()


def test_missing_or_non_dataset_folders_fail_clearly(tmp_path):
    with pytest.raises(WorldsimError, match="does not exist"):
        RolloutDataset(tmp_path / "nope")
    with pytest.raises(WorldsimError, match="not a rollout dataset"):
        RolloutDataset(tmp_path)
    (tmp_path / "meta.json").write_text("{broken")
    with pytest.raises(WorldsimError, match="not valid JSON"):
        RolloutDataset(tmp_path)


def test_clip_dataset_serves_fixed_length_clips_lazily(small_dataset):
    clips = ClipDataset(small_dataset, clip_len=8, stride=4)
    assert len(clips) == 2 * ((24 - 8) // 4 + 1)
    item = clips[3]
    assert item["frames"].shape == (8, 64, 64, 3) and item["frames"].dtype == torch.uint8
    ep, start = clips.index[3]
    np.testing.assert_array_equal(item["frames"].numpy(), small_dataset.load(ep)["frames"][start : start + 8])
    assert item["keys"].shape == (8, 7) and item["c2w"].shape == (8, 4, 4)
    with pytest.raises(WorldsimError, match="long enough"):
        ClipDataset(small_dataset, clip_len=100)


def test_recorded_poses_follow_the_controller(small_dataset):
    from worldsim.core.controller import CameraController, CameraControllerConfig, CameraState

    ep = small_dataset.load(0)
    ctrl = CameraController(CameraControllerConfig(), small_dataset.meta.key_names)
    c2w0 = ep["c2w"][0]
    yaw = np.arctan2(c2w0[0, 2], c2w0[1, 2])
    s = CameraState(c2w0[:3, 3].astype(np.float64), float(yaw), 0.0)
    for t in range(len(ep["keys"]) - 1):
        s = ctrl.step(s, ep["keys"][t], ep["mouse"][t])
        np.testing.assert_allclose(s.c2w(), ep["c2w"][t + 1], atol=1e-4)


def test_interrupted_recording_keeps_finished_episodes_and_resumes(tmp_path, monkeypatch):
    out = tmp_path / "rec"
    cfg = RecordConfig(num_episodes=3, episode_len=6, out=str(out), preview=False, frame_size=[16, 16])
    real = record_mod.rollout
    calls = {"n": 0}

    def flaky(*a, **k):
        calls["n"] += 1
        if calls["n"] == 2:
            raise KeyboardInterrupt
        return real(*a, **k)

    monkeypatch.setattr(record_mod, "rollout", flaky)
    with pytest.raises(KeyboardInterrupt):
        record(cfg)
    data = RolloutDataset(out)
    assert [e.index for e in data.episodes] == [0]
    assert not list((out / "episodes").glob("*.tmp*"))
    monkeypatch.setattr(record_mod, "rollout", real)
    data = record(cfg)
    assert [e.index for e in data.episodes] == [0, 1, 2]
    data.verify()
    # Same settings from scratch give the same bytes: resuming lost nothing and changed nothing.
    fresh = record(RecordConfig(**{**cfg.__dict__, "out": str(tmp_path / "fresh")}))
    for i in range(3):
        np.testing.assert_array_equal(fresh.load(i)["frames"], data.load(i)["frames"])


def test_replay_policy_rerenders_a_dataset_exactly(small_dataset, tmp_path):
    out = tmp_path / "replayed"
    replayed = record(
        RecordConfig(
            policy="replay",
            replay_from=str(small_dataset.root),
            num_episodes=2,
            episode_len=24,
            out=str(out),
            preview=True,
        )
    )
    for i in range(2):
        np.testing.assert_array_equal(replayed.load(i)["frames"], small_dataset.load(i)["frames"])
    assert (out / "preview.mp4").stat().st_size > 1000
    assert (out / "contact_sheet.png").exists()


def test_avoid_obstacles_redraws_only_the_episodes_that_walk_into_something(tmp_path):
    # Seed 0, 32 frames: explore's first draws of episodes 0 and 2 enter a tree or the ground.
    base = dict(num_episodes=3, episode_len=32, preview=False, frame_size=[16, 16], save_depth=False)
    plain = record(RecordConfig(**base, out=str(tmp_path / "plain")))
    clear = record(RecordConfig(**base, out=str(tmp_path / "clear"), avoid_obstacles=True))
    world = RecordConfig().world
    hits = []
    for i in range(3):
        p, c = plain.load(i, ("keys", "mouse", "frames")), clear.load(i, ("keys", "mouse", "frames"))
        hits.append(path_collision(plain.episodes[i].seed, world, p["keys"], p["mouse"]))
        assert path_collision(clear.episodes[i].seed, world, c["keys"], c["mouse"]) is None
        same = np.array_equal(p["mouse"], c["mouse"]) and np.array_equal(p["keys"], c["keys"])
        assert same == (hits[-1] is None)
        if same:
            np.testing.assert_array_equal(p["frames"], c["frames"])
    assert hits[0] is not None and hits[1] is None and hits[2] is not None


def test_avoid_obstacles_gives_up_clearly_and_refuses_replay(tmp_path, small_dataset):
    base = dict(num_episodes=1, episode_len=32, preview=False, frame_size=[16, 16])
    with pytest.raises(WorldsimError, match="walked into an object or the ground in all 1 draws"):
        record(RecordConfig(**base, out=str(tmp_path / "a"), avoid_obstacles=True, max_attempts=1))
    replay = dict(policy="replay", replay_from=str(small_dataset.root))
    with pytest.raises(WorldsimError, match="scripted policy"):
        record(RecordConfig(**base, **replay, out=str(tmp_path / "b"), avoid_obstacles=True))


def test_a_closed_loop_policy_records_rows_that_replay_its_episode(tmp_path):
    """``retrace`` in the built-in world: recorded through ``closed_loop_rollout``, it ends where it
    began, facing the same way (the last frame is the first view again), and the rows it stored
    re-render the episode exactly through the open-loop ``rollout``."""
    cfg = RecordConfig(policy="retrace", num_episodes=1, episode_len=120, out=str(tmp_path / "r"), preview=False)
    ep = record(cfg).load(0)
    start, end = ep["c2w"][0], ep["c2w"][-1]
    assert np.abs(ep["c2w"][:, :3, 3] - start[:3, 3]).max() > 5.0  # it went somewhere
    assert np.linalg.norm(end[:3, 3] - start[:3, 3]) < 0.5 and float(end[:3, 2] @ start[:3, 2]) > np.cos(np.radians(8))
    assert not ep["keys"][-1].any() and not ep["mouse"][-1].any()
    again = record_mod.rollout("builtin", 0, (64, 64), cfg.world, ep["keys"], ep["mouse"], save_depth=False)
    np.testing.assert_array_equal(again["frames"], ep["frames"])
    with pytest.raises(WorldsimError, match="avoid_obstacles needs env=builtin and an open-loop scripted policy"):
        record(RecordConfig(**{**cfg.__dict__, "avoid_obstacles": True, "out": str(tmp_path / "x")}))


def test_rows_given_to_a_world_are_checked_before_they_are_stored(tmp_path):
    """A row of half-pressed or negative keys is refused in one line, not cast (0.5 -> 0, -1 -> 255)."""
    keys = np.zeros((4, 7), np.float32)
    keys[1, 0] = 0.5
    with pytest.raises(WorldsimError, match=r"keys row 1 must be 0/1 integers \(7,\)"):
        record_mod.rollout("builtin", 0, (16, 16), RecordConfig().world, keys, np.zeros((4, 2), np.float32))
