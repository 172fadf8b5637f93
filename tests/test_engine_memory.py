"""The memory bank at play time (issue 22) through the engine's own path: ``load_engine(memory=...)``,
``Engine.step``, saved sessions. A tiny random checkpoint with the real-time teacher's
conditioning (per-chunk camera reference, cached context) turns in place: its view comes back
to the start after 12 chunks of 30 degrees, which the bank must notice."""

import dataclasses
import json

import numpy as np
import pytest
import torch
from safetensors.torch import load_file, save_file

from envs.starts import world_start
from tests.test_engine import KEYS, _inputs, _world_reset, make_tiny_checkpoint
from worldsim import load_engine
from worldsim.core.errors import WorldsimError
from worldsim.diffusion.sampler import SamplerOverrides
from worldsim.inference.engine import resolve_press_rule
from worldsim.memory.bank import MemoryConfig

TURN_PX = 60.0  # 0.25 deg per pixel: 15 deg per frame, 30 per 2-frame chunk, a full turn in 12 chunks


@pytest.fixture(scope="module")
def ckpt(tmp_path_factory):
    path = tmp_path_factory.mktemp("ck") / "tiny_chunk"
    return make_tiny_checkpoint(path, camera_reference="chunk", encoder="keyboard_press_mouse")


def _turn(eng, chunks, light_at=None):
    out = []
    for j in range(chunks):
        keys, mouse = _inputs(2, "l" if j == light_at else None, dx=TURN_PX)
        out.append(eng.step(keys, mouse))
    return out


@pytest.mark.parametrize("discount_window", [False, True])
def test_a_full_turn_retrieves_the_start_view_on_return_and_nothing_on_the_way(ckpt, discount_window):
    eng = load_engine(ckpt, memory=MemoryConfig(discount_window=discount_window), seed=2)
    _world_reset(eng, 1)
    assert eng.memory is not None
    hits = []  # per chunk: (first frame of the retrieved entry, score)
    for _ in range(13):
        chunk = _turn(eng, 1)[0]
        hits.append([(h.frame, h.score) for h in chunk.memory])
        assert chunk.timings.memory_s > 0
    # Outside the window, every stored view faces at least 90 degrees away until chunk 10 (330 deg).
    assert all(not h for h in hits[:10]), hits
    assert hits[10] and hits[11]
    # Chunk 12 ends at 390 degrees, where chunk 0 ended (frames 4-5): the same view, so it scores
    # 1; with discount_window, less the part the window (chunks ending at 300 to 360 degrees)
    # already shows, about half.
    assert [h[0] for h in hits[12]] == [4]
    if discount_window:
        assert 0.4 < hits[12][0][1] < 0.6
    else:
        assert hits[12][0][1] == pytest.approx(1.0)


def test_a_still_player_is_shown_the_start_view_once_the_window_has_left_it(ckpt):
    """The anchor (docs/memory.md): standing still, every chunk after the window has moved past
    the start's chunks retrieves the start's first chunk (its true frames), not one the model drew
    since; the earlier rule (the newest chunk per place, the window's view discounted) retrieves
    nothing at all."""
    hits = {}
    for rule in ("anchor", "window"):
        cfg = MemoryConfig() if rule == "anchor" else MemoryConfig(keep="newest", discount_window=True)
        eng = load_engine(ckpt, memory=cfg, seed=2)
        _world_reset(eng, 1)
        hits[rule] = [[h.frame for h in eng.step(*_inputs(2)).memory] for _ in range(8)]
        assert eng.memory is not None
        if rule == "anchor":
            assert len(eng.memory) == 1 and eng.last_memory_slot == -1  # one place, its first chunk kept
            kept = eng.memory.latents.clone()  # the oracle's truth has no entry to go to: nothing changes
            eng.remember_truth(np.zeros((eng.chunk_frames, *eng.frame_size, 3), np.uint8))
            assert torch.equal(eng.memory.latents, kept)
            _world_reset(eng, 1)
            with pytest.raises(WorldsimError, match="needs memory on and a step"):
                eng.remember_truth(np.zeros((eng.chunk_frames, *eng.frame_size, 3), np.uint8))
    window = eng.rollout.context_frames // eng.chunk_frames
    start_chunks = eng.context_frames // eng.chunk_frames
    first_hit = max(0, window - start_chunks + 1)  # the first chunk whose window no longer holds frame 0
    assert all(h == [] for h in hits["anchor"][:first_hit]), hits["anchor"]
    assert all(h == [0] for h in hits["anchor"][first_hit:]) and first_hit < 8, hits["anchor"]
    assert all(h == [] for h in hits["window"])


