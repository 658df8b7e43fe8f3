"""Pure tests of the operator-splitting guided sampler (samplers/split/).

Identities P1–P8 in float64, the convergence orders, the analytic solution at unit
guidance, the rough-guidance acceptance criterion, cost counters, the k-diffusion contract
and the validation errors.  No ComfyUI import: ComfyUI v0.8.0 reference samplers are transcribed
below from comfy/k_diffusion/sampling.py.
"""
import math
import warnings

import numpy as np
import pytest
import torch

from nse.samplers import split as S
from nse.samplers.common import karras_sigmas, sample_euler
from nse.samplers.worlds.guided import CFGDenoiser, GuidedDenoiser, GuidedMixtureProblem, LinearBetaSchedule
from nse.samplers.worlds.metrics import moment_w2, rmse, sliced_w2
from nse.samplers.worlds.mixture import GaussianMixture, spec_mixture_16d

F64 = torch.float64


@pytest.fixture(autouse=True, scope="module")
def _one_thread():
    """Tiny tensors: intra-op threading only adds sync overhead (10x on 2-core CI)."""
    old = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(old)


# ------------------------------------------------------------------------------------------
# References transcribed from ComfyUI v0.8.0 comfy/k_diffusion/sampling.py
# ------------------------------------------------------------------------------------------

def ref_ipndm(model, x, sigmas, max_order=4):
    """ComfyUI ``sample_ipndm`` (sampling.py:1082-1120)."""
    s_in = x.new_ones([x.shape[0]])
    x_next = x
    buffer_model = []
    for i in range(len(sigmas) - 1):
        t_cur, t_next = sigmas[i], sigmas[i + 1]
        x_cur = x_next
        denoised = model(x_cur, t_cur * s_in)
        d_cur = (x_cur - denoised) / t_cur
        order = min(max_order, i + 1)
        if t_next == 0:
            x_next = denoised
        elif order == 1:
            x_next = x_cur + (t_next - t_cur) * d_cur
        elif order == 2:
            x_next = x_cur + (t_next - t_cur) * (3 * d_cur - buffer_model[-1]) / 2
        elif order == 3:
            x_next = x_cur + (t_next - t_cur) * (23 * d_cur - 16 * buffer_model[-1] + 5 * buffer_model[-2]) / 12
        elif order == 4:
            x_next = x_cur + (t_next - t_cur) * (55 * d_cur - 59 * buffer_model[-1] + 37 * buffer_model[-2]
                                                 - 9 * buffer_model[-3]) / 24
        if len(buffer_model) == max_order - 1:
            for k in range(max_order - 2):
                buffer_model[k] = buffer_model[k + 1]
            buffer_model[-1] = d_cur
        else:
            buffer_model.append(d_cur)
    return x_next


def ref_ipndm_v2(model, x, sigmas):
    """ComfyUI ``sample_ipndm_v`` with max_order=2 (sampling.py:1125-1156, orders 1 and 2)."""
    s_in = x.new_ones([x.shape[0]])
    x_next, buffer_model = x, []
    for i in range(len(sigmas) - 1):
        t_cur, t_next = sigmas[i], sigmas[i + 1]
        x_cur = x_next
        denoised = model(x_cur, t_cur * s_in)
        d_cur = (x_cur - denoised) / t_cur
        order = min(2, i + 1)
        if t_next == 0:
            x_next = denoised
        elif order == 1:
            x_next = x_cur + (t_next - t_cur) * d_cur
        else:
            h_n, h_n_1 = t_next - t_cur, t_cur - sigmas[i - 1]
            coeff1, coeff2 = (2 + (h_n / h_n_1)) / 2, -(h_n / h_n_1) / 2
            x_next = x_cur + (t_next - t_cur) * (coeff1 * d_cur + coeff2 * buffer_model[-1])
        if len(buffer_model) == 1:
            buffer_model[-1] = d_cur
        else:
            buffer_model.append(d_cur)
    return x_next


def lms_coeff(order, t, i, j):
    """k-diffusion ``linear_multistep_coeff`` with Gauss–Legendre quadrature instead of scipy.quad."""
    nodes, weights = np.polynomial.legendre.leggauss(8)
    a, b = t[i], t[i + 1]
    taus = (b - a) / 2 * nodes + (a + b) / 2
    vals = np.ones_like(taus)
    for k in range(order):
        if k != j:
            vals *= (taus - t[i - k]) / (t[i - j] - t[i - k])
    return float((b - a) / 2 * (weights * vals).sum())


def ref_lms(model, x, sigmas, order=4):
    """ComfyUI ``sample_lms`` (sampling.py:414-435)."""
    s_in = x.new_ones([x.shape[0]])
    t = sigmas.numpy()
    ds = []
    for i in range(len(sigmas) - 1):
        denoised = model(x, sigmas[i] * s_in)
        ds.append((x - denoised) / sigmas[i])
        if len(ds) > order:
            ds.pop(0)
        if sigmas[i + 1] == 0:
            x = denoised
        else:
            cur_order = min(i + 1, order)
            coeffs = [lms_coeff(cur_order, t, i, j) for j in range(cur_order)]
            x = x + sum(c * d for c, d in zip(coeffs, reversed(ds)))
    return x


# ------------------------------------------------------------------------------------------
# Fixtures: a 16-D class-conditional mixture, traced denoisers
# ------------------------------------------------------------------------------------------

MIX = spec_mixture_16d()
COND = GaussianMixture(MIX.means[1:2], torch.ones(1, dtype=F64), MIX.stds[1:2])
SIGMAS = karras_sigmas(12, 0.03, 14.6)                       # non-uniform, ends in 0
X0 = torch.randn(6, 16, generator=torch.Generator().manual_seed(0), dtype=F64) * 14.6


class Traced:
    """k-diffusion denoiser that records every (sigma, x) it is called with."""

    def __init__(self, fn):
        self.fn, self.trace = fn, []

    def __call__(self, x, sigma, **extra_args):
        self.trace.append((float(sigma.reshape(-1)[0]), x.clone()))
        return self.fn(x, sigma)


