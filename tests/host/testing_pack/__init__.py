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
        if self.kind == "demo":          # the demo model's latent is the (8x smaller) picture itself
            return x
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
        if getattr(clip, "kind", None) == "demo":          # the learned demo model: a class name
            import demo_host
            return (demo_host.make_demo_cond(text),)
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


# ------------------------------------------------------------------------------------------
# fuzz-test helpers (tests/host/test_fuzz.py): a latent source that remembers what it produced,
# and output nodes that report NaN, shapes and whether the source latent was modified.
# ------------------------------------------------------------------------------------------
_PRODUCED = {}          # id(samples tensor) -> (the latent dict, samples copy, noise_mask copy or None), newest last
_PRODUCED_MAX = 2048


def _remember(latent):
    if len(_PRODUCED) >= _PRODUCED_MAX:
        _PRODUCED.pop(next(iter(_PRODUCED)))
    mask = latent.get("noise_mask")
    x = latent["samples"]
    _PRODUCED[id(x)] = (latent, x.clone(), None if mask is None else mask.clone())


def _intact(rec):
    latent, samples, mask = rec
    return _same(latent["samples"], samples) and _same(latent.get("noise_mask"), mask)


def _modified_since_produced():
    """Every latent NSETestLatent made (in this server) that is no longer bit-identical to what it made
    (each is reported once).  Run by every check, so a sampler that modifies its input and then fails
    is caught by the next prompt's check."""
    bad = [k for k, rec in _PRODUCED.items() if not _intact(rec)]
    for k in bad:
        _PRODUCED.pop(k)
    return len(bad)


def _same(a, b):
    """Bitwise equality (NaN-safe): a modified input shows up even where values are NaN."""
    if a is None or b is None:
        return a is None and b is None
    if a.shape != b.shape or a.dtype != b.dtype:
        return False
    return bool(torch.equal(a.contiguous().reshape(-1).view(torch.uint8), b.contiguous().reshape(-1).view(torch.uint8)))