def _counting(fn, calls):
    """``fn`` that appends 1 to ``calls`` each time it runs."""

    def counted(*a, **kw):
        calls.append(1)
        return fn(*a, **kw)

    return counted


def test_a_still_player_reuses_the_retrieved_chunks_pass_across_a_saved_session(ckpt, tmp_path):
    """Standing still, the start's chunk comes back on every chunk; from its second retrieval on
    no pass runs for it (only the cache write), and a session saved then continues bit for bit
    with its kept pass (context noise on, so a pass run again would draw other noise and show).
    With ``reuse=False`` every retrieval runs its pass."""
    noisy = SamplerOverrides(context_sigma=0.2)
    runs = {}
    for reuse in (True, False):
        eng = load_engine(ckpt, memory=MemoryConfig(reuse=reuse), seed=5, sampler=noisy)
        _world_reset(eng, 1)
        writes: list[int] = []
        eng.model.write_chunk = _counting(eng.model.write_chunk, writes)
        chunks, reused, passes = [], [], []
        for j in range(10):
            writes.clear()
            if j == 7 and reuse:
                eng.save_session(tmp_path / "s")  # runs the deferred cache write
            chunks.append(eng.step(*_inputs(2)))
            reused.append(eng.rollout.memory_reused)
            passes.append(len(writes))  # the last chunk's cache write, and the memory pass if it ran
        runs[reuse] = chunks
        hit = [bool(c.memory) for c in chunks]
        first = hit.index(True)
        assert all(hit[first:]) and first < 6
        if reuse:
            assert reused == [0] * (first + 1) + [1] * (9 - first)
            assert passes[first + 1 :] == [1] * (9 - first)
        else:
            assert reused == [0] * 10 and passes[first + 1 :] == [2] * (9 - first)
    assert not np.array_equal(runs[True][-1].frames, runs[False][-1].frames)  # the pass's noise, drawn once or anew
    other = load_engine(ckpt, memory="on", seed=99, sampler=noisy)
    other.load_session(tmp_path / "s")
    assert len(other.rollout.kept) == 1
    for c in runs[True][7:]:
        d = other.step(*_inputs(2))
        assert other.rollout.memory_reused == 1 and d.memory == c.memory and np.array_equal(d.frames, c.frames)


def test_memory_on_plays_as_off_until_the_first_hit_then_differs(ckpt):
    frames = {}
    for memory in ("off", "on"):
        eng = load_engine(ckpt, memory=memory, seed=2)
        _world_reset(eng, 1)
        frames[memory] = [c.frames for c in _turn(eng, 11)]
    assert all(np.array_equal(a, b) for a, b in zip(frames["off"][:10], frames["on"][:10], strict=True))
    assert not np.array_equal(frames["off"][10], frames["on"][10])  # the first hit


def test_a_light_toggle_keeps_day_entries_from_a_night_view(ckpt):
    eng = load_engine(ckpt, memory="on", seed=2)
    _world_reset(eng, 1)
    chunks = _turn(eng, 12, light_at=5)
    assert eng.memory_state == 1
    assert not any(c.memory for c in chunks)  # every view it could return to was stored before the press


def test_retrieval_is_deterministic(ckpt):
    runs = []
    for _ in range(2):
        eng = load_engine(ckpt, memory="on", seed=4)
        _world_reset(eng, 3)
        runs.append(_turn(eng, 12))
    for a, b in zip(*runs, strict=True):
        assert a.memory == b.memory and np.array_equal(a.frames, b.frames)