def d_uncond(x, sigma):
    return MIX.denoise(x, sigma)


def d_cond(x, sigma):
    return COND.denoise(x, sigma)


class DeltaGuidance(S.Guidance):
    """G = D_c - D_u (the implicit classifier of CFG); no D_b needed."""

    needs_denoised = False

    def __init__(self):
        self.calls = 0

    def __call__(self, x, sigma, denoised):
        self.calls += 1
        return d_cond(x, sigma) - d_uncond(x, sigma)


class ZeroGuidance(S.Guidance):
    def __init__(self):
        self.calls = 0

    def __call__(self, x, sigma, denoised):
        assert denoised is not None and denoised.shape == x.shape
        self.calls += 1
        return torch.zeros_like(x)


def close(a, b, rtol=1e-6):
    err = float((a - b).abs().max() / b.abs().max())
    assert err < rtol, f"relative error {err:.3g} >= {rtol}"


def rel(a, b):
    return float((a - b).abs().max() / b.abs().max())


# ------------------------------------------------------------------------------------------
# P1: zero guidance = iPNDM-K (ComfyUI ipndm with final_step='denoised')
# ------------------------------------------------------------------------------------------

@pytest.mark.parametrize("K", [2, 4])
def test_p1_zero_guidance_equals_comfy_ipndm(K):
    ref = ref_ipndm(d_cond, X0, SIGMAS, max_order=K)
    runs = {
        "none-ltsp": S.sample_split(d_cond, X0, SIGMAS, method=f"ltsp{K}", split_term="none", final_step="denoised"),
        "none-stsp": S.sample_split(d_cond, X0, SIGMAS, method=f"stsp{K}", split_term="none", final_step="denoised"),
    }
    for fam in ("ltsp", "stsp"):                       # real (zero) guidance terms: cfg = 1 with base = cond
        for mode in ("sequential", "shared") if fam == "ltsp" else ("sequential",):
            m = CFGDenoiser(d_cond, d_uncond, cfg=1.0)
            runs[f"cfg1-{fam}-{mode}"] = S.sample_split(m, X0, SIGMAS, method=f"{fam}{K}", split_term="cfg_delta",
                                                        split_base="cond", eval_mode=mode, final_step="denoised")
            assert m.uncond_passes == 0
        g = ZeroGuidance()
        runs[f"zero-grad-{fam}"] = S.sample_split(d_cond, X0, SIGMAS, method=f"{fam}{K}", split_term="gradient",
                                                  guidance=g, final_step="denoised")
        assert g.calls > 0
    for name, out in runs.items():
        assert out.dtype == F64
        assert rel(out, ref) < 1e-12, name


@pytest.mark.parametrize("method", ["ltsp4", "stsp4", "ltsp2"])
def test_p1_final_ab_differs_only_in_last_step(method):
    a, b = Traced(d_cond), Traced(d_cond)
    ref = ref_ipndm(a, X0, SIGMAS, max_order=int(method[-1]))
    out = S.sample_split(b, X0, SIGMAS, method=method, split_term="none", final_step="ab")
    assert len(a.trace) == len(b.trace) == len(SIGMAS) - 1
    for (sa, xa), (sb, xb) in zip(a.trace, b.trace):     # every model input is identical ...
        assert sa == sb and rel(xb, xa) < 1e-12
    assert rel(out, ref) > 1e-6                         # ... only the last update differs (AB vs denoised)
    assert rel(out, ref) < 5e-2
    # default final_step for ltsp/stsp is the paper's 'ab'
    assert torch.equal(S.sample_split(d_cond, X0, SIGMAS, method=method, split_term="none"), out)


def test_p1_variable_coefficients_equal_comfy_ipndm_v_and_lms():
    out2 = S.sample_split(d_cond, X0, SIGMAS, method="ltsp2", split_term="none", ab_coeffs="variable",
                          final_step="denoised")
    close(out2, ref_ipndm_v2(d_cond, X0, SIGMAS), 1e-12)
    for K in (3, 4):
        out = S.sample_split(d_cond, X0, SIGMAS, method=f"stsp{K}", split_term="none", ab_coeffs="variable",
                             final_step="denoised")
        close(out, ref_lms(d_cond, X0, SIGMAS, order=K), 1e-10)
        # fixed coefficients are a different method on a non-uniform grid
        assert rel(S.sample_split(d_cond, X0, SIGMAS, method=f"stsp{K}", split_term="none",
                                  final_step="denoised"), out) > 1e-6


def test_ab_coefficients():
    # variable = fixed on a uniform grid
    for k in range(1, 5):
        nodes = [4.0 + 0.5 * i for i in range(k)]
        assert np.allclose(S.ab_coefficients(nodes, 3.5, "variable"), S.ab_coefficients(nodes, 3.5, "fixed"),
                           rtol=1e-13, atol=0)
    # variable weights integrate polynomials of degree < k exactly on a non-uniform grid
    nodes, nxt = [2.0, 2.7, 3.9, 5.5], 1.2
    c = S.ab_coefficients(nodes, nxt, "variable")
    for p in range(4):
        assert math.isclose(sum(ci * t ** p for ci, t in zip(c, nodes)), (nxt ** (p + 1) - 2.0 ** (p + 1)) / (p + 1),
                            rel_tol=1e-12)
    assert S.ab_coefficients([3.0, 4.0], 2.0, "fixed") == [-1.5, 0.5]


# ------------------------------------------------------------------------------------------
# P2: CFG-split identities
# ------------------------------------------------------------------------------------------

@pytest.mark.parametrize("method,mode", [("ltsp4", "sequential"), ("stsp4", "sequential"), ("ltsp4", "shared"),
                                         ("stsp2", "sequential")])
