"""ElasticDiffusion (Haji-Ali, Balakrishnan, Ordonez, CVPR 2024): one step, top to bottom.

In sigma space (x = x0 + sigma eps), with D_c / D_u the conditional / unconditional x0 predictions
of a model that only ever sees base x base inputs, a step from sigma_i to sigma_{i+1} is

    G  = D_c - D_u  on a pixel-subsampled reference of the whole canvas (long side = base), estimated
         over R + 1 resampling rounds and scattered back to full size      (the global direction)
    L  = D_u  on base-size crops (window + context), stitched               (the local content)
    D  = L + cfg G,   x' = x + (x - D) / sigma_i (sigma_{i+1} - sigma_i)     (Euler = DDIM eta 0)
    repaint (R > 0, not the last step): x_re = x' + sqrt(sigma_i^2 - sigma_{i+1}^2) xi, and the
         pass is redone from x_re with one round at cfg / 3
    RRG  (w_i > threshold): x' += sqrt(1 + sigma_{i+1}^2) 2 w_i / (C H W) (U(D_ref) - D), with
         D_ref = D_u^ref + g G_down the reference-level estimate (g = the last pass's scale) and U its
         upsampling to the canvas.

Denoiser protocol: the sampler never sees a model; it calls ``denoiser(x, sigma, which, meta) -> x0``
with x ``[N, C, base, base]``, sigma ``[N]`` (all equal), ``which`` a list of ``"cond"``/``"uncond"``
and ``meta`` a list of :class:`~.config.RowMeta`.  A call holds rows of one role and one phase;
reference calls are ``[cond; uncond]`` halves on the same inputs, rows ordered (round, sample);
patch calls are all ``"uncond"``, ordered (view, sample).  Design notes: docs/ (Elastic).
"""
from __future__ import annotations

import math
from typing import Any, Callable, Dict, List, NamedTuple, Optional, Sequence, Tuple

import torch

from ..common import check_x, to_d
from .config import ElasticPlan, RowMeta, RRG_MIN_WEIGHT, make_plan, validate_elastic
from .noise import StepRandom, pad_to_base

__all__ = ["rrg_weight", "rrg_active_steps", "RefInfo", "reference_pass", "local_pass", "elastic_denoise",
           "StepResult", "elastic_step", "sample_elastic"]


def rrg_weight(i: int, steps: int, rrg_init_weight: float, rrg_stop_t: float, cosine_scale: float) -> float:
    """w_i = W0 (0.5 (1 + cos(pi i / T)))^kappa for i < T = N - int(N rrg_stop_t), else 0."""
    t_rrg = steps - int(steps * rrg_stop_t)
    if i >= t_rrg or t_rrg <= 0:
        return 0.0
    return float(rrg_init_weight) * (0.5 * (1.0 + math.cos(math.pi * i / t_rrg))) ** cosine_scale


def rrg_active_steps(steps: int, rrg_init_weight: float, rrg_stop_t: float, cosine_scale: float,
                     rrg_min_weight: float = RRG_MIN_WEIGHT) -> List[int]:
    """Steps where RRG acts (w_i > threshold); e.g. 0..12 for W0 1000, N 50, stop 0.4, kappa 10."""
    return [i for i in range(steps)
            if rrg_weight(i, steps, rrg_init_weight, rrg_stop_t, cosine_scale) > rrg_min_weight]


class RefInfo(NamedTuple):
    """Reference-level results of the last resampling round (what RRG needs)."""
    d_uncond: torch.Tensor        # [B, C, h, w] D_u on the last reference
    g_down: torch.Tensor          # [B, C, h, w] the composed direction read back at reference size
    filled: float                 # fraction of full-size pixels holding an estimate of their own


def _call(denoiser, x: torch.Tensor, sigma: float, which: List[str], meta: List[RowMeta], calls) -> torch.Tensor:
    out = denoiser(x, x.new_full((x.shape[0],), float(sigma)), which, meta)
    if calls is not None:
        calls.append((meta[0].role, meta[0].phase, x.shape[0]))
    if tuple(out.shape) != tuple(x.shape):
        raise ValueError(f"denoiser returned shape {tuple(out.shape)} for input {tuple(x.shape)}")
    return out.to(x.dtype)


