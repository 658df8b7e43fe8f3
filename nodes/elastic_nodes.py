"""ElasticDiffusion nodes: ElasticLatentSampler (one node) and ElasticGuider (GUIDER)."""
from __future__ import annotations

import logging
import math

import torch

import comfy.conds
import comfy.model_base
import comfy.model_management
import comfy.model_sampling
import comfy.patcher_extension
import comfy.samplers
import latent_preview
from comfy_api.latest import io

from ..samplers import elastic
from . import sampling

CATEGORY = "sampling/elastic"
SIZE_COND = ["per_call", "official_4x", "target", "keep"]
UNSUPPORTED_COND_KEYS = {
    "mask": "a mask (ConditioningSetMask)",
    "area": "an area (ConditioningSetArea)",
    "control": "a ControlNet/T2I adapter",
    "concat_latent_image": "an inpainting image (InpaintModelConditioning)",
    "concat_mask": "an inpainting mask (InpaintModelConditioning)",
}


# ------------------------------------------------------------------------------------------
# model facts
# ------------------------------------------------------------------------------------------
def is_sdxl_like(model) -> bool:
    m = model.model
    return isinstance(m, tuple(getattr(comfy.model_base, n) for n in ("SDXL", "SDXLRefiner")
                               if hasattr(comfy.model_base, n)))


def detect_base_px(model) -> int:
    """Training resolution in pixels: SDXL family 1024, SD2-v 768, SD1.x 512 (model config heuristic)."""
    if is_sdxl_like(model):
        return 1024
    m = model.model
    v_pred = getattr(m, "model_type", None) == comfy.model_base.ModelType.V_PREDICTION
    try:
        return elastic.base_resolution(type(m.model_config).__name__, v_prediction=v_pred)
    except ValueError:
        return 768 if v_pred else 512


def check_model(model):
    ms = sampling.model_sampling_of(model)
    if isinstance(ms, comfy.model_sampling.CONST):
        raise ValueError("model: ElasticDiffusion supports EPS and v-prediction models (SD1.x, SD2.x, SDXL); this "
                         "is a rectified-flow model (SD3/Flux), whose noise model the method does not cover")
    if len(getattr(model.model, "concat_keys", ()) or ()) > 0:
        raise ValueError("model: inpainting models (with concat image/mask inputs) are not supported by "
                         "ElasticDiffusion; use a regular model")


def check_conditioning(name, conditioning):
    """Reject conditioning the per-patch calls cannot crop correctly (instead of squeezing it)."""
    if conditioning is None:
        return
    for entry in conditioning:
        d = entry[1] if isinstance(entry, (list, tuple)) and len(entry) > 1 else (entry if isinstance(entry, dict)
                                                                                  else {})
        for key, what in UNSUPPORTED_COND_KEYS.items():
            if d.get(key) is not None:
                raise ValueError(f"{name}: conditioning with {what} is not supported by ElasticDiffusion (it would "
                                 f"be squeezed into every {key == 'control' and 'patch' or 'base-size call'}); "
                                 f"remove it or use a regular sampler")


