"""How the sampler gets the two pieces ``D_total = D_b + G`` of a guided prediction.

Two duck-typed protocols (subclassing is optional):

* the **split probe** (``split_term='cfg_delta'``): the model returns the final guided x0; the
  probe tells the sampler which part of it is the base prediction D_b, so ``G = D_total - D_b``
  (patches applied after CFG, e.g. RescaleCFG, stay in G);
* the **GUIDANCE** object (``split_term='gradient'``): the model returns D_b and the guidance
  object computes G.

Plus :class:`ColorStatsGuidance`, a GUIDANCE that pulls the colour statistics of every x0 estimate
toward a reference latent (the node pack's example guidance).
"""
from __future__ import annotations

from typing import Dict, Optional

import torch

__all__ = ["SplitProbe", "BaseOnlyStandIn", "Guidance", "ColorStatsGuidance"]


class SplitProbe:
    """Reference implementation of the **split probe** protocol.

    What the sampler calls:

    * ``base_prediction(denoised, split_base) -> Tensor`` — the base prediction D_b (x0 space,
      shape of x) of the model call that just returned ``denoised`` (the final guided x0).
      ``split_base`` is ``'cond'`` or ``'uncond'``.  The sampler sets ``G = denoised - D_b``.
      Under an inpainting mask an implementation should blend D_b as the model output is blended,
      so that G vanishes in the kept region.
    * optional ``predict_base(x, sigma, split_base, **extra_args) -> Tensor`` — a base-only
      evaluation (one cond or uncond pass instead of a full CFG call), used in sequential mode.

    This class keeps the pieces of the latest model call, handed to :meth:`record` by whatever
    computes the guided prediction (a CFG denoiser, or a host's post-CFG hook).
    """

    predict_base = None

    def __init__(self):
        self.last: Dict[str, Optional[torch.Tensor]] = {}
        self.records = 0

    def record(self, denoised, cond_denoised=None, uncond_denoised=None) -> None:
        """Keep the final prediction and its cond / uncond parts of the latest model call."""
        self.last = {"denoised": denoised, "cond_denoised": cond_denoised, "uncond_denoised": uncond_denoised}
        self.records += 1

    def base_prediction(self, denoised, split_base: str):
        if not self.last:
            raise RuntimeError("split probe: no model call was recorded (is the post-CFG hook installed?)")
        key = "cond_denoised" if split_base == "cond" else "uncond_denoised"
        base = self.last.get(key)
        if base is None:
            raise RuntimeError(f"split probe: the last model call recorded no {key} (split_base={split_base!r}); "
                               f"with split_base='uncond' the cfg=1 optimisation must be disabled")
        return base


class BaseOnlyStandIn(SplitProbe):
    """A probe that declares a base-only call, for validation and cost formulas before the run's real
    probe exists (``eval_mode='auto'`` and :func:`nfe_per_run` read only whether it has one)."""

    def predict_base(self, x, sigma, split_base, **extra_args):
        raise RuntimeError("a stand-in probe is replaced by the run's real probe before any model call")


class Guidance:
    """Base class documenting the **GUIDANCE** protocol.

    ``guidance(x, sigma, denoised) -> G``:

    * ``x``: the state, shape ``[B, ...]`` (the sampler's work dtype, fp32 or fp64);
    * ``sigma``: tensor ``[B]`` (the noise level, like the model's sigma argument);
    * ``denoised``: the base prediction D_b(x, sigma), shape of x, or ``None`` when
      ``needs_denoised`` is False (then no extra model call is made for it);
    * returns ``G``, shape of x: the x0-space displacement ``D_total - D_b``, e.g. a classifier
      ``s·σ²·∇_x log p(c|x, σ)`` or an x0 loss ``-λ·σ²·∇_{x0} L(D_b)``.  The sampler multiplies
      it by ``guidance_scale`` and applies it with Euler: ``x -= (Δσ/σ_eval)·G``.

    The sampler calls it with autograd enabled and outside ``torch.inference_mode`` on fresh
    (cloned) inputs, so ``x.requires_grad_()`` + ``torch.autograd.grad`` work inside; the result
    is detached.
    """

    needs_denoised: bool = True

    def __call__(self, x, sigma, denoised):  # pragma: no cover - protocol documentation
        raise NotImplementedError


class ColorStatsGuidance(Guidance):
    """GUIDANCE: pull the x0 estimate's per-channel statistics toward a reference latent.

    ``G = -strength * grad_{x0} L(x0)`` at ``x0 = D_b`` with
    ``L = 1/2 * sum_c HW * [(mean_c(x0) - mean_c(ref))^2 (+ (std_c(x0) - std_c(ref))^2)]``, so
    strength 1 moves the channel means all the way to the reference's in one evaluation.  The
    gradient is taken with autograd.  Write your own GUIDANCE the same way: any object with
    ``__call__(x, sigma, denoised) -> displacement`` shaped like x, in x0 (model latent) space.
    """

    needs_denoised = True

    def __init__(self, reference: torch.Tensor, strength: float, match_std: bool):
        self.ref_mean = reference.mean(dim=(-2, -1), keepdim=True)
        self.ref_std = reference.std(dim=(-2, -1), keepdim=True)
        self.strength, self.match_std = float(strength), bool(match_std)

    def __call__(self, x, sigma, denoised):
        x0 = denoised.detach().clone().requires_grad_(True)
        hw = x0.shape[-1] * x0.shape[-2]
        mean = x0.mean(dim=(-2, -1), keepdim=True)
        loss = 0.5 * hw * ((mean - self.ref_mean.to(x0)) ** 2).sum()
        if self.match_std:
            std = x0.std(dim=(-2, -1), keepdim=True)
            loss = loss + 0.5 * hw * ((std - self.ref_std.to(x0)) ** 2).sum()
        (grad,) = torch.autograd.grad(loss, x0)
        return -self.strength * grad
