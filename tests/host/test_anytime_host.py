"""Host tests: Stop & keep and resume of NestedKSampler, through ComfyUI's real executor.

A stop is requested from inside the mock model at an exact call (as the route records it), so the
outer step it lands in is known; resumed runs are compared bit for bit with uninterrupted ones.
"""
import pytest
import torch

from conftest import require_host

require_host()

import mock_models  # noqa: E402
from mock_models import make_cond, make_model  # noqa: E402

OUTER, INNER = 6, 2


def nested_inputs(**kw):
    d = {"model": ["1", 0], "positive": ["2", 0], "negative": ["3", 0], "latent_image": ["4", 0], "seed": 3,
         "outer_steps": OUTER, "inner_steps": INNER, "cfg": 5.0, "inner_sampler": "euler_ancestral",
         "inner_scheduler": "official", "outer_scheduler": "official_outer", "denoise": 1.0, "inner_eta": 0.85,
         "outer_eta": 1.0, "time_budget": 0.0, "switch_at_outer_step": 0}
    d.update(kw)
    return d


def graph(samplers: dict):
    """Mock checkpoint, prompts "2" (a nest), "3" (empty), "12" (a blue egg), latent "4"; one capture
    node per sampler output: tag "<node>" (latent) and "<node>_int" (intermediates)."""
    p = {"1": {"class_type": "NSETestMockCheckpoint", "inputs": {"ckpt_name": "x", "kind": "sd15"}},
         "2": {"class_type": "NSETestMockTextEncode", "inputs": {"text": "a nest", "clip": ["1", 1]}},
         "3": {"class_type": "NSETestMockTextEncode", "inputs": {"text": "", "clip": ["1", 1]}},
         "12": {"class_type": "NSETestMockTextEncode", "inputs": {"text": "a blue egg", "clip": ["1", 1]}},
         "4": {"class_type": "EmptyLatentImage", "inputs": {"width": 64, "height": 64, "batch_size": 2}}}
    for nid, inputs in samplers.items():
        p[nid] = {"class_type": "NestedKSampler", "inputs": inputs}
        p[f"c{nid}"] = {"class_type": "NSETestCapture", "inputs": {"samples": [nid, 0], "tag": nid}}
        p[f"i{nid}"] = {"class_type": "NSETestCapture", "inputs": {"samples": [nid, 1], "tag": f"{nid}_int"}}
    return p


def run(host, prompt, stop_at_call=None, stop_node=None):
    """Execute; with ``stop_at_call`` n, Stop & keep is requested for ``stop_node`` (None = the whole
    prompt) from inside the n-th model call.  Returns the captured latents."""
    live = host.pack_module("nodes.anytime_live")
    from comfy_execution.utils import get_executing_context
    mock_models.CAPTURED.clear()
    calls = {"n": 0}

    def hook(_):
        calls["n"] += 1
        if calls["n"] == stop_at_call:
            live.STOPS.add(get_executing_context().prompt_id, stop_node)
    mock_models.CALL_HOOKS.append(hook)
    try:
        host.run_prompt(prompt)
    finally:
        mock_models.CALL_HOOKS.remove(hook)
    return dict(mock_models.CAPTURED)


@pytest.fixture(scope="module")
def uninterrupted(host):
    return run(host, graph({"5": nested_inputs()}))


@pytest.mark.parametrize("stop_call,steps_done", [(1, 1), (5, 3), (6, 3), (7, 4)])
def test_stop_and_keep_returns_the_estimate_of_the_step_it_lands_in(host, uninterrupted, stop_call, steps_done):
    got = run(host, graph({"5": nested_inputs()}), stop_at_call=stop_call, stop_node="5")
    full = uninterrupted["5_int"]["samples"]
    inter = got["5_int"]["samples"]
    assert inter.shape[0] == 2 * steps_done                 # batch 2: two pictures per outer step
    assert torch.equal(inter, full[:2 * steps_done])        # the steps before the stop are untouched
    assert torch.equal(got["5"]["samples"], inter[-2:])     # the kept result is that step's estimate
    assert got["5"]["nested_state"]["step"] == steps_done
    assert not host.pack_module("nodes.anytime_live").STOPS._by_prompt      # the request was used up


@pytest.mark.parametrize("stop_call", [1, 5, 9])
def test_stop_then_resume_equals_uninterrupted_bit_for_bit(host, uninterrupted, stop_call):
    got = run(host, graph({"5": nested_inputs(), "6": nested_inputs(resume=["5", 0])}), stop_at_call=stop_call,
              stop_node="5")
    k = got["5"]["nested_state"]["step"]
    assert 1 <= k < OUTER
    assert torch.equal(got["6"]["samples"], uninterrupted["5"]["samples"])
    assert torch.equal(torch.cat([got["5_int"]["samples"], got["6_int"]["samples"]]), uninterrupted["5_int"]["samples"])
    assert got["6"]["nested_state"]["step"] == OUTER


def test_resume_with_a_switched_prompt_equals_the_switch_at_that_step(host):
    got = run(host, graph({"5": nested_inputs(), "6": nested_inputs(resume=["5", 0], positive=["12", 0])}),
              stop_at_call=5, stop_node="5")
    k = got["5"]["nested_state"]["step"]
    switched = run(host, graph({"7": nested_inputs(positive_2=["12", 0], switch_at_outer_step=k)}))
    plain = run(host, graph({"8": nested_inputs()}))
    assert torch.equal(got["6"]["samples"], switched["7"]["samples"])
    assert not torch.equal(got["6"]["samples"], plain["8"]["samples"])


