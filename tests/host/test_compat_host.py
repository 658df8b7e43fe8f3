"""One test per upstream change that broke sampler packs (the ComfyUI differences live in nodes/compat.py)."""
import inspect

import pytest
import torch

from conftest import require_host

host_ = require_host()

import comfy.samplers  # noqa: E402
from mock_models import make_cond, make_model  # noqa: E402


def guider_classes(host):
    nested = host.pack_module("nodes.nested_anytime").NestedGuider
    split = host.pack_module("nodes.split_probe").SplitGuider
    elastic = host.pack_module("nodes.elastic_guider").ElasticCFGGuider
    return [nested, split, elastic]


def test_guiders_inherit_the_hosts_sampling_signatures(host):
    # newer versions pass latent_shapes= (and more) to outer_sample / inner_sample; our guiders only
    # override predict_noise / inner_set_conds, so they take whatever this version passes
    for cls in guider_classes(host):
        for name in ("sample", "outer_sample", "inner_sample"):
            assert getattr(cls, name) is getattr(comfy.samplers.CFGGuider, name), f"{cls.__name__}.{name}"


@pytest.mark.parametrize("which", [0, 1, 2])
def test_guider_sample_with_every_keyword_this_version_takes(host, which):
    cls = guider_classes(host)[which]
    model = make_model("sd15")
    g = cls(model)
    g.set_conds(make_cond("sd15", 0.7), make_cond("sd15", -0.3))
    g.set_cfg(3.0)
    noise = torch.randn(1, 4, 8, 8, generator=torch.Generator().manual_seed(0))
    sigmas = torch.tensor([14.6, 3.0, 0.5, 0.0])
    if which == 1:
        probe = host.pack_module("nodes.split_probe")
        sampler = comfy.samplers.KSAMPLER(probe.sample_split_comfy, extra_options={
            "config": probe.validated_config("ltsp2", 3, split_term="cfg_delta")})
    else:
        sampler = comfy.samplers.sampler_object("euler")
    if which == 2:                                        # the Elastic guider calls the model at its base size
        noise = torch.randn(1, 4, 8, 16, generator=torch.Generator().manual_seed(0))
        g.base = 8
    # CFGGuider.sample passes this version's keywords (latent_shapes= on newer ones) to outer_sample
    out = g.sample(noise, torch.zeros_like(noise), sampler, sigmas, seed=1)
    assert out.shape == noise.shape and torch.isfinite(out).all()


def test_prepare_sampling_wrapper_passes_unknown_keywords_through(host):
    g = host.pack_module("nodes.elastic_guider").ElasticCFGGuider(make_model("sd15"), 64, "per_call")
    seen = {}

    def executor(model, shape, *args, **kwargs):
        seen.update(shape=shape, args=args, kwargs=kwargs)
        return "ok"

    out = g._prepare_sampling_wrapper(executor, "model", [1, 4, 64, 128], "conds", model_options={},
                                      force_full_load=True, force_offload=False, latent_shapes=[(1, 4, 64, 128)])
    assert out == "ok" and seen["args"] == ("conds",)
    assert seen["kwargs"] == {"model_options": {}, "force_full_load": True, "force_offload": False,
                              "latent_shapes": [(1, 4, 64, 128)]}


def test_callbacks_and_previews_accept_nested_latents(host):
    nt = pytest.importorskip("comfy.nested_tensor", reason="this ComfyUI has no nested latents")
    model = make_model("sd15")
    anytime = host.pack_module("nodes.nested_anytime")
    report = anytime.AnytimeReport(model, None, 4, 0.0, 0.0, 4)
    x0 = torch.randn(1, 4, 8, 8)
    nested = nt.NestedTensor([x0, torch.randn(1, 8, 1, 3)])
    report.callback(0, nested, nested, 4)
    assert torch.equal(report.estimates[0], x0)
    thumb = host.pack_module("nodes.anytime_live").thumbnail(nested, model)      # the strip's picture
    assert thumb.startswith("data:image/jpeg;base64,")
    compat = host.pack_module("nodes.compat")
    assert compat.image_part(nested) is x0 and compat.image_part(x0) is x0


def test_nested_latents_are_refused_with_a_clear_message(host):
    nt = pytest.importorskip("comfy.nested_tensor", reason="this ComfyUI has no nested latents")
    sampling = host.pack_module("nodes.sampling")
    lat = {"samples": nt.NestedTensor([torch.zeros(1, 4, 8, 8), torch.zeros(1, 8, 1, 3)])}
    with pytest.raises(ValueError, match="latent_image is a nested"):
        sampling.check_latent(lat)


def test_output_latent_drops_the_vae_downscale_keys(host):
    compat = host.pack_module("nodes.compat")
    lat = {"samples": torch.ones(1, 4, 8, 8), "downscale_ratio_spacial": 8, "downscale_ratio_temporal": 4,
           "batch_index": [3]}
    out = compat.output_latent(lat, torch.ones(1, 4, 8, 8))
    assert set(out) == {"samples", "batch_index"} and "downscale_ratio_spacial" in lat
    assert compat.fix_empty_latent_channels(make_model("sd15"), lat).shape == (1, 4, 8, 8)
