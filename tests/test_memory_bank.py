"""The memory bank on its own: geometry of the score, invariance, the spatial hash against brute
force, diversity, the bound and its eviction order, determinism and saved state."""

import math

import numpy as np
import pytest
import torch

from worldsim.core.camera import intrinsics_from_fov, make_c2w
from worldsim.core.errors import WorldsimError
from worldsim.memory.bank import MemoryBank, MemoryConfig

SIZE = (64, 64)
K = torch.from_numpy(intrinsics_from_fov(75.0, *SIZE))


def _pose(x, y, yaw_deg, z=1.6, pitch_deg=0.0):
    return torch.from_numpy(make_c2w(np.array([x, y, z]), math.radians(yaw_deg), math.radians(pitch_deg))).double()


def _chunk(pose, k=2):
    """A chunk standing still at ``pose``, latents marked by the pose's x so entries differ."""
    c2w = pose[None].expand(k, 4, 4).clone()
    return torch.full((k, 4, 8, 8), float(pose[0, 3])), torch.zeros(k, 5), c2w


def _bank(**cfg):
    return MemoryBank(MemoryConfig(**cfg), K, SIZE)


def _random_bank(g, n=60, **cfg):
    bank = _bank(**cfg)
    for i in range(n):
        x, y = (torch.rand(2, generator=g) * 60 - 30).tolist()
        yaw = float(torch.rand(1, generator=g) * 360)
        bank.add(*_chunk(_pose(x, y, yaw)), frame=2 * i, state=int(torch.rand(1, generator=g) < 0.2))
    return bank


def test_an_entry_seen_from_the_same_pose_scores_highest_and_one_facing_away_zero():
    bank = _random_bank(torch.Generator().manual_seed(0), cell_m=0.5)
    query = _pose(3.0, -2.0, 40.0)
    same = bank.add(*_chunk(query), frame=500)
    away = bank.add(*_chunk(_pose(3.0, -2.0, 220.0)), frame=502)
    slots = bank.candidates(query[None].expand(2, 4, 4), before_frame=1000, state=0)
    scores = dict(zip(slots.tolist(), bank.scores(query[None].expand(2, 4, 4), slots).tolist(), strict=True))
    assert scores[same] == 1.0 and scores[away] == 0.0
    assert max(scores.values()) == 1.0 and sum(v == 1.0 for v in scores.values()) == 1
    assert bank.retrieve(query[None].expand(2, 4, 4), before_frame=1000)[0].slot == same
    # At the same place and heading but pitched 70 degrees up or down: the images share a sliver.
    pitched = _bank()
    for pitch in (70.0, -70.0):
        slot = pitched.add(*_chunk(_pose(0.0, 0.0, 30.0, pitch_deg=pitch)), frame=0)
        level = _pose(0.0, 0.0, 30.0)[None].expand(2, 4, 4)
        assert pitched.coverage(level, torch.tensor([slot])).double().mean() < 0.15
    # The same far from the world's origin: the entry at the query's pose still covers every point.
    far = _bank()
    for x, y in ((10_000.0, -7_000.0), (-3_000.5, 2_000.25)):
        pose = _pose(x, y, 40.0, pitch_deg=-20.0)
        slot = far.add(*_chunk(pose), frame=0)
        assert far.coverage(pose[None].expand(2, 4, 4), torch.tensor([slot])).all()
    # 10 m behind, facing the same way: (almost) every point is in its image, but it sees 20 m far.
    behind = _bank()
    slot = behind.add(*_chunk(_pose(0.0, -10.0, 0.0)), frame=0)
    seen = behind.coverage(_pose(0.0, 0.0, 0.0)[None].expand(2, 4, 4), torch.tensor([slot])).double().mean()
    assert 0.05 < seen < 0.5


def _seen_directly(bank, query, slots):
    """The coverage by its definition, in float64: each point into each entry's camera frame,
    projected with the intrinsics; in front, inside the image, within ``radius_m``."""
    world = bank.points @ query[:3, :3].T + query[:3, 3]
    cam = torch.einsum("mij,nj->mni", torch.linalg.inv(bank.anchor[slots])[:, :3, :3], world)
    cam = cam + torch.linalg.inv(bank.anchor[slots])[:, None, :3, 3]
    x, y, z = cam.unbind(-1)
    u, v = K[0, 0] * x / z + K[0, 2], K[1, 1] * y / z + K[1, 2]
    inside = (z > 0) & (u > 0) & (u < SIZE[1]) & (v > 0) & (v < SIZE[0])
    return inside & (cam.norm(dim=-1) <= bank.cfg.radius_m)


