"""Operator-splitting guided sampling (LTSP / STSP), pure torch.  Spec: ``specs/split.md``.

Wizadwongsa & Suwajanakorn, "Accelerating Guided Diffusion Sampling with Splitting Numerical
Methods", ICLR 2023 (arXiv 2301.11558).  Re-implemented from the spec in k-diffusion / ComfyUI
sigma terms; no ComfyUI import (the node layer plugs in through the two protocols below).

Maths (spec §2, §4).  Every guided denoiser is written ``D_total = D_b + G``: a smooth *base*
prediction ``D_b`` and an x0-space *guidance displacement* ``G``.  The guided probability-flow
ODE splits into

    base (diffusion) field   dx/dσ = (x - D_b(x, σ)) / σ    -> Adams–Bashforth order K (PLMS / iPNDM)
    condition field          dx/dσ = -G(x, σ) / σ           -> Euler

    LTSP (Lie–Trotter):  x' = x_n - (h/σ_n) G(x_n, σ_n);                 x_{n+1} = x' + AB_K
    STSP (Strang):       x' = x_n - (h/2σ_n) G(x_n, σ_n);  x'' = x' + AB_K;
                         x_{n+1} = x'' - (h/2σ_{n+1}) G(x'', σ_{n+1})      (h = σ_{n+1} - σ_n < 0)

    AB_K (fixed, the paper):     h · Σ_i b_i^(k) d_{n-i},  d_j = (x'_j - D_b(x'_j, σ_j)) / σ_j
    AB_K (variable, option):     Σ_i ∫_{σ_n}^{σ_{n+1}} ℓ_i(τ) dτ · d_{n-i}   (Lagrange on the σ nodes)

with the warm-up order ``k = min(K, n + 1)`` (AB1 → AB2 → …; no Runge–Kutta start, spec §3.7).

Methods (spec §3, §4.3): ``ddim`` (Euler on D_total), ``plms2``/``plms4`` (official PLMS on the full
field: Heun first step, AB_K, Euler last step), ``ltsp2``/``ltsp4``, ``stsp2``/``stsp4``.  The pure
function also accepts the orders 1–4 of each family (``ltsp1`` … ``plms3``); the node offers
:data:`METHODS`.

Model calls.  ``model(x, sigma_batch, **extra_args)`` is an ordinary k-diffusion denoiser that
returns the FINAL (guided, post-CFG) x0 prediction.  The sampler obtains the other pieces through

* the **split probe** protocol (``split_term='cfg_delta'``), see :class:`SplitProbe`:
  ``probe.base_prediction(denoised, split_base) -> D_b`` gives the base prediction of the model call
  that just returned ``denoised``; ``G := denoised - D_b`` (so RescaleCFG-like patches stay in G).
  Optional ``probe.predict_base(x, sigma, split_base, **extra_args) -> D_b`` is a base-only call
  (cheaper sequential mode).  If ``model`` itself has ``base_prediction`` it is its own probe.
* the **GUIDANCE** protocol (``split_term='gradient'``), see :class:`Guidance`:
  ``guidance(x, sigma, denoised) -> G`` (x0-space displacement), times ``guidance_scale``.

Cost (N steps, N0 = steps that end at σ > 0, i.e. N-1 when the sigmas end in 0, else N).
"model" = one call of ``model`` (2 UNet passes with CFG), "base" = one base-only evaluation
(``probe.predict_base``; a full model call when the probe has none), "guid" = one guidance call.

    ============  ========================  ===========================  ============================
    method        split_term='none'         'cfg_delta'                  'gradient'
    ============  ========================  ===========================  ============================
    ddim          N model                   N model                      N model + N guid
    plmsK (heun)  N+1 model                 N+1 model                    N+1 model + N+1 guid
    ltspK shared  N model                   N model                      N model + N guid
    ltspK seq.    N model                   N model + N base             N model + N guid  (*)
    stspK seq.    N model                   (N+N0) model + N base        N model + (N+N0) guid  (**)
    ============  ========================  ===========================  ============================

    (*)  +N model calls when the guidance has ``needs_denoised=True`` (it needs D_b at x_n).
    (**) +(N+N0) model calls when the guidance has ``needs_denoised=True``.
    ``plms_start='euler'`` saves the extra first-step call (N model).  ``guidance_scale=0`` makes no
    guidance calls.  The official STSP also evaluates the end half step at σ_{N}=0 (with σ(τ=0));
    this port skips that negligible update (spec §4.3), so STSP makes 2N-1, not 2N, guidance calls
    when the sigmas end in 0.
"""
from __future__ import annotations

