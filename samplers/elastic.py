"""ElasticDiffusion (Haji-Ali, Balakrishnan, Ordonez, CVPR 2024) as a pure-torch sampler.

Re-implemented from ``shared/specs/elastic.md`` (cited as "spec §x"); no ComfyUI imports.

Every step composes a denoiser from two signals, and every model evaluation is exactly
``base x base`` latent pixels (spec §2.2, §3.2):

* **global class direction** ``G = D_c - D_u`` (x0 units, spec §3.1) evaluated on a *pixel-subsampled*
  reference of the whole canvas (long side = base, aspect kept, background-padded to base x base),
  re-estimated over ``R + 1`` resampling rounds and scattered back to full size (spec §2.3-§2.4);
* **local unconditional signal** ``L = D_u`` from base-size crops (window + context) stitched
  together (spec §2.5).

``D = L + cfg * G``; the step is Euler (= DDIM eta 0, spec §3.1).  With ``R > 0`` the step is redone
once from a re-noised point at ``cfg / 3`` ("repaint", spec §2.7), and during the first steps a
reduced-resolution guidance (RRG) term pulls x0 toward the reference's x0 (spec §2.8, §3.1).

Denoiser protocol
-----------------
The sampler never sees a model; it calls a *denoiser* ::

    denoiser(x, sigma, which, meta) -> x0

``x``      float tensor ``[N, C, base, base]`` in VE / k-diffusion space (``x = x0 + sigma * eps``);
``sigma``  tensor ``[N]`` (one sigma per row, all equal: what ComfyUI's ``calc_cond_batch`` wants);
``which``  list of N strings, ``"cond"`` or ``"uncond"`` (positive / negative conditioning);
``meta``   list of N :class:`RowMeta` (role, phase, sample, step, canvas/patch geometry; see there);
returns the x0 prediction ``[N, C, base, base]`` (any float dtype; used in fp32, or fp64 if x is fp64).

Row-order guarantees (so a ComfyUI guider can map rows to conds with ``repeat_to_batch_size``):

* a call holds rows of ONE role (``"reference"`` or ``"patch"``) and ONE phase (``"main"``/``"repaint"``);
* reference calls: the first half of the rows is ``"cond"``, the second half ``"uncond"``, and row
  ``k`` and row ``k + N/2`` carry the same input; inside each half rows run (round, sample) with the
  sample index fastest;
* patch calls: all rows ``"uncond"``, ordered (view, sample) with the sample fastest ("view-major");
* rows whose ``meta.content`` is smaller than base x base carry noised background around the content
  (the model's output there is discarded).

Options of :func:`sample_elastic` / :func:`build_plan` (validated by :func:`validate_elastic`)
-----------------------------------------------------------------------------------------------
===================  ==================================  =============================================
option               allowed                             default
===================  ==================================  =============================================
base                 int >= 1 (latent px, 64 SD1, 128    ``denoiser.base`` if present, else required
                     SDXL; see :func:`base_resolution`)
cfg                  finite float                        10.0 (official meaning: pass 2 uses cfg/3)
preset               ``"auto"`` | ``"custom"``           ``"auto"`` (fills R / W0 / RRG threshold
                                                         left as None from the spec §5.3 table)
resampling_steps     int >= 0 or None                    preset (custom: 0)
rrg_init_weight      float >= 0 or None                  preset (custom: 0)
rrg_min_weight       float >= 0 or None                  preset (custom: 10, the official constant)
new_p                float in (0, 1]                     0.3
cosine_scale         float >= 0                          10.0
rrg_stop_t           float in [0, 1]                     0.4
repaint              bool                                True
patch_size           int in [1, base]                    base // 2
view_batch_size      int >= 1                            16 (views per patch call)
ref_batch_size       int >= 0                            0 (= all resampling rounds in one call)
mode                 ``"clean"`` | ``"faithful"``        ``"clean"``
background           tensor [K, C] or [K, C, h, w]       None = zeros [1, C] (a constant latent)
max_factor           float >= 1 or None                  None (no limit in clean mode)
seed                 int                                 ``extra_args["seed"]``, else 0
===================  ==================================  =============================================

Modes (spec §2.3, §8)
---------------------
``clean`` (default): reference size round(side * base / long side); exact cell sampler (cells with
boundaries floor(j*H/h), any factor >= 1, the direction is scattered back to the very pixel that was
sampled, unfilled pixels take their own cell's value); P(new pick) = new_p exactly; windows of the
official count spread evenly, context = base - patch split with re-allocation at the borders (crops
are exactly base on axes >= base), overlaps cross-faded (feathered).  Runs at any size (1080^2,
1600x1200, 2000x1000, 1536^2 px on SDXL, > 2x).
``faithful``: the official behaviour where it matters for parity: its reference size formula, its
2x-upsample / keep-rows / 2x2-block sub-pixel map with the ``F.interpolate`` fill (misregistered at
non-integer factors), its restored write mask, the integer new-pick draw (30/101 for 0.3), the
"any of the 4" fallback, its windows (stride = patch, last window shifted, context (base-patch)//2
per side) with first-write-wins stitching.  Sizes above 2x or where the official code breaks
(1600x1200, 2000x1000, 1080^2 px on SDXL) raise ValueError.
Not copied in either mode (spec §2.11, §3.3.8): fp16 direction buffer, md5/global-RNG seeding, the
0.03 % off-by-one of ``undo_step`` (re-noise is exact: x' + sqrt(s_i^2 - s_{i+1}^2) xi), VAE posterior
sampling of the pads, the hard-coded pad target 64 for non-XL models, the value-based (``!= 0``)
first-write test.

Determinism: all randomness comes from CPU ``torch.Generator`` objects keyed by
``(seed + b, step, purpose)`` for sample ``b``; running ``x[b:b+1]`` alone with ``seed + b`` reproduces
sample ``b`` of a batch; results do not depend on ``view_batch_size`` / ``ref_batch_size``.
The official code shares sub-pixel picks and pads over the batch; here they are per sample.

Speed (spec §8): a pass makes one reference call (2 B (R+1) rows) and ceil(views / view_batch_size)
patch calls; background latents come from the ``background`` palette given once per run (no VAE
work per call); at or below base the patch equals the reference and its D_u is reused (2
evaluations per pass instead of 3) and identical resampling rounds are evaluated once.
"""
from __future__ import annotations

import hashlib
import math
import numbers
from dataclasses import dataclass
from fractions import Fraction
from typing import Any, Callable, Dict, List, NamedTuple, Optional, Sequence, Tuple

import torch
import torch.nn.functional as F

__all__ = [
    "RowMeta", "ElasticConfig", "ElasticGeometry", "ElasticPlan", "StepRandom", "StepResult", "RefInfo", "View",
    "MODES", "PRESETS", "ROLES", "PHASES",
    "validate_elastic", "latent_size_from_pixels", "build_plan", "elastic_preset", "auto_preset",
    "base_resolution", "ddim_uniform_sigmas", "reference_size", "rrg_weight", "rrg_active_steps",
    "official_background_colours", "palette_from_rgb_factors",
    "make_views", "reference_pass", "local_pass", "elastic_denoise", "elastic_step", "sample_elastic",
]

MODES = ("clean", "faithful")
PRESETS = ("auto", "custom")
ROLES = ("reference", "patch")
PHASES = ("main", "repaint")
SIDES = ("left", "right", "top", "bottom")

