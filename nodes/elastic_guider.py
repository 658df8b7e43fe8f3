"""ElasticCFGGuider: a CFGGuider whose model calls all happen at the base (training) size.

* :meth:`ElasticCFGGuider.elastic_denoiser` implements the pure sampler's denoiser protocol: every call
  goes through ``calc_cond_batch`` on base x base inputs, with per-call copies of the conditioning
  (SDXL size/crop conditioning re-encoded for the call, ``size_cond``);
* :meth:`ElasticCFGGuider.predict_noise` returns the composite ElasticDiffusion x0 estimate (global +
  local passes, no repaint/RRG), so the guider also works with any stock sampler;
* a PREPARE_SAMPLING wrapper (on a clone of the model) reserves memory for base-size batches, not
  for the full canvas;
* :meth:`ElasticCFGGuider.config_for` is the run's validated configuration: ``validate_elastic`` runs
  once per guider and latent size (the one-node sampler resolves it before sampling starts).
"""
from __future__ import annotations

import dataclasses
import math

import torch

import comfy.conds
import comfy.model_management
import comfy.patcher_extension
import comfy.samplers

from ..samplers import elastic
from ..samplers.common import check_x
from . import sampling
from .elastic_host import VAE_SCALE, check_supported_conditioning, is_sdxl_like


def size_params(size_cond: str, m: elastic.RowMeta) -> dict:
    """SDXL size/crop conditioning (pixels) of one row: 'official_4x' = 4x the canvas as the official
    code, 'target' = the canvas, 'per_call' = base size for the reference, canvas + crop offset for
    patches."""
    s = VAE_SCALE
    H, W = m.canvas
    if size_cond == "official_4x":
        return dict(width=4 * W * s, height=4 * H * s, crop_w=0, crop_h=0, target_width=4 * W * s,
                    target_height=4 * H * s)
    if size_cond == "target":
        return dict(width=W * s, height=H * s, crop_w=0, crop_h=0, target_width=W * s, target_height=H * s)
    if m.role == "reference":
        return dict(width=m.base * s, height=m.base * s, crop_w=0, crop_h=0, target_width=m.base * s,
                    target_height=m.base * s)
    top, left = m.source[0], m.source[1]
    return dict(width=W * s, height=H * s, crop_w=left * s, crop_h=top * s, target_width=m.base * s,
                target_height=m.base * s)


def schedule_index(sigma: float, sample_sigmas) -> int:
    """The step key of an evaluation by a stock sampler, which does not say which step it is at.

    ComfyUI hands the model the run's schedule (``transformer_options["sample_sigmas"]``); the key is
    the position of the evaluated sigma in it: the step itself for samplers that evaluate at the
    schedule's sigmas (euler, euler_ancestral, dpmpp_2m, ...), the nearest schedule point for the
    intermediate evaluations of multi-stage samplers (heun, dpm_2, ...).  0 without a schedule.
    """
    if sample_sigmas is None:
        return 0
    return int((sample_sigmas.float().cpu() - sigma).abs().argmin())