def _reference_scores(denoiser, x_ref, canvas, sigma, plan, rnd, n_eval, phase, calls):
    """D_c and D_u of the ``n_eval`` rounds' references [n_eval*B, C, h, w] of a ``canvas`` (B, C, H, W)
    -> two [n_eval, B, C, h*w]; ``ref_batch_size`` rounds per call (0 = all), each call
    ``[cond; uncond]`` on the same inputs."""
    cfg, (h, w) = plan.config, (plan.geometry.h, plan.geometry.w)
    B, C, H, W = canvas
    per = n_eval if cfg.ref_batch_size <= 0 else cfg.ref_batch_size
    d_c, d_u = [], []
    for r0 in range(0, n_eval, per):
        r1 = min(n_eval, r0 + per)
        samples = [b for _ in range(r0, r1) for b in range(B)]
        inp, (t, l) = pad_to_base(x_ref[r0 * B:r1 * B], samples, sigma, rnd)
        meta = [RowMeta("reference", phase, which, b, rnd.step, r, (H, W), (h, w), cfg.base, (t, l, h, w),
                        (0, 0, H, W), (0, 0, H, W))
                for which in ("cond", "uncond") for r in range(r0, r1) for b in range(B)]
        n = inp.shape[0]
        out = _call(denoiser, torch.cat([inp, inp]), sigma, ["cond"] * n + ["uncond"] * n, meta, calls)
        out = out[:, :, t:t + h, l:l + w]
        d_c.append(out[:n])
        d_u.append(out[n:])
    return torch.cat(d_c).reshape(n_eval, B, C, h * w), torch.cat(d_u).reshape(n_eval, B, C, h * w)


def reference_pass(denoiser, x: torch.Tensor, sigma: float, plan: ElasticPlan, rnd: StepRandom,
                   rounds: int, phase: str = "main", calls: Optional[list] = None
                   ) -> Tuple[torch.Tensor, torch.Tensor, RefInfo]:
    """Global direction G (full size) from ``rounds`` = R + 1 resampling rounds.

    All rounds' references are drawn first (the picks depend only on the RNG) and evaluated together.
    Each round's g = D_c - D_u is written at that round's positions (newest wins); unwritten pixels
    take the last round's upsampled g.  Returns (G [B,C,H,W], D_u of round 0 at reference size, RefInfo).
    """
    geo = plan.geometry
    B, C, H, W = x.shape
    h, w = geo.h, geo.w
    picks = torch.stack([rnd.picks(b, rounds) for b in range(B)], 1)       # [R1, B, h, w]
    n_eval = 1 if geo.trivial else rounds                                  # reference == x: rounds identical
    src = geo.sources(picks[:n_eval])                                      # [n_eval, B, h*w]
    xf = x.reshape(1, B, C, H * W).expand(n_eval, -1, -1, -1)
    x_ref = xf.gather(3, src.unsqueeze(2).expand(-1, -1, C, -1)).reshape(n_eval * B, C, h, w)
    d_c, d_u = _reference_scores(denoiser, x_ref, x.shape, sigma, plan, rnd, n_eval, phase, calls)
    g = d_c - d_u
    G = x.new_zeros(B, C, H * W)
    filled = torch.zeros(B, 1, H * W, dtype=torch.bool, device=x.device)
    for r in range(rounds):
        vals = g[min(r, n_eval - 1)].gather(2, geo.values(picks[r]).unsqueeze(1).expand(-1, C, -1))
        pos = geo.writes(picks[r]).unsqueeze(1)
        G.scatter_(2, pos.expand(-1, C, -1), vals)
        filled.scatter_(2, pos, True)
    frac = float(filled.double().mean())
    G = torch.where(filled, G, g[-1][:, :, geo.fill])
    g_down = G[:, :, geo.down].reshape(B, C, h, w)
    info = RefInfo(d_u[-1].reshape(B, C, h, w), g_down, frac)
    return G.reshape(B, C, H, W), d_u[0].reshape(B, C, h, w), info


