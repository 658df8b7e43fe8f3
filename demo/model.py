"""The demo's class-conditional diffusion network and its k-diffusion-style denoiser.

* :class:`UNet` — a small, fully convolutional UNet (three levels: full, 1/2 and 1/4 resolution,
  one self-attention layer at 1/4) that predicts the noise ``eps`` from a scaled noisy image, an
  integer timestep and a class label.  Label ``N_CLASSES`` is the null class (classifier-free
  guidance: the label is dropped to it during training).  It runs at any height and width; sizes
  that are not multiples of 4 are padded (replicate) and cropped back.
* :class:`Denoiser` — the network in sigma space, the way ComfyUI wraps an SD1.x EPS model:
  ``x = x0 + sigma * eps``; input scaling ``c_in = 1 / sqrt(1 + sigma^2)``; the timestep is the
  nearest integer step of the "scaled_linear" discrete VP schedule (beta 0.00085..0.012, 1000
  steps, the pack's ``DiscreteSchedule``); output ``x0 = x - sigma * eps``.  With ``cfg != 1`` it
  evaluates the condition and the null class in one batch and returns
  ``D_u + cfg * (D_c - D_u)``.
"""
from __future__ import annotations

import math
from typing import Optional

import torch
import torch.nn as nn
import torch.nn.functional as F

from ._pack import common
from .data import N_CLASSES

__all__ = ["UNet", "Denoiser", "DEFAULT_CONFIG", "timestep_embedding"]

DEFAULT_CONFIG = dict(channels=(32, 64, 96), emb_dim=128, groups=8, n_classes=N_CLASSES, in_channels=3)


def timestep_embedding(t: torch.Tensor, dim: int, max_period: float = 10000.0) -> torch.Tensor:
    half = dim // 2
    freqs = torch.exp(-math.log(max_period) * torch.arange(half, dtype=torch.float32, device=t.device) / half)
    args = t.to(torch.float32)[:, None] * freqs[None]
    return torch.cat([torch.cos(args), torch.sin(args)], dim=-1)


class ResBlock(nn.Module):
    def __init__(self, cin: int, cout: int, emb_dim: int, groups: int):
        super().__init__()
        self.norm1 = nn.GroupNorm(groups, cin)
        self.conv1 = nn.Conv2d(cin, cout, 3, padding=1)
        self.emb = nn.Linear(emb_dim, 2 * cout)
        self.norm2 = nn.GroupNorm(groups, cout)
        self.conv2 = nn.Conv2d(cout, cout, 3, padding=1)
        nn.init.zeros_(self.conv2.weight)
        nn.init.zeros_(self.conv2.bias)
        self.skip = nn.Conv2d(cin, cout, 1) if cin != cout else nn.Identity()

    def forward(self, x, emb):
        h = self.conv1(F.silu(self.norm1(x)))
        scale, shift = self.emb(emb)[:, :, None, None].chunk(2, dim=1)
        h = self.norm2(h) * (1 + scale) + shift
        h = self.conv2(F.silu(h))
        return self.skip(x) + h


