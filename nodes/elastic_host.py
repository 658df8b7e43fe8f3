"""What the Elastic nodes need to know about ComfyUI: model families, supported models and
conditioning, and the background colour palette of the padded reference."""
from __future__ import annotations

import torch

import comfy.model_base
import comfy.model_sampling

from ..samplers.checks import check_int
from . import sampling

VAE_SCALE = 8                 # image px per latent px of the SD-family VAEs this method supports

#: training resolution in pixels per model family (ComfyUI model_config class names, normalised)
_FAMILY_BASE = {
    "sd1": 512, "sd14": 512, "sd15": 512, "sd1x": 512,
    "sd2": 512, "sd20": 512, "sd21": 512, "sd2base": 512, "sd21base": 512,
    "sd21unclipl": 768, "sd21uncliph": 768, "sd2v": 768, "sd21v": 768, "sd21768": 768,
    "sdxl": 1024, "sdxlrefiner": 1024, "ssd1b": 1024, "segmindvega": 1024, "koala700m": 1024,
    "koala1b": 1024, "sd3": 1024, "flux": 1024,
}

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
def base_resolution(model_family: str, v_prediction: bool = False) -> int:
    """Training resolution in PIXELS for a model family.

    ``model_family``: a name such as ``"sd15"``, ``"SD20"``, ``"SDXL"`` (ComfyUI ``model_config`` class
    names work; case and ``_ - .`` are ignored).  SD2.x maps to 768 when ``v_prediction`` (SD2-v),
    else 512.  Divide by 8 for the sampler's ``base``.  SD3 / Flux are listed for completeness, but the
    method's maths is for EPS / v-prediction models only.
    """
    key = "".join(ch for ch in str(model_family).lower() if ch.isalnum())
    if key not in _FAMILY_BASE:
        raise ValueError(f"model_family must be a known family ({', '.join(sorted(_FAMILY_BASE))}) "
                         f"(got {model_family!r})")
    px = _FAMILY_BASE[key]
    if v_prediction and key in ("sd2", "sd20", "sd21"):
        px = 768
    return px


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
        return base_resolution(type(m.model_config).__name__, v_prediction=v_pred)
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


def check_supported_conditioning(name, conditioning):
    """Reject conditioning the per-patch calls cannot crop correctly (instead of squeezing it)."""
    if conditioning is None:
        return
    for entry in conditioning:
        if isinstance(entry, (list, tuple)) and len(entry) > 1:
            d = entry[1]
        else:
            d = entry if isinstance(entry, dict) else {}
        for key, what in UNSUPPORTED_COND_KEYS.items():
            if d.get(key) is not None:
                where = "patch" if key == "control" else "base-size call"
                raise ValueError(f"{name}: conditioning with {what} is not supported by ElasticDiffusion (it would "
                                 f"be squeezed into every {where}); remove it or use a regular sampler")


# ------------------------------------------------------------------------------------------
# background palette of the padded reference
# ------------------------------------------------------------------------------------------
def official_background_colours(n: int, generator=None) -> torch.Tensor:
    """``n`` background colours as ComfyUI pixels in [0, 1] (``[n, 3]``), matching the official ones.

    The official code draws c ~ U[0, 1]^3 and feeds it to a VAE expecting [-1, 1]; ComfyUI's VAE maps
    pixels p to 2p - 1, so the same latents come from p = (c + 1) / 2 in [0.5, 1].
    """
    check_int("n", n, 1)
    c = torch.rand(n, 3, generator=generator, dtype=torch.float64)
    return ((c + 1.0) / 2.0).to(torch.float32)


def palette_from_rgb_factors(latent_rgb_factors, colours: torch.Tensor, bias=None) -> torch.Tensor:
    """Approximate background latents without a VAE: least-squares inverse of a latent format's
    preview map ``rgb = z @ factors + bias`` (rgb in [-1, 1]) for ``colours`` in [0, 1] ([K, 3]).

    Returns ``[K, C]`` for the sampler's ``background`` option.
    """
    fac = torch.as_tensor(latent_rgb_factors, dtype=torch.float64)          # [C, 3]
    if fac.dim() != 2 or fac.shape[1] != 3:
        raise ValueError(f"latent_rgb_factors must be a [C, 3] matrix (got shape {tuple(fac.shape)})")
    col = torch.as_tensor(colours, dtype=torch.float64).reshape(-1, 3)
    target = col * 2.0 - 1.0
    if bias is not None:
        target = target - torch.as_tensor(bias, dtype=torch.float64).reshape(1, 3)
    z = target @ torch.linalg.pinv(fac)                                      # min-norm z with z @ fac ~ target
    return z.to(torch.float32)


def background_latents(model, vae, seed, k=8):
    """Background colour latents, computed once per run: the official random colours, VAE-encoded when a
    VAE is given, else an approximate inverse of the latent format's preview map (None if neither)."""
    g = torch.Generator().manual_seed(int(seed) % (1 << 63))
    colours = official_background_colours(k, g)                             # [k, 3] in [0.5, 1]
    lf = model.model.latent_format
    if vae is not None:
        px = colours[:, None, None, :].expand(k, 64, 64, 3).contiguous()
        lat = vae.encode(px)
        return model.model.process_latent_in(lat.float()).mean(dim=(-2, -1)).cpu()
    if getattr(lf, "latent_rgb_factors", None) is not None:
        bg = palette_from_rgb_factors(lf.latent_rgb_factors, colours, getattr(lf, "latent_rgb_factors_bias", None))
        if bg.shape[1] == lf.latent_channels:
            return bg
    return None
