"""The guided analytic world: a classifier-guided 2-D Gaussian mixture with closed forms, the test
denoisers that are their own split probes, and the paper's ADM noise schedule.

For tests, benchmarks and demos only; product code never imports it.
"""
from __future__ import annotations

import math
from typing import Callable

import torch

from ..common import DiscreteSchedule
from ..split import Guidance, SplitProbe
from .mixture import GaussianMixture

__all__ = ["GuidedMixtureProblem", "MixtureClassifierGuidance", "CFGDenoiser", "GuidedDenoiser",
           "LinearBetaSchedule"]


class GuidedMixtureProblem:
    """Classifier-guided 2-D Gaussian mixture with closed forms.

    ``p0 = Σ_k π_k N(μ_k, s_k² I)``; target class ``c``.  With ``v_k = s_k² + σ²`` and
    responsibilities ``r_k``: ``∇_x log p(c|x,σ) = -(x-μ_c)/v_c + Σ_k r_k (x-μ_k)/v_k``, i.e.
    ``D_c - D_u = σ² ∇ log p``.  The *rough* classifier adds
    ``(κ/r²) Σ_j u_j cos(Ω u_j·x/r + φ_j)``, ``r = sqrt(s_c² + σ²)`` (unit vectors u_j and phases φ_j
    from ``seed``).  Guidance at scale s on the unconditional base: ``G = s σ² ∇̃ log p``.
    """

    MEANS = ((1.5, 0.0), (-1.5, 0.5), (0.0, -1.5))
    STDS = (0.15, 0.3, 0.3)
    WEIGHTS = (0.2, 0.4, 0.4)

    def __init__(self, means=MEANS, stds=STDS, weights=WEIGHTS, target: int = 0, kappa: float = 0.0,
                 omega: float = 20.0, n_waves: int = 4, seed: int = 0):
        self.means = torch.as_tensor(means, dtype=torch.float64)
        self.stds = torch.as_tensor(stds, dtype=torch.float64).expand(self.means.shape[0]).clone()
        w = torch.as_tensor(weights, dtype=torch.float64)
        self.weights = w / w.sum()
        self.target, self.kappa, self.omega = target, float(kappa), float(omega)
        self.mixture = GaussianMixture(self.means, self.weights, self.stds)
        self.component = GaussianMixture(self.means[target:target + 1], torch.ones(1, dtype=torch.float64),
                                         self.stds[target:target + 1])
        g = torch.Generator().manual_seed(seed)
        u = torch.randn(n_waves, self.dim, generator=g, dtype=torch.float64)
        self.u = u / u.norm(dim=1, keepdim=True)
        self.phi = 2 * math.pi * torch.rand(n_waves, generator=g, dtype=torch.float64)

    @property
    def dim(self) -> int:
        return self.means.shape[1]

    # k-diffusion denoisers -------------------------------------------------------------------
    def denoise_uncond(self, x, sigma, **extra_args):
        return self.mixture.denoise(x, sigma)

    def denoise_cond(self, x, sigma, **extra_args):
        return self.component.denoise(x, sigma)

    # closed forms --------------------------------------------------------------------------
    def _sig(self, x, sigma):
        s = torch.as_tensor(sigma, dtype=torch.float64, device=x.device).reshape(-1)
        return (s.expand(x.shape[0]) if s.numel() == 1 else s)[:, None]

    def _score_terms(self, x, s):
        """(Σ_k r_k (x-μ_k)/v_k, (x-μ_c)/v_c) for x [B, d], s [B, 1]."""
        v = self.stds[None] ** 2 + s ** 2                                    # [B, K]
        diff = x[:, None, :] - self.means[None]                              # [B, K, d]
        logr = self.weights.log()[None] - 0.5 * (diff ** 2).sum(-1) / v - 0.5 * self.dim * v.log()
        r = torch.softmax(logr, dim=1)
        mix = (r[..., None] * diff / v[..., None]).sum(1)
        c = self.target
        return mix, diff[:, c] / v[:, c:c + 1]

    def rough_term(self, x, s):
        r = (self.stds[self.target] ** 2 + s ** 2).sqrt()                    # [B, 1]
        phase = self.omega * (x @ self.u.T) / r + self.phi[None]             # [B, J]
        return (self.kappa / r ** 2) * (torch.cos(phase) @ self.u)

    def grad_log_classifier(self, x, sigma, rough: bool = True):
        """∇_x log p(c|x, σ) (+ the rough term when ``rough`` and κ > 0), x [B, d]."""
        xf = x.to(torch.float64)
        s = self._sig(xf, sigma)
        mix, own = self._score_terms(xf, s)
        g = mix - own
        if rough and self.kappa:
            g = g + self.rough_term(xf, s)
        return g.to(x.dtype)

    def field(self, x, sigma: float, scale: float, rough: bool = False):
        """dx/dσ of the guided ODE ``ε_u - s σ ∇̃`` in closed form (finite at σ = 0)."""
        s = self._sig(x, sigma)
        mix, own = self._score_terms(x, s)
        out = s * ((1 - scale) * mix + scale * own)
        if rough and self.kappa:
            out = out - scale * s * self.rough_term(x, s)
        return out

    def initial(self, n: int, sigma_max: float, seed: int = 0):
        """``x = sqrt(1 + σ_max²)·z``, z ~ N(0, I), float64 (the variance-preserving prior at σ_max)."""
        z = torch.randn(n, self.dim, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)
        return math.sqrt(1 + sigma_max ** 2) * z

    def reference(self, x, sigma_max: float, scale: float, rough: bool = False, steps: int = 2000,
                  rho: float = 7.0, sigma_end: float = 0.0):
        """RK4 solution of the guided ODE from σ_max to ``sigma_end`` on a Karras-ρ grid (float64)."""
        ramp = torch.linspace(0, 1, steps + 1, dtype=torch.float64)
        a, b = sigma_max ** (1 / rho), sigma_end ** (1 / rho)
        grid = [float(v) for v in (a + ramp * (b - a)) ** rho]
        y = x.to(torch.float64)
        for s0, s1 in zip(grid, grid[1:]):
            h = s1 - s0
            k1 = self.field(y, s0, scale, rough)
            k2 = self.field(y + h / 2 * k1, s0 + h / 2, scale, rough)
            k3 = self.field(y + h / 2 * k2, s0 + h / 2, scale, rough)
            k4 = self.field(y + h * k3, s1, scale, rough)
            y = y + h / 6 * (k1 + 2 * k2 + 2 * k3 + k4)
        return y

    def analytic_unit(self, x, sigma_max: float, sigma: float = 0.0):
        """Exact solution at s = 1: ``μ_c + (x - μ_c)·sqrt((s_c²+σ²)/(s_c²+σ_max²))``."""
        mu, sc2 = self.means[self.target], float(self.stds[self.target]) ** 2
        return mu + (x.to(torch.float64) - mu) * math.sqrt((sc2 + sigma ** 2) / (sc2 + sigma_max ** 2))

    def guidance(self, rough: bool = True) -> "MixtureClassifierGuidance":
        return MixtureClassifierGuidance(self, rough)


