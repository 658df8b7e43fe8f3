"""What a split run can be asked to do, and what it then does.

Vocabulary: the caller passes *options* (keywords, defaults in :data:`DEFAULTS`);
:func:`validate_split_options` checks them all at once, before any model work, and resolves them
into a :class:`SplitConfig` (``auto`` replaced by what actually runs).  The sampler only reads the
config.  :func:`nfe_per_run` gives the model / base-only / guidance calls a run will make.
"""
from __future__ import annotations

import numbers
import re
import warnings
from dataclasses import dataclass
from typing import Any, Dict, Optional, Tuple

import torch

from ..checks import check_bool, check_choice, check_float, check_int

__all__ = ["METHODS", "OPTION_CHOICES", "DEFAULTS", "GRID_DEFAULTS", "SplitConfig", "parse_method", "min_steps", "check_steps",
           "validate_split_options", "validate_guidance", "validate_probe", "nfe_per_run"]

#: The seven methods of the paper's code, as the node offers them; the first is the default.
METHODS: Tuple[str, ...] = ("ltsp4", "ltsp2", "stsp4", "stsp2", "plms4", "plms2", "ddim")

#: Allowed values of every choice option; the first one is the default.
OPTION_CHOICES: Dict[str, Tuple[str, ...]] = {
    "split_term": ("cfg_delta", "gradient", "none"),   # what G is: CFG delta, a GUIDANCE object, nothing
    "split_base": ("cond", "uncond"),                  # D_b for cfg_delta; cond makes cfg 1 exactly iPNDM
    "eval_mode": ("auto", "shared", "sequential"),     # auto: see validate_split_options
    "ab_coeffs": ("fixed", "variable"),                # the paper's constant AB weights, or Lagrange on σ
    "final_step": ("auto", "ab", "denoised"),          # auto: 'ab' for ltsp/stsp, 'denoised' for plms/ddim
    "stsp_end_half": ("clean", "faithful"),            # end half step h/(2σ_{n+1}), or the official VP form
    "plms_start": ("heun", "euler"),                   # the official pseudo improved Euler first step
}

#: The default of every option.
DEFAULTS: Dict[str, Any] = {
    **{name: allowed[0] for name, allowed in OPTION_CHOICES.items()},
    "guidance": None,          # GUIDANCE object, for split_term='gradient'
    "guidance_scale": 1.0,     # multiplies the GUIDANCE object's G
    "clamp_denoised": False,   # clamp D_b to [-1, 1]: pixel-space ADM parity only
    "split_probe": None,       # split probe; default: the model itself when it has base_prediction
}

#: What differs from :data:`DEFAULTS` (the paper's) on a non-uniform σ grid, such as most schedulers
#: give: the fixed Adams-Bashforth weights are exact on a uniform grid only.  The nodes' defaults.
GRID_DEFAULTS: Dict[str, Any] = {**DEFAULTS, "ab_coeffs": "variable"}

_METHOD_RE = re.compile(r"^(ddim|plms|ltsp|stsp)([1-4]?)$")


def _choices(values) -> str:
    return ", ".join(repr(v) for v in values)


@dataclass(frozen=True)
class SplitConfig:
    """A validated run: every option resolved to what actually runs."""

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


def parse_method(method) -> Tuple[str, int]:
    """``'ltsp4' -> ('ltsp', 4)``; ``'ddim' -> ('ddim', 1)``.  Orders 1–4 are accepted per family."""
    m = _METHOD_RE.match(method) if isinstance(method, str) else None
    if m is None or (m.group(1) == "ddim" and m.group(2) not in ("", "1")) or (m.group(1) != "ddim" and not m.group(2)):
        raise ValueError(f"method must be one of {_choices(METHODS)} (the pure sampler also takes ltspK, stspK "
                         f"and plmsK with K = 1..4) (got {method!r})")
    family = m.group(1)
    return family, (1 if family == "ddim" else int(m.group(2)))


def min_steps(method: str) -> int:
    """Fewest steps that complete the method's warm-up and use its full order at least once.

    ltspK/stspK: AB1 … AB_{K-1} warm-up + one AB_K step = K steps.  plmsK: Heun start, AB2 … AB_K,
    Euler end = K + 1 steps.  ddim: 1 step.
    """
    family, order = parse_method(method)
    return order + 1 if family == "plms" else order


def check_steps(method: str, steps) -> None:
    """``steps`` (``len(sigmas) - 1``) is an integer >= 1.  Any count runs: while the history is
    shorter than the order, the multistep methods use the lower-order Adams-Bashforth warm-up
    (a short tail of a split schedule, a refiner pass or denoise < 1 works like ComfyUI's ipndm);
    :func:`min_steps` is the count from which the full order is used at least once."""
    parse_method(method)
    check_int("steps", steps, 1)


def validate_guidance(guidance) -> None:
    """Check a GUIDANCE object (see :class:`~.protocols.Guidance`); raise ValueError naming what is allowed."""
    if guidance is None or isinstance(guidance, (torch.Tensor, numbers.Number, str, bytes)) or not callable(guidance):
        raise ValueError(f"guidance must be a GUIDANCE object: a callable guidance(x, sigma, denoised) -> G "
                         f"returning an x0-space displacement shaped like x (got {type(guidance).__name__})")
    needs = getattr(guidance, "needs_denoised", True)
    if not isinstance(needs, bool):
        raise ValueError(f"guidance.needs_denoised must be a bool (True: pass D_b(x, sigma); False: pass None) "
                         f"(got {type(needs).__name__})")