import math
import numbers
import re
import warnings
from dataclasses import dataclass
from typing import Any, Callable, Dict, List, Optional, Sequence, Tuple

import torch

from .common import DiscreteSchedule, batch_sigma, check_sigmas
from .worlds.mixture import GaussianMixture

__all__ = [
    "METHODS", "OPTION_CHOICES", "DEFAULT_OPTIONS", "SplitConfig", "parse_method", "min_steps",
    "validate_split_options", "validate_guidance", "validate_probe", "nfe_per_run",
    "ab_coefficients", "sample_split", "SAMPLERS",
    "sample_ddim", "sample_plms2", "sample_plms4", "sample_ltsp2", "sample_ltsp4", "sample_stsp2", "sample_stsp4",
    "SplitProbe", "CFGDenoiser", "GuidedDenoiser", "Guidance",
    "respaced_timesteps", "split_respace_sigmas", "LinearBetaSchedule",
    "GuidedMixtureProblem", "MixtureClassifierGuidance", "moment_w2", "sliced_w2", "rmse",
]

# --------------------------------------------------------------------------------------------
# Options and validation (callable before any model work)
# --------------------------------------------------------------------------------------------

#: The seven methods of the paper's code, as offered by the node (spec §4.3, §5.4).
METHODS: Tuple[str, ...] = ("ltsp4", "ltsp2", "stsp4", "stsp2", "plms4", "plms2", "ddim")

#: Allowed values of every choice option (first = default, except where noted in DEFAULT_OPTIONS).
OPTION_CHOICES: Dict[str, Tuple[str, ...]] = {
    "split_term": ("cfg_delta", "gradient", "none"),
    "split_base": ("cond", "uncond"),
    "eval_mode": ("auto", "shared", "sequential"),
    "ab_coeffs": ("fixed", "variable"),
    "final_step": ("auto", "ab", "denoised"),
    "stsp_end_half": ("clean", "faithful"),
    "plms_start": ("heun", "euler"),
}

DEFAULT_OPTIONS: Dict[str, Any] = {
    "split_term": "cfg_delta",   # spec §5.4 default; needs a split probe for ltsp/stsp
    "split_base": "cond",        # D_b = cond prediction, G = D_cfg - D_cond (spec §5.2)
    "eval_mode": "auto",         # shared for ltsp + cfg_delta, sequential otherwise
    "ab_coeffs": "fixed",        # the paper's constant AB weights
    "final_step": "auto",        # official: 'ab' for ltsp/stsp, 'denoised' (Euler end) for plms/ddim
    "stsp_end_half": "clean",    # coefficient h/(2σ_{n+1}); 'faithful' = official midpoint form
    "plms_start": "heun",        # official pseudo improved Euler first step
    "guidance": None,            # GUIDANCE object for split_term='gradient'
    "guidance_scale": 1.0,       # multiplies G of the GUIDANCE object
    "clamp_denoised": False,     # clamp D_b to [-1, 1] (pixel-space ADM parity only)
    "split_probe": None,         # SplitProbe-like object; default: the model if it has base_prediction
}

_METHOD_RE = re.compile(r"^(ddim|plms|ltsp|stsp)([1-4]?)$")


def _choices(values: Sequence[str]) -> str:
    return ", ".join(repr(v) for v in values)


def parse_method(method) -> Tuple[str, int]:
    """``'ltsp4' -> ('ltsp', 4)``; ``'ddim' -> ('ddim', 1)``.  Orders 1–4 are accepted per family."""
    m = _METHOD_RE.match(method) if isinstance(method, str) else None
    if m is None or (m.group(1) == "ddim" and m.group(2) not in ("", "1")) or (m.group(1) != "ddim" and not m.group(2)):
        raise ValueError(f"method={method!r} is not a split-sampler method; allowed: {_choices(METHODS)} "
                         f"(the pure sampler also takes ltspK/stspK/plmsK with K = 1..4)")
    family = m.group(1)
    return family, (1 if family == "ddim" else int(m.group(2)))


def min_steps(method: str) -> int:
    """Fewest steps that complete the method's warm-up and use its full order at least once.

    ltspK/stspK: AB1 … AB_{K-1} warm-up + one AB_K step = K steps.  plmsK: Heun start, AB2 … AB_K,
    Euler end = K + 1 steps.  ddim: 1 step.  (spec §3.4, §3.7)
    """
    family, order = parse_method(method)
    return order + 1 if family == "plms" else order


