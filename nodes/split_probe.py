"""How the split sampler reads ComfyUI's guided prediction.

The base prediction D_b of each model call comes from ComfyUI's post-CFG hook (its arguments carry
``denoised``, ``cond_denoised`` and ``uncond_denoised``); a base-only call (one cond or uncond pass,
sequential mode) comes from :class:`SplitGuider`.  :func:`make_split_sampler` builds the SAMPLER.
"""
from __future__ import annotations

import dataclasses

import comfy.model_patcher
import comfy.samplers

from ..samplers import split
from . import sampling


class SplitGuider(comfy.samplers.CFGGuider):
    """CFGGuider that can also make a *base-only* call (one cond or uncond pass).

    The split sampler's sequential mode evaluates the base field alone at intermediate points;
    it asks for that with ``model_options["split_base_only"] = "cond" | "uncond"``.  Every other
    call is exactly CFGGuider's (so CFG patches, RescaleCFG and post-CFG hooks are untouched).
    """

    def predict_noise(self, x, timestep, model_options={}, seed=None):
        only = model_options.get("split_base_only")
        if only:
            cond = self.conds.get("positive" if only == "cond" else "negative")
            return comfy.samplers.calc_cond_batch(self.inner_model, [cond], x, timestep, model_options)[0]
        return super().predict_noise(x, timestep, model_options=model_options, seed=seed)


def split_guider(model, positive, negative, cfg: float) -> SplitGuider:
    """A CFG guider for the one-node sampler (base-only calls make sequential mode cheaper)."""
    guider = SplitGuider(model)
    guider.set_conds(positive, negative)
    guider.set_cfg(cfg)
    return guider


class ComfySplitProbe(split.SplitProbe):
    """Split probe fed by ComfyUI's post-CFG hook; blends D_b like the model output is blended
    under an inpainting mask (so G vanishes in the kept region)."""

    def __init__(self, model, extra_args):
        super().__init__()
        self.model, self.extra_args = model, extra_args
        if isinstance(getattr(model, "inner_model", None), SplitGuider):
            self.predict_base = self._predict_base

    def post_cfg_function(self, args):
        """ComfyUI ``sampler_post_cfg_function``: record the pieces, return ``args['denoised']`` unchanged."""
        self.sigma = args.get("sigma")
        self.record(args["denoised"], args.get("cond_denoised"), args.get("uncond_denoised"))
        return args["denoised"]

    def base_prediction(self, denoised, split_base):
        base = super().base_prediction(denoised, split_base)
        mask = self.extra_args.get("denoise_mask")
        latent = getattr(self.model, "latent_image", None)
        if mask is not None and latent is not None:
            fn = self.extra_args.get("model_options", {}).get("denoise_mask_function")
            if fn is not None:             # e.g. Differential Diffusion: the same mask the model wrapper used
                mask = fn(self.sigma, mask, extra_options={"model": self.model.inner_model,
                                                            "sigmas": self.model.sigmas})
            base = base * mask + latent * (1.0 - mask)
        return base

    def _predict_base(self, x, sigma, split_base, **extra_args):
        mo = dict(extra_args.get("model_options", {}))
        mo["split_base_only"] = split_base
        return self.model(x, sigma, **{**extra_args, "model_options": mo})


def sample_split_comfy(model, x, sigmas, extra_args=None, callback=None, disable=None, *, config):
    """The k-diffusion function behind the SAMPLER: installs the probe hook, then runs the validated config."""
    sampling.check_sampler_input(x, extra_args, model)
    extra_args = dict(extra_args or {})
    proxy = sampling.ModelProxy(model)
    if config.split_term == "cfg_delta":
        probe = ComfySplitProbe(proxy, extra_args)
        mo = dict(extra_args.get("model_options", {}))
        extra_args["model_options"] = comfy.model_patcher.set_model_options_post_cfg_function(
            mo, probe.post_cfg_function, disable_cfg1_optimization=(config.split_base == "uncond"))
        config = dataclasses.replace(config, split_probe=probe)
    return split.run_split(proxy, x, sigmas, config, extra_args=extra_args, callback=callback)


def validated_config(method, steps=None, base_only=False, **options) -> split.SplitConfig:
    """The one cross-field validation of a node's options (ValueError naming the input, before any model
    work).  With ``split_term='cfg_delta'`` the probe is installed at run time; a stand-in takes its place.
    ``base_only``: the run's guider is a :class:`SplitGuider` (so ``eval_mode='auto'`` is sequential)."""
    stand_in = None
    if options.get("split_term", split.DEFAULTS["split_term"]) == "cfg_delta":
        stand_in = split.BaseOnlyStandIn() if base_only else split.SplitProbe()
    return split.validate_split_options(method, steps, split_probe=stand_in, **options)


def make_split_sampler(config: split.SplitConfig):
    """The SAMPLER of a validated config (for SamplerCustomAdvanced or the one-node sampler)."""
    return comfy.samplers.KSAMPLER(sample_split_comfy, extra_options={"config": config})
