"""The embedded "toy world": an analytic, class-conditional model that needs no download.

A Gaussian mixture of small RGB images with isotropic components.  Its denoiser is the exact
posterior mean E[x0 | x_sigma], so every sampler can be run against a *perfect* model, CFG works
(class-conditional vs unconditional posterior means) and distances to the true data distribution
are measurable.  Used by the demo, the benchmarks and the pure tests.
"""
from __future__ import annotations

import math
from typing import Optional, Sequence

import torch

__all__ = ["GaussianMixture", "ToyWorld", "ToyDenoiser", "frechet_distance", "spec_mixture_16d"]


class GaussianMixture:
    """Mixture of isotropic Gaussians in R^D with an exact denoiser.

    ``denoise(x, sigma)`` is E[x0 | x] for x = x0 + sigma*eps (VE).  With ``rf=True`` the input
    is read as a rectified-flow state x = (1-sigma)*x0 + sigma*eps.
    """

    def __init__(self, means: torch.Tensor, weights: torch.Tensor, stds: torch.Tensor):
        self.means = means.to(torch.float64)
        self.weights = (weights / weights.sum()).to(torch.float64)
        self.stds = torch.as_tensor(stds, dtype=torch.float64).expand(self.means.shape[0]).clone()

    @property
    def dim(self) -> int:
        return self.means.shape[1]

    def sample(self, n: int, generator: Optional[torch.Generator] = None) -> torch.Tensor:
        k = torch.multinomial(self.weights, n, replacement=True, generator=generator)
        z = torch.randn(n, self.dim, generator=generator, dtype=torch.float64)
        return self.means[k] + self.stds[k, None] * z

    def denoise(self, x: torch.Tensor, sigma, rf: bool = False) -> torch.Tensor:
        shape, dtype = x.shape, x.dtype
        xf = x.reshape(shape[0], -1).to(torch.float64)
        s = torch.as_tensor(sigma, dtype=torch.float64, device=xf.device).reshape(-1)
        if s.numel() == 1:
            s = s.expand(shape[0])
        s = s[:, None]
        if rf:  # x = (1-s) x0 + s eps  ->  x/(1-s) = x0 + s/(1-s) eps  (s = 1 is pure noise)
            s = s.clamp(max=1 - 1e-6)
            xf = xf / (1 - s)
            s = s / (1 - s)
        var = self.stds[None, :] ** 2 + s ** 2                       # [B, K]
        d2 = torch.cdist(xf, self.means) ** 2                         # [B, K]
        logw = self.weights.log()[None] - 0.5 * d2 / var - 0.5 * self.dim * var.log()
        w = torch.softmax(logw, dim=1)                                # posterior over components
        a = self.stds[None, :] ** 2 / var                             # shrink factor per component
        # E[x0|x] = sum_k w_k (a_k x + (1-a_k) mu_k)
        out = (w * a).sum(1, keepdim=True) * xf + (w * (1 - a)) @ self.means
        return out.reshape(shape).to(dtype)


def spec_mixture_16d() -> GaussianMixture:
    """A 16-D three-component mixture (means from seed 1, x1.5; weights .7/.2/.1; std .5): the anytime test world."""
    g = torch.Generator().manual_seed(1)
    means = torch.randn(3, 16, generator=g, dtype=torch.float64) * 1.5
    return GaussianMixture(means, torch.tensor([0.7, 0.2, 0.1], dtype=torch.float64), torch.tensor(0.5))


def _pattern(kind: str, c: torch.Tensor, size: int, shift: float) -> torch.Tensor:
    yy, xx = torch.meshgrid(torch.linspace(-1, 1, size, dtype=torch.float64),
                            torch.linspace(-1, 1, size, dtype=torch.float64), indexing="ij")
    if kind == "sunset":      # warm sky over dark ground, horizon moves with `shift`
        top = (yy < shift * 0.5).to(torch.float64)
        img = top[None] * c[0][:, None, None] + (1 - top[None]) * c[1][:, None, None]
    elif kind == "disc":      # a bright disc on a background
        r = ((xx - shift * 0.4) ** 2 + yy ** 2).sqrt()
        m = (r < 0.55).to(torch.float64)
        img = m[None] * c[0][:, None, None] + (1 - m[None]) * c[1][:, None, None]
    elif kind == "stripes":   # vertical stripes with a phase
        m = (torch.sin(3.0 * math.pi * (xx + shift * 0.3)) > 0).to(torch.float64)
        img = m[None] * c[0][:, None, None] + (1 - m[None]) * c[1][:, None, None]
    else:                     # "gradient": diagonal colour ramp
        m = ((xx + yy + 2 + shift) / 4).clamp(0, 1)
        img = m[None] * c[0][:, None, None] + (1 - m[None]) * c[1][:, None, None]
    return img


