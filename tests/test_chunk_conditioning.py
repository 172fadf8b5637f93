"""The real-time teacher's conditioning (``camera_reference="chunk"``): training clips give the
network the rays the rollout gives it, and the press-edge encoding reaches the model as it
was trained."""

import dataclasses

import numpy as np
import pytest
import torch

from worldsim.core.actions import make_action_encoder
from worldsim.diffusion.sampler import SamplerConfig
from worldsim.inference.checkpoint import load_checkpoint
from worldsim.inference.context import ConditioningConfig
from worldsim.inference.rollout import ChunkRollout
from worldsim.model.codec import Codec, CodecConfig
from worldsim.model.dit import WorldModel, WorldModelConfig
from worldsim.model.plucker import clip_rays
from worldsim.train.config import TeacherConfig
from worldsim.train.teacher_data import ClipSampler, EncodedSplit

K = 2  # frames per chunk


class RaySpy(WorldModel):
    """The model, recording the rays and actions of every chunk it is handed."""

    def __init__(self, cfg):
        super().__init__(cfg)
        self.seen: list[tuple[torch.Tensor, torch.Tensor]] = []

    def forward_chunk(self, x, sigma, actions, plucker, frame_pos, kv=None):
        self.seen.append((plucker.clone(), actions.clone()))
        return super().forward_chunk(x, sigma, actions, plucker, frame_pos, kv)

    def write_chunk(self, x, sigma, actions, plucker, frame_pos, kv, memory=False):
        self.seen.append((plucker.clone(), actions.clone()))
        super().write_chunk(x, sigma, actions, plucker, frame_pos, kv, memory)


@pytest.fixture(scope="module")
def split(small_dataset):
    enc = make_action_encoder("keyboard_press_mouse", small_dataset.meta.key_names)
    return enc, EncodedSplit.encode(str(small_dataset.root), Codec(CodecConfig(4, 4, 16)), enc, "encode")


@pytest.mark.parametrize("policy", ["rebuild", "cached"])
def test_training_clips_carry_the_rays_and_actions_the_rollout_gives_the_model(split, policy):
    enc, sp = split
    cond = ConditioningConfig(2, 8.0, camera_reference="chunk")
    tc = TeacherConfig(context_chunks=2, memory_prob=0.0, action_drop=0.0, camera_drop=0.0)
    clips = ClipSampler(sp, K, tc, cond, (16, 16), torch.from_numpy(enc.null_action()))
    b = clips.batch(0, 0, 16, train=False)
    mcfg = WorldModelConfig(4, (16, 16), patch=4, width=32, depth=1, heads=2, action_dim=enc.dim, chunk_frames=K)
    model = RaySpy(mcfg)
    rollout = ChunkRollout(model, SamplerConfig(num_steps=1, mode="euler"), cond, sp.intrinsics, (64, 64), policy)
    checked = 0
    for i in range(16):
        e, s = next((e, s) for e, s in clips.index if torch.equal(sp.c2w[e][s : s + 6], b.c2w[i]))
        if s % K:  # the rollout keeps whole chunks counted from the episode's first frame
            continue
        # The session starts at the episode's first frame; the clip's context is its newest 4.
        rollout.reset(
            ((sp.latents[e][: s + 4].float() - clips.mean) / clips.std)[None],
            sp.actions[e][None, : s + 4],
            sp.c2w[e][None, : s + 4],
        )
        model.seen.clear()
        with torch.no_grad():
            rollout.step(sp.actions[e][None, s + 4 : s + 6], sp.c2w[e][None, s + 4 : s + 6])
        # rebuild: 2 context chunks, then the chunk; cached: the chunk, then its cache write.
        target_rays, target_actions = model.seen[2 if policy == "rebuild" else 0]
        torch.testing.assert_close(target_rays[0], b.plucker[i, 4:], rtol=0, atol=1e-6)
        torch.testing.assert_close(target_actions[0], b.actions[i, 4:], rtol=0, atol=0)
        if policy == "rebuild":
            context_rays = torch.cat([model.seen[0][0], model.seen[1][0]], 1)
            torch.testing.assert_close(context_rays[0], b.plucker[i, :4], rtol=0, atol=1e-6)
        checked += 1
    assert checked >= 3


