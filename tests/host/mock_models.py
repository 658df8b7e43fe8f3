"""Test-only mock models: a real ModelPatcher around a real BaseModel with a tiny net.

Kinds: ``sd15`` (EPS, SD1.5 latent format, 768-d context), ``sdxl`` (comfy.model_base.SDXL
with ``y`` ADM conditioning, 2048-d context), ``flow`` (rectified flow / CONST with discrete
timesteps, SD3 latent format, 16 channels, shift 3), ``flux`` (continuous-time flow sampling as
Flux, 16 channels).  The net is deterministic and records every call for assertions.
"""
import os
import time

import torch

import comfy.latent_formats
import comfy.model_base
import comfy.model_patcher
import comfy.supported_models_base
from comfy.model_base import ModelType

#: functions f(n) called after every mock-net call of any model (n = that net's call count); tests add
#: and remove their own (e.g. to press Stop & keep from inside a run at an exact call)
CALL_HOOKS = []
#: what the test-only capture node saw: tag -> LATENT dict
CAPTURED = {}
#: seconds every mock-net call sleeps (the browser test's server sets it, to watch a run live)
PAUSE = float(os.environ.get("NSE_TEST_PAUSE", "0") or 0)

CONTEXT_DIM = {"sd15": 768, "sdxl": 2048, "flow": 4096, "flux": 4096}
CHANNELS = {"sd15": 4, "sdxl": 4, "flow": 16, "flux": 16}


class TinyNet(torch.nn.Module):
    def __init__(self, channels=4, dtype=torch.float32):
        super().__init__()
        self.dtype = dtype
        g = torch.Generator().manual_seed(1234)
        self.conv = torch.nn.Conv2d(channels, channels, 3, padding=1)
        with torch.no_grad():
            self.conv.weight.copy_(torch.randn(self.conv.weight.shape, generator=g) * 0.05)
            self.conv.bias.zero_()
        self.to(dtype)
        self.calls = []
        self.interrupt_after = None    # set k: the k-th call raises ComfyUI's interrupt flag as it returns
        self.calls_at_interrupt = None  # how many calls had been made when the flag was raised

    def _maybe_interrupt(self):
        """Raise ComfyUI's interrupt flag from inside the model once it has made ``interrupt_after`` calls:
        the trigger does not depend on how often the host reports progress."""
        if self.interrupt_after is not None and self.calls_at_interrupt is None \
                and len(self.calls) >= self.interrupt_after:
            import comfy.model_management
            comfy.model_management.interrupt_current_processing(True)
            self.calls_at_interrupt = len(self.calls)

    def forward(self, x, timesteps, context=None, control=None, transformer_options={}, y=None, **kw):
        if PAUSE:
            time.sleep(PAUSE)
        self.calls.append({
            "shape": tuple(x.shape),
            "t": timesteps.detach().float().cpu().clone(),
            "cond_or_uncond": list(transformer_options.get("cond_or_uncond", [])),
            "y": None if y is None else y.detach().float().cpu().clone(),
            "context_mean": None if context is None else context.detach().float().mean(dim=(1, 2)).cpu(),
            "control": control is not None,
        })
        out = self.conv(x) * 0.5
        if context is not None:   # the prompt changes the output in an x-dependent way (CFG is not a constant)
            c = context.float().mean(dim=(1, 2)).view(-1, 1, 1, 1).to(out.dtype)
            out = out * (1.0 + 0.5 * c) + c * 0.2
        if y is not None:
            out = out + y.float().mean(dim=1).view(-1, 1, 1, 1).to(out.dtype) * 0.05
        if control is not None and control.get("output"):
            for c in control["output"]:
                if c is not None:
                    out = out + c.to(out.dtype)
        self._maybe_interrupt()
        for hook in list(CALL_HOOKS):
            hook(len(self.calls))
        return out


class HeavyNet(TinyNet):
    """TinyNet plus a stack of wide convolutions: a per-call cost closer to a real UNet's share of
    the run, so benchmarks measure sampler overhead against real work (not against a no-op)."""

    def __init__(self, channels=4, dtype=torch.float32, width=64, depth=4):
        super().__init__(channels, dtype)
        layers = [torch.nn.Conv2d(channels, width, 3, padding=1)]
        for _ in range(depth - 2):
            layers += [torch.nn.SiLU(), torch.nn.Conv2d(width, width, 3, padding=1)]
        layers += [torch.nn.SiLU(), torch.nn.Conv2d(width, channels, 3, padding=1)]
        self.body = torch.nn.Sequential(*layers).to(dtype)

    def forward(self, x, timesteps, context=None, **kw):
        return super().forward(x, timesteps, context=context, **kw) + 0.01 * self.body(x)


def _config(kind):
    latent = {"sd15": comfy.latent_formats.SD15, "sdxl": comfy.latent_formats.SDXL,
              "flow": comfy.latent_formats.SD3, "flux": comfy.latent_formats.Flux}[kind]
    settings = {"flow": {"shift": 3.0, "multiplier": 1000}, "flux": {"shift": 1.15}}.get(kind, {})

    class TinyConfig(comfy.supported_models_base.BASE):
        unet_config = {"disable_unet_model_creation": True}
        latent_format = latent
        sampling_settings = settings

    return TinyConfig({"disable_unet_model_creation": True})


def make_model(kind="sd15", dtype=torch.float32, heavy=False):
    """A ModelPatcher on CPU wrapping a BaseModel of the given kind."""
    cpu = torch.device("cpu")
    cfg = _config(kind)
    if kind == "sdxl":
        model = comfy.model_base.SDXL(cfg, model_type=ModelType.EPS, device=cpu)
    elif kind == "flow":
        model = comfy.model_base.BaseModel(cfg, model_type=ModelType.FLOW, device=cpu)
    elif kind == "flux":     # continuous-time rectified flow (ModelSamplingFlux), Flux-like
        model = comfy.model_base.BaseModel(cfg, model_type=ModelType.FLUX, device=cpu)
    else:
        model = comfy.model_base.BaseModel(cfg, model_type=ModelType.EPS, device=cpu)
    model.diffusion_model = (HeavyNet if heavy else TinyNet)(CHANNELS[kind], dtype)
    return comfy.model_patcher.ModelPatcher(model, load_device=cpu, offload_device=cpu)


def make_cond(kind="sd15", value=0.5, batch=1, **extra):
    """CONDITIONING for the mock: ``[[context, {...}]]``; SDXL gets a pooled output."""
    ctx = torch.full((batch, 77, CONTEXT_DIM[kind]), float(value))
    d = dict(extra)
    if kind == "sdxl":
        d.setdefault("pooled_output", torch.full((batch, 1280), float(value)))
    return [[ctx, d]]


def net(model_patcher):
    return model_patcher.model.diffusion_model


def make_control(value=0.3):
    """A minimal ControlNet-like object (a real comfy.controlnet.ControlBase subclass) that adds a
    constant residual; attached to a cond as ``control`` the way ControlNetApply does."""
    import comfy.controlnet

    class MockControl(comfy.controlnet.ControlBase):
        def __init__(self, v):
            super().__init__()
            self.value = v
            self.calls = 0

        def get_control(self, x_noisy, t, cond, batched_number, *args, **kwargs):
            self.calls += 1
            return {"output": [torch.full_like(x_noisy, self.value * self.strength)]}

        def copy(self):
            c = MockControl(self.value)
            self.copy_to(c)
            return c

    return MockControl(value)
