"""ElasticDiffusion nodes: ElasticLatentSampler (one node) and ElasticGuider (a GUIDER).

Both build an :class:`~.elastic_guider.ElasticCFGGuider`.  Widget values are checked against the node's
own schema; the cross-field rules run once, in the pure ``validate_elastic``, when the latent size is
known: at node time for the sampler, when sampling starts for the guider.
"""
from __future__ import annotations

import logging

import comfy.samplers
import latent_preview
from comfy_api.latest import io

from ..samplers import elastic
from . import sampling
from .elastic_guider import ElasticCFGGuider
from .elastic_host import VAE_SCALE, background_latents, check_model, detect_base_px

CATEGORY = "sampling/elastic"
SIZE_COND = ["per_call", "official_4x", "target", "keep"]


# ------------------------------------------------------------------------------------------
# inputs
# ------------------------------------------------------------------------------------------
def _model_cond_inputs():
    return [io.Model.Input("model", tooltip="An EPS or v-prediction model (SD1.x, SD2.x, SDXL)."),
            io.Conditioning.Input("positive", tooltip="Positive conditioning (no masks, areas or ControlNet)."),
            io.Conditioning.Input("negative", tooltip="Negative conditioning.")]


#: widgets of the full step only (repaint and reduced-resolution guidance change the sampler's state,
#: which a GUIDER cannot do); ElasticGuider does not show them.
STEP_ONLY = ("rrg_init_weight", "cosine_scale", "rrg_stop_t", "repaint")
STEP_ONLY_DEFAULTS = {"rrg_init_weight": -1.0, "cosine_scale": 10.0, "rrg_stop_t": 0.4, "repaint": False}


def _elastic_inputs(step_only: bool = True):
    inputs = [
        io.Combo.Input("preset", options=list(elastic.PRESETS), default="auto",
                       tooltip="'auto' picks resampling steps and RRG weight from the target size over the base "
                               "size (the paper's table); 'custom' uses the values below (-1 = 0)."),
        io.Int.Input("resampling_steps", default=-1, min=-1, max=100,
                     tooltip="Resampling rounds R of the global reference (-1 = from the preset)."),
        io.Float.Input("new_p", default=0.3, min=0.01, max=1.0, step=0.01,
                       tooltip="Probability that a reference pixel takes a new sub-pixel in each resampling round."),
        io.Float.Input("rrg_init_weight", default=-1.0, min=-1.0, max=100000.0, step=10.0,
                       tooltip="Initial weight of reduced-resolution guidance (-1 = from the preset)."),
        io.Float.Input("cosine_scale", default=10.0, min=0.0, max=100.0, step=0.1,
                       tooltip="Exponent of RRG's cosine decay."),
        io.Float.Input("rrg_stop_t", default=0.4, min=0.0, max=1.0, step=0.01,
                       tooltip="Fraction of the steps at the end without RRG."),
        io.Boolean.Input("repaint", default=True,
                         tooltip="Second pass from a re-noised point at a third of the guidance scale (when R > 0)."),
        io.Int.Input("patch_size", default=0, min=0, max=512,
                     tooltip="Window of the local passes in latent pixels (0 = half the base size); each call still "
                             "sees a base-size crop with context."),
        io.Int.Input("view_batch_size", default=16, min=1, max=256,
                     tooltip="Patches per model call (speed vs memory); results do not depend on it."),
        io.Int.Input("base_resolution", default=0, min=0, max=4096, step=8,
                     tooltip="The model's training resolution in pixels (0 = detect: SDXL 1024, SD2-v 768, SD1.x "
                             "512)."),
        io.Combo.Input("size_cond", options=SIZE_COND, default="per_call",
                       tooltip="SDXL size conditioning of each call: 'per_call' re-encodes it for the call (global: "
                               "base size; patches: canvas size + crop offset), 'official_4x' = the official code, "
                               "'target' = the output size, 'keep' = as given."),
        io.Combo.Input("mode", options=list(elastic.MODES), default="clean",
                       tooltip="'clean': exact sub-pixel sampler, any size, feathered windows. 'faithful': the "
                               "official behaviour (2x at most)."),
    ]
    return inputs if step_only else [i for i in inputs if i.id not in STEP_ONLY]


