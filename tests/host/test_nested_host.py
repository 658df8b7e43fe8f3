"""Host tests: the Nested nodes inside a real ComfyUI with mock models."""
import pytest
import torch

from conftest import require_host

require_host()

from mock_models import make_cond, make_model, net


def latent(b=1, c=4, h=8, w=8, value=0.0):
    return {"samples": torch.full((b, c, h, w), float(value))}


def run_ks(host, model=None, kind="sd15", lat=None, **kw):
    node = host.node("NestedKSampler")
    model = model or make_model(kind)
    args = dict(model=model, positive=make_cond(kind, 0.7), negative=make_cond(kind, -0.3),
                latent_image=lat or latent(c=16 if kind in ("flow", "flux") else 4), seed=1, outer_steps=3, inner_steps=2,
                cfg=5.0, inner_sampler="euler_ancestral", inner_scheduler="official", outer_scheduler="official_outer",
                denoise=1.0, inner_eta=0.85, outer_eta=1.0, time_budget=0.0, switch_at_outer_step=0)
    args.update(kw)
    out = node.execute(**args)
    return out[0], out[1], model


def test_node_execute_outputs_intermediates_previews_and_nfe(host, progress):
    out, inter, model = run_ks(host)
    assert out["samples"].shape == (1, 4, 8, 8)
    assert inter["samples"].shape == (3, 4, 8, 8)
    assert torch.equal(out["samples"], inter["samples"][-1:])           # final == last estimate
    calls = net(model).calls
    assert len(calls) == 3 * 2                                           # N x K model evaluations
    assert all(sorted(c["cond_or_uncond"]) == [0, 1] and c["shape"][0] == 2 for c in calls)  # CFG: one batch of 2
    previews = [e for e in progress if e[2] is not None]
    assert len(previews) == 3                                            # exactly one preview per outer step
    assert progress[-1][0] == 6 and progress[-1][1] == 6                 # the bar counts model evaluations


def test_cfg_one_makes_no_uncond_call(host):
    _, _, model = run_ks(host, cfg=1.0)
    assert all(c["cond_or_uncond"] == [0] for c in net(model).calls)


def test_determinism_and_seed(host):
    a, ia, _ = run_ks(host, seed=5)
    b, ib, _ = run_ks(host, seed=5)
    c, _, _ = run_ks(host, seed=6)
    assert torch.equal(a["samples"], b["samples"]) and torch.equal(ia["samples"], ib["samples"])
    assert not torch.equal(a["samples"], c["samples"])


def test_time_budget_returns_latest_estimate(host):
    out, inter, model = run_ks(host, outer_steps=6, time_budget=1e-9)
    assert inter["samples"].shape[0] == 1
    assert torch.equal(out["samples"], inter["samples"][-1:])
    assert len(net(model).calls) == 2


@pytest.mark.parametrize("k", [1, 3, 4, 6])   # first call, mid outer step, an outer step's last call, 2nd outer step
def test_interrupt_is_honoured_within_one_inner_step(host, k):
    # The interrupt is raised from inside the mock model's k-th call (not from a progress update, which the
    # host may throttle): no model evaluation may start after the flag is set, and the node raises
    # ComfyUI's InterruptProcessingException.
    import comfy.model_management as mm
    model = make_model()
    net(model).interrupt_after = k
    try:
        with pytest.raises(mm.InterruptProcessingException):
            run_ks(host, model=model, outer_steps=4, inner_steps=4)
    finally:
        mm.interrupt_current_processing(False)
    assert net(model).calls_at_interrupt == k
    assert len(net(model).calls) - net(model).calls_at_interrupt == 0    # stopped within the interrupted call


def test_prompt_switch_keeps_earlier_steps_bit_identical(host):
    base_out, base_inter, _ = run_ks(host, outer_steps=4)
    out, inter, _ = run_ks(host, outer_steps=4, positive_2=make_cond("sd15", -0.9), switch_at_outer_step=2)
    assert torch.equal(inter["samples"][:2], base_inter["samples"][:2])
    assert not torch.equal(inter["samples"][2:], base_inter["samples"][2:])


def test_batch_img2img_and_inpainting_mask(host):
    src = torch.randn(2, 4, 8, 8, generator=torch.Generator().manual_seed(0))
    out, inter, _ = run_ks(host, lat={"samples": src.clone()}, denoise=0.5)
    assert out["samples"].shape == (2, 4, 8, 8) and inter["samples"].shape == (6, 4, 8, 8)
    assert torch.isfinite(out["samples"]).all()
    mask = torch.zeros(1, 1, 8, 8)
    mask[..., 4:] = 1.0
    out, _, _ = run_ks(host, lat={"samples": src.clone(), "noise_mask": mask})
    keep = out["samples"][..., :4]
    assert torch.allclose(keep, src[..., :4], atol=1e-5)                 # unmasked area is untouched
    assert not torch.allclose(out["samples"][..., 4:], src[..., 4:])


