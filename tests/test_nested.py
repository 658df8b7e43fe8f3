"""Pure tests of samplers/nested.py with analytic denoisers."""
import math

import pytest
import torch

from nse.samplers import nested
from nse.samplers.common import (DiscreteSchedule, FlowSchedule, make_noise_sampler, sample_euler,
                                 sample_euler_ancestral)
from nse.samplers.worlds.mixture import ToyDenoiser, ToyWorld, frechet_distance, spec_mixture_16d

import official_nested_replica as official

MS = DiscreteSchedule()


def gmm_model(mix=None):
    return ToyDenoiser(mix or spec_mixture_16d())


def start(n=64, dim=16, seed=0, sigma=None):
    g = torch.Generator().manual_seed(seed)
    s = float(MS.sigma_max) if sigma is None else sigma
    return torch.randn(n, dim, generator=g, dtype=torch.float64) * math.sqrt(1 + s ** 2)


# ------------------------------------------------------------------------------------------
# schedules
# ------------------------------------------------------------------------------------------
@pytest.mark.parametrize("kind", ["official", "official_dpm", "normal", "karras", "exponential"])
@pytest.mark.parametrize("s_start", [14.6146, 3.1, 0.2018])
def test_inner_sigmas_start_exactly_at_outer_sigma(kind, s_start):
    sig = nested.build_inner_sigmas(MS, s_start, 6, kind)
    assert float(sig[0]) == s_start
    assert float(sig[-1]) == 0.0
    assert bool(torch.all(sig[:-1] > sig[1:]))


def test_generic_retarget_of_any_full_schedule():
    full = torch.cat([MS.sigmas.flip(0)[::100], torch.zeros(1)])          # some sigma_max..0 schedule
    sig = nested.build_inner_sigmas(MS, 2.5, 5, lambda ms, s, k: nested.retarget_sigmas(ms, full, s))
    assert float(sig[0]) == 2.5 and float(sig[-1]) == 0.0
    assert bool(torch.all(sig[:-1] > sig[1:]))


def test_official_trace_25x4():
    """The official inner sigma lists for (N=25, K=4)."""
    outer = nested.official_outer_sigmas(MS, 25)
    first = nested.build_inner_sigmas(MS, float(outer[0]), 4, "official", end="sigma_min")
    last = nested.build_inner_sigmas(MS, float(outer[24]), 4, "official", end="sigma_min")
    assert first.tolist() == pytest.approx([14.6146, 2.9183, 0.9355, 0.0413, 0.0292], abs=1e-4)
    assert last.tolist() == pytest.approx([0.2018, 0.1642, 0.1155, 0.0413, 0.0292], abs=1e-4)
    assert nested.official_outer_sigmas(MS, 5)[:5].tolist() == pytest.approx(
        [14.6146, 5.0878, 2.2846, 1.1644, 0.5741], abs=1e-4)


# ------------------------------------------------------------------------------------------
# exact properties
# ------------------------------------------------------------------------------------------
def test_outer_one_equals_plain_inner_sampling():
    model = gmm_model()
    x = start()
    sigmas = torch.tensor([float(MS.sigma_max), 0.0], dtype=torch.float64)
    previews = []
    out = nested.sample_nested(model, x, sigmas, extra_args={"seed": 7}, model_sampling=MS, inner_steps=10,
                               collect=previews)
    inner = nested.build_inner_sigmas(MS, float(MS.sigma_max), 10, "official")
    ref = sample_euler_ancestral(gmm_model(), x, inner, extra_args={"seed": 7}, eta=0.85,
                                 noise_sampler=make_noise_sampler(x, 7, "nested-inner-0"))
    assert torch.equal(out, ref)
    assert len(previews) == 1 and torch.equal(previews[0], out)