def _sampler_options(preset, resampling_steps, new_p, rrg_init_weight, cosine_scale, rrg_stop_t, repaint,
                     patch_size, view_batch_size, mode):
    """Widget values -> options of the pure sampler (-1 / 0 = from the preset / the default)."""
    return dict(preset=preset, resampling_steps=None if resampling_steps < 0 else resampling_steps, new_p=new_p,
                rrg_init_weight=None if rrg_init_weight < 0 else rrg_init_weight, cosine_scale=cosine_scale,
                rrg_stop_t=rrg_stop_t, repaint=repaint, patch_size=None if patch_size == 0 else patch_size,
                view_batch_size=view_batch_size, mode=mode)


def make_guider(model, positive, negative, cfg, base_resolution, size_cond, **widgets) -> ElasticCFGGuider:
    """The guider both nodes use, after the host checks (model, conditioning, base size); no model work."""
    sampling.check_model(model)
    sampling.check_conds(positive=positive, negative=negative)
    check_model(model)
    base_px = base_resolution or detect_base_px(model)
    if base_px % VAE_SCALE:
        raise ValueError(f"base_resolution must be a multiple of {VAE_SCALE} pixels (got {base_px})")
    guider = ElasticCFGGuider(model, base_px // VAE_SCALE, size_cond, **_sampler_options(**widgets))
    guider.set_conds(positive, negative)
    guider.set_cfg(cfg)
    return guider


def image_latent(model, latent_image):
    """The samples the sampler will see (empty latents get the model's channels), 4-D image latents only."""
    x = sampling.check_latent_for(model, latent_image)
    if latent_image.get("noise_mask") is not None:
        raise ValueError("latent_image has a noise mask (inpainting), which ElasticDiffusion does not support")
    if x.ndim != 4:
        raise ValueError(f"latent_image must be a 4-D image latent [B,C,H,W] (got shape {tuple(x.shape)})")
    return x


def sample_elastic_comfy(model, x, sigmas, extra_args=None, callback=None, disable=None, guider=None,
                         sample_ids=None):
    """The KSAMPLER function of ElasticLatentSampler: full ElasticDiffusion steps (repaint, RRG).

    ``guider`` (an ElasticCFGGuider, passed in the KSAMPLER's extra_options) gives the denoiser and the
    run's validated config; ``sample_ids`` key each sample's randomness (the latent's batch_index).
    """
    if not isinstance(guider, ElasticCFGGuider):
        raise ValueError("sampler: the Elastic sampler needs its ElasticCFGGuider in extra_options['guider']")
    extra_args = extra_args or {}
    denoiser = guider.elastic_denoiser(extra_args.get("model_options", {}))
    return elastic.sample_elastic(denoiser, x, sigmas, extra_args, callback, disable, config=guider.config_for(x.shape),
                                  sample_ids=sample_ids)


def _warn_above_twice(config):
    H, W, base = config.height, config.width, config.base
    if max(H, W) > 2 * base:
        logging.warning(f"ElasticDiffusion: {W * VAE_SCALE}x{H * VAE_SCALE} px is {max(H, W) / base:.2g}x the base "
                        f"size {base * VAE_SCALE}; above 2x the method was not evaluated by its authors (clean mode "
                        f"runs)")


# ------------------------------------------------------------------------------------------
# nodes
# ------------------------------------------------------------------------------------------
class ElasticLatentSampler(io.ComfyNode):
    @classmethod
    def define_schema(cls):
        return io.Schema(
            node_id="ElasticLatentSampler",
            display_name="Elastic Latent Sampler (any size)",
            category=CATEGORY,
            description="ElasticDiffusion (Haji Ali et al., CVPR 2024): generate at sizes and aspect ratios the model "
                        "was not trained for. The global class direction is estimated on a sub-sampled reference at "
                        "the training size, the local unconditional score on base-size patches with context, so "
                        "the picture stays one coherent composition. Every model call is base x base.",
            inputs=_model_cond_inputs() + [
                io.Latent.Input("latent_image", tooltip="An empty latent of the target size (any multiple of 8 px)."),
                io.Int.Input("seed", default=0, min=0, max=0xFFFFFFFFFFFFFFFF, control_after_generate=True,
                             tooltip="Seed of the noise and of every random choice (sub-pixels, pads, repaint)."),
                io.Int.Input("steps", default=30, min=1, max=1000,
                             tooltip="Steps (DDIM/Euler on the ddim_uniform grid, as the official code)."),
                io.Float.Input("cfg", default=10.0, min=0.0, max=100.0, step=0.1,
                               tooltip="Guidance scale of the global class direction (official default 10; the "
                                       "repaint pass uses a third of it)."),
            ] + _elastic_inputs() + [
                io.Vae.Input("vae", optional=True,
                             tooltip="Optional VAE to encode the background colours of the padded reference; "
                                     "without it an approximate colour latent is used."),
            ],
            outputs=[io.Latent.Output(tooltip="The sampled latent, same size as the input.")],
        )

    @classmethod
    def execute(cls, model, positive, negative, latent_image, seed, steps, cfg, vae=None, **widgets):
        sampling.check_widgets(cls, seed=seed, steps=steps, cfg=cfg, **widgets)
        x = image_latent(model, latent_image)
        guider = make_guider(model, positive, negative, cfg, **widgets)
        sigmas = comfy.samplers.calculate_sigmas(sampling.model_sampling_of(model), "ddim_uniform", steps)
        _warn_above_twice(guider.config_for(list(x.shape), sigmas))            # validates, before any model work
        guider.set_background(background_latents(model, vae, seed))
        ids = latent_image.get("batch_index")                          # sample b alone == sample b of the batch
        sampler = comfy.samplers.KSAMPLER(sample_elastic_comfy, extra_options={
            "guider": guider, "sample_ids": None if ids is None else list(ids)})
        callback = latent_preview.prepare_callback(model, len(sigmas) - 1)
        return io.NodeOutput(sampling.run_guider(guider, model, latent_image, sampler, sigmas, seed, callback=callback,
                                                 samples=x))


class ElasticGuider(io.ComfyNode):
    @classmethod
    def define_schema(cls):
        return io.Schema(
            node_id="ElasticGuider",
            display_name="Elastic Guider (any size)",
            category=CATEGORY,
            description="ElasticDiffusion as a GUIDER for SamplerCustomAdvanced: with any sampler each denoiser "
                        "evaluation is the ElasticDiffusion composite (global direction on a base-size reference + "
                        "local patches), so any size works from a fixed-resolution model. The full method (repaint, "
                        "reduced-resolution guidance) is the one-node Elastic Latent Sampler.",
            inputs=_model_cond_inputs() + [
                io.Float.Input("cfg", default=10.0, min=0.0, max=100.0, step=0.1,
                               tooltip="Guidance scale of the global class direction (official default 10)."),
            ] + _elastic_inputs(step_only=False) + [
                io.Vae.Input("vae", optional=True, tooltip="Optional VAE for the background colours of the "
                                                           "padded reference."),
            ],
            outputs=[io.Guider.Output(tooltip="The Elastic guider; connect to SamplerCustomAdvanced.")],
        )

    @classmethod
    def execute(cls, model, positive, negative, cfg, vae=None, **widgets):
        sampling.check_widgets(cls, cfg=cfg, **widgets)
        guider = make_guider(model, positive, negative, cfg, **widgets, **STEP_ONLY_DEFAULTS)   # validated at sampling
        guider.set_background(background_latents(model, vae, 0))
        return io.NodeOutput(guider)


NODES = [ElasticLatentSampler, ElasticGuider]
