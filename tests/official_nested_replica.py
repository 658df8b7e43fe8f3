"""Test-only transcription of the official Nested Diffusion SD loop in VP space.

Written from a description of the official algorithm (no code copied): ``NestedScheduler`` timestep tables,
diffusers-style DDIM(eta) steps with epsilon prediction for the inner process, the
``prediction_type='sample'`` DDIM step for the outer process, and the DPM-Solver++(2S) singlestep
"midpoint" inner.  Noise comes from an injected iterator so the port can consume the same draws.
"""
import math

import numpy as np
import torch


def outer_timesteps(n):
    return [int(v) for v in np.linspace(1, 999, n + 1).round()[::-1]]


def inner_timesteps_ddim(k, t):
    n = min(k, t)
    return [int(v) for v in np.linspace(1, t, n).round()[::-1]]


def inner_timesteps_dpm(k, t):
    n = min(k, t)
    return [int(v) for v in np.linspace(0, t, n + 1).round()[::-1][:-1]]


def ddim_step(model_x0, eps, t, prev, x, eta, ac, noise):
    """diffusers DDIMScheduler.step (clip off); eps and x0 given explicitly."""
    a, ap = ac[t], ac[prev]
    var = (1 - ap) / (1 - a) * (1 - a / ap)
    std = eta * math.sqrt(max(var, 0.0))
    out = math.sqrt(ap) * model_x0 + math.sqrt(1 - ap - std ** 2) * eps
    if eta > 0:
        out = out + std * next(noise)
    return out


def official_nested(eps_fn, x_vp, n_outer, k_inner, inner_eta, outer_eta, ac, noise, dpm=False):
    """Returns (previews, final_outer_latents) of the official SD loop."""
    ts = outer_timesteps(n_outer)
    x = x_vp
    previews = []
    for i in range(n_outer):
        t = ts[i]
        lat = x.clone()
        if not dpm:
            taus = inner_timesteps_ddim(k_inner, t)
            for j, tau in enumerate(taus):
                prev = taus[j + 1] if j + 1 < len(taus) else 0
                eps = eps_fn(lat, tau)
                x0 = (lat - math.sqrt(1 - ac[tau]) * eps) / math.sqrt(ac[tau])
                lat = ddim_step(x0, eps, tau, prev, lat, inner_eta, ac, noise)
        else:
            lat = _dpm_inner(eps_fn, lat, inner_timesteps_dpm(k_inner, t), ac)
        previews.append(lat)
        prev_t = ts[i + 1]
        a = ac[t]
        eps_hat = (x - math.sqrt(a) * lat) / math.sqrt(1 - a)
        x = ddim_step(lat, eps_hat, t, prev_t, x, outer_eta, ac, noise)
    return previews, x


def _lam(ac, t):
    a = ac[t]
    return math.log(math.sqrt(a)) - math.log(math.sqrt(1 - a))


def _dpm_inner(eps_fn, lat, taus, ac):
    """dpmsolver++ singlestep, order list [1, 2, 1, 2, ...], midpoint second order, last -> t=0."""
    grid = taus + [0]
    n = len(taus)
    i = 0
    while i < n:
        s1, s0 = grid[i], grid[i + 1]
        eps = eps_fn(lat, s1)
        d_s1 = (lat - math.sqrt(1 - ac[s1]) * eps) / math.sqrt(ac[s1])
        first = _first_order(lat, d_s1, s1, s0, ac)
        if i + 1 == n:
            lat = first
            i += 1
            continue
        t = grid[i + 2]
        eps0 = eps_fn(first, s0)
        d_s0 = (first - math.sqrt(1 - ac[s0]) * eps0) / math.sqrt(ac[s0])
        lam_t, lam_s0, lam_s1 = _lam(ac, t), _lam(ac, s0), _lam(ac, s1)
        h, h0 = lam_t - lam_s1, lam_s0 - lam_s1
        r0 = h0 / h
        D0, D1 = d_s1, (1.0 / r0) * (d_s0 - d_s1)
        alpha_t, sigma_t, sigma_s1 = math.sqrt(ac[t]), math.sqrt(1 - ac[t]), math.sqrt(1 - ac[s1])
        lat = (sigma_t / sigma_s1) * lat - alpha_t * (math.exp(-h) - 1.0) * D0 \
            - 0.5 * alpha_t * (math.exp(-h) - 1.0) * D1
        i += 2
    return lat


def _first_order(x, d, s, t, ac):
    h = _lam(ac, t) - _lam(ac, s)
    alpha_t, sigma_t, sigma_s = math.sqrt(ac[t]), math.sqrt(1 - ac[t]), math.sqrt(1 - ac[s])
    return (sigma_t / sigma_s) * x - alpha_t * (math.exp(-h) - 1.0) * d


def eps_from_denoiser(denoise, sigmas_table, ac):
    """An epsilon-predictor in VP space built from a VE denoiser D(x_k, sigma)."""
    def eps_fn(x_vp, t):
        a = ac[t]
        s = float(sigmas_table[t])
        xk = x_vp / math.sqrt(a)
        return (xk - denoise(xk, torch.tensor([s], dtype=torch.float64))) / s
    return eps_fn
