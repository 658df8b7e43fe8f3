"""Running a pure sampler inside ComfyUI: what the three method's nodes share.

Input checks against a node's own schema, LATENT checks, sigmas with denoise slicing (as
``BasicScheduler``), a model proxy that honours interrupt and counts model evaluations, previews
through ComfyUI's own preview channel, the guider run itself (the same steps as
``SamplerCustomAdvanced``) and ComfyUI samplers looked up by name.
"""
from __future__ import annotations

import inspect
from typing import Callable, Optional

import torch

from ..samplers.checks import check_bool, check_choice, check_float, check_int
from ..samplers.common import check_x
from . import compat

import comfy.model_management
import comfy.model_sampling
import comfy.sample
import comfy.samplers
import comfy.utils
import latent_preview


# ------------------------------------------------------------------------------------------
# validation: clear errors naming the input, raised before any model work
# ------------------------------------------------------------------------------------------
def check_widgets(node_cls, **values):
    """Check widget values against the node's own schema (its min/max/options, declared once there).

    ComfyUI checks widgets typed into the graph, but not values that arrive through a link or from
    a script calling ``execute``; this applies the same declared bounds to those.
    """
    spec = node_cls.INPUT_TYPES()
    declared = {**(spec.get("required") or {}), **(spec.get("optional") or {})}
    for name, value in values.items():
        typ, opts = declared[name][0], (declared[name][1] if len(declared[name]) > 1 else None) or {}
        if isinstance(typ, (list, tuple)) or typ == "COMBO":
            check_choice(name, value, typ if isinstance(typ, (list, tuple)) else opts.get("options", []))
        elif typ == "INT":
            check_int(name, value, opts.get("min"), opts.get("max"))
        elif typ == "FLOAT":
            check_float(name, value, opts.get("min"), opts.get("max"))
        elif typ == "BOOLEAN":
            check_bool(name, value)


def check_latent(latent, name: str = "latent_image") -> torch.Tensor:
    """A LATENT dict whose samples this pack can sample: a finite 4-D (or 5-D) tensor batch."""
    if not isinstance(latent, dict) or "samples" not in latent:
        raise ValueError(f"{name} must be a LATENT (a dict with 'samples'), got {type(latent).__name__}")
    x = latent["samples"]
    if getattr(x, "is_nested", False):
        raise ValueError(f"{name} is a nested (multi-part, e.g. audio+video) latent, which this sampler cannot "
                         "handle; use a single image or video latent")
    if not isinstance(x, torch.Tensor):
        raise ValueError(f"{name}['samples'] must be a tensor, got {type(x).__name__}")
    if x.ndim not in (4, 5) or x.numel() == 0:
        raise ValueError(f"{name} must be a non-empty 4-D image latent [B,C,H,W] or 5-D video latent "
                         f"(got shape {tuple(x.shape)})")
    if not torch.isfinite(x).all():
        raise ValueError(f"{name} contains NaN or infinite values")
    check_noise_mask(latent.get("noise_mask"), f"{name}['noise_mask']")
    return x


def check_noise_mask(mask, name: str = "latent_image['noise_mask']") -> None:
    """An inpainting mask, when given: a non-empty finite tensor."""
    if mask is None:
        return
    if not isinstance(mask, torch.Tensor):
        raise ValueError(f"{name} must be a tensor, got {type(mask).__name__}")
    if mask.numel() == 0 or not torch.isfinite(mask).all():
        raise ValueError(f"{name} must be a non-empty mask of finite values in [0, 1] (got shape "
                         f"{tuple(mask.shape)}{', with NaN/inf' if mask.numel() else ''})")


def check_model(model, name: str = "model"):
    """A MODEL (ComfyUI's ModelPatcher), not a value typed into an API prompt."""
    if not (hasattr(model, "get_model_object") and hasattr(model, "model")):
        raise ValueError(f"{name} must be a MODEL (connect a model loader), got {type(model).__name__}")
    return model


def check_conditioning(cond, name: str):
    """A CONDITIONING: a list of [tensor, dict] pairs, as the text encoders produce."""
    ok = isinstance(cond, list) and all(isinstance(c, (list, tuple)) and len(c) >= 2 and isinstance(c[0], torch.Tensor)
                                        and isinstance(c[1], dict) for c in cond)
    if not ok:
        raise ValueError(f"{name} must be a CONDITIONING (connect a text encoder), got {type(cond).__name__}")
    return cond


def check_conds(optional=None, **required) -> None:
    """Each CONDITIONING input: the required ones always, the optional ones when connected (not None)."""
    for name, cond in required.items():
        check_conditioning(cond, name)
    for name, cond in (optional or {}).items():
        if cond is not None:
            check_conditioning(cond, name)


def check_latent_for(model, latent, name: str = "latent_image") -> torch.Tensor:
    """:func:`check_latent` plus the model's latent channel count (after ComfyUI's fix of empty latents)."""
    check_model(model)
    check_latent(latent, name)
    x = compat.fix_empty_latent_channels(model, latent)
    check_channels(x.shape, model, name)
    return x


def check_channels(shape, model_patcher, name: str = "latent_image") -> None:
    """A 4-D image latent has the model's latent channel count (where the model says what it is)."""
    try:
        want = getattr(model_patcher.get_model_object("latent_format"), "latent_channels", None)
    except Exception:
        want = None
    if want is not None and len(shape) == 4 and shape[1] != want:
        raise ValueError(f"{name} has {shape[1]} channels but this model's latents have {want} (a latent made "
                         "for another model family?)")