def test_coverage_is_the_direct_projection_of_every_point():
    g = torch.Generator().manual_seed(5)
    bank = _bank(cell_m=0.1)
    for i in range(80):  # near one another, every heading, pitched up to 40 degrees
        x, y = (torch.rand(2, generator=g) * 30 - 15).tolist()
        yaw, pitch = float(torch.rand(1, generator=g) * 360), float(torch.rand(1, generator=g) * 80 - 40)
        bank.add(*_chunk(_pose(x, y, yaw, pitch_deg=pitch)), frame=2 * i)
    slots = torch.arange(len(bank))
    wrong = total = 0
    for _ in range(10):
        x, y = (torch.rand(2, generator=g) * 30 - 15).tolist()
        query = _pose(
            x, y, float(torch.rand(1, generator=g) * 360), pitch_deg=float(torch.rand(1, generator=g) * 40 - 20)
        )
        got = bank.coverage(query[None].expand(2, 4, 4), slots)
        want = _seen_directly(bank, query, slots)
        wrong += int((got != want).sum())
        total += want.numel()
        assert want.any(1).sum() > 10  # many entries see part of the view
    assert wrong <= total // 10_000, (wrong, total)  # float32 against float64: at most a rare boundary point


@pytest.mark.parametrize("shift_m", [(123.4, -56.7, 8.9), (4321.0, -2987.5, 8.9)])
def test_scores_and_retrieval_are_invariant_to_a_global_rigid_motion(shift_m):
    """Also kilometres from the world's origin, where float32 world coordinates would round the
    reach test (the geometry is computed relative to the query)."""
    g = torch.Generator().manual_seed(1)
    c, s = math.cos(1.1), math.sin(1.1)  # a rigid motion exact in float64: turn about z, then shift
    x, y, z = shift_m
    moved = torch.tensor([[c, -s, 0, x], [s, c, 0, y], [0, 0, 1, z], [0, 0, 0, 1]], dtype=torch.float64)
    a, b = _random_bank(g, top_k=3, min_score=0.05), _bank(top_k=3, min_score=0.05)
    for slot in range(len(a)):
        b.add(a.latents[slot], a.actions[slot], moved @ a.c2w[slot], int(a.frame[slot]), int(a.state[slot]))
    hits = 0
    for i in range(20):
        q = _pose(*(torch.rand(2, generator=g) * 40 - 20).tolist(), float(torch.rand(1, generator=g) * 360))
        qa, qb = q[None].expand(2, 4, 4), (moved @ q)[None].expand(2, 4, 4)
        sa, sb = a.candidates(qa, 10_000, 0), b.candidates(qb, 10_000, 0)
        assert torch.equal(sa, sb), i
        torch.testing.assert_close(a.scores(qa, sa), b.scores(qb, sb), atol=1e-9, rtol=0)
        ha, hb = a.retrieve(qa, 10_000), b.retrieve(qb, 10_000)
        assert [h.slot for h in ha] == [h.slot for h in hb]
        assert [h.score for h in ha] == pytest.approx([h.score for h in hb], abs=1e-9)
        hits += len(ha)
    assert hits >= 10  # the comparison is not of empty lists


def test_the_spatial_hash_finds_exactly_the_entries_brute_force_finds():
    g = torch.Generator().manual_seed(2)
    bank = _random_bank(g, n=200, radius_m=7.0)
    for _ in range(30):
        q = _pose(*(torch.rand(2, generator=g) * 60 - 30).tolist(), 0.0)
        for state in (0, 1):
            want = [
                s
                for s in range(bank.cfg.capacity)
                if bank.frame[s] >= 0
                and (bank.c2w[s, -1, :3, 3] - q[:3, 3]).norm() <= 7.0
                and bank.frame[s] + 2 <= 300
                and bank.state[s] == state
            ]
            assert bank.candidates(q[None].expand(2, 4, 4), 300, state).tolist() == want


def test_top_k_is_diversity_aware_and_respects_the_minimum_score():
    bank = _bank(top_k=3, min_score=0.2, cell_m=0.05)
    query = _pose(0.0, 0.0, 0.0)
    a = bank.add(*_chunk(_pose(0.0, 0.0, -30.0)), frame=0)  # turned left: the left of the view
    b = bank.add(*_chunk(_pose(0.1, 0.0, -30.0)), frame=2)  # nearly a's view: adds almost nothing after a
    c = bank.add(*_chunk(_pose(0.0, 0.0, 30.0)), frame=4)  # turned right: what a misses
    hits = bank.retrieve(query[None].expand(2, 4, 4), before_frame=100)
    assert [h.slot for h in hits][:2] in ([a, c], [b, c]) and len(hits) == 2
    assert hits[0].score > hits[1].score >= 0.2
    alone = bank.scores(query[None].expand(2, 4, 4), torch.tensor([a, b, c]))
    assert alone[1] > hits[1].score  # b alone scores high; after a it would not
    assert bank.retrieve(_pose(0.0, 0.0, 180.0)[None].expand(2, 4, 4), before_frame=100) == []


