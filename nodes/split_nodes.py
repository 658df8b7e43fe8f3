"""Operator-splitting nodes: SplitGuidedSampler (one node), SplitSampler (SAMPLER), SplitRespace
(SIGMAS), SplitColorGuidance (GUIDANCE)."""
from __future__ import annotations

import comfy.samplers
import latent_preview
from comfy_api.latest import io

from ..samplers import split
from . import sampling
from .split_probe import make_split_sampler, split_guider, validated_config

CATEGORY = "sampling/split"
GuidanceType = io.Custom("GUIDANCE")
SCHEDULERS = ["split_respace"] + list(comfy.samplers.SCHEDULER_NAMES)


def _split_inputs():
    """The method's own inputs, shared by SplitSampler and SplitGuidedSampler.  Defaults: the pure ones for
    a non-uniform grid (ComfyUI's schedulers make one; variable weights also measured better on the demo
    model)."""
    c, d = split.OPTION_CHOICES, split.GRID_DEFAULTS
    return [
        io.Combo.Input("method", options=list(split.METHODS), default=split.METHODS[0],
                       tooltip="ltspK/stspK: K-th order Adams-Bashforth on the base field, Euler on the guidance "
                               "term (Lie-Trotter / Strang splitting). plmsK and ddim are the unsplit baselines. Under strong "
                               "CFG at about 6 steps or fewer, ltsp2 with eval_mode shared is the better choice."),
        io.Combo.Input("split_term", options=list(c["split_term"]), default=d["split_term"],
                       tooltip="What is split off and integrated first-order: 'cfg_delta' = the CFG term (final "
                               "prediction minus the base prediction, so other CFG patches are kept), 'gradient' = "
                               "a connected GUIDANCE, 'none' = nothing (ltsp/stsp become iPNDM)."),
        io.Combo.Input("split_base", options=list(c["split_base"]), default=d["split_base"],
                       tooltip="Base field for cfg_delta: the conditional prediction (recommended: cfg 1 is then "
                               "exactly iPNDM) or the unconditional one (the authors' SD convention)."),
        io.Combo.Input("eval_mode", options=list(c["eval_mode"]), default=d["eval_mode"],
                       tooltip="'sequential': each sub-step evaluates at its own point (the paper; with cfg_delta a "
                               "step is one CFG call plus one cond-only pass, 1.5x a CFG sampler's cost, and the best "
                               "quality per model evaluation in our tests); 'shared': one CFG call per step gives "
                               "both terms (the same cost as any CFG sampler; better below about 6 steps). auto = "
                               "sequential, except ltsp + cfg_delta under a plain CFGGuider (SamplerCustomAdvanced), "
                               "where a sequential step would cost two CFG calls: shared."),
        io.Combo.Input("ab_coeffs", options=list(c["ab_coeffs"]), default=d["ab_coeffs"],
                       tooltip="Adams-Bashforth weights: 'variable' (default) = exact for the actual sigma grid, "
                               "which ComfyUI's schedulers make non-uniform; 'fixed' = the paper's constant weights "
                               "(exact on a uniform grid only)."),
        io.Combo.Input("final_step", options=list(c["final_step"]), default=d["final_step"],
                       tooltip="Last step convention: auto = the official one per method, 'ab' = multistep to "
                               "sigma 0, 'denoised' = return the final x0 estimate (ComfyUI ipndm)."),
        io.Float.Input("guidance_scale", default=d["guidance_scale"], min=0.0, max=1000.0, step=0.01,
                       tooltip="Multiplies the displacement of a connected GUIDANCE (split_term = gradient)."),
        GuidanceType.Input("guidance", optional=True,
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
        widgets = dict(method=method, split_term=split_term, split_base=split_base, eval_mode=eval_mode,
                       ab_coeffs=ab_coeffs, final_step=final_step, guidance_scale=guidance_scale)
        sampling.check_widgets(cls, **widgets)
        return io.NodeOutput(make_split_sampler(validated_config(guidance=guidance, **widgets)))


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
        sampling.check_model(model)
        sampling.check_widgets(cls, steps=steps, denoise=denoise)
        return io.NodeOutput(split.split_respace_sigmas(sampling.model_sampling_of(model), steps, denoise))


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
            outputs=[GuidanceType.Output(tooltip="The guidance; connect to a split sampler's 'guidance'.")],
        )

    @classmethod
    def execute(cls, model, reference, strength, match_std):
        ref = sampling.check_latent_for(model, reference, "reference")
        sampling.check_widgets(cls, strength=strength, match_std=match_std)
        ref = model.model.process_latent_in(ref.float())
        return io.NodeOutput(split.ColorStatsGuidance(ref, strength, match_std))


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
        x = sampling.check_latent_for(model, latent_image)
        sampling.check_conds(positive=positive, negative=negative)
        widgets = dict(method=method, split_term=split_term, split_base=split_base, eval_mode=eval_mode,
                       ab_coeffs=ab_coeffs, final_step=final_step, guidance_scale=guidance_scale)
        sampling.check_widgets(cls, seed=seed, steps=steps, cfg=cfg, scheduler=scheduler, denoise=denoise, **widgets)
        sampler = make_split_sampler(validated_config(steps=steps, guidance=guidance, base_only=True, **widgets))
        custom = split.split_respace_sigmas if scheduler == "split_respace" else None
        sigmas = sampling.sigmas_with_denoise(model, scheduler, steps, denoise, custom=custom)
        guider = split_guider(model, positive, negative, cfg)
        callback = latent_preview.prepare_callback(model, len(sigmas) - 1)
        return io.NodeOutput(sampling.run_guider(guider, model, latent_image, sampler, sigmas, seed, callback=callback,
                                                 samples=x))


NODES = [SplitGuidedSampler, SplitSampler, SplitRespace, SplitColorGuidance]