@pytest.mark.parametrize("outer_eta", [0.0, 0.5, 1.0])
def test_inner_one_equals_ancestral_euler_over_outer_sigmas(outer_eta):
    x = start()
    sigmas = nested.official_outer_sigmas(MS, 12)
    out = nested.sample_nested(gmm_model(), x, sigmas, model_sampling=MS, inner_steps=1, outer_eta=outer_eta,
                               outer_noise_sampler=make_noise_sampler(x, 3))
    if outer_eta == 0:
        ref = sample_euler(gmm_model(), x, sigmas)
    else:
        ref = sample_euler_ancestral(gmm_model(), x, sigmas, eta=outer_eta, noise_sampler=make_noise_sampler(x, 3))
    assert torch.allclose(out, ref, atol=1e-12, rtol=0)


@pytest.mark.parametrize("n,k", [(25, 4), (5, 20), (10, 10), (3, 7)])
def test_nfe_and_sigma_trace(n, k):
    model = gmm_model()
    x = start(8)
    sigmas = nested.official_outer_sigmas(MS, n)
    states = []
    nested.sample_nested(model, x, sigmas, extra_args={"seed": 1}, model_sampling=MS, inner_steps=k,
                         callback=lambda d: states.append(d["x"].clone()))
    assert model.nfe == n * k
    for i in range(n):                    # inner process i starts at (outer state, sigma_i)
        s, xi = model.trace[i * k]
        assert s == pytest.approx(float(sigmas[i]), rel=1e-12)
        assert torch.equal(xi, states[i])


def test_nfe_is_capped_like_official_when_k_exceeds_timesteps():
    model = gmm_model()
    sig = nested.build_inner_sigmas(MS, float(MS.sigma(41)), 50, "official")
    assert len(sig) - 1 == 41
    nested.sample_nested(model, start(4, sigma=float(sig[0])), torch.tensor([float(sig[0]), 0.0]),
                         model_sampling=MS, inner_steps=50)
    assert model.nfe == 41


# ------------------------------------------------------------------------------------------
# official parity: float64 toy denoiser, injected noise
# ------------------------------------------------------------------------------------------
class NoiseTape:
    def __init__(self, shape, n=4000, seed=123):
        g = torch.Generator().manual_seed(seed)
        self.items = [torch.randn(shape, generator=g, dtype=torch.float64) for _ in range(n)]
        self.pos = 0

    def __iter__(self):
        return self

    def __next__(self):
        self.pos += 1
        return self.items[self.pos - 1]

    def sampler(self):
        return lambda *a: next(self)


@pytest.mark.parametrize("n,k,ein,eout,dpm", [
    (25, 4, 0.85, 0.0, False), (5, 20, 0.85, 0.5, False), (10, 10, 0.0, 1.0, False),
    (5, 4, 0.0, 0.0, True), (5, 5, 0.0, 0.0, True), (8, 7, 0.0, 0.3, True)])
def test_official_parity(n, k, ein, eout, dpm):
    mix = spec_mixture_16d()
    ac = [float(v) for v in MS.alphas_cumprod]
    z = torch.randn(16, 16, generator=torch.Generator().manual_seed(5), dtype=torch.float64)
    tape = NoiseTape(z.shape)
    prev_off, final_off = official.official_nested(official.eps_from_denoiser(mix.denoise, MS.sigmas, ac), z,
                                                   n, k, ein, eout, ac, iter(tape), dpm=dpm)
    tape2 = NoiseTape(z.shape)
    x = z * math.sqrt(1 + float(MS.sigma_max) ** 2)
    outer = nested.official_outer_sigmas(MS, n)
    outer_split = outer.clone()
    outer_split[-1] = MS.sigma(1)                     # chaining mode: end at t=1 instead of 0
    previews = []
    kw = dict(model_sampling=MS, inner_steps=k, inner_end="sigma_min", outer_eta=eout,
              outer_noise_sampler=tape2.sampler(), collect=previews)
    if dpm:
        kw.update(inner_sampler=nested.sample_dpm_2s_grid, inner_scheduler="official_dpm")
    else:
        kw.update(inner_eta=ein, inner_noise_sampler_factory=lambda i, xx: tape2.sampler())
    out = nested.sample_nested(ToyDenoiser(mix), x, outer_split, **kw)
    assert len(previews) == n
    for p, q in zip(previews, prev_off):
        assert (p - q).abs().max().item() <= 1e-5
    a1 = ac[1]
    assert (out * math.sqrt(a1) - final_off).abs().max().item() <= 1e-5