@dataclass(frozen=True)
class SplitConfig:
    """Validated, resolved options (``auto`` values replaced by what actually runs)."""

    method: str
    family: str            # 'ddim' | 'plms' | 'ltsp' | 'stsp'
    order: int             # K
    split_term: str        # 'cfg_delta' | 'gradient' | 'none'
    split_base: str
    eval_mode: str         # 'shared' | 'sequential'
    ab_coeffs: str
    final_step: str        # 'ab' | 'denoised'
    stsp_end_half: str
    plms_start: str
    guidance: Any
    guidance_scale: float
    clamp_denoised: bool
    split_probe: Any

    @property
    def splits(self) -> bool:
        """True for the splitting families (ltsp/stsp); ddim/plms integrate the full field."""
        return self.family in ("ltsp", "stsp")


def validate_guidance(guidance) -> None:
    """Check a GUIDANCE object (see :class:`Guidance`); raise ValueError naming what is allowed."""
    if guidance is None or isinstance(guidance, (torch.Tensor, numbers.Number, str, bytes)) or not callable(guidance):
        raise ValueError(f"guidance must be a GUIDANCE object: a callable guidance(x, sigma, denoised) -> G "
                         f"returning an x0-space displacement shaped like x; got {type(guidance).__name__}")
    needs = getattr(guidance, "needs_denoised", True)
    if not isinstance(needs, bool):
        raise ValueError(f"guidance.needs_denoised must be a bool (True: pass D_b(x, sigma); False: pass None); "
                         f"got {type(needs).__name__}")


def validate_probe(probe) -> None:
    """Check a split probe (see :class:`SplitProbe`); raise ValueError naming what is allowed."""
    if not callable(getattr(probe, "base_prediction", None)):
        raise ValueError(f"split_probe must provide base_prediction(denoised, split_base) -> Tensor "
                         f"(see split.SplitProbe); got {type(probe).__name__}")
    pb = getattr(probe, "predict_base", None)
    if pb is not None and not callable(pb):
        raise ValueError("split_probe.predict_base must be None or a callable "
                         "predict_base(x, sigma, split_base, **extra_args)")


def _check_scale(name: str, value) -> float:
    if isinstance(value, bool) or not isinstance(value, numbers.Real) or not math.isfinite(float(value)):
        raise ValueError(f"{name} must be a finite number >= 0; got {value!r}")
    if value < 0:
        raise ValueError(f"{name} must be >= 0 (negative scales are not allowed); got {value!r}")
    return float(value)


def validate_split_options(method: str = "ltsp4", steps: Optional[int] = None, *, cfg=None, model=None,
                           **options) -> SplitConfig:
    """Validate and resolve the split-sampler options; raise ValueError before any model work.

    ``steps``: number of sampling steps (``len(sigmas) - 1``), checked against :func:`min_steps`.
    ``cfg``: optional CFG scale of the caller (checked for >= 0 only).  ``model``: used to find a
    default probe (a model with ``base_prediction``).  Other keywords: :data:`DEFAULT_OPTIONS`.
    """
    family, order = parse_method(method)
    unknown = sorted(set(options) - set(DEFAULT_OPTIONS))
    if unknown:
        raise ValueError(f"unknown split-sampler option(s) {_choices(unknown)}; allowed: {_choices(DEFAULT_OPTIONS)}")
    opts = {**DEFAULT_OPTIONS, **options}
    for name, allowed in OPTION_CHOICES.items():
        if opts[name] not in allowed:
            raise ValueError(f"{name}={opts[name]!r} is not allowed; allowed: {_choices(allowed)}")
    scale = _check_scale("guidance_scale", opts["guidance_scale"])
    if cfg is not None:
        _check_scale("cfg", cfg)
    if steps is not None:
        if isinstance(steps, bool) or not isinstance(steps, numbers.Integral):
            raise ValueError(f"steps must be an integer; got {steps!r}")
        need = min_steps(method)
        if steps < need:
            if family == "plms":
                warm = f"Heun first step, AB2..AB{order}, Euler last step"
            elif order > 1:
                warm = f"Adams-Bashforth warm-up AB1..AB{order - 1} plus one AB{order} step"
            else:
                warm = "one step"
            raise ValueError(f"steps={steps} is too few for method {method!r}: it needs at least {need} steps "
                             f"({warm}); use more steps or a lower-order method")

    split_term, guidance = opts["split_term"], opts["guidance"]
    if split_term == "gradient":
        if guidance is None:
            raise ValueError("split_term='gradient' needs a guidance object "
                             "(GUIDANCE: guidance(x, sigma, denoised) -> G)")
        validate_guidance(guidance)
    elif guidance is not None:
        raise ValueError(f"guidance is only used with split_term='gradient'; got split_term={split_term!r} "
                         f"(allowed with guidance: 'gradient')")

    probe = opts["split_probe"]
    if probe is None and model is not None and callable(getattr(model, "base_prediction", None)):
        probe = model
    if probe is not None:
        validate_probe(probe)
    if split_term == "cfg_delta" and probe is None and (family in ("ltsp", "stsp") or opts["clamp_denoised"]):
        raise ValueError(f"split_term='cfg_delta' with method {method!r} needs a split_probe (an object with "
                         f"base_prediction(denoised, split_base)); pass split_probe=..., or use "
                         f"split_term='none' or 'gradient'")
    if not isinstance(opts["clamp_denoised"], bool):
        raise ValueError(f"clamp_denoised must be a bool; got {opts['clamp_denoised']!r}")

    eval_mode = opts["eval_mode"]
    if family == "stsp" and eval_mode == "shared":
        warnings.warn(f"eval_mode='shared' is not defined for Strang splitting; {method!r} runs as "
                      f"ltsp{order} in shared mode (spec §5.4)", stacklevel=3)
        family, method = "ltsp", f"ltsp{order}"
    if eval_mode == "auto":
        eval_mode = "shared" if (split_term == "cfg_delta" and family == "ltsp") else "sequential"
    if split_term == "none" or family in ("ddim", "plms"):
        eval_mode = "shared"      # one evaluation per step in any case

    final_step = opts["final_step"]
    if final_step == "auto":
        final_step = "ab" if family in ("ltsp", "stsp") else "denoised"

    return SplitConfig(method=method, family=family, order=order, split_term=split_term,
                       split_base=opts["split_base"], eval_mode=eval_mode, ab_coeffs=opts["ab_coeffs"],
                       final_step=final_step, stsp_end_half=opts["stsp_end_half"],
                       plms_start=opts["plms_start"], guidance=guidance, guidance_scale=scale,
                       clamp_denoised=opts["clamp_denoised"], split_probe=probe)


