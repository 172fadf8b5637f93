"""The rollout the engine runs, pinned to independent computations (issue 19, "killing tests").

* ``rebuild`` (the shipped teacher's ``latest`` conditioning) equals one full block-causal
  forward over ``[context | chunk]`` with rays relative to the newest context frame computed here
  from the Plücker formula, and compact positions ``0 .. n + k - 1``.
* ``cached`` equals one full forward over the whole session with the sliding-window + sink mask
  and absolute positions, for both cacheable conditionings: ``session`` (rays relative to the
  session's first pose) and ``chunk`` (each chunk's rays relative to the pose of the frame just
  before it, the session's first chunk relative to its own first frame).
* ``cached`` equals ``rebuild`` where caching is exact: before the window evicts, and past the
  window and the sink for a one-block network (deeper networks remember evicted chunks through
  the cached keys of later layers; tests above pin each policy to its own mask).

Every model here is float64 with all weights random (the zero-init paths included).
"""

from dataclasses import replace

import numpy as np
import pytest
import torch

from worldsim.core.camera import intrinsics_from_fov, make_c2w
from worldsim.core.errors import WorldsimError
from worldsim.diffusion.sampler import SamplerConfig, noised
from worldsim.inference.context import ConditioningConfig
from worldsim.inference.rollout import ChunkRollout
from worldsim.model.attention import chunk_mask
from worldsim.model.dit import WorldModel, WorldModelConfig

FRAME = (32, 32)
K_PIX = torch.from_numpy(intrinsics_from_fov(70.0, *FRAME)).double()


# How a network reads retrieved chunks: as the teacher (nothing of its own), with a memory
# embedding, or with the embedding and a memory adapter (worldsim.model.dit).
MEMORY_READERS = ["teacher", "embedding", "adapter"]


def _model(depth=2, seed=0, chunk_frames=2, memory="teacher"):
    cfg = WorldModelConfig(
        latent_channels=3, latent_size=(4, 4), patch=2, width=24, depth=depth, heads=2, action_dim=5,
        chunk_frames=chunk_frames, memory_embedding=memory != "teacher", memory_adapter_rank=2 * (memory == "adapter"),
    )  # fmt: skip
    torch.manual_seed(seed)
    m = WorldModel(cfg).double().eval()
    with torch.no_grad():
        for p in m.parameters():
            p.normal_(0, 0.3)
    return m


def _session(t, seed=1, a_dim=5):
    """Latents, actions and a camera path that walks, turns and climbs: ``t`` frames."""
    g = torch.Generator().manual_seed(seed)
    lat = torch.randn(1, t, 3, 4, 4, generator=g, dtype=torch.float64)
    act = torch.randn(1, t, a_dim, generator=g, dtype=torch.float64)
    poses = [make_c2w(np.array([0.7 * i, -0.2 * i, 1.1 * i]), 0.15 * i, 0.05 * np.sin(i)) for i in range(t)]
    return lat, act, torch.from_numpy(np.stack(poses)).double()[None]


def _rays_reference(c2w, ref, scale_m, normalise_over_sequence):
    """Plücker rays ``[o x d, d]`` written out from the formula (reference.md §4), per pixel, at
    the 4x4 latent grid: poses relative to ``ref``, translations divided as the conditioning says."""
    rel = torch.linalg.inv(ref) @ c2w[0]  # (T, 4, 4)
    t = rel[:, :3, 3]
    div = max(scale_m, float(t.norm(dim=-1).max())) if normalise_over_sequence else scale_m
    kl = K_PIX.clone()
    kl[:2] *= 4 / FRAME[0]
    out = torch.zeros(c2w.shape[1], 6, 4, 4, dtype=torch.float64)
    for f in range(c2w.shape[1]):
        o = t[f] / div
        for r in range(4):
            for c in range(4):
                d_cam = torch.tensor([(c + 0.5 - kl[0, 2]) / kl[0, 0], (r + 0.5 - kl[1, 2]) / kl[1, 1], 1.0])
                d = rel[f, :3, :3] @ (d_cam / d_cam.norm()).double()
                out[f, :3, r, c], out[f, 3:, r, c] = torch.linalg.cross(o, d), d
    return out[None]


