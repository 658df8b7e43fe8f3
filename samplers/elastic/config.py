"""Hyper-parameters: presets, the one cross-field validator, and the per-run plan.

Options of :func:`~.sampler.sample_elastic` / :func:`build_plan` (checked by :func:`validate_elastic`):

===================  ==================================  =============================================
option               allowed                             default
===================  ==================================  =============================================
base                 int >= 1 (training latent px: 64    ``denoiser.base`` if present, else required
                     SD1.x, 128 SDXL)
cfg                  finite float                        10.0 (the repaint pass uses cfg / 3)
preset               ``"auto"`` | ``"custom"``           ``"auto"`` (fills R / W0 / RRG threshold
                                                         left as None from the size, see auto_preset)
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
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Dict, List, Optional, Sequence, Tuple

import torch

from ..checks import check_bool, check_choice, check_float, check_int
from ..common import check_sigmas
from . import official
from .geometry import ElasticGeometry, View, make_views

__all__ = ["MODES", "PRESETS", "ROLES", "PHASES", "RRG_MIN_WEIGHT", "auto_preset", "elastic_preset",
           "ElasticConfig", "validate_elastic", "check_background", "latent_size_from_pixels", "RowMeta",
           "ElasticPlan", "make_plan", "build_plan"]

MODES = ("clean", "faithful")
PRESETS = ("auto", "custom")
ROLES = ("reference", "patch")
PHASES = ("main", "repaint")

XL_BASE = 128                 # SDXL training latent size; the official presets are in its units
RRG_MIN_WEIGHT = 10.0         # the official activation threshold "w_i > 10"

OPTION_NAMES = (
    "base", "cfg", "preset", "resampling_steps", "rrg_init_weight", "rrg_min_weight", "new_p",
    "cosine_scale", "rrg_stop_t", "repaint", "patch_size", "view_batch_size", "ref_batch_size",
    "mode", "background", "max_factor",
)


# ---------------------------------------------------------------------------------------------
# presets
# ---------------------------------------------------------------------------------------------

def auto_preset(height: int, width: int, base: int) -> Dict[str, float]:
    """The ``auto`` rule of the official examples (sizes in latent px; ``base`` = training latent size).

    f = max(H, W) / base:  f <= 1 -> R 0, W0 0;  both sides >= 1.5 base and long side == 2 base ->
    R 10 with W0 2000 (square) / 1500;  otherwise R 7, W0 1000.  The W0 values are the official
    SDXL (base 128) ones; for another base they are scaled by (base/128)^2 together with the
    activation threshold, which keeps the per-element RRG coefficient 2*W0/(C*H*W) and the active
    steps of the official presets at the same factor.
    """
    check_int("height", height, 1)
    check_int("width", width, 1)
    check_int("base", base, 1)
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
    """All hyper-parameters of a preset (pure function).

    The constants are the official Gradio examples (cfg 10, new_p 0.3, cosine 10, rrg_stop_t 0.4,
    repaint, patch base/2, view batch 16, 50 steps).  ``auto`` adds R / W0 / RRG threshold from
    :func:`auto_preset` (needs height, width, base in latent px); ``custom`` uses R = 0, W0 = 0,
    threshold 10 unless given.  ``overrides`` (non-None) win in both cases.
    """
    check_choice("preset", preset, PRESETS)
    out: Dict[str, Any] = {"cfg": 10.0, "new_p": 0.3, "cosine_scale": 10.0, "rrg_stop_t": 0.4, "repaint": True,
                           "view_batch_size": 16, "steps": 50}
    if base is not None:
        out["patch_size"] = max(1, int(base) // 2)
    if preset == "auto":
        if height is None or width is None or base is None:
            raise ValueError("preset='auto' needs height, width and base (latent px)")
        out.update(auto_preset(int(height), int(width), int(base)))
    else:
        out.update({"resampling_steps": 0, "rrg_init_weight": 0.0, "rrg_min_weight": RRG_MIN_WEIGHT})
    out.update({k: v for k, v in overrides.items() if v is not None})
    return out


# ---------------------------------------------------------------------------------------------
# the resolved configuration and its validator
# ---------------------------------------------------------------------------------------------

@dataclass(frozen=True)
class ElasticConfig:
    """Resolved, validated hyper-parameters of one run (see the module docstring for meanings)."""
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
    background: Optional[torch.Tensor] = field(default=None, compare=False, repr=False)


def latent_size_from_pixels(width_px: int, height_px: int, multiple: int = official.VAE_SCALE) -> Tuple[int, int]:
    """(H, W) latent size of a pixel size; raises ValueError when a side is not a multiple of the VAE grid."""
    for name, v in (("width", width_px), ("height", height_px)):
        check_int(name, v, multiple)
        if v % multiple:
            raise ValueError(f"{name}={v} px is not a multiple of the latent grid; allowed: multiples of {multiple}")
    return height_px // multiple, width_px // multiple


def check_background(bg, channels: int) -> Optional[torch.Tensor]:
    """A finite palette [K, C] or [K, C, h, w] (K >= 1 colour latents), or None."""
    if bg is None:
        return None
    if not torch.is_tensor(bg) or bg.dim() not in (2, 4) or bg.shape[0] < 1 or bg.shape[1] != channels:
        got = tuple(bg.shape) if torch.is_tensor(bg) else type(bg).__name__
        raise ValueError(f"background must be a tensor [K, {channels}] or [K, {channels}, h, w] "
                         f"(K >= 1 colour latents), got {got}")
    if not torch.isfinite(bg).all():
        raise ValueError("background must be finite")
    return bg


def _check_shape(latent_shape: Sequence[int]) -> Tuple[int, int, int, int]:
    shape = tuple(int(s) for s in latent_shape)
    if len(shape) != 4:
        raise ValueError(f"latent shape {shape} must be 4-D (B, C, H, W)")
    for name, v in zip(("batch", "channels", "height", "width"), shape):
        check_int(name, v, 1)
    return shape


def _check_size_rules(H: int, W: int, base: int, mode: str, max_factor) -> Optional[float]:
    """The size limits: ``max_factor`` and, in faithful mode, what the official map can run."""
    if max_factor is not None:
        max_factor = check_float("max_factor", max_factor, 1.0)
        factor = max(H, W) / base
        if factor > max_factor + 1e-12:
            raise ValueError(f"size {H}x{W} latent px is {factor:.3g}x the base size {base}; "
                             f"allowed: at most max_factor={max_factor:g}x")
    if mode == "faithful":
        official.check_official_size(H, W, base)
    return max_factor


def validate_elastic(latent_shape: Sequence[int], sigmas=None, *, steps: Optional[int] = None,
                     **options) -> ElasticConfig:
    """Check every input before any model work; returns the resolved :class:`ElasticConfig`.

    ``latent_shape`` = (B, C, H, W).  Raises ``ValueError`` naming the input and what is allowed:
    unknown options, base / patch size (patch > base), new_p outside (0, 1], steps < 1, sigmas (the
    shared rule of ``common.check_sigmas``), background shape, factor above ``max_factor``, and in
    faithful mode sizes the official code cannot run (factor > 2 or its shape bugs).
    """
    unknown = sorted(set(options) - set(OPTION_NAMES) - {"seed"})
    if unknown:
        raise ValueError(f"unknown option(s) {unknown}; allowed: {', '.join(OPTION_NAMES)}, seed")
    B, C, H, W = _check_shape(latent_shape)
    if options.get("base") is None:
        raise ValueError("base (training latent size, e.g. 64 for SD1.x, 128 for SDXL) is required")
    base = check_int("base", options["base"], 1)
    mode = check_choice("mode", options.get("mode", "clean"), MODES)
    preset = check_choice("preset", options.get("preset", "auto"), PRESETS)
    hp = elastic_preset(preset, H, W, base) if preset == "auto" else elastic_preset("custom", base=base)

    def opt(name):
        v = options.get(name)
        return hp.get(name) if v is None else v

    if steps is not None:
        check_int("steps", steps, 1)
    if sigmas is not None:
        sig = check_sigmas(sigmas)
        steps = len(sig) - 1 if steps is None else steps
    patch = options.get("patch_size")
    patch = check_int("patch_size", max(1, base // 2) if patch is None else patch, 1)
    if patch > base:
        raise ValueError(f"patch_size={patch} is larger than the base size {base} (latent px); allowed: 1..{base}")
    return ElasticConfig(
        height=H, width=W, channels=C, base=base, cfg=check_float("cfg", opt("cfg")), preset=preset,
        resampling_steps=check_int("resampling_steps", opt("resampling_steps"), 0),
        rrg_init_weight=check_float("rrg_init_weight", opt("rrg_init_weight"), 0.0),
        rrg_min_weight=check_float("rrg_min_weight", opt("rrg_min_weight"), 0.0),
        new_p=check_float("new_p", opt("new_p"), 0.0, 1.0, lo_open=True),
        cosine_scale=check_float("cosine_scale", opt("cosine_scale"), 0.0),
        rrg_stop_t=check_float("rrg_stop_t", opt("rrg_stop_t"), 0.0, 1.0),
        repaint=check_bool("repaint", opt("repaint")), patch_size=patch,
        view_batch_size=check_int("view_batch_size", opt("view_batch_size"), 1),
        ref_batch_size=check_int("ref_batch_size", options.get("ref_batch_size", 0) or 0, 0), mode=mode,
        max_factor=_check_size_rules(H, W, base, mode, options.get("max_factor")), steps=steps,
        background=check_background(options.get("background"), C))


# ---------------------------------------------------------------------------------------------
# the plan: everything computed once per run
# ---------------------------------------------------------------------------------------------

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
    RRG needs no model call (it reuses the last reference scores).
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
    """Resolved config + geometry + views + background palette for one canvas (:func:`make_plan`)."""
    config: ElasticConfig
    geometry: ElasticGeometry
    views: List[View]
    norm: torch.Tensor
    background: torch.Tensor
    dtype: torch.dtype
    device: torch.device

    @property
    def trivial(self) -> bool:
        """At or below base: one view = the whole canvas = the reference, so its uncond is reused."""
        return self.geometry.trivial and len(self.views) == 1


def make_plan(config: ElasticConfig, *, device=None, dtype=torch.float32) -> ElasticPlan:
    """Precompute the geometry, windows, weights and background of an already validated config."""
    device = torch.device("cpu") if device is None else torch.device(device)
    geo = ElasticGeometry.build(config.height, config.width, config.base, config.mode).to(device)
    views, norm = make_views(config.height, config.width, config.base, config.patch_size, config.mode)
    for v in views:
        v.wy, v.wx = v.wy.to(device, dtype), v.wx.to(device, dtype)
    bg = torch.zeros(1, config.channels) if config.background is None else config.background
    return ElasticPlan(config, geo, views, norm.to(device, dtype), bg.detach().to(device, dtype), dtype, device)


def build_plan(latent_shape: Sequence[int], sigmas=None, *, device=None, dtype=torch.float32,
               **options) -> ElasticPlan:
    """Validate the options (:func:`validate_elastic`) and make the run's plan."""
    cfg = validate_elastic(latent_shape, sigmas, **{k: v for k, v in options.items() if k != "seed"})
    return make_plan(cfg, device=device, dtype=dtype)