def test_with_discount_window_what_the_context_already_shows_is_not_retrieved_again():
    """With ``discount_window`` an entry counts only for the points the context's chunks do not
    cover: the same view as the context scores nothing, the half the context lacks scores about
    half."""
    bank = _bank(min_score=0.2, cell_m=0.05, heading_bins=16, discount_window=True)  # 0 and 30 degrees: two places
    query = _pose(0.0, 0.0, 0.0)[None].expand(2, 4, 4)
    same = bank.add(*_chunk(_pose(0.0, 0.0, 0.0)), frame=0)
    right = bank.add(*_chunk(_pose(0.0, 0.0, 30.0)), frame=2)
    assert bank.retrieve(query, before_frame=100)[0].slot == same
    hits = bank.retrieve(query, before_frame=100, context_c2w=_pose(0.0, 0.0, 0.0)[None])
    assert hits == []  # the context shows the view: nothing to add
    hits = bank.retrieve(query, before_frame=100, context_c2w=_pose(0.0, 0.0, -30.0)[None])
    assert [h.slot for h in hits] == [same] or [h.slot for h in hits] == [right]
    left_only = bank.coverage(query, torch.tensor([same])).double().mean() - hits[0].score
    assert 0.3 < hits[0].score < 0.7 and left_only > 0.3


def test_by_default_an_older_view_comes_back_while_the_window_shows_it():
    """The default bank (no ``discount_window``) brings a place's entry back even while the
    window shows the same view (a still player's anchor), with the score it has alone."""
    bank = _bank(cell_m=0.05, heading_bins=16)
    query = _pose(0.0, 0.0, 0.0)[None].expand(2, 4, 4)
    same = bank.add(*_chunk(_pose(0.0, 0.0, 0.0)), frame=0)
    bank.add(*_chunk(_pose(0.0, 0.0, 30.0)), frame=2)
    hits = bank.retrieve(query, before_frame=100, context_c2w=_pose(0.0, 0.0, 0.0)[None])
    assert [h.slot for h in hits] == [same] and hits[0].score == pytest.approx(1.0)


def test_a_place_keeps_its_first_chunk_or_its_newest_and_one_per_state():
    """``keep="first"`` (the default) drops a later chunk of a kept place (``add`` gives -1) and
    leaves the entry as it was; ``keep="newest"`` replaces it; a chunk of the same place in the
    other state is a place of its own under both."""
    for keep in ("first", "newest"):
        bank = _bank(keep=keep)
        first = bank.add(*_chunk(_pose(0.0, 0.0, 0.0)), frame=0)
        later = bank.add(*_chunk(_pose(0.3, 0.2, 5.0)), frame=40)  # the same 2 m cell and heading sector
        night = bank.add(*_chunk(_pose(0.3, 0.2, 5.0)), frame=42, state=1)
        assert night not in (first, -1) and len(bank) == 2
        if keep == "first":
            assert later == -1 and int(bank.frame[first]) == 0 and float(bank.latents[first].max()) == 0.0
        else:
            assert later == first and int(bank.frame[first]) == 40
            assert float(bank.latents[first].max()) == pytest.approx(0.3)
        for state, slot in ((0, first), (1, night)):
            assert [h.slot for h in bank.retrieve(_pose(0.0, 0.0, 0.0)[None].expand(2, 4, 4), 100, state)] == [slot]


def test_the_coarse_pass_keeps_the_best_entries_of_a_crowded_area():
    """With more candidates than the shortlist, retrieval picks what scoring every candidate on
    every point picks, for queries all over a crowded area."""
    g = torch.Generator().manual_seed(3)
    crowded = _random_bank(g, n=400, capacity=400, cell_m=0.5, top_k=2)
    exact = _bank(capacity=400, cell_m=0.5, top_k=2, shortlist=400)
    exact.load_state_dict(crowded.state_dict())
    agree, found = 0, 0
    for _ in range(40):
        x, y, yaw = (
            torch.rand(3, generator=g) * torch.tensor([60.0, 60.0, 360.0]) - torch.tensor([30.0, 30.0, 0.0])
        ).tolist()
        query = _pose(x, y, yaw)[None].expand(2, 4, 4)
        n = len(crowded.candidates(query, before_frame=10_000, state=0))
        a, b = crowded.retrieve(query, before_frame=10_000), exact.retrieve(query, before_frame=10_000)
        found += bool(b) and n > 32
        agree += [h.slot for h in a] == [h.slot for h in b]
    assert found >= 20 and agree == 40