def test_p2_cfg_split_identities(method, mode):
    w = 3.0
    # base = uncond at scale w  ==  classifier guidance at scale w on D_u
    cfg_u = S.sample_split(CFGDenoiser(d_cond, d_uncond, w), X0, SIGMAS, method=method, split_term="cfg_delta",
                           split_base="uncond", eval_mode=mode)
    cls_u = S.sample_split(d_uncond, X0, SIGMAS, method=method, split_term="gradient", guidance=DeltaGuidance(),
                           guidance_scale=w, eval_mode=mode)
    close(cfg_u, cls_u, 1e-9)
    # base = cond at CFG w  ==  classifier guidance at scale w - 1 on D_c
    cfg_c = S.sample_split(CFGDenoiser(d_cond, d_uncond, w), X0, SIGMAS, method=method, split_term="cfg_delta",
                           split_base="cond", eval_mode=mode)
    cls_c = S.sample_split(d_cond, X0, SIGMAS, method=method, split_term="gradient", guidance=DeltaGuidance(),
                           guidance_scale=w - 1, eval_mode=mode)
    close(cfg_c, cls_c, 1e-9)
    assert rel(cfg_c, cfg_u) > 1e-4                     # the two bases are different splittings


# ------------------------------------------------------------------------------------------
# P3 / P4: shared order 1 = Euler = ddim; official plms = iPNDM up to start and end
# ------------------------------------------------------------------------------------------

def test_p3_shared_order1_equals_euler_and_ddim():
    w = 4.0
    euler = sample_euler(CFGDenoiser(d_cond, d_uncond, w), X0, SIGMAS)
    shared = S.sample_split(CFGDenoiser(d_cond, d_uncond, w), X0, SIGMAS, method="ltsp1", eval_mode="shared")
    ddim = S.sample_split(CFGDenoiser(d_cond, d_uncond, w), X0, SIGMAS, method="ddim")
    ddim_grad = S.sample_split(d_cond, X0, SIGMAS, method="ddim", split_term="gradient", guidance=DeltaGuidance(),
                               guidance_scale=w - 1)
    for out in (shared, ddim, ddim_grad):
        close(out, euler, 1e-9)
    assert rel(S.sample_split(CFGDenoiser(d_cond, d_uncond, w), X0, SIGMAS, method="ltsp2"), euler) > 1e-4


@pytest.mark.parametrize("K", [2, 4])
def test_p4_plms_is_ipndm_except_heun_start_and_euler_end(K):
    model = CFGDenoiser(d_cond, d_uncond, 2.5)
    ipndm = ref_ipndm(model, X0, SIGMAS, max_order=K)
    plms_euler = S.sample_split(model, X0, SIGMAS, method=f"plms{K}", plms_start="euler")
    close(plms_euler, ipndm, 1e-12)
    # with the Heun start: the second model call is at the Euler predictor x_0 + h·d_0, at σ_1
    t = Traced(model)
    plms = S.sample_split(t, X0, SIGMAS, method=f"plms{K}")
    s0, s1 = float(SIGMAS[0]), float(SIGMAS[1])
    d0 = (X0 - model(X0, torch.full((6,), s0, dtype=F64))) / s0
    assert t.trace[1][0] == s1 and rel(t.trace[1][1], X0 + (s1 - s0) * d0) < 1e-12
    assert len(t.trace) == len(SIGMAS)                  # N + 1 evaluations
    assert rel(plms, ipndm) > 1e-6


# ------------------------------------------------------------------------------------------
# P5: condition updates are linear in the scale
# ------------------------------------------------------------------------------------------

@pytest.mark.parametrize("method", ["ddim", "plms4", "ltsp4", "stsp4", "stsp2"])
def test_p5_condition_update_linear_in_scale(method):
    g0 = torch.linspace(-1, 1, 16, dtype=F64)
    const = lambda x, sigma, denoised: g0.expand_as(x).clone()   # noqa: E731  constant displacement
    def run(s):
        return S.sample_split(lambda x, sig: x, X0, SIGMAS, method=method, split_term="gradient",   # base field 0
                              guidance=const, guidance_scale=s)
    x0, x1, x2 = run(0.0), run(1.0), run(2.5)
    close(x0, X0, 1e-14)
    close(x2 - x0, 2.5 * (x1 - x0), 1e-12)
    assert rel(x1, x0) > 1e-3


# ------------------------------------------------------------------------------------------
# P6: cost counters
# ------------------------------------------------------------------------------------------

N_STEPS = len(SIGMAS) - 1


@pytest.mark.parametrize("method,mode,exp_calls,exp_base", [
    ("ddim", "auto", N_STEPS, 0),
    ("plms4", "auto", N_STEPS + 1, 0),
    ("plms2", "auto", N_STEPS + 1, 0),
    ("ltsp4", "shared", N_STEPS, 0),
    ("ltsp4", "sequential", N_STEPS, N_STEPS),
    ("stsp4", "sequential", 2 * N_STEPS - 1, N_STEPS),
])
def test_p6_cfg_call_counts(method, mode, exp_calls, exp_base):
    m = CFGDenoiser(d_cond, d_uncond, 3.0)
    S.sample_split(m, X0, SIGMAS, method=method, eval_mode=mode)
    assert (m.calls, m.base_calls) == (exp_calls, exp_base)
    assert m.cond_passes == exp_calls + exp_base and m.uncond_passes == exp_calls     # base = cond
    assert (S.nfe_per_run(method, N_STEPS, eval_mode=mode, split_probe=m, base_only=True)
            == {"model": exp_calls, "base": exp_base, "guidance": 0})
    # without a base-only call (stock guider) sequential mode uses full calls instead
    m2 = CFGDenoiser(d_cond, d_uncond, 3.0, base_only_calls=False)
    S.sample_split(m2, X0, SIGMAS, method=method, eval_mode=mode)
    assert m2.calls == exp_calls + exp_base and m2.base_calls == 0