def test_a_session_saved_mid_revisit_continues_bit_for_bit_with_memory_on(ckpt, tmp_path):
    eng = load_engine(ckpt, memory="on", seed=5)
    _world_reset(eng, 1)
    _turn(eng, 9, light_at=0)  # night from the first chunk on: the start's entries are day
    eng.save_session(tmp_path / "s")
    a = _turn(eng, 4)
    assert [bool(c.memory) for c in a] == [False, False, True, True]  # the restored part holds the revisit
    other = load_engine(ckpt, memory="on", seed=99)
    other.load_session(tmp_path / "s")
    b = _turn(other, 4)
    for x, y in zip(a, b, strict=True):
        assert x.memory == y.memory and np.array_equal(x.frames, y.frames)
    assert eng.memory is not None and other.memory is not None
    for name, value in eng.memory.state_dict().items():
        assert torch.equal(value.cpu(), other.memory.state_dict()[name].cpu()), name


def test_a_corrupt_or_mismatched_memory_state_fails_in_one_line(ckpt, tmp_path):
    eng = load_engine(ckpt, memory="on")
    _world_reset(eng, 1)
    _turn(eng, 2)
    eng.save_session(tmp_path / "s")
    with pytest.raises(WorldsimError, match="saved with memory") as e:
        load_engine(ckpt, memory="off").load_session(tmp_path / "s")
    assert "\n" not in str(e.value)
    with pytest.raises(WorldsimError, match="saved with memory"):
        load_engine(ckpt, memory=MemoryConfig(capacity=8)).load_session(tmp_path / "s")
    tensors = load_file(str(tmp_path / "s" / "session.safetensors"))
    tensors["memory.frame"] = tensors["memory.frame"][:-1]  # a bank of another size
    save_file(tensors, str(tmp_path / "s" / "session.safetensors"))
    with pytest.raises(WorldsimError, match="saved memory bank does not fit") as e:
        load_engine(ckpt, memory="on").load_session(tmp_path / "s")
    assert "\n" not in str(e.value)
    _still = load_engine(ckpt, memory="on")
    _world_reset(_still, 1)
    for _ in range(8):  # standing still: the start's chunk comes back, its pass kept
        _still.step(*_inputs(2))
    _still.save_session(tmp_path / "kept")
    good = load_file(str(tmp_path / "kept" / "session.safetensors"))
    assert "kept.0.k" in good
    for names, damage, message in (
        (["kept.0.v"], None, "retrieved chunk 0 is incomplete"),
        (["kept.0.k", "kept.0.v"], lambda t: t[:, :, :, :-1], "retrieved chunk 0 does not fit .*: k, v$"),
        (["kept.0.k", "kept.0.v"], lambda t: t[:, :, :1], "retrieved chunk 0 does not fit .*: k, v$"),  # heads
        (["kept.0.k", "kept.0.v"], lambda t: t[..., :-2], "retrieved chunk 0 does not fit .*: k, v$"),  # head size
        (["kept.0.k", "kept.0.v"], lambda t: t.double(), "retrieved chunk 0 does not fit .*: dtype$"),
        (["kept.0.latents"], lambda t: t[:, :1], "retrieved chunk 0 does not fit .*: latents$"),
        (["kept.0.frame_idx"], lambda t: t[:0], "retrieved chunk 0 does not fit .*: frame_idx$"),
        (["kept.0.frame_idx"], lambda t: t.float(), "retrieved chunk 0 does not fit .*: dtype$"),
    ):
        tensors = dict(good)
        for name in names:  # keys and values of a chunk one token short: another model's
            if damage is None:
                del tensors[name]
            else:
                tensors[name] = damage(tensors[name]).contiguous()
        save_file(tensors, str(tmp_path / "kept" / "session.safetensors"))
        with pytest.raises(WorldsimError, match=message) as e:
            load_engine(ckpt, memory="on").load_session(tmp_path / "kept")
        assert "\n" not in str(e.value)
    (tmp_path / "s" / "session.safetensors").write_bytes(b"not a safetensors file")
    with pytest.raises(WorldsimError, match="cannot be read"):
        load_engine(ckpt, memory="on").load_session(tmp_path / "s")
    meta = json.loads((tmp_path / "s" / "session.json").read_text())
    assert meta["memory"]["top_k"] == 1


@pytest.mark.parametrize(
    ("kw", "message"),
    [({"memory": "maybe"}, "memory must be 'on' or 'off'"), ({"memory_top_k": 2}, "memory_top_k needs memory on")],
)
def test_bad_memory_options_are_refused_in_one_line(ckpt, kw, message):
    with pytest.raises(WorldsimError, match=message):
        load_engine(ckpt, **kw)