# ------------------------------------------------------------------------------------------
# output contract, determinism, noise streams
# ------------------------------------------------------------------------------------------
def test_output_contract_and_chaining():
    x = start(8)
    sigmas = nested.official_outer_sigmas(MS, 6)
    previews = []
    out = nested.sample_nested(gmm_model(), x, sigmas, extra_args={"seed": 3}, model_sampling=MS, collect=previews)
    assert len(previews) == 6 and torch.equal(out, previews[-1])
    # ending at sigma > 0: x after the last outer update, consistent with the last estimate
    previews2 = []
    part = nested.sample_nested(gmm_model(), x, sigmas[:-1], extra_args={"seed": 3}, model_sampling=MS,
                                collect=previews2)
    assert len(previews2) == 5
    for a, b in zip(previews, previews2):
        assert torch.equal(a, b)
    # the state after the last outer update (re-projection of the last estimate to sigmas[5]), not the estimate
    assert torch.isfinite(part).all() and not torch.equal(part, previews2[-1])


def test_determinism_and_distinct_noise_streams():
    x = start(8)
    sigmas = nested.official_outer_sigmas(MS, 5)
    run = lambda seed: nested.sample_nested(gmm_model(), x, sigmas, extra_args={"seed": seed}, model_sampling=MS)
    assert torch.equal(run(11), run(11))
    assert not torch.allclose(run(11), run(12))
    det = lambda seed: nested.sample_nested(gmm_model(), x, sigmas, extra_args={"seed": seed}, model_sampling=MS, outer_eta=0.0,
                                            inner_eta=0.0)
    assert torch.equal(det(1), det(99))               # eta 0 everywhere: a function of the initial noise only

    first_draws = []

    def recording_inner(model, xx, sig, extra_args=None, callback=None, disable=None, **kw):
        ns = make_noise_sampler(xx, extra_args["seed"])
        draws = []
        rec = lambda *a: draws.append(ns()) or draws[-1]
        out = sample_euler_ancestral(model, xx, sig, extra_args=extra_args, noise_sampler=rec, **kw)
        first_draws.append(draws[0])
        return out

    nested.sample_nested(gmm_model(), x, sigmas, extra_args={"seed": 4}, model_sampling=MS,
                         inner_sampler=recording_inner, inner_options={"eta": 0.85})
    assert len(first_draws) == 5
    for i in range(5):
        for j in range(i + 1, 5):
            assert not torch.allclose(first_draws[i], first_draws[j])


def test_should_stop_returns_latest_estimate():
    x = start(8)
    previews = []
    out = nested.sample_nested(gmm_model(), x, nested.official_outer_sigmas(MS, 8), extra_args={"seed": 2},
                               model_sampling=MS, collect=previews, should_stop=lambda i: i == 2)
    assert len(previews) == 3 and torch.equal(out, previews[-1])


def test_outer_index_switch_is_bit_identical_before_the_switch():
    mix_a, mix_b = ToyWorld().mixtures[0], ToyWorld().mixtures[1]

    class SwitchModel:
        def __init__(self, at):
            self.at = at

        def __call__(self, x, sigma, model_options=None, **kw):
            i = (model_options or {}).get("nested_outer_index", 0)
            mix = mix_b if (self.at is not None and i >= self.at) else mix_a
            return mix.denoise(x, sigma)

    x = start(4, dim=192).reshape(4, 3, 8, 8)
    sig = nested.official_outer_sigmas(MS, 6)
    pa, pb = [], []
    nested.sample_nested(SwitchModel(None), x, sig, extra_args={"seed": 1, "model_options": {}}, model_sampling=MS,
                         collect=pa)
    nested.sample_nested(SwitchModel(3), x, sig, extra_args={"seed": 1, "model_options": {}}, model_sampling=MS,
                         collect=pb)
    for i in range(3):
        assert torch.equal(pa[i], pb[i])
    for i in range(3, 6):
        assert not torch.allclose(pa[i], pb[i])


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_half_precision_state_keeps_fp32_arithmetic(dtype):
    x = start(8).to(dtype)
    for n, k in [(25, 4), (4, 50)]:
        out = nested.sample_nested(gmm_model(), x, nested.official_outer_sigmas(MS, n), extra_args={"seed": 0},
                                   model_sampling=MS, inner_steps=k)
        assert out.dtype == dtype and torch.isfinite(out.float()).all()