def test_resume_of_a_finished_run_returns_it_without_model_calls(host, uninterrupted):
    calls = {"n": 0}
    hook = lambda _: calls.__setitem__("n", calls["n"] + 1)  # noqa: E731
    mock_models.CALL_HOOKS.append(hook)
    try:
        got = run(host, graph({"5": nested_inputs(), "6": nested_inputs(resume=["5", 0])}))
    finally:
        mock_models.CALL_HOOKS.remove(hook)
    assert calls["n"] == OUTER * INNER                     # only the first run evaluated the model
    assert torch.equal(got["6"]["samples"], uninterrupted["5"]["samples"])


def test_a_prompt_wide_stop_stops_every_nested_run_of_the_prompt(host):
    got = run(host, graph({"5": nested_inputs(), "6": nested_inputs(seed=4)}), stop_at_call=3)
    # the run that was going stops after its 2nd outer step; the other one starts after the stop and
    # ends after its first (which of the two the executor runs first is its choice)
    assert sorted([got["5"]["nested_state"]["step"], got["6"]["nested_state"]["step"]]) == [1, 2]


def resume_node(host, **kw):
    node = host.node("NestedKSampler")
    model = make_model()
    args = dict(model=model, positive=make_cond("sd15", 0.7), negative=make_cond("sd15", -0.3),
                latent_image={"samples": torch.zeros(1, 4, 8, 8)}, seed=1, outer_steps=4, inner_steps=2, cfg=5.0,
                inner_sampler="euler_ancestral", inner_scheduler="official", outer_scheduler="official_outer",
                denoise=1.0, inner_eta=0.85, outer_eta=1.0, time_budget=1e-9, switch_at_outer_step=0)
    first = node.execute(**args)[0]
    args.update(time_budget=0.0)
    args.update(kw)
    return node, args, first


@pytest.mark.parametrize("change,match", [
    (dict(seed=2), "seed must be the same"),
    (dict(outer_steps=5), "outer_steps must be the same"),
    (dict(denoise=0.5), "denoise must be the same"),
    (dict(outer_scheduler="karras"), "outer_scheduler must be the same"),
    (dict(latent_image={"samples": torch.ones(1, 4, 8, 8)}), "latent_image must be the same"),
])
def test_resume_refuses_a_different_trajectory_by_name(host, change, match):
    node, args, first = resume_node(host, **change)
    with pytest.raises(ValueError, match=match):
        node.execute(resume=first, **args)


def test_resume_refuses_a_latent_without_state_or_changed_after_the_run(host):
    node, args, first = resume_node(host)
    with pytest.raises(ValueError, match="carries no Nested state"):
        node.execute(resume={"samples": torch.zeros(1, 4, 8, 8)}, **args)
    changed = dict(first, samples=first["samples"] + 1)
    with pytest.raises(ValueError, match="changed after the Nested run"):
        node.execute(resume=changed, **args)
    out = node.execute(resume=first, **args)[0]             # the untouched one resumes
    assert out["nested_state"]["step"] == 4 and first["nested_state"]["step"] == 1


def _strip_colours(server):
    import base64
    import io

    import numpy
    from PIL import Image
    out = []
    for event, data in server.messages:
        if event == "nested.anytime" and data["kind"] == "step":
            raw = base64.b64decode(data["image"].split(",", 1)[1])
            rgb = numpy.asarray(Image.open(io.BytesIO(raw)).convert("RGB"), dtype=numpy.float32)
            out.append(tuple(int(c) for c in rgb.reshape(-1, 3).mean(0)))
    return out


def test_the_strip_shows_the_users_preview_method_in_both_node_paths(host, monkeypatch):
    """The strip's thumbnails come through ComfyUI's previewer (TAESD, latent2rgb: the user's setting),
    for NestedKSampler and for a NestedSampler under SamplerCustomAdvanced alike; a stand-in previewer
    that paints every preview red shows which channel the thumbnails took."""
    import comfy_host
    import latent_preview
    import server as server_module
    from PIL import Image

    class RedPreviewer:
        def decode_latent_to_preview_image(self, fmt, x0):
            return fmt, Image.new("RGB", (64, 64), (220, 20, 20)), 512

    monkeypatch.setattr(latent_preview, "get_previewer", lambda *a, **k: RedPreviewer())
    listener = comfy_host.StubServer()              # where the pack's websocket events go
    listener.last_prompt_id, listener.last_node_id = "p", "9"
    monkeypatch.setattr(server_module.PromptServer, "instance", listener, raising=False)

    host.run_prompt(graph({"5": nested_inputs(outer_steps=3)}))
    ksampler = _strip_colours(listener)
    listener.messages.clear()
    host.run_prompt(comfy_host.custom_advanced_prompt(
        ("CFGGuider", {"model": ["1", 0], "positive": ["2", 0], "negative": ["3", 0], "cfg": 5.0}),
        ("NestedSampler", {"inner_sampler": "euler", "inner_steps": 2, "inner_scheduler": "official",
                           "inner_eta": 0.85, "outer_eta": 1.0, "inner_end": "zero"}),
        ("NestedOfficialOuterScheduler", {"model": ["1", 0], "steps": 3})))
    custom = _strip_colours(listener)
    assert len(ksampler) == 3 and len(custom) == 3, (ksampler, custom)
    for r, g, b in ksampler + custom:
        assert r > 180 and g < 60 and b < 60, (ksampler, custom)