def test_p6_auto_eval_mode_costs_and_cfg1_skips_uncond():
    # auto with a base-only call: the paper's sequential mode, one CFG call + one cond pass a step
    m = CFGDenoiser(d_cond, d_uncond, 5.0)
    S.sample_split(m, X0, SIGMAS, method="ltsp4")                  # defaults: cfg_delta, cond, auto
    assert (m.cond_passes, m.uncond_passes, m.base_calls) == (2 * N_STEPS, N_STEPS, N_STEPS)
    # auto without one (a stock CFG guider): shared, the cost of any CFG sampler (2 passes a step)
    m0 = CFGDenoiser(d_cond, d_uncond, 5.0, base_only_calls=False)
    assert S.validate_split_options("ltsp4", split_probe=m0).eval_mode == "shared"
    assert S.validate_split_options("stsp4", split_probe=m0).eval_mode == "sequential"   # Strang needs its own
    S.sample_split(m0, X0, SIGMAS, method="ltsp4")
    assert m0.cond_passes + m0.uncond_passes == 2 * N_STEPS and m0.calls == N_STEPS
    same = S.sample_split(CFGDenoiser(d_cond, d_uncond, 5.0), X0, SIGMAS, method="ltsp4", eval_mode="sequential")
    assert torch.equal(S.sample_split(CFGDenoiser(d_cond, d_uncond, 5.0), X0, SIGMAS, method="ltsp4"), same)
    m1 = CFGDenoiser(d_cond, d_uncond, 1.0)
    S.sample_split(m1, X0, SIGMAS, method="ltsp4", eval_mode="sequential")
    assert m1.uncond_passes == 0


@pytest.mark.parametrize("method,mode,needs,exp_model,exp_guid", [
    ("ddim", "auto", False, N_STEPS, N_STEPS),
    ("plms4", "auto", False, N_STEPS + 1, N_STEPS + 1),
    ("ltsp4", "auto", False, N_STEPS, N_STEPS),              # paper: N UNet + N classifier
    ("stsp4", "auto", False, N_STEPS, 2 * N_STEPS - 1),      # paper: N + 2N (last half step skipped)
    ("ltsp2", "shared", False, N_STEPS, N_STEPS),
    ("ltsp4", "sequential", True, 2 * N_STEPS, N_STEPS),
    ("stsp4", "sequential", True, 3 * N_STEPS - 1, 2 * N_STEPS - 1),
])
def test_p6_gradient_call_counts(method, mode, needs, exp_model, exp_guid):
    t = Traced(d_uncond)
    g = DeltaGuidance()
    g.needs_denoised = needs
    S.sample_split(t, X0, SIGMAS, method=method, eval_mode=mode, split_term="gradient", guidance=g, guidance_scale=2.0)
    assert (len(t.trace), g.calls) == (exp_model, exp_guid)
    assert (S.nfe_per_run(method, N_STEPS, eval_mode=mode, split_term="gradient", guidance=g)
            == {"model": exp_model, "base": 0, "guidance": exp_guid})


def test_sigmas_not_ending_in_zero():
    sig = SIGMAS[:-2]                                    # ends at a positive sigma
    g = DeltaGuidance()
    out = S.sample_split(d_uncond, X0, sig, method="stsp4", split_term="gradient", guidance=g, guidance_scale=2.0)
    assert g.calls == 2 * (len(sig) - 1)                 # the end half step is applied on every step
    a = S.sample_split(d_cond, X0, sig, method="ltsp4", split_term="none", final_step="ab")
    b = S.sample_split(d_cond, X0, sig, method="ltsp4", split_term="none", final_step="denoised")
    assert torch.equal(a, b) and torch.isfinite(out).all()
    assert (S.nfe_per_run("stsp4", len(sig) - 1, ends_in_zero=False, split_term="gradient", guidance=g)["guidance"]
            == 2 * (len(sig) - 1))


# ------------------------------------------------------------------------------------------
# P7: official VP-form formulas = sigma-form sampler
# ------------------------------------------------------------------------------------------

_A = torch.tensor([[0.8, -0.3, 0.2], [0.1, 0.5, -0.7], [0.4, 0.2, 0.9]], dtype=F64)


def vp_eps(xt, sigma):
    """Dummy ε-model on the VP state x_t (sigma plays the role of t)."""
    return torch.tanh(xt @ _A) * 0.7 + 0.2 * xt * sigma / (1 + sigma)


def vp_cond_fn(xt, sigma):
    """Dummy classifier gradient ∇_{x_t} log p times the scale (what cond_fn returns)."""
    return 0.6 * torch.sin(xt @ _A.T + sigma) - 0.1 * xt


def vp_official(method, K, sig, x_ve, clip, end_half="faithful"):
    """The official ddim / plms / ltsp / stsp loops in VP form: x_t = x/sqrt(1+σ²), ᾱ = 1/(1+σ²)."""
    abar = lambda g: 1.0 / (1.0 + g * g)                                        # noqa: E731

    def eps_clipped(xt, g):
        e = vp_eps(xt, g)
        if clip:   # p_mean_variance clamps x0, ε is re-derived from it
            x0 = ((xt - math.sqrt(1 - abar(g)) * e) / math.sqrt(abar(g))).clamp(-1, 1)
            e = (xt / math.sqrt(abar(g)) - x0) / math.sqrt(1 / abar(g) - 1)
        return e

    def eps_hat(xt, g):   # condition_score
        return eps_clipped(xt, g) - math.sqrt(1 - abar(g)) * vp_cond_fn(xt, g)

    def ddim_step(xt, e, g, gp):   # η = 0 DDIM update
        x0 = (xt - math.sqrt(1 - abar(g)) * e) / math.sqrt(abar(g))
        return math.sqrt(abar(gp)) * x0 + math.sqrt(1 - abar(gp)) * e

    def mix(hist, k):
        b = {1: [1], 2: [3, -1], 3: [23, -16, 5], 4: [55, -59, 37, -9]}[k]
        den = {1: 1, 2: 2, 3: 12, 4: 24}[k]
        return sum(bi * e for bi, e in zip(b, reversed(hist[-k:]))) / den

    xt = x_ve / math.sqrt(1 + sig[0] ** 2)
    hist = []
    for n in range(len(sig) - 1):
        g, gp = sig[n], sig[n + 1]
        s0, s_1, del_g = 1 / math.sqrt(g * g + 1), 1 / math.sqrt(gp * gp + 1), gp - g
        if method == "ddim":
            xt = ddim_step(xt, eps_hat(xt, g), g, gp)
        elif method == "plms":
            e = eps_hat(xt, g)
            if not hist:                       # pseudo improved Euler
                e2 = eps_hat(ddim_step(xt, e, g, gp), gp)
                xt = ddim_step(xt, (e + e2) / 2, g, gp)
                hist = [e]
                continue
            hist.append(e)
            e_prime = mix(hist, min(K, len(hist)))
            if len(hist) >= K:
                hist.pop(0)
            xt = (xt - math.sqrt(1 - abar(g)) * e) / math.sqrt(abar(g)) if gp == 0 else ddim_step(xt, e_prime, g, gp)
        else:
            frac = 1.0 if method == "ltsp" else 0.5
            xt = xt + s0 * (-vp_cond_fn(xt, g) * del_g * frac * math.sqrt(1 - s0 * s0))   # condition_score2
            hist.append(eps_clipped(xt, g))
            e_prime = mix(hist, min(K, len(hist)))
            if len(hist) >= K:
                hist.pop(0)
            xt = (xt / s0 + del_g * e_prime) * s_1
            if method == "stsp" and gp > 0:    # end half step (skipped at σ = 0 by the port: negligible)
                # official: ᾱ at the midpoint σ_h; clean: ᾱ at σ_{n+1} (textbook Strang half step)
                a_half = 1 / ((g + gp) ** 2 / 4 + 1) if end_half == "faithful" else abar(gp)
                xt = xt + s_1 * (-vp_cond_fn(xt, gp) * del_g / 2 * math.sqrt(1 - a_half))
    return xt / math.sqrt(1 + sig[-1] ** 2)