def _cacheable_rays(c2w, reference, k, scale_m):
    """The rays a cacheable conditioning gives every frame of a session, written out here."""
    if reference == "session":
        return _rays_reference(c2w, c2w[0, 0], scale_m, normalise_over_sequence=False)
    frames = []
    for f in range(c2w.shape[1]):
        ref = c2w[0, max(f - f % k - 1, 0)]  # the frame just before f's chunk (the first chunk: frame 0)
        frames.append(_rays_reference(c2w[:, f : f + 1], ref, scale_m, normalise_over_sequence=False))
    return torch.cat(frames, 1)


def _ids(t, k, tokens):
    return torch.arange(t).div(k, rounding_mode="floor").repeat_interleave(tokens)


ONE_EULER_STEP = SamplerConfig(num_steps=1, mode="euler")  # x0 = noise - v(noise): the network's output exposed


def test_rebuild_step_equals_one_block_causal_forward_with_newest_frame_rays_and_compact_positions():
    m = _model()
    k, n = 2, 4
    lat, act, c2w = _session(n + k)
    cond = ConditioningConfig(context_chunks=2, translation_scale_m=3.0)  # latest reference
    roll = ChunkRollout(m, ONE_EULER_STEP, cond, K_PIX, FRAME, "rebuild")
    roll.reset(lat[:, :n], act[:, :n], c2w[:, :n])
    x0 = roll.step(act[:, n:], c2w[:, n:], torch.Generator().manual_seed(7))
    noise = torch.randn(1, k, 3, 4, 4, generator=torch.Generator().manual_seed(7), dtype=torch.float64)
    rays = _rays_reference(c2w, c2w[0, n - 1], 3.0, normalise_over_sequence=True)
    t = n + k
    ids = _ids(t, k, m.cfg.tokens_per_frame)
    sigma = torch.cat([torch.zeros(1, n), torch.ones(1, k)], 1).double()
    v = m(torch.cat([lat[:, :n], noise], 1), sigma, act, rays, torch.arange(t), chunk_mask(ids, ids))
    torch.testing.assert_close(x0, noise - v[:, n:], rtol=1e-9, atol=1e-9)
    assert roll.history.num_frames == n  # the window slid by one chunk


@pytest.mark.parametrize("reference", ["session", "chunk"])
@pytest.mark.parametrize("sink", [False, True])
def test_cached_rollout_equals_full_windowed_forward_over_the_session(sink, reference):
    m = _model(depth=3)
    k, window, n0, chunks = 2, 2, 4, 7  # 7 chunks after a 2-chunk context: far past the window
    lat, act, c2w = _session(n0 + chunks * k)
    cond = ConditioningConfig(context_chunks=window, translation_scale_m=3.0, camera_reference=reference, sink=sink)
    roll = ChunkRollout(m, ONE_EULER_STEP, cond, K_PIX, FRAME, "cached")
    roll.reset(lat[:, :n0], act[:, :n0], c2w[:, :n0])
    g_roll, g_ref = torch.Generator().manual_seed(3), torch.Generator().manual_seed(3)
    rays = _cacheable_rays(c2w, reference, k, 3.0)
    clean = lat[:, :n0]
    for j in range(chunks):
        s = n0 + j * k
        x0 = roll.step(act[:, s : s + k], c2w[:, s : s + k], g_roll)
        noise = torch.randn(1, k, 3, 4, 4, generator=g_ref, dtype=torch.float64)
        t = s + k
        ids = _ids(t, k, m.cfg.tokens_per_frame)
        sigma = torch.cat([torch.zeros(1, s), torch.ones(1, k)], 1).double()
        mask = chunk_mask(ids, ids, window_chunks=window, sink=sink)
        v = m(torch.cat([clean, noise], 1), sigma, act[:, :t], rays[:, :t], torch.arange(t), mask)
        torch.testing.assert_close(x0, noise - v[:, s:], rtol=1e-9, atol=1e-9, msg=f"chunk {j}")
        clean = torch.cat([clean, x0], 1)
    assert roll.cache is not None and roll.cache.context_chunks == window + sink
    assert roll.history.num_frames == (window + sink) * k