def check_sampler_input(x, extra_args, model=None, name: str = "latent_image") -> None:
    """For SAMPLER functions under SamplerCustomAdvanced: the latent and its mask, named for the user."""
    try:
        check_x(x, name)
    except ValueError as e:
        raise ValueError(f"{e} (the latent given to SamplerCustomAdvanced)") from None
    if x.numel() == 0:
        raise ValueError(f"{name} is empty (shape {tuple(x.shape)})")
    check_noise_mask((extra_args or {}).get("denoise_mask"), f"{name}['noise_mask']")
    patcher = getattr(getattr(model, "inner_model", None), "model_patcher", None)
    if patcher is not None:
        check_channels(x.shape, patcher, name)


# ------------------------------------------------------------------------------------------
# schedules
# ------------------------------------------------------------------------------------------
def model_sampling_of(model):
    return model.get_model_object("model_sampling")


def is_rectified_flow(model_sampling) -> bool:
    return isinstance(model_sampling, comfy.model_sampling.CONST)


def sigmas_with_denoise(model, scheduler: str, steps: int, denoise: float,
                        custom: Optional[Callable] = None) -> torch.Tensor:
    """``steps`` sigmas as BasicScheduler computes them (denoise < 1 keeps the tail of a longer list)."""
    total = steps if denoise >= 1.0 else int(steps / denoise)
    ms = model_sampling_of(model)
    sigmas = custom(ms, total) if custom is not None else comfy.samplers.calculate_sigmas(ms, scheduler, total)
    return torch.as_tensor(sigmas).cpu()[-(steps + 1):]


# ------------------------------------------------------------------------------------------
# model proxy: interrupt within every model call, NFE counting
# ------------------------------------------------------------------------------------------
class ModelProxy:
    """Wraps the k-diffusion ``model`` handed to a sampler function.

    Calls ``throw_exception_if_processing_interrupted()`` before every model evaluation (so
    ComfyUI's interrupt is honoured within one inner step on every version) and reports each
    evaluation to ``on_call(nfe)``.  Attribute access is forwarded, so ComfyUI samplers that read
    ``model.inner_model.model_patcher`` keep working.
    """

    def __init__(self, model, on_call: Optional[Callable[[int], None]] = None):
        self._model = model
        self._on_call = on_call
        self.nfe = 0

    def __call__(self, x, sigma, **kwargs):
        comfy.model_management.throw_exception_if_processing_interrupted()
        out = self._model(x, sigma, **kwargs)
        self.nfe += 1
        if self._on_call is not None:
            self._on_call(self.nfe)
        return out

    def __getattr__(self, name):
        return getattr(self._model, name)


# ------------------------------------------------------------------------------------------
# previews
# ------------------------------------------------------------------------------------------
class Previewer:
    """Latent previews through ComfyUI's own channel, honouring the user's preview method.

    Built per run (v0.8 allows a per-prompt preview method); ``None`` previewer = previews off.
    """

    def __init__(self, model):
        self.previewer = latent_preview.get_previewer(model.load_device, model.model.latent_format)

    def image(self, x0):
        if self.previewer is None or x0 is None:
            return None
        return self.previewer.decode_latent_to_preview_image("JPEG", compat.image_part(x0))


# ------------------------------------------------------------------------------------------
# running a guider (as SamplerCustomAdvanced does)
# ------------------------------------------------------------------------------------------
def run_guider(guider, model, latent: dict, sampler, sigmas, seed: int, callback=None, samples=None):
    """Sample with ``guider``/``sampler`` like SamplerCustomAdvanced; returns the output LATENT dict.
    ``samples``: the latent's samples already passed through :func:`check_latent_for` (not redone)."""
    x = compat.fix_empty_latent_channels(model, latent) if samples is None else samples
    noise = comfy.sample.prepare_noise(x, seed, latent.get("batch_index"))
    out = guider.sample(noise, x, sampler, sigmas, denoise_mask=latent.get("noise_mask"), callback=callback,
                        disable_pbar=not comfy.utils.PROGRESS_BAR_ENABLED, seed=seed)
    out = out.to(comfy.model_management.intermediate_device())
    return compat.output_latent(latent, out)


def process_out(model, x0: torch.Tensor) -> torch.Tensor:
    """Model-space latents (as callbacks see them) -> LATENT space, as SamplerCustomAdvanced does."""
    return model.model.process_latent_out(x0.cpu())


# ------------------------------------------------------------------------------------------
# inner / any ComfyUI sampler by name
# ------------------------------------------------------------------------------------------
#: model evaluations per step of ComfyUI samplers that make more than one (for progress totals)
EVALS_PER_STEP = {"heun": 2, "heunpp2": 3, "dpm_2": 2, "dpm_2_ancestral": 2, "dpmpp_2s_ancestral": 2,
                  "dpmpp_2s_ancestral_cfg_pp": 2, "dpmpp_sde": 2, "dpmpp_sde_gpu": 2, "seeds_2": 2, "seeds_3": 3,
                  "exp_heun_2_x0": 2, "exp_heun_2_x0_sde": 2, "sa_solver_pece": 2}


def sampler_function_by_name(name: str, eta: Optional[float] = None, s_noise: Optional[float] = None):
    """(function, options, discard_penultimate) of a ComfyUI sampler read from its own registry."""
    obj = comfy.samplers.sampler_object(name)
    fn = obj.sampler_function
    opts = dict(getattr(obj, "extra_options", {}) or {})
    try:
        params = inspect.signature(fn).parameters
    except (TypeError, ValueError):
        params = {}
    if eta is not None and "eta" in params:
        opts["eta"] = eta
    if s_noise is not None and "s_noise" in params:
        opts["s_noise"] = s_noise
    discard = name in getattr(comfy.samplers.KSampler, "DISCARD_PENULTIMATE_SIGMA_SAMPLERS", set())
    return fn, opts, discard
