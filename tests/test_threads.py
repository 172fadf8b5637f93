"""The thread governor: torch's thread count follows the cores other processes leave free."""

import pytest
import torch

from worldsim.core.errors import WorldsimError
from worldsim.core.threads import CpuSample, ThreadGovernor, free_cores, read_cpu


def _readings(other_busy_cores, own_cores=1.0):
    """A reading per second: the other processes keep ``other_busy_cores[i]`` cores busy in second i."""
    t, busy, own = 0.0, 0.0, 0.0
    yield CpuSample(t, busy, 2 * t, own)
    for other in other_busy_cores:
        t += 1.0
        own += own_cores
        busy += other + own_cores
        yield CpuSample(t, busy, 2 * t, own)


def _governor(others, threads=None, patience=3):
    it = _readings(others)
    seen = []
    gov = ThreadGovernor(threads, patience=patience, read=lambda: next(it), set_threads=seen.append, allowed=2)
    return gov, seen


def test_a_busy_core_taken_by_another_process_leaves_one_thread_and_its_return_two():
    gov, seen = _governor([0.0, 0.0, 1.0, 1.0, 1.0, 1.0, 0.0, 0.0, 0.0])
    counts = [gov.observe() for _ in range(9)]
    assert counts == [2, 2, 2, 2, 1, 1, 1, 1, 2]  # three intervals in a row agree before a change
    assert seen == [2, 1, 2]


def test_chunks_shorter_than_the_counters_tick_are_judged_together():
    """A fast model's chunks (30 ms) beside one busy core: the counters tick in 10 ms steps, so the
    other process's busy time shows up in lumps (here 0 and then 2 cores by turns). Judged chunk
    by chunk the estimates never agree and the count stays at 2; joined over min_interval_s they
    read one busy core, and the count drops to 1."""

    def lumpy():
        t, busy, own, n = 0.0, 0.0, 0.0, 0
        while True:
            yield CpuSample(t, busy, 2 * t, own)
            t += 0.03
            own += 0.03
            busy += 0.03 + (0.06 if n % 2 else 0.0)
            n += 1

    it = lumpy()
    gov = ThreadGovernor(None, read=lambda: next(it), set_threads=lambda n: None, allowed=2)
    assert [gov.observe() for _ in range(40)][-1] == 1
    it = lumpy()
    chunkwise = ThreadGovernor(None, read=lambda: next(it), set_threads=lambda n: None, allowed=2, min_interval_s=0.0)
    assert set(chunkwise.observe() for _ in range(40)) == {2}


def test_one_odd_interval_changes_nothing_and_a_pinned_count_never_moves():
    gov, seen = _governor([1.0, 0.0, 1.0, 1.0, 0.0])
    assert [gov.observe() for _ in range(5)] == [2] * 5 and seen == [2]
    gov, seen = _governor([1.0] * 6, threads=2)
    assert [gov.observe() for _ in range(6)] == [2] * 6 and seen == [2]
    with pytest.raises(WorldsimError, match="threads must be >= 1"):
        ThreadGovernor(0)


def test_free_cores_is_the_allowed_cores_minus_what_the_others_kept_busy():
    a, b = CpuSample(0.0, 0.0, 0.0, 0.0), CpuSample(2.0, 3.0, 4.0, 1.0)  # 2 s: 3 core-s busy, 1 ours
    assert free_cores(a, b, 2) == pytest.approx(1.0)
    assert free_cores(a, CpuSample(2.0, 1.0, 4.0, 1.0), 2) == pytest.approx(2.0)
    sample = read_cpu()
    assert sample is None or (sample.total >= sample.busy >= 0 and sample.own >= 0)


def test_the_engine_pins_torch_threads_when_asked(tmp_path):
    from test_engine import make_tiny_checkpoint

    from worldsim import load_engine

    before = torch.get_num_threads()
    try:
        load_engine(make_tiny_checkpoint(tmp_path / "tiny"), threads=1)
        assert torch.get_num_threads() == 1
    finally:
        torch.set_num_threads(before)


def test_changing_minds_restart_the_count():
    it = _readings([1.0, 2.0, 1.0, 2.0])  # asks for 3, 2, 3, 2 of 4 cores: never three times the same
    gov = ThreadGovernor(None, read=lambda: next(it), set_threads=lambda n: None, allowed=4)
    assert [gov.observe() for _ in range(4)] == [4, 4, 4, 4]


def test_every_engine_step_lets_the_governor_re_measure(tmp_path):
    from test_engine import _inputs, _world_reset, make_tiny_checkpoint

    from worldsim import load_engine

    before = torch.get_num_threads()
    try:
        ck = make_tiny_checkpoint(tmp_path / "tiny")
        assert load_engine(ck).governor is None  # by default torch's count is left alone (reproducible runs)
        with pytest.raises(WorldsimError, match="threads must be a number >= 1, 'auto' or null"):
            load_engine(ck, threads="many")
        eng = load_engine(ck, threads="auto")
        calls = []
        eng.governor.observe = lambda: calls.append(1) or 2
        _world_reset(eng, 0)
        eng.step(*_inputs(eng.chunk_frames))
        eng.step(*_inputs(eng.chunk_frames))
        assert len(calls) == 2
    finally:
        torch.set_num_threads(before)