def local_pass(denoiser, x: torch.Tensor, sigma: float, plan: ElasticPlan, rnd: StepRandom,
               phase: str = "main", calls: Optional[list] = None) -> torch.Tensor:
    """Local unconditional signal L: D_u on base-size crops with context, ``view_batch_size`` views
    per call (view-major rows), blended into the canvas (faithful: first window wins; clean:
    feathered overlaps)."""
    cfg = plan.config
    B, C, H, W = x.shape
    acc = x.new_zeros(B, C, H, W)
    views = plan.views
    hw = (plan.geometry.h, plan.geometry.w)
    for v0 in range(0, len(views), cfg.view_batch_size):
        chunk = views[v0:v0 + cfg.view_batch_size]
        inputs, offs, meta = [], [], []
        for v in chunk:
            y0, y1, x0, x1 = v.crop
            inp, (t, l) = pad_to_base(x[:, :, y0:y1, x0:x1], range(B), sigma, rnd)
            inputs.append(inp)
            offs.append((t, l))
            a, b, c, d = v.win
            meta += [RowMeta("patch", phase, "uncond", s, rnd.step, v.index, (H, W), hw, cfg.base,
                             (t, l, y1 - y0, x1 - x0), (y0, x0, y1 - y0, x1 - x0), (a, c, b - a, d - c))
                     for s in range(B)]
        out = _call(denoiser, torch.cat(inputs), sigma, ["uncond"] * len(meta), meta, calls)
        for n, (v, (t, l)) in enumerate(zip(chunk, offs)):
            a, b, c, d = v.win
            y0, _, x0, _ = v.crop
            o = out[n * B:(n + 1) * B, :, t + a - y0:t + b - y0, l + c - x0:l + d - x0]
            acc[:, :, a:b, c:d] += o * (v.wy.view(-1, 1) * v.wx.view(1, -1))
    if cfg.mode == "faithful":
        return acc                      # 0/1 weights, exactly one owner per pixel
    return acc / plan.norm


def elastic_denoise(denoiser, x: torch.Tensor, sigma: float, plan: ElasticPlan, rnd: StepRandom, *,
                    rounds: int, scale: float, phase: str = "main", calls: Optional[list] = None
                    ) -> Tuple[torch.Tensor, RefInfo]:
    """Composite x0 estimate D = L + scale G and the reference info.

    At or below base (``plan.trivial``) the patch equals the padded reference, so the reference's
    D_u is reused as L: 2 instead of 3 evaluations per pass."""
    G, du_ref, info = reference_pass(denoiser, x, sigma, plan, rnd, rounds, phase, calls)
    L = du_ref if plan.trivial else local_pass(denoiser, x, sigma, plan, rnd, phase, calls)
    return L + scale * G, info


class StepResult(NamedTuple):
    x: torch.Tensor               # latent at sigmas[i + 1]
    denoised: torch.Tensor        # the retained full-size x0 estimate D (pass 2 when repaint ran)
    info: Dict[str, Any]          # calls [(role, phase, rows)], rrg_weight, repaint, filled


