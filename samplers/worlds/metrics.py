"""Distances between sample sets (rows = samples) for the guided analytic world."""
from __future__ import annotations

import torch

__all__ = ["rmse", "moment_w2", "sliced_w2"]


def rmse(a, b) -> float:
    """Coupled RMSE ``sqrt(mean_i |a_i - b_i|²)`` over samples (rows)."""
    return float(((a.to(torch.float64) - b.to(torch.float64)) ** 2).sum(-1).mean().sqrt())


def moment_w2(a, b) -> float:
    """Gaussian-moment W2 proxy ``sqrt(|Δmean|² + |Δstd|²)`` (a cheap W2 stand-in for near-Gaussian clouds)."""
    a, b = a.to(torch.float64), b.to(torch.float64)
    return float((((a.mean(0) - b.mean(0)) ** 2).sum() + ((a.std(0) - b.std(0)) ** 2).sum()).sqrt())


def sliced_w2(a, b, n_proj: int = 128, seed: int = 0) -> float:
    """Sliced 2-Wasserstein distance (equal sample counts; exact 1-D W2 per random direction)."""
    a, b = a.to(torch.float64), b.to(torch.float64)
    d = torch.randn(a.shape[1], n_proj, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)
    d = d / d.norm(dim=0, keepdim=True)
    pa, pb = (a @ d).sort(0).values, (b @ d).sort(0).values
    return float(((pa - pb) ** 2).mean().sqrt())
