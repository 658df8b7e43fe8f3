"""Host tests: the Split nodes inside a real ComfyUI with mock models."""
import pytest
import torch

from conftest import require_host

require_host()

import comfy.samplers  # noqa: E402
from mock_models import make_cond, make_model, net  # noqa: E402


def latent(b=1, c=4, h=8, w=8):
    return {"samples": torch.zeros(b, c, h, w)}


def run_node(host, model=None, kind="sd15", lat=None, **kw):
    model = model or make_model(kind)
    args = dict(model=model, positive=make_cond(kind, 0.7), negative=make_cond(kind, -0.3),
                latent_image=lat or latent(c=16 if kind in ("flow", "flux") else 4), seed=1, steps=6, cfg=5.0,
                scheduler="split_respace", denoise=1.0, method="ltsp4", split_term="cfg_delta", split_base="cond",
                eval_mode="auto", ab_coeffs="fixed", final_step="auto", guidance_scale=1.0)
    args.update(kw)
    return host.node("SplitGuidedSampler").execute(**args)[0], model


def sampler_of(host, **kw):
    args = dict(method="ltsp4", split_term="cfg_delta", split_base="cond", eval_mode="auto", ab_coeffs="fixed",
                final_step="auto", guidance_scale=1.0)
    args.update(kw)
    return host.node("SplitSampler").execute(**args)[0]


def run_with_guider(host, model, sampler, sigmas, cfg=5.0, seed=1, kind="sd15"):
    sampling = host.pack_module("nodes.sampling")
    guider = comfy.samplers.CFGGuider(model)
    guider.set_conds(make_cond(kind, 0.7), make_cond(kind, -0.3))
    guider.set_cfg(cfg)
    return sampling.run_guider(guider, model, latent(), sampler, sigmas, seed)


def test_one_node_shared_costs_one_cfg_call_per_step(host):
    out, model = run_node(host, eval_mode="shared")
    assert out["samples"].shape == (1, 4, 8, 8) and torch.isfinite(out["samples"]).all()
    calls = net(model).calls
    assert len(calls) == 6 and all(sorted(c["cond_or_uncond"]) == [0, 1] for c in calls)


def test_one_node_auto_is_sequential_with_one_cond_only_pass_per_step(host):
    out, model = run_node(host)                       # eval_mode auto: the paper's sequential evaluation
    calls = net(model).calls
    cfg_calls = [c for c in calls if sorted(c["cond_or_uncond"]) == [0, 1]]
    cond_only = [c for c in calls if c["cond_or_uncond"] == [0] and c["shape"][0] == 1]
    assert len(cfg_calls) == 6 and len(cond_only) == 6 and len(calls) == 12     # 3 passes a step
    seq, _ = run_node(host, eval_mode="sequential")
    assert torch.equal(out["samples"], seq["samples"])


def test_cfg_one_makes_no_uncond_call(host):
    _, model = run_node(host, cfg=1.0)
    assert all(c["cond_or_uncond"] == [0] for c in net(model).calls)


def test_sampler_under_cfg_guider_equals_the_one_node(host):
    model = make_model()
    sigmas = host.node("SplitRespace").execute(model, 6, 1.0)[0]
    a = run_with_guider(host, model, sampler_of(host), sigmas)      # auto under a stock CFGGuider: shared
    b, _ = run_node(host, model=model, eval_mode="shared")
    assert torch.allclose(a["samples"], b["samples"], atol=1e-6)


def test_no_split_ltsp4_equals_comfy_ipndm(host):
    model = make_model()
    sigmas = comfy.samplers.calculate_sigmas(model.get_model_object("model_sampling"), "karras", 8).cpu()
    ours = run_with_guider(host, model, sampler_of(host, split_term="none", final_step="denoised"), sigmas)
    ref = run_with_guider(host, model, comfy.samplers.ksampler("ipndm"), sigmas)
    assert torch.allclose(ours["samples"], ref["samples"], atol=1e-4, rtol=1e-4)
    # and with guidance split off, the result differs from ipndm on the full field
    split_out = run_with_guider(host, model, sampler_of(host, final_step="denoised"), sigmas)
    assert not torch.allclose(split_out["samples"], ref["samples"], atol=1e-4)


def test_sequential_mode_uses_base_only_calls(host):
    _, model = run_node(host, method="stsp2", eval_mode="sequential")
    calls = net(model).calls
    base_only = [c for c in calls if c["shape"][0] == 1]
    assert base_only and all(c["cond_or_uncond"] == [0] for c in base_only)


def test_uncond_base_disables_the_cfg1_shortcut(host):
    out, model = run_node(host, cfg=1.0, split_base="uncond")
    assert any(sorted(c["cond_or_uncond"]) == [0, 1] for c in net(model).calls)
    assert torch.isfinite(out["samples"]).all()


