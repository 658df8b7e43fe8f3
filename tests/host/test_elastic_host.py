"""Host tests: the Elastic nodes inside a real ComfyUI with SD1.5-like and SDXL-like mock models."""
import pytest
import torch

from conftest import require_host

require_host()

from mock_models import make_cond, make_model, net  # noqa: E402


def run_node(host, kind="sd15", w=1024, h=512, model=None, lat=None, positive=None, **kw):
    model = model or make_model(kind)
    args = dict(model=model, positive=positive or make_cond(kind, 0.7), negative=make_cond(kind, -0.3),
                latent_image=lat or {"samples": torch.zeros(1, 4, h // 8, w // 8)}, seed=3, steps=3, cfg=7.0,
                preset="auto", resampling_steps=-1, new_p=0.3, rrg_init_weight=-1.0, cosine_scale=10.0,
                rrg_stop_t=0.4, repaint=True, patch_size=0, view_batch_size=16, base_resolution=0,
                size_cond="per_call", mode="clean")
    args.update(kw)
    return host.node("ElasticLatentSampler").execute(**args)[0], model


@pytest.mark.parametrize("kind,w,h", [("sd15", 1024, 512), ("sd15", 512, 1024), ("sd15", 768, 768),
                                      ("sdxl", 1536, 1536), ("sdxl", 1920, 1080)])
def test_sizes_keep_the_latent_and_every_call_is_base_size(host, kind, w, h):
    steps = 2 if kind == "sdxl" else 3
    out, model = run_node(host, kind, w, h, steps=steps)
    assert out["samples"].shape == (1, 4, h // 8, w // 8)
    assert torch.isfinite(out["samples"]).all()
    base = 128 if kind == "sdxl" else 64
    calls = net(model).calls
    assert calls and all(c["shape"][-2:] == (base, base) for c in calls)


def test_sdxl_calls_see_conditioning_re_encoded_for_the_call(host):
    model = make_model("sdxl")
    pos = make_cond("sdxl", 0.7)
    out, _ = run_node(host, "sdxl", 1536, 1024, model=model, positive=pos, steps=1, repaint=False)
    sdxl = model.model
    pooled = pos[0][1]["pooled_output"]

    def expect(**p):
        return sdxl.encode_adm(pooled_output=pooled, **p).float().reshape(-1)

    ref_y = expect(width=1024, height=1024, crop_w=0, crop_h=0, target_width=1024, target_height=1024)
    full_y = expect(width=1536, height=1024, crop_w=0, crop_h=0, target_width=1536, target_height=1024)
    rows = torch.cat([c["y"] for c in net(model).calls])
    assert any(torch.allclose(r, ref_y, atol=1e-5) for r in rows)            # global pass: base size
    assert not any(torch.allclose(r, full_y, atol=1e-5) for r in rows)       # never the full-canvas y
    patch_rows = [r for r in rows if not torch.allclose(r, ref_y, atol=1e-5)]
    assert len({tuple(r[-6 * 256:].tolist()) for r in patch_rows}) > 1    # patches: their own crop offsets


@pytest.mark.parametrize("extra,msg", [({"mask": torch.ones(1, 8, 8)}, "positive: conditioning with a mask"),
                                       ({"area": (8, 8, 0, 0)}, "positive: conditioning with an area"),
                                       ({"control": object()}, "positive: conditioning with a ControlNet")])
def test_unsupported_conditioning_is_rejected_clearly(host, extra, msg):
    model = make_model()
    with pytest.raises(ValueError, match=msg):
        run_node(host, model=model, positive=make_cond("sd15", 0.7, **extra))
    assert net(model).calls == []


def test_previews_and_determinism(host, progress):
    a, _ = run_node(host, steps=3)
    events = list(progress)
    assert [e[0] for e in events] == [1, 2, 3] and all(e[2] is not None for e in events)
    assert events[0][2][1].size == (128, 64)                      # full-size preview (latent-sized Latent2RGB)
    b, _ = run_node(host, steps=3)
    assert torch.equal(a["samples"], b["samples"])
    c, _ = run_node(host, steps=3, seed=4)
    assert not torch.equal(a["samples"], c["samples"])


def test_at_base_size_no_work_is_duplicated(host):
    out, model = run_node(host, w=512, h=512, steps=4)
    calls = net(model).calls
    assert len(calls) == 4 and all(c["shape"][0] == 2 for c in calls)     # one CFG pair per step, like KSampler


def test_elastic_guider_under_sampler_custom_advanced(host):
    from comfy_host import custom_advanced_prompt
    # an API prompt saved before 0.2 still carries the step-only widgets; ComfyUI ignores them
    prompt = custom_advanced_prompt(
        ("ElasticGuider", {"model": ["1", 0], "positive": ["2", 0], "negative": ["3", 0], "cfg": 6.0,
                           "preset": "auto", "resampling_steps": -1, "new_p": 0.3, "rrg_init_weight": -1.0,
                           "cosine_scale": 10.0, "rrg_stop_t": 0.4, "repaint": True, "patch_size": 0,
                           "view_batch_size": 8, "base_resolution": 0, "size_cond": "per_call", "mode": "clean"}),
        ("KSamplerSelect", {"sampler_name": "euler"}),
        ("BasicScheduler", {"model": ["1", 0], "scheduler": "normal", "steps": 3, "denoise": 1.0}),
        width=1024, height=512, text="a wide valley")
    ex, server = host.run_prompt(prompt)
    assert ex.success, [m for m in server.messages if m[0] == "execution_error"]


@pytest.mark.parametrize("kw,msg", [
    ({"patch_size": 80}, "patch_size=80 is larger than the base size 64"),
    ({"new_p": 0.0}, r"new_p"),
    ({"steps": 0}, "steps must be an integer between 1 and 1000"),
    ({"lat": {"samples": torch.zeros(1, 4, 64, 128), "noise_mask": torch.ones(1, 1, 64, 128)}}, "noise mask"),
    ({"lat": {"samples": torch.zeros(1, 4, 2, 64, 128)}}, "must be a 4-D image latent"),
    ({"base_resolution": 516}, "base_resolution must be a multiple of 8"),
    ({"model": "flow"}, "rectified-flow model"),
    ({"mode": "faithful", "w": 1536, "h": 512}, "faithful"),
])
def test_bad_input_is_rejected_before_model_work(host, kw, msg):
    model = make_model("flow" if kw.pop("model", None) == "flow" else "sd15")
    with pytest.raises(ValueError, match=msg):
        run_node(host, model=model, **kw)
    assert net(model).calls == []


def test_above_twice_the_base_warns_and_still_runs(host, caplog):
    import logging
    with caplog.at_level(logging.WARNING):
        out, _ = run_node(host, w=1536, h=512, steps=2)
    assert out["samples"].shape == (1, 4, 64, 192)
    assert any("above 2x" in r.getMessage() for r in caplog.records)


def test_interrupt_between_model_calls(host, progress):
    import comfy.model_management as mm
    model = make_model()
    progress.on(lambda value, total, preview: mm.interrupt_current_processing(True))
    with pytest.raises(mm.InterruptProcessingException):
        run_node(host, model=model, steps=4)
    mm.interrupt_current_processing(False)
    progress.hooks.clear()
    per_step = len(net(model).calls)
    full, m2 = run_node(host, steps=4)
    assert 0 < per_step < len(net(m2).calls)            # stopped after the first step, before the next call


def test_memory_is_reserved_for_base_size_batches(host):
    guider_cls = host.pack_module("nodes.elastic_guider").ElasticCFGGuider
    g = guider_cls(make_model())
    g.set_elastic(64, view_batch_size=16)
    seen = []
    reserve = lambda shape: g._prepare_sampling_wrapper(lambda m, s, *a, **k: seen.append(s), None, shape, [],  # noqa
                                                        model_options={})
    reserve([2, 4, 64, 256])          # 4x wide: R = 7 -> reference call 2*2*8 = 32 rows, patches 16*2 = 32 rows
    reserve([1, 4, 128, 128])         # 2x square: R = 10 -> reference call 22 rows > 16 patches
    reserve([1, 4, 64, 64])           # at the base: R = 0 -> one CFG pair
    assert seen == [[16, 4, 64, 64], [11, 4, 64, 64], [1, 4, 64, 64]]


def test_inpainting_models_are_rejected(host):
    model = make_model()
    model.model.concat_keys = ("mask", "masked_image")
    with pytest.raises(ValueError, match="inpainting models"):
        run_node(host, model=model)
    assert net(model).calls == []


@pytest.mark.parametrize("preset", ["auto", "custom"])
def test_faithful_mode_and_presets_run_at_twice_the_base(host, preset):
    out, model = run_node(host, w=1024, h=1024, steps=2, mode="faithful", preset=preset)
    assert out["samples"].shape == (1, 4, 128, 128) and torch.isfinite(out["samples"]).all()
    rows = sum(c["shape"][0] for c in net(model).calls)
    # auto at 2x square: R = 10 -> 2 x 11 reference rows per main pass; custom: R = 0 -> 2
    assert rows > (40 if preset == "auto" else 0)


def test_sample_of_a_batch_equals_the_same_sample_alone(host):
    lat2 = {"samples": torch.zeros(2, 4, 64, 128)}
    both, _ = run_node(host, lat=lat2, steps=3)
    alone = {"samples": torch.zeros(1, 4, 64, 128), "batch_index": [1]}      # what LatentFromBatch gives
    one, _ = run_node(host, lat=alone, steps=3)
    assert torch.allclose(both["samples"][1:], one["samples"], atol=1e-5)
    assert not torch.allclose(both["samples"][:1], one["samples"], atol=1e-3)


def test_model_family_base_resolutions(host):
    fam = host.pack_module("nodes.elastic_host")
    assert fam.base_resolution("SDXL") == 1024 and fam.base_resolution("sd15") == 512
    assert fam.base_resolution("SD20") == 512 and fam.base_resolution("SD20", v_prediction=True) == 768
    with pytest.raises(ValueError, match="model_family"):
        fam.base_resolution("dalle")


def test_node_grid_is_comfy_ddim_uniform_float32(host):
    """The node uses ComfyUI's own ddim_uniform: the official 50-step DDIM grid t = 981 ... 1, float32,
    and ComfyUI's quirk for steps that do not divide 1000 (30 steps give 31)."""
    import comfy.samplers
    ms = make_model().get_model_object("model_sampling")
    s = comfy.samplers.calculate_sigmas(ms, "ddim_uniform", 50)
    assert s.dtype == torch.float32 and len(s) == 51 and float(s[-1]) == 0.0
    assert torch.equal(s[:-1], ms.sigmas[torch.arange(981, 0, -20)].float())
    assert len(comfy.samplers.calculate_sigmas(ms, "ddim_uniform", 30)) == 32


def test_validation_runs_once_per_run(host, monkeypatch):
    elastic = host.pack_module("samplers.elastic")
    seen = []
    orig = elastic.validate_elastic
    monkeypatch.setattr(elastic, "validate_elastic", lambda *a, **k: seen.append(a[0]) or orig(*a, **k))
    run_node(host, steps=2)
    assert seen == [[1, 4, 64, 128]]
    guider = host.node("ElasticGuider").execute(
        model=make_model(), positive=make_cond("sd15", 0.7), negative=make_cond("sd15", -0.3), cfg=6.0,
        preset="auto", resampling_steps=-1, new_p=0.3, patch_size=0, view_batch_size=16, base_resolution=0,
        size_cond="per_call", mode="clean")[0]
    assert len(seen) == 1                                     # the guider node does not know the size yet
    import comfy.samplers
    sigmas = comfy.samplers.calculate_sigmas(guider.model_patcher.get_model_object("model_sampling"), "normal", 2)
    sampling = host.pack_module("nodes.sampling")
    sampling.run_guider(guider, guider.model_patcher, {"samples": torch.zeros(1, 4, 64, 128)},
                        comfy.samplers.sampler_object("euler"), sigmas, 1)
    assert len(seen) == 2 and list(seen[1]) == [1, 4, 64, 128]   # once when sampling starts


def test_the_sampler_needs_its_guider_passed_explicitly(host):
    mod = host.pack_module("nodes.elastic_nodes")
    with pytest.raises(ValueError, match="extra_options"):
        mod.sample_elastic_comfy(None, torch.zeros(1, 4, 8, 8), torch.tensor([1.0, 0.0]))


def test_elastic_guider_shows_only_widgets_it_uses(host):
    shown = set(host.node("ElasticGuider").INPUT_TYPES()["required"])
    assert not shown & {"rrg_init_weight", "cosine_scale", "rrg_stop_t", "repaint"}
    sampler = host.node("ElasticLatentSampler").INPUT_TYPES()["required"]
    assert host.node("ElasticGuider").INPUT_TYPES()["required"]["cfg"][1]["default"] == sampler["cfg"][1]["default"]


@pytest.mark.parametrize("k", [1, 3])
def test_interrupt_is_honoured_within_one_model_call(host, k):
    import comfy.model_management as mm
    model = make_model()
    net(model).interrupt_after = k
    try:
        with pytest.raises(mm.InterruptProcessingException):
            run_node(host, model=model, steps=4)
    finally:
        mm.interrupt_current_processing(False)
    assert net(model).calls_at_interrupt == k
    # every base-size call checks the flag first; one call may be split into two forwards by the host
    assert len(net(model).calls) - k <= 1