def test_memory_with_the_rebuild_policy_plays(tmp_path):
    """The shipped v1's conditioning (``latest``, rebuilt context) reads retrieved chunks too."""
    eng = load_engine(make_tiny_checkpoint(tmp_path / "v1"), memory="on", memory_top_k=2)
    assert eng.context_policy == "rebuild" and KEYS[-1] == "l"
    _world_reset(eng, 1)
    chunks = _turn(eng, 12)
    assert chunks[11].memory and np.isfinite(chunks[11].frames).all()


def test_the_revisit_trajectories_come_back_after_more_frames_than_the_context_holds(ckpt):
    """Each scripted trajectory's way back overlaps views of its way out older than context +
    chunk (return frames), and a full turn faces the start again where 360 of 450 degrees end."""
    from worldsim.eval.ground_truth import world_rollout
    from worldsim.eval.memory_revisit import KINDS, TURN_FRAMES, return_frames, trajectory

    eng = load_engine(ckpt)
    n, k = eng.context_frames, eng.chunk_frames
    for kind in KINDS:
        keys, mouse, back = trajectory(kind, 64, eng.cfg.controller.mouse_deg_per_px, len(KEYS), KEYS.index("w"))
        keys, mouse = (
            np.concatenate([keys, keys[:1] * 0]),
            np.concatenate([mouse, mouse[:1] * 0]),
        )  # the last row: unused
        arrays = world_rollout(eng, 98000, keys, mouse)
        best = return_frames(arrays["c2w"], eng.intrinsics, eng.frame_size, n + k, back)
        assert (best[:back] == 0).all() and best[back:].max() >= 0.5 and best[-1] >= 0.5, kind
        if kind == "turn":  # frame 52 (= back - 1) has turned 52 x 450 / 64 = 365.6 degrees
            np.testing.assert_allclose(arrays["c2w"][0][:3, :3], arrays["c2w"][back - 1][:3, :3], atol=0.1)
        if kind == "out_and_back":  # on the way back it faces the other way; at the end, as at the start
            assert arrays["c2w"][back][:3, 2] @ arrays["c2w"][0][:3, 2] < -0.99
            # Near the start, before the last turn, it looks where the way out never looked (a
            # view of the way back itself does not count).
            assert best[-TURN_FRAMES - 2] < 0.5
            np.testing.assert_allclose(arrays["c2w"][0], arrays["c2w"][-1], atol=1e-3)


def test_the_revisit_evaluation_scores_three_modes_and_writes_its_sheets(ckpt, tmp_path):
    from worldsim.eval.memory_revisit import MemoryEvalConfig, memory_lines, memory_revisit

    cfg = MemoryEvalConfig(starts=1, lengths=[48], kinds=["turn"])
    m = memory_revisit(lambda memory, top_k: load_engine(ckpt, memory=memory, memory_top_k=top_k), cfg, tmp_path)
    (run,) = m["runs"]
    assert run["return_frames"] > 0
    assert run["off"]["chunks_with_hits"] == 0 and run["on"]["chunks_with_hits"] > 0
    assert run["oracle"]["chunks_with_hits"] == run["on"]["chunks_with_hits"]  # same poses: same retrievals
    assert run["oracle"]["psnr_db_return"] != run["on"]["psnr_db_return"]  # but other latents
    assert (tmp_path / "memory_turn.png").is_file()
    assert "on - off" in memory_lines(m)[0] and "dark frames where the truth is light" in memory_lines(m)[0]
    for mode in ("off", "on", "oracle"):
        assert m["summary"][mode]["dark_frames"] == run[mode]["dark_frames"] in range(49)  # of 48 frames
    # The threshold reaches the evaluated bank: no entry scores above 1, so none is retrieved.
    high = MemoryEvalConfig(starts=1, lengths=[48], kinds=["turn"], min_score=1.01)
    m = memory_revisit(lambda memory, top_k: load_engine(ckpt, memory=memory, memory_top_k=top_k), high, tmp_path)
    assert m["min_score"] == 1.01 and m["runs"][0]["on"]["chunks_with_hits"] == 0
    assert (m["keep"], m["discount_window"], m["reuse"]) == ("first", False, True)  # the bank's rules, recorded


