"""Server test: the shipped API workflows POSTed to a real ``main.py --cpu`` on a loopback port.

Results come back through ``/history``; progress and preview messages are read on the websocket.
The server loads this pack and the test-only pack through ``--extra-model-paths-config``.

Previews are asked for the way the version supports: where the preview method is chosen per prompt
(upstream #11261: the frontend sends its ``Comfy.Execution.PreviewMethod`` setting as
``extra_data["preview_method"]``) the server runs with its CLI default and each prompt asks for
``latent2rgb``; older versions get ``--preview-method latent2rgb`` on the command line.
"""
import asyncio
import json
import os
import time
import uuid

import pytest

from conftest import require_host

host_ = require_host()

import comfy_host  # noqa: E402

aiohttp = pytest.importorskip("aiohttp", reason="aiohttp (shipped with ComfyUI) is needed for the server test")


def per_prompt_previews(host):
    return host.supports_per_prompt_preview_method()


def preview_extra(host, method="latent2rgb"):
    """``extra_data`` asking for a preview method as the frontend does (it omits the key for "default")."""
    return {"preview_method": method} if per_prompt_previews(host) and method != "default" else {}


@pytest.fixture(scope="module")
def server(host):
    # without a per-prompt choice the CLI default is the only switch
    extra = [] if per_prompt_previews(host) else ["--preview-method", "latent2rgb"]
    srv = comfy_host.Server(host.path, extra_args=extra).start()
    try:
        yield srv.base, srv.port
    finally:
        srv.stop()


async def queue_and_watch(base, prompt, extra_data=None, timeout=240):
    client_id = str(uuid.uuid4())
    msgs, binary = [], []
    async with aiohttp.ClientSession() as s:
        async with s.ws_connect(f"{base.replace('http', 'ws')}/ws?clientId={client_id}") as ws:
            async with s.post(f"{base}/prompt", json={"prompt": prompt, "client_id": client_id,
                                                     "extra_data": dict(extra_data or {})}) as r:
                body = await r.json()
                assert r.status == 200, body
                pid = body["prompt_id"]
            deadline = time.monotonic() + timeout
            while time.monotonic() < deadline:
                m = await ws.receive(timeout=deadline - time.monotonic())
                if m.type == aiohttp.WSMsgType.BINARY:
                    binary.append(int.from_bytes(m.data[:4], "big"))
                elif m.type == aiohttp.WSMsgType.TEXT:
                    d = json.loads(m.data)
                    msgs.append(d)
                    data = d.get("data", {})
                    if d["type"] in ("execution_error", "execution_interrupted") and data.get("prompt_id") == pid:
                        break
                    if d["type"] == "executing" and data.get("node") is None and data.get("prompt_id") == pid:
                        break
                else:
                    break
        async with s.get(f"{base}/history/{pid}") as r:
            history = await r.json()
    return pid, msgs, binary, history


@pytest.mark.server
def test_nested_api_workflow_through_the_server_queue(server, host):
    base, _ = server
    path = os.path.join(comfy_host.ROOT, "workflows", "api", "nested_sd15.json")
    prompt = comfy_host.mock_api_workflow(json.load(open(path)), "sd15")
    prompt["5"]["inputs"].update(outer_steps=3, inner_steps=4)
    pid, msgs, binary, history = asyncio.run(queue_and_watch(base, prompt, preview_extra(host)))
    errors = [m for m in msgs if m["type"] == "execution_error"]
    assert not errors, errors
    assert pid in history and history[pid]["status"]["status_str"] == "success"
    outputs = history[pid]["outputs"]
    assert outputs["7"]["images"] and outputs["9"]["images"]
    progress = [m["data"] for m in msgs if m["type"] == "progress" and m["data"].get("node") == "5"]
    assert progress and progress[-1]["max"] == 12 and progress[-1]["value"] == 12   # model evaluations
    assert len([t for t in binary if t in (1, 4)]) >= 3                              # one preview per outer step


API_FILES = sorted(f for f in os.listdir(os.path.join(comfy_host.ROOT, "workflows", "api")) if f.endswith(".json"))


@pytest.mark.server
@pytest.mark.parametrize("name", [f for f in API_FILES if not f.startswith("nested_sd15")])
def test_every_api_workflow_runs_through_the_server(server, host, name):
    base, _ = server
    kind = "sdxl" if "sdxl" in name else "sd15"
    prompt = comfy_host.mock_api_workflow(json.load(open(os.path.join(comfy_host.ROOT, "workflows", "api", name))),
                                          kind)
    pid, msgs, binary, history = asyncio.run(queue_and_watch(base, prompt, preview_extra(host)))
    assert not [m for m in msgs if m["type"] == "execution_error"]
    assert history[pid]["status"]["status_str"] == "success"
    assert any("images" in o for o in history[pid]["outputs"].values())
    assert [m for m in msgs if m["type"] == "progress"]                  # the bar moved
    assert [t for t in binary if t in (1, 4)]                            # previews were sent


@pytest.mark.server
def test_per_prompt_preview_method_none_vs_latent2rgb(server, host):
    if not per_prompt_previews(host):
        pytest.skip(f"ComfyUI {host.version} has no per-prompt preview method (extra_data['preview_method'], "
                    "upstream #11261): the preview method is the CLI --preview-method only")
    base, _ = server
    path = os.path.join(comfy_host.ROOT, "workflows", "api", "nested_sd15.json")
    prompt = comfy_host.mock_api_workflow(json.load(open(path)), "sd15")
    prompt["5"]["inputs"].update(outer_steps=3, inner_steps=2)
    seen = {}
    for i, method in enumerate(("none", "latent2rgb", "default", "none")):   # a choice does not stick
        prompt["5"]["inputs"]["seed"] = i + 1                                   # never served from the cache
        pid, msgs, binary, history = asyncio.run(queue_and_watch(base, prompt, preview_extra(host, method)))
        assert history[pid]["status"]["status_str"] == "success", [m for m in msgs if m["type"] == "execution_error"]
        assert [m for m in msgs if m["type"] == "progress" and m["data"].get("node") == "5"]   # the bar still moves
        seen.setdefault(method, []).append(len([t for t in binary if t in (1, 4)]))
    assert seen["none"] == [0, 0]                 # "none": no binary preview messages at all
    assert seen["latent2rgb"][0] >= 3             # "latent2rgb": one preview per outer step
    assert seen["default"] == [0]                 # "default" = the server's CLI default, "none" here