class Attention(nn.Module):
    def __init__(self, ch: int, groups: int, heads: int = 4):
        super().__init__()
        self.heads = heads
        self.norm = nn.GroupNorm(groups, ch)
        self.qkv = nn.Conv2d(ch, 3 * ch, 1)
        self.proj = nn.Conv2d(ch, ch, 1)
        nn.init.zeros_(self.proj.weight)
        nn.init.zeros_(self.proj.bias)

    def forward(self, x):
        b, c, h, w = x.shape
        q, k, v = self.qkv(self.norm(x)).reshape(b, 3, self.heads, c // self.heads, h * w).transpose(-1, -2).unbind(1)
        out = F.scaled_dot_product_attention(q, k, v)                  # [b, heads, hw, c/heads]
        return x + self.proj(out.transpose(-1, -2).reshape(b, c, h, w))


class UNet(nn.Module):
    """eps(x_in, t, label) for images [B, 3, H, W]; labels int64 [B] in 0..n_classes (n_classes = null)."""

    def __init__(self, channels=(32, 64, 96), emb_dim: int = 128, groups: int = 8, n_classes: int = N_CLASSES,
                 in_channels: int = 3):
        super().__init__()
        c0, c1, c2 = channels
        self.channels, self.n_classes, self.in_channels = tuple(channels), n_classes, in_channels
        self.null_class = n_classes
        self.t_dim = c0
        self.time_mlp = nn.Sequential(nn.Linear(c0, emb_dim), nn.SiLU(), nn.Linear(emb_dim, emb_dim))
        self.label_emb = nn.Embedding(n_classes + 1, emb_dim)
        self.conv_in = nn.Conv2d(in_channels, c0, 3, padding=1)
        self.down0 = ResBlock(c0, c0, emb_dim, groups)
        self.ds0 = nn.Conv2d(c0, c0, 3, stride=2, padding=1)
        self.down1 = ResBlock(c0, c1, emb_dim, groups)
        self.ds1 = nn.Conv2d(c1, c1, 3, stride=2, padding=1)
        self.down2 = ResBlock(c1, c2, emb_dim, groups)
        self.attn = Attention(c2, groups)
        self.mid = ResBlock(c2, c2, emb_dim, groups)
        self.up2 = ResBlock(c2 + c2, c2, emb_dim, groups)
        self.us1 = nn.Conv2d(c2, c2, 3, padding=1)
        self.up1 = ResBlock(c2 + c1, c1, emb_dim, groups)
        self.us0 = nn.Conv2d(c1, c1, 3, padding=1)
        self.up0 = ResBlock(c1 + c0, c0, emb_dim, groups)
        self.norm_out = nn.GroupNorm(groups, c0)
        self.conv_out = nn.Conv2d(c0, in_channels, 3, padding=1)
        nn.init.zeros_(self.conv_out.weight)
        nn.init.zeros_(self.conv_out.bias)

    def forward(self, x, t, labels):
        h0, w0 = x.shape[-2:]
        ph, pw = (-h0) % 4, (-w0) % 4
        if ph or pw:
            x = F.pad(x, (0, pw, 0, ph), mode="replicate")
        emb = self.time_mlp(timestep_embedding(t, self.t_dim)) + self.label_emb(labels)
        emb = F.silu(emb)
        a = self.down0(self.conv_in(x), emb)
        b = self.down1(self.ds0(a), emb)
        c = self.attn(self.down2(self.ds1(b), emb))
        h = self.mid(c, emb)
        h = self.up2(torch.cat([h, c], 1), emb)
        h = self.us1(F.interpolate(h, scale_factor=2.0, mode="nearest"))
        h = self.up1(torch.cat([h, b], 1), emb)
        h = self.us0(F.interpolate(h, scale_factor=2.0, mode="nearest"))
        h = self.up0(torch.cat([h, a], 1), emb)
        out = self.conv_out(F.silu(self.norm_out(h)))
        return out[..., :h0, :w0]


def _labels(labels, batch: int, default: int, device) -> torch.Tensor:
    if labels is None:
        return torch.full((batch,), default, dtype=torch.long, device=device)
    labels = torch.as_tensor(labels, device=device).long()
    if labels.dim() == 0:
        labels = labels.expand(batch)
    if labels.shape != (batch,):
        raise ValueError(f"labels must be an int or a [B] = [{batch}] tensor (got shape {tuple(labels.shape)})")
    return labels


class Denoiser(nn.Module):
    """k-diffusion denoiser ``D(x, sigma, cond=labels, uncond=None, cfg=1.0) -> x0`` (EPS model, SD1.x schedule).

    ``cond``: class labels (int or [B]); ``None`` = the null class (unconditional).  ``uncond``: the
    labels of the negative branch (default: the null class).  ``cfg``: guidance scale; with
    ``cfg == 1`` only the condition is evaluated.  Extra keyword arguments that samplers pass along
    (``seed``, ``model_options``) are accepted and ignored.  ``model_sampling`` is the schedule
    (ComfyUI's ``ModelSamplingDiscrete`` interface).
    """

    IGNORED = ("seed", "model_options")

    def __init__(self, unet: UNet):
        super().__init__()
        self.unet = unet
        self.model_sampling = common.DiscreteSchedule()
        self.n_classes = unet.n_classes
        self.null_class = unet.null_class

    @property
    def sigma_min(self) -> float:
        return float(self.model_sampling.sigma_min)

    @property
    def sigma_max(self) -> float:
        return float(self.model_sampling.sigma_max)

    def _sigma(self, x, sigma) -> torch.Tensor:
        sigma = torch.as_tensor(sigma, dtype=torch.float64, device=x.device)
        if sigma.dim() == 0:
            sigma = sigma.expand(x.shape[0])
        return sigma.reshape(x.shape[0])

    def eps(self, x, sigma, labels) -> torch.Tensor:
        """The network's noise prediction at (x, sigma) for labels [B] (float32 maths, x's dtype out)."""
        sigma = self._sigma(x, sigma)
        t = self.model_sampling.timestep(sigma.cpu()).to(x.device)
        c_in = (1.0 / (1.0 + sigma ** 2).sqrt()).to(torch.float32)[:, None, None, None]
        return self.unet(x.to(torch.float32) * c_in, t, labels).to(x.dtype)

    def forward(self, x, sigma, cond=None, uncond=None, cfg: float = 1.0, **extra):
        unknown = set(extra) - set(self.IGNORED)
        if unknown:
            raise TypeError(f"Denoiser got unexpected arguments {sorted(unknown)}")
        b = x.shape[0]
        s = self._sigma(x, sigma)
        c = _labels(cond, b, self.null_class, x.device)
        if float(cfg) == 1.0:
            eps = self.eps(x, s, c)
        else:
            u = _labels(uncond, b, self.null_class, x.device)
            e = self.eps(torch.cat([x, x]), torch.cat([s, s]), torch.cat([c, u]))
            e_c, e_u = e[:b], e[b:]
            eps = e_u + (e_c - e_u) * float(cfg)
        return x - s.to(x.dtype).reshape(-1, *([1] * (x.dim() - 1))) * eps

    def branch(self, labels=None):
        """A plain denoiser ``f(x, sigma, **_) -> x0`` for one branch (labels; None = unconditional)."""
        def f(x, sigma, **extra):
            return self(x, sigma, cond=labels, cfg=1.0)
        return f


def param_count(module: nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())