class VPGuidance(S.Guidance):
    """G = σ²·∇_x log p = σ²·s0·cond_fn(x_t) (VE form of the classifier)."""

    needs_denoised = False

    def __call__(self, x, sigma, denoised):
        g = float(sigma[0])
        s0 = 1 / math.sqrt(1 + g * g)
        return g * g * s0 * vp_cond_fn(x * s0, g)


def ve_model(x, sigma):
    g = float(sigma.reshape(-1)[0])
    return x - g * vp_eps(x / math.sqrt(1 + g * g), g)


@pytest.mark.parametrize("clip", [False, True])
@pytest.mark.parametrize("method,K,opts", [
    ("ddim", 1, {}), ("plms", 4, {}), ("plms", 2, {}), ("ltsp", 4, {}), ("ltsp", 2, {}),
    ("stsp", 4, {"stsp_end_half": "faithful"}), ("stsp", 2, {"stsp_end_half": "faithful"}),
    ("stsp", 4, {"stsp_end_half": "clean"}),
])
def test_p7_official_vp_formulas_equal_sigma_form(method, K, opts, clip):
    sig_t = S.split_respace_sigmas(LinearBetaSchedule(), 10, dtype=F64)
    sig = [float(v) for v in sig_t]
    x = torch.randn(5, 3, generator=torch.Generator().manual_seed(3), dtype=F64) * math.sqrt(1 + sig[0] ** 2)
    ref = vp_official(method, K, sig, x, clip, opts.get("stsp_end_half", "faithful"))
    name = "ddim" if method == "ddim" else f"{method}{K}"
    out = S.sample_split(ve_model, x, sig_t, method=name, split_term="gradient", guidance=VPGuidance(),
                         clamp_denoised=clip, **opts)
    close(out, ref, 1e-10)


def test_p7_faithful_and_clean_end_half_differ():
    sig_t = S.split_respace_sigmas(LinearBetaSchedule(), 10, dtype=F64)
    x = torch.randn(5, 3, generator=torch.Generator().manual_seed(3), dtype=F64) * 100
    a, b = (S.sample_split(ve_model, x, sig_t, method="stsp4", split_term="gradient", guidance=VPGuidance(),
                           stsp_end_half=k) for k in ("clean", "faithful"))
    assert rel(a, b) > 1e-6


# ------------------------------------------------------------------------------------------
# P8: respaced grid
# ------------------------------------------------------------------------------------------

def test_p8_respace_paper_grid():
    sched = LinearBetaSchedule()
    assert math.isclose(float(sched.sigmas[-1]), 157.41, rel_tol=2e-5)
    expect = {20: ([157.4, 93.45, 57.60], [0.3595, 0.1857, 0.0100]),
              25: ([157.4, 103.9, 70.45], [0.2846, 0.1502, 0.0100]),
              250: ([], [0.04023, 0.02645, 0.0100])}
    for n, (head, tail) in expect.items():
        sg = S.split_respace_sigmas(sched, n, dtype=F64)
        assert sg.shape == (n + 1,) and sg[-1] == 0
        assert float(sg[0]) == float(sched.sigmas[999]) and float(sg[-2]) == float(sched.sigmas[0])
        assert torch.all(sg[1:] < sg[:-1])
        for got, want in zip(sg[:len(head)].tolist(), head):
            assert math.isclose(got, want, rel_tol=6e-4)
        for got, want in zip(sg[-1 - len(tail):-1].tolist(), tail):
            assert math.isclose(got, want, rel_tol=6e-4)
    taus = S.respaced_timesteps(1000, 25)                # 4·41.625 = 166.5 rounds half-to-even
    assert taus[0] == 0 and taus[-1] == 999 and taus[4] == 166 and taus[12] == 500
    assert S.split_respace_sigmas(sched, 25).dtype == torch.float32


def test_respace_without_sigmas_buffer_and_denoise():
    sched = LinearBetaSchedule()

    class Duck:   # only the model_sampling interface sigma(t) / timestep(σ) / sigma_min / sigma_max
        sigma_min, sigma_max = sched.sigma_min, sched.sigma_max
        sigma, timestep = staticmethod(sched.sigma), staticmethod(sched.timestep)

    a = S.split_respace_sigmas(sched, 25, dtype=F64)
    close(S.split_respace_sigmas(Duck(), 25, dtype=F64), a, 1e-12)
    full = S.split_respace_sigmas(sched, 50, dtype=F64)
    assert torch.equal(S.split_respace_sigmas(sched, 25, denoise=0.5, dtype=F64), full[-26:])
    with pytest.raises(ValueError, match="steps must be an integer >= 2"):
        S.respaced_timesteps(1000, 1)
    with pytest.raises(ValueError, match=r"denoise must be a finite number in \(0, 1\] \(got 0.0\)"):
        S.split_respace_sigmas(sched, 25, denoise=0.0)


