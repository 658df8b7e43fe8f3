"""Server tests: the pack's Stop & keep route (``POST /nested/stop``) on a real ``main.py --cpu``.

A slow mock model (a pause before every evaluation) makes a run long enough to watch: the
websocket's ``nested.anytime`` events give one thumbnail per outer step, a stop lands after the
current outer step, and the graph after the sampler still runs.  Bad bodies get a 4xx and the
server keeps serving.
"""
import asyncio
import json
import time
import uuid

import pytest

from conftest import require_host

require_host()

import comfy_host  # noqa: E402

aiohttp = pytest.importorskip("aiohttp", reason="aiohttp (shipped with ComfyUI) is needed for the server test")

OUTER = 8


@pytest.fixture(scope="module")
def server(host):
    srv = comfy_host.Server(host.path, prefix="nse_stop_").start()
    try:
        yield srv.base
    finally:
        srv.stop()


def slow_prompt(seed=3, pause=0.12, outer=OUTER):
    """Mock checkpoint -> slow model -> NestedKSampler "5" (outer x 2) -> captures and a decoded preview."""
    return {
        "1": {"class_type": "NSETestMockCheckpoint", "inputs": {"ckpt_name": "x", "kind": "sd15"}},
        "13": {"class_type": "NSETestSlowModel", "inputs": {"model": ["1", 0], "seconds": pause}},
        "2": {"class_type": "NSETestMockTextEncode", "inputs": {"text": "a nest", "clip": ["1", 1]}},
        "3": {"class_type": "NSETestMockTextEncode", "inputs": {"text": "", "clip": ["1", 1]}},
        "4": {"class_type": "EmptyLatentImage", "inputs": {"width": 64, "height": 64, "batch_size": 1}},
        "5": {"class_type": "NestedKSampler", "inputs": {
            "model": ["13", 0], "positive": ["2", 0], "negative": ["3", 0], "latent_image": ["4", 0], "seed": seed,
            "outer_steps": outer, "inner_steps": 2, "cfg": 5.0, "inner_sampler": "euler_ancestral",
            "inner_scheduler": "official", "outer_scheduler": "official_outer", "denoise": 1.0, "inner_eta": 0.85,
            "outer_eta": 1.0, "time_budget": 0.0, "switch_at_outer_step": 0}},
        "6": {"class_type": "NSETestCapture", "inputs": {"samples": ["5", 0], "tag": "final"}},
        "7": {"class_type": "NSETestCapture", "inputs": {"samples": ["5", 1], "tag": "strip"}},
        "8": {"class_type": "NSETestMockVAEDecode", "inputs": {"samples": ["5", 0], "vae": ["1", 2]}},
        "9": {"class_type": "PreviewImage", "inputs": {"images": ["8", 0]}},
    }


async def post(s, base, path, data=None, raw=None, headers=None):
    kw = {"json": data} if raw is None else {"data": raw, "headers": headers or {"Content-Type": "application/json"}}
    async with s.post(f"{base}{path}", **kw) as r:
        text = await r.text()
        try:
            return r.status, json.loads(text)
        except ValueError:
            return r.status, text


async def queue(s, base, prompt, client_id):
    status, body = await post(s, base, "/prompt", {"prompt": prompt, "client_id": client_id})
    assert status == 200, body
    return body["prompt_id"]


async def watch(ws, pid, stop_after=None, on_step=None, timeout=240):
    """Websocket messages until prompt ``pid`` ends; ``on_step(event)`` is awaited at every strip event."""
    events, done = [], None
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        m = await ws.receive(timeout=deadline - time.monotonic())
        if m.type != aiohttp.WSMsgType.TEXT:
            if m.type in (aiohttp.WSMsgType.CLOSE, aiohttp.WSMsgType.ERROR):
                break
            continue
        d = json.loads(m.data)
        data = d.get("data") or {}
        if data.get("prompt_id") != pid:
            continue
        if d["type"] == "nested.anytime":
            events.append(data)
            if data["kind"] == "step" and on_step is not None:
                await on_step(data)
        elif d["type"] in ("execution_error", "execution_interrupted"):
            done = d
            break
        elif d["type"] == "executing" and data.get("node") is None:
            done = d
            break
    return events, done


async def history(s, base, pid):
    async with s.get(f"{base}/history/{pid}") as r:
        return (await r.json())[pid]


def captures(hist):
    return {c["tag"]: c for o in hist["outputs"].values() for c in o.get("nse_capture", [])}


async def _stop_and_keep(base, stop_at, node_id="5", seed=3):
    client = str(uuid.uuid4())
    async with aiohttp.ClientSession() as s:
        async with s.ws_connect(f"{base.replace('http', 'ws')}/ws?clientId={client}") as ws:
            pid = await queue(s, base, slow_prompt(seed=seed), client)      # a new seed: never served from the cache
            answers = []

            async def on_step(ev):
                if ev["step"] == stop_at and not answers:
                    body = {"prompt_id": pid} if node_id is None else {"prompt_id": pid, "node_id": node_id}
                    answers.append(await post(s, base, "/nested/stop", body))
            events, done = await watch(ws, pid, on_step=on_step)
        return pid, events, done, answers, await history(s, base, pid)


