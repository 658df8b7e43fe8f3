"""Every difference between the ComfyUI versions the pack supports (>= 0.3.64), in one place.

Each is found by feature detection (signatures, attributes), never by comparing version strings,
so a version we have not seen behaves like the nearest one we have.  Nothing else in the pack
knows about ComfyUI versions.  Notes on the differences and how they were found: docs/comfyui-versions.md.
"""
from __future__ import annotations

import inspect

import comfy.sample

#: LATENT keys that describe the latent's VAE and that a sampler's output drops (newer versions add
#: the temporal one); SamplerCustomAdvanced does the same.
_DOWNSCALE_KEYS = ("downscale_ratio_spacial", "downscale_ratio_temporal")


def _params(fn) -> set:
    try:
        return set(inspect.signature(fn).parameters)
    except (TypeError, ValueError):
        return set()


def fix_empty_latent_channels(model, latent: dict):
    """``comfy.sample.fix_empty_latent_channels`` with the latent's downscale ratios where the
    version takes them (newer versions size empty video latents from them)."""
    params = _params(comfy.sample.fix_empty_latent_channels)
    kwargs = {k: latent.get(k) for k in _DOWNSCALE_KEYS if k in params and latent.get(k) is not None}
    return comfy.sample.fix_empty_latent_channels(model, latent["samples"], **kwargs)


def output_latent(latent: dict, samples) -> dict:
    """The sampler's output LATENT: the input dict with new samples and without its downscale keys."""
    out = latent.copy()
    out["samples"] = samples
    for k in _DOWNSCALE_KEYS:
        out.pop(k, None)
    return out


def node_id(node_cls):
    """The running node's id (``Schema.hidden`` is None on the oldest versions when nothing is asked)."""
    hidden = getattr(node_cls, "hidden", None)
    return None if hidden is None else getattr(hidden, "unique_id", None)


def image_part(x):
    """A callback's x0 as one tensor: newer versions hand callbacks a NestedTensor for multi-part
    (e.g. audio + video) latents; the first part is the image/video one."""
    if getattr(x, "is_nested", False) and hasattr(x, "tensors"):
        return x.tensors[0]
    return x


def is_dynamic_vram(model) -> bool:
    """True where the model is loaded with dynamic VRAM (default on NVIDIA since v0.16): there a
    PREPARE_SAMPLING memory estimate does not decide how much of the model is loaded, and batch
    sizes are chosen per call from free memory."""
    fn = getattr(model, "is_dynamic", None)
    try:
        return bool(fn()) if callable(fn) else False
    except Exception:
        return False


def prompt_server():
    """The running ``server.PromptServer`` (None in headless use: tests, scripts)."""
    import sys
    server = sys.modules.get("server")
    cls = getattr(server, "PromptServer", None)
    return getattr(cls, "instance", None)


def executing_ids():
    """(prompt id, node id, display node id) of the node now executing, or Nones outside a prompt.

    The node id is the execution id (the one progress messages and ``unique_id`` carry; inside
    subgraphs it has ``:`` parts); the display id is the node the graph editor shows."""
    try:
        from comfy_execution.utils import get_executing_context
        ctx = get_executing_context()
    except ImportError:
        ctx = None
    server = prompt_server()
    prompt_id = getattr(ctx, "prompt_id", None) or getattr(server, "last_prompt_id", None)
    node_id = getattr(ctx, "node_id", None) or getattr(server, "last_node_id", None)
    display = getattr(server, "last_node_id", None) or node_id
    return prompt_id, (None if node_id is None else str(node_id)), (None if display is None else str(display))


def queue_prompts(server) -> dict:
    """{prompt id: (status, prompt)} of the running and queued prompts (status "running"/"queued").
    Queue items are ``(number, prompt_id, prompt, extra_data, outputs, ...)`` on every version."""
    queue = getattr(server, "prompt_queue", None)
    if queue is None:
        return {}
    get = getattr(queue, "get_current_queue_volatile", None) or queue.get_current_queue
    running, queued = get()
    out = {}
    for status, items in (("queued", queued), ("running", running)):
        for item in items:
            if len(item) > 2:
                out[str(item[1])] = (status, item[2])
    return out
