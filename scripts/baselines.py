"""Baselines for the learned-model demo and benchmark (scripts side; not part of the pack).

Solvers, k-diffusion contract ``f(model, x, sigmas, extra_args=None, callback=None, disable=None)``
with ``model(x, sigma_batch, **extra_args) -> x0`` and ``x = x0 + sigma * eps``:

* :func:`sample_euler` — Euler in sigma space.  DDIM (eta 0) is the same update written in VP
  variables, so it is the same sampler here (one row "euler = DDIM").
* :func:`sample_dpmpp_2m` — DPM-Solver++(2M) (Lu et al. 2022), multistep on the x0 estimates in
  lambda = -log sigma, variable step; the last step to sigma = 0 returns the x0 estimate.
* :func:`sample_ipndm` — iPNDM, order 4 (Zhang & Chen 2023): Adams-Bashforth 1..4 on
  d = (x - x0) / sigma with the constant weights, ComfyUI's form (last step to 0: the x0 estimate).
* :func:`sample_uni_pc` — UniPC with B(h) = e^h - 1 ("bh2"; Zhao et al. 2023), order 2, data
  prediction, variable step: predictor UniP-2 (= DPM-Solver++(2M)) and corrector UniC-2 (an
  Adams-Moulton-like update with the new x0 estimate).  The corrector reuses the evaluation at the
  new point, which the next step needs anyway, so it costs no extra evaluation; the last step has
  no corrector; a last step to sigma = 0 returns the x0 estimate.

Every solver makes exactly ``len(sigmas) - 1`` model calls.  :class:`PassCounter` counts network
passes (a CFG call on B pictures is 2B passes), and :func:`sample_multidiffusion` is the
MultiDiffusion-style patch baseline for sizes other than the training size.
"""
from __future__ import annotations

import math
from typing import List, Sequence

import torch

from _pack import load_pack

nse = load_pack()
from nse.samplers.common import batch_sigma, sample_euler  # noqa: E402

__all__ = ["sample_euler", "sample_dpmpp_2m", "sample_ipndm", "sample_uni_pc", "SOLVERS", "PassCounter",
           "cfg_model", "window_starts", "multidiffusion_model", "sample_multidiffusion", "counts_of"]


def _emit(callback, i, x, sigma, denoised):
    if callback is not None:
        callback({"x": x, "i": i, "sigma": sigma, "sigma_hat": sigma, "denoised": denoised})


@torch.no_grad()
def sample_dpmpp_2m(model, x, sigmas, extra_args=None, callback=None, disable=None):
    """DPM-Solver++(2M): x' = (s'/s) x + (1 - s'/s) D, D = x0 + (x0 - x0_prev) / (2 r), r = h_prev / h."""
    extra_args = {} if extra_args is None else extra_args
    old = None
    for i in range(len(sigmas) - 1):
        s, s_next = float(sigmas[i]), float(sigmas[i + 1])
        d = model(x, batch_sigma(x, sigmas[i]), **extra_args)
        _emit(callback, i, x, sigmas[i], d)
        if s_next == 0:
            x = d
        else:
            h = math.log(s / s_next)
            dd = d
            if old is not None:
                r = math.log(float(sigmas[i - 1]) / s) / h
                dd = d + (d - old) / (2 * r)
            x = (s_next / s) * x + (1 - s_next / s) * dd
        old = d
    return x


_AB = {1: (1.0,), 2: (3 / 2, -1 / 2), 3: (23 / 12, -16 / 12, 5 / 12), 4: (55 / 24, -59 / 24, 37 / 24, -9 / 24)}


@torch.no_grad()
def sample_ipndm(model, x, sigmas, extra_args=None, callback=None, disable=None, max_order: int = 4):
    """iPNDM: x' = x + (s' - s) sum_k b_k d_{n-k}, order min(max_order, n + 1); last step to 0: x0."""
    extra_args = {} if extra_args is None else extra_args
    hist: List[torch.Tensor] = []
    for i in range(len(sigmas) - 1):
        s, s_next = sigmas[i], sigmas[i + 1]
        d0 = model(x, batch_sigma(x, s), **extra_args)
        _emit(callback, i, x, s, d0)
        hist = ([(x - d0) / s] + hist)[:max_order]
        if float(s_next) == 0:
            x = d0
        else:
            x = x + (s_next - s) * sum(b * d for b, d in zip(_AB[len(hist)], hist))
    return x


def _unic_weights(h: float, r1):
    """UniC corrector weights (rho_prev, rho_new) for B(h) = e^h - 1 (data prediction, hh = -h).

    Order 1 (no history, ``r1`` None): (0, 1/2).  Order 2: solve [[1, 1], [r1, 1]] rho = b with
    b_1 = phi_1 / B, b_2 = 2 phi_2 / B, phi_1 = (e^hh - 1)/hh - 1, phi_2 = phi_1/hh - 1/2."""
    if r1 is None:
        return 0.0, 0.5
    hh = -h
    bh = math.expm1(hh)
    phi1 = math.expm1(hh) / hh - 1
    phi2 = phi1 / hh - 0.5
    b1, b2 = phi1 / bh, 2 * phi2 / bh
    rho_prev = (b1 - b2) / (1 - r1)
    return rho_prev, b1 - rho_prev