def nfe_per_run(method: str, steps: int, ends_in_zero: bool = True, **options) -> Dict[str, int]:
    """Model / base-only / guidance call counts of one run (the table in the module docstring).

    Returns ``{'model': ..., 'base': ..., 'guidance': ...}``; ``base`` counts base-only calls
    (only made when the probe has ``predict_base``; pass ``base_only=True`` to assume one).
    """
    base_only = bool(options.pop("base_only", False))
    cfg = validate_split_options(method, steps, **options)
    n, n0 = steps, (steps - 1 if ends_in_zero else steps)
    guided = cfg.split_term != "none" and not (cfg.split_term == "gradient" and cfg.guidance_scale == 0)
    grad = cfg.split_term == "gradient" and guided
    needs_d = grad and getattr(cfg.guidance, "needs_denoised", True)
    if cfg.family in ("ddim", "plms"):
        heun = cfg.family == "plms" and cfg.order > 1 and cfg.plms_start == "heun" and n0 > 0
        m = n + (1 if heun else 0)
        return {"model": m, "base": 0, "guidance": m if grad else 0}
    if not guided or cfg.eval_mode == "shared":
        return {"model": n, "base": 0, "guidance": n if grad else 0}
    n_guide = n + (n0 if cfg.family == "stsp" else 0)        # condition evaluations
    if grad:
        return {"model": n + (n_guide if needs_d else 0), "base": 0, "guidance": n_guide}
    return {"model": n_guide + (0 if base_only else n), "base": n if base_only else 0, "guidance": 0}


# --------------------------------------------------------------------------------------------
# Protocols and analytic reference implementations
# --------------------------------------------------------------------------------------------

