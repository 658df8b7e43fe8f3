"""Reliability of the pure API: independent random streams, usable defaults, clear errors."""
import math

import pytest
import torch

from nse.samplers import nested
from nse.samplers.common import DiscreteSchedule, make_noise_sampler, stream_seed

MS = DiscreteSchedule()


def gaussian_denoiser(x, sigma, **kw):
    """Exact denoiser of N(0, I) data: outputs carry no shared mean, so correlation measures shared noise."""
    s = sigma.reshape(-1, *([1] * (x.dim() - 1))).to(x.dtype)
    return x / (1 + s * s)


def corr(a, b):
    a, b = a.flatten().double(), b.flatten().double()
    a, b = a - a.mean(), b - b.mean()
    return float((a * b).sum() / (a.norm() * b.norm()))


# ------------------------------------------------------------------------------------------
# streams
# ------------------------------------------------------------------------------------------
def test_stream_seeds_are_mixed_not_offset():
    seeds = {stream_seed(s, p, i) for s in range(50) for p in ("a", "b") for i in range(50)}
    assert len(seeds) == 50 * 2 * 50                     # no (seed, index) pair shares a stream
    assert stream_seed(1, "a", 0) != stream_seed(0, "a", 1)
    z1 = make_noise_sampler(torch.zeros(2, 4096), 100)()
    z2 = make_noise_sampler(torch.zeros(2, 4096), 101)()
    assert abs(corr(z1[1], z2[0])) < 0.1 and abs(corr(z1[0], z1[1])) < 0.1


def _nested(x, seed, ids=None, **kw):
    sig = nested.official_outer_sigmas(MS, 6)
    return nested.sample_nested(gaussian_denoiser, x * float(sig[0]), sig, extra_args={"seed": seed},
                                model_sampling=MS, inner_steps=4, sample_ids=ids, **kw)


@pytest.mark.parametrize("outer_eta", [0.0, 1.0])
def test_nested_neighbouring_seed_and_index_pairs_are_independent(outer_eta):
    g = torch.Generator().manual_seed(0)
    cs = []
    for s in range(100, 106):
        xa = torch.randn(2, 3, 32, 32, generator=g, dtype=torch.float64)
        xb = torch.randn(2, 3, 32, 32, generator=g, dtype=torch.float64)
        a, b = _nested(xa, s, outer_eta=outer_eta), _nested(xb, s + 1, outer_eta=outer_eta)
        cs.append(corr(a[1], b[0]))                      # sample 1 at seed s vs sample 0 at seed s+1
    assert max(abs(c) for c in cs) < 0.1, cs