def test_gradient_guidance_graph_pulls_colour_toward_reference(host):
    ref = torch.zeros(1, 4, 8, 8)
    ref[:, 0] = 2.0
    ref[:, 1] = -1.0
    prompt = {
        "1": {"class_type": "NSETestMockCheckpoint", "inputs": {"ckpt_name": "x", "kind": "sd15"}},
        "2": {"class_type": "NSETestMockTextEncode", "inputs": {"text": "a ball", "clip": ["1", 1]}},
        "3": {"class_type": "NSETestMockTextEncode", "inputs": {"text": "", "clip": ["1", 1]}},
        "4": {"class_type": "EmptyLatentImage", "inputs": {"width": 64, "height": 64, "batch_size": 1}},
        "5": {"class_type": "SplitGuidedSampler", "inputs": {
            "model": ["1", 0], "positive": ["2", 0], "negative": ["3", 0], "latent_image": ["4", 0], "seed": 2,
            "steps": 8, "cfg": 3.0, "scheduler": "split_respace", "denoise": 1.0, "method": "ltsp2",
            "split_term": "gradient", "split_base": "cond", "eval_mode": "auto", "ab_coeffs": "fixed",
            "final_step": "auto", "guidance_scale": 1.0}},
        "6": {"class_type": "NSETestMockVAEDecode", "inputs": {"samples": ["5", 0], "vae": ["1", 2]}},
        "7": {"class_type": "PreviewImage", "inputs": {"images": ["6", 0]}},
    }
    ex, server = host.run_prompt(prompt)   # no guidance connected: a clear error, not a crash
    assert not ex.success
    err = [m for m in server.messages if m[0] == "execution_error"][0][1]
    assert "split_term='gradient' needs a guidance object" in err["exception_message"]

    guided = host.node("SplitColorGuidance")
    model = make_model()
    g = guided.execute(model, {"samples": ref}, 1.0, False)[0]
    plain, _ = run_node(host, model=model, method="ltsp2", steps=8, split_term="none")
    pulled, _ = run_node(host, model=model, method="ltsp2", steps=8, split_term="gradient", guidance=g)
    m_plain = plain["samples"].mean(dim=(-2, -1))
    m_pulled = pulled["samples"].mean(dim=(-2, -1))
    target = ref.mean(dim=(-2, -1))
    assert (m_pulled - target).abs().sum() < 0.5 * (m_plain - target).abs().sum()


def test_gradient_guidance_inside_the_executor_inference_mode(host):
    prompt = {
        "1": {"class_type": "NSETestMockCheckpoint", "inputs": {"ckpt_name": "x", "kind": "sd15"}},
        "2": {"class_type": "NSETestMockTextEncode", "inputs": {"text": "a ball", "clip": ["1", 1]}},
        "3": {"class_type": "NSETestMockTextEncode", "inputs": {"text": "", "clip": ["1", 1]}},
        "4": {"class_type": "EmptyLatentImage", "inputs": {"width": 64, "height": 64, "batch_size": 1}},
        "8": {"class_type": "SplitColorGuidance", "inputs": {"model": ["1", 0], "reference": ["4", 0],
                                                             "strength": 0.5, "match_std": True}},
        "5": {"class_type": "SplitGuidedSampler", "inputs": {
            "model": ["1", 0], "positive": ["2", 0], "negative": ["3", 0], "latent_image": ["4", 0], "seed": 2,
            "steps": 8, "cfg": 3.0, "scheduler": "split_respace", "denoise": 1.0, "method": "stsp2",
            "split_term": "gradient", "split_base": "cond", "eval_mode": "auto", "ab_coeffs": "fixed",
            "final_step": "auto", "guidance_scale": 1.0, "guidance": ["8", 0]}},
        "6": {"class_type": "NSETestMockVAEDecode", "inputs": {"samples": ["5", 0], "vae": ["1", 2]}},
        "7": {"class_type": "PreviewImage", "inputs": {"images": ["6", 0]}},
    }
    ex, server = host.run_prompt(prompt)
    assert ex.success, [m for m in server.messages if m[0] == "execution_error"]


def test_previews_and_progress(host, progress):
    run_node(host, steps=7)
    assert [e[0] for e in progress] == list(range(1, 8)) and all(e[2] is not None for e in progress)


def test_inpainting_mask_batch_img2img(host):
    src = torch.randn(2, 4, 8, 8, generator=torch.Generator().manual_seed(0))
    mask = torch.zeros(1, 1, 8, 8)
    mask[..., 4:] = 1.0
    out, _ = run_node(host, lat={"samples": src.clone(), "noise_mask": mask}, method="stsp4", eval_mode="sequential")
    assert torch.allclose(out["samples"][..., :4], src[..., :4], atol=1e-4)   # multistep end: fp32 round-off
    out, _ = run_node(host, lat={"samples": src.clone()}, denoise=0.5, steps=8)
    assert out["samples"].shape == (2, 4, 8, 8) and torch.isfinite(out["samples"]).all()