VAE_SCALE = 8                 # latent px -> image px (spec §1.3)
XL_BASE = 128                 # SDXL training latent size; the official presets are in its units
RRG_MIN_WEIGHT = 10.0         # official activation threshold "w_i > 10" (spec §2.8)

_OPTION_NAMES = (
    "base", "cfg", "preset", "resampling_steps", "rrg_init_weight", "rrg_min_weight", "new_p",
    "cosine_scale", "rrg_stop_t", "repaint", "patch_size", "view_batch_size", "ref_batch_size",
    "mode", "background", "max_factor",
)


# =============================================================================================
# Presets, model family, sigmas
# =============================================================================================

def auto_preset(height: int, width: int, base: int) -> Dict[str, float]:
    """The spec §5.3 ``auto`` rule (sizes in latent px; ``base`` = training latent size).

    f = max(H, W) / base:  f <= 1 -> R 0, W0 0;  both sides >= 1.5 base and long side == 2 base ->
    R 10 with W0 2000 (square) / 1500;  otherwise R 7, W0 1000.  The W0 values are the official
    SDXL (base 128) ones; for another base they are scaled by (base/128)^2 together with the
    activation threshold, which keeps the per-element RRG coefficient 2*W0/(C*H*W) and the active
    steps of the official presets at the same factor (spec §5.2 note) [design].
    """
    _check_int("height", height, 1)
    _check_int("width", width, 1)
    _check_int("base", base, 1)
    scale = (base / XL_BASE) ** 2
    if max(height, width) <= base:
        r, w0 = 0, 0.0
    elif min(height, width) * 2 >= 3 * base and max(height, width) == 2 * base:
        r, w0 = 10, (2000.0 if height == width else 1500.0)
    else:
        r, w0 = 7, 1000.0
    return {"resampling_steps": r, "rrg_init_weight": w0 * scale, "rrg_min_weight": RRG_MIN_WEIGHT * scale}


