"""Operator-splitting guided sampling (LTSP / STSP), pure torch.

``sampler``: the method (the update rule, :func:`sample_split`); ``options``: methods, options,
the resolved :class:`SplitConfig`, validation and call counts; ``protocols``: how the sampler gets
the base prediction and the guidance term; ``grid``: the paper's respaced step grid.
"""
from .grid import respaced_timesteps, split_respace_sigmas
from .options import (DEFAULTS, GRID_DEFAULTS, METHODS, OPTION_CHOICES, SplitConfig, check_steps, min_steps, nfe_per_run,
                      parse_method, validate_guidance, validate_probe, validate_split_options)
from .protocols import BaseOnlyStandIn, ColorStatsGuidance, Guidance, SplitProbe
from .sampler import (SAMPLERS, ab_coefficients, run_split, sample_ddim, sample_ltsp2, sample_ltsp4, sample_plms2,
                      sample_plms4, sample_split, sample_stsp2, sample_stsp4)

__all__ = [
    "METHODS", "OPTION_CHOICES", "DEFAULTS", "GRID_DEFAULTS", "SplitConfig", "parse_method", "min_steps", "check_steps",
    "validate_split_options", "validate_guidance", "validate_probe", "nfe_per_run",
    "ab_coefficients", "sample_split", "run_split", "SAMPLERS",
    "sample_ddim", "sample_plms2", "sample_plms4", "sample_ltsp2", "sample_ltsp4", "sample_stsp2", "sample_stsp4",
    "SplitProbe", "BaseOnlyStandIn", "Guidance", "ColorStatsGuidance", "respaced_timesteps", "split_respace_sigmas",
]