class NSETestLatent:
    """A LATENT of any shape and content, including the malformed ones the fuzz test sends: 0-element,
    batch 0, NaN/inf values, any channel count, and noise masks of the wrong size, batch or content."""
    FILLS = ["random", "zeros", "nan", "inf"]
    MASKS = ["none", "ones", "half", "wrong_size", "wrong_batch", "empty", "nan"]

    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {"width": ("INT", {"default": 8, "min": 0, "max": 4096}),
                             "height": ("INT", {"default": 8, "min": 0, "max": 4096}),
                             "channels": ("INT", {"default": 4, "min": 0, "max": 64}),
                             "batch": ("INT", {"default": 1, "min": 0, "max": 64}),
                             "fill": (cls.FILLS, {"default": "random"}),
                             "mask": (cls.MASKS, {"default": "none"}),
                             "seed": ("INT", {"default": 0, "min": 0, "max": 2 ** 31})}}

    RETURN_TYPES = ("LATENT",)
    FUNCTION = "make"
    CATEGORY = "testing/nse"

    def make(self, width, height, channels, batch, fill, mask, seed):
        """``width``/``height`` in latent px."""
        g = torch.Generator().manual_seed(seed)
        shape = (batch, channels, height, width)
        x = torch.zeros(shape) if fill == "zeros" else torch.randn(shape, generator=g) * 0.5
        if fill in ("nan", "inf") and x.numel():
            x.view(-1)[x.numel() // 2] = float("nan") if fill == "nan" else float("inf")
        out = {"samples": x}
        if mask != "none":
            mh, mw = (max(1, height // 2 + 1), max(1, width // 3 + 1)) if mask == "wrong_size" else (height, width)
            mb = batch + 2 if mask == "wrong_batch" else max(1, batch)
            m = torch.ones(mb, 1, mh, mw)
            if mask == "half":
                m[..., : mh // 2, :] = 0.0
            elif mask == "empty":
                m = torch.ones(mb, 1, 0, 0)
            elif mask == "nan" and m.numel():
                m.view(-1)[0] = float("nan")
            out["noise_mask"] = m
        _remember(out)
        return (out,)


def _latent_report(lat):
    if not isinstance(lat, dict) or not isinstance(lat.get("samples"), torch.Tensor):
        return {"type": type(lat).__name__, "finite": False}
    x = lat["samples"]
    if getattr(x, "is_nested", False):
        parts = list(getattr(x, "tensors", []))
        finite = all(bool(torch.isfinite(p).all()) for p in parts)
        return {"shape": [list(p.shape) for p in parts], "finite": finite}
    return {"shape": list(x.shape), "finite": bool(torch.isfinite(x).all()),
            "nan": int(torch.isnan(x).sum()), "inf": int(torch.isinf(x).sum())}


class NSETestLatentCheck:
    """Output node: reports (in its UI output ``nse_check``) whether the sampled latents are finite, their
    shapes, whether the source latent (``original``, made by NSETestLatent) is still bit-identical to
    what NSETestLatent produced (False also when it was not made by NSETestLatent), and how many other
    latents NSETestLatent made have been modified since.  ``tag`` makes each fuzz case re-run this node."""

    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {"samples": ("LATENT",), "tag": ("STRING", {"default": ""})},
                "optional": {"samples_2": ("LATENT",), "original": ("LATENT",)}}

    RETURN_TYPES = ()
    FUNCTION = "check"
    OUTPUT_NODE = True
    CATEGORY = "testing/nse"

    def check(self, samples, tag, samples_2=None, original=None):
        outs = [_latent_report(samples)] + ([] if samples_2 is None else [_latent_report(samples_2)])
        unchanged = None
        if original is not None:
            rec = _PRODUCED.get(id(original.get("samples")))
            unchanged = rec is not None and rec[0]["samples"] is original["samples"] and _intact(rec)
        report = {"tag": tag, "outputs": outs, "finite": all(o.get("finite") for o in outs), "unchanged": unchanged,
                  "modified_elsewhere": _modified_since_produced()}
        return {"ui": {"nse_check": [report]}, "result": ()}


class NSETestSigmasCheck:
    """Output node: reports (``nse_sigmas``) whether SIGMAS are finite and strictly decreasing."""

    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {"sigmas": ("SIGMAS",), "tag": ("STRING", {"default": ""})}}

    RETURN_TYPES = ()
    FUNCTION = "check"
    OUTPUT_NODE = True
    CATEGORY = "testing/nse"

    def check(self, sigmas, tag):
        s = torch.as_tensor(sigmas).float().reshape(-1)
        report = {"tag": tag, "n": int(s.numel()), "finite": bool(torch.isfinite(s).all()),
                  "decreasing": bool((s[1:] < s[:-1]).all()) if s.numel() > 1 else s.numel() == 1,
                  "first": float(s[0]) if s.numel() else None, "last": float(s[-1]) if s.numel() else None}
        return {"ui": {"nse_sigmas": [report]}, "result": ()}


NODE_CLASS_MAPPINGS.update({
    "NSETestLatent": NSETestLatent,
    "NSETestLatentCheck": NSETestLatentCheck,
    "NSETestSigmasCheck": NSETestSigmasCheck,
})


# ------------------------------------------------------------------------------------------
# anytime tests (tests/host/test_anytime_host.py, test_browser.py): a slow model, so a run can be
# watched and stopped; a capture node that keeps latents and reports per-picture digests.
# ------------------------------------------------------------------------------------------
class NSETestSlowModel:
    """The model with a pause before every evaluation (a model patch, as any wrapper node does)."""

    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {"model": ("MODEL",), "seconds": ("FLOAT", {"default": 0.1, "min": 0.0, "max": 10.0})}}

    RETURN_TYPES = ("MODEL",)
    FUNCTION = "slow"
    CATEGORY = "testing/nse"

    def slow(self, model, seconds):
        import time
        m = model.clone()

        def wrapper(apply, args):
            time.sleep(seconds)
            return apply(args["input"], args["timestep"], **args["c"])
        m.set_model_unet_function_wrapper(wrapper)
        return (m,)


def digest(x):
    import hashlib
    return hashlib.blake2b(x.detach().float().contiguous().numpy().tobytes(), digest_size=12).hexdigest()


class NSETestCapture:
    """Output node: keeps the LATENT in ``mock_models.CAPTURED[tag]`` and reports (``nse_capture``)
    its batch size and one digest per picture, so server tests can compare pictures bit for bit."""

    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {"samples": ("LATENT",), "tag": ("STRING", {"default": ""})}}

    RETURN_TYPES = ()
    FUNCTION = "capture"
    OUTPUT_NODE = True
    CATEGORY = "testing/nse"

    def capture(self, samples, tag):
        mock_models.CAPTURED[tag] = samples
        x = samples["samples"]
        report = {"tag": tag, "n": int(x.shape[0]), "digests": [digest(x[i]) for i in range(x.shape[0])],
                  "state_step": (samples.get("nested_state") or {}).get("step")}
        return {"ui": {"nse_capture": [report]}, "result": ()}


NODE_CLASS_MAPPINGS.update({
    "NSETestSlowModel": NSETestSlowModel,
    "NSETestCapture": NSETestCapture,
})


class NSETestDemoCheckpoint:
    """The learned demo model (demo/, 32 x 32 RGB pictures of one object) as MODEL / CLIP / VAE.
    Prompts name the object ("a square"); EmptyLatentImage 256 x 256 = one 32 x 32 picture."""

    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {"ckpt_name": ("STRING", {"default": "demo"}),
                             "trained": ("BOOLEAN", {"default": True})}}

    RETURN_TYPES = ("MODEL", "CLIP", "VAE")
    FUNCTION = "load"
    CATEGORY = "testing/nse"

    def load(self, ckpt_name, trained):
        import demo_host
        return (demo_host.make_demo_model(trained), MockClip("demo"), MockVae("demo"))


NODE_CLASS_MAPPINGS["NSETestDemoCheckpoint"] = NSETestDemoCheckpoint
