"""Operator-splitting guided sampling (LTSP / STSP) in sigma space, pure torch.

Wizadwongsa & Suwajanakorn, "Accelerating Guided Diffusion Sampling with Splitting Numerical
Methods", ICLR 2023 (arXiv 2301.11558).

A guided denoiser is a smooth base prediction plus a guidance displacement, ``D = D_b + G``, so
the guided probability-flow ODE ``dx/dσ = (x - D)/σ`` is the sum of two fields:

    base field        dx/dσ = (x - D_b(x, σ)) / σ     smooth: Adams–Bashforth of order K
    condition field   dx/dσ = -G(x, σ) / σ            rough, large: Euler only

High-order multistep weights (55/24, -59/24, …) amplify a rough G; splitting keeps G first-order
while the base field keeps its order.  One step from σ_n to σ_{n+1} (h = σ_{n+1} - σ_n < 0):

    LTSP (Lie–Trotter)   x' = x_n - (h/σ_n) G(x_n, σ_n)                  x_{n+1} = x' + AB_K
    STSP (Strang)        x' = x_n - (h/2σ_n) G(x_n, σ_n)    x'' = x' + AB_K
                         x_{n+1} = x'' - (h/2σ_{n+1}) G(x'', σ_{n+1})
    AB_K                 h · Σ_i b_i d_{n-i},   d_j = (x'_j - D_b(x'_j, σ_j)) / σ_j

with the warm-up order ``k = min(K, n + 1)`` (AB1, AB2, … as history accumulates).  ``shared``
evaluation takes D_b and G from one call at x_n: ``x_{n+1} = x_n + AB_K - (h/σ_n) G_n``.  The
unsplit baselines integrate the whole field: ``ddim`` (Euler) and ``plmsK`` (Heun first step, AB_K,
Euler last step).  Where D_b and G come from: :mod:`.protocols`; what the options mean and cost:
:mod:`.options`.
"""
from __future__ import annotations

import math
from typing import Callable, Dict, List, Optional, Sequence, Tuple

import torch

from ..common import CheckedDenoiser, batch_sigma, check_callable, check_sigmas, check_x
from .options import METHODS, SplitConfig, check_steps, validate_split_options

__all__ = ["ab_coefficients", "sample_split", "run_split", "SAMPLERS", "sample_ddim", "sample_plms2",
           "sample_plms4", "sample_ltsp2", "sample_ltsp4", "sample_stsp2", "sample_stsp4"]


# ------------------------------------------------------------------------------------------
# Adams–Bashforth weights
# ------------------------------------------------------------------------------------------
_AB_FIXED = {1: (1.0,), 2: (3 / 2, -1 / 2), 3: (23 / 12, -16 / 12, 5 / 12), 4: (55 / 24, -59 / 24, 37 / 24, -9 / 24)}


def _poly_mul(p: List[float], q: List[float]) -> List[float]:
    out = [0.0] * (len(p) + len(q) - 1)
    for i, a in enumerate(p):
        for j, b in enumerate(q):
            out[i + j] += a * b
    return out


def ab_coefficients(nodes: Sequence[float], sigma_next: float, kind: str = "fixed") -> List[float]:
    """Weights ``c_i`` with ``x_{n+1} = x_n + Σ_i c_i d_{n-i}`` (AB of order ``k = len(nodes)``).

    ``nodes = [σ_n, σ_{n-1}, …]`` (newest first).  ``fixed``: ``c_i = h·b_i^(k)`` (the paper's
    constant weights, exact on a uniform grid).  ``variable``: ``c_i = ∫_{σ_n}^{σ_{n+1}} ℓ_i(τ) dτ``
    with the Lagrange basis ℓ_i on the nodes (k-diffusion's ``linear_multistep_coeff``), computed
    exactly in the variable ``u = (τ - σ_n)/h`` on [0, 1].
    """
    k, s = len(nodes), float(nodes[0])
    h = float(sigma_next) - s
    if kind == "fixed" or k == 1:
        return [h * b for b in _AB_FIXED[k]]
    u = [(float(t) - s) / h for t in nodes]           # u_m = (σ_{n-m} - σ_n)/h: 0, -1, -2, … on a uniform grid
    coeffs = []
    for i in range(k):
        poly = [1.0]                                   # ℓ_i(u) = Π_{m≠i} (u - u_m)/(u_i - u_m), low degree first
        for m in range(k):
            if m != i:
                poly = _poly_mul(poly, [-u[m] / (u[i] - u[m]), 1.0 / (u[i] - u[m])])
        coeffs.append(h * sum(a / (p + 1) for p, a in enumerate(poly)))   # h ∫_0^1 ℓ_i(u) du
    return coeffs