class SplitProbe:
    """Reference implementation of the **split probe** protocol (spec §5.5).

    Protocol (duck-typed; what the sampler calls):

    * ``base_prediction(denoised, split_base) -> Tensor`` — the base prediction D_b (x0 space,
      shape of x) of the model call that just returned ``denoised`` (the final, post-CFG x0).
      ``split_base`` is ``'cond'`` or ``'uncond'``.  The sampler sets ``G = denoised - D_b``.
      (A ComfyUI implementation with a ``denoise_mask`` should blend D_b as the model output is
      blended, so that G vanishes in the kept region.)
    * optional ``predict_base(x, sigma, split_base, **extra_args) -> Tensor`` — a base-only
      evaluation (one cond or uncond pass instead of a full CFG call), used in sequential mode.

    This class records the pieces of each call: ComfyUI's post-CFG hook can be
    :meth:`post_cfg_function` itself (``set_model_options_post_cfg_function(model_options,
    probe.post_cfg_function, disable_cfg1_optimization=split_base == 'uncond')``).
    """

    predict_base = None

    def __init__(self):
        self.last: Dict[str, Optional[torch.Tensor]] = {}
        self.records = 0

    def record(self, denoised, cond_denoised=None, uncond_denoised=None) -> None:
        self.last = {"denoised": denoised, "cond_denoised": cond_denoised, "uncond_denoised": uncond_denoised}
        self.records += 1

    def post_cfg_function(self, args: Dict[str, Any]):
        """ComfyUI ``sampler_post_cfg_function``: record and return ``args['denoised']`` unchanged."""
        self.record(args["denoised"], args.get("cond_denoised"), args.get("uncond_denoised"))
        return args["denoised"]

    def base_prediction(self, denoised, split_base: str):
        if not self.last:
            raise RuntimeError("split probe: no model call was recorded (is the post-CFG hook installed?)")
        key = "cond_denoised" if split_base == "cond" else "uncond_denoised"
        base = self.last.get(key)
        if base is None:
            raise RuntimeError(f"split probe: the last model call recorded no {key} (split_base={split_base!r}); "
                               f"with split_base='uncond' the cfg=1 optimisation must be disabled")
        return base


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


class Guidance:
    """Base class documenting the **GUIDANCE** protocol (subclassing is optional; duck typing works).

    ``guidance(x, sigma, denoised) -> G``:

    * ``x``: the state, shape ``[B, ...]`` (the sampler's work dtype, fp32 or fp64);
    * ``sigma``: tensor ``[B]`` (the noise level, like the model's sigma argument);
    * ``denoised``: the base prediction D_b(x, sigma), shape of x, or ``None`` when
      ``needs_denoised`` is False (then no extra model call is made for it);
    * returns ``G``, shape of x: the x0-space displacement ``D_total - D_b``, e.g. a classifier
      ``s·σ²·∇_x log p(c|x, σ)`` or an x0-loss ``-λ·σ²·∇_{x0} L(D_b)`` (spec §5.2).  The sampler
      multiplies it by ``guidance_scale`` and applies it with Euler: ``x -= (Δσ/σ_eval)·G``.

    The sampler calls it with autograd enabled and outside ``torch.inference_mode`` on fresh
    (cloned) inputs, so ``x.requires_grad_()`` + ``torch.autograd.grad`` work inside; the result
    is detached.
    """

    needs_denoised: bool = True

    def __call__(self, x, sigma, denoised):  # pragma: no cover - protocol documentation
        raise NotImplementedError


# --------------------------------------------------------------------------------------------
# Adams–Bashforth coefficients (spec §3.4, §4.2)
# --------------------------------------------------------------------------------------------

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
        poly = [1.0]                                   # ℓ_i(u) = Π_{m≠i} (u - u_m)/(u_i - u_m), lowest degree first
        for m in range(k):
            if m != i:
                poly = _poly_mul(poly, [-u[m] / (u[i] - u[m]), 1.0 / (u[i] - u[m])])
        coeffs.append(h * sum(a / (p + 1) for p, a in enumerate(poly)))   # h ∫_0^1 ℓ_i(u) du
    return coeffs


def _ab_increment(hist: List[torch.Tensor], nodes: List[float], sigma_next: float, order: int, kind: str):
    """Σ_i c_i d_{n-i} over the newest ``min(order, len(hist))`` entries (warm-up order, spec §3.7)."""
    k = min(order, len(hist))
    c = ab_coefficients(nodes[::-1][:k], sigma_next, kind)
    out = hist[-1] * c[0]
    for i in range(1, k):
        out = out + hist[-1 - i] * c[i]
    return out


def _push(hist: List[torch.Tensor], nodes: List[float], d: torch.Tensor, sigma: float, order: int) -> None:
    hist.append(d)
    nodes.append(sigma)
    while len(hist) > order:        # keep the K newest (the official pop after mixing, spec §3.4)
        hist.pop(0)
        nodes.pop(0)


# --------------------------------------------------------------------------------------------
# Field evaluations: the only place that calls the model, the probe and the guidance
# --------------------------------------------------------------------------------------------