def test_recent_chunks_and_other_states_are_not_retrieved():
    bank = _bank()
    query = _pose(0.0, 0.0, 0.0)[None].expand(2, 4, 4)
    bank.add(*_chunk(_pose(0.0, 0.0, 0.0)), frame=10, state=1)
    assert bank.retrieve(query, before_frame=100, state=0) == []
    assert bank.retrieve(query, before_frame=11, state=1) == []  # frame 11 is still in the chunk
    assert len(bank.retrieve(query, before_frame=12, state=1)) == 1


def test_the_bound_holds_and_the_least_recently_retrieved_entry_goes_first():
    bank = _bank(capacity=5, cell_m=1.0, keep="newest")
    slots = [bank.add(*_chunk(_pose(3.0 * i, 0.0, 0.0)), frame=2 * i) for i in range(5)]
    q0 = _pose(0.0, -1.0, 0.0)[None].expand(2, 4, 4)
    assert bank.retrieve(q0, before_frame=100)[0].slot == slots[0]  # entry 0 used: it stays
    new = bank.add(*_chunk(_pose(100.0, 0.0, 0.0)), frame=20)
    assert len(bank) == 5 and new == slots[1]  # the oldest entry never retrieved went
    again = bank.add(*_chunk(_pose(100.2, 0.3, 10.0)), frame=22)  # the same place and heading sector
    assert again == new and len(bank) == 5 and int(bank.frame[new]) == 22
    for i in range(50):
        bank.add(*_chunk(_pose(0.0, 5.0 * i, 90.0)), frame=100 + 2 * i)
        assert len(bank) <= 5
    assert len(bank._hash) >= 1 and sum(len(v) for v in bank._hash.values()) == 5 == len(bank._place)


def test_retrieval_is_deterministic_and_a_restored_bank_continues_bit_for_bit():
    g = torch.Generator().manual_seed(3)
    a = _random_bank(g, capacity=40, top_k=2, min_score=0.05, keep="newest")
    b = _bank(capacity=40, top_k=2, min_score=0.05, keep="newest")
    b.load_state_dict({k: v.clone() for k, v in a.state_dict().items()})
    queries = [_pose(*(torch.rand(2, generator=g) * 40 - 20).tolist(), float(i * 37)) for i in range(25)]
    for i, q in enumerate(queries):
        qq = q[None].expand(2, 4, 4)
        assert a.retrieve(qq, 10_000) == b.retrieve(qq, 10_000), i
        assert a.add(*_chunk(q), frame=1000 + 2 * i) == b.add(*_chunk(q), frame=1000 + 2 * i)
    for slot in range(0, 40, 3):  # a view of a kept place replaces that entry in both
        place = _chunk(a.c2w[slot, -1].clone())
        assert a.add(*place, frame=5000 + slot) == b.add(*place, frame=5000 + slot) == slot
    sa, sb = a.state_dict(), b.state_dict()
    assert all(torch.equal(sa[k], sb[k]) for k in sa)


def test_bad_entries_and_corrupt_states_fail_in_one_line():
    bank = _bank(capacity=4)
    with pytest.raises(WorldsimError, match="a memory entry is one chunk"):
        bank.add(torch.zeros(2, 4, 8, 8), torch.zeros(3, 5), torch.eye(4).expand(2, 4, 4), frame=0)
    bank.add(*_chunk(_pose(0, 0, 0)), frame=0)
    with pytest.raises(WorldsimError, match="this bank holds chunks"):
        bank.add(torch.zeros(2, 4, 4, 4), torch.zeros(2, 5), torch.eye(4).expand(2, 4, 4), frame=2)
    state = bank.state_dict()
    with pytest.raises(WorldsimError, match="incomplete"):
        _bank(capacity=4).load_state_dict({k: v for k, v in state.items() if k != "anchor"})
    with pytest.raises(WorldsimError, match="does not fit this one"):
        _bank(capacity=8).load_state_dict(state)
    bad = {**state, "c2w": state["c2w"].clone()}
    bad["c2w"][0, 0, 0, 0] = float("nan")
    with pytest.raises(WorldsimError, match="non-finite"):
        _bank(capacity=4).load_state_dict(bad)
    with pytest.raises(WorldsimError, match="must be >= 1"):
        MemoryConfig(top_k=0)
    with pytest.raises(WorldsimError, match="min_score must be a finite number"):
        MemoryConfig(min_score=float("nan"))
    with pytest.raises(WorldsimError, match="memory keep must be one of first, newest, got 'oldest'"):
        MemoryConfig(keep="oldest")
