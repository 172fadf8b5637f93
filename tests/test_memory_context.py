"""Camera-overlap scoring and the memory-context clips of the teacher's data."""

import dataclasses

import numpy as np
import pytest
import torch

from worldsim.core.actions import make_action_encoder
from worldsim.core.camera import intrinsics_from_fov, make_c2w
from worldsim.core.errors import WorldsimError
from worldsim.inference.context import ConditioningConfig
from worldsim.memory.scoring import fov_overlap
from worldsim.model.codec import Codec, CodecConfig
from worldsim.train.config import TeacherConfig
from worldsim.train.teacher_data import ClipSampler, EncodedSplit

K = torch.from_numpy(intrinsics_from_fov(60.0, 64, 64)).float()


def _pose(x, yaw_deg):
    return torch.from_numpy(make_c2w(np.array([x, 0.0, 2.0]), np.deg2rad(yaw_deg), 0.0)).float()


def test_overlap_is_one_for_the_same_view_and_falls_with_turning_and_distance():
    q = _pose(0, 0)[None]
    cands = torch.stack([_pose(0, 0), _pose(0, 30), _pose(0, 90), _pose(0, 180), _pose(60, 0)])
    s = fov_overlap(q, cands, K, (64, 64), generator=torch.Generator().manual_seed(0))[0]
    assert s[0] == 1.0
    assert 1.0 > s[1] > s[2] >= 0.0
    assert s[3] == 0.0 and s[4] == 0.0  # behind, and farther than the radius


def test_frame_actions_condition_each_frame_on_the_input_that_produced_it():
    enc = make_action_encoder("keyboard_mouse", ["w", "a", "s", "d", "space", "left shift", "l"])
    keys = np.zeros((3, 7), np.uint8)
    keys[0, 0] = 1  # w held on the step from frame 0 to frame 1
    a = enc.frame_actions(keys, np.zeros((3, 2), np.float32))
    np.testing.assert_array_equal(a[0], enc.null_action())
    np.testing.assert_array_equal(a[1], enc.encode(keys[0], np.zeros(2, np.float32)))


def test_memory_clips_replace_the_oldest_chunk_with_an_earlier_overlapping_view(small_dataset):
    enc = make_action_encoder("keyboard_mouse", small_dataset.meta.key_names)
    split = EncodedSplit.encode(str(small_dataset.root), Codec(CodecConfig(4, 4, 16)), enc, "encode")
    tc = TeacherConfig(context_chunks=2, memory_prob=1.0, memory_top=1)
    clips = ClipSampler(split, 2, tc, ConditioningConfig(), (16, 16), torch.from_numpy(enc.null_action()))
    b = clips.batch(0, 0, 32)
    assert b.x0.shape == (32, 6, 4, 16, 16) and b.plucker.shape == (32, 6, 6, 16, 16)
    assert b.memory.any()
    for i in torch.nonzero(b.memory).flatten().tolist():
        # The memory chunk's poses come from the same episode, before the recent chunk, not adjacent to it.
        (e,) = [e for e, c in enumerate(split.c2w) if any(torch.equal(b.c2w[i, 2], c[t]) for t in range(len(c)))]
        times = [
            next(t for t in range(len(split.c2w[e])) if torch.equal(b.c2w[i, j], split.c2w[e][t])) for j in range(6)
        ]
        assert times[1] == times[0] + 1 and times[3] == times[2] + 1
        assert times[1] < times[2] - 2
    plain = clips.batch(0, 0, 32, train=False)
    assert not plain.memory.any()


