"""Live anytime runs: the strip the web extension draws, and "Stop & keep".

Every Nested run inside a prompt (NestedKSampler, or NestedSampler under SamplerCustomAdvanced)
is a :class:`LiveRun`.  After each outer step it sends the websocket event :data:`EVENT` with a
thumbnail of that step's image, and it asks :data:`STOPS` whether the user pressed Stop & keep
(through the web extension's button or the pack's HTTP route, see ``stop_route``).  A stop is
honoured after the current outer step: the run returns that step's image as a normal result, so
the rest of the graph (VAE Decode, Save Image) runs.
"""
from __future__ import annotations

import base64
import io
import threading
from collections import OrderedDict

import torch

from . import compat, sampling

#: the websocket event of the web extension (``api.addEventListener("nested.anytime", ...)``)
EVENT = "nested.anytime"
#: longest side of a strip thumbnail, in pixels
THUMB_SIDE = 256
#: a stop request naming a prompt but no node stops every Nested run of that prompt
ALL = "*"


class StopRequests:
    """Stop & keep requests, keyed by prompt id: the node ids asked to stop (or :data:`ALL`).

    Thread-safe (the route runs on the server's event loop, the sampler on the prompt worker);
    bounded, so requests for prompts that never run cannot pile up."""

    def __init__(self, limit: int = 256):
        self._lock = threading.Lock()
        self._by_prompt: "OrderedDict[str, set]" = OrderedDict()
        self.limit = limit

    def add(self, prompt_id: str, node_id=None) -> None:
        with self._lock:
            self._by_prompt.setdefault(prompt_id, set()).add(ALL if node_id is None else str(node_id))
            self._by_prompt.move_to_end(prompt_id)
            while len(self._by_prompt) > self.limit:
                self._by_prompt.popitem(last=False)

    def wanted(self, prompt_id, node_id) -> bool:
        with self._lock:
            nodes = self._by_prompt.get(prompt_id)
            return bool(nodes) and (ALL in nodes or str(node_id) in nodes)

    def done(self, prompt_id, node_id) -> None:
        """The run of ``node_id`` ended: its own request is used up (a prompt-wide one stays)."""
        with self._lock:
            nodes = self._by_prompt.get(prompt_id)
            if nodes is not None:
                nodes.discard(str(node_id))
                if not nodes:
                    del self._by_prompt[prompt_id]

    def keep_only(self, prompt_ids) -> None:
        """Forget the requests of prompts that are neither running nor queued any more."""
        with self._lock:
            for pid in [p for p in self._by_prompt if p not in prompt_ids]:
                del self._by_prompt[pid]


STOPS = StopRequests()
#: the Nested runs in progress: (prompt id, node id) -> {"step", "total"}
RUNS: dict = {}
_RUNS_LOCK = threading.Lock()


def running_nodes(prompt_id) -> list:
    with _RUNS_LOCK:
        return [n for (p, n) in RUNS if p == prompt_id]


def running_summary() -> list:
    with _RUNS_LOCK:
        return [{"prompt_id": p, "node_id": n, **v} for (p, n), v in RUNS.items()]