class _History:
    """The K newest derivatives d_j and their sigmas; the AB_k increment over them (k = warm-up order)."""

    def __init__(self, order: int, kind: str):
        self.order, self.kind = order, kind
        self.d: List[torch.Tensor] = []
        self.nodes: List[float] = []

    def push(self, d: torch.Tensor, sigma: float) -> None:
        self.d.append(d)
        self.nodes.append(sigma)
        while len(self.d) > self.order:
            self.d.pop(0)
            self.nodes.pop(0)

    def increment(self, sigma_next: float) -> torch.Tensor:
        k = min(self.order, len(self.d))
        c = ab_coefficients(self.nodes[::-1][:k], sigma_next, self.kind)
        out = self.d[-1] * c[0]
        for i in range(1, k):
            out = out + self.d[-1 - i] * c[i]
        return out


# ------------------------------------------------------------------------------------------
# Field evaluations: the only place that calls the model, the probe and the guidance
# ------------------------------------------------------------------------------------------
class _Fields:
    """Evaluates D_b and G at a point, in the work dtype, per the resolved config."""

    def __init__(self, model, cfg: SplitConfig, extra_args: dict, in_dtype: torch.dtype):
        self.model, self.cfg, self.extra_args, self.in_dtype = model, cfg, extra_args, in_dtype
        self.probe = cfg.split_probe if cfg.split_term == "cfg_delta" else None
        if cfg.split_term == "cfg_delta":
            self.guided = self.probe is not None
        else:
            self.guided = cfg.split_term == "gradient" and cfg.guidance_scale != 0.0
        self.needs_denoised = getattr(cfg.guidance, "needs_denoised", True)

    def _call_model(self, x, sigma: float):
        return self.model(x.to(self.in_dtype), batch_sigma(x, sigma), **self.extra_args).to(x.dtype)

    def _clamp(self, d):
        return d.clamp(-1.0, 1.0) if self.cfg.clamp_denoised else d

    def _probe_base(self, x, denoised):
        return self.probe.base_prediction(denoised.to(self.in_dtype), self.cfg.split_base).to(x.dtype)

    def _guidance(self, x, sigma: float, denoised):
        with torch.inference_mode(False), torch.enable_grad():   # guidance objects may use autograd
            xg = x.detach().clone()
            dg = None if denoised is None else denoised.detach().clone()
            out = self.cfg.guidance(xg, batch_sigma(xg, sigma), dg)
        if not isinstance(out, torch.Tensor) or out.shape != x.shape:
            raise ValueError(f"guidance returned {getattr(out, 'shape', type(out).__name__)}; "
                             f"expected a tensor shaped like x {tuple(x.shape)}")
        return out.detach().to(x.dtype) * self.cfg.guidance_scale

    def full(self, x, sigma: float) -> Tuple[torch.Tensor, Optional[torch.Tensor]]:
        """One evaluation at (x, σ): ``(D_b, G)`` (G is None when there is no guidance term)."""
        if self.cfg.split_term == "gradient":
            db = self._clamp(self._call_model(x, sigma))
            if not self.guided:
                return db, None
            return db, self._guidance(x, sigma, db if self.needs_denoised else None)
        d = self._call_model(x, sigma)
        if not self.guided:
            return self._clamp(d), None
        db = self._probe_base(x, d)
        return self._clamp(db), d - db

    def total(self, x, sigma: float) -> torch.Tensor:
        """D_total = D_b + G at (x, σ) (ddim / plms: no split)."""
        db, g = self.full(x, sigma)
        return db if g is None else db + g

    def base(self, x, sigma: float) -> torch.Tensor:
        """D_b at (x, σ); a base-only call where the probe offers one (sequential mode)."""
        if self.probe is None:
            return self._clamp(self._call_model(x, sigma))
        predict_base = getattr(self.probe, "predict_base", None)
        if callable(predict_base):
            out = predict_base(x.to(self.in_dtype), batch_sigma(x, sigma), self.cfg.split_base, **self.extra_args)
            return self._clamp(out.to(x.dtype))
        return self._clamp(self._probe_base(x, self._call_model(x, sigma)))

    def guide(self, x, sigma: float) -> torch.Tensor:
        """G at (x, σ) for a condition sub-step (sequential mode)."""
        if self.cfg.split_term == "gradient":
            db = self._clamp(self._call_model(x, sigma)) if self.needs_denoised else None
            return self._guidance(x, sigma, db)
        d = self._call_model(x, sigma)
        return d - self._probe_base(x, d)