def test_nested_sample_alone_equals_the_same_sample_in_a_batch():
    x = torch.randn(3, 3, 8, 8, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    batch = _nested(x, 7, ids=[0, 1, 2])
    alone = _nested(x[1:2], 7, ids=[1])
    assert torch.equal(batch[1:2], alone)
    assert not torch.equal(batch[0], batch[1])


# ------------------------------------------------------------------------------------------
# usable defaults, clear errors
# ------------------------------------------------------------------------------------------
def test_nested_defaults_work_for_a_plain_k_diffusion_denoiser():
    calls = []

    def plain(x, sigma):                                 # no **extra_args, no model_sampling
        calls.append(1)
        return gaussian_denoiser(x, sigma)

    sig = torch.tensor([14.6, 4.0, 1.0, 0.0], dtype=torch.float64)
    x = torch.randn(2, 16, generator=torch.Generator().manual_seed(0), dtype=torch.float64) * 14.6
    out = nested.sample_nested(plain, x, sig)
    assert out.shape == x.shape and torch.isfinite(out).all() and len(calls) == 3 * 8


@pytest.mark.parametrize("x,kw,msg", [
    (torch.full((1, 4), float("nan")), {}, "x contains NaN or infinite values"),
    (torch.full((1, 4), float("inf")), {}, "x contains NaN or infinite values"),
    (torch.tensor(1.0), {}, "x must be a tensor with a non-empty batch dimension"),
    (torch.zeros(0, 4), {}, "x must be a tensor with a non-empty batch dimension"),
    (torch.zeros(1, 4, dtype=torch.long), {}, "x must be a floating-point tensor"),
    (torch.zeros(1, 4), {"inner_sampler": "euler"}, "inner_sampler must be a k-diffusion sampler function"),
    (torch.zeros(1, 4), {"inner_scheduler": "official"}, "inner_scheduler='official' needs model_sampling"),
    (torch.zeros(2, 4), {"sample_ids": [0]}, "sample_ids must have one id per sample"),
])
def test_nested_bad_input_is_named_before_any_model_call(x, kw, msg):
    def never(*a, **k):
        raise AssertionError("model called")

    with pytest.raises(ValueError, match=msg):
        nested.sample_nested(never, x, torch.tensor([2.0, 0.0]), **kw)


def test_nested_wrong_shaped_model_output_is_an_error_not_a_broadcast():
    def bad(x, sigma, **kw):
        return x[:, :1]                                   # (1, 1, 8, 8) for a (1, 3, 8, 8) input

    with pytest.raises(ValueError, match=r"model returned \(1, 1, 8, 8\) for an input of shape \(1, 3, 8, 8\)"):
        nested.sample_nested(bad, torch.zeros(1, 3, 8, 8), torch.tensor([2.0, 0.0]))
    with pytest.raises(ValueError, match="model must be a denoiser"):
        nested.sample_nested("model", torch.zeros(1, 3, 8, 8), torch.tensor([2.0, 0.0]))


@pytest.mark.parametrize("steps", list(range(1, 999, 7)) + [997, 998])
def test_official_outer_grid_is_strictly_decreasing_for_every_allowed_count(steps):
    sig = nested.official_outer_sigmas(MS, steps)
    assert len(sig) == steps + 1 and float(sig[-1]) == 0.0
    assert bool(torch.all(sig[:-1] > sig[1:]))


def test_official_outer_grid_names_its_limit():
    with pytest.raises(ValueError, match="steps must be an integer between 1 and 998"):
        nested.official_outer_sigmas(MS, 999)
    assert math.isclose(float(nested.official_outer_sigmas(MS, 1)[0]), float(MS.sigma(999)), rel_tol=1e-12)


@pytest.mark.parametrize("steps", list(range(1, 1001, 37)) + [1, 2, 999, 1000])
@pytest.mark.parametrize("denoise", [1.0, 0.5, 0.01])
def test_split_respace_is_a_valid_grid_for_every_widget_value(steps, denoise):
    from nse.samplers import split
    if int(steps / denoise) > 1000:
        with pytest.raises(ValueError, match="exceeds"):
            split.split_respace_sigmas(MS, steps, denoise)
        return
    sig = split.split_respace_sigmas(MS, steps, denoise)
    assert len(sig) == steps + 1 and float(sig[-1]) == 0.0
    assert bool(torch.all(sig[:-1] > sig[1:]))
    if denoise == 1.0:
        assert math.isclose(float(sig[0]), float(MS.sigmas[-1]), rel_tol=1e-6)    # starts at the top


def test_elastic_neighbouring_seed_and_index_pairs_are_independent():
    from nse.samplers import elastic

    def den(x, sigma, which, meta):                      # N(0, I) data: no shared mean structure
        return gaussian_denoiser(x, sigma)

    den.base = 8
    sig = torch.tensor([14.6, 6.0, 2.5, 1.0, 0.3, 0.0], dtype=torch.float64)
    g = torch.Generator().manual_seed(0)
    cs, ctrl = [], []
    for s in range(100, 104):
        xa = torch.randn(2, 4, 16, 24, generator=g, dtype=torch.float64) * 14.6
        xb = torch.randn(2, 4, 16, 24, generator=g, dtype=torch.float64) * 14.6
        opts = dict(preset="custom", resampling_steps=3, repaint=True)
        a = elastic.sample_elastic(den, xa, sig, seed=s, **opts)
        b = elastic.sample_elastic(den, xb, sig, seed=s + 1, **opts)
        cs.append(corr(a[1], b[0]))                      # sample 1 at seed s vs sample 0 at seed s+1
        alone = elastic.sample_elastic(den, xa[1:2], sig, seed=s, sample_ids=[1], **opts)
        assert torch.equal(alone, a[1:2])                # a sample alone == the same sample in a batch
    assert max(abs(c) for c in cs) < 0.1, cs


def test_split_defaults_work_for_a_plain_k_diffusion_denoiser():
    from nse.samplers import split
    sig = torch.tensor([14.6, 6.0, 2.5, 1.0, 0.3, 0.0], dtype=torch.float64)
    x = torch.randn(2, 16, generator=torch.Generator().manual_seed(0), dtype=torch.float64) * 14.6
    out = split.sample_split(lambda x, s: gaussian_denoiser(x, s), x, sig)       # no probe: iPNDM on D
    ref = split.sample_split(gaussian_denoiser, x, sig, split_term="none")
    assert torch.equal(out, ref) and torch.isfinite(out).all()


@pytest.mark.parametrize("x,model,msg", [
    (torch.full((1, 4), float("nan")), gaussian_denoiser, "x contains NaN or infinite values"),
    (torch.tensor(1.0), gaussian_denoiser, "x must be a tensor with a non-empty batch dimension"),
    (torch.zeros(1, 3, 8, 8), lambda x, s: x[:, :1], r"model returned \(1, 1, 8, 8\) for an input of shape"),
    (torch.zeros(1, 4), "euler", "model must be a denoiser"),
])
def test_split_bad_input_is_named(x, model, msg):
    from nse.samplers import split
    with pytest.raises(ValueError, match=msg):
        split.sample_split(model, x, torch.tensor([2.0, 1.0, 0.0]), split_term="none")


@pytest.mark.parametrize("x,msg", [
    (torch.full((1, 4, 8, 8), float("nan")), "x contains NaN or infinite values"),
    (torch.zeros(1, 4, 8, 8, dtype=torch.long), "x must be a floating-point tensor"),
])
def test_elastic_bad_input_is_named(x, msg):
    from nse.samplers import elastic

    def never(*a):
        raise AssertionError("model called")

    with pytest.raises(ValueError, match=msg):
        elastic.sample_elastic(never, x, torch.tensor([2.0, 1.0, 0.0]), base=8)
