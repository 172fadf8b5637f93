import pytest
import torch

from worldsim.inference.kv_cache import KVCache
from worldsim.model.attention import chunk_mask, teacher_forcing_mask
from worldsim.model.dit import WorldModel, WorldModelConfig

CFG = WorldModelConfig(
    latent_channels=4, latent_size=(4, 4), patch=2, width=48, depth=2, heads=2, action_dim=5, chunk_frames=2
)


def _randomised(cfg=CFG, seed=0):
    """A model with every weight random (zero-init paths included), so no path is trivially off."""
    torch.manual_seed(seed)
    m = WorldModel(cfg).double().eval()
    with torch.no_grad():
        for p in m.parameters():
            p.normal_(0, 0.2)
    return m


def _inputs(t, seed=1, cfg=CFG):
    g = torch.Generator().manual_seed(seed)
    h, w = cfg.latent_size
    return (
        torch.randn(1, t, cfg.latent_channels, h, w, generator=g, dtype=torch.float64),
        torch.rand(1, t, generator=g, dtype=torch.float64),
        torch.randn(1, t, cfg.action_dim, generator=g, dtype=torch.float64),
        torch.randn(1, t, 6, h, w, generator=g, dtype=torch.float64),
    )


def _chunk_ids(t, cfg=CFG):
    return torch.arange(t).div(cfg.chunk_frames, rounding_mode="floor").repeat_interleave(cfg.tokens_per_frame)


def test_changing_a_later_chunk_never_changes_earlier_outputs():
    m = _randomised()
    t = 3 * CFG.chunk_frames
    x, s, a, pl = _inputs(t)
    mask = chunk_mask(_chunk_ids(t), _chunk_ids(t))
    out = m(x, s, a, pl, torch.arange(t), mask)
    x2, a2, pl2 = x.clone(), a.clone(), pl.clone()
    x2[:, 4:] += 1.0
    a2[:, 4:] -= 2.0
    pl2[:, 4:] *= 3.0
    out2 = m(x2, s, a2, pl2, torch.arange(t), mask)
    torch.testing.assert_close(out2[:, :4], out[:, :4])  # chunks 0 and 1 unchanged
    assert (out2[:, 4:] - out[:, 4:]).abs().max() > 1e-3  # chunk 2 did change


@pytest.mark.parametrize("window_chunks", [8, 2])  # 2: the window evicts from chunk 3 on
def test_kv_cache_generation_equals_full_block_causal_forward(window_chunks):
    m = _randomised()
    n_chunks, k = 6, CFG.chunk_frames
    t = n_chunks * k
    x, s, a, pl = _inputs(t)
    pos = torch.arange(t)
    ids = _chunk_ids(t)
    full = m(x, s, a, pl, pos, chunk_mask(ids, ids, window_chunks=window_chunks, sink=True))
    cache = KVCache(CFG.depth, k * CFG.tokens_per_frame, window_chunks, sink=True)
    outs = []
    for b in range(n_chunks):
        sl = slice(b * k, (b + 1) * k)
        outs.append(m.forward_chunk(x[:, sl], s[:, sl], a[:, sl], pl[:, sl], pos[sl], cache))
        cache.commit()
    torch.testing.assert_close(torch.cat(outs, 1), full, rtol=1e-9, atol=1e-9)
    assert cache.context_chunks == 1 + min(window_chunks, n_chunks - 1)  # sink + window, however long it runs
    assert cache.nbytes() == 2 * CFG.depth * (window_chunks + 2) * k * CFG.tokens_per_frame * CFG.width * 8


def test_a_pass_without_commit_leaves_the_cache_alone():
    m = _randomised()
    x, s, a, pl = _inputs(4)
    cache = KVCache(CFG.depth, CFG.chunk_frames * CFG.tokens_per_frame, window=3)
    m.forward_chunk(x[:, :2], s[:, :2], a[:, :2], pl[:, :2], torch.arange(2), cache)
    cache.commit()
    o1 = m.forward_chunk(x[:, 2:], s[:, 2:], a[:, 2:], pl[:, 2:], torch.arange(2, 4), cache)
    o2 = m.forward_chunk(x[:, 2:], s[:, 2:], a[:, 2:], pl[:, 2:], torch.arange(2, 4), cache)
    assert cache.context_chunks == 1 and cache.chunks_written == 1
    torch.testing.assert_close(o1, o2)