class _Fields:
    """Evaluates D_b and G at a point, in the work dtype, per the resolved config."""

    def __init__(self, model, cfg: SplitConfig, extra_args: dict, in_dtype: torch.dtype):
        self.model, self.cfg, self.extra_args, self.in_dtype = model, cfg, extra_args, in_dtype
        self.probe = cfg.split_probe if cfg.split_term == "cfg_delta" else None
        if cfg.split_term == "cfg_delta":
            self.guided = self.probe is not None
        elif cfg.split_term == "gradient":
            self.guided = cfg.guidance_scale != 0.0
        else:
            self.guided = False

    def _call_model(self, x, sigma: float):
        return self.model(x.to(self.in_dtype), batch_sigma(x, sigma), **self.extra_args).to(x.dtype)

    def _clamp(self, d):
        return d.clamp(-1.0, 1.0) if self.cfg.clamp_denoised else d

    def _probe_base(self, x, denoised):
        base = self.probe.base_prediction(denoised.to(self.in_dtype), self.cfg.split_base)
        return base.to(x.dtype)

    def _guidance(self, x, sigma: float, denoised):
        g = self.cfg.guidance
        with torch.inference_mode(False), torch.enable_grad():
            xg = x.detach().clone()
            dg = None if denoised is None else denoised.detach().clone()
            out = g(xg, batch_sigma(xg, sigma), dg)
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
            return db, self._guidance(x, sigma, db if getattr(self.cfg.guidance, "needs_denoised", True) else None)
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
        if self.probe is not None:
            pb = getattr(self.probe, "predict_base", None)
            if callable(pb):
                out = pb(x.to(self.in_dtype), batch_sigma(x, sigma), self.cfg.split_base, **self.extra_args)
                return self._clamp(out.to(x.dtype))
            return self._clamp(self._probe_base(x, self._call_model(x, sigma)))
        return self._clamp(self._call_model(x, sigma))

    def guide(self, x, sigma: float) -> torch.Tensor:
        """G at (x, σ) for a condition sub-step (sequential mode)."""
        if self.cfg.split_term == "gradient":
            needs = getattr(self.cfg.guidance, "needs_denoised", True)
            db = self._clamp(self._call_model(x, sigma)) if needs else None
            return self._guidance(x, sigma, db)
        d = self._call_model(x, sigma)
        return d - self._probe_base(x, d)


# --------------------------------------------------------------------------------------------
# The integrators
# --------------------------------------------------------------------------------------------

def _stsp_end_coeff(h: float, s: float, s_next: float, kind: str) -> float:
    """Coefficient c of the Strang end half step ``x -= c·G(x'', σ_{n+1})`` (spec §3.6).

    clean: ``h/(2σ_{n+1})``.  faithful (official, EPS/VP models): ``(h/2)·σ_h·sqrt((1+σ_{n+1}²)/(1+σ_h²))/σ_{n+1}²``
    with the midpoint ``σ_h = (σ_n + σ_{n+1})/2``.
    """
    if kind == "clean":
        return h / (2 * s_next)
    sh = (s + s_next) / 2
    return (h / 2) * sh * math.sqrt((1 + s_next ** 2) / (1 + sh ** 2)) / s_next ** 2


def _split_loop(f: _Fields, x, sig: List[float], cfg: SplitConfig, emit):
    """LTSP / STSP (spec §3.5–3.7, §4.3) in ``sequential`` or ``shared`` evaluation (spec §5.3)."""
    strang, shared = cfg.family == "stsp", cfg.eval_mode == "shared"
    hist: List[torch.Tensor] = []
    nodes: List[float] = []
    for n in range(len(sig) - 1):
        s, s_next = sig[n], sig[n + 1]
        h = s_next - s
        x_n = x
        if shared:                                      # one call at x_n gives D_b and G
            db, g = f.full(x, s)
        else:
            g = None
            if f.guided:                                # condition sub-step: Euler, full (LT) or half (Strang)
                g = f.guide(x, s)
                x = x - ((h / 2 if strang else h) / s) * g
            db = f.base(x, s)                           # base field at the post-condition point x'
        _push(hist, nodes, (x - db) / s, s, cfg.order)
        if s_next == 0 and cfg.final_step == "denoised":
            x = db if (g is None or not shared) else db + g
        else:
            x = x + _ab_increment(hist, nodes, s_next, cfg.order, cfg.ab_coeffs)
            if shared and g is not None:
                x = x - (h / s) * g                     # additive Lie–Trotter: Euler on -G/σ from x_n
        if strang and not shared and f.guided and s_next > 0:   # Strang end half step at (x'', σ_{n+1})
            x = x - _stsp_end_coeff(h, s, s_next, cfg.stsp_end_half) * f.guide(x, s_next)
        emit(n, x_n, s, db if (g is None or not shared) else db + g)
    return x