# ------------------------------------------------------------------------------------------
# convergence orders (uniform σ grid 5 → 0, mixture with every s_k = 0.5, 400 samples)
# ------------------------------------------------------------------------------------------

SMOOTH = GuidedMixtureProblem(stds=(0.5, 0.5, 0.5))
X_ORD = SMOOTH.initial(400, 5.0, seed=1)
_REFS = {}


def smooth_ref(scale):
    if scale not in _REFS:
        _REFS[scale] = SMOOTH.reference(X_ORD, 5.0, scale, steps=1500, rho=1.0)
    return _REFS[scale]


def observed_order(method, scale, **opts):
    errs = []
    for n in (128, 256):
        sig = torch.linspace(5.0, 0.0, n + 1, dtype=F64)
        if scale == 0:
            out = S.sample_split(SMOOTH.denoise_uncond, X_ORD, sig, method=method, split_term="none", **opts)
        elif opts.pop("cfg", False):                     # CFG at w = scale on base uncond = classifier at scale
            m = CFGDenoiser(SMOOTH.denoise_cond, SMOOTH.denoise_uncond, scale)
            out = S.sample_split(m, X_ORD, sig, method=method, split_base="uncond", **opts)
            opts["cfg"] = True
        else:
            out = S.sample_split(SMOOTH.denoise_uncond, X_ORD, sig, method=method, split_term="gradient",
                                 guidance=SMOOTH.guidance(rough=False), guidance_scale=scale, **opts)
        errs.append(rmse(out, smooth_ref(scale)))
    return math.log2(errs[0] / errs[1])


@pytest.mark.parametrize("scale,method,opts,table", [
    (0.0, "ltsp4", {}, 3.95), (0.0, "stsp4", {}, 3.95), (0.0, "ltsp4", {"eval_mode": "shared"}, 3.95),
    (0.0, "plms4", {}, 1.98), (0.0, "plms4", {"final_step": "ab"}, 3.94), (0.0, "ddim", {}, 0.99),
    (0.0, "ltsp2", {}, 2.0), (0.0, "ltsp4", {"final_step": "denoised"}, 1.98),
    (2.0, "plms4", {"final_step": "ab"}, 3.8), (2.0, "stsp4", {}, 0.99), (2.0, "ltsp4", {}, 1.0),
    (2.0, "ltsp4", {"eval_mode": "shared", "cfg": True}, 1.0), (2.0, "ddim", {}, 1.0),
    (2.0, "stsp4", {"stsp_end_half": "faithful"}, 1.0),
])
def test_convergence_orders(scale, method, opts, table):
    assert abs(observed_order(method, scale, **opts) - table) <= 0.15


def test_reference_solver_matches_analytic_solution():
    close(SMOOTH.reference(X_ORD, 5.0, 1.0, steps=1500, rho=1.0), SMOOTH.analytic_unit(X_ORD, 5.0), 1e-9)


# ------------------------------------------------------------------------------------------
# unit guidance: every method converges to the analytic solution (paper grid)
# ------------------------------------------------------------------------------------------

@pytest.mark.parametrize("method,opts", [
    ("ddim", {}), ("plms2", {}), ("plms4", {}), ("ltsp2", {}), ("ltsp4", {}), ("stsp2", {}), ("stsp4", {}),
    ("stsp4", {"stsp_end_half": "faithful"}), ("ltsp4", {"eval_mode": "shared"}), ("ltsp4", {"ab_coeffs": "variable"}),
])
def test_unit_guidance_converges_to_analytic_solution(method, opts):
    prob = GuidedMixtureProblem()
    sched = LinearBetaSchedule()
    smax = float(sched.sigmas[-1])
    x = prob.initial(200, smax, seed=3)
    exact = prob.analytic_unit(x, smax)
    close(prob.reference(x, smax, 1.0, steps=600), exact, 1e-7)
    errs = []
    for n in (25, 100, 250):
        out = S.sample_split(prob.denoise_uncond, x, S.split_respace_sigmas(sched, n, dtype=F64), method=method,
                             split_term="gradient", guidance=prob.guidance(rough=False), guidance_scale=1.0, **opts)
        errs.append(rmse(out, exact))
    assert errs[0] > errs[1] > errs[2]
    assert errs[2] < 0.01 and errs[2] < errs[0] / 5


# ------------------------------------------------------------------------------------------
# rough-guidance acceptance (κ = 0.25, Ω = 20, s = 2, paper grid, 1000 samples)
# ------------------------------------------------------------------------------------------

def test_rough_guidance_split_beats_ddim_and_plms():
    prob = GuidedMixtureProblem(kappa=0.25, omega=20.0, seed=0)
    sched = LinearBetaSchedule()
    smax = float(sched.sigmas[-1])
    x = prob.initial(1000, smax, seed=0)
    clean = prob.reference(x, smax, 2.0, rough=False, steps=600)
    for n in (16, 25, 32):
        sig = S.split_respace_sigmas(sched, n, dtype=F64)
        w2, sw2 = {}, {}
        for m in ("ddim", "plms4", "ltsp4", "stsp4"):
            out = S.sample_split(prob.denoise_uncond, x, sig, method=m, split_term="gradient",
                                 guidance=prob.guidance(rough=True), guidance_scale=2.0)
            w2[m], sw2[m] = moment_w2(out, clean), sliced_w2(out, clean)
        for m in ("ltsp4", "stsp4"):
            for dist in (w2, sw2):
                assert dist[m] < 1.5 * dist["ddim"], (n, m, dist)
                assert dist[m] < 0.3 * dist["plms4"], (n, m, dist)