def elastic_preset(preset: str = "auto", height: Optional[int] = None, width: Optional[int] = None,
                   base: Optional[int] = None, **overrides) -> Dict[str, Any]:
    """All hyper-parameters of a preset (pure function; spec §5.1-§5.3).

    The constants are the official Gradio examples (cfg 10, new_p 0.3, cosine 10, rrg_stop_t 0.4,
    repaint, patch base/2, view batch 16, 50 steps).  ``auto`` adds R / W0 / RRG threshold from
    :func:`auto_preset` (needs height, width, base in latent px); ``custom`` uses R = 0, W0 = 0,
    threshold 10 unless given.  ``overrides`` (non-None) win in both cases.
    """
    if preset not in PRESETS:
        raise ValueError(f"ElasticDiffusion: preset={preset!r} is not allowed; allowed: {', '.join(PRESETS)}")
    out: Dict[str, Any] = {"cfg": 10.0, "new_p": 0.3, "cosine_scale": 10.0, "rrg_stop_t": 0.4, "repaint": True,
                           "view_batch_size": 16, "steps": 50}
    if base is not None:
        out["patch_size"] = max(1, int(base) // 2)
    if preset == "auto":
        if height is None or width is None or base is None:
            raise ValueError("ElasticDiffusion: preset='auto' needs height, width and base (latent px)")
        out.update(auto_preset(int(height), int(width), int(base)))
    else:
        out.update({"resampling_steps": 0, "rrg_init_weight": 0.0, "rrg_min_weight": RRG_MIN_WEIGHT})
    out.update({k: v for k, v in overrides.items() if v is not None})
    return out


_FAMILY_BASE = {
    "sd1": 512, "sd14": 512, "sd15": 512, "sd1x": 512,
    "sd2": 512, "sd20": 512, "sd21": 512, "sd2base": 512, "sd21base": 512,
    "sd21unclipl": 768, "sd21uncliph": 768, "sd2v": 768, "sd21v": 768, "sd21768": 768,
    "sdxl": 1024, "sdxlrefiner": 1024, "ssd1b": 1024, "segmindvega": 1024, "koala700m": 1024,
    "koala1b": 1024, "sd3": 1024, "flux": 1024,
}


def base_resolution(model_family: str, v_prediction: bool = False) -> int:
    """Training resolution in PIXELS for a model family (comfy-host.md §2.9; spec §1.3).

    ``model_family``: a name such as ``"sd15"``, ``"SD20"``, ``"SDXL"`` (ComfyUI ``model_config`` class
    names work; case and ``_ - .`` are ignored).  SD2.x maps to 768 when ``v_prediction`` (SD2-v),
    else 512.  Divide by 8 for the ``base`` option.  SD3 / Flux are listed for completeness, but this
    sampler's maths is VE (EPS / v-prediction models) only.
    """
    key = "".join(ch for ch in str(model_family).lower() if ch.isalnum())
    if key not in _FAMILY_BASE:
        raise ValueError(f"ElasticDiffusion: unknown model_family={model_family!r}; allowed: "
                         f"{', '.join(sorted(_FAMILY_BASE))}")
    px = _FAMILY_BASE[key]
    if v_prediction and key in ("sd2", "sd20", "sd21"):
        px = 768
    return px


def ddim_uniform_sigmas(model_sampling, steps: int) -> torch.Tensor:
    """ComfyUI's ``ddim_uniform`` scheduler (ComfyUI:comfy/samplers.py ``ddim_scheduler``), exactly.

    Sigmas at t = 1 + k*ss, ss = 1000 // steps, descending, then 0 -> for 50 steps t = 981 ... 1, the
    official DDIM grid (spec §3.1).  Like ComfyUI it returns float32, and for a ``steps`` that does
    not divide 1000 it may return more than ``steps`` steps (e.g. 30 -> 31).
    """
    _check_int("steps", steps, 1)
    s = model_sampling.sigmas
    x = 1
    if math.isclose(float(s[x]), 0, abs_tol=0.00001):
        steps += 1
        sigs: List[float] = []
    else:
        sigs = [0.0]
    ss = max(len(s) // steps, 1)
    while x < len(s):
        sigs.append(float(s[x]))
        x += ss
    return torch.tensor(sigs[::-1], dtype=torch.float32)


def rrg_weight(i: int, steps: int, rrg_init_weight: float, rrg_stop_t: float, cosine_scale: float) -> float:
    """w_i = W0 * (0.5 * (1 + cos(pi i / T)))^kappa for i < T = N - int(N * rrg_stop_t), else 0 (spec §2.8)."""
    t_rrg = steps - int(steps * rrg_stop_t)
    if i >= t_rrg or t_rrg <= 0:
        return 0.0
    return float(rrg_init_weight) * (0.5 * (1.0 + math.cos(math.pi * i / t_rrg))) ** cosine_scale


def rrg_active_steps(steps: int, rrg_init_weight: float, rrg_stop_t: float, cosine_scale: float,
                     rrg_min_weight: float = RRG_MIN_WEIGHT) -> List[int]:
    """Steps where RRG acts (w_i > threshold); e.g. 0..12 for W0 1000, N 50, stop 0.4, kappa 10 (spec §7.10)."""
    return [i for i in range(steps)
            if rrg_weight(i, steps, rrg_init_weight, rrg_stop_t, cosine_scale) > rrg_min_weight]


def official_background_colours(n: int, generator: Optional[torch.Generator] = None) -> torch.Tensor:
    """``n`` background colours as ComfyUI pixels in [0, 1] (``[n, 3]``), matching the official ones.

    The official code draws c ~ U[0, 1]^3 and feeds it to a VAE expecting [-1, 1]; in ComfyUI's
    pixel convention that is (c + 1) / 2 in [0.5, 1] (spec §2.2).  Encode these (a constant image of
    the call's size, or any size >= the pads) with the VAE once per run to build ``background``.
    """
    _check_int("n", n, 1)
    c = torch.rand(n, 3, generator=generator, dtype=torch.float64)
    return ((c + 1.0) / 2.0).to(torch.float32)


def palette_from_rgb_factors(latent_rgb_factors, colours: torch.Tensor, bias=None) -> torch.Tensor:
    """Approximate background latents without a VAE: least-squares inverse of a latent format's
    preview map ``rgb = z @ factors + bias`` (rgb in [-1, 1]) for ``colours`` in [0, 1] ([K, 3]).

    Returns ``[K, C]`` for the ``background`` option (spec §3.3.1 fallback) [design].
    """
    fac = torch.as_tensor(latent_rgb_factors, dtype=torch.float64)          # [C, 3]
    if fac.dim() != 2 or fac.shape[1] != 3:
        raise ValueError(f"ElasticDiffusion: latent_rgb_factors must be [C, 3], got {tuple(fac.shape)}")
    col = torch.as_tensor(colours, dtype=torch.float64).reshape(-1, 3)
    target = col * 2.0 - 1.0
    if bias is not None:
        target = target - torch.as_tensor(bias, dtype=torch.float64).reshape(1, 3)
    z = target @ torch.linalg.pinv(fac)                                      # min-norm z with z @ fac ~ target
    return z.to(torch.float32)


# =============================================================================================
# Options and validation
# =============================================================================================

@dataclass(frozen=True)
class ElasticConfig:
    """Resolved, validated hyper-parameters (see the module docstring for meanings)."""
    height: int
    width: int
    channels: int
    base: int
    cfg: float
    preset: str
    resampling_steps: int
    rrg_init_weight: float
    rrg_min_weight: float
    new_p: float
    cosine_scale: float
    rrg_stop_t: float
    repaint: bool
    patch_size: int
    view_batch_size: int
    ref_batch_size: int
    mode: str
    max_factor: Optional[float]
    steps: Optional[int]


def _check_int(name, value, lo, hi=None):
    rng = f"[{lo}, {hi}]" if hi is not None else f">= {lo}"
    if isinstance(value, bool) or not isinstance(value, numbers.Integral):
        raise ValueError(f"ElasticDiffusion: {name}={value!r} is not allowed; allowed: integer {rng}")
    if value < lo or (hi is not None and value > hi):
        raise ValueError(f"ElasticDiffusion: {name}={value} is not allowed; allowed: integer {rng}")
    return int(value)


def _check_float(name, value, lo=None, hi=None, lo_open=False):
    try:
        v = float(value)
    except (TypeError, ValueError):
        raise ValueError(f"ElasticDiffusion: {name}={value!r} must be a number") from None
    if isinstance(value, bool) or not math.isfinite(v):
        raise ValueError(f"ElasticDiffusion: {name}={value!r} must be a finite number")
    bad = (lo is not None and (v <= lo if lo_open else v < lo)) or (hi is not None and v > hi)
    if bad:
        left = "(" if lo_open else "["
        rng = f"{left}{lo}, {hi}]" if hi is not None else (f"> {lo}" if lo_open else f">= {lo}")
        raise ValueError(f"ElasticDiffusion: {name}={value} is not allowed; allowed: {rng}")
    return v


def latent_size_from_pixels(width_px: int, height_px: int, multiple: int = VAE_SCALE) -> Tuple[int, int]:
    """(H, W) latent size of a pixel size; raises ValueError when a side is not a multiple of the VAE grid."""
    for name, v in (("width", width_px), ("height", height_px)):
        _check_int(name, v, multiple)
        if v % multiple:
            raise ValueError(f"ElasticDiffusion: {name}={v} px is not a multiple of the latent grid; "
                             f"allowed: multiples of {multiple}")
    return height_px // multiple, width_px // multiple


def validate_elastic(latent_shape: Sequence[int], sigmas=None, *, steps: Optional[int] = None,
                     **options) -> ElasticConfig:
    """Check every input before any model work; returns the resolved :class:`ElasticConfig`.

    ``latent_shape`` = (B, C, H, W).  Raises ``ValueError`` naming the input and what is allowed:
    unknown options, base / patch size (patch > base), new_p outside (0, 1], steps < 1, sigmas not a
    descending list of >= 2 finite values, background shape, factor above ``max_factor``, and in
    faithful mode sizes the official code cannot run (factor > 2 or its shape bugs, spec §2.3).
    """
    unknown = sorted(set(options) - set(_OPTION_NAMES) - {"seed"})
    if unknown:
        raise ValueError(f"ElasticDiffusion: unknown option(s) {unknown}; allowed: {', '.join(_OPTION_NAMES)}, seed")
    shape = tuple(int(s) for s in latent_shape)
    if len(shape) != 4:
        raise ValueError(f"ElasticDiffusion: latent shape {shape} must be 4-D (B, C, H, W)")
    B, C, H, W = shape
    for name, v in (("batch", B), ("channels", C), ("height", H), ("width", W)):
        _check_int(name, v, 1)
    if options.get("base") is None:
        raise ValueError("ElasticDiffusion: base (training latent size, e.g. 64 for SD1.x, 128 for SDXL) is required")
    base = _check_int("base", options["base"], 1)
    mode = options.get("mode", "clean")
    if mode not in MODES:
        raise ValueError(f"ElasticDiffusion: mode={mode!r} is not allowed; allowed: {', '.join(MODES)}")
    preset = options.get("preset", "auto")
    if preset not in PRESETS:
        raise ValueError(f"ElasticDiffusion: preset={preset!r} is not allowed; allowed: {', '.join(PRESETS)}")
    hp = elastic_preset(preset, H, W, base) if preset == "auto" else elastic_preset("custom", base=base)

    def opt(name):
        v = options.get(name)
        return hp.get(name) if v is None else v

    if steps is not None:
        _check_int("steps", steps, 1)
    if sigmas is not None:
        sig = torch.as_tensor(sigmas, dtype=torch.float64).detach().cpu() if not torch.is_tensor(sigmas) \
            else sigmas.detach().to("cpu", torch.float64)
        if sig.dim() != 1 or sig.numel() < 2:
            raise ValueError(f"ElasticDiffusion: sigmas must be 1-D with at least 2 values (steps >= 1), "
                             f"got shape {tuple(sig.shape)}")
        if not torch.isfinite(sig).all() or (sig < 0).any():
            raise ValueError("ElasticDiffusion: sigmas must be finite and >= 0")
        if (sig[1:] > sig[:-1]).any():
            raise ValueError("ElasticDiffusion: sigmas must be non-increasing")
        if (sig[:-1] <= 0).any():
            raise ValueError("ElasticDiffusion: only the last sigma may be 0")
        steps = sig.numel() - 1 if steps is None else steps
    cfg = _check_float("cfg", opt("cfg"))
    r = _check_int("resampling_steps", opt("resampling_steps"), 0)
    w0 = _check_float("rrg_init_weight", opt("rrg_init_weight"), 0.0)
    wmin = _check_float("rrg_min_weight", opt("rrg_min_weight"), 0.0)
    new_p = _check_float("new_p", opt("new_p"), 0.0, 1.0, lo_open=True)
    kappa = _check_float("cosine_scale", opt("cosine_scale"), 0.0)
    stop = _check_float("rrg_stop_t", opt("rrg_stop_t"), 0.0, 1.0)
    repaint = opt("repaint")
    if not isinstance(repaint, bool):
        raise ValueError(f"ElasticDiffusion: repaint={repaint!r} must be True or False")
    patch = options.get("patch_size")
    patch = _check_int("patch_size", max(1, base // 2) if patch is None else patch, 1)
    if patch > base:
        raise ValueError(f"ElasticDiffusion: patch_size={patch} is larger than the base size {base} (latent px); "
                         f"allowed: 1..{base}")
    vbs = _check_int("view_batch_size", opt("view_batch_size"), 1)
    rbs = _check_int("ref_batch_size", options.get("ref_batch_size", 0) or 0, 0)
    max_factor = options.get("max_factor")
    factor = max(H, W) / base
    if max_factor is not None:
        max_factor = _check_float("max_factor", max_factor, 1.0)
        if factor > max_factor + 1e-12:
            raise ValueError(f"ElasticDiffusion: size {H}x{W} latent px is {factor:.3g}x the base size {base}; "
                             f"allowed: at most max_factor={max_factor:g}x")
    bg = options.get("background")
    if bg is not None:
        if not torch.is_tensor(bg) or bg.dim() not in (2, 4) or bg.shape[0] < 1 or bg.shape[1] != C:
            got = tuple(bg.shape) if torch.is_tensor(bg) else type(bg).__name__
            raise ValueError(f"ElasticDiffusion: background must be a tensor [K, {C}] or [K, {C}, h, w] "
                             f"(K >= 1 colour latents), got {got}")
        if not torch.isfinite(bg).all():
            raise ValueError("ElasticDiffusion: background must be finite")
    if mode == "faithful":
        if factor > 2.0 + 1e-12:
            raise ValueError(f"ElasticDiffusion: mode='faithful' supports at most 2x the base size (official "
                             f"2x2 sub-pixel blocks, spec §2.3); size {H}x{W} is {factor:.3g}x; use mode='clean'")
        h, w = reference_size(H, W, base, "faithful")
        for axis, big, small in (("height", H, h), ("width", W, w)):
            try:
                _official_axis(big, small)
            except _OfficialShapeError as e:
                raise ValueError(f"ElasticDiffusion: mode='faithful' cannot run {W * VAE_SCALE}x{H * VAE_SCALE} px "
                                 f"(latent HxW {H}x{W}): the official sub-sampling map breaks on the {axis} axis "
                                 f"({e}); use mode='clean'") from None
    return ElasticConfig(height=H, width=W, channels=C, base=base, cfg=cfg, preset=preset, resampling_steps=r,
                         rrg_init_weight=w0, rrg_min_weight=wmin, new_p=new_p, cosine_scale=kappa,
                         rrg_stop_t=stop, repaint=repaint, patch_size=patch, view_batch_size=vbs,
                         ref_batch_size=rbs, mode=mode, max_factor=max_factor, steps=steps)


# =============================================================================================
# Geometry: reference size, sub-pixel cells, views
# =============================================================================================

def reference_size(H: int, W: int, base: int, mode: str = "clean") -> Tuple[int, int]:
    """Reference latent size (spec §2.1): long side = base, aspect kept; (H, W) at or below base.

    ``faithful``: the official ``int((px // f) // 8)`` with f = max(1, max px / base px), including its
    float quirk (1080 px -> 127, spec §2.3).  ``clean``: round(side * base / long side).
    """
    if mode == "faithful":
        hp, wp = H * VAE_SCALE, W * VAE_SCALE
        f = max(max(hp, wp) / (base * VAE_SCALE), 1)
        return int((hp // f) // VAE_SCALE), int((wp // f) // VAE_SCALE)
    L = max(H, W)
    if L <= base:
        return H, W
    return (max(1, min(base, (2 * H * base + L) // (2 * L))),
            max(1, min(base, (2 * W * base + L) // (2 * L))))


class _OfficialShapeError(Exception):
    pass


def _even_rational(f: float) -> Tuple[int, int]:
    """Official ``to_even_rational``: f ~ keep/block with both even, denominators <= 32 (spec §2.3)."""
    fr = Fraction(f).limit_denominator(32)
    if fr.numerator % 2 or fr.denominator % 2:
        fr = Fraction(f).limit_denominator(16)
        if fr.numerator % 2 or fr.denominator % 2:
            return fr.numerator * 2, fr.denominator * 2
    return fr.numerator, fr.denominator


def _keep_offsets(block: int, remove: int) -> Tuple[List[int], List[int]]:
    """Official ``get_keep_blocks`` re-derived: drop ``remove`` rows of a block in pairs at even spacing.

    Returns the kept offsets and, in kept coordinates, the pairs of kept rows that straddle a dropped
    pair (they map to two different source rows and are restored as two mask rows).
    """
    pairs = remove // 2
    keep = [True] * block
    interval = block // (pairs + 1)
    if interval % 2:
        interval += 1
    marks: List[int] = []
    for k in range(pairs):
        s = (k + 1) * interval - 1
        marks += [s - 1 - 2 * k, s - 2 * k]
        for u in (s, s + 1):
            if 0 <= u < block:
                keep[u] = False
    return [o for o in range(block) if keep[o]], marks


def _official_axis(L: int, l: int) -> Tuple[List[int], List[int], int]:
    """The official sub-sampling map along one axis (spec §2.3), re-derived.

    The latent is nearest-upsampled 2x (upsampled row u has source u // 2); ``keep`` of every
    ``block`` upsampled rows are kept to reach 2l rows; the reference picks one of each kept pair.
    Returns ``src`` (source row of each of the 2l kept rows), ``restore`` (row of the official write
    mask for each kept row) and the restored mask length.  Raises ``_OfficialShapeError`` where the
    official code produces the wrong shape.
    """
    if l < 1:
        raise _OfficialShapeError("an empty reference")
    keep, block = _even_rational(l / L)
    remove = block - keep
    nblocks = (2 * l) // keep
    if nblocks * block > 2 * L:
        nblocks -= 1
    span = nblocks * block
    offsets, marks = _keep_offsets(block, remove)
    rows = [u for u in (b * block + o for b in range(nblocks) for o in offsets) if u < 2 * L]
    remain = 2 * l - len(rows)
    rows += list(range(span, min(span + remain, 2 * L))) if remain > 0 else []
    if len(rows) != 2 * l:
        raise _OfficialShapeError(f"{len(rows) // 2} reference rows instead of {l}")
    src = [u // 2 for u in rows]
    a = [s + m for s in range(0, 2 * l, keep) for m in marks]
    restore = [0] * (2 * l)
    j = o = 0
    for i in range(0, 2 * l, 2):
        if j < len(a) and i == a[j]:
            restore[i], restore[i + 1] = o, o + 1
            o += 2
            j += 2
        else:
            restore[i] = restore[i + 1] = o
            o += 1
    if o > L:
        raise _OfficialShapeError(f"write mask of {o} rows for {L} latent rows")
    return src, restore, o


def _nearest_map(src_len: int, dst_len: int) -> torch.Tensor:
    """The index map of ``F.interpolate(mode='nearest')`` from src_len to dst_len (exactly torch's)."""
    idx = torch.arange(src_len, dtype=torch.float64).view(1, 1, src_len, 1)
    return F.interpolate(idx, size=(dst_len, 1), mode="nearest").view(dst_len).round().long()


@dataclass
class ElasticGeometry:
    """Sub-pixel sampling geometry of one canvas (built once per run).

    Every reference pixel (p, q) owns ``K`` candidate sources (flat indices ``cand`` [h, w, K], valid
    where ``valid``).  A round picks one candidate k per pixel; the direction estimate ``g`` is
    written at ``write[p, q, k]`` with the value ``g.flat[value[p, q, k]]``.  ``fill`` [H*W] is the
    reference pixel that fills unwritten positions (and upsamples x0_ref for RRG); ``down`` [h*w] is
    the full-size pixel read for the reference-level direction.

    clean (spec §2.3 "recommended clean equivalent"): cells with boundaries floor(j*H/h); write =
    cand (scatter at the source), value = own cell, fill = cell-constant, down = cell top-left.
    faithful: the official 2x-upsample / keep-rows / 2x2-block map; write = the official restored
    mask, value / fill / down = ``F.interpolate`` nearest (the misregistration at non-integer factors).
    """
    H: int
    W: int
    h: int
    w: int
    K: int
    mode: str
    cand: torch.Tensor
    valid: torch.Tensor
    write: torch.Tensor
    value: torch.Tensor
    fill: torch.Tensor
    down: torch.Tensor
    cand_w: torch.Tensor          # [w] candidate-grid width of each column cell (k -> dy = k // cw, dx = k % cw)

    @property
    def trivial(self) -> bool:
        """The reference is the latent itself (size <= base): every cell is one pixel."""
        return self.h == self.H and self.w == self.W

    def to(self, device) -> "ElasticGeometry":
        for name in ("cand", "valid", "write", "value", "fill", "down", "cand_w"):
            setattr(self, name, getattr(self, name).to(device))
        return self

    @staticmethod
    def build(H: int, W: int, base: int, mode: str = "clean") -> "ElasticGeometry":
        h, w = reference_size(H, W, base, mode)
        if mode == "faithful":
            return ElasticGeometry._faithful(H, W, h, w)
        return ElasticGeometry._clean(H, W, h, w)

    @staticmethod
    def _clean(H, W, h, w):
        rb = torch.div(torch.arange(h + 1) * H, h, rounding_mode="floor")       # row cell boundaries
        cb = torch.div(torch.arange(w + 1) * W, w, rounding_mode="floor")
        hp, wq = rb[1:] - rb[:-1], cb[1:] - cb[:-1]
        K = int(hp.max()) * int(wq.max())
        k = torch.arange(K).view(1, 1, K)
        dy = torch.div(k, wq.view(1, w, 1), rounding_mode="floor")
        dx = k - dy * wq.view(1, w, 1)
        valid = dy < hp.view(h, 1, 1)
        rows = (rb[:-1].view(h, 1, 1) + dy).clamp(max=H - 1)
        cols = (cb[:-1].view(1, w, 1) + dx).clamp(max=W - 1)
        cand = torch.where(valid, rows * W + cols, torch.zeros_like(rows))
        own = (torch.arange(h).view(h, 1, 1) * w + torch.arange(w).view(1, w, 1)).expand(h, w, K)
        cell_r = torch.repeat_interleave(torch.arange(h), hp)
        cell_c = torch.repeat_interleave(torch.arange(w), wq)
        fill = (cell_r.view(H, 1) * w + cell_c.view(1, W)).reshape(-1)
        down = cand[:, :, 0].reshape(-1)
        return ElasticGeometry(H, W, h, w, K, "clean", cand, valid, cand.clone(), own.contiguous(), fill, down,
                               wq.clone())

    @staticmethod
    def _faithful(H, W, h, w):
        src_r, res_r, _ = _official_axis(H, h)
        src_c, res_c, _ = _official_axis(W, w)
        src_r, res_r, src_c, res_c = (torch.tensor(v) for v in (src_r, res_r, src_c, res_c))
        k = torch.arange(4)
        dy, dx = torch.div(k, 2, rounding_mode="floor"), k % 2
        ky = 2 * torch.arange(h).view(h, 1, 1) + dy.view(1, 1, 4)
        kx = 2 * torch.arange(w).view(1, w, 1) + dx.view(1, 1, 4)
        cand = src_r[ky] * W + src_c[kx]
        write_r, write_c = res_r[ky], res_c[kx]
        write = write_r * W + write_c
        up_r, up_c = _nearest_map(h, H), _nearest_map(w, W)           # full -> reference (floor map)
        value = up_r[write_r] * w + up_c[write_c]
        fill = (up_r.view(H, 1) * w + up_c.view(1, W)).reshape(-1)
        dn_r, dn_c = _nearest_map(H, h), _nearest_map(W, w)           # reference -> full
        down = (dn_r.view(h, 1) * W + dn_c.view(1, w)).reshape(-1)
        valid = torch.ones(h, w, 4, dtype=torch.bool)
        return ElasticGeometry(H, W, h, w, 4, "faithful", cand, valid, write, value, fill, down,
                               torch.full((w,), 2, dtype=torch.long))

    def sources(self, picks: torch.Tensor) -> torch.Tensor:
        """Flat source indices [..., h*w] of picks [..., h, w] (candidate indices)."""
        return self.cand.expand(*picks.shape, self.K).gather(-1, picks.unsqueeze(-1)).squeeze(-1).flatten(-2)

    def writes(self, picks: torch.Tensor) -> torch.Tensor:
        return self.write.expand(*picks.shape, self.K).gather(-1, picks.unsqueeze(-1)).squeeze(-1).flatten(-2)

    def values(self, picks: torch.Tensor) -> torch.Tensor:
        return self.value.expand(*picks.shape, self.K).gather(-1, picks.unsqueeze(-1)).squeeze(-1).flatten(-2)


@dataclass
class View:
    """One local window: ``win`` = (y0, y1, x0, x1) canvas rows/cols it contributes; ``crop`` = the
    canvas region sent to the model (window + context); weights ``wy`` / ``wx`` over the window."""
    index: int
    win: Tuple[int, int, int, int]
    crop: Tuple[int, int, int, int]
    wy: torch.Tensor
    wx: torch.Tensor


def _axis_windows_official(L: int, P: int, base: int) -> List[Tuple[int, int, int, int]]:
    """Official ``get_views`` + ``crop_with_context`` along one axis -> (a, b, crop0, crop1) (spec §2.5)."""
    ctx = base - P
    ws = L if P + ctx >= L else P
    n = math.ceil((L - ws) / P) + 1
    n_ctx = ctx // 2
    out = []
    for k in range(n):
        a = k * P
        if a + ws > L:
            a = max(0, L - ws)
        b = a + ws
        if a - n_ctx < 0:
            nt = a
            nb = max(0, min(L - b, 2 * n_ctx - nt))
        else:
            nb = min(L - b, n_ctx)
            nt = max(0, min(a, 2 * n_ctx - nb))
        out.append((a, b, a - nt, b + nb))
    return out


def _axis_windows_clean(L: int, P: int, base: int) -> List[Tuple[int, int, int, int]]:
    """Clean windows: same count as the official grid, evenly spaced (overlaps spread over all seams),
    context = base - P split top/bottom with re-allocation at the borders, so crops are exactly base."""
    if L <= base:
        return [(0, L, 0, L)]
    n = math.ceil((L - P) / P) + 1
    ctx = base - P
    out = []
    for k in range(n):
        a = (k * (L - P) + (n - 1) // 2) // (n - 1)
        b = a + P
        nt0 = ctx // 2
        if a < nt0:
            nt = a
            nb = min(L - b, ctx - nt)
        else:
            nb = min(L - b, ctx - nt0)
            nt = min(a, ctx - nb)
        out.append((a, b, a - nt, b + nb))
    return out


def _axis_weights(wins: List[Tuple[int, int, int, int]], L: int, feather: bool) -> List[torch.Tensor]:
    """Per-window weights along one axis.  faithful: first window wins (0/1); clean: linear cross-fade
    over each overlap (weights of overlapping windows sum to 1)."""
    out = []
    if not feather:
        owner = torch.full((L,), -1, dtype=torch.long)
        for k, (a, b, _, _) in enumerate(wins):
            seg = owner[a:b]
            seg[seg < 0] = k
        for k, (a, b, _, _) in enumerate(wins):
            out.append((owner[a:b] == k).double())
        return out
    for k, (a, b, _, _) in enumerate(wins):
        y = torch.arange(a, b, dtype=torch.float64)
        wgt = torch.ones(b - a, dtype=torch.float64)
        if k > 0 and wins[k - 1][1] > a:
            wgt = torch.minimum(wgt, (y - a + 0.5) / (wins[k - 1][1] - a))
        if k < len(wins) - 1 and wins[k + 1][0] < b:
            wgt = torch.minimum(wgt, (b - y - 0.5) / (b - wins[k + 1][0]))
        out.append(wgt)
    return out


def make_views(H: int, W: int, base: int, patch: int, mode: str = "clean") -> Tuple[List[View], torch.Tensor]:
    """Windows (row-major, as the official ``get_views``) and the weight normaliser [H, W] (spec §2.5)."""
    axis = _axis_windows_official if mode == "faithful" else _axis_windows_clean
    rows, cols = axis(H, patch, base), axis(W, patch, base)
    feather = mode != "faithful"
    wr, wc = _axis_weights(rows, H, feather), _axis_weights(cols, W, feather)
    views, norm = [], torch.zeros(H, W, dtype=torch.float64)
    for i, (ry, wy) in enumerate(zip(rows, wr)):
        for j, (cx, wx) in enumerate(zip(cols, wc)):
            views.append(View(len(views), (ry[0], ry[1], cx[0], cx[1]), (ry[2], ry[3], cx[2], cx[3]), wy, wx))
            norm[ry[0]:ry[1], cx[0]:cx[1]] += wy.view(-1, 1) * wx.view(1, -1)
    return views, norm


# =============================================================================================
# Plan (everything computed once per run)
# =============================================================================================

@dataclass(frozen=True)
class RowMeta:
    """Per-row information for one model call (all coordinates in latent px).

    role       ``"reference"`` (global pass on the subsampled canvas) or ``"patch"`` (local pass);
    phase      ``"main"`` (pass 1, CFG cfg) or ``"repaint"`` (pass 2 after re-noising, CFG cfg/3);
    which      ``"cond"`` / ``"uncond"``;
    sample     batch index b;   step: sampler step i;   index: resampling round or view index;
    canvas     (H, W) full latent size;   reference_size: (h, w);   base: model input size;
    content    (top, left, height, width) of the real content inside the base x base input (the rest
               is noised background);
    source     (top, left, height, width) of the canvas region the content comes from — patches: the
               crop with context (1:1 pixels); reference: the whole canvas, subsampled to ``content``;
    window     patches: (top, left, height, width) of the canvas region whose prediction is used;
               reference: the whole canvas.
    RRG needs no model call (it reuses the last reference scores, spec §2.8).
    """
    role: str
    phase: str
    which: str
    sample: int
    step: int
    index: int
    canvas: Tuple[int, int]
    reference_size: Tuple[int, int]
    base: int
    content: Tuple[int, int, int, int]
    source: Tuple[int, int, int, int]
    window: Tuple[int, int, int, int]


@dataclass
class ElasticPlan:
    """Resolved config + geometry + views + background palette for one canvas (:func:`build_plan`)."""
    config: ElasticConfig
    geometry: ElasticGeometry
    views: List[View]
    norm: torch.Tensor
    background: torch.Tensor
    dtype: torch.dtype
    device: torch.device

    @property
    def trivial(self) -> bool:
        """At or below base: one view = the whole canvas = the reference; its uncond is reused (spec §3.3.6)."""
        return self.geometry.trivial and len(self.views) == 1


def build_plan(latent_shape: Sequence[int], sigmas=None, *, device=None, dtype=torch.float32,
               **options) -> ElasticPlan:
    """Validate the options and precompute the run's geometry, windows, weights and background."""
    cfg = validate_elastic(latent_shape, sigmas, **{k: v for k, v in options.items() if k != "seed"})
    device = torch.device("cpu") if device is None else torch.device(device)
    geo = ElasticGeometry.build(cfg.height, cfg.width, cfg.base, cfg.mode).to(device)
    views, norm = make_views(cfg.height, cfg.width, cfg.base, cfg.patch_size, cfg.mode)
    for v in views:
        v.wy, v.wx = v.wy.to(device, dtype), v.wx.to(device, dtype)
    bg = options.get("background")
    bg = torch.zeros(1, cfg.channels) if bg is None else bg
    return ElasticPlan(cfg, geo, views, norm.to(device, dtype), bg.detach().to(device, dtype), dtype, device)


# =============================================================================================
# Randomness (keyed generators)
# =============================================================================================

def _generator(*key) -> torch.Generator:
    digest = hashlib.blake2b(repr(key).encode(), digest_size=8).digest()
    return torch.Generator(device="cpu").manual_seed(int.from_bytes(digest, "little") & ((1 << 63) - 1))


class StepRandom:
    """All random draws of one step, keyed by (seed + sample, step, purpose) — never the global RNG.

    ``picks`` sub-pixel choices, ``pad_parts`` background colour latent + unit noise of a pad block
    (identical for every call of the step with the same side and shape, as the official md5 keys,
    spec §2.2), ``repaint_noise`` the re-noise draw.  Pads are cached within the step.
    """

    def __init__(self, plan: ElasticPlan, seed: int, step: int, sample_ids: Optional[Sequence[int]] = None):
        self.plan, self.seed, self.step = plan, int(seed), int(step)
        self.sample_ids = None if sample_ids is None else [int(v) for v in sample_ids]
        self._pads: Dict[Tuple, Tuple[torch.Tensor, torch.Tensor]] = {}

    def _key(self, sample: int) -> int:
        """Seed of sample ``sample``: seed + its id (its row index, or e.g. ComfyUI's batch_index)."""
        return self.seed + (sample if self.sample_ids is None else self.sample_ids[sample])

    def picks(self, sample: int, rounds: int) -> torch.Tensor:
        """Candidate index per reference pixel for rounds 0..rounds-1 -> LongTensor [rounds, h, w].

        Round 0 is the top-left candidate.  Later rounds: a pixel takes a new candidate with
        probability new_p (faithful: the official integer draw, 30/101 for 0.3), chosen uniformly
        among its not-yet-used candidates (none left: clean = any other candidate, faithful = any of
        the 4, as the official fallback); otherwise it keeps the previous one (spec §2.3).
        """
        geo, cfg = self.plan.geometry, self.plan.config
        cur = torch.zeros(geo.h, geo.w, dtype=torch.long)
        out = [cur]
        if rounds <= 1 or geo.trivial:
            return cur.expand(max(rounds, 1), -1, -1).contiguous().to(self.plan.device)
        gen = _generator("subpixel", self._key(sample), self.step)
        valid = geo.valid.cpu()
        used = torch.zeros(geo.h, geo.w, geo.K, dtype=torch.bool)
        used[..., 0] = True
        kk = torch.arange(geo.K)
        for _ in range(1, rounds):
            scores = torch.rand(geo.h, geo.w, geo.K, generator=gen)
            allowed = valid & ~used
            none_left = ~allowed.any(-1, keepdim=True)
            if cfg.mode == "faithful":
                fallback = valid
                allowed = torch.where(none_left, fallback, allowed)
                thr = 100.0 * (1.0 - cfg.new_p)
                draw = torch.randint(0, 101, (geo.h, geo.w), generator=gen)
                take = (draw > thr) | (thr <= 0)
            else:
                fallback = valid & (kk.view(1, 1, -1) != cur.unsqueeze(-1))
                allowed = torch.where(none_left, fallback, allowed)
                take = (torch.rand(geo.h, geo.w, generator=gen) < cfg.new_p) & allowed.any(-1)
            new = torch.where(allowed, scores, torch.full_like(scores, -1.0)).argmax(-1)
            cur = torch.where(take, new, cur)
            used.scatter_(-1, cur.unsqueeze(-1), True)
            out.append(cur)
        return torch.stack(out).to(self.plan.device)

    def pad_parts(self, sample: int, side: str, ph: int, pw: int) -> Tuple[torch.Tensor, torch.Tensor]:
        """(background latent, unit noise) of a pad block [C, ph, pw]; VE pad = z + sigma * n (spec §3.1).

        The colour is one entry of the ``background`` palette drawn per (sample, step, side, shape);
        a [C] entry is broadcast, a spatial [C, h, w] entry is cropped from its top-left (tiled when
        smaller than the block) — encode constant images of 8*base px to cover every pad.
        """
        key = (sample, side, ph, pw)
        if key not in self._pads:
            plan = self.plan
            gen = _generator("pad", self._key(sample), self.step, side, ph, pw)
            bg = plan.background
            colour = int(torch.randint(0, bg.shape[0], (1,), generator=gen))
            noise = torch.randn(plan.config.channels, ph, pw, generator=gen, dtype=torch.float64)
            z = bg[colour]
            if z.dim() == 1:
                z = z.view(-1, 1, 1).expand(-1, ph, pw)
            else:
                reps = (1, -(-ph // z.shape[1]), -(-pw // z.shape[2]))
                z = z.repeat(*reps)[:, :ph, :pw]
            self._pads[key] = (z.to(plan.dtype), noise.to(plan.device, plan.dtype))
        return self._pads[key]

    def repaint_noise(self, sample: int) -> torch.Tensor:
        cfg = self.plan.config
        gen = _generator("repaint", self._key(sample), self.step)
        xi = torch.randn(cfg.channels, cfg.height, cfg.width, generator=gen, dtype=torch.float64)
        return xi.to(self.plan.device, self.plan.dtype)


def _pad_sizes(ch: int, cw: int, base: int) -> Tuple[int, int, int, int]:
    """(top, bottom, left, right) pads to base; left = pad // 2 (spec §2.2)."""
    wp, hp = base - cw, base - ch
    return hp // 2, hp - hp // 2, wp // 2, wp - wp // 2


def _pad_to_base(content: torch.Tensor, samples: Sequence[int], sigma: float, rnd: StepRandom
                 ) -> Tuple[torch.Tensor, Tuple[int, int]]:
    """Background-pad [N, C, ch, cw] to base x base: width first (left/right blocks of height ch), then
    height (top/bottom blocks of full width); pad = z_bg + sigma * n (spec §2.2, §3.1)."""
    N, C, ch, cw = content.shape
    base = rnd.plan.config.base
    t, b, l, r = _pad_sizes(ch, cw, base)
    if t == b == l == r == 0:
        return content, (0, 0)
    out = content.new_empty(N, C, base, base)
    out[:, :, t:t + ch, l:l + cw] = content
    blocks = (("left", t, t + ch, 0, l), ("right", t, t + ch, l + cw, base),
              ("top", 0, t, 0, base), ("bottom", t + ch, base, 0, base))
    for n, s in enumerate(samples):
        for side, y0, y1, x0, x1 in blocks:
            if y1 > y0 and x1 > x0:
                z, eps = rnd.pad_parts(s, side, y1 - y0, x1 - x0)
                out[n, :, y0:y1, x0:x1] = z + sigma * eps
    return out, (t, l)


# =============================================================================================
# The two passes (spec §2.4, §2.5, §3.2)
# =============================================================================================

class RefInfo(NamedTuple):
    """Reference-level results of the last resampling round (for RRG, spec §2.8)."""
    d_uncond: torch.Tensor        # [B, C, h, w] D_u on the last reference
    g_down: torch.Tensor          # [B, C, h, w] the composed direction read back at reference size
    filled: float                 # fraction of full-size pixels holding an estimate of their own


def _sigma_rows(x: torch.Tensor, n: int, sigma: float) -> torch.Tensor:
    return x.new_full((n,), float(sigma))


def _call(denoiser, x: torch.Tensor, sigma: float, which: List[str], meta: List[RowMeta], calls) -> torch.Tensor:
    out = denoiser(x, _sigma_rows(x, x.shape[0], sigma), which, meta)
    if calls is not None:
        calls.append((meta[0].role, meta[0].phase, x.shape[0]))
    if tuple(out.shape) != tuple(x.shape):
        raise ValueError(f"ElasticDiffusion: denoiser returned shape {tuple(out.shape)} for input {tuple(x.shape)}")
    return out.to(x.dtype)


def reference_pass(denoiser, x: torch.Tensor, sigma: float, plan: ElasticPlan, rnd: StepRandom,
                   rounds: int, phase: str = "main", calls: Optional[list] = None
                   ) -> Tuple[torch.Tensor, torch.Tensor, RefInfo]:
    """Global direction G (full size) with ``rounds`` = R + 1 resampling rounds (spec §2.4).

    All rounds' references are drawn first (the picks depend only on the RNG) and go to the
    denoiser as ONE batch [cond; uncond] (or ``ref_batch_size`` rounds per call) (spec §8).  Each
    round's g = D_c - D_u is written at that round's positions (newest wins); unwritten pixels take
    the last round's upsampled g.  Returns (G [B,C,H,W], D_u of round 0 at reference size, RefInfo).
    """
    cfg, geo = plan.config, plan.geometry
    B, C, H, W = x.shape
    h, w = geo.h, geo.w
    picks = torch.stack([rnd.picks(b, rounds) for b in range(B)], 1)       # [R1, B, h, w]
    n_eval = 1 if geo.trivial else rounds                                  # reference == x: rounds identical
    src = geo.sources(picks[:n_eval])                                      # [n_eval, B, h*w]
    xf = x.reshape(1, B, C, H * W).expand(n_eval, -1, -1, -1)
    x_ref = xf.gather(3, src.unsqueeze(2).expand(-1, -1, C, -1)).reshape(n_eval * B, C, h, w)
    per = n_eval if cfg.ref_batch_size <= 0 else cfg.ref_batch_size
    d_c, d_u = [], []
    for r0 in range(0, n_eval, per):
        r1 = min(n_eval, r0 + per)
        samples = [b for _ in range(r0, r1) for b in range(B)]
        inp, (t, l) = _pad_to_base(x_ref[r0 * B:r1 * B], samples, sigma, rnd)
        meta = [RowMeta("reference", phase, which, b, rnd.step, r, (H, W), (h, w), cfg.base, (t, l, h, w),
                        (0, 0, H, W), (0, 0, H, W))
                for which in ("cond", "uncond") for r in range(r0, r1) for b in range(B)]
        n = inp.shape[0]
        out = _call(denoiser, torch.cat([inp, inp]), sigma, ["cond"] * n + ["uncond"] * n, meta, calls)
        out = out[:, :, t:t + h, l:l + w]
        d_c.append(out[:n])
        d_u.append(out[n:])
    d_c = torch.cat(d_c).reshape(n_eval, B, C, h * w)
    d_u = torch.cat(d_u).reshape(n_eval, B, C, h * w)
    g = d_c - d_u
    G = x.new_zeros(B, C, H * W)
    filled = torch.zeros(B, 1, H * W, dtype=torch.bool, device=x.device)
    for r in range(rounds):
        gr = g[min(r, n_eval - 1)]
        vals = gr.gather(2, geo.values(picks[r]).unsqueeze(1).expand(-1, C, -1))
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
    feathered overlaps) (spec §2.5)."""
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
            inp, (t, l) = _pad_to_base(x[:, :, y0:y1, x0:x1], range(B), sigma, rnd)
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
    """Composite x0 estimate D = L + scale * G (spec §3.1) and the reference info.

    At or below base (``plan.trivial``) the patch equals the padded reference, so the reference's
    D_u is reused as L: 2 instead of 3 evaluations per pass (spec §8)."""
    G, du_ref, info = reference_pass(denoiser, x, sigma, plan, rnd, rounds, phase, calls)
    if plan.trivial:
        L = du_ref
    else:
        L = local_pass(denoiser, x, sigma, plan, rnd, phase, calls)
    return L + scale * G, info


class StepResult(NamedTuple):
    x: torch.Tensor               # latent at sigmas[i + 1]
    denoised: torch.Tensor        # the retained full-size x0 estimate D (pass 2 when repaint ran)
    info: Dict[str, Any]          # calls [(role, phase, rows)], rrg_weight, repaint, filled


def _euler(x, denoised, sigma, sigma_next):
    """Euler = DDIM(eta 0) in sigma space, written as ComfyUI's ``sample_euler`` (x + d * dt)."""
    d = (x - denoised) / sigma
    return x + d * (sigma_next - sigma)


@torch.no_grad()
def elastic_step(denoiser, x: torch.Tensor, sigmas: torch.Tensor, i: int, plan: ElasticPlan,
                 seed: int = 0, sample_ids: Optional[Sequence[int]] = None) -> StepResult:
    """One ElasticDiffusion step sigma_i -> sigma_{i+1} (spec §3.2).

    pass 1: D = L + cfg G (R + 1 rounds), x' = Euler(x, D);
    repaint (repaint and R > 0 and i < N - 1): x_re = x' + sqrt(sigma_i^2 - sigma_{i+1}^2) xi, then
        D = L + (cfg / 3) G on x_re with one top-left round, x' = Euler(x_re, D) (spec §2.7);
    RRG (w_i > threshold): x' += sqrt(1 + sigma_{i+1}^2) * 2 w_i / (C H W) * (U(D_ref) - D) with
        D_ref = D_u^ref + g * G_down at reference size and U the reference upsampling (spec §2.8, §3.1).
    """
    cfg = plan.config
    N = len(sigmas) - 1
    sig_t = sigmas.detach().to("cpu")
    s, s1 = sig_t[i], sig_t[i + 1]
    sf, s1f = float(s), float(s1)
    x = x.to(plan.dtype)
    B, C, H, W = x.shape
    rnd = StepRandom(plan, seed, i, sample_ids)
    calls: list = []
    R = cfg.resampling_steps
    D, ref = elastic_denoise(denoiser, x, sf, plan, rnd, rounds=R + 1, scale=cfg.cfg, phase="main", calls=calls)
    x_next = _euler(x, D, s.to(plan.dtype), s1.to(plan.dtype))
    g = cfg.cfg
    repainted = cfg.repaint and R > 0 and i < N - 1
    if repainted:
        xi = torch.stack([rnd.repaint_noise(b) for b in range(B)])
        x_re = x_next + math.sqrt(max(sf * sf - s1f * s1f, 0.0)) * xi
        g = cfg.cfg / 3.0
        D, ref = elastic_denoise(denoiser, x_re, sf, plan, rnd, rounds=1, scale=g, phase="repaint", calls=calls)
        x_next = _euler(x_re, D, s.to(plan.dtype), s1.to(plan.dtype))
    steps = N if cfg.steps is None else cfg.steps
    w = rrg_weight(i, steps, cfg.rrg_init_weight, cfg.rrg_stop_t, cfg.cosine_scale)
    if w > cfg.rrg_min_weight:
        geo = plan.geometry
        d_ref = (ref.d_uncond + g * ref.g_down).reshape(B, C, geo.h * geo.w)
        up = d_ref[:, :, geo.fill].reshape(B, C, H, W)
        x_next = x_next + math.sqrt(1.0 + s1f * s1f) * (2.0 * w / (C * H * W)) * (up - D)
    info = {"calls": calls, "rrg_weight": w if w > cfg.rrg_min_weight else 0.0, "repaint": repainted,
            "filled": ref.filled}
    return StepResult(x_next, D, info)


@torch.no_grad()
def sample_elastic(denoiser, x: torch.Tensor, sigmas: torch.Tensor, extra_args: Optional[dict] = None,
                   callback: Optional[Callable] = None, disable=None, **options) -> torch.Tensor:
    """ElasticDiffusion sampler with the k-diffusion contract (spec §4.4).

    ``denoiser`` follows the protocol of the module docstring (not a k-diffusion model).  ``x`` is the
    noised start latent [B, C, H, W] (ComfyUI: sigma_0 * noise; the official start is
    sqrt(1 + sigma_0^2) * noise, spec §3.1).  ``extra_args["seed"]`` (or option ``seed``) keys all
    randomness; other extra_args are ignored (the caller binds model options into ``denoiser``).
    ``callback`` gets ``{'x', 'i', 'sigma', 'sigma_hat', 'denoised'}`` with the full-size x0 estimate.
    Option ``sample_ids`` (one int per sample, default 0..B-1) keys sample b's randomness with
    ``seed + sample_ids[b]`` (ComfyUI passes the latent's ``batch_index``).
    """
    extra_args = {} if extra_args is None else extra_args
    seed = options.pop("seed", None)
    if seed is None:
        seed = extra_args.get("seed", 0) or 0
    sample_ids = options.pop("sample_ids", None)
    if sample_ids is not None and len(sample_ids) != x.shape[0]:
        raise ValueError(f"ElasticDiffusion: sample_ids must have one id per sample ({x.shape[0]}), "
                         f"got {len(sample_ids)}")
    if options.get("base") is None and getattr(denoiser, "base", None) is not None:
        options["base"] = denoiser.base
    dtype = torch.float64 if x.dtype == torch.float64 else torch.float32
    plan = build_plan(x.shape, sigmas, device=x.device, dtype=dtype, **options)
    out_dtype = x.dtype
    x = x.to(dtype)
    for i in range(len(sigmas) - 1):
        res = elastic_step(denoiser, x, sigmas, i, plan, seed, sample_ids)
        if callback is not None:
            callback({"x": x, "i": i, "sigma": sigmas[i], "sigma_hat": sigmas[i], "denoised": res.denoised})
        x = res.x
    return x.to(out_dtype)