@pytest.mark.parametrize(("depth", "chunks"), [(1, 8), (3, 1)])  # 1 block: exact at any length; 3: before eviction
@pytest.mark.parametrize("sink", [False, True])
@pytest.mark.parametrize("reference", ["session", "chunk"])
def test_cached_equals_rebuild_where_caching_is_exact(depth, chunks, sink, reference):
    m = _model(depth=depth)
    k, n0 = 2, 4
    lat, act, c2w = _session(n0 + chunks * k)
    cond = ConditioningConfig(context_chunks=2, translation_scale_m=3.0, camera_reference=reference, sink=sink)
    sampler = SamplerConfig(num_steps=3, mode="few_step")
    outs = {}
    for policy in ("rebuild", "cached"):
        roll = ChunkRollout(m, sampler, cond, K_PIX, FRAME, policy)
        roll.reset(lat[:, :n0], act[:, :n0], c2w[:, :n0])
        g = torch.Generator().manual_seed(5)
        outs[policy] = roll.rollout(act[:, n0:], c2w[:, n0:], g)
    torch.testing.assert_close(outs["cached"], outs["rebuild"], rtol=1e-9, atol=1e-9)


def test_cached_policy_is_refused_for_a_conditioning_whose_keys_go_stale():
    with pytest.raises(WorldsimError, match="context policy 'cached' needs"):
        ChunkRollout(_model(), ONE_EULER_STEP, ConditioningConfig(), K_PIX, FRAME, "cached")
    with pytest.raises(WorldsimError, match="unknown context policy 'cache'"):
        ChunkRollout(_model(), ONE_EULER_STEP, ConditioningConfig(), K_PIX, FRAME, "cache")


def test_the_cache_stays_the_same_size_however_long_the_session():
    m = _model()
    lat, act, c2w = _session(4 + 20 * 2)
    cond = ConditioningConfig(context_chunks=2, camera_reference="session", sink=True)
    roll = ChunkRollout(m, ONE_EULER_STEP, cond, K_PIX, FRAME, "cached")
    roll.reset(lat[:, :4], act[:, :4], c2w[:, :4])
    assert roll.cache is not None
    sizes = []
    for j in range(20):
        roll.step(act[:, 4 + 2 * j : 6 + 2 * j], c2w[:, 4 + 2 * j : 6 + 2 * j])
        sizes.append((roll.cache.nbytes(), roll.cache.context_chunks, roll.history.num_frames))
    assert len(set(sizes[2:])) == 1 and sizes[-1][1:] == (3, 6)


def test_rollout_with_gradients_equals_it_under_inference_mode():
    """Gradient-agnostic: the same chunks whether or not the caller records gradients."""
    m = _model()
    lat, act, c2w = _session(10)
    cond = ConditioningConfig(context_chunks=2, camera_reference="session")
    outs = []
    for grad in (True, False):
        roll = ChunkRollout(m, SamplerConfig(num_steps=2, mode="few_step"), cond, K_PIX, FRAME, "cached")
        with torch.set_grad_enabled(grad):
            roll.reset(lat[:, :4], act[:, :4], c2w[:, :4])
            outs.append(roll.rollout(act[:, 4:], c2w[:, 4:], torch.Generator().manual_seed(0)))
    assert outs[0].requires_grad and not outs[1].requires_grad
    torch.testing.assert_close(outs[0].detach(), outs[1], rtol=0, atol=0)


