"""Host-test fixtures: a real ComfyUI in-process (skipped with a visible reason when absent)."""
import os
import sys

import pytest

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import comfy_host  # noqa: E402

_HOST = None
_REASON = None


def _get_host():
    global _HOST, _REASON
    if _HOST is None and _REASON is None:
        path, reason = comfy_host.find_comfy()
        if path is None:
            _REASON = reason
        else:
            try:
                _HOST = comfy_host.Host(path)
            except ImportError as e:
                _REASON = (f"ComfyUI found at {path} but it cannot be imported with this python ({e}); "
                           "run the host tests with the python of ComfyUI's environment")
    return _HOST


def require_host():
    """Call at the top of a host test module: skips the module with the reason when no ComfyUI."""
    if _get_host() is None:
        pytest.skip(f"host tests skipped: {_REASON}", allow_module_level=True)
    return _HOST


def pytest_collection_modifyitems(config, items):
    for item in items:
        if "/host/" in str(item.fspath).replace(os.sep, "/"):
            item.add_marker(pytest.mark.host)


@pytest.fixture(scope="session")
def host():
    h = _get_host()
    if h is None:
        pytest.skip(f"host tests skipped: {_REASON}")
    return h


def pytest_report_header(config):
    path, reason = comfy_host.find_comfy()
    return f"ComfyUI for host tests: {path or reason}"


@pytest.fixture
def progress(host):
    """Captures ComfyUI progress-bar updates ``(value, total, preview)``; ``progress.on(fn)`` adds a
    callback run on every update (e.g. to interrupt).  The previous global hook is restored."""
    import comfy.utils

    class Events(list):
        hooks = []

        def on(self, fn):
            self.hooks.append(fn)

    events = Events()
    events.hooks = []
    old = comfy.utils.PROGRESS_BAR_HOOK

    def hook(value, total, preview, prompt_id=None, node_id=None):
        events.append((value, total, preview))
        for fn in events.hooks:
            fn(value, total, preview)

    comfy.utils.set_progress_bar_global_hook(hook)
    yield events
    comfy.utils.set_progress_bar_global_hook(old)
    import comfy.model_management
    comfy.model_management.interrupt_current_processing(False)