class MixtureClassifierGuidance(Guidance):
    """GUIDANCE object of the mixture problem: ``G = σ² ∇̃ log p(c|x, σ)`` (scale via guidance_scale).

    A noisy-classifier gradient needs no D_b (``needs_denoised = False``).
    """

    needs_denoised = False

    def __init__(self, problem: GuidedMixtureProblem, rough: bool = True):
        self.problem, self.rough, self.calls = problem, rough, 0

    def __call__(self, x, sigma, denoised):
        self.calls += 1
        s = torch.as_tensor(sigma, dtype=x.dtype).reshape(-1, *([1] * (x.dim() - 1)))
        return s ** 2 * self.problem.grad_log_classifier(x, sigma, self.rough)


class CFGDenoiser(SplitProbe):
    """Analytic CFG denoiser that is also its own split probe (stand-in for ComfyUI's CFG path).

    ``D = D_u + cfg·(D_c - D_u)``; with ``cfg == 1`` the uncond pass is skipped as ComfyUI does
    (unless ``disable_cfg1_optimization``).  ``cond``/``uncond`` are k-diffusion denoisers
    ``f(x, sigma) -> x0``.  Counters: ``calls`` (model calls), ``cond_passes``, ``uncond_passes``,
    ``base_calls`` (``predict_base``).  ``base_only_calls=False`` hides ``predict_base`` (stock guider).
    """

    def __init__(self, cond: Callable, uncond: Callable, cfg: float, disable_cfg1_optimization: bool = False,
                 base_only_calls: bool = True):
        super().__init__()
        self.cond, self.uncond, self.cfg = cond, uncond, float(cfg)
        self.disable_cfg1_optimization = disable_cfg1_optimization
        self.calls = self.cond_passes = self.uncond_passes = self.base_calls = 0
        if base_only_calls:
            self.predict_base = self._predict_base

    def __call__(self, x, sigma, **extra_args):
        self.calls += 1
        self.cond_passes += 1
        c = self.cond(x, sigma)
        if self.cfg == 1.0 and not self.disable_cfg1_optimization:
            self.record(c, c, None)
            return c
        self.uncond_passes += 1
        u = self.uncond(x, sigma)
        d = u + (c - u) * self.cfg
        self.record(d, c, u)
        return d

    def _predict_base(self, x, sigma, split_base: str, **extra_args):
        self.base_calls += 1
        if split_base == "cond":
            self.cond_passes += 1
            return self.cond(x, sigma)
        self.uncond_passes += 1
        return self.uncond(x, sigma)


class GuidedDenoiser(SplitProbe):
    """Generic adaptor ``D_total = D_b + G``: wraps a base denoiser and a guidance term.

    ``base(x, sigma) -> D_b``; ``guide(x, sigma, D_b) -> G``.  Returns D_total and records D_b in
    the ``cond`` slot (use ``split_base='cond'``).  Counters: ``calls``, ``base_calls``.
    """

    def __init__(self, base: Callable, guide: Callable):
        super().__init__()
        self.base, self.guide = base, guide
        self.calls = self.base_calls = 0
        self.predict_base = self._predict_base

    def __call__(self, x, sigma, **extra_args):
        self.calls += 1
        db = self.base(x, sigma)
        d = db + self.guide(x, sigma, db)
        self.record(d, db, None)
        return d

    def _predict_base(self, x, sigma, split_base: str, **extra_args):
        self.base_calls += 1
        return self.base(x, sigma)


class LinearBetaSchedule(DiscreteSchedule):
    """ADM / guided-diffusion "linear" β schedule (β from 1e-4 to 0.02, T = 1000): the paper's
    ImageNet models.  Same interface as ``DiscreteSchedule``; σ(999) = 157.41."""

    def __init__(self, beta_start: float = 1e-4, beta_end: float = 0.02, timesteps: int = 1000, dtype=torch.float64):
        super().__init__(timesteps=timesteps, dtype=dtype)
        betas = torch.linspace(beta_start, beta_end, timesteps, dtype=torch.float64)
        alphas_cumprod = torch.cumprod(1.0 - betas, dim=0)
        sigmas = ((1 - alphas_cumprod) / alphas_cumprod) ** 0.5
        self.register_buffer("alphas_cumprod", alphas_cumprod.to(dtype))
        self.register_buffer("sigmas", sigmas.to(dtype))
        self.register_buffer("log_sigmas", sigmas.log().to(dtype))