@torch.no_grad()
def sample_uni_pc(model, x, sigmas, extra_args=None, callback=None, disable=None):
    """UniPC-2 (bh2), data prediction in lambda = -log sigma; see the module docstring."""
    extra_args = {} if extra_args is None else extra_args
    n = len(sigmas) - 1
    m = model(x, batch_sigma(x, sigmas[0]), **extra_args)
    _emit(callback, 0, x, sigmas[0], m)
    hist = [(-math.log(float(sigmas[0])), m)]            # (lambda, x0 estimate), newest last
    for i in range(n):
        s, s_next = float(sigmas[i]), float(sigmas[i + 1])
        if s_next == 0:
            return hist[-1][1]                              # last step to 0: the x0 estimate
        lam0, m0 = hist[-1]
        h = -math.log(s_next) - lam0
        bh = math.expm1(-h)                                 # B(h) for hh = -h (negative)
        base = (s_next / s) * x + (1 - s_next / s) * m0     # first-order (DDIM) part
        r1 = d1 = None
        if len(hist) > 1:
            r1 = (hist[-2][0] - lam0) / h
            d1 = (hist[-2][1] - m0) / r1
        x_pred = base if d1 is None else base - bh * 0.5 * d1   # UniP-2 predictor
        if i == n - 1:
            return x_pred                                   # no corrector on the last step
        m_new = model(x_pred, batch_sigma(x, sigmas[i + 1]), **extra_args)
        _emit(callback, i + 1, x_pred, sigmas[i + 1], m_new)
        rho_prev, rho_new = _unic_weights(h, r1)
        corr = rho_new * (m_new - m0) + (0.0 if d1 is None else rho_prev * d1)
        x = base - bh * corr                                # UniC corrector (the evaluation is reused)
        hist = [hist[-1], (-math.log(s_next), m_new)]
    return x


SOLVERS = {"euler": sample_euler, "dpmpp_2m": sample_dpmpp_2m, "ipndm": sample_ipndm, "uni_pc": sample_uni_pc}


class PassCounter:
    """A demo ``Denoiser`` that counts network passes.

    ``passes`` counts evaluated pictures in units of the training size (a picture of twice the area
    counts 2; a CFG call on B pictures counts 2B).  ``branch`` mirrors ``Denoiser.branch``, so
    ``demo.cfg_denoiser(PassCounter(den), ...)`` is counted too.  ``per_picture(n)`` = passes / n.
    """

    def __init__(self, den, base: int = 32):
        self.den, self.base, self.passes = den, base, 0.0
        self.model_sampling, self.null_class = den.model_sampling, den.null_class

    def __call__(self, x, sigma, cond=None, uncond=None, cfg: float = 1.0, **extra):
        area = x.shape[-2] * x.shape[-1] / self.base ** 2
        self.passes += x.shape[0] * area * (1 if float(cfg) == 1.0 else 2)
        return self.den(x, sigma, cond=cond, uncond=uncond, cfg=cfg, **extra)

    def branch(self, labels=None):
        def f(x, sigma, **extra):
            return self(x, sigma, cond=labels, cfg=1.0)
        return f

    def per_picture(self, n: int) -> float:
        return self.passes / n


def cfg_model(den, labels, cfg: float):
    """k-diffusion model ``f(x, sigma, **_) -> x0`` with CFG (null class as the negative)."""
    def f(x, sigma, **extra):
        return den(x, sigma, cond=labels, cfg=cfg)
    return f


def window_starts(length: int, size: int = 32, stride: int = 16) -> List[int]:
    """Start offsets of ``size`` windows covering ``length`` with at most ``stride`` between starts."""
    if length <= size:
        return [0]
    k = -(-(length - size) // stride) + 1
    return [round(i * (length - size) / (k - 1)) for i in range(k)]


def multidiffusion_model(den, labels, cfg: float, size: int = 32, stride: int = 16):
    """MultiDiffusion-style x0 (Bar-Tal et al. 2023): every overlapping ``size`` window is denoised
    at the training size (CFG, each window with its picture's label) and the windows are averaged
    per pixel.  All windows of a step go through the network in one batch."""
    labels = torch.as_tensor(labels).long().reshape(-1)

    def f(x, sigma, **extra):
        B, _, H, W = x.shape
        wins = [(t, l) for t in window_starts(H, size, stride) for l in window_starts(W, size, stride)]
        h, w = min(size, H), min(size, W)
        crops = torch.cat([x[:, :, t:t + h, l:l + w] for t, l in wins])
        lab = labels.expand(B) if labels.numel() == 1 else labels
        out = den(crops, torch.as_tensor(sigma).reshape(-1)[:1].expand(len(crops)), cond=lab.repeat(len(wins)),
                  cfg=cfg)
        acc, cnt = torch.zeros_like(x), x.new_zeros(1, 1, H, W)
        for k, (t, l) in enumerate(wins):
            acc[:, :, t:t + h, l:l + w] += out[k * B:(k + 1) * B]
            cnt[:, :, t:t + h, l:l + w] += 1
        return acc / cnt
    return f


def sample_multidiffusion(den, x, sigmas, labels, cfg: float, size: int = 32, stride: int = 16):
    """Euler over ``sigmas`` with :func:`multidiffusion_model` (``x`` already scaled to sigmas[0])."""
    return sample_euler(multidiffusion_model(den, labels, cfg, size, stride), x, sigmas)


def counts_of(values: Sequence[int]) -> str:
    """'3x1 1x2' style summary of object counts."""
    out = {}
    for v in values:
        out[int(v)] = out.get(int(v), 0) + 1
    return " ".join(f"{n}x{k}" for k, n in sorted(out.items()))