# ------------------------------------------------------------------------------------------
# k-diffusion contract: callback, dtypes, batch, no hidden state, autograd guidance
# ------------------------------------------------------------------------------------------

def test_callback_contract():
    seen = []
    m = CFGDenoiser(d_cond, d_uncond, 2.0)
    S.sample_split(m, X0, SIGMAS, method="stsp4", eval_mode="sequential", callback=seen.append)
    assert [c["i"] for c in seen] == list(range(N_STEPS))
    assert all(set(c) == {"x", "i", "sigma", "sigma_hat", "denoised"} for c in seen)
    assert all(float(c["sigma"]) == float(c["sigma_hat"]) == float(SIGMAS[c["i"]]) for c in seen)
    assert torch.equal(seen[0]["x"], X0) and seen[0]["denoised"].shape == X0.shape
    assert rel(seen[-1]["denoised"], seen[-2]["denoised"]) < 0.1      # converging x0 estimates


def test_low_precision_input_is_computed_in_fp32():
    x32 = X0.to(torch.float32)
    sig = SIGMAS.to(torch.float32)
    dtypes = []

    def model(x, sigma):
        dtypes.append(x.dtype)
        return MIX.denoise(x, sigma)                    # returns x's dtype

    ref = S.sample_split(model, x32, sig, method="ltsp4", split_term="none")
    for dt in (torch.float16, torch.bfloat16):
        dtypes.clear()
        out = S.sample_split(model, x32.to(dt), sig, method="ltsp4", split_term="none")
        assert out.dtype == dt and set(dtypes) == {dt}
        # the state is kept in fp32: the error is that of rounding inputs, not of an fp16 accumulation
        assert rel(out.to(torch.float32), ref) < (2e-2 if dt == torch.bfloat16 else 3e-3)
        # the guidance sees the fp32 work state, the model the input dtype
        seen = []
        S.sample_split(model, x32.to(dt), sig, method="stsp2", split_term="gradient",
                       guidance=lambda x, s, d: seen.append((x.dtype, s.dtype, d.dtype)) or torch.zeros_like(x))
        assert set(seen) == {(torch.float32, torch.float32, torch.float32)} and set(dtypes) == {dt}


def test_batch_independence_and_no_hidden_state():
    m = CFGDenoiser(d_cond, d_uncond, 3.0)
    full = S.sample_split(m, X0, SIGMAS, method="stsp4", eval_mode="sequential")
    one = S.sample_split(m, X0[2:3], SIGMAS, method="stsp4", eval_mode="sequential")
    close(one, full[2:3], 1e-12)
    tail = SIGMAS[5:]
    fresh = S.sample_split(m, X0, tail, method="ltsp4")
    S.sample_split(m, X0, SIGMAS[:6], method="ltsp4")        # a call on the head ...
    assert torch.equal(S.sample_split(m, X0, tail, method="ltsp4"), fresh)   # ... leaves no history behind


def test_autograd_guidance_inside_inference_mode():
    prob = GuidedMixtureProblem(kappa=0.25)

    class AutogradClassifier:
        needs_denoised = False

        def __call__(self, x, sigma, denoised):        # σ² ∇_x log p(c|x,σ) by autograd (+ rough term)
            x = x.requires_grad_()
            s = sigma[:, None]
            v = prob.stds[None] ** 2 + s ** 2
            logn = -0.5 * ((x[:, None] - prob.means[None]) ** 2).sum(-1) / v - v.log()   # d = 2
            logp = logn[:, 0] + prob.weights.log()[0] - torch.logsumexp(logn + prob.weights.log()[None], 1)
            grad, = torch.autograd.grad(logp.sum(), x)
            return s ** 2 * (grad + prob.rough_term(x.detach(), s))

    x = prob.initial(64, 80.0, seed=2)
    sig = karras_sigmas(20, 0.01, 80.0)
    with torch.inference_mode():
        a = S.sample_split(prob.denoise_uncond, x, sig, method="stsp4", split_term="gradient",
                           guidance=AutogradClassifier(), guidance_scale=2.0)
    b = S.sample_split(prob.denoise_uncond, x, sig, method="stsp4", split_term="gradient",
                       guidance=prob.guidance(rough=True), guidance_scale=2.0)
    close(a, b, 1e-7)


def test_stsp_shared_warns_and_runs_ltsp_shared():
    m = CFGDenoiser(d_cond, d_uncond, 3.0)
    with pytest.warns(UserWarning, match="not defined for Strang"):
        a = S.sample_split(m, X0, SIGMAS, method="stsp4", eval_mode="shared")
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        b = S.sample_split(m, X0, SIGMAS, method="ltsp4", eval_mode="shared")
        assert S.validate_split_options("stsp4", split_probe=m).eval_mode == "sequential"   # auto
    assert torch.equal(a, b)


def test_probe_protocol_record():
    """The host's post-CFG hook (nodes/split_probe.py, tested in tests/host) feeds ``record``."""
    p = S.SplitProbe()
    with pytest.raises(RuntimeError, match="no model call was recorded"):
        p.base_prediction(X0, "cond")
    c, d = torch.ones(2, 3), torch.full((2, 3), 4.0)
    p.record(d, c, None)
    assert p.base_prediction(d, "cond") is c
    with pytest.raises(RuntimeError, match="recorded no uncond_denoised"):
        p.base_prediction(d, "uncond")
    # GuidedDenoiser: a probe-driven split of an arbitrary guidance term = the gradient path
    gd = GuidedDenoiser(d_cond, lambda x, s, db: 2.0 * (db - d_uncond(x, s)))
    a = S.sample_split(gd, X0, SIGMAS, method="stsp4", eval_mode="sequential")
    b = S.sample_split(d_cond, X0, SIGMAS, method="stsp4", split_term="gradient", guidance=DeltaGuidance(),
                       guidance_scale=2.0)
    close(a, b, 1e-9)


# ------------------------------------------------------------------------------------------
# Validation errors (before any model work)
# ------------------------------------------------------------------------------------------