# ------------------------------------------------------------------------------------------
# The integrators
# ------------------------------------------------------------------------------------------
def _stsp_end_coeff(h: float, s: float, s_next: float, kind: str) -> float:
    """Coefficient c of the Strang end half step ``x -= c·G(x'', σ_{n+1})``.

    clean: ``h/(2σ_{n+1})``.  faithful (the official code, EPS/VP models):
    ``(h/2)·σ_h·sqrt((1+σ_{n+1}²)/(1+σ_h²))/σ_{n+1}²`` with the midpoint ``σ_h = (σ_n + σ_{n+1})/2``.
    """
    if kind == "clean":
        return h / (2 * s_next)
    sh = (s + s_next) / 2
    return (h / 2) * sh * math.sqrt((1 + s_next ** 2) / (1 + sh ** 2)) / s_next ** 2


def _integrate_split(f: _Fields, x, sig: List[float], cfg: SplitConfig, emit):
    """LTSP / STSP: Euler on G, AB_K on D_b; ``sequential`` or ``shared`` evaluation."""
    strang, shared = cfg.family == "stsp", cfg.eval_mode == "shared"
    hist = _History(cfg.order, cfg.ab_coeffs)
    for n in range(len(sig) - 1):
        s, s_next = sig[n], sig[n + 1]
        h = s_next - s
        x_n = x
        if shared:                                      # one call at x_n gives D_b and G
            db, g = f.full(x, s)
        else:
            g = None
            if f.guided:                                # condition sub-step: full (LT) or half (Strang)
                g = f.guide(x, s)
                x = x - ((h / 2 if strang else h) / s) * g
            db = f.base(x, s)                           # base field at the post-condition point x'
        hist.push((x - db) / s, s)
        if s_next == 0 and cfg.final_step == "denoised":
            x = db if (g is None or not shared) else db + g
        else:
            x = x + hist.increment(s_next)
            if shared and g is not None:
                x = x - (h / s) * g                     # additive Lie–Trotter: Euler on -G/σ from x_n
        if strang and not shared and f.guided and s_next > 0:   # Strang end half step at (x'', σ_{n+1})
            x = x - _stsp_end_coeff(h, s, s_next, cfg.stsp_end_half) * f.guide(x, s_next)
        emit(n, x_n, s, db if (g is None or not shared) else db + g)
    return x


def _integrate_full(f: _Fields, x, sig: List[float], cfg: SplitConfig, emit):
    """ddim (K = 1) and the official plmsK on the full field D_total, no split.

    First step: pseudo improved Euler (Heun in σ) when ``plms_start='heun'`` and K > 1; then AB_k
    with k = min(K, history); last step to σ = 0: ``D_total`` (Euler) with ``final_step='denoised'``.
    """
    hist = _History(cfg.order, cfg.ab_coeffs)
    for n in range(len(sig) - 1):
        s, s_next = sig[n], sig[n + 1]
        h = s_next - s
        d_total = f.total(x, s)
        d = (x - d_total) / s
        hist.push(d, s)                                 # after a Heun start the history holds d(x_0) only
        if n == 0 and cfg.order > 1 and cfg.plms_start == "heun" and s_next > 0:
            x_pred = x + h * d
            d2 = (x_pred - f.total(x_pred, s_next)) / s_next
            x_new = x + h * (d + d2) / 2
        elif s_next == 0 and cfg.final_step == "denoised":
            x_new = d_total
        else:
            x_new = x + hist.increment(s_next)
        emit(n, x, s, d_total)
        x = x_new
    return x