_CLASSES = [
    ("sunset", [[0.9, 0.5, -0.2], [-0.6, -0.7, -0.5]]),
    ("disc", [[0.9, 0.9, 0.2], [-0.5, -0.2, 0.6]]),
    ("stripes", [[0.1, 0.7, 0.1], [-0.7, -0.3, -0.7]]),
    ("gradient", [[0.8, -0.6, 0.6], [-0.2, 0.4, 0.9]]),
]


class ToyWorld:
    """A class-conditional mixture of ``3 x size x size`` images in [-1, 1] (4 classes x 3 modes)."""

    class_names = [name for name, _ in _CLASSES]

    def __init__(self, size: int = 8, std: float = 0.15, shifts: Sequence[float] = (-0.6, 0.0, 0.6)):
        self.size = size
        means, cls = [], []
        for ci, (kind, cols) in enumerate(_CLASSES):
            c = torch.tensor(cols, dtype=torch.float64)
            for sh in shifts:
                means.append(_pattern(kind, c, size, sh).reshape(-1))
                cls.append(ci)
        self.means = torch.stack(means)
        self.component_class = torch.tensor(cls)
        self.std = std
        self.mixtures = [GaussianMixture(self.means[self.component_class == ci],
                                         torch.ones(int((self.component_class == ci).sum())), torch.tensor(std))
                         for ci in range(len(_CLASSES))]
        self.uncond = GaussianMixture(self.means, torch.ones(len(self.means)), torch.tensor(std))

    @property
    def shape(self):
        return (3, self.size, self.size)

    def sample(self, n: int, class_id: Optional[int] = None, generator=None) -> torch.Tensor:
        mix = self.uncond if class_id is None else self.mixtures[class_id]
        return mix.sample(n, generator).reshape(n, *self.shape)

    def denoise(self, x, sigma, class_id: Optional[int] = None, rf: bool = False):
        mix = self.uncond if class_id is None else self.mixtures[class_id]
        return mix.denoise(x, sigma, rf=rf)


class ToyDenoiser:
    """A k-diffusion denoiser ``model(x, sigma, **extra_args)`` over a mixture, with CFG and an NFE count.

    ``cond``: class id (ToyWorld) or a GaussianMixture; ``uncond``: the same (None = unconditional
    ToyWorld mixture).  cfg == 1 makes no unconditional evaluation, as ComfyUI does.
    """

    def __init__(self, world, cond=None, cfg: float = 1.0, uncond=None, rf: bool = False):
        self.world, self.cond, self.uncond, self.cfg, self.rf = world, cond, uncond, cfg, rf
        self.nfe = 0
        self.trace = []          # (sigma, x) of every call

    def _d(self, which, x, sigma):
        if isinstance(which, GaussianMixture):
            return which.denoise(x, sigma, rf=self.rf)
        if isinstance(self.world, GaussianMixture):
            return self.world.denoise(x, sigma, rf=self.rf)
        return self.world.denoise(x, sigma, which, rf=self.rf)

    def __call__(self, x, sigma, **extra_args):
        self.nfe += 1
        self.trace.append((torch.as_tensor(sigma).reshape(-1)[0].item(), x.detach().clone()))
        c = self._d(self.cond, x, sigma)
        if self.cfg == 1.0:
            return c
        u = self._d(self.uncond, x, sigma)
        return u + (c - u) * self.cfg


def _sqrtm_psd(m: torch.Tensor) -> torch.Tensor:
    vals, vecs = torch.linalg.eigh(m)
    return (vecs * vals.clamp(min=0).sqrt()) @ vecs.T


def frechet_distance(a: torch.Tensor, b: torch.Tensor) -> float:
    """Gaussian-fit Fréchet distance between two sample sets (rows = samples)."""
    a = a.reshape(a.shape[0], -1).to(torch.float64)
    b = b.reshape(b.shape[0], -1).to(torch.float64)
    ma, mb = a.mean(0), b.mean(0)
    ca, cb = torch.cov(a.T), torch.cov(b.T)
    sa = _sqrtm_psd(ca)
    cross = _sqrtm_psd(sa @ cb @ sa)
    return float(((ma - mb) ** 2).sum() + torch.trace(ca) + torch.trace(cb) - 2 * torch.trace(cross))
