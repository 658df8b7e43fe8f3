"""Static checks of the shipped workflow files (no ComfyUI needed)."""
import glob
import json
import os

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
WF = os.path.join(ROOT, "workflows")


def test_ui_workflows_are_ui_format_and_have_api_twins():
    ui_files = glob.glob(os.path.join(WF, "*.json"))
    assert ui_files
    for p in ui_files:
        ui = json.load(open(p))
        assert {"nodes", "links", "version"} <= set(ui), f"{p} is not a UI-format workflow"
        ids = {n["id"] for n in ui["nodes"]}
        for l in ui["links"]:
            assert len(l) == 6 and l[1] in ids and l[3] in ids, f"{p}: bad link {l}"
        assert os.path.isfile(os.path.join(WF, "api", os.path.basename(p))), f"{p} has no API twin"


def test_api_workflows_are_api_format():
    files = glob.glob(os.path.join(WF, "api", "*.json"))
    assert files
    for p in files:
        prompt = json.load(open(p))
        for nid, node in prompt.items():
            assert "class_type" in node and "inputs" in node, f"{p}: node {nid} is not API format"
            for v in node["inputs"].values():
                if isinstance(v, list):
                    assert v[0] in prompt, f"{p}: node {nid} links to missing node {v[0]}"


def test_ui_workflows_have_uuid_ids_thumbnails_and_no_overlapping_nodes():
    import uuid
    for p in glob.glob(os.path.join(WF, "*.json")):
        ui = json.load(open(p))
        uuid.UUID(ui["id"])                                   # the frontend's schema requires a UUID
        assert os.path.isfile(p[:-5] + ".jpg"), f"{p} has no template thumbnail"
        boxes = [(n["pos"][0], n["pos"][1], n["pos"][0] + n["size"][0], n["pos"][1] + n["size"][1]) for n in ui["nodes"]]
        for i, a in enumerate(boxes):
            for b in boxes[i + 1:]:
                overlap = a[0] < b[2] and b[0] < a[2] and a[1] < b[3] and b[1] < a[3]
                assert not overlap, f"{os.path.basename(p)}: nodes overlap {a} {b}"
        for n in ui["nodes"]:                                  # room for every widget row
            assert n["size"][1] >= 36 + 26 * len(n.get("widgets_values", [])), (p, n["type"])
