"""Test-only: the learned demo model (``demo/``) inside ComfyUI as MODEL, CLIP and VAE.

The network is the shipped class-conditional UNet (32 x 32 RGB, EPS on the SD1.x schedule) as the
``diffusion_model`` of a real ``comfy.model_base.BaseModel``, so every ComfyUI sampler, guider and
node of this pack runs on a learned network.  Its "latent" is the picture itself (3 channels,
scale 1): an EmptyLatentImage of 256 x 256 is a 32 x 32 picture, and latent2rgb previews show it
as it is.  The "text encoder" reads a class name from the prompt ("a red square" -> square);
a prompt without one is the null class (the unconditional branch of CFG).
"""
import os
import sys
import time

import torch

import comfy.latent_formats
import comfy.model_base
import comfy.model_patcher
import comfy.supported_models_base
from comfy.model_base import ModelType

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
CONTEXT_DIM = 768


def load_demo():
    """The ``demo`` package, by file location (the scripts' loader; the repository root never goes
    on sys.path)."""
    scripts = os.path.join(ROOT, "scripts")
    if scripts not in sys.path:
        sys.path.insert(0, scripts)
    from _pack import load_demo as load
    return load()


class DemoFormat(comfy.latent_formats.LatentFormat):
    latent_channels = 3
    scale_factor = 1.0
    latent_rgb_factors = [[1.0, 0.0, 0.0], [0.0, 1.0, 0.0], [0.0, 0.0, 1.0]]
    taesd_decoder_name = None


class DemoNet(torch.nn.Module):
    """ComfyUI's ``diffusion_model(x_in, t, context=...)`` call on the demo UNet: the class label is
    the conditioning's value (-1 = the null class)."""

    def __init__(self, unet):
        super().__init__()
        self.unet = unet
        self.dtype = torch.float32
        self.calls = 0

    def forward(self, x, timesteps, context=None, **kw):
        import mock_models
        if mock_models.PAUSE:
            time.sleep(mock_models.PAUSE)
        self.calls += 1
        labels = torch.full((x.shape[0],), self.unet.null_class, dtype=torch.long, device=x.device)
        if context is not None:
            v = context[:, 0, 0].float().round().long()
            labels = torch.where(v >= 0, v, labels)
        return self.unet(x.float(), timesteps.float(), labels)


def _config():
    class DemoConfig(comfy.supported_models_base.BASE):
        unet_config = {"disable_unet_model_creation": True}
        latent_format = DemoFormat
        sampling_settings = {}         # ComfyUI's default discrete schedule = SD1.x's (scaled linear)

    return DemoConfig({"disable_unet_model_creation": True})


def make_demo_model(trained: bool = True):
    """A ModelPatcher on CPU around the shipped weights (``trained=False``: the untrained control)."""
    demo = load_demo()
    den = demo.load_denoiser() if trained else demo.untrained_denoiser()
    cpu = torch.device("cpu")
    model = comfy.model_base.BaseModel(_config(), model_type=ModelType.EPS, device=cpu)
    model.diffusion_model = DemoNet(den.unet)
    return comfy.model_patcher.ModelPatcher(model, load_device=cpu, offload_device=cpu)


def class_of(text: str) -> int:
    """The class named in a prompt (first match), or -1 (the null class)."""
    names = load_demo().CLASSES
    hits = [(text.lower().find(n), i) for i, n in enumerate(names) if n in text.lower()]
    return min(hits)[1] if hits else -1


def make_demo_cond(text: str, batch: int = 1):
    return [[torch.full((batch, 1, CONTEXT_DIM), float(class_of(text))), {}]]