def validate_probe(probe) -> None:
    """Check a split probe (see :class:`~.protocols.SplitProbe`); raise ValueError naming what is allowed."""
    if not callable(getattr(probe, "base_prediction", None)):
        raise ValueError(f"split_probe must provide base_prediction(denoised, split_base) -> Tensor "
                         f"(see SplitProbe) (got {type(probe).__name__})")
    pb = getattr(probe, "predict_base", None)
    if pb is not None and not callable(pb):
        raise ValueError(f"split_probe.predict_base must be None or a callable "
                         f"predict_base(x, sigma, split_base, **extra_args) (got {type(pb).__name__})")


def _check_fields(opts: Dict[str, Any], cfg) -> float:
    """The per-option checks; returns the guidance scale as a float."""
    for name, allowed in OPTION_CHOICES.items():
        check_choice(name, opts[name], allowed)
    scale = check_float("guidance_scale", opts["guidance_scale"], 0)
    if cfg is not None:
        check_float("cfg", cfg, 0)
    check_bool("clamp_denoised", opts["clamp_denoised"])
    return scale


def validate_split_options(method: str = METHODS[0], steps: Optional[int] = None, *, cfg=None, model=None,
                           **options) -> SplitConfig:
    """Check every option and the rules between them, before any model work; return the resolved config.

    ``steps``: number of sampling steps (``len(sigmas) - 1``), checked against :func:`min_steps` when
    given.  ``cfg``: optional CFG scale of the caller (checked for >= 0 only).  ``model``: used to find
    a default probe (a model with ``base_prediction``).  Other keywords: :data:`DEFAULTS`.
    Without an explicit ``split_term`` it follows the pieces given: ``gradient`` with a guidance,
    ``cfg_delta`` with a split probe, else ``none`` (a plain k-diffusion denoiser runs iPNDM/PLMS/DDIM).
    ``eval_mode='auto'`` runs the paper's sequential evaluation, except for ltsp with ``cfg_delta`` when the
    probe has no base-only call (``predict_base``): a sequential step would then cost a second guided
    call, so the step shares one.
    """
    family, order = parse_method(method)
    unknown = sorted(set(options) - set(DEFAULTS))
    if unknown:
        raise ValueError(f"unknown split-sampler option(s) {_choices(unknown)}; allowed: {_choices(DEFAULTS)}")
    opts = {**DEFAULTS, **options}
    scale = _check_fields(opts, cfg)
    if steps is not None:
        check_steps(method, steps)

    split_term, guidance = opts["split_term"], opts["guidance"]
    probe = opts["split_probe"]
    if probe is None and model is not None and callable(getattr(model, "base_prediction", None)):
        probe = model
    if "split_term" not in options:           # not chosen: what the given pieces allow
        split_term = "gradient" if guidance is not None else ("cfg_delta" if probe is not None else "none")
    if split_term == "gradient":
        if guidance is None:
            raise ValueError("split_term='gradient' needs a guidance object "
                             "(GUIDANCE: guidance(x, sigma, denoised) -> G)")
        validate_guidance(guidance)
    elif guidance is not None:
        raise ValueError(f"guidance is only used with split_term='gradient'; got split_term={split_term!r} "
                         f"(allowed with guidance: 'gradient')")

    if probe is not None:
        validate_probe(probe)
    if split_term == "cfg_delta" and probe is None and (family in ("ltsp", "stsp") or opts["clamp_denoised"]):
        raise ValueError(f"split_term='cfg_delta' with method {method!r} needs a split_probe (an object with "
                         f"base_prediction(denoised, split_base)); pass split_probe=..., or use "
                         f"split_term='none' or 'gradient'")

    eval_mode = opts["eval_mode"]
    if family == "stsp" and eval_mode == "shared":
        warnings.warn(f"eval_mode='shared' is not defined for Strang splitting (its second half step needs its "
                      f"own evaluation); {method!r} runs as ltsp{order} in shared mode", stacklevel=3)
        family, method = "ltsp", f"ltsp{order}"
    if eval_mode == "auto":
        # the paper's sequential evaluation, except where it would cost a second full guided call per
        # step: ltsp + cfg_delta without a base-only call (then the shared call gives both terms)
        base_only = probe is not None and callable(getattr(probe, "predict_base", None))
        cheap = split_term != "cfg_delta" or base_only or family != "ltsp"
        eval_mode = "sequential" if cheap else "shared"
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
    """Model / base-only / guidance call counts of one run: ``{'model': …, 'base': …, 'guidance': …}``.

    N steps, N0 = steps that end at σ > 0 (N-1 when the sigmas end in 0).  "model" = one call of
    ``model`` (2 UNet passes with CFG), "base" = one base-only call (``probe.predict_base``; pass
    ``base_only=True`` to assume the probe has one, else it is a full model call), "guid" = one
    guidance call:

    ============  ==============  ===========================  ============================
    method        'none'          'cfg_delta'                  'gradient'
    ============  ==============  ===========================  ============================
    ddim          N model         N model                      N model + N guid
    plmsK (heun)  N+1 model       N+1 model                    N+1 model + N+1 guid
    ltspK shared  N model         N model                      N model + N guid
    ltspK seq.    N model         N model + N base             N model + N guid  (*)
    stspK seq.    N model         (N+N0) model + N base        N model + (N+N0) guid  (**)
    ============  ==============  ===========================  ============================

    (*) +N model calls, (**) +(N+N0) model calls when the guidance has ``needs_denoised=True``.
    ``plms_start='euler'`` saves the extra first-step call; ``guidance_scale=0`` makes no guidance calls.
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