def test_a_retrieved_chunk_is_seen_from_the_generated_chunks_reference(split):
    enc, sp = split
    cond = ConditioningConfig(2, 8.0, camera_reference="chunk")
    tc = TeacherConfig(context_chunks=2, memory_prob=1.0, memory_top=1, action_drop=0.0, camera_drop=0.0)
    clips = ClipSampler(sp, K, tc, cond, (16, 16), torch.from_numpy(enc.null_action()))
    b = clips.batch(0, 0, 16)
    assert b.memory.any()
    intr = sp.intrinsics[None]
    for i in torch.nonzero(b.memory).flatten().tolist():
        c2w = b.c2w[i : i + 1]
        ref = c2w[:, -K - 1]  # the newest context frame
        want = clip_rays(c2w[:, :K], ref, intr, (64, 64), (16, 16), 8.0, per_sequence_scale=False)
        torch.testing.assert_close(b.plucker[i : i + 1, :K], want, rtol=0, atol=1e-6)
        # the recent context chunk keeps its own reference: the frame before it, not the newest
        own = clip_rays(c2w[:, K : 2 * K], ref, intr, (64, 64), (16, 16), 8.0, per_sequence_scale=False)
        assert not torch.allclose(b.plucker[i : i + 1, K : 2 * K], own) or torch.equal(c2w[0, K - 1], ref[0])


def test_a_key_held_across_steps_is_one_press_for_the_model(tmp_path):
    from tests.test_engine import KEYS, _world_reset, make_tiny_checkpoint
    from worldsim import load_engine

    eng = load_engine(make_tiny_checkpoint(tmp_path / "ck", camera_reference="chunk", encoder="keyboard_press_mouse"))
    spy = []
    step = eng.rollout.step
    eng.rollout.step = lambda a, c, g=None, **kw: spy.append(a.clone()) or step(a, c, g, **kw)  # type: ignore[method-assign]
    _world_reset(eng, 1)
    keys = np.zeros((2, len(KEYS)), np.uint8)
    keys[:, KEYS.index("l")] = 1
    for _ in range(3):  # l held for 6 frames over three chunks
        eng.step(keys, np.zeros((2, 2), np.float32))
    press = eng.encoder.channels().index("press:l")
    held = eng.encoder.channels().index("key:l")
    rows = torch.cat(spy, 1)[0]
    assert rows[:, press].tolist() == [1, 0, 0, 0, 0, 0]
    assert rows[:, held].tolist() == [1] * 6
    assert (rows[:, -1] == 0).all()  # no real input carries the null flag


def test_a_start_from_another_encoder_behaves_as_before_for_every_real_input(tmp_path):
    """init_from v1 (``keyboard_mouse``) into a ``keyboard_press_mouse`` run: the action input layer
    takes each channel from its namesake and starts the new ones at zero, so the refit network
    first gives v1's outputs for every real input (presses included)."""
    from tests.test_engine import KEYS, make_tiny_checkpoint
    from worldsim.model.attention import chunk_mask
    from worldsim.train.state import init_weights
    from worldsim.train.teacher_stage import _action_adapter

    v1_dir = make_tiny_checkpoint(tmp_path / "v1", seed=3)
    v1 = load_checkpoint(v1_dir)[1]
    old, new = make_action_encoder("keyboard_mouse", KEYS), make_action_encoder("keyboard_press_mouse", KEYS)
    assert _action_adapter(str(v1_dir), old) is None  # same encoder: nothing to map
    v2 = WorldModel(dataclasses.replace(v1.cfg, action_dim=new.dim))
    ema = WorldModel(v2.cfg)
    init_weights(v1_dir, v2, ema, _action_adapter(str(v1_dir), new))
    rng = np.random.default_rng(0)
    keys = (rng.random((6, len(KEYS))) < 0.4).astype(np.uint8)  # presses, holds and releases
    mouse = rng.normal(0, 20, (6, 2)).astype(np.float32)
    a_old = torch.from_numpy(old.encode_batch(keys, mouse))[None]
    a_new = torch.from_numpy(new.encode_sequence(keys, mouse, np.zeros(len(KEYS), np.uint8)))[None]
    assert a_new[0, :, : len(KEYS)].sum() > 0 and (a_new[0, :, len(KEYS) : 2 * len(KEYS)] > 0).any()
    g = torch.Generator().manual_seed(1)
    x = torch.randn(1, 6, 4, 16, 16, generator=g)
    sigma, rays = torch.rand(1, 6, generator=g), torch.randn(1, 6, 6, 16, 16, generator=g)
    ids = torch.arange(6).div(2, rounding_mode="floor").repeat_interleave(v1.cfg.tokens_per_frame)
    mask = chunk_mask(ids, ids)
    with torch.no_grad():
        want = v1(x, sigma, a_old, rays, torch.arange(6), mask)
        for m in (v2, ema):
            torch.testing.assert_close(m(x, sigma, a_new, rays, torch.arange(6), mask), want, rtol=0, atol=1e-6)
        # the null flag is a real input to the refit network: the null action is not "idle"
        null = torch.from_numpy(new.null_action())[None, None].expand(1, 6, -1)
        idle = torch.from_numpy(new.encode_sequence(np.zeros_like(keys), np.zeros_like(mouse), keys[0] * 0))[None]
        assert not torch.equal(null, idle)