# ------------------------------------------------------------------------------------------
# the guider
# ------------------------------------------------------------------------------------------
class ElasticGuider(comfy.samplers.CFGGuider):
    """CFGGuider whose model calls all happen at the base (training) size.

    * :meth:`elastic_denoiser` implements the pure sampler's denoiser protocol: every call goes
      through ``calc_cond_batch`` on base x base inputs with per-call copies of the conditioning
      (SDXL size/crop conditioning re-encoded for the call size, ``size_cond``);
    * :meth:`predict_noise` returns the composite ElasticDiffusion x0 estimate (global + local
      passes, no repaint/RRG), so the guider also works with any stock sampler;
    * a PREPARE_SAMPLING wrapper (on a clone of the model) reserves memory for base-size batches,
      not for the full canvas.
    """

    def __init__(self, model_patcher):
        m = model_patcher.clone()
        m.add_wrapper_with_key(comfy.patcher_extension.WrappersMP.PREPARE_SAMPLING, "nse_elastic",
                               self._prepare_sampling_wrapper)
        super().__init__(m)
        self.elastic_options = {}
        self.size_cond = "per_call"
        self.base = 64
        self._plan = None
        self._ycache = {}

    # -- configuration ------------------------------------------------------------------
    def set_elastic(self, base: int, size_cond: str = "per_call", **options):
        self.base = int(base)
        self.size_cond = size_cond
        self.elastic_options = dict(options)
        self._plan = None

    def inner_set_conds(self, conds):
        for k, v in conds.items():
            check_conditioning(k, v)
        super().inner_set_conds(conds)

    def _prepare_sampling_wrapper(self, executor, model, noise_shape, *args, **kwargs):
        """Reserve memory for the largest base-size call, not the full canvas: the reference call has
        2B(R+1) rows (or 2B·ref_batch_size), a patch call view_batch_size·B; ComfyUI's estimate
        doubles the batch for cond/uncond, hence the halving."""
        shape = list(noise_shape)
        if len(shape) == 4:
            B = shape[0]
            opts = {k: v for k, v in self.elastic_options.items() if k not in ("background", "steps")}
            try:
                cfg = elastic.validate_elastic(shape, base=self.base, **opts)
                rounds = cfg.resampling_steps + 1
                if cfg.ref_batch_size:
                    rounds = min(rounds, cfg.ref_batch_size)
                vbs = 0 if max(shape[2], shape[3]) <= self.base else cfg.view_batch_size   # no patch calls
            except ValueError:
                rounds, vbs = 1, int(self.elastic_options.get("view_batch_size") or 16)
            rows = max(B, math.ceil(max(2 * B * rounds, vbs * B) / 2))
            shape = [rows, shape[1], self.base, self.base]
        return executor(model, shape, *args, **kwargs)

    # -- per-call conditioning -------------------------------------------------------------
    def _size_params(self, m: elastic.RowMeta):
        s = elastic.VAE_SCALE
        H, W = m.canvas
        if self.size_cond == "official_4x":
            return dict(width=4 * W * s, height=4 * H * s, crop_w=0, crop_h=0, target_width=4 * W * s,
                        target_height=4 * H * s)
        if self.size_cond == "target":
            return dict(width=W * s, height=H * s, crop_w=0, crop_h=0, target_width=W * s, target_height=H * s)
        if m.role == "reference":
            return dict(width=m.base * s, height=m.base * s, crop_w=0, crop_h=0, target_width=m.base * s,
                        target_height=m.base * s)
        top, left = m.source[0], m.source[1]
        return dict(width=W * s, height=H * s, crop_w=left * s, crop_h=top * s, target_width=m.base * s,
                    target_height=m.base * s)

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
            ys = torch.cat([self._row_y(key, j, c, self._size_params(m), x[:1]) for m in metas])
            new = dict(c)
            mc = dict(c["model_conds"])
            mc["y"] = comfy.conds.CONDRegular(ys)
            new["model_conds"] = mc
            out.append(new)
        return out

    # -- the denoiser protocol of samplers/elastic.py --------------------------------------
    def elastic_denoiser(self, model_options):
        guider = self

        def denoiser(x, sigma, which, meta):
            comfy.model_management.throw_exception_if_processing_interrupted()
            n = x.shape[0]
            half = n // 2
            if n % 2 == 0 and all(w == "cond" for w in which[:half]) and all(w == "uncond" for w in which[half:]) \
                    and torch.equal(x[:half], x[half:]):
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

    def plan_for(self, x):
        key = (tuple(x.shape), x.device, x.dtype)
        if self._plan is None or self._plan[0] != key:
            opts = {k: v for k, v in self.elastic_options.items() if k != "steps"}
            opts["cfg"] = self.cfg
            self._plan = (key, elastic.build_plan(x.shape, device=x.device, dtype=torch.float32, base=self.base,
                                                  **opts))
        return self._plan[1]

    def predict_noise(self, x, timestep, model_options={}, seed=None):
        """Composite x0 at the current cfg (global + local passes), for stock samplers."""
        plan = self.plan_for(x)
        sigma = float(timestep.reshape(-1)[0])
        sample_sigmas = model_options.get("transformer_options", {}).get("sample_sigmas")
        step = 0
        if sample_sigmas is not None:
            step = int((sample_sigmas.float().cpu() - sigma).abs().argmin())
        rnd = elastic.StepRandom(plan, 0 if seed is None else seed, step)
        rounds = plan.config.resampling_steps + 1
        d, _ = elastic.elastic_denoise(self.elastic_denoiser(model_options), x.float(), sigma, plan, rnd,
                                       rounds=rounds, scale=self.cfg)
        return d.to(x.dtype)


