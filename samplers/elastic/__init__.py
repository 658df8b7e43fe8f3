"""ElasticDiffusion as a pure-torch sampler (no ComfyUI imports).

``sampler.py`` is the method (read it first); ``config.py`` presets, validation and the plan;
``geometry.py`` reference size, sub-pixel cells and windows; ``noise.py`` keyed randomness and pads;
``official.py`` the official code's quirks that faithful mode reproduces.  Design notes: docs/ (Elastic).
"""
from .config import (MODES, PHASES, PRESETS, ROLES, RRG_MIN_WEIGHT, ElasticConfig, ElasticPlan, RowMeta,
                     auto_preset, build_plan, check_background, elastic_preset, latent_size_from_pixels, make_plan,
                     validate_elastic)
from .geometry import ElasticGeometry, View, make_views, reference_size
from .noise import StepRandom, pad_to_base
from .official import VAE_SCALE
from .sampler import (RefInfo, StepResult, elastic_denoise, elastic_step, local_pass, reference_pass,
                      rrg_active_steps, rrg_weight, sample_elastic)

__all__ = [
    "RowMeta", "ElasticConfig", "ElasticGeometry", "ElasticPlan", "StepRandom", "StepResult", "RefInfo", "View",
    "MODES", "PRESETS", "ROLES", "PHASES", "RRG_MIN_WEIGHT", "VAE_SCALE",
    "validate_elastic", "check_background", "latent_size_from_pixels", "build_plan", "make_plan",
    "elastic_preset", "auto_preset", "reference_size", "rrg_weight", "rrg_active_steps",
    "make_views", "pad_to_base",
    "reference_pass", "local_pass", "elastic_denoise", "elastic_step", "sample_elastic",
]
