import pytest
import torch

from worldsim.core.errors import WorldsimError
from worldsim.diffusion.sampler import Sampler, SamplerConfig, sigma_schedule
from worldsim.inference.kv_cache import KVCache


def test_shifted_schedules_match_the_reference_values():
    four = sigma_schedule(4, 5.0)[:-1] * 1000
    torch.testing.assert_close(four, torch.tensor([1000, 937.5, 833.333333, 625], dtype=torch.float64))
    three = sigma_schedule(3, 5.0)[:-1] * 1000
    assert three.round().tolist() == [1000.0, 909.0, 714.0]
    assert sigma_schedule(8, 1.0)[-1] == 0.0


class Oracle:
    """Knows the answer x0: returns the exact flow velocity (x - x0) / sigma; records calls."""

    def __init__(self, x0):
        self.x0, self.calls, self.written = x0, [], None

    def forward_chunk(self, x, sigma, actions, plucker, frame_pos, cache, write=False):
        self.calls.append((float(sigma.flatten()[0]), write))
        if write:
            self.written = x
            cache.commit()
            return x
        s = sigma[..., None, None, None]
        return (x - self.x0) / s.clamp_min(1e-12) * (s > 0)


@pytest.mark.parametrize("mode", ["euler", "few_step"])
def test_sampler_recovers_x0_from_an_exact_velocity_and_writes_the_clean_chunk(mode):
    x0 = torch.randn(1, 2, 3, 4, 4, dtype=torch.float64)
    oracle = Oracle(x0)
    cache = KVCache(num_layers=1, window_chunks=2)
    sampler = Sampler(SamplerConfig(num_steps=4, mode=mode))
    out = sampler.sample_chunk(
        oracle,
        cache,
        torch.zeros(1, 2, 5),
        torch.zeros(1, 2, 6, 4, 4, dtype=torch.float64),
        torch.arange(2),
        x0.shape,
        generator=torch.Generator().manual_seed(0),
    )
    torch.testing.assert_close(out, x0)
    assert [w for _, w in oracle.calls] == [False] * 4 + [True]  # 4 steps, then one clean write
    assert oracle.calls[-1][0] == 0.0 and cache.chunks_written == 1


def test_context_sigma_renoises_the_chunk_before_it_is_written():
    x0 = torch.randn(1, 4, 8, 16, 16, dtype=torch.float64)
    oracle = Oracle(x0)
    sampler = Sampler(SamplerConfig(num_steps=3, mode="euler", context_sigma=0.3))
    out = sampler.sample_chunk(
        oracle,
        KVCache(num_layers=1, window_chunks=2),
        torch.zeros(1, 4, 5),
        torch.zeros(1, 4, 6, 16, 16, dtype=torch.float64),
        torch.arange(4),
        x0.shape,
        generator=torch.Generator().manual_seed(0),
    )
    torch.testing.assert_close(out, x0)  # the returned chunk stays clean
    assert oracle.calls[-1] == (0.3, True)  # written at the level it is labelled with
    eps = (oracle.written - 0.7 * x0) / 0.3  # what was mixed in is unit Gaussian noise
    assert abs(float(eps.std()) - 1.0) < 0.05 and abs(float(eps.mean())) < 0.05
    with pytest.raises(WorldsimError, match=r"context_sigma must be in \[0, 1\), got 1.0"):
        SamplerConfig(context_sigma=1.0)


def test_guidance_needs_null_actions_and_bad_settings_are_refused():
    x0 = torch.zeros(1, 1, 1, 2, 2, dtype=torch.float64)
    s = Sampler(SamplerConfig(num_steps=2, guidance=2.0))
    with pytest.raises(WorldsimError, match="null actions"):
        s.sample_chunk(
            Oracle(x0),
            KVCache(1, 1),
            torch.zeros(1, 1, 2),
            torch.zeros(1, 1, 6, 2, 2, dtype=torch.float64),
            torch.arange(1),
            x0.shape,
        )
    with pytest.raises(WorldsimError, match="unknown sampler mode"):
        SamplerConfig(mode="ddim")