def sample_elastic_comfy(model, x, sigmas, extra_args=None, callback=None, disable=None, **options):
    """The k-diffusion function behind the one-node sampler: full ElasticDiffusion steps (repaint, RRG)."""
    guider = model.inner_model
    if not isinstance(guider, ElasticGuider):
        raise ValueError("sampler: the Elastic sampler needs an ElasticGuider (use ElasticLatentSampler, or connect "
                         "an ElasticGuider to SamplerCustomAdvanced with any sampler)")
    extra_args = extra_args or {}
    denoiser = guider.elastic_denoiser(extra_args.get("model_options", {}))
    opts = dict(guider.elastic_options)
    opts.update(options)
    opts["cfg"] = guider.cfg
    opts.setdefault("seed", extra_args.get("seed", 0))
    return elastic.sample_elastic(denoiser, x, sigmas, extra_args, callback, disable, base=guider.base, **opts)


# ------------------------------------------------------------------------------------------
# inputs, validation, background
# ------------------------------------------------------------------------------------------
def _model_cond_inputs():
    return [io.Model.Input("model", tooltip="An EPS or v-prediction model (SD1.x, SD2.x, SDXL)."),
            io.Conditioning.Input("positive", tooltip="Positive conditioning (no masks, areas or ControlNet)."),
            io.Conditioning.Input("negative", tooltip="Negative conditioning.")]


