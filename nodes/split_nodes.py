"""Operator-splitting nodes: SplitGuidedSampler (one node), SplitSampler (SAMPLER), SplitRespace
(SIGMAS), SplitColorGuidance (GUIDANCE)."""
from __future__ import annotations

import torch

import comfy.model_patcher
import comfy.samplers
import latent_preview
from comfy_api.latest import io

from ..samplers import split
from . import sampling

CATEGORY = "sampling/split"
Guidance = io.Custom("GUIDANCE")
SCHEDULERS = ["split_respace"] + list(comfy.samplers.SCHEDULER_NAMES)


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


class ComfySplitProbe(split.SplitProbe):
    """Split probe fed by ComfyUI's post-CFG hook; blends D_b like the model output is blended
    under an inpainting mask (so G vanishes in the kept region)."""

    def __init__(self, model, extra_args):
        super().__init__()
        self.model, self.extra_args = model, extra_args
        if isinstance(getattr(model, "inner_model", None), SplitGuider):
            self.predict_base = self._predict_base

    def post_cfg_function(self, args):
        self.sigma = args.get("sigma")
        return super().post_cfg_function(args)

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


def sample_split_comfy(model, x, sigmas, extra_args=None, callback=None, disable=None, *, method="ltsp4",
                       on_model_call=None, **options):
    """The k-diffusion function behind the SAMPLER: installs the probe hook, then runs sample_split."""
    extra_args = dict(extra_args or {})
    proxy = sampling.ModelProxy(model, on_model_call)
    if options.get("split_term", "cfg_delta") == "cfg_delta":
        split_base = options.get("split_base", "cond")
        probe = ComfySplitProbe(proxy, extra_args)
        mo = dict(extra_args.get("model_options", {}))
        extra_args["model_options"] = comfy.model_patcher.set_model_options_post_cfg_function(
            mo, probe.post_cfg_function, disable_cfg1_optimization=(split_base == "uncond"))
        options["split_probe"] = probe
    return split.sample_split(proxy, x, sigmas, extra_args=extra_args, callback=callback, disable=disable,
                              method=method, **options)


def split_options(split_term, split_base, eval_mode, ab_coeffs, final_step, guidance_scale, guidance):
    opts = dict(split_term=split_term, split_base=split_base, eval_mode=eval_mode, ab_coeffs=ab_coeffs,
                final_step=final_step, guidance_scale=guidance_scale)
    if guidance is not None:
        opts["guidance"] = guidance
    return opts


def validate(method, steps, cfg, opts):
    """All split options checked before any model work (ValueError naming the input)."""
    sampling.check_choice("method", method, list(split.METHODS))
    probe_stub = split.SplitProbe() if opts.get("split_term", "cfg_delta") == "cfg_delta" else None
    split.validate_split_options(method, steps, cfg=cfg, split_probe=probe_stub, **opts)


def _split_inputs():
    c = split.OPTION_CHOICES
    return [
        io.Combo.Input("method", options=list(split.METHODS), default="ltsp4",
                       tooltip="ltspK/stspK: K-th order Adams-Bashforth on the base field, Euler on the guidance "
                               "term (Lie-Trotter / Strang splitting). plmsK and ddim are the unsplit baselines."),
        io.Combo.Input("split_term", options=list(c["split_term"]), default="cfg_delta",
                       tooltip="What is split off and integrated first-order: 'cfg_delta' = the CFG term (final "
                               "prediction minus the base prediction, so other CFG patches are kept), 'gradient' = "
                               "a connected GUIDANCE, 'none' = nothing (ltsp/stsp become iPNDM)."),
        io.Combo.Input("split_base", options=list(c["split_base"]), default="cond",
                       tooltip="Base field for cfg_delta: the conditional prediction (recommended: cfg 1 is then "
                               "exactly iPNDM) or the unconditional one (the authors' SD convention)."),
        io.Combo.Input("eval_mode", options=list(c["eval_mode"]), default="auto",
                       tooltip="'shared': one model call per step gives base and guidance (same cost as any CFG "
                               "sampler); 'sequential': each sub-step evaluates at its own point (the paper; more "
                               "calls). auto = shared for ltsp + cfg_delta, sequential otherwise."),
        io.Combo.Input("ab_coeffs", options=list(c["ab_coeffs"]), default="fixed",
                       tooltip="Adams-Bashforth weights: 'fixed' as the paper, or 'variable' for the actual "
                               "sigma grid."),
        io.Combo.Input("final_step", options=list(c["final_step"]), default="auto",
                       tooltip="Last step convention: auto = the official one per method, 'ab' = multistep to "
                               "sigma 0, 'denoised' = return the final x0 estimate (ComfyUI ipndm)."),
        io.Float.Input("guidance_scale", default=1.0, min=0.0, max=1000.0, step=0.01,
                       tooltip="Multiplies the displacement of a connected GUIDANCE (split_term = gradient)."),
        Guidance.Input("guidance", optional=True,
                       tooltip="Optional gradient guidance (e.g. Split Color Guidance); needs split_term = "
                               "gradient."),
    ]