def _plms_loop(f: _Fields, x, sig: List[float], cfg: SplitConfig, emit):
    """ddim (K = 1) and official plmsK on the full field D_total (spec §3.3, §3.4).

    First step: pseudo improved Euler (= Heun in σ) when ``plms_start='heun'`` and K > 1; then
    AB_k with k = min(K, history); last step to σ = 0: ``D_total`` (Euler) with ``final_step='denoised'``.
    """
    hist: List[torch.Tensor] = []
    nodes: List[float] = []
    for n in range(len(sig) - 1):
        s, s_next = sig[n], sig[n + 1]
        h = s_next - s
        d_total = f.total(x, s)
        d = (x - d_total) / s
        if n == 0 and cfg.order > 1 and cfg.plms_start == "heun" and s_next > 0:
            x_pred = x + h * d
            d2 = (x_pred - f.total(x_pred, s_next)) / s_next
            x_new = x + h * (d + d2) / 2
            _push(hist, nodes, d, s, cfg.order)       # history starts with ε̂(x_0) only
        else:
            _push(hist, nodes, d, s, cfg.order)
            if s_next == 0 and cfg.final_step == "denoised":
                x_new = d_total
            else:
                x_new = x + _ab_increment(hist, nodes, s_next, cfg.order, cfg.ab_coeffs)
        emit(n, x, s, d_total)
        x = x_new
    return x


@torch.no_grad()
def sample_split(model, x, sigmas, extra_args=None, callback=None, disable=None, method: str = "ltsp4", **options):
    """Operator-splitting guided sampler, k-diffusion contract (spec §4.3, §5.3).

    ``model(x, sigma_batch, **extra_args) -> D_total`` (the final guided x0).  ``method``: one of
    :data:`METHODS` (also ltspK/stspK/plmsK, K = 1..4).  Options (:data:`OPTION_CHOICES`,
    :data:`DEFAULT_OPTIONS`):

    * ``split_term``: ``cfg_delta`` (G = D_total - D_b from the split probe), ``gradient``
      (G = guidance_scale · guidance(x, σ, D_b), D_b = model output), ``none`` (G ≡ 0: ltsp/stsp
      become iPNDM-K, plms the official PLMS, ddim Euler).
    * ``split_base`` (cfg_delta): ``cond`` or ``uncond``.
    * ``eval_mode``: ``shared`` (one call at x_n: ``x_{n+1} = x_n + AB_K - (h/σ_n)·G_n``),
      ``sequential`` (paper: each sub-step evaluates at its own point), ``auto`` (shared for
      ltsp + cfg_delta, else sequential).  stsp + shared warns and runs ltsp shared.
    * ``ab_coeffs``: ``fixed`` | ``variable``;  ``final_step``: ``auto`` | ``ab`` | ``denoised``;
      ``stsp_end_half``: ``clean`` | ``faithful``;  ``plms_start``: ``heun`` | ``euler``;
      ``guidance`` (GUIDANCE object), ``guidance_scale`` (>= 0), ``clamp_denoised`` (bool),
      ``split_probe`` (defaults to ``model`` when it has ``base_prediction``).

    Validation runs first (ValueError).  Arithmetic is fp32 (fp64 for fp64 input); the model sees x
    in the input dtype and the result is returned in it.  The multistep history starts afresh on
    every call.  Callback per step: ``{'x', 'i', 'sigma', 'sigma_hat', 'denoised'}`` with x the
    state at the start of step i and denoised the x0 estimate of that step.
    """
    sig = check_sigmas(sigmas)
    cfg = validate_split_options(method, len(sig) - 1, model=model, **options)
    extra_args = {} if extra_args is None else extra_args
    in_dtype = x.dtype
    work = torch.float64 if in_dtype == torch.float64 else torch.float32
    f = _Fields(model, cfg, extra_args, in_dtype)

    def emit(i, x_i, s, denoised):
        if callback is not None:
            callback({"x": x_i.to(in_dtype), "i": i, "sigma": sigmas[i], "sigma_hat": sigmas[i],
                      "denoised": denoised.to(in_dtype)})

    loop = _split_loop if cfg.splits else _plms_loop
    return loop(f, x.to(work), sig, cfg, emit).to(in_dtype)


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


# --------------------------------------------------------------------------------------------
# Timestep respacing: the paper's step grid (spec §3.2, §5.4, P8)
# --------------------------------------------------------------------------------------------

def respaced_timesteps(num_timesteps: int, steps: int) -> List[int]:
    """guided-diffusion ``space_timesteps(T, "N")`` with one section: ``round(i·(T-1)/(N-1))``.

    The index is accumulated by repeated float addition and rounded half-to-even (Python
    ``round``), exactly as the official respacing; ascending, includes 0 and T-1.
    """
    if isinstance(steps, bool) or not isinstance(steps, numbers.Integral) or steps < 2:
        raise ValueError(f"steps must be an integer >= 2 for the respaced grid; got {steps!r}")
    if steps > num_timesteps:
        raise ValueError(f"steps={steps} exceeds the model's {num_timesteps} timesteps")
    stride = (num_timesteps - 1) / (steps - 1)
    taken, cur = [], 0.0
    for _ in range(steps):
        taken.append(round(cur))
        cur += stride
    return taken


