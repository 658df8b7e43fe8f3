"""Host tests on a learned network: the demo model (demo/) loaded in ComfyUI as a MODEL.

Every sampler node runs through ComfyUI's real executor on the shipped weights; the demo's own
classifier checks that the pictures show the object the prompt names, and the untrained copy of
the same network (the control) shows that this is the network's doing, not the test's.
"""
import pytest
import torch

from conftest import require_host

require_host()

import mock_models  # noqa: E402
from demo_host import load_demo  # noqa: E402

demo = load_demo()
N = 8          # pictures per run (one batch)
CLASS = 1      # "square"

NODES = {
    "KSampler": {"seed": 5, "steps": 12, "cfg": 3.0, "sampler_name": "euler", "scheduler": "normal", "denoise": 1.0},
    "NestedKSampler": {"seed": 5, "outer_steps": 4, "inner_steps": 4, "cfg": 3.0, "inner_sampler": "euler_ancestral",
                       "inner_scheduler": "official", "outer_scheduler": "official_outer", "denoise": 1.0,
                       "inner_eta": 0.85, "outer_eta": 1.0, "time_budget": 0.0, "switch_at_outer_step": 0},
    "SplitGuidedSampler": {"seed": 5, "steps": 12, "cfg": 3.0, "scheduler": "split_respace", "denoise": 1.0,
                           "method": "ltsp4", "split_term": "cfg_delta", "split_base": "cond", "eval_mode": "auto",
                           "ab_coeffs": "fixed", "final_step": "auto", "guidance_scale": 1.0},
}


def prompt(node, inputs, width=256, height=256, trained=True, text="a square"):
    extra = {"vae": ["1", 2]} if node == "ElasticLatentSampler" else {}
    return {
        "1": {"class_type": "NSETestDemoCheckpoint", "inputs": {"ckpt_name": "demo", "trained": trained}},
        "2": {"class_type": "NSETestMockTextEncode", "inputs": {"text": text, "clip": ["1", 1]}},
        "3": {"class_type": "NSETestMockTextEncode", "inputs": {"text": "", "clip": ["1", 1]}},
        "4": {"class_type": "EmptyLatentImage", "inputs": {"width": width, "height": height, "batch_size": N}},
        "5": {"class_type": node, "inputs": {"model": ["1", 0], "positive": ["2", 0], "negative": ["3", 0],
                                             "latent_image": ["4", 0], **inputs, **extra}},
        "6": {"class_type": "NSETestCapture", "inputs": {"samples": ["5", 0], "tag": "out"}},
    }


def run(host, p):
    mock_models.CAPTURED.clear()
    host.run_prompt(p)
    return mock_models.CAPTURED["out"]["samples"].float()


@pytest.fixture(scope="module")
def classifier():
    return demo.load_classifier()


@pytest.mark.parametrize("node", list(NODES))
def test_each_sampler_draws_the_prompted_object_with_the_learned_model(host, classifier, node):
    x = run(host, prompt(node, NODES[node]))
    assert x.shape == (N, 3, 32, 32) and torch.isfinite(x).all()
    acc = demo.metrics.class_accuracy(classifier, x, CLASS)
    assert acc >= 0.75, f"{node}: {acc:.2f} of the pictures are squares"


def test_the_untrained_control_does_not(host, classifier):
    x = run(host, prompt("NestedKSampler", NODES["NestedKSampler"], trained=False))
    assert demo.metrics.class_accuracy(classifier, x, CLASS) <= 0.5


def test_the_prompt_decides_the_object(host, classifier):
    x = run(host, prompt("NestedKSampler", NODES["NestedKSampler"], text="a ring"))
    assert demo.metrics.class_accuracy(classifier, x, demo.CLASSES.index("ring")) >= 0.75


def test_elastic_at_twice_the_width_on_the_learned_model(host):
    inputs = {"seed": 11, "steps": 16, "cfg": 5.0, "preset": "auto", "resampling_steps": -1, "new_p": 0.3,
              "rrg_init_weight": -1.0, "cosine_scale": 10.0, "rrg_stop_t": 0.4, "repaint": True, "patch_size": 0,
              "view_batch_size": 16, "base_resolution": 256, "size_cond": "per_call", "mode": "clean"}
    x = run(host, prompt("ElasticLatentSampler", inputs, width=512, height=256))
    assert x.shape == (N, 3, 32, 64) and torch.isfinite(x).all()
    counts = demo.metrics.object_count(x.clamp(-1, 1))
    assert (counts >= 1).float().mean() >= 0.75, counts.tolist()      # pictures, not noise


def test_the_demo_figures_run_what_a_new_node_defaults_to(host):
    """The README's pictures claim to show the nodes' defaults: the demo's runs must use them."""
    import inspect

    import demo_runs
    from baselines import sample_euler

    nested_node = host.widget_defaults("NestedKSampler")
    pure = inspect.signature(demo_runs.nested.sample_nested).parameters
    shared = [k for k in nested_node if k in pure and k not in demo_runs.NESTED_NODE_DEFAULTS]
    assert {"inner_steps", "inner_eta", "outer_eta"} <= set(shared)
    resolved = {"inner_scheduler": "official"}         # None means 'official' when model_sampling is given
    for k in shared:                                   # the rest comes from the pure function's defaults
        default = pure[k].default
        assert nested_node[k] == (resolved[k] if default is None and k in resolved else default), k
    assert nested_node["inner_sampler"] == "euler" and demo_runs.NESTED_NODE_DEFAULTS["inner_sampler"] is sample_euler

    split_node = host.widget_defaults("SplitGuidedSampler")
    grid = demo_runs.split.GRID_DEFAULTS
    shared = [k for k in split_node if k in grid]
    assert {"eval_mode", "ab_coeffs", "final_step", "split_term"} <= set(shared)
    for k in shared:
        assert split_node[k] == grid[k], k
    kind, options = demo_runs.SPLIT_METHODS["ltsp4 (default)"]
    assert kind == "split" and options["method"] == split_node["method"] == "ltsp4"
    assert {**demo_runs.split.DEFAULTS, **options} == {**grid, "method": "ltsp4"}
