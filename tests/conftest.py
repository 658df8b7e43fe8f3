"""Test bootstrap: import the pack under the fixed name ``nse`` without putting the repo root on
``sys.path`` (the pack's own ``nodes/`` must never shadow ComfyUI's top-level ``nodes`` module)."""
import importlib.util
import os
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TESTS = os.path.dirname(os.path.abspath(__file__))


def load_pack(name: str = "nse"):
    if name in sys.modules:
        return sys.modules[name]
    spec = importlib.util.spec_from_file_location(name, os.path.join(ROOT, "__init__.py"),
                                                  submodule_search_locations=[ROOT])
    mod = importlib.util.module_from_spec(spec)
    sys.modules[name] = mod
    spec.loader.exec_module(mod)
    return mod


load_pack()
if TESTS not in sys.path:
    sys.path.insert(0, TESTS)

# The tests use tiny tensors: one intra-op thread is much faster than two on the CI machine.
import torch  # noqa: E402

torch.set_num_threads(1)