class SplitSampler(io.ComfyNode):
    @classmethod
    def define_schema(cls):
        return io.Schema(
            node_id="SplitSampler",
            display_name="Split Sampler (LTSP/STSP)",
            category=CATEGORY,
            description="Operator-splitting guided sampling (Wizadwongsa & Suwajanakorn, ICLR 2023) as a SAMPLER for "
                        "SamplerCustomAdvanced: high-order multistep on the base field, first-order Euler on the "
                        "guidance term, so guided sampling stays stable at low step counts. Works with CFGGuider "
                        "(the guidance term is read through a post-CFG hook).",
            inputs=_split_inputs(),
            outputs=[io.Sampler.Output(tooltip="The split sampler; connect to SamplerCustomAdvanced.")],
        )

    @classmethod
    def execute(cls, method, split_term, split_base, eval_mode, ab_coeffs, final_step, guidance_scale,
                guidance=None):
        opts = split_options(split_term, split_base, eval_mode, ab_coeffs, final_step, guidance_scale, guidance)
        validate(method, None, None, opts)
        return io.NodeOutput(comfy.samplers.KSAMPLER(sample_split_comfy, extra_options=dict(method=method, **opts)))


class SplitRespace(io.ComfyNode):
    @classmethod
    def define_schema(cls):
        return io.Schema(
            node_id="SplitRespace",
            display_name="Split Respace (paper grid)",
            category=CATEGORY,
            description="The paper's step grid: timesteps round(i (T-1)/(N-1)) of the model's own table (guided-"
                        "diffusion respacing), as SIGMAS ending in 0. Close to ddim_uniform but not identical.",
            inputs=[io.Model.Input("model", tooltip="The model whose noise table is respaced."),
                    io.Int.Input("steps", default=20, min=1, max=1000, tooltip="Number of steps N."),
                    io.Float.Input("denoise", default=1.0, min=0.01, max=1.0, step=0.01,
                                   tooltip="Below 1: keep the last steps of a longer grid (img2img).")],
            outputs=[io.Sigmas.Output(tooltip="N+1 sigmas ending in 0.")],
        )

    @classmethod
    def execute(cls, model, steps, denoise):
        sampling.check_int("steps", steps, 1, 1000)
        sampling.check_float("denoise", denoise, 0.0, 1.0, lo_open=True, what="in (0, 1]")
        return io.NodeOutput(split.split_respace_sigmas(sampling.model_sampling_of(model), steps, denoise))