# ------------------------------------------------------------------------------------------
# Entry points (k-diffusion contract)
# ------------------------------------------------------------------------------------------
def sample_split(model, x, sigmas, extra_args=None, callback=None, disable=None, method: str = METHODS[0],
                 **options):
    """Operator-splitting guided sampler, k-diffusion contract.

    ``model(x, sigma_batch, **extra_args) -> D_total`` (the final guided x0).  ``method``: one of
    :data:`~.options.METHODS` (also ltspK/stspK/plmsK, K = 1..4).  ``options`` (defaults in
    :data:`~.options.DEFAULTS`):

    * ``split_term``: ``cfg_delta`` (G = D_total - D_b from the split probe), ``gradient``
      (G = guidance_scale · guidance(x, σ, D_b), D_b = model output), ``none`` (G ≡ 0: ltsp/stsp
      become iPNDM-K, plms the official PLMS, ddim Euler).
    * ``split_base`` (cfg_delta): ``cond`` or ``uncond``.
    * ``eval_mode``: ``shared`` (one call at x_n), ``sequential`` (each sub-step evaluates at its
      own point, as the paper), ``auto`` (shared for ltsp + cfg_delta, else sequential).  stsp +
      shared warns and runs ltsp shared.
    * ``ab_coeffs``: ``fixed`` | ``variable``;  ``final_step``: ``auto`` | ``ab`` | ``denoised``;
      ``stsp_end_half``: ``clean`` | ``faithful``;  ``plms_start``: ``heun`` | ``euler``;
      ``guidance`` (GUIDANCE object), ``guidance_scale`` (>= 0), ``clamp_denoised`` (bool),
      ``split_probe`` (defaults to ``model`` when it has ``base_prediction``).

    All options are checked before any model work (ValueError); then :func:`run_split`.
    """
    config = validate_split_options(method, model=model, **options)
    return run_split(model, x, sigmas, config, extra_args=extra_args, callback=callback)


@torch.no_grad()
def run_split(model, x, sigmas, config: SplitConfig, extra_args=None, callback=None):
    """Sample with an already validated :class:`~.options.SplitConfig` (see :func:`sample_split`).

    Arithmetic is fp32 (fp64 for fp64 input); the model sees x in the input dtype and the result is
    returned in it.  The multistep history starts afresh on every call.  Callback per step:
    ``{'x', 'i', 'sigma', 'sigma_hat', 'denoised'}`` with x the state at the start of step i and
    denoised the x0 estimate of that step.
    """
    check_callable("model", model, "a denoiser model(x, sigma, **extra_args) -> x0")
    check_x(x)
    sig = check_sigmas(sigmas)
    check_steps(config.method, len(sig) - 1)
    model = CheckedDenoiser(model)
    extra_args = {} if extra_args is None else extra_args
    in_dtype = x.dtype
    work = torch.float64 if in_dtype == torch.float64 else torch.float32
    fields = _Fields(model, config, extra_args, in_dtype)

    def emit(i, x_i, s, denoised):
        if callback is not None:
            callback({"x": x_i.to(in_dtype), "i": i, "sigma": sigmas[i], "sigma_hat": sigmas[i],
                      "denoised": denoised.to(in_dtype)})

    integrate = _integrate_split if config.splits else _integrate_full
    return integrate(fields, x.to(work), sig, config, emit).to(in_dtype)


def _make_sampler(name: str):
    def sampler(model, x, sigmas, extra_args=None, callback=None, disable=None, **options):
        return sample_split(model, x, sigmas, extra_args=extra_args, callback=callback, disable=disable,
                            method=name, **options)

    sampler.__name__ = f"sample_{name}"
    sampler.__qualname__ = sampler.__name__
    sampler.__doc__ = f"``sample_split`` with ``method='{name}'`` (k-diffusion contract)."
    return sampler


sample_ddim = _make_sampler("ddim")
sample_plms2 = _make_sampler("plms2")
sample_plms4 = _make_sampler("plms4")
sample_ltsp2 = _make_sampler("ltsp2")
sample_ltsp4 = _make_sampler("ltsp4")
sample_stsp2 = _make_sampler("stsp2")
sample_stsp4 = _make_sampler("stsp4")

#: method name -> k-diffusion sampler function.
SAMPLERS: Dict[str, Callable] = {m: globals()[f"sample_{m}"] for m in METHODS}
