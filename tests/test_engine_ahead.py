"""Work done ahead of the input (issue 23; reference.md §6b): ``Engine.prepare`` runs the last
chunk's deferred cache write and, memory on, retrieves for guessed poses and loads those chunks
before the next inputs come; ``Engine.step`` then checks the guess against the real poses. The
engine's own path, a tiny random checkpoint with the real-time teacher's conditioning (cached
context), context noise on so that every pass done ahead draws from the session's generator."""

import numpy as np
import pytest
import torch

from tests.test_engine import _inputs, _world_reset, make_tiny_checkpoint
from worldsim import load_engine
from worldsim.diffusion.sampler import SamplerOverrides
from worldsim.inference.engine import _Prepared
from worldsim.play.sources import ProcessSource, SyncSource

# 0.25 deg per pixel: 30 deg per 2-frame chunk at 60 px. Ten chunks of turning, then changes of
# rate and direction, so that prepare()'s guess (the last row going on) is right on some chunks
# that retrieve and wrong on others (on this checkpoint: 3 chunks that retrieve guessed right, 1 not).
TURNS = [60.0] * 11 + [0.0, 120.0, 60.0, 60.0, -60.0, 0.0]


@pytest.fixture(scope="module")
def ckpt(tmp_path_factory):
    path = tmp_path_factory.mktemp("ck") / "tiny_chunk"
    return make_tiny_checkpoint(path, camera_reference="chunk", encoder="keyboard_press_mouse")


def _engine(ckpt, memory="on"):
    eng = load_engine(ckpt, memory=memory, seed=2, sampler=SamplerOverrides(context_sigma=0.2))
    _world_reset(eng, 1)
    return eng


def _spy_loaded(eng):
    """Record, at each chunk's denoising, the c2w of the memory chunks whose passes are in the
    cache then (None: none) and a copy of the bank's poses (the chunk joins the bank after it)."""
    roll, seen, loaded = eng.rollout, [], [None]
    passes, denoise = roll._memory_passes, roll._denoise

    def memory_passes(cache, mem, generator):
        loaded[0] = None if mem is None else mem.c2w[0].clone()
        return passes(cache, mem, generator)

    def denoise_chunk(*args, **kw):
        seen.append((loaded[0], eng.memory.c2w.clone()))
        return denoise(*args, **kw)

    roll._memory_passes, roll._denoise = memory_passes, denoise_chunk
    return seen


def test_each_chunk_is_generated_with_the_entries_retrieved_for_its_real_poses(ckpt):
    eng = _engine(ckpt)
    seen = _spy_loaded(eng)
    chunks, missed = [], []
    for dx in TURNS:
        eng.prepare()  # as the generation process does, before the inputs come
        before = eng.memory_reloads
        chunks.append(eng.step(*_inputs(2, None, dx=dx)))
        missed.append(eng.memory_reloads > before)
    hit = [bool(c.memory) for c in chunks]
    pairs = list(zip(hit, missed, strict=True))
    assert (True, True) in pairs and (True, False) in pairs  # retrieving chunks guessed wrong and right
    for chunk, (loaded, bank_c2w) in zip(chunks, seen, strict=True):
        if not chunk.memory:
            assert loaded is None
            continue
        want = torch.cat([bank_c2w[h.slot] for h in reversed(chunk.memory)]).float()  # best last, as loaded
        assert loaded is not None and torch.equal(loaded, want)


def _guess_nothing(eng):
    """An engine whose prepare() only runs the cache write and loads no guess, so that every
    step retrieves and loads for its real poses: the engine as it was before work ahead."""

    def prepare(guess=True):
        if eng._prepared is None:
            with torch.inference_mode(), eng.amp:  # as the engine's own prepare() (bf16 where the CPU has it)
                eng.rollout.flush(eng.rng)
            eng._prepared = _Prepared(None, None, 0.0)

    eng.prepare = prepare


@pytest.mark.parametrize("mode", ["lazy", "ahead", "ahead twice"])
def test_work_ahead_changes_nothing_in_what_a_session_plays(ckpt, mode):
    """Bit for bit the frames of an engine that guesses nothing, whether prepare() is called
    ahead (once or twice) or left to the step; the guesses miss on some chunks, whose context
    passes then run again from the same noise."""
    ref = _engine(ckpt)
    _guess_nothing(ref)
    eng = _engine(ckpt)
    for dx in TURNS:
        for _ in range({"lazy": 0, "ahead": 1, "ahead twice": 2}[mode]):
            eng.prepare()
        a, b = ref.step(*_inputs(2, None, dx=dx)), eng.step(*_inputs(2, None, dx=dx))
        assert a.memory == b.memory and np.array_equal(a.frames, b.frames)
    if mode == "lazy":  # a step that prepares itself knows the real poses: no guess to miss
        assert eng.memory_reloads == 0
    else:
        assert 0 < eng.memory_reloads < len(TURNS)