class ColorStatsGuidance(split.Guidance):
    """GUIDANCE example: pull the x0 estimate's per-channel statistics toward a reference latent.

    ``G = -strength * grad_{x0} L(x0)`` at ``x0 = D_b`` with
    ``L = 1/2 * sum_c HW * [(mean_c(x0) - mean_c(ref))^2 (+ (std_c(x0) - std_c(ref))^2)]``, so
    strength 1 moves the channel means all the way to the reference's in one evaluation.  The
    gradient is taken with autograd (the sampler calls guidance objects with autograd enabled,
    outside inference mode).  Write your own GUIDANCE the same way: any object with
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


class SplitColorGuidance(io.ComfyNode):
    @classmethod
    def define_schema(cls):
        return io.Schema(
            node_id="SplitColorGuidance",
            display_name="Split Color Guidance",
            category=CATEGORY,
            description="A GUIDANCE for the split samplers: pulls every x0 estimate's per-channel colour statistics "
                        "toward those of a reference latent (colour transfer). It is integrated first-order by "
                        "LTSP/STSP (split_term = gradient). Also the documented example for writing your own.",
            inputs=[io.Model.Input("model", tooltip="The model (to bring the reference into the model's latent "
                                                    "space)."),
                    io.Latent.Input("reference", tooltip="Reference latent (e.g. a VAE-encoded image) whose colour "
                                                         "statistics are the target."),
                    io.Float.Input("strength", default=0.3, min=0.0, max=10.0, step=0.01,
                                   tooltip="Fraction of the mean mismatch removed per evaluation (times the "
                                           "sampler's guidance_scale)."),
                    io.Boolean.Input("match_std", default=True,
                                     tooltip="Also match the per-channel standard deviation (contrast).")],
            outputs=[Guidance.Output(tooltip="The guidance; connect to a split sampler's 'guidance'.")],
        )

    @classmethod
    def execute(cls, model, reference, strength, match_std):
        ref = sampling.check_latent(reference, "reference")
        sampling.check_float("strength", strength, 0.0)
        ref = model.model.process_latent_in(ref.float())
        return io.NodeOutput(ColorStatsGuidance(ref, strength, match_std))


class SplitGuidedSampler(io.ComfyNode):
    @classmethod
    def define_schema(cls):
        return io.Schema(
            node_id="SplitGuidedSampler",
            display_name="Split Guided Sampler (LTSP/STSP)",
            category=CATEGORY,
            description="KSampler-like node for operator-splitting guided sampling (ICLR 2023): the base field is "
                        "integrated with high-order Adams-Bashforth (PLMS/iPNDM), the guidance term (CFG "
                        "difference or a gradient GUIDANCE) with Euler, in Lie-Trotter (ltsp) or Strang (stsp) "
                        "order, so strong guidance stays stable and sharp with few steps.",
            inputs=[
                io.Model.Input("model", tooltip="The diffusion model (LoRA and model patches apply as usual)."),
                io.Conditioning.Input("positive", tooltip="Positive conditioning."),
                io.Conditioning.Input("negative", tooltip="Negative conditioning (used when cfg > 1)."),
                io.Latent.Input("latent_image", tooltip="Latent to sample (denoise < 1 for img2img, noise mask for "
                                                        "inpainting)."),
                io.Int.Input("seed", default=0, min=0, max=0xFFFFFFFFFFFFFFFF, control_after_generate=True,
                             tooltip="Seed of the initial noise."),
                io.Int.Input("steps", default=20, min=1, max=1000, tooltip="Sampling steps."),
                io.Float.Input("cfg", default=7.5, min=0.0, max=100.0, step=0.1,
                               tooltip="Classifier-free guidance scale."),
                io.Combo.Input("scheduler", options=SCHEDULERS, default="split_respace",
                               tooltip="Step grid: the paper's respaced grid or any ComfyUI scheduler."),
                io.Float.Input("denoise", default=1.0, min=0.01, max=1.0, step=0.01,
                               tooltip="Below 1: img2img / partial denoising, as in KSampler."),
            ] + _split_inputs(),
            outputs=[io.Latent.Output(tooltip="The sampled latent.")],
        )

    @classmethod
    def execute(cls, model, positive, negative, latent_image, seed, steps, cfg, scheduler, denoise, method,
                split_term, split_base, eval_mode, ab_coeffs, final_step, guidance_scale, guidance=None):
        sampling.check_latent(latent_image)
        sampling.check_int("seed", seed, 0, 0xFFFFFFFFFFFFFFFF)
        sampling.check_int("steps", steps, 1, 1000)
        sampling.check_float("cfg", cfg, 0.0, 100.0)
        sampling.check_choice("scheduler", scheduler, SCHEDULERS)
        sampling.check_float("denoise", denoise, 0.0, 1.0, lo_open=True, what="in (0, 1]")
        opts = split_options(split_term, split_base, eval_mode, ab_coeffs, final_step, guidance_scale, guidance)
        validate(method, steps, cfg, opts)
        custom = split.split_respace_sigmas if scheduler == "split_respace" else None
        sigmas = sampling.sigmas_with_denoise(model, scheduler, steps, denoise, custom=custom)
        guider = SplitGuider(model)
        guider.set_conds(positive, negative)
        guider.set_cfg(cfg)
        callback = latent_preview.prepare_callback(model, len(sigmas) - 1)
        sampler = comfy.samplers.KSAMPLER(sample_split_comfy, extra_options=dict(method=method, **opts))
        return io.NodeOutput(sampling.run_guider(guider, model, latent_image, sampler, sigmas, seed, callback=callback))


NODES = [SplitGuidedSampler, SplitSampler, SplitRespace, SplitColorGuidance]