@torch.no_grad()
def elastic_step(denoiser, x: torch.Tensor, sigmas: torch.Tensor, i: int, plan: ElasticPlan,
                 seed: int = 0, sample_ids: Optional[Sequence[int]] = None) -> StepResult:
    """One ElasticDiffusion step sigma_i -> sigma_{i+1}: pass 1, repaint, RRG (module docstring)."""
    cfg = plan.config
    N = len(sigmas) - 1
    sig_t = sigmas.detach().to("cpu")
    s, s1 = sig_t[i].to(plan.dtype), sig_t[i + 1].to(plan.dtype)
    sf, s1f = float(sig_t[i]), float(sig_t[i + 1])
    x = x.to(plan.dtype)
    B, C, H, W = x.shape
    rnd = StepRandom(plan, seed, i, sample_ids)
    calls: list = []
    R = cfg.resampling_steps
    D, ref = elastic_denoise(denoiser, x, sf, plan, rnd, rounds=R + 1, scale=cfg.cfg, phase="main", calls=calls)
    x_next = x + to_d(x, s, D) * (s1 - s)
    g = cfg.cfg
    repainted = cfg.repaint and R > 0 and i < N - 1
    if repainted:                                            # re-noise to sigma_i, redo at cfg / 3, one round
        xi = torch.stack([rnd.repaint_noise(b) for b in range(B)])
        x_re = x_next + math.sqrt(max(sf * sf - s1f * s1f, 0.0)) * xi
        g = cfg.cfg / 3.0
        D, ref = elastic_denoise(denoiser, x_re, sf, plan, rnd, rounds=1, scale=g, phase="repaint", calls=calls)
        x_next = x_re + to_d(x_re, s, D) * (s1 - s)
    w = rrg_weight(i, N if cfg.steps is None else cfg.steps, cfg.rrg_init_weight, cfg.rrg_stop_t, cfg.cosine_scale)
    if w > cfg.rrg_min_weight:                               # pull x0 toward the reference's x0
        geo = plan.geometry
        d_ref = (ref.d_uncond + g * ref.g_down).reshape(B, C, geo.h * geo.w)
        up = d_ref[:, :, geo.fill].reshape(B, C, H, W)
        x_next = x_next + math.sqrt(1.0 + s1f * s1f) * (2.0 * w / (C * H * W)) * (up - D)
    info = {"calls": calls, "rrg_weight": w if w > cfg.rrg_min_weight else 0.0, "repaint": repainted,
            "filled": ref.filled}
    return StepResult(x_next, D, info)


def _run_config(denoiser, x: torch.Tensor, sigmas, options: dict):
    """The run's config: ``options["config"]`` as given (validated once by its maker), else validated here."""
    config = options.pop("config", None)
    if config is None:
        if options.get("base") is None and getattr(denoiser, "base", None) is not None:
            options["base"] = denoiser.base
        return validate_elastic(x.shape, sigmas, **options)
    if options:
        raise ValueError(f"options {sorted(options)} cannot be given together with config (it holds them)")
    if tuple(x.shape[1:]) != (config.channels, config.height, config.width):
        raise ValueError(f"config is for latents [B, {config.channels}, {config.height}, {config.width}], "
                         f"got {tuple(x.shape)}")
    return config


@torch.no_grad()
def sample_elastic(denoiser, x: torch.Tensor, sigmas: torch.Tensor, extra_args: Optional[dict] = None,
                   callback: Optional[Callable] = None, disable=None, **options) -> torch.Tensor:
    """ElasticDiffusion sampler with the k-diffusion contract.

    ``denoiser`` follows the protocol of the module docstring (not a k-diffusion model).  ``x`` is the
    noised start latent [B, C, H, W] (ComfyUI: sigma_0 * noise).  ``extra_args["seed"]`` (or option
    ``seed``) keys all randomness; other extra_args are ignored (the caller binds model options into
    ``denoiser``).  ``callback`` gets ``{'x', 'i', 'sigma', 'sigma_hat', 'denoised'}`` with the full-size
    x0 estimate.  Option ``sample_ids`` (one int per sample, default 0..B-1) keys sample b's
    randomness with ``seed + sample_ids[b]`` (ComfyUI passes the latent's ``batch_index``).
    Either the options of :func:`~.config.validate_elastic` or ``config=`` (an :class:`ElasticConfig`
    already validated for this latent and these sigmas).
    """
    extra_args = {} if extra_args is None else extra_args
    check_x(x)
    seed = options.pop("seed", None)
    if seed is None:
        seed = extra_args.get("seed", 0) or 0
    sample_ids = options.pop("sample_ids", None)
    if sample_ids is not None and len(sample_ids) != x.shape[0]:
        raise ValueError(f"sample_ids must have one id per sample ({x.shape[0]}), got {len(sample_ids)}")
    config = _run_config(denoiser, x, sigmas, options)
    plan = make_plan(config, device=x.device, dtype=torch.float64 if x.dtype == torch.float64 else torch.float32)
    out_dtype = x.dtype
    x = x.to(plan.dtype)
    for i in range(len(sigmas) - 1):
        res = elastic_step(denoiser, x, sigmas, i, plan, seed, sample_ids)
        if callback is not None:
            callback({"x": x, "i": i, "sigma": sigmas[i], "sigma_hat": sigmas[i], "denoised": res.denoised})
        x = res.x
    return x.to(out_dtype)