def test_rectified_flow_outer_and_inner():
    fs = FlowSchedule(shift=3.0)
    mix = spec_mixture_16d()
    x = torch.randn(2000, 16, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    sig = torch.cat([fs.sigma(torch.linspace(1000, 1, 8, dtype=torch.float64)), torch.zeros(1)])
    out = nested.sample_nested(ToyDenoiser(mix, rf=True), x, sig, extra_args={"seed": 0}, model_sampling=fs,
                               inner_steps=6, inner_scheduler="normal", rf=True)
    ref = mix.sample(20000, torch.Generator().manual_seed(12345))
    # seeds 0..3 give 0.12 .. 0.51; the EPS outer formula on this flow model gives ~25
    assert frechet_distance(out, ref) < 1.0
    eps = nested.sample_nested(ToyDenoiser(mix, rf=True), x, sig, extra_args={"seed": 0}, model_sampling=fs,
                               inner_steps=6, inner_scheduler="normal", rf=False)
    assert frechet_distance(eps, ref) > 10.0


# ------------------------------------------------------------------------------------------
# anytime quality
# ------------------------------------------------------------------------------------------
def test_anytime_quality_vs_plain_ddim_at_equal_nfe():
    mix = spec_mixture_16d()
    ref = mix.sample(20000, torch.Generator().manual_seed(12345))
    x = start(6000, seed=0)
    previews = []
    nested.sample_nested(ToyDenoiser(mix), x, nested.official_outer_sigmas(MS, 10), extra_args={"seed": 0},
                         model_sampling=MS, inner_steps=10, collect=previews)
    vanilla_x0 = []
    vanilla = sample_euler(ToyDenoiser(mix), x, nested.official_outer_sigmas(MS, 100),
                           callback=lambda d: vanilla_x0.append(d["denoised"]))
    fd_first = frechet_distance(previews[0], ref)
    fd_vanilla_10 = frechet_distance(vanilla_x0[9], ref)
    fd_final = frechet_distance(previews[-1], ref)
    fd_vanilla_final = frechet_distance(vanilla, ref)
    assert fd_first * 5 <= fd_vanilla_10, (fd_first, fd_vanilla_10)
    assert fd_final <= 1.5 * fd_vanilla_final, (fd_final, fd_vanilla_final)
    fds = [frechet_distance(p, ref) for p in previews]
    assert all(b <= a + 0.05 for a, b in zip(fds, fds[1:])), fds     # previews improve (up to noise)


# ------------------------------------------------------------------------------------------
# bad input
# ------------------------------------------------------------------------------------------
@pytest.mark.parametrize("kw,msg", [
    ({"inner_steps": 0}, "inner_steps must be an integer >= 1"),
    ({"inner_eta": -0.1}, "inner_eta must be a finite number >= 0"),
    ({"outer_eta": float("nan")}, "outer_eta must be a finite number >= 0"),
    ({"inner_end": "one"}, "inner_end must be"),
    ({"inner_scheduler": "bogus"}, "inner_scheduler must be one of"),
])
def test_bad_options_raise_before_model_work(kw, msg):
    model = gmm_model()
    with pytest.raises(ValueError, match=msg):
        nested.sample_nested(model, start(2), nested.official_outer_sigmas(MS, 3), model_sampling=MS, **kw)
    assert model.nfe == 0


def test_bad_sigmas_raise():
    with pytest.raises(ValueError, match="strictly decreasing"):
        nested.sample_nested(gmm_model(), start(2), torch.tensor([1.0, 2.0, 0.0]), model_sampling=MS)
    with pytest.raises(ValueError, match="at least 2 values"):
        nested.sample_nested(gmm_model(), start(2), torch.tensor([1.0]), model_sampling=MS)


@pytest.mark.parametrize("kind", ["official", "normal", "karras", "exponential"])
def test_flow_inner_schedules_make_exactly_k_steps(kind):
    """Shifted flow schedules: ComfyUI's timestep(sigma) is not the inverse of sigma(t); the inner
    grid must still start at the outer sigma and make K steps."""
    fs = FlowSchedule(shift=3.0)
    for s in (1.0, 0.6, 0.1):
        sig = nested.build_inner_sigmas(fs, s, 4, kind)
        assert len(sig) == 5 and float(sig[0]) == s and float(sig[-1]) == 0.0


def test_continuous_time_schedules_use_fractions_of_the_schedule():
    fs = FlowSchedule(shift=1.15, multiplier=1.0)            # Flux-like: timesteps in [0, 1]
    assert nested.continuous_timesteps(fs) and not nested.continuous_timesteps(MS)
    outer = nested.official_outer_sigmas(fs, 5)
    assert float(outer[0]) == float(fs.sigma_max) and float(outer[-1]) == 0.0 and len(outer) == 6
    assert bool(torch.all(outer[:-1] > outer[1:]))
    for s in outer[:-1].tolist():
        assert torch.equal(nested.build_inner_sigmas(fs, s, 4, "official"), nested.build_inner_sigmas(fs, s, 4, "normal"))


# ------------------------------------------------------------------------------------------
# resume: stop after outer step k, continue from the saved state
# ------------------------------------------------------------------------------------------
@pytest.mark.parametrize("outer_eta,stop_after", [(1.0, 0), (1.0, 3), (0.0, 2), (0.5, 5)])
def test_stop_then_resume_equals_uninterrupted(outer_eta, stop_after):
    x, sig = start(6), nested.official_outer_sigmas(MS, 7)
    run = lambda **kw: nested.sample_nested(gmm_model(), x, sig, extra_args={"seed": 11}, model_sampling=MS,
                                            inner_steps=3, outer_eta=outer_eta, **kw)
    full_previews, full_state = [], {}
    full = run(collect=full_previews, state=full_state)
    state, first = {}, []
    stopped = run(should_stop=lambda i: i == stop_after, state=state, collect=first)
    assert state["step"] == stop_after + 1 and torch.equal(stopped, full_previews[stop_after])
    rest = []
    resumed = nested.sample_nested(gmm_model(), state["x"], sig, extra_args={"seed": 11}, model_sampling=MS,
                                   inner_steps=3, outer_eta=outer_eta, start_step=state["step"], collect=rest)
    assert torch.equal(resumed, full)                       # bit for bit
    assert all(torch.equal(a, b) for a, b in zip(first + rest, full_previews)) and len(first + rest) == 7
    assert full_state["step"] == 7 and torch.equal(full_state["x"], full)


def test_resume_with_other_seed_differs_and_bad_start_step_is_named():
    x, sig = start(4), nested.official_outer_sigmas(MS, 5)
    state = {}
    nested.sample_nested(gmm_model(), x, sig, extra_args={"seed": 1}, model_sampling=MS, inner_steps=2,
                         should_stop=lambda i: i == 1, state=state)
    a = nested.sample_nested(gmm_model(), state["x"], sig, extra_args={"seed": 1}, model_sampling=MS,
                             inner_steps=2, start_step=2)
    b = nested.sample_nested(gmm_model(), state["x"], sig, extra_args={"seed": 2}, model_sampling=MS,
                             inner_steps=2, start_step=2)
    assert not torch.equal(a, b)
    with pytest.raises(ValueError, match="start_step"):
        nested.sample_nested(gmm_model(), x, sig, model_sampling=MS, start_step=5)