def test_sdxl_and_flow_models(host):
    out, inter, model = run_ks(host, kind="sdxl")
    assert all(c["y"] is not None and c["y"].shape[1] == 2816 for c in net(model).calls)
    assert torch.isfinite(out["samples"]).all()
    out, inter, model = run_ks(host, kind="flow", outer_scheduler="simple", inner_scheduler="normal")
    assert out["samples"].shape == (1, 16, 8, 8) and torch.isfinite(out["samples"]).all()
    # flow: the official schedules are available as well, with K steps per inner process
    out, _, model = run_ks(host, kind="flow")
    assert torch.isfinite(out["samples"]).all() and len(net(model).calls) == 3 * 2


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_half_precision_model(host, dtype):
    out, inter, model = run_ks(host, model=make_model("sd15", dtype=dtype), outer_steps=4, inner_steps=3)
    assert out["samples"].dtype == torch.float32 and torch.isfinite(out["samples"]).all()


def test_lora_style_weight_patch_is_applied(host):
    base, _, _ = run_ks(host)
    model = make_model()
    w = net(model).conv.weight
    model.add_patches({"diffusion_model.conv.weight": (torch.ones_like(w) * 0.05,)}, 1.0)
    patched, _, _ = run_ks(host, model=model)
    assert not torch.allclose(base["samples"], patched["samples"])


@pytest.mark.parametrize("kw,msg", [
    ({"outer_steps": 0}, "outer_steps must be an integer between 1 and 1000"),
    ({"inner_steps": 0}, "inner_steps must be an integer between 1 and 1000"),
    ({"denoise": 0.0}, r"denoise must be a finite number between 0.01 and 1"),
    ({"denoise": 1.5}, r"denoise must be a finite number between 0.01 and 1"),
    ({"time_budget": -1.0}, "time_budget must be a finite number between 0 and 86400"),
    ({"switch_at_outer_step": 2}, "positive_2 is not connected"),
    ({"positive_2": [[torch.zeros(1, 77, 768), {}]], "switch_at_outer_step": 3},
     "switch_at_outer_step must be between 1 and outer_steps-1 = 2"),
    ({"lat": {"samples": torch.full((1, 4, 8, 8), float("nan"))}}, "latent_image contains NaN"),
    ({"lat": {"samples": torch.zeros(4, 8, 8)}}, "latent_image must be a non-empty 4-D"),
    ({"inner_sampler": "nope"}, "inner_sampler must be one of"),
])
def test_bad_input_is_rejected_before_model_work(host, kw, msg):
    model = make_model()
    with pytest.raises(ValueError, match=msg):
        run_ks(host, model=model, **kw)
    assert net(model).calls == []


def test_nested_sampler_under_sampler_custom_advanced(host):
    from comfy_host import custom_advanced_prompt
    prompt = custom_advanced_prompt(
        ("CFGGuider", {"model": ["1", 0], "positive": ["2", 0], "negative": ["3", 0], "cfg": 4.0}),
        ("NestedSampler", {"inner_sampler": "dpmpp_2m", "inner_steps": 3, "inner_scheduler": "karras",
                           "inner_eta": 0.85, "outer_eta": 1.0, "inner_end": "zero"}),
        ("NestedOfficialOuterScheduler", {"model": ["1", 0], "steps": 3}))
    ex, server = host.run_prompt(prompt)
    assert ex.success, server.messages[-3:]
    assert "11" in ex.history_result["outputs"]


def test_controlnet_as_comfy_applies_it(host):
    from mock_models import make_control
    base, _, _ = run_ks(host)
    control = make_control(0.3)
    out, _, model = run_ks(host, positive=make_cond("sd15", 0.7, control=control))
    assert control.calls == 6 and any(c["control"] for c in net(model).calls)
    assert not torch.allclose(base["samples"], out["samples"])


def test_flux_like_continuous_flow_model(host):
    out, inter, model = run_ks(host, kind="flux")
    assert out["samples"].shape == (1, 16, 8, 8) and torch.isfinite(out["samples"]).all()
    assert len(net(model).calls) == 3 * 2


@pytest.mark.parametrize("sched", ["normal", "karras", "exponential", "simple", "beta", "sgm_uniform", "kl_optimal",
                                   "ddim_uniform", "linear_quadratic", "official", "official_dpm"])
@pytest.mark.parametrize("kind", ["sd15", "flow"])
def test_every_inner_schedule_starts_exactly_at_the_outer_sigma(host, sched, kind):
    node = host.pack_module("nodes.nested_anytime")
    nested = host.pack_module("samplers.nested")
    model = make_model(kind)
    ms = model.get_model_object("model_sampling")
    for s in nested.official_outer_sigmas(ms, 6)[:-1].tolist():
        sig = nested.build_inner_sigmas(ms, s, 4, node.inner_schedule(sched))
        assert float(sig[0]) == s and float(sig[-1]) == 0.0
        assert bool(torch.all(sig[:-1] > sig[1:])) and len(sig) - 1 >= 3, sig
    out, inter, _ = run_ks(host, model=model, kind=kind, inner_steps=3, inner_scheduler=sched)
    assert torch.isfinite(inter["samples"]).all() and inter["samples"].shape[0] == 3


def test_deterministic_inner_without_outer_noise_warns(host, caplog):
    import logging
    with caplog.at_level(logging.WARNING):
        run_ks(host, inner_sampler="dpmpp_2m", outer_eta=0.0, outer_steps=4)
    assert any("drifts" in r.getMessage() for r in caplog.records)
    caplog.clear()
    with caplog.at_level(logging.WARNING):
        run_ks(host, inner_sampler="euler_ancestral", outer_eta=0.0, outer_steps=4)
    assert not any("drifts" in r.getMessage() for r in caplog.records)
