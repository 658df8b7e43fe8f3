"""Test-only helper nodes (V1). Loaded by the host tests only; never registered for users.

They stand in for what needs real weights: a mock checkpoint (MODEL/CLIP/VAE), text encoding
into mock conditioning, and a VAE decode, so the shipped API workflows run with a mock model.
"""
import os
import sys

import torch

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.realpath(__file__))))
import mock_models  # noqa: E402

KINDS = ["sd15", "sdxl", "flow"]


class MockClip:
    def __init__(self, kind):
        self.kind = kind


class MockVae:
    """Stands in for a VAE: encode = 8x average pooling and a fixed RGB -> latent channel map."""

    def __init__(self, kind):
        self.kind = kind

    def encode(self, pixels):
        x = pixels.movedim(-1, 1).float() * 2 - 1
        x = torch.nn.functional.avg_pool2d(x, 8)
        c = mock_models.CHANNELS[self.kind]
        m = torch.linspace(-1, 1, 3 * c).reshape(c, 3)
        return torch.einsum("ck,bkhw->bchw", m, x)


class NSETestMockCheckpoint:
    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {"ckpt_name": ("STRING", {"default": "mock.safetensors"}),
                             "kind": (KINDS, {"default": "sd15"})}}

    RETURN_TYPES = ("MODEL", "CLIP", "VAE")
    FUNCTION = "load"
    CATEGORY = "testing/nse"

    def load(self, ckpt_name, kind):
        return (mock_models.make_model(kind), MockClip(kind), MockVae(kind))


class NSETestMockModel:
    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {"kind": (KINDS, {"default": "sd15"})}}

    RETURN_TYPES = ("MODEL",)
    FUNCTION = "load"
    CATEGORY = "testing/nse"

    def load(self, kind):
        return (mock_models.make_model(kind),)


class NSETestMockTextEncode:
    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {"text": ("STRING", {"multiline": True}), "clip": ("CLIP",)}}

    RETURN_TYPES = ("CONDITIONING",)
    FUNCTION = "encode"
    CATEGORY = "testing/nse"

    def encode(self, text, clip):
        value = (sum(map(ord, text)) % 97) / 97.0
        return (mock_models.make_cond(getattr(clip, "kind", "sd15"), value),)


class NSETestMockVAEDecode:
    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {"samples": ("LATENT",), "vae": ("VAE",)}}

    RETURN_TYPES = ("IMAGE",)
    FUNCTION = "decode"
    CATEGORY = "testing/nse"

    def decode(self, samples, vae):
        x = samples["samples"].float()
        img = torch.nn.functional.interpolate(x[:, :3], scale_factor=8, mode="nearest")
        return (((img.clamp(-1, 1) + 1) / 2).movedim(1, -1).contiguous(),)


NODE_CLASS_MAPPINGS = {
    "NSETestMockCheckpoint": NSETestMockCheckpoint,
    "NSETestMockModel": NSETestMockModel,
    "NSETestMockTextEncode": NSETestMockTextEncode,
    "NSETestMockVAEDecode": NSETestMockVAEDecode,
}