@pytest.mark.parametrize("kind", ["sdxl", "flow", "flux"])
def test_sdxl_and_flow(host, kind):
    out, model = run_node(host, kind=kind, scheduler="simple" if kind in ("flow", "flux") else "split_respace")
    assert torch.isfinite(out["samples"]).all()
    if kind == "sdxl":
        assert all(c["y"].shape[1] == 2816 for c in net(model).calls)


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_half_precision_model(host, dtype):
    out, _ = run_node(host, model=make_model("sd15", dtype=dtype), method="stsp4", steps=8)
    assert out["samples"].dtype == torch.float32 and torch.isfinite(out["samples"]).all()


@pytest.mark.parametrize("kw,msg", [
    ({"method": "ltsp8"}, "method must be one of"),
    ({"steps": 0}, "steps must be an integer between 1 and 1000"),
    ({"split_term": "gradient", "guidance": "not a guidance"}, "guidance"),
    ({"guidance_scale": -1.0}, r"guidance_scale must be a finite number between 0(\.0)? and 1000(\.0)? \(got -1.0\)"),
    ({"cfg": -2.0}, "cfg must be"),
    ({"denoise": 0.0}, r"denoise must be a finite number between 0.01 and 1(\.0)? \(got 0.0\)"),
    ({"lat": {"samples": torch.zeros(4, 8, 8)}}, "latent_image must be a non-empty 4-D"),
])
def test_bad_input_is_rejected_before_model_work(host, kw, msg):
    model = make_model()
    with pytest.raises(ValueError, match=msg):
        run_node(host, model=model, **kw)
    assert net(model).calls == []


def test_rescale_cfg_patch_is_kept_in_the_guidance_term(host):
    from comfy_extras.nodes_model_advanced import RescaleCFG
    model = make_model()
    patched = RescaleCFG().patch(model, 0.7)[0]
    plain, _ = run_node(host, model=model)
    rescaled, _ = run_node(host, model=patched)
    assert torch.isfinite(rescaled["samples"]).all()
    assert not torch.allclose(plain["samples"], rescaled["samples"])
    # with split_term none the same patch changes the result the same way a core sampler sees it
    sig = host.node("SplitRespace").execute(model, 6, 1.0)[0]
    ours = run_with_guider(host, patched, sampler_of(host, split_term="none", final_step="denoised"), sig)
    ref = run_with_guider(host, patched, comfy.samplers.ksampler("ipndm"), sig)
    assert torch.allclose(ours["samples"], ref["samples"], atol=1e-4, rtol=1e-4)


def test_probe_blends_the_base_with_the_mask_the_model_wrapper_uses(host):
    """Under an inpainting mask (and Differential Diffusion's mask function) the base prediction is
    blended like the model output, so G = final - base vanishes where the latent is kept."""
    mod = host.pack_module("nodes.split_probe")

    class FakeK:
        latent_image = torch.full((1, 4, 2, 2), 7.0)
        sigmas = torch.tensor([2.0, 1.0, 0.0])
        inner_model = object()

    mask = torch.tensor([[[[1.0, 0.0], [0.5, 0.0]]]])
    seen = {}

    def mask_fn(sigma, m, extra_options):
        seen["sigma"], seen["opts"] = sigma, extra_options
        return (m > 0.4).float()

    extra = {"denoise_mask": mask, "model_options": {"denoise_mask_function": mask_fn}}
    probe = mod.ComfySplitProbe(FakeK(), extra)
    cond = torch.ones(1, 4, 2, 2)
    args = {"denoised": cond * 3, "cond_denoised": cond, "uncond_denoised": cond * 0, "sigma": torch.tensor([1.5])}
    final = probe.post_cfg_function(args)
    assert final is args["denoised"]                       # the hook records and changes nothing
    base = probe.base_prediction(final, "cond")
    expected = torch.tensor([[[[1.0, 7.0], [1.0, 7.0]]]]).expand(1, 4, 2, 2)
    assert torch.equal(base, expected)
    assert float(seen["sigma"]) == 1.5 and seen["opts"]["sigmas"] is FakeK.sigmas


@pytest.mark.parametrize("steps", [1, 2, 3])
@pytest.mark.parametrize("method", ["ltsp4", "stsp4", "plms4"])
def test_short_schedules_run(host, method, steps):
    out, _ = run_node(host, method=method, steps=steps)
    assert torch.isfinite(out["samples"]).all()
    out, _ = run_node(host, method=method, steps=4 * steps, denoise=0.25)      # a short img2img tail
    assert torch.isfinite(out["samples"]).all()


@pytest.mark.parametrize("method", ["ltsp4", "stsp4"])
@pytest.mark.parametrize("k", [1, 4])
def test_interrupt_is_honoured_within_one_model_call(host, method, k):
    import comfy.model_management as mm
    model = make_model()
    net(model).interrupt_after = k
    try:
        with pytest.raises(mm.InterruptProcessingException):
            run_node(host, model=model, method=method, eval_mode="sequential", steps=8)
    finally:
        mm.interrupt_current_processing(False)
    assert net(model).calls_at_interrupt == k
    assert len(net(model).calls) == k                  # no model evaluation started after the flag
