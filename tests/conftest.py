"""Test bootstrap: import the pack under the fixed name ``nse`` without putting the repo root on
``sys.path`` (the pack's own ``nodes/`` must never shadow ComfyUI's top-level ``nodes`` module)."""
import os
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TESTS = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.join(ROOT, "scripts"))
from _pack import load_pack  # noqa: E402  (the same loader the scripts use)


load_pack()
if TESTS not in sys.path:
    sys.path.insert(0, TESTS)

# The tests use tiny tensors: one intra-op thread is much faster than two on the CI machine.
import torch  # noqa: E402

torch.set_num_threads(1)
