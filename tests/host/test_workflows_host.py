"""Every shipped workflow against the real node schemas, and every API twin run with the mock model."""
import glob
import json
import os

import pytest

from conftest import require_host

host_ = require_host()

import comfy_host  # noqa: E402

WF = os.path.join(comfy_host.ROOT, "workflows")
UI_FILES = sorted(glob.glob(os.path.join(WF, "*.json")))
API_FILES = sorted(glob.glob(os.path.join(WF, "api", "*.json")))
WIDGET_TYPES = {"INT", "FLOAT", "STRING", "BOOLEAN", "COMBO"}
UI_ONLY = {"Note", "MarkdownNote"}        # frontend-only nodes: in the UI file, never in a prompt


def specs(cls):
    info = cls.INPUT_TYPES()
    out = []
    for section in ("required", "optional"):
        for name, spec in (info.get(section) or {}).items():
            typ, opts = spec[0], (spec[1] if len(spec) > 1 else {}) or {}
            if isinstance(typ, list):
                typ, opts = "COMBO", dict(opts, options=typ)
            out.append((name, typ, opts))
    return out


def check_widget(node, name, typ, opts, v):
    where = f"node {node['id']} ({node['type']}) widget {name}"
    if typ == "COMBO" and name.endswith("_name") and str(v).endswith((".safetensors", ".ckpt", ".pt", ".pth")):
        return                     # a model file name: the options are whatever the user has installed
    if typ == "COMBO":
        assert v in opts["options"], f"{where}: {v!r} is not an option"
    elif typ == "INT":
        assert isinstance(v, int) and not isinstance(v, bool), f"{where}: {v!r} is not an int"
    elif typ == "FLOAT":
        assert isinstance(v, (int, float)) and not isinstance(v, bool), f"{where}: {v!r} is not a number"
    elif typ == "STRING":
        assert isinstance(v, str), f"{where}: {v!r} is not a string"
    elif typ == "BOOLEAN":
        assert isinstance(v, bool), f"{where}: {v!r} is not a boolean"
    if typ in ("INT", "FLOAT"):
        assert opts.get("min", v) <= v <= opts.get("max", v), f"{where}: {v} outside [{opts.get('min')}, {opts.get('max')}]"


def ui_to_api(ui, host):
    """An independent UI -> API conversion, checking the graph as it goes."""
    by_id = {n["id"]: n for n in ui["nodes"]}
    links = {l[0]: l for l in ui["links"]}
    api = {}
    for node in ui["nodes"]:
        if node["type"] in UI_ONLY:
            continue
        assert node["type"] in host.nodes.NODE_CLASS_MAPPINGS, f"unknown node type {node['type']}"
        cls = host.node(node["type"])
        values = list(node.get("widgets_values", []))
        sockets = {i["name"]: i for i in node.get("inputs", [])}
        inputs = {}
        for name, typ, opts in specs(cls):
            if typ in WIDGET_TYPES and not opts.get("forceInput") and name not in sockets:
                assert values, f"node {node['id']} ({node['type']}): missing widget value for {name}"
                v = values.pop(0)
                check_widget(node, name, typ, opts, v)
                inputs[name] = v
                if opts.get("control_after_generate"):
                    assert values and values.pop(0) in ("fixed", "increment", "decrement", "randomize")
            elif name in sockets and sockets[name].get("link") is not None:
                l = links[sockets[name]["link"]]
                _, src, slot, dst, dslot, ltype = l
                assert dst == node["id"] and node["inputs"][dslot]["name"] == name, f"link {l[0]} target mismatch"
                src_cls = host.node(by_id[src]["type"])
                assert src_cls.RETURN_TYPES[slot] == ltype == typ, f"link {l[0]} type {ltype} vs {typ}"
                assert l[0] in by_id[src]["outputs"][slot]["links"], f"link {l[0]} missing on its source"
                inputs[name] = [str(src), slot]
        assert not values, f"node {node['id']} ({node['type']}): {len(values)} extra widget values"
        api[str(node["id"])] = inputs
    for l in ui["links"]:
        assert l[1] in by_id and l[3] in by_id, f"link {l[0]} points at a missing node"
    return api


def test_there_are_workflows_for_every_method_shipped():
    names = {os.path.basename(p) for p in UI_FILES}
    assert {"nested_sd15.json", "nested_sdxl.json", "split_sd15.json", "split_sdxl.json",
            "elastic_sd15_wide.json", "elastic_sdxl_2048.json", "nested_custom_advanced.json",
            "split_custom_advanced.json", "elastic_guider_custom_advanced.json", "nested_time_budget.json",
            "nested_prompt_switch.json", "nested_resume.json"} <= names


@pytest.mark.parametrize("path", UI_FILES, ids=os.path.basename)
def test_ui_workflow_fits_the_real_schemas_and_matches_its_api_twin(host, path):
    ui = json.load(open(path))
    api = ui_to_api(ui, host)
    twin = json.load(open(os.path.join(WF, "api", os.path.basename(path))))
    assert {k: v["inputs"] for k, v in twin.items()} == api
    assert {k: v["class_type"] for k, v in twin.items()} == {str(n["id"]): n["type"] for n in ui["nodes"]
                                                              if n["type"] not in UI_ONLY}
    assert any(n["type"] in UI_ONLY and n["widgets_values"][0] for n in ui["nodes"]), "no note says what to look at"


@pytest.mark.parametrize("path", API_FILES, ids=os.path.basename)
def test_api_workflow_runs_with_the_mock_model(host, path):
    kind = "sdxl" if "sdxl" in os.path.basename(path) else "sd15"
    prompt = comfy_host.mock_api_workflow(json.load(open(path)), kind)
    ex, server = host.run_prompt(prompt)
    assert ex.success, [m for m in server.messages if m[0] == "execution_error"]
    outputs = ex.history_result["outputs"]
    assert any("images" in o for o in outputs.values())