def test_memory_hits_cross_the_generation_process_and_reach_the_hud(ckpt):
    """play.py's path: the child process's chunks carry their hits, as the in-process engine's;
    the HUD shows the last chunk's best score once a place has come back."""
    from functools import partial

    from worldsim.play.loop import ChunkScheduler, PlayStats, _hud
    from worldsim.play.sources import ProcessSource, open_engine_source

    local = open_engine_source(str(ckpt), 2, memory="on")
    source = ProcessSource(partial(open_engine_source, str(ckpt), 2, memory="on"))
    try:
        source.reset(), local.reset()
        stats = PlayStats()
        sched = ChunkScheduler(source, stats)
        for _ in range(13):
            keys, mouse = _inputs(2, dx=TURN_PX)
            sched.pending = [(keys[i], mouse[i], 0.0) for i in range(2)]
            sched.pump(paused=False)  # submits the chunk
            sched.pump(paused=False, timeout_s=60.0)  # receives it
            assert sched.in_flight is None and sched.memory == tuple(local.step(keys, mouse).memory)
            sched.shown.clear()  # as the display takes the frames
    finally:
        source.close()
    assert stats.memory_hits == 3
    lines = _hud(None, stats, sched, paused=False, behind=False, rec=None)
    assert f"memory: 1 hit, best score {sched.memory[0].score:.2f} | chunks with hits 3" in lines


@pytest.mark.parametrize(
    ("then", "missing"),
    [
        (MemoryConfig(keep="newest", discount_window=True, reuse=False), ("keep", "discount_window", "reuse")),
        (MemoryConfig(reuse=False), ("reuse",)),  # the anchor, before reuse
    ],
)
def test_a_session_saved_before_the_anchor_rules_loads_with_the_rules_of_then(ckpt, tmp_path, then, missing):
    """A session file whose memory settings predate ``keep`` and ``discount_window`` (or only
    ``reuse``) was played with the rules of then (the newest chunk per place, the window
    discounted; a pass for every retrieval): it loads with those and is refused, in one line, with
    the default bank."""
    eng = load_engine(ckpt, memory=then, seed=5)
    _world_reset(eng, 1)
    _turn(eng, 2)
    eng.save_session(tmp_path / "s")
    meta = json.loads((tmp_path / "s" / "session.json").read_text())
    for name in missing:
        del meta["memory"][name]
    (tmp_path / "s" / "session.json").write_text(json.dumps(meta))
    a = _turn(eng, 2)
    other = load_engine(ckpt, memory=then, seed=99)
    other.load_session(tmp_path / "s")
    b = _turn(other, 2)
    assert all(np.array_equal(x.frames, y.frames) for x, y in zip(a, b, strict=True))
    with pytest.raises(WorldsimError, match=f"saved with memory .*'{missing[-1]}'") as e:
        load_engine(ckpt, memory="on").load_session(tmp_path / "s")
    assert "\n" not in str(e.value)


def test_play_refuses_a_bad_memory_in_one_line_naming_auto():
    import os
    import subprocess
    import sys
    from pathlib import Path

    root = Path(__file__).resolve().parents[1]
    env = dict(os.environ, SDL_VIDEODRIVER="offscreen")
    r = subprocess.run(
        [sys.executable, "play.py", "memory=maybe"], cwd=root, env=env, capture_output=True, text=True, timeout=60
    )
    assert r.returncode == 2 and r.stderr.strip() == "error: memory must be 'auto', 'on' or 'off', got 'maybe'"


def _press_at(k, row):
    """One chunk's inputs with the light key pressed on input ``row`` alone."""
    keys, mouse = _inputs(k)
    keys[row, KEYS.index("l")] = 1
    return keys, mouse