def test_after_prepare_the_step_runs_only_the_denoising_passes(ckpt):
    eng = _engine(ckpt, memory="off")
    eng.step(*_inputs(2, "w"))  # its clean pass is deferred to the next prepare
    passes = []
    forward, write = eng.model.forward_chunk, eng.model.write_chunk
    eng.model.forward_chunk = lambda *a, **kw: passes.append("denoise") or forward(*a, **kw)
    eng.model.write_chunk = lambda *a, **kw: passes.append("write") or write(*a, **kw)
    eng.prepare()
    assert passes == ["write"]  # the last chunk's cache write
    chunk = eng.step(*_inputs(2, "w"))
    assert passes == ["write"] + ["denoise"] * eng.sampler_cfg.num_steps  # the new chunk's denoising, nothing else
    assert 0 < chunk.timings.critical_s < chunk.timings.total_s
    assert chunk.timings.cache_write_s > 0  # the write prepare() ran is this chunk's


def test_a_session_saved_after_prepare_continues_bit_for_bit(ckpt, tmp_path):
    eng = _engine(ckpt)
    for dx in TURNS[:10]:
        eng.step(*_inputs(2, None, dx=dx))
    eng.prepare()  # retrieves ahead for the next chunk (a hit), drawing context noise
    eng.save_session(tmp_path / "s")
    a = [eng.step(*_inputs(2, None, dx=dx)) for dx in TURNS[10:14]]
    assert a[0].memory  # the prepared chunk retrieved
    other = load_engine(ckpt, memory="on", seed=99, sampler=SamplerOverrides(context_sigma=0.2))
    other.load_session(tmp_path / "s")
    b = [other.step(*_inputs(2, None, dx=dx)) for dx in TURNS[10:14]]
    for x, y in zip(a, b, strict=True):
        assert x.memory == y.memory and np.array_equal(x.frames, y.frames)


class _CountingSource(SyncSource):
    """Returns, as each chunk's pixel value, how many times ``prepare`` ran before it."""

    name, key_names, frame_size, fps, chunk_frames = "count", ["w"], (4, 4), 15.0, 1
    intrinsics = np.eye(3, dtype=np.float32)

    def __init__(self) -> None:
        self.prepared = 0

    def _chunk(self):
        from worldsim.inference.engine import Chunk

        return Chunk(np.full((1, 4, 4, 3), self.prepared, np.uint8), np.eye(4, dtype=np.float32)[None])

    def reset(self):
        return self._chunk()

    def step(self, keys, mouse):
        return self._chunk()

    def prepare(self) -> None:
        self.prepared += 1


def test_the_generation_process_prepares_after_every_answer():
    source = ProcessSource(_CountingSource)
    try:
        seen = [int(source.reset().frames[0, 0, 0, 0])]
        for _ in range(3):
            source.submit(np.zeros((1, 1), np.uint8), np.zeros((1, 2), np.float32))
            chunk = source.poll(None)
            assert chunk is not None
            seen.append(int(chunk.frames[0, 0, 0, 0]))
    finally:
        source.close()
    assert seen == [0, 1, 2, 3]


@pytest.mark.parametrize("fails", ["cache write", "memory pass"])
def test_work_ahead_that_raises_is_redone_exactly_by_the_step(ckpt, fails):
    """A prepare() that raises (out of memory, say) in its first pass (the deferred cache write)
    or its second (the guessed memory chunk's, which has drawn its context noise by then) leaves
    the work to do and the generator as it was: the next steps play as if it never happened."""
    ref, eng = _engine(ckpt), _engine(ckpt)
    for dx in TURNS[:10]:
        ref.step(*_inputs(2, None, dx=dx))
        eng.step(*_inputs(2, None, dx=dx))
    write, passes = eng.model.write_chunk, []

    def failing(*args, **kw):
        passes.append(1)
        if len(passes) == {"cache write": 1, "memory pass": 2}[fails]:
            raise RuntimeError("out of memory")
        return write(*args, **kw)

    eng.model.write_chunk = failing
    with pytest.raises(RuntimeError, match="out of memory"):
        eng.prepare()
    eng.prepare()  # again: what was left of the cache write and the retrieved chunk's pass
    assert len(passes) == 3  # write failed + write + memory pass, or write + memory failed + memory pass
    outs = []
    for dx in TURNS[10:13]:
        a, b = ref.step(*_inputs(2, None, dx=dx)), eng.step(*_inputs(2, None, dx=dx))
        assert a.memory == b.memory and np.array_equal(a.frames, b.frames)
        outs.append(b)
    assert outs[0].memory  # the chunk prepared ahead retrieved