def split_respace_sigmas(model_sampling, steps: int, denoise: float = 1.0, dtype=torch.float32) -> torch.Tensor:
    """Sigmas of the paper's respaced grid for a ``SplitRespace`` SIGMAS node (spec §3.2, §5.4).

    ``model_sampling``: ComfyUI's model_sampling interface (``sigmas`` buffer, or ``sigma(t)`` /
    ``timestep(sigma)`` / ``sigma_min`` / ``sigma_max``).  Returns ``steps + 1`` descending sigmas
    ``σ(τ_{N-1}), …, σ(τ_0), 0`` with ``σ(τ) = model_sampling.sigmas[τ]`` (first = σ(T-1),
    second-to-last = σ(0)).  Without a ``sigmas`` buffer, τ runs from ``timestep(sigma_min)`` to
    ``timestep(sigma_max)`` through ``sigma(τ)``.  ``denoise < 1`` keeps the last ``steps + 1``
    sigmas of a ``int(steps/denoise)``-step grid, like ComfyUI's BasicScheduler.
    """
    if isinstance(denoise, bool) or not isinstance(denoise, numbers.Real) or not 0.0 < denoise <= 1.0:
        raise ValueError(f"denoise must be in (0, 1]; got {denoise!r}")
    if isinstance(steps, bool) or not isinstance(steps, numbers.Integral) or steps < 1:
        raise ValueError(f"steps must be an integer >= 1; got {steps!r}")
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
    sig = torch.cat([sig.reshape(-1), sig.new_zeros(1)])
    return sig[-(steps + 1):].to(dtype)


class LinearBetaSchedule(DiscreteSchedule):
    """ADM / guided-diffusion "linear" β schedule (β from 1e-4 to 0.02, T = 1000): the paper's
    ImageNet models (spec §3.1, §3.2).  Same interface as ``DiscreteSchedule``; σ(999) = 157.41."""

    def __init__(self, beta_start: float = 1e-4, beta_end: float = 0.02, timesteps: int = 1000, dtype=torch.float64):
        super().__init__(timesteps=timesteps, dtype=dtype)
        betas = torch.linspace(beta_start, beta_end, timesteps, dtype=torch.float64)
        alphas_cumprod = torch.cumprod(1.0 - betas, dim=0)
        sigmas = ((1 - alphas_cumprod) / alphas_cumprod) ** 0.5
        self.register_buffer("alphas_cumprod", alphas_cumprod.to(dtype))
        self.register_buffer("sigmas", sigmas.to(dtype))
        self.register_buffer("log_sigmas", sigmas.log().to(dtype))


# --------------------------------------------------------------------------------------------
# The analytic test problem of spec §7.3 (tests, benchmark, demos)
# --------------------------------------------------------------------------------------------

class GuidedMixtureProblem:
    """Classifier-guided 2-D Gaussian mixture with closed forms (spec §7.3).

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
        """``x = sqrt(1 + σ_max²)·z``, z ~ N(0, I) (spec §7.3), float64."""
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
        """Exact solution at s = 1: ``μ_c + (x - μ_c)·sqrt((s_c²+σ²)/(s_c²+σ_max²))`` (spec §7.3)."""
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


def rmse(a, b) -> float:
    """Coupled RMSE ``sqrt(mean_i |a_i - b_i|²)`` over samples (rows)."""
    return float(((a.to(torch.float64) - b.to(torch.float64)) ** 2).sum(-1).mean().sqrt())


def moment_w2(a, b) -> float:
    """Gaussian-moment W2 proxy ``sqrt(|Δmean|² + |Δstd|²)`` of the prototype (spec §7.3 (ii))."""
    a, b = a.to(torch.float64), b.to(torch.float64)
    return float((((a.mean(0) - b.mean(0)) ** 2).sum() + ((a.std(0) - b.std(0)) ** 2).sum()).sqrt())


def sliced_w2(a, b, n_proj: int = 128, seed: int = 0) -> float:
    """Sliced 2-Wasserstein distance (equal sample counts; exact 1-D W2 per random direction)."""
    a, b = a.to(torch.float64), b.to(torch.float64)
    d = torch.randn(a.shape[1], n_proj, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)
    d = d / d.norm(dim=0, keepdim=True)
    pa, pb = (a @ d).sort(0).values, (b @ d).sort(0).values
    return float(((pa - pb) ** 2).mean().sqrt())