def test_focus_clips_are_those_whose_generated_chunk_follows_a_key_press(small_dataset):
    enc = make_action_encoder("keyboard_mouse", small_dataset.meta.key_names)
    split = EncodedSplit.encode(str(small_dataset.root), Codec(CodecConfig(4, 4, 16)), enc, "encode")
    null = torch.from_numpy(enc.null_action())
    names = list(small_dataset.meta.key_names)
    keys = [small_dataset.load(e, ("keys",))["keys"] for e in range(len(small_dataset))]
    index = ClipSampler(split, 2, TeacherConfig(context_chunks=2), ConditioningConfig(), (16, 16), null).index

    def by_hand(j, first=4):
        """Clips whose frames from s + first to s + 5 of [s, s + 6) (the generated chunk, by
        default) follow a press of key j: row t of the keys takes frame t to t + 1, and keys are up
        before row 0."""
        out = []
        for p, (e, s) in enumerate(index):
            col = keys[e][:, j]
            press_rows = [t for t in range(len(col)) if col[t] and (t == 0 or not col[t - 1])]
            if any(s + first <= t + 1 <= s + 5 for t in press_rows):
                out.append(p)
        return out

    expected = {n: by_hand(j) for j, n in enumerate(names)}
    key = next(n for n in names if 0 < len(expected[n]) < len(index))  # the data has both kinds of clip
    tc = TeacherConfig(context_chunks=2, memory_prob=0.0, action_drop=0.0, focus_keys=[key], focus_prob=1.0)
    clips = ClipSampler(split, 2, tc, ConditioningConfig(), (16, 16), null)
    assert clips.focus == expected[key]
    # focus_frames (the DMD stage's focus_window): the press may fall anywhere in the clip's last
    # focus_frames frames, so clips whose last chunk comes after the press are focus clips too
    window = ClipSampler(split, 2, tc, ConditioningConfig(), (16, 16), null, focus_frames=4)
    assert window.focus == by_hand(names.index(key), first=2) and len(window.focus) > len(clips.focus)
    assert set(clips.focus) < set(window.focus)
    for bad in (0, 1, 7):
        msg = rf"focus_frames must lie between one chunk \(2\) and the clip \(6\), got {bad}"
        with pytest.raises(WorldsimError, match=msg):
            ClipSampler(split, 2, tc, ConditioningConfig(), (16, 16), null, focus_frames=bad)
    # focus_prob 1: every training clip is a focus clip (its actions are that clip's)
    b = clips.batch(0, 0, 16)
    focus_actions = [split.actions[e][s : s + 6] for e, s in (index[p] for p in expected[key])]
    assert all(any(torch.equal(b.actions[i], a) for a in focus_actions) for i in range(16))
    # focus_prob 0 (the default) draws exactly the batches it drew before the option
    plain = ClipSampler(split, 2, TeacherConfig(context_chunks=2), ConditioningConfig(), (16, 16), null)
    off = TeacherConfig(context_chunks=2, focus_keys=[key], focus_prob=0.0)
    same = ClipSampler(split, 2, off, ConditioningConfig(), (16, 16), null)
    assert same.focus == [] and torch.equal(plain.batch(3, 5, 8).x0, same.batch(3, 5, 8).x0)
    with pytest.raises(WorldsimError, match=r"focus_keys must name keys of the data .* got \['W'\]"):
        ClipSampler(split, 2, TeacherConfig(focus_keys=["W"], focus_prob=0.5), ConditioningConfig(), (16, 16), null)
    # a key whose presses never reach a generated chunk leaves nothing to focus on
    unused = next(n for n in names if not expected[n])
    idle = TeacherConfig(context_chunks=2, focus_keys=[unused], focus_prob=0.5)
    with pytest.raises(WorldsimError, match=rf"no clip of 6 frames shows a press of \['{unused}'\]"):
        ClipSampler(split, 2, idle, ConditioningConfig(), (16, 16), null)