class NeverCalled:
    def __call__(self, *a, **k):
        raise AssertionError("model called before validation")


@pytest.mark.parametrize("kwargs,pattern", [
    ({"method": "stps4"}, r"method must be one of 'ltsp4', 'ltsp2', 'stsp4'.*\(got 'stps4'\)"),
    ({"method": "ddim2"}, r"method must be one of .*\(got 'ddim2'\)"),
    ({"method": "ltsp5"}, r"method must be one of .*\(got 'ltsp5'\)"),
    ({"method": "ltsp4", "split_term": "cfg"}, r"split_term must be one of 'cfg_delta', 'gradient', 'none' \(got 'cfg'\)"),
    ({"method": "ltsp4", "eval_mode": "lazy", "split_term": "none"}, r"eval_mode must be one of 'auto'.*\(got 'lazy'\)"),
    ({"method": "ltsp4", "ab_coeffs": "adaptive", "split_term": "none"}, r"ab_coeffs must be one of 'fixed', 'variable' \(got 'adaptive'\)"),
    ({"method": "ltsp4", "final_step": "euler", "split_term": "none"}, r"final_step must be one of 'auto', 'ab', 'denoised' \(got 'euler'\)"),
    ({"method": "stsp4", "stsp_end_half": "x", "split_term": "none"}, r"stsp_end_half must be one of 'clean', 'faithful' \(got 'x'\)"),
    ({"method": "plms4", "plms_start": "rk4", "split_term": "none"}, r"plms_start must be one of 'heun', 'euler' \(got 'rk4'\)"),
    ({"method": "ltsp4", "split_base": "neg", "split_term": "none"}, r"split_base must be one of 'cond', 'uncond' \(got 'neg'\)"),
    ({"method": "ltsp4", "bogus": 1, "split_term": "none"}, r"unknown split-sampler option\(s\) 'bogus'; allowed:"),
    ({"method": "ltsp4", "split_term": "gradient"}, r"split_term='gradient' needs a guidance object"),
    ({"method": "ltsp4", "split_term": "gradient", "guidance": 3.0},
     r"guidance must be a GUIDANCE object: a callable guidance\(x, sigma, denoised\).*got float"),
    ({"method": "ltsp4", "split_term": "gradient", "guidance": torch.zeros(3)}, r"guidance must be a GUIDANCE object.*Tensor"),
    ({"method": "ltsp4", "split_term": "none", "guidance": ZeroGuidance()}, r"guidance is only used with split_term='gradient'"),
    ({"method": "ltsp4", "split_term": "gradient", "guidance": ZeroGuidance(), "guidance_scale": -1.0},
     r"guidance_scale must be a finite number >= 0 \(got -1.0\)"),
    ({"method": "ltsp4", "split_term": "none", "guidance_scale": float("nan")}, r"guidance_scale must be a finite number"),
    ({"method": "ltsp4", "split_term": "cfg_delta"}, r"split_term='cfg_delta' with method 'ltsp4' needs a split_probe"),
    ({"method": "ltsp4", "split_term": "none", "split_probe": object()}, r"split_probe must provide base_prediction"),
    ({"method": "ltsp4", "split_term": "none", "clamp_denoised": 1}, r"clamp_denoised must be True or False \(got 1\)"),
])
def test_bad_options_raise_before_model_work(kwargs, pattern):
    with pytest.raises(ValueError, match=pattern):
        S.sample_split(NeverCalled(), X0, SIGMAS, **kwargs)
    opts = {k: v for k, v in kwargs.items() if k != "method"}
    with pytest.raises(ValueError, match=pattern):
        S.validate_split_options(kwargs["method"], N_STEPS, **opts)


@pytest.mark.parametrize("steps", [1, 2, 3])
@pytest.mark.parametrize("method", S.METHODS)
def test_every_method_runs_any_step_count(method, steps):
    """Short schedules (a split tail, a refiner pass, denoise < 1) run with the lower-order warm-up."""
    sig = SIGMAS[-steps - 1:]
    for kw in ({"split_term": "none"}, {"split_term": "cfg_delta"}):
        model = d_uncond if kw["split_term"] == "none" else CFGDenoiser(d_cond, d_uncond, 5.0)
        out = S.sample_split(model, X0 * float(sig[0]) / 14.6, sig, method=method, **kw)
        assert out.shape == X0.shape and torch.isfinite(out).all()
    family, order = S.parse_method(method)
    if family in ("ltsp", "stsp") and steps < order:       # only the warm-up orders 1..steps ever run
        lower = S.sample_split(CFGDenoiser(d_cond, d_uncond, 5.0), X0, sig, method=f"{family}{steps}")
        same = S.sample_split(CFGDenoiser(d_cond, d_uncond, 5.0), X0, sig, method=method)
        assert torch.equal(lower, same)
    assert S.min_steps(method) == (order + 1 if family == "plms" else order)
    with pytest.raises(ValueError, match=r"steps must be an integer >= 1 \(got 0\)"):
        S.validate_split_options(method, 0, split_term="none")


def test_other_input_errors():
    with pytest.raises(ValueError, match=r"cfg must be a finite number >= 0 \(got -2.0\)"):
        S.validate_split_options("ltsp4", 10, cfg=-2.0, split_term="none")
    with pytest.raises(ValueError, match="sigmas must be strictly decreasing"):
        S.sample_split(NeverCalled(), X0, SIGMAS[:-1].flip(0), method="ddim", split_term="none")
    with pytest.raises(ValueError, match="only the last value may be 0"):
        S.sample_split(NeverCalled(), X0, torch.tensor([2.0, 0.0, 0.0]), method="ddim", split_term="none")
    with pytest.raises(ValueError, match="guidance returned"):
        S.sample_split(d_uncond, X0, SIGMAS, method="ltsp4", split_term="gradient",
                       guidance=lambda x, s, d: torch.zeros(3))
    bad = ZeroGuidance()
    bad.needs_denoised = "yes"
    with pytest.raises(ValueError, match="needs_denoised must be a bool"):
        S.validate_guidance(bad)
