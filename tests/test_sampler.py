"""Diffusion math: schedules, the two update rules, guidance, context noise, settings."""

import pytest
import torch

from worldsim.core.errors import WorldsimError
from worldsim.diffusion.sampler import SamplerConfig, SamplerOverrides, context_input, denoise_update, guided
from worldsim.diffusion.schedule import noised, sigma_schedule


def test_shifted_schedules_match_the_reference_values():
    four = sigma_schedule(4, 5.0)[:-1] * 1000
    torch.testing.assert_close(four, torch.tensor([1000, 937.5, 833.333333, 625], dtype=torch.float64))
    three = sigma_schedule(3, 5.0)[:-1] * 1000
    assert three.round().tolist() == [1000.0, 909.0, 714.0]
    assert sigma_schedule(8, 1.0)[-1] == 0.0


@pytest.mark.parametrize("mode", ["euler", "few_step"])
def test_updates_recover_x0_from_an_exact_velocity(mode):
    """With the true velocity ``(x - x0) / sigma`` every schedule lands on x0."""
    cfg = SamplerConfig(num_steps=4, mode=mode)
    x0 = torch.randn(1, 2, 3, 4, 4, dtype=torch.float64)
    g = torch.Generator().manual_seed(0)
    x = torch.randn(x0.shape, generator=g, dtype=torch.float64)
    sig = cfg.sigmas()
    assert sig[0] == 1.0 and sig[-1] == 0.0 and len(sig) == 5
    for i in range(cfg.num_steps):
        v = (x - x0) / sig[i]
        x, est = denoise_update(cfg, x, v, sig[i], sig[i + 1], g)
        torch.testing.assert_close(est, x0)  # the clean estimate is exact at every step
    torch.testing.assert_close(x, x0)


def test_few_step_renoises_to_the_next_level_with_fresh_noise():
    cfg = SamplerConfig(num_steps=2, mode="few_step")
    x0 = torch.zeros(1, 4, 8, 16, 16, dtype=torch.float64)
    x = torch.randn(x0.shape, dtype=torch.float64)
    nxt, est = denoise_update(cfg, x, x - x0, 1.0, 0.3, torch.Generator().manual_seed(1))
    torch.testing.assert_close(est, x0)
    assert abs(float(nxt.std()) - 0.3) < 0.01  # (1 - 0.3) * 0 + 0.3 * eps
    assert not torch.allclose(nxt / 0.3, x)  # the noise is new, not the input's


def test_guidance_mixes_conditional_and_null_velocities():
    v, v_null = torch.tensor([2.0]), torch.tensor([1.0])
    assert guided(v, v_null, 1.0) == v and guided(v, v_null, 3.0) == 4.0
    assert SamplerConfig(guidance=2.0).passes_per_step == 2 and SamplerConfig().passes_per_step == 1


def test_context_input_renoises_to_context_sigma_only_when_asked():
    x0 = torch.randn(1, 4, 8, 16, 16, dtype=torch.float64)
    assert context_input(SamplerConfig(), x0) is x0
    out = context_input(SamplerConfig(context_sigma=0.3), x0, torch.Generator().manual_seed(0))
    eps = (out - 0.7 * x0) / 0.3  # what was mixed in is unit Gaussian noise
    assert abs(float(eps.std()) - 1.0) < 0.05 and abs(float(eps.mean())) < 0.05
    torch.testing.assert_close(noised(x0, 0.0), x0)


def test_bad_sampler_settings_are_refused_with_one_line():
    with pytest.raises(WorldsimError, match="unknown sampler mode"):
        SamplerConfig(mode="ddim")
    with pytest.raises(WorldsimError, match=r"context_sigma must be in \[0, 1\), got 1.0"):
        SamplerConfig(context_sigma=1.0)
    with pytest.raises(WorldsimError, match="num_steps must be >= 1"):
        SamplerConfig(num_steps=0)
    with pytest.raises(WorldsimError, match="guidance must be > 0"):
        SamplerConfig(guidance=0.0)


@pytest.mark.parametrize(("steps", "c"), [(2, 0.4), (3, 0.4), (2, 0.25)])
def test_last_step_cache_write_takes_the_schedule_whose_last_step_starts_at_context_sigma(steps, c):
    """The shift the refusal names is the one that fits: the last step then starts at ``c``."""
    with pytest.raises(WorldsimError, match="needs the last step to start at context_sigma") as e:
        SamplerConfig(num_steps=steps, shift=5.0, mode="few_step", context_sigma=c, cache_write="last_step")
    fit = float(str(e.value).split("(shift ")[1].split(" ")[0])
    ok = SamplerConfig(num_steps=steps, shift=fit, mode="few_step", context_sigma=c, cache_write="last_step")
    assert abs(ok.sigmas()[-2] - c) < 1e-3 and len(str(e.value).splitlines()) == 1


def test_last_step_cache_write_is_refused_where_no_last_pass_reads_a_context_input():
    fit = {"shift": 0.4 / 0.6, "context_sigma": 0.4, "cache_write": "last_step"}
    SamplerConfig(num_steps=2, mode="few_step", **fit)  # the fitting case is accepted
    with pytest.raises(WorldsimError, match="unknown sampler cache_write"):
        SamplerConfig(cache_write="last")
    with pytest.raises(WorldsimError, match=r"needs context noise \(context_sigma > 0\)"):
        SamplerConfig(num_steps=2, mode="few_step", cache_write="last_step")
    for bad in ({"mode": "euler"}, {"num_steps": 1}, {"guidance": 2.0}):
        with pytest.raises(WorldsimError, match="needs mode few_step, guidance 1 and >= 2 steps"):
            SamplerConfig(**{"num_steps": 2, "mode": "few_step", **fit, **bad})


def test_a_last_step_sampler_at_other_step_counts_keeps_its_last_step_at_context_sigma():
    """``at_steps``: the overrides the bench and the step-count rows use; 1 step has no pass that
    starts at context_sigma, so it takes the clean pass; a clean-pass sampler only changes steps."""
    c = 0.4
    own = SamplerConfig(num_steps=2, shift=c / (1 - c), mode="few_step", context_sigma=c, cache_write="last_step")
    for n in (2, 3, 4):
        at = own.at_steps(n).apply(own)
        assert at.num_steps == n and at.cache_write == "last_step" and abs(at.sigmas()[-2] - c) < 1e-9
    one = own.at_steps(1).apply(own)
    assert (one.num_steps, one.cache_write, one.shift) == (1, "clean_pass", own.shift)
    assert SamplerConfig().at_steps(6) == SamplerOverrides(num_steps=6)