class ElasticCFGGuider(comfy.samplers.CFGGuider):
    """The guider of both Elastic nodes (see the module docstring)."""

    def __init__(self, model_patcher, base: int = 64, size_cond: str = "per_call", **options):
        m = model_patcher.clone()
        m.add_wrapper_with_key(comfy.patcher_extension.WrappersMP.PREPARE_SAMPLING, "nse_elastic",
                               self._prepare_sampling_wrapper)
        super().__init__(m)
        self._ycache = {}
        self.set_elastic(base, size_cond, **options)

    # -- configuration ------------------------------------------------------------------
    def set_elastic(self, base: int, size_cond: str = "per_call", **options):
        """Base size (latent px), SDXL size conditioning and the pure sampler's options."""
        self.base = int(base)
        self.size_cond = size_cond
        self.elastic_options = dict(options)
        self._config = self._plan = None

    def set_cfg(self, cfg):
        super().set_cfg(cfg)
        self._config = self._plan = None

    def set_background(self, background):
        """The colour latents of the pads ([K, C] or [K, C, h, w]; None = zeros), checked against a
        config resolved already."""
        self.elastic_options["background"] = background
        if self._config is not None:
            bg = elastic.check_background(background, self._config.channels)
            self._config = dataclasses.replace(self._config, background=bg)
        self._plan = None

    def config_for(self, shape, sigmas=None) -> elastic.ElasticConfig:
        """The validated configuration for latents of ``shape`` (and the run's ``sigmas`` when known)."""
        c = self._config
        if len(shape) == 4 and 0 in tuple(shape):
            raise ValueError(f"latent_image must be a non-empty 4-D image latent [B,C,H,W] (got shape {tuple(shape)})")
        sampling.check_channels(tuple(shape), self.model_patcher)
        if c is None or (c.channels, c.height, c.width) != tuple(shape[1:]):
            c = elastic.validate_elastic(shape, sigmas, base=self.base, cfg=self.cfg, **self.elastic_options)
            self._config, self._plan = c, None
        return c

    def plan_for(self, x) -> elastic.ElasticPlan:
        config = self.config_for(x.shape)
        if self._plan is None or self._plan[0] != x.device:
            self._plan = (x.device, elastic.make_plan(config, device=x.device, dtype=torch.float32))
        return self._plan[1]

    def inner_set_conds(self, conds):
        for k, v in conds.items():
            check_supported_conditioning(k, v)
        super().inner_set_conds(conds)

    def _prepare_sampling_wrapper(self, executor, model, noise_shape, *args, **kwargs):
        """Reserve memory for the largest base-size call, not the full canvas: the reference call has
        2B(R+1) rows (or 2B·ref_batch_size), a patch call view_batch_size·B; ComfyUI's estimate
        doubles the batch for cond/uncond, hence the halving."""
        shape = list(noise_shape)
        self._x_checked = False
        if len(shape) == 4:
            B = shape[0]
            cfg = self.config_for(shape)
            rounds = cfg.resampling_steps + 1
            if cfg.ref_batch_size:
                rounds = min(rounds, cfg.ref_batch_size)
            vbs = 0 if max(shape[2], shape[3]) <= self.base else cfg.view_batch_size   # no patch calls
            rows = max(B, math.ceil(max(2 * B * rounds, vbs * B) / 2))
            shape = [rows, shape[1], self.base, self.base]
        return executor(model, shape, *args, **kwargs)

    # -- per-call conditioning -------------------------------------------------------------
    def _row_y(self, key, j, cond, params, x1):
        ck = (key, j, tuple(sorted(params.items())))
        y = self._ycache.get(ck)
        if y is None:
            c = dict(cond)
            c.update(params)
            enc = comfy.samplers.encode_model_conds(self.inner_model.extra_conds, [c], x1, x1.device, key)[0]
            y = enc["model_conds"]["y"].cond
            self._ycache[ck] = y
        return y

    def conds_for(self, key, metas, x):
        """The processed conds of ``key`` for a base-size call with rows ``metas``."""
        conds = self.conds.get(key)
        if conds is None or self.size_cond == "keep" or not is_sdxl_like(self.model_patcher):
            return conds
        out = []
        for j, c in enumerate(conds):
            if "y" not in c.get("model_conds", {}):
                out.append(c)
                continue
            ys = torch.cat([self._row_y(key, j, c, size_params(self.size_cond, m), x[:1]) for m in metas])
            mc = dict(c["model_conds"])
            mc["y"] = comfy.conds.CONDRegular(ys)
            out.append(dict(c, model_conds=mc))
        return out

    # -- the denoiser protocol of samplers/elastic ------------------------------------------
    def elastic_denoiser(self, model_options):
        """``denoiser(x, sigma, which, meta) -> x0`` for the pure sampler, bound to ``model_options``."""
        guider = self

        def denoiser(x, sigma, which, meta):
            comfy.model_management.throw_exception_if_processing_interrupted()
            n = x.shape[0]
            half = n // 2
            pair = (n % 2 == 0 and all(w == "cond" for w in which[:half])
                    and all(w == "uncond" for w in which[half:]) and torch.equal(x[:half], x[half:]))
            if pair:                    # a reference call: one calc_cond_batch for both halves
                xc = x[:half]
                pos = guider.conds_for("positive", meta[:half], xc)
                neg = guider.conds_for("negative", meta[half:], xc)
                out = comfy.samplers.calc_cond_batch(guider.inner_model, [pos, neg], xc, sigma[:half], model_options)
                return torch.cat(out)
            outs = torch.empty_like(x)
            for kind, key in (("cond", "positive"), ("uncond", "negative")):
                idx = [i for i, w in enumerate(which) if w == kind]
                if not idx:
                    continue
                xi = x[idx]
                conds = guider.conds_for(key, [meta[i] for i in idx], xi)
                outs[idx] = comfy.samplers.calc_cond_batch(guider.inner_model, [conds], xi, sigma[idx],
                                                           model_options)[0].to(x.dtype)
            return outs

        denoiser.base = self.base
        return denoiser

    def composite(self, x, sigma: float, step: int, model_options, seed=None):
        """The composite x0 at the current cfg (global + local passes) for step ``step``."""
        if not getattr(self, "_x_checked", False):     # once per run: the sampled latent is finite
            check_x(x, "latent_image")
            self._x_checked = True
        plan = self.plan_for(x)
        rnd = elastic.StepRandom(plan, 0 if seed is None else seed, step)
        d, _ = elastic.elastic_denoise(self.elastic_denoiser(model_options), x.float(), sigma, plan, rnd,
                                       rounds=plan.config.resampling_steps + 1, scale=self.cfg)
        return d.to(x.dtype)

    def predict_noise(self, x, timestep, model_options={}, seed=None):
        """For stock samplers: the composite x0 of the evaluated sigma, keyed by :func:`schedule_index`."""
        sigma = float(timestep.reshape(-1)[0])
        step = schedule_index(sigma, model_options.get("transformer_options", {}).get("sample_sigmas"))
        return self.composite(x, sigma, step, model_options, seed)
