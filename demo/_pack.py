"""The pack's pure-torch helpers for the demo (loaded as ``nse`` like the tests and scripts do)."""
import os
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _load():
    if "nse" in sys.modules:
        return sys.modules["nse"]
    scripts = os.path.join(ROOT, "scripts")
    if scripts not in sys.path:
        sys.path.insert(0, scripts)
    from _pack import load_pack
    return load_pack()


nse = _load()
from nse.samplers import common  # noqa: E402,F401

__all__ = ["nse", "common"]