@pytest.mark.parametrize("across", [False, True])
def test_nothing_is_retrieved_while_the_window_holds_a_press_of_the_state_key(ckpt, tmp_path, across):
    """A still player presses the light key twice: the second press (back to day) makes the
    start view eligible again, but a retrieved chunk would take the positions before the window,
    where the model reads it as the state the press flipped from; so nothing is retrieved from
    the press's chunk until the press has left the window (``retrieve_across_press`` False, as
    v7 plays), and a session saved in between keeps the press. Retrieval goes on across it with
    the option."""
    eng = load_engine(ckpt, memory=MemoryConfig(retrieve_across_press=across), seed=2)
    _world_reset(eng, 1)
    k = eng.chunk_frames
    w = eng.rollout.context_frames // k  # chunks in the window
    plan = [_inputs(k)] * 6 + [_press_at(k, 1)] + [_inputs(k)] * (w + 2) + [_press_at(k, 0)] + [_inputs(k)] * (w + 2)
    a, b = 6, 6 + w + 3  # the chunks that press: at their second input, then at their first
    hits = []
    for j, (keys, mouse) in enumerate(plan):
        if j == b + 1:
            eng.save_session(tmp_path / "s")
            other = load_engine(ckpt, memory=MemoryConfig(retrieve_across_press=across), seed=9)
            other.load_session(tmp_path / "s")
        chunk = eng.step(keys, mouse)
        hits.append([h.frame for h in chunk.memory])
        if j > b:
            assert other.step(keys, mouse).memory == chunk.memory
    start_frame = 0  # the start's first chunk, day
    assert all(h == [start_frame] for h in hits[2:a]), hits  # the still player's anchor, before the presses
    night = eng.context_frames + a * k  # the first press's chunk, the first entry at night
    if across:
        assert hits[a : a + w + 1] == [[]] * (w + 1)  # at night no earlier entry is older than the window
        assert hits[a + w + 1 : b] == [[night]] * 2 and hits[b:] == [[start_frame]] * (w + 3)
    else:
        assert hits[a : a + w + 1] == [[]] * (w + 1) and hits[a + w + 1 : b] == [[night]] * 2, hits
        assert hits[b : b + w + 1] == [[]] * (w + 1) and hits[b + w + 1 :] == [[start_frame]] * 2, hits
    assert eng.state_press_frame == eng.context_frames + b * k and eng.memory_state == 0


def test_a_reset_keeps_the_newest_press_of_the_state_key_in_its_context(ckpt):
    """Given 3 frames more than it keeps, a reset numbers the kept ones from 0: the press on row
    4 made given frame 5, session frame 2."""
    eng = load_engine(ckpt, memory="on", seed=2)
    start = world_start(1, eng.context_frames + 3, eng.key_names, eng.frame_size)
    frames, c2w, keys, mouse = start.arrays()
    keys = keys.copy()
    keys[[0, 4], KEYS.index("l")] = 1  # rows 0 and 4 press: they make given frames 1 and 5
    eng.reset(frames, c2w, keys, mouse)
    assert eng.rollout.history.frame_idx.tolist() == list(range(eng.context_frames)) == [0, 1, 2, 3]
    assert eng.state_press_frame == 2 and eng.memory_state == 0
    eng.reset(*start.arrays())
    assert eng.state_press_frame == -1


def test_the_press_rule_follows_how_the_checkpoint_was_trained(ckpt):
    """``retrieve_across_press`` None: no retrieval across a press for a student whose DMD stage
    trained still presses without memory after them, retrieval across it for the others; a value
    given wins."""
    eng = load_engine(ckpt, memory="on")
    assert eng.memory_cfg is not None and eng.memory_cfg.retrieve_across_press is True
    trained = dataclasses.replace(eng.cfg, provenance={"config": {"distill": {"still_press_prob": 0.4}}})
    assert resolve_press_rule(MemoryConfig(), trained).retrieve_across_press is False
    assert resolve_press_rule(MemoryConfig(retrieve_across_press=True), trained).retrieve_across_press is True
    assert resolve_press_rule(MemoryConfig(), eng.cfg).retrieve_across_press is True
    assert resolve_press_rule(None, trained) is None
    other_key = dataclasses.replace(
        eng.cfg, provenance={"config": {"distill": {"still_press_prob": 0.4, "still_press_key": "m"}}}
    )
    assert resolve_press_rule(MemoryConfig(), other_key).retrieve_across_press is True
    assert resolve_press_rule(
        MemoryConfig(), dataclasses.replace(eng.cfg, provenance={"config": "?"})
    ).retrieve_across_press