@pytest.mark.parametrize("frozen", [False, True])
@pytest.mark.parametrize("memory_grad", [False, True])
def test_with_memory_grad_a_retrieved_chunks_pass_carries_the_steps_gradient(memory_grad, frozen):
    """``memory_grad``: the chunk's exit pass reads the retrieved chunk's keys and values with
    their gradient, so its memory embedding and adapter learn from a loss on the chunk, also
    when every other weight is frozen (``distill.memory_only``: then that pass is all that
    carries gradient); the chunk is the same either way, and so is every chunk when the reuse of
    a kept pass (no gradient) serves it."""
    m = _model(memory="adapter")
    if frozen:
        m.requires_grad_(False)
        for _, p in m.memory_parameters():
            p.requires_grad_(True)
    lat, act, c2w = _session(8)
    cond = ConditioningConfig(context_chunks=2, camera_reference="chunk")
    place = _retrieved(10, 2)
    outs = []
    for grad in (memory_grad, False):
        roll = ChunkRollout(m, ONE_EULER_STEP, cond, K_PIX, FRAME, "cached", memory_chunks=1, memory_grad=grad)
        roll.reset(lat[:, :4], act[:, :4], c2w[:, :4])
        m.zero_grad()
        x0 = roll.step(act[:, 4:6], c2w[:, 4:6], torch.Generator().manual_seed(0), memory=place)
        assert x0.requires_grad == (grad or not frozen)
        _backward(x0)
        outs.append((x0.detach(), [p.grad for _, p in m.memory_parameters()]))
        later = roll.step(act[:, 6:8], c2w[:, 6:8], torch.Generator().manual_seed(1))  # no memory
        assert later.requires_grad == (not frozen)
        m.zero_grad()
        _backward(later)  # its context was written without gradient
        assert not any(_learns(p.grad) for _, p in m.memory_parameters())
    torch.testing.assert_close(outs[0][0], outs[1][0], rtol=0, atol=0)
    # the embedding, 4 linears x (down, up) per block, the last block's qkv alone
    assert len(outs[0][1]) == 1 + 8 * (m.cfg.depth - 1) + 2
    assert not any(_learns(g) for g in outs[1][1])
    assert all(_learns(g) == memory_grad for g in outs[0][1])


def _backward(x):
    if x.requires_grad:
        x.square().sum().backward()


def _learns(grad):
    return grad is not None and bool(grad.abs().sum() > 0)


def _retrieved(seed, k):
    """A retrieved chunk: its own latents, actions and poses (a place seen long before)."""
    g = torch.Generator().manual_seed(seed)
    lat = torch.randn(1, k, 3, 4, 4, generator=g, dtype=torch.float64)
    act = torch.randn(1, k, 5, generator=g, dtype=torch.float64)
    poses = [make_c2w(np.array([2.0 + 0.3 * i, 1.5, 0.4]), 2.5 + 0.2 * i, -0.1) for i in range(k)]
    return lat, act, torch.from_numpy(np.stack(poses)).double()[None]