def test_write_chunk_leaves_the_keys_and_values_a_full_pass_leaves():
    """The cache write's shortened pass (the last block stops after its keys and values) fills
    every layer of every slot exactly as ``forward_chunk`` does, with the window wrapping."""
    m = _randomised()
    k = CFG.chunk_frames
    x, s, a, pl = _inputs(4 * k)
    full, written = (KVCache(CFG.depth, k * CFG.tokens_per_frame, window=2, sink=True) for _ in range(2))
    for b in range(4):
        sl = slice(b * k, (b + 1) * k)
        m.forward_chunk(x[:, sl], s[:, sl], a[:, sl], pl[:, sl], torch.arange(b * k, (b + 1) * k), full)
        m.write_chunk(x[:, sl], s[:, sl], a[:, sl], pl[:, sl], torch.arange(b * k, (b + 1) * k), written)
        full.commit()
        written.commit()
    assert full.k is not None and written.k is not None and full.v is not None and written.v is not None
    assert torch.equal(full.k, written.k) and torch.equal(full.v, written.v)


def test_teacher_forcing_mask_layout():
    ids = torch.tensor([0, 0, 1, 1])
    m = teacher_forcing_mask(ids)
    assert m.shape == (8, 8)
    assert m[0, 1] and not m[0, 2] and m[2, 0]  # clean: block-causal
    assert not m[:4, 4:].any()  # clean never sees noisy
    assert m[6, 0] and not m[6, 2] and m[6, 7] and not m[6, 5]  # noisy chunk 1: clean chunk 0 + itself


def test_zero_initialised_action_and_camera_paths_are_ignored_until_trained():
    torch.manual_seed(0)
    m = WorldModel(CFG).double()
    with torch.no_grad():  # make the trunk non-trivial but leave the zero-init paths at zero
        for blk in m.blocks:
            blk.ada[1].weight.normal_(0, 0.1)
        m.ada_out[1].weight.normal_(0, 0.1)
        m.out.weight.normal_(0, 0.1)
    x, s, a, pl = _inputs(2)
    base = m(x, s, a, pl, torch.arange(2))
    torch.testing.assert_close(m(x, s, a * 5 + 1, pl, torch.arange(2)), base)
    torch.testing.assert_close(m(x, s, a, pl * 5 + 1, torch.arange(2)), base)
    # One optimisation step on a loss that needs actions and rays wakes both paths up.
    target = base.detach() + a.mean(-1)[..., None, None, None] + pl.mean(2, keepdim=True)
    opt = torch.optim.SGD(m.parameters(), lr=0.1)
    for _ in range(2):  # the first step trains the zero last layers' inputs; the second moves outputs
        opt.zero_grad()
        torch.nn.functional.mse_loss(m(x, s, a, pl, torch.arange(2)), target).backward()
        opt.step()
    with torch.no_grad():
        new = m(x, s, a, pl, torch.arange(2))
        assert (m(x, s, a * 5 + 1, pl, torch.arange(2)) - new).abs().max() > 1e-6
        assert (m(x, s, a, pl * 5 + 1, torch.arange(2)) - new).abs().max() > 1e-6