def _elastic_inputs():
    return [
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


def resolve_options(model, latent_shape, steps, cfg, preset, resampling_steps, new_p, rrg_init_weight,
                    cosine_scale, rrg_stop_t, repaint, patch_size, view_batch_size, base_resolution, size_cond,
                    mode):
    """(base latent px, options) after validating every input; raises ValueError before model work."""
    check_model(model)
    sampling.check_choice("size_cond", size_cond, SIZE_COND)
    sampling.check_int("base_resolution", base_resolution, 0)
    base_px = base_resolution or detect_base_px(model)
    if base_px % 8:
        raise ValueError(f"base_resolution must be a multiple of 8 pixels (got {base_px})")
    base = base_px // 8
    opts = dict(preset=preset, resampling_steps=None if resampling_steps < 0 else resampling_steps, new_p=new_p,
                rrg_init_weight=None if rrg_init_weight < 0 else rrg_init_weight, cosine_scale=cosine_scale,
                rrg_stop_t=rrg_stop_t, repaint=repaint, patch_size=None if patch_size == 0 else patch_size,
                view_batch_size=view_batch_size, mode=mode)
    if latent_shape is None:      # a guider: the size is known only at sampling time; check the rest now
        latent_shape = [1, model.model.latent_format.latent_channels, base, base]
    if len(latent_shape) != 4:
        raise ValueError(f"latent_image must be a 4-D image latent [B,C,H,W] (got shape {tuple(latent_shape)})")
    elastic.validate_elastic(latent_shape, steps=steps, base=base, cfg=cfg, **opts)
    H, W = latent_shape[-2:]
    if max(H, W) > 2 * base:
        logging.warning(f"ElasticDiffusion: {W * 8}x{H * 8} px is {max(H, W) / base:.2g}x the base size "
                        f"{base_px}; above 2x the method was not evaluated by its authors (clean mode runs)")
    return base, opts


def background_latents(model, vae, seed, k=8):
    """Background colour latents, computed once per run: the official random colours, VAE-encoded when a
    VAE is given, else an approximate inverse of the latent format's preview map."""
    g = torch.Generator().manual_seed(int(seed) % (1 << 63))
    colours = elastic.official_background_colours(k, g)                   # [k, 3] in [0.5, 1]
    lf = model.model.latent_format
    if vae is not None:
        px = colours[:, None, None, :].expand(k, 64, 64, 3).contiguous()
        lat = vae.encode(px)
        return model.model.process_latent_in(lat.float()).mean(dim=(-2, -1)).cpu()
    if getattr(lf, "latent_rgb_factors", None) is not None:
        bg = elastic.palette_from_rgb_factors(lf.latent_rgb_factors, colours, getattr(lf, "latent_rgb_factors_bias",
                                                                                      None))
        if bg.shape[1] == lf.latent_channels:
            return bg
    return None


def build_guider(model, positive, negative, cfg, latent_shape, steps, seed, vae, size_cond, **elastic_inputs):
    """Validate everything, then build the ElasticGuider both nodes use (no model work yet).

    ``set_conds`` rejects unsupported conditioning (ElasticGuider.inner_set_conds) before the
    options are resolved and the background colours are encoded."""
    sampling.check_float("cfg", cfg, 0.0, 100.0)
    guider = ElasticGuider(model)
    guider.set_conds(positive, negative)
    guider.set_cfg(cfg)
    base, opts = resolve_options(model, latent_shape, steps, cfg, size_cond=size_cond, **elastic_inputs)
    bg = background_latents(model, vae, seed)
    if bg is not None:
        opts["background"] = bg
    guider.set_elastic(base, size_cond, **opts)
    return guider


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
    def execute(cls, model, positive, negative, latent_image, seed, steps, cfg, preset, resampling_steps, new_p,
                rrg_init_weight, cosine_scale, rrg_stop_t, repaint, patch_size, view_batch_size,
                base_resolution, size_cond, mode, vae=None):
        x = sampling.check_latent(latent_image)
        sampling.check_int("seed", seed, 0, 0xFFFFFFFFFFFFFFFF)
        sampling.check_int("steps", steps, 1, 1000)
        if latent_image.get("noise_mask") is not None:
            raise ValueError("latent_image has a noise mask (inpainting), which ElasticDiffusion does not support")
        guider = build_guider(model, positive, negative, cfg, list(x.shape), steps, seed, vae, size_cond,
                              preset=preset, resampling_steps=resampling_steps, new_p=new_p,
                              rrg_init_weight=rrg_init_weight, cosine_scale=cosine_scale, rrg_stop_t=rrg_stop_t,
                              repaint=repaint, patch_size=patch_size, view_batch_size=view_batch_size,
                              base_resolution=base_resolution, mode=mode)
        sigmas = elastic.ddim_uniform_sigmas(sampling.model_sampling_of(model), steps)
        callback = latent_preview.prepare_callback(model, len(sigmas) - 1)
        ids = latent_image.get("batch_index")
        sampler = comfy.samplers.KSAMPLER(sample_elastic_comfy, extra_options={} if ids is None else {
            "sample_ids": list(ids)})      # as prepare_noise does: sample b alone == sample b of the batch
        return io.NodeOutput(sampling.run_guider(guider, model, latent_image, sampler, sigmas, seed, callback=callback))


class ElasticGuiderNode(io.ComfyNode):
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
                io.Float.Input("cfg", default=7.5, min=0.0, max=100.0, step=0.1,
                               tooltip="Guidance scale of the global class direction."),
            ] + _elastic_inputs() + [
                io.Vae.Input("vae", optional=True, tooltip="Optional VAE for the background colours of the "
                                                           "padded reference."),
            ],
            outputs=[io.Guider.Output(tooltip="The Elastic guider; connect to SamplerCustomAdvanced.")],
        )

    @classmethod
    def execute(cls, model, positive, negative, cfg, preset, resampling_steps, new_p, rrg_init_weight,
                cosine_scale, rrg_stop_t, repaint, patch_size, view_batch_size, base_resolution, size_cond, mode,
                vae=None):
        guider = build_guider(model, positive, negative, cfg, None, None, 0, vae, size_cond, preset=preset,
                              resampling_steps=resampling_steps, new_p=new_p, rrg_init_weight=rrg_init_weight,
                              cosine_scale=cosine_scale, rrg_stop_t=rrg_stop_t, repaint=repaint,
                              patch_size=patch_size, view_batch_size=view_batch_size,
                              base_resolution=base_resolution, mode=mode)
        return io.NodeOutput(guider)


NODES = [ElasticLatentSampler, ElasticGuiderNode]