def _check_memory_steps(m, lat, act, c2w, n0, window, memory, memory_reuse=False, guesses=None):
    """Steps a cached rollout (``chunk`` reference, ``memory[j]`` retrieved for step ``j`` or
    None) and checks each step against one forward over ``[retrieved chunks | session | chunk]``:
    each retrieved chunk in place of the oldest window chunk of the step it served (that chunk
    hidden, the retrieved one at its positions), its rays relative to that step's reference (the
    newest context frame), attending to itself alone, and seen by that step's chunk only, noisy
    and clean (the clean pass that writes the chunk's keys sees it too); a step without memory
    sees the whole window and no memory. ``guesses[j]``: retrieved chunks loaded ahead of step
    ``j`` (the engine's guess), which the step's own replace. -> the rollout's ``memory_reused``
    after each step."""
    k = m.cfg.chunk_frames
    cond = ConditioningConfig(context_chunks=window, translation_scale_m=3.0, camera_reference="chunk")
    roll = ChunkRollout(m, ONE_EULER_STEP, cond, K_PIX, FRAME, "cached", memory_chunks=1, memory_reuse=memory_reuse)
    roll.reset(lat[:, :n0], act[:, :n0], c2w[:, :n0])
    g_roll, g_ref = torch.Generator().manual_seed(3), torch.Generator().manual_seed(3)
    rays = _cacheable_rays(c2w, "chunk", k, 3.0)
    tokens = k * m.cfg.tokens_per_frame
    clean = lat[:, :n0]
    mems, reused = [], []  # (latents, actions, rays, positions, the session chunk it served)
    for j, mem in enumerate(memory):
        s = n0 + j * k
        if j in (guesses or {}):
            roll.load_memory(guesses[j], g_roll)  # no context noise here: the generator is untouched
        x0 = roll.step(act[:, s : s + k], c2w[:, s : s + k], g_roll, memory=mem)
        reused.append(roll.memory_reused)
        if mem is not None:
            start = s - window * k  # the window's first frame: the chunk it replaces
            m_rays = _rays_reference(mem[2], c2w[0, s - 1], 3.0, normalise_over_sequence=False)
            mems.append((mem[0], mem[1], m_rays, torch.arange(start, start + k), s // k))
        noise = torch.randn(1, k, 3, 4, 4, generator=g_ref, dtype=torch.float64)
        t = s + k
        ids = _ids(t, k, m.cfg.tokens_per_frame)
        n_mem = len(mems) * tokens
        mask = torch.zeros(n_mem + len(ids), n_mem + len(ids), dtype=torch.bool)
        mask[n_mem:, n_mem:] = chunk_mask(ids, ids, window_chunks=window)
        for i, (*_, served) in enumerate(mems):
            mine = slice(i * tokens, (i + 1) * tokens)
            mask[mine, mine] = True  # a retrieved chunk: itself alone
            rows = slice(n_mem + served * tokens, n_mem + (served + 1) * tokens)
            mask[rows, mine] = True
            mask[rows, n_mem + (served - window) * tokens : n_mem + (served - window + 1) * tokens] = False
        v = m(
            torch.cat([*(e[0] for e in mems), clean, noise], 1),
            torch.cat([torch.zeros(1, len(mems) * k + s), torch.ones(1, k)], 1).double(),
            torch.cat([*(e[1] for e in mems), act[:, :t]], 1),
            torch.cat([*(e[2] for e in mems), rays[:, :t]], 1),
            torch.cat([*(e[3] for e in mems), torch.arange(t)]),
            mask,
            torch.arange(len(mems) * k + t) < len(mems) * k,  # the retrieved frames, marked
        )
        torch.testing.assert_close(x0, noise - v[:, -k:], rtol=1e-9, atol=1e-9, msg=f"chunk {j}")
        clean = torch.cat([clean, x0], 1)
    assert roll.history.num_frames == window * k  # retrieved chunks never join the history
    return reused


@pytest.mark.parametrize("memory", MEMORY_READERS)
def test_cached_step_with_memory_equals_a_forward_where_retrieved_chunks_precede_the_window(memory):
    """A retrieved chunk on every other step (``_check_memory_steps`` says what the forward is;
    with a memory embedding or adapter, the retrieved frames marked)."""
    m = _model(depth=3, memory=memory)
    n0, chunks = 4, 5
    lat, act, c2w = _session(n0 + chunks * 2)
    memory = [_retrieved(10 + j, 2) if j % 2 == 0 else None for j in range(chunks)]
    assert _check_memory_steps(m, lat, act, c2w, n0, 2, memory) == [0] * chunks


def test_a_still_players_retrieved_chunk_reuses_its_pass_moved_in_time():
    """``memory_reuse``: the same chunk retrieved while the camera stands still (the same
    reference) keeps its keys and values, turned by RoPE to the positions it now takes, and the
    steps still equal the forward that computes it anew each time (no context noise here); once
    the camera moves, or another chunk is retrieved, its pass runs again."""
    m = _model(depth=3)
    n0, chunks = 4, 6
    lat, act, c2w = _session(n0 + chunks * 2)
    c2w[:, 3:12] = c2w[:, 3:4].clone()  # still from the context's newest frame to frame 11; moves at 12
    place, other = _retrieved(10, 2), _retrieved(11, 2)
    memory = [place, place, place, None, place, place]  # step j's reference is frame 3 + 2j
    wrong = {2: other}  # step 2's guess loads another chunk into the slot; the kept pass is intact
    reused = _check_memory_steps(m, lat, act, c2w, n0, 2, memory, memory_reuse=True, guesses=wrong)
    assert reused == [0, 1, 1, 0, 1, 0]  # step 4: still, kept across a step without memory; 5: moved
    memory = [place, other, place, place]  # another chunk in between: a pass of its own, then back
    assert _check_memory_steps(m, lat, act, c2w, n0, 2, memory, memory_reuse=True) == [0, 0, 0, 1]


@pytest.mark.parametrize("memory", MEMORY_READERS)
def test_rebuild_step_with_memory_equals_a_forward_with_the_retrieved_chunk_in_front_of_the_context(memory):
    """``latest`` (rebuild): the retrieved chunk replaces the oldest context chunk at the front of
    the recomputed context, rays of all relative to the newest context frame (translations
    normalised over the whole sequence), compact positions, block-causal as the teacher trained
    with a retrieved chunk (with a memory embedding or adapter, its frames marked)."""
    m = _model(memory=memory)
    k, n = 2, 4
    lat, act, c2w = _session(n + k)
    m_lat, m_act, m_c2w = _retrieved(4, k)
    cond = ConditioningConfig(context_chunks=2, translation_scale_m=3.0)
    roll = ChunkRollout(m, ONE_EULER_STEP, cond, K_PIX, FRAME, "rebuild", memory_chunks=1)
    roll.reset(lat[:, :n], act[:, :n], c2w[:, :n])
    x0 = roll.step(act[:, n:], c2w[:, n:], torch.Generator().manual_seed(7), memory=(m_lat, m_act, m_c2w))
    noise = torch.randn(1, k, 3, 4, 4, generator=torch.Generator().manual_seed(7), dtype=torch.float64)
    seen = slice(k, n + k)  # the oldest context chunk (frames 0, 1) is replaced
    seq = torch.cat([m_c2w, c2w[:, seen]], 1)
    rays = _rays_reference(seq, c2w[0, n - 1], 3.0, normalise_over_sequence=True)
    t = n + k
    ids = _ids(t, k, m.cfg.tokens_per_frame)
    sigma = torch.cat([torch.zeros(1, n), torch.ones(1, k)], 1).double()
    x = torch.cat([m_lat, lat[:, k:n], noise], 1)
    marked = torch.arange(t) < k
    v = m(x, sigma, torch.cat([m_act, act[:, seen]], 1), rays, torch.arange(t), chunk_mask(ids, ids), marked)
    torch.testing.assert_close(x0, noise - v[:, -k:], rtol=1e-9, atol=1e-9)


def test_memory_beyond_the_rollouts_slots_is_refused():
    m = _model()
    lat, act, c2w = _session(6)
    cond = ConditioningConfig(context_chunks=2, camera_reference="chunk")
    roll = ChunkRollout(m, ONE_EULER_STEP, cond, K_PIX, FRAME, "cached", memory_chunks=1)
    roll.reset(lat[:, :4], act[:, :4], c2w[:, :4])
    two = tuple(torch.cat([x, x], 1) for x in _retrieved(1, 2))
    with pytest.raises(WorldsimError, match="at most 1"):
        roll.step(act[:, 4:], c2w[:, 4:], memory=two)


def test_retrieved_chunks_replace_the_oldest_window_chunk_for_one_chunk_only():
    """The KV cache's memory slots: in use, the oldest window chunk is hidden; after the chunk is
    committed, the next one sees the whole window again and no memory."""
    from worldsim.inference.kv_cache import KVCache

    cache = KVCache(num_layers=1, chunk_tokens=2, window=2, memory=1)
    chunk = [torch.full((1, 1, 2, 3), float(i)) for i in range(5)]  # chunk i: every key equal to i
    for i in range(2):
        cache.keys_values(0, chunk[i], chunk[i])
        cache.commit()
    cache.use_memory(1)
    cache.memory_slot(0).keys_values(0, chunk[4], chunk[4])  # a retrieved chunk
    keys, _ = cache.keys_values(0, chunk[2], chunk[2])
    assert sorted(keys[0, 0, :, 0].tolist()) == [1, 1, 2, 2, 4, 4]  # chunk 0 hidden, memory in view
    cache.commit()
    keys, _ = cache.keys_values(0, chunk[3], chunk[3])
    assert sorted(keys[0, 0, :, 0].tolist()) == [1, 1, 2, 2, 3, 3]  # the window, no memory


def _still_rollout(memory_chunks, context_sigma=0.0, batch=1):
    """A cached rollout with ``memory_reuse`` whose camera stands still from the context's newest
    frame on: every step has the same reference. -> (rollout, actions, poses, n0)."""
    m = _model(depth=2)
    n0 = 4
    lat, act, c2w = _session(n0 + 6)
    c2w[:, 3:] = c2w[:, 3:4].clone()
    lat, act, c2w = (x.expand(batch, *x.shape[1:]).clone() for x in (lat, act, c2w))
    cond = ConditioningConfig(context_chunks=2, translation_scale_m=3.0, camera_reference="chunk")
    sampler = SamplerConfig(num_steps=1, mode="euler", context_sigma=context_sigma)
    roll = ChunkRollout(m, sampler, cond, K_PIX, FRAME, "cached", memory_chunks=memory_chunks, memory_reuse=True)
    roll.reset(lat[:, :n0], act[:, :n0], c2w[:, :n0])
    return roll, act, c2w, n0


def test_a_kept_pass_holds_its_own_copy_of_the_chunk_it_was_run_for():
    """A caller that refills the tensors it gave as memory with another chunk gets that chunk's
    pass, not the kept one of what the tensors held before."""
    roll, act, c2w, n0 = _still_rollout(1)
    place, other = _retrieved(10, 2), _retrieved(11, 2)
    given = tuple(x.clone() for x in place)
    roll.step(act[:, n0 : n0 + 2], c2w[:, n0 : n0 + 2], memory=given)
    for x, y in zip(given, other, strict=True):
        x.copy_(y)  # the same tensors, now another chunk
    roll.step(act[:, n0 + 2 : n0 + 4], c2w[:, n0 + 2 : n0 + 4], memory=given)
    assert roll.memory_reused == 0


def test_each_kept_pass_serves_one_retrieved_chunk_and_new_passes_draw_their_noise_as_one_tensor():
    """The same chunk retrieved twice (two memory slots) keeps two passes, each serving one slot
    on the next still step, not the first twice. The chunks that run their pass draw their context
    noise as one tensor over all of them, batch first (the draw before reuse existed, so sessions
    saved then continue as they would have)."""
    roll, act, c2w, n0 = _still_rollout(2, context_sigma=0.3, batch=2)
    place = tuple(x.expand(2, *x.shape[1:]) for x in _retrieved(10, 2))
    twice = tuple(torch.cat([x, x], 1) for x in place)
    g = torch.Generator().manual_seed(4)
    state = g.get_state()
    roll.load_memory(twice, g)
    first = list(roll._loaded[1])
    assert len(first) == 2 and first[0] is not first[1]
    # The same passes from noise drawn here as one (B, 2k, ...) tensor, chunk by chunk.
    ref = torch.Generator()
    ref.set_state(state)
    noisy = noised(twice[0].double(), 0.3, ref)
    mem = roll._retrieved(roll.history, *twice)
    rays = roll.rays.relative_to(mem.c2w, mem.ray_ref, torch.float64)
    for j, p in enumerate(first):
        sl = slice(2 * j, 2 * j + 2)
        own = _OwnKeys()
        labels = torch.full((2, 2), 0.3, dtype=torch.float64)
        roll.model.write_chunk(noisy[:, sl], labels, mem.actions[:, sl], rays[:, sl], mem.frame_idx[sl], own)
        torch.testing.assert_close(p.k, torch.stack(own.k), rtol=0, atol=0)
    roll.step(act[:, n0 : n0 + 2], c2w[:, n0 : n0 + 2], g)
    roll.step(act[:, n0 + 2 : n0 + 4], c2w[:, n0 + 2 : n0 + 4], g, memory=twice)
    assert roll.memory_reused == 2 and [p is q for p, q in zip(roll.kept, first, strict=True)] == [True, True]


class _OwnKeys:
    """A ``KVContext`` for a chunk that attends to itself alone, keeping each block's keys."""

    def __init__(self):
        self.k = []

    def keys_values(self, layer, k, v):
        self.k.append(k)
        return k, v


def _last_step_rollout(context_sigma=0.3, window=2, depth=3):
    """A ``cached`` 2-step few-step rollout whose last step starts at ``context_sigma``."""
    m = _model(depth=depth)
    c = context_sigma
    sampler = SamplerConfig(num_steps=2, shift=c / (1 - c), mode="few_step", context_sigma=c, cache_write="last_step")
    cond = ConditioningConfig(context_chunks=window, translation_scale_m=3.0, camera_reference="chunk")
    return m, sampler, ChunkRollout(m, sampler, cond, K_PIX, FRAME, "cached")


def test_last_step_cache_write_keeps_each_chunks_last_denoising_pass_as_its_context():
    """``cache_write="last_step"``: the context a chunk attends to is every earlier chunk's last
    denoising input (the previous step's estimate re-noised to ``context_sigma``), labelled
    ``context_sigma``, exactly as a full windowed forward over those inputs computes it; not the
    clean chunk re-noised afresh, which a clean pass would have written."""
    c, window, k, n0, chunks = 0.3, 2, 2, 4, 6
    m, sampler, roll = _last_step_rollout(c, window)
    assert abs(sampler.sigmas()[1] - c) < 1e-12
    lat, act, c2w = _session(n0 + chunks * k)
    roll.reset(lat[:, :n0], act[:, :n0], c2w[:, :n0], torch.Generator().manual_seed(5))
    inputs = noised(lat[:, :n0], c, torch.Generator().manual_seed(5))  # the context the reset wrote
    rays = _cacheable_rays(c2w, "chunk", k, 3.0)
    g = torch.Generator().manual_seed(3)
    for j in range(chunks):
        s = n0 + j * k
        states: list[torch.Tensor] = []
        x0 = roll.step(act[:, s : s + k], c2w[:, s : s + k], g, trajectory=states)
        last_input = states[1]  # the state the last step starts from, at sigma = c
        t = s + k
        ids = _ids(t, k, m.cfg.tokens_per_frame)
        sigma = torch.full((1, t), c, dtype=torch.float64)
        mask = chunk_mask(ids, ids, window_chunks=window)
        v = m(torch.cat([inputs, last_input], 1), sigma, act[:, :t], rays[:, :t], torch.arange(t), mask)
        torch.testing.assert_close(x0, last_input - c * v[:, s:], rtol=1e-9, atol=1e-9, msg=f"chunk {j}")
        inputs = torch.cat([inputs, last_input], 1)
    assert roll.cache.chunks_written == n0 // k + chunks


def test_an_early_exit_under_last_step_writes_its_estimate_as_the_clean_pass_would():
    """An exit before the last step (Self-Forcing's random exit) left no last pass to keep: its
    clean estimate takes the clean pass, so the cache is the ``clean_pass`` rollout's, bit for bit."""
    m, sampler, roll = _last_step_rollout()
    other = ChunkRollout(m, replace(sampler, cache_write="clean_pass"), roll.cond, K_PIX, FRAME, "cached")
    lat, act, c2w = _session(8)
    for r in (roll, other):
        r.reset(lat[:, :4], act[:, :4], c2w[:, :4], torch.Generator().manual_seed(1))
        r.step(act[:, 4:6], c2w[:, 4:6], torch.Generator().manual_seed(2), exit_step=0)
    assert roll.cache.chunks_written == other.cache.chunks_written == 3
    torch.testing.assert_close(roll.cache.k, other.cache.k, rtol=0, atol=0)
    torch.testing.assert_close(roll.cache.v, other.cache.v, rtol=0, atol=0)