def test_a_memory_embedding_starts_at_zero_and_then_changes_only_the_frames_it_marks():
    """``memory_embedding``: a network given one computes exactly what it computed before; once
    the vector is non-zero, a forward with no frame marked is unchanged and marked frames change
    (a retrieved chunk's pass marks its frames: tests/test_rollout.py)."""
    import dataclasses

    x, s, a, pl = _inputs(4)
    pos = torch.arange(4)
    m = _randomised()
    before = m(x, s, a, pl, pos)
    m.add_memory_embedding()
    assert m.cfg.memory_embedding and not CFG.memory_embedding
    first = torch.tensor([True, True, False, False])
    assert torch.equal(m(x, s, a, pl, pos, memory_frames=first), before)
    with torch.no_grad():
        m.memory_embed.normal_(0, 0.5)
    assert torch.equal(m(x, s, a, pl, pos), before)
    assert torch.equal(m(x, s, a, pl, pos, memory_frames=torch.zeros(4, dtype=torch.bool)), before)
    marked = m(x, s, a, pl, pos, memory_frames=first)
    assert not torch.allclose(marked[:, :2], before[:, :2])
    # WorldModel(cfg) with the flag builds the same parameters, the embedding among them
    twin = WorldModel(dataclasses.replace(CFG, memory_embedding=True)).double()
    twin.load_state_dict(m.state_dict())
    torch.testing.assert_close(twin.eval()(x, s, a, pl, pos, memory_frames=first), marked, rtol=0, atol=0)


def test_a_memory_adapter_starts_at_zero_and_then_changes_only_what_retrieved_frames_offer():
    """``memory_adapter_rank``: a network given an adapter computes exactly what it computed
    before; once it is non-zero, a forward with no frame marked is unchanged, and so is a chunk
    that attends only to itself and to unmarked frames; in a block-causal forward where a marked
    chunk comes first, that chunk and the frames reading it change (a retrieved chunk's pass
    marks its frames: tests/test_rollout.py)."""
    import dataclasses

    x, s, a, pl = _inputs(4)
    pos = torch.arange(4)
    ids = torch.arange(4).div(2, rounding_mode="floor").repeat_interleave(CFG.tokens_per_frame)
    mask = chunk_mask(ids, ids)  # chunk 1 reads chunk 0
    m = _randomised()
    before = m(x, s, a, pl, pos, mask)
    m.add_memory_adapter(3)
    assert m.cfg.memory_adapter_rank == 3 and CFG.memory_adapter_rank == 0
    assert (
        {n for n, _ in m.memory_parameters()}
        == {  # the last block's output is read by nothing
            f"blocks.{i}.memory_adapter.{lin}.{part}.weight"
            for i in range(CFG.depth)
            for lin in ("qkv", "proj", "fc1", "fc2")[: 4 if i < CFG.depth - 1 else 1]
            for part in ("down", "up")
        }
    )
    first = torch.tensor([True, True, False, False])
    assert torch.equal(m(x, s, a, pl, pos, mask, memory_frames=first), before)
    with torch.no_grad():
        for _, p in m.memory_parameters():
            p.normal_(0, 0.5)
    assert torch.equal(m(x, s, a, pl, pos, mask), before)
    assert torch.equal(m(x, s, a, pl, pos, mask, memory_frames=torch.zeros(4, dtype=torch.bool)), before)
    last = torch.tensor([False, False, True, True])  # marks the reader, whom nobody reads
    assert torch.equal(m(x, s, a, pl, pos, mask, memory_frames=last)[:, :2], before[:, :2])
    marked = m(x, s, a, pl, pos, mask, memory_frames=first)
    assert not torch.allclose(marked[:, :2], before[:, :2])
    assert not torch.allclose(marked[:, 2:], before[:, 2:])
    # WorldModel(cfg) with the rank builds the same parameters, the adapter among them
    twin = WorldModel(dataclasses.replace(CFG, memory_adapter_rank=3)).double()
    twin.load_state_dict(m.state_dict())
    torch.testing.assert_close(twin.eval()(x, s, a, pl, pos, mask, memory_frames=first), marked, rtol=0, atol=0)
    kept = m.blocks[0].memory_adapter
    m.add_memory_adapter(3)  # the same rank: kept, weights and all
    assert m.blocks[0].memory_adapter is kept
    with pytest.raises(ValueError, match="has a memory adapter of rank 3, not 4"):
        m.add_memory_adapter(4)
    with pytest.raises(ValueError, match="rank must be >= 1, got 0"):
        WorldModel(CFG).add_memory_adapter(0)
