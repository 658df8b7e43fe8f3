"""The paper's step grid: guided-diffusion timestep respacing, as SIGMAS ending in 0."""
from __future__ import annotations

from typing import List

import torch

from ..checks import check_float, check_int

__all__ = ["respaced_timesteps", "split_respace_sigmas"]


def respaced_timesteps(num_timesteps: int, steps: int) -> List[int]:
    """guided-diffusion ``space_timesteps(T, "N")`` with one section: ``round(i·(T-1)/(N-1))``.

    The index is accumulated by repeated float addition and rounded half-to-even (Python
    ``round``), exactly as the official respacing; ascending, includes 0 and T-1.
    """
    check_int("steps", steps, 2)
    if steps > num_timesteps:
        raise ValueError(f"steps={steps} exceeds the model's {num_timesteps} timesteps")
    stride = (num_timesteps - 1) / (steps - 1)
    taken, cur = [], 0.0
    for _ in range(steps):
        taken.append(round(cur))
        cur += stride
    return taken


def split_respace_sigmas(model_sampling, steps: int, denoise: float = 1.0, dtype=torch.float32) -> torch.Tensor:
    """Sigmas of the paper's respaced grid (the ``SplitRespace`` node).

    ``model_sampling``: a schedule with a ``sigmas`` table, or with ``sigma(t)`` / ``timestep(sigma)``
    / ``sigma_min`` / ``sigma_max``.  Returns ``steps + 1`` descending sigmas
    ``σ(τ_{N-1}), …, σ(τ_0), 0`` with ``σ(τ) = model_sampling.sigmas[τ]`` (first = σ(T-1),
    second-to-last = σ(0)).  Without a ``sigmas`` table, τ runs from ``timestep(sigma_min)`` to
    ``timestep(sigma_max)`` through ``sigma(τ)``.  ``denoise < 1`` keeps the last ``steps + 1``
    sigmas of a ``int(steps/denoise)``-step grid, like a partial-denoise schedule.
    """
    check_float("denoise", denoise, 0, 1, lo_open=True)
    check_int("steps", steps, 1)
    total = int(steps / denoise) if denoise < 1.0 else steps
    table = getattr(model_sampling, "sigmas", None)
    if isinstance(table, torch.Tensor) and table.dim() == 1:
        taus = respaced_timesteps(table.numel(), max(total, 2))
        sig = table.detach().to(torch.float64).cpu()[torch.tensor(taus[::-1])]
    else:
        t_lo = float(model_sampling.timestep(torch.as_tensor(model_sampling.sigma_min)))
        t_hi = float(model_sampling.timestep(torch.as_tensor(model_sampling.sigma_max)))
        taus = [t_lo + t for t in respaced_timesteps(int(round(t_hi - t_lo)) + 1, max(total, 2))]
        sig = torch.as_tensor(model_sampling.sigma(torch.tensor(taus[::-1], dtype=torch.float64)))
        sig = sig.to(torch.float64).cpu()
    if total == 1:                  # one step runs from the top of the schedule, not from sigma_min
        sig = sig.reshape(-1)[:1]
    sig = torch.cat([sig.reshape(-1), sig.new_zeros(1)])
    return sig[-(steps + 1):].to(dtype)
