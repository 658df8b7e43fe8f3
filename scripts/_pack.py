"""Import the pack as ``nse`` (and the demo model as ``demo``) from a script, without putting the
repository root on sys.path (the pack's ``nodes/`` must never shadow ComfyUI's top-level module)."""
import importlib.util
import os
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _load(name: str, folder: str):
    spec = importlib.util.spec_from_file_location(name, os.path.join(folder, "__init__.py"),
                                                  submodule_search_locations=[folder])
    mod = importlib.util.module_from_spec(spec)
    sys.modules[name] = mod
    spec.loader.exec_module(mod)
    return mod


def load_pack(name: str = "nse"):
    if name in sys.modules:
        return sys.modules[name]
    return _load(name, ROOT)


def load_demo():
    """The learned demo model package (``demo/``) as module ``demo``.  Loaded by file location:
    ``scripts/demo.py`` (the ``./dev demo`` entry point) has the same name on the scripts path."""
    mod = sys.modules.get("demo")
    if mod is not None and hasattr(mod, "load_denoiser"):
        return mod
    return _load("demo", os.path.join(ROOT, "demo"))