@pytest.mark.server
@pytest.mark.parametrize("node_id", ["5", None])
def test_stop_and_keep_over_http_keeps_the_picture_and_runs_the_rest_of_the_graph(server, node_id):
    pid, events, done, answers, hist = asyncio.run(_stop_and_keep(server, stop_at=2, node_id=node_id,
                                                                  seed=3 if node_id else 4))
    assert answers and answers[0][0] == 200 and answers[0][1]["status"] == "running", answers
    assert answers[0][1]["running_nested"] == ["5"]
    assert hist["status"]["status_str"] == "success"
    steps = [e for e in events if e["kind"] == "step"]
    end = [e for e in events if e["kind"] == "end"]
    done_steps = end[-1]["step"]
    assert end and end[-1]["stopped"] and 2 <= done_steps <= 3 < OUTER      # the step running at the press ends it
    assert [e["step"] for e in steps] == list(range(1, done_steps + 1))      # one thumbnail per finished outer step
    assert all(e["image"].startswith("data:image/jpeg;base64,") and e["node"] == "5" for e in steps)
    cap = captures(hist)
    assert cap["strip"]["n"] == done_steps and cap["final"]["state_step"] == done_steps
    assert cap["final"]["digests"] == cap["strip"]["digests"][-1:]          # the kept picture = the last estimate
    assert hist["outputs"]["9"]["images"]                                    # the output node after it ran


async def _bad_bodies(base):
    big = b'{"prompt_id": "' + b"x" * (2 << 20) + b'"}'
    cases = [(b"", 400), (b"not json", 400), (b"[1, 2]", 400), (b'"a string"', 400), (b"{}", 400),
             (b'{"prompt_id": 5}', 400), (b'{"prompt_id": ""}', 400), (b'{"prompt_id": null}', 400),
             (b'{"prompt_id": "a", "node_id": 5}', 400), (b'{"prompt_id": "a", "extra": 1}', 400),
             (b'{"prompt_id": "' + b"y" * 300 + b'"}', 400), (b"\xff\xfe\x00", 400), (big, 413),
             (b'{"prompt_id": "no-such-prompt"}', 404), (b'{"prompt_id": "no-such-prompt", "node_id": "5"}', 404)]
    got = []
    async with aiohttp.ClientSession() as s:
        for raw, want in cases:
            status, body = await post(s, base, "/nested/stop", raw=raw)
            got.append((raw[:40], want, status, body))
        async with s.get(f"{base}/nested/stop") as r:          # wrong method: aiohttp's own 404/405
            got.append((b"GET", r.status if 400 <= r.status < 500 else "4xx", r.status, None))
        async with s.get(f"{base}/object_info/NestedKSampler") as r:
            alive = r.status
        async with s.get(f"{base}/nested/runs") as r:
            runs = (r.status, await r.json())
    return got, alive, runs


@pytest.mark.server
def test_bad_stop_bodies_get_a_4xx_with_a_message_and_the_server_keeps_serving(server):
    got, alive, runs = asyncio.run(_bad_bodies(server))
    wrong = [(raw, want, status) for raw, want, status, _ in got if status != want]
    assert not wrong, wrong
    assert all(isinstance(body, dict) and body.get("error") for raw, want, status, body in got if raw != b"GET")
    assert alive == 200 and runs == (200, {"runs": []})


async def _queued_and_unknown_node(base):
    client = str(uuid.uuid4())
    async with aiohttp.ClientSession() as s:
        async with s.ws_connect(f"{base.replace('http', 'ws')}/ws?clientId={client}") as ws:
            first = await queue(s, base, slow_prompt(seed=10), client)
            second = await queue(s, base, slow_prompt(seed=11), client)
            answers = {}

            async def on_step(ev):
                if "queued" not in answers:
                    answers["unknown_node"] = await post(s, base, "/nested/stop", {"prompt_id": first, "node_id": "99"})
                    answers["queued"] = await post(s, base, "/nested/stop", {"prompt_id": second})
                    answers["first"] = await post(s, base, "/nested/stop", {"prompt_id": first, "node_id": "5"})
            await watch(ws, first, on_step=on_step)
            events, _ = await watch(ws, second)
        return answers, events, await history(s, base, second)


@pytest.mark.server
def test_a_queued_prompt_can_be_stopped_before_it_runs_and_unknown_nodes_are_404(server):
    answers, events, hist = asyncio.run(_queued_and_unknown_node(server))
    assert answers["unknown_node"][0] == 404 and "node_id" in answers["unknown_node"][1]["error"]
    assert answers["queued"][0] == 200 and answers["queued"][1]["status"] == "queued"
    assert answers["first"][0] == 200
    assert hist["status"]["status_str"] == "success"
    assert captures(hist)["strip"]["n"] == 1                   # stopped after its first outer step