class LiveRun:
    """One Nested run seen from the graph editor: strip events, stop requests, the runs table.

    Outside a server (headless use, tests without one) it only answers "no stop"."""

    def __init__(self, patcher, total_steps: int, first_step: int = 0):
        ids = compat.executing_ids()
        self.server = compat.prompt_server()
        self.prompt_id, self.node_id, self.display_node = ids
        self.total, self.patcher = int(total_steps), patcher
        self._previewer = None
        self.key = (self.prompt_id, self.node_id)
        if self.prompt_id is not None:
            with _RUNS_LOCK:
                RUNS[self.key] = {"step": first_step, "total": self.total}
        self._send({"kind": "start", "step": first_step})

    def _send(self, data: dict) -> None:
        if self.server is None or self.prompt_id is None:
            return
        msg = {"prompt_id": self.prompt_id, "node": self.node_id, "display_node": self.display_node,
               "total": self.total, **data}
        try:
            self.server.send_sync(EVENT, msg, getattr(self.server, "client_id", None))
        except Exception:           # a preview must never fail the run
            pass

    def step(self, i: int, x0: torch.Tensor, nfe: int, preview=None) -> None:
        """Outer step ``i`` (0-based) finished with estimate ``x0`` (model space); ``preview``: ComfyUI's
        preview image of it when the caller made one (else it is made here, with the same method)."""
        if self.prompt_id is None:
            return
        with _RUNS_LOCK:
            if self.key in RUNS:
                RUNS[self.key]["step"] = i + 1
        if self.server is None:
            return
        if preview is None:
            preview = self._preview(x0)
        self._send({"kind": "step", "step": i + 1, "nfe": int(nfe),
                    "image": thumbnail(x0, self.patcher, preview)})

    def _preview(self, x0):
        """ComfyUI's preview image of ``x0`` with the user's preview method (TAESD, latent2rgb), so a
        NestedSampler graph's strip looks like NestedKSampler's; None where previews are off."""
        try:
            if self._previewer is None:
                self._previewer = sampling.Previewer(self.patcher)
            return self._previewer.image(x0)
        except Exception:           # a preview must never fail the run
            return None

    def should_stop(self, i: int) -> bool:
        return self.prompt_id is not None and STOPS.wanted(self.prompt_id, self.node_id)

    def close(self, steps_done: int, stopped: bool) -> None:
        if self.prompt_id is None:
            return
        with _RUNS_LOCK:
            RUNS.pop(self.key, None)
        STOPS.done(self.prompt_id, self.node_id)
        self._send({"kind": "end", "step": int(steps_done), "stopped": bool(stopped)})


def thumbnail(x0: torch.Tensor, patcher, preview=None) -> str:
    """A JPEG data URL of the first picture of ``x0``: ComfyUI's own preview image when one was
    made (TAESD or latent2rgb), else the latent format's RGB factors, else its first channels."""
    from PIL import Image
    image = preview[1] if isinstance(preview, tuple) and len(preview) > 1 else None
    if image is None:
        image = Image.fromarray(_latent_rgb(x0, patcher))
    image = image.convert("RGB")
    image.thumbnail((THUMB_SIDE, THUMB_SIDE))
    if max(image.size) < THUMB_SIDE // 2:           # tiny latents: crisp pixels, not a blur
        f = (THUMB_SIDE // 2) // max(image.size)
        image = image.resize((image.width * f, image.height * f), Image.NEAREST)
    buf = io.BytesIO()
    image.save(buf, format="JPEG", quality=85)
    return "data:image/jpeg;base64," + base64.b64encode(buf.getvalue()).decode("ascii")


def _latent_rgb(x0: torch.Tensor, patcher):
    lat = compat.image_part(x0)[0].detach().float().cpu()
    while lat.dim() > 3:                    # video latents: the first frame
        lat = lat[:, 0]
    fmt = getattr(getattr(patcher, "model", None), "latent_format", None)
    factors = getattr(fmt, "latent_rgb_factors", None)
    if factors is not None and len(factors) == lat.shape[0]:
        rgb = torch.einsum("chw,cr->rhw", lat, torch.tensor(factors, dtype=torch.float32))
        bias = getattr(fmt, "latent_rgb_factors_bias", None)
        if bias is not None:
            rgb = rgb + torch.tensor(bias, dtype=torch.float32).view(3, 1, 1)
        rgb = (rgb + 1) / 2
    else:
        rgb = lat[:3] if lat.shape[0] >= 3 else lat[:1].expand(3, -1, -1)
        lo, hi = rgb.amin(dim=(1, 2), keepdim=True), rgb.amax(dim=(1, 2), keepdim=True)
        rgb = (rgb - lo) / (hi - lo).clamp_min(1e-6)
    return (rgb.clamp(0, 1) * 255).round().to(torch.uint8).permute(1, 2, 0).contiguous().numpy()