def test_each_frame_weighs_dark_weight_when_darker_than_dark_mean(small_dataset):
    enc = make_action_encoder("keyboard_mouse", small_dataset.meta.key_names)
    split = EncodedSplit.encode(str(small_dataset.root), Codec(CodecConfig(4, 4, 16)), enc, "encode")
    null = torch.from_numpy(enc.null_action())
    means = [small_dataset.load(e, ("frames",))["frames"].mean(axis=(1, 2, 3)) for e in range(len(small_dataset))]
    cut = float(np.median(np.concatenate(means)))  # about half the frames count as dark
    base = {"context_chunks": 2, "memory_prob": 1.0, "memory_top": 1}
    dark = TeacherConfig(**base, dark_mean=cut, dark_weight=3.0)
    clips = ClipSampler(split, 2, dark, ConditioningConfig(), (16, 16), null)
    assert [d.tolist() for d in clips.dark] == [(m < cut).tolist() for m in means]
    # every frame of a batch, retrieved chunks included, weighs by its own frame: checked on
    # darkness drawn at random per frame, so that no two neighbouring frames need agree
    g = torch.Generator().manual_seed(0)
    clips.dark = [torch.rand(len(z), generator=g) < 0.5 for z in split.latents]
    b = clips.batch(0, 0, 32)
    assert b.memory.any()
    normed = [((z.float() - clips.mean) / clips.std) for z in split.latents]
    for i in range(32):
        for j in range(6):
            e, t = next((e, t) for e, z in enumerate(normed) for t in range(len(z)) if torch.equal(z[t], b.x0[i, j]))
            assert b.weight[i, j] == (3.0 if clips.dark[e][t] else 1.0)
    assert (b.weight == 3.0).any() and (b.weight == 1.0).any()
    # by the context: every frame of a chunk weighs by the last frame of the chunk before it in
    # the clip (a retrieved chunk too), the first chunk 1; the clips themselves are the same
    by_context = ClipSampler(
        split,
        2,
        TeacherConfig(**base, dark_mean=cut, dark_weight=3.0, dark_weight_by="context"),
        ConditioningConfig(),
        (16, 16),
        null,
    )
    by_context.dark = clips.dark
    c = by_context.batch(0, 0, 32)
    assert torch.equal(c.x0, b.x0)
    for i in range(32):
        src = [
            next((e, t) for e, z in enumerate(normed) for t in range(len(z)) if torch.equal(z[t], c.x0[i, j]))
            for j in range(6)
        ]
        before = [src[(j // 2) * 2 - 1] for j in range(2, 6)]  # the last frame of the chunk before frame j
        expected = [1.0, 1.0] + [3.0 if clips.dark[e][t] else 1.0 for e, t in before]
        assert c.weight[i].tolist() == expected
    assert (c.weight[:, 2:] == 3.0).any() and (c.weight[:, 2:] == 1.0).any()
    # dark_weight 1 (the default): every frame weighs 1, and the clips are those drawn before the option
    plain = ClipSampler(split, 2, TeacherConfig(**base), ConditioningConfig(), (16, 16), null)
    p = plain.batch(0, 0, 32)
    assert plain.dark is None and torch.equal(p.x0, b.x0) and torch.equal(p.weight, torch.ones(32, 6))


@pytest.fixture(scope="module")
def turning_dataset(tmp_path_factory):
    """One recorded glance_back episode (it turns away quickly and back to its first view)."""
    from envs.record import RecordConfig, record

    out = tmp_path_factory.mktemp("ds") / "glance"
    return record(RecordConfig(policy="glance_back", num_episodes=1, episode_len=64, out=str(out), preview=False))


def _bank_coverage(split):
    """``cover(query_pose (4, 4), chunk_poses (k, 4, 4))``: the share of the query's view that the
    play-time bank gives one stored chunk (a one-entry bank, no distance term)."""
    from worldsim.memory.bank import MemoryBank, MemoryConfig

    bank = MemoryBank(MemoryConfig(capacity=1, distance_weight=0.0, keep="newest"), split.intrinsics, split.frame_size)

    def cover(query, chunk):
        k = len(chunk)
        slot = bank.add(torch.zeros(k, 1, 1, 1), torch.zeros(k, 1), chunk, frame=0)
        return float(bank.scores(query[None], torch.tensor([slot]))[0])

    return cover


def _swaying_split(t=64):
    """An episode made up here: the camera sways 80 degrees left and right every 24 frames while
    it creeps forward (no two poses alike), each frame with its own random latent."""
    g = torch.Generator().manual_seed(0)
    poses = [
        make_c2w(np.array([0.05 * i, 0.0, 2.0]), np.radians(80 * np.sin(2 * np.pi * i / 24)), 0.0) for i in range(t)
    ]
    return EncodedSplit(
        latents=[torch.randn(t, 4, 16, 16, generator=g).half()],
        actions=[torch.zeros(t, 3)],
        c2w=[torch.from_numpy(np.stack(poses)).float()],
        intrinsics=K,
        frame_size=(64, 64),
        key_names=["w", "a", "l"],
        sources=[],
    )


def test_bank_scored_memory_clips_retrieve_what_the_play_time_bank_scores_best():
    split = _swaying_split()
    tc = TeacherConfig(context_chunks=2, memory_prob=1.0, memory_top=1, memory_scoring="bank", action_drop=0.0)
    clips = ClipSampler(split, 2, tc, ConditioningConfig(), (16, 16), torch.zeros(3))
    b = clips.batch(0, 0, 32)
    c2w, lat = split.c2w[0], split.latents[0].float()
    cover = _bank_coverage(split)
    interior = 0
    for i in torch.nonzero(b.memory).flatten().tolist():
        m, s2 = (next(t for t in range(len(lat)) if torch.equal(b.x0[i, j], lat[t])) for j in (0, 2))
        s, q = s2 - 2, s2 + 3  # the clip's start and its newest frame
        scores = {
            a: cover(c2w[q], c2w[a : a + 2]) - 0.1 * float((c2w[a + 1, :3, 3] - c2w[q, :3, 3]).norm()) / 20
            for a in range(0, s - 1)
        }
        assert m == max(scores, key=scores.__getitem__), (m, s)
        interior += 0 < m < s - 2
    assert interior >= 5  # the best view lies between the ends of the candidates, not at one


def test_revisit_clips_are_those_only_the_retrieved_chunk_can_draw(turning_dataset):
    enc = make_action_encoder("keyboard_mouse", turning_dataset.meta.key_names)
    split = EncodedSplit.encode(str(turning_dataset.root), Codec(CodecConfig(4, 4, 16)), enc, "encode")
    null = torch.from_numpy(enc.null_action())
    tc = TeacherConfig(context_chunks=2, memory_prob=1.0, memory_scoring="bank", revisit_prob=1.0)
    clips = ClipSampler(split, 2, tc, ConditioningConfig(), (16, 16), null)
    cover = _bank_coverage(split)

    def by_hand(sampler, newest):
        """The clips whose frame ``newest`` (from the clip's start) an earlier chunk covers by at
        least 0.5 while the chunk after the one retrieval replaces covers less than 0.3."""
        out = []
        for p, (e, s) in enumerate(sampler.index):
            if s < 2:
                continue
            c2w = split.c2w[e]
            earlier = max(cover(c2w[s + newest], c2w[a : a + 2]) for a in range(0, s - 1))
            if earlier >= 0.5 and cover(c2w[s + newest], c2w[s + 2 : s + 4]) < 0.3:
                out.append(p)
        return out

    revisits = by_hand(clips, 5)  # 2 context chunks: the one retrieval does not replace is the only recent one
    assert clips.revisit == revisits and 0 < len(revisits) < len(clips.index)
    # revisit_prob 1: every training clip is a revisit clip whose retrieved chunk shows its view
    best = ClipSampler(split, 2, dataclasses.replace(tc, memory_top=1), ConditioningConfig(), (16, 16), null)
    b = best.batch(0, 0, 8)
    for i in range(8):
        assert b.memory[i]
        assert cover(b.c2w[i, 5], b.c2w[i, :2]) >= 0.45 and cover(b.c2w[i, 5], b.c2w[i, 2:4]) < 0.3
    # recent_chunks: only the chunks right after the retrieved one are the context that must not
    # show the view (a student's revisit clip: the true context, then the window it generates)
    tc3 = dataclasses.replace(tc, context_chunks=3)
    every = ClipSampler(split, 2, tc3, ConditioningConfig(), (16, 16), null)
    first = ClipSampler(split, 2, tc3, ConditioningConfig(), (16, 16), null, recent_chunks=1)
    revisits = by_hand(first, 7)
    assert first.revisit == revisits and set(every.revisit) < set(revisits)
    with pytest.raises(WorldsimError, match="recent_chunks must lie between 1 and 2, got 3"):
        ClipSampler(split, 2, tc3, ConditioningConfig(), (16, 16), null, recent_chunks=3)
    # the defaults draw exactly the batches drawn before the options
    plain = ClipSampler(split, 2, TeacherConfig(context_chunks=2), ConditioningConfig(), (16, 16), null)
    off = TeacherConfig(context_chunks=2, revisit_prob=0.0, revisit_min=0.9)
    assert torch.equal(
        plain.batch(3, 5, 8).x0, ClipSampler(split, 2, off, ConditioningConfig(), (16, 16), null).batch(3, 5, 8).x0
    )
    with pytest.raises(WorldsimError, match="unknown teacher.memory_scoring 'banks'"):
        ClipSampler(split, 2, TeacherConfig(memory_scoring="banks"), ConditioningConfig(), (16, 16), null)
    with pytest.raises(WorldsimError, match="revisit_prob draws memory clips"):
        ClipSampler(split, 2, TeacherConfig(memory_prob=0.0, revisit_prob=0.5), ConditioningConfig(), (16, 16), null)
