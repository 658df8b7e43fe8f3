"""Fuzz test through the real server: every input of every node of the pack, at and past its bounds.

One ``main.py --cpu`` server on 127.0.0.1 serves the whole module (stopped at the end).  The cases are
enumerated from the nodes' own schemas (as ComfyUI loaded them in-process, checked against the server's
``/object_info``), so a new widget is fuzzed without editing this file:

* every widget of every node: its min and max and one past each (ints +-1, floats +- step), NaN and
  +-inf for floats (sent as a script sends them: Python's ``json.dumps`` writes ``NaN``/``Infinity``,
  which ComfyUI's JSON parser reads), wrong types (a string, a list, null), for combos the first and
  last option, an unknown string, null and a number;
* every link input given a raw value ("abc", null) or a link to an output of the wrong type;
* malformed latents (test-only ``NSETestLatent``): 0-element, batch 0, NaN, inf, 16 channels into the
  SD1.5 mock (random and all-zero), noise masks of the wrong size / batch / 0-element / NaN, a latent
  above ComfyUI's resolution limit (``EmptyLatentImage``), and for Elastic a huge latent the node must
  refuse fast (faithful mode, 16x the base size).

Each case must end one of three ways: refused by ComfyUI's validation (HTTP 400 with the error), an
``execution_error`` whose message names the input, or success with finite outputs (``NSETestLatentCheck``
/ ``NSETestSigmasCheck``: no NaN/inf, the source latent bit-identical to what ``NSETestLatent`` made,
sigma grids strictly decreasing; every check also re-checks every latent made earlier, so a sampler
that writes into its input and then fails is caught by the next prompt).  After every case that failed
in the executor, and after every 4th that succeeded, a small valid prompt must still succeed.  Anything
else (server died, HTTP 500, a hang, an error not naming the input raised with the pack's code on the
stack, NaN output, a modified input latent) is a crash; an unnamed error raised by ComfyUI itself (no
pack frame in the traceback) is counted and listed apart.  Known pack bugs are xfail with the reason
(``KNOWN_BUGS``).  The last test prints the counts and asserts crashes == 0.

Runs in about a minute on 2 CPU cores (``NSE_FUZZ_REPORT=path`` writes every case's outcome as JSON lines).
"""
import asyncio
import json
import os
import re
import time
import uuid

import pytest

from conftest import require_host

host_ = require_host()

import comfy_host  # noqa: E402
from comfy_host import WIDGET_TYPES  # noqa: E402

aiohttp = pytest.importorskip("aiohttp", reason="aiohttp (shipped with ComfyUI) is needed for the server test")

PACK_NODES = ["NestedKSampler", "NestedSampler", "NestedOfficialOuterScheduler", "SplitGuidedSampler",
              "SplitSampler", "SplitRespace", "SplitColorGuidance", "ElasticLatentSampler", "ElasticGuider"]
PROMPT_TIMEOUT = 120          # seconds one case may run before it counts as a hang
HUGE_REFUSAL_S = 10.0         # a huge latent must be refused within this


# ------------------------------------------------------------------------------------------
# valid, cheap base prompts (sd15 mock, 64x64 px unless said otherwise)
# ------------------------------------------------------------------------------------------
TARGET = "5"          # the pack node under test
CHECK = "20"          # the output node
LATENT = "4"          # the source latent (NSETestLatent)

OVERRIDES = {
    "NestedKSampler": dict(seed=1, outer_steps=2, inner_steps=2, cfg=2.0),
    "NestedSampler": dict(inner_steps=2),
    "NestedOfficialOuterScheduler": dict(steps=5),
    "SplitGuidedSampler": dict(seed=1, steps=3, cfg=2.0),
    "SplitSampler": dict(),
    "SplitRespace": dict(steps=4),
    "SplitColorGuidance": dict(),
    "ElasticLatentSampler": dict(seed=1, steps=2, cfg=5.0, base_resolution=64),
    "ElasticGuider": dict(cfg=5.0, base_resolution=64),
}
LATENT_SIZE = {"ElasticLatentSampler": (16, 8), "ElasticGuider": (16, 8)}    # (width, height) latent px
STEPS = {"NestedSampler": 1, "SplitSampler": 3, "SplitColorGuidance": 3, "ElasticGuider": 2}


def latent_node(width=8, height=8, channels=4, batch=1, fill="random", mask="none", seed=0):
    return {"class_type": "NSETestLatent", "inputs": dict(width=width, height=height, channels=channels, batch=batch,
                                                          fill=fill, mask=mask, seed=seed)}


def base_prompt(node, tag="base"):
    """A valid prompt around ``node`` (id TARGET) whose one output node CHECK reports on the result."""
    w, h = LATENT_SIZE.get(node, (8, 8))
    p = {
        "1": {"class_type": "NSETestMockCheckpoint", "inputs": {"ckpt_name": "x", "kind": "sd15"}},
        "2": {"class_type": "NSETestMockTextEncode", "inputs": {"text": "a nest", "clip": ["1", 1]}},
        "3": {"class_type": "NSETestMockTextEncode", "inputs": {"text": "", "clip": ["1", 1]}},
        LATENT: latent_node(w, h),
    }
    widgets = dict(host_.widget_defaults(node), **OVERRIDES[node])
    mcn = {"model": ["1", 0], "positive": ["2", 0], "negative": ["3", 0]}
    custom = {   # SamplerCustomAdvanced around a SAMPLER / GUIDER node
        "6": {"class_type": "CFGGuider", "inputs": dict(model=["1", 0], positive=["2", 0], negative=["3", 0],
                                                         cfg=2.0)},
        "7": {"class_type": "BasicScheduler", "inputs": dict(model=["1", 0], scheduler="normal",
                                                              steps=STEPS.get(node, 2), denoise=1.0)},
        "8": {"class_type": "RandomNoise", "inputs": {"noise_seed": 1}},
        "10": {"class_type": "SamplerCustomAdvanced", "inputs": dict(noise=["8", 0], guider=["6", 0],
                                                                      sampler=[TARGET, 0], sigmas=["7", 0],
                                                                      latent_image=[LATENT, 0])},
        CHECK: {"class_type": "NSETestLatentCheck", "inputs": dict(samples=["10", 0], samples_2=["10", 1],
                                                                    original=[LATENT, 0], tag=tag)},
    }
    if node in ("NestedKSampler", "SplitGuidedSampler", "ElasticLatentSampler"):
        p[TARGET] = {"class_type": node, "inputs": dict(mcn, latent_image=[LATENT, 0], **widgets)}
        check = dict(samples=[TARGET, 0], original=[LATENT, 0], tag=tag)
        if node == "NestedKSampler":
            check["samples_2"] = [TARGET, 1]
        p[CHECK] = {"class_type": "NSETestLatentCheck", "inputs": check}
    elif node in ("NestedSampler", "SplitSampler"):
        p[TARGET] = {"class_type": node, "inputs": widgets}
        p.update(custom)
    elif node == "ElasticGuider":
        p[TARGET] = {"class_type": node, "inputs": dict(mcn, **widgets)}
        p.update(custom)
        del p["6"]
        p["9"] = {"class_type": "KSamplerSelect", "inputs": {"sampler_name": "euler"}}
        p["10"]["inputs"].update(guider=[TARGET, 0], sampler=["9", 0])
    elif node == "SplitColorGuidance":
        p["12"] = latent_node(8, 8, seed=5)                                       # the reference
        p[TARGET] = {"class_type": node, "inputs": dict(model=["1", 0], reference=["12", 0], **widgets)}
        p.update(custom)
        p["9"] = {"class_type": "SplitSampler", "inputs": dict(host_.widget_defaults("SplitSampler"), split_term="gradient",
                                                               guidance=[TARGET, 0])}
        p["10"]["inputs"]["sampler"] = ["9", 0]
    elif node in ("SplitRespace", "NestedOfficialOuterScheduler"):
        p[TARGET] = {"class_type": node, "inputs": dict(model=["1", 0], **widgets)}
        p[CHECK] = {"class_type": "NSETestSigmasCheck", "inputs": dict(sigmas=[TARGET, 0], tag=tag)}
    else:
        raise KeyError(node)
    return p


def latent_input_of(node):
    """(node id, input name) that receives the latent under test (None, None: the node takes no latent)."""
    if node in ("NestedKSampler", "SplitGuidedSampler", "ElasticLatentSampler"):
        return TARGET, "latent_image"
    if node == "SplitColorGuidance":
        return TARGET, "reference"
    if node in ("NestedSampler", "SplitSampler", "ElasticGuider"):
        return "10", "latent_image"          # through SamplerCustomAdvanced
    return None, None


# ------------------------------------------------------------------------------------------
# the cases
# ------------------------------------------------------------------------------------------
class Case:
    def __init__(self, node, what, label, mutate, names, valid=False, fast=None):
        self.node, self.what, self.label = node, what, label
        self.mutate = mutate          # fn(prompt) -> None
        self.names = names            # input names an error message may name
        self.valid = valid            # an in-range value: ComfyUI's validation must accept it
        self.fast = fast              # seconds within which the answer must come (huge inputs)
        self.id = f"{node}-{what}-{label}"

    def prompt(self, tag):
        p = base_prompt(self.node, tag)
        self.mutate(p)
        return p


def _set(node_id, name, value):
    def mutate(p):
        p[node_id]["inputs"][name] = value
    return mutate


def widget_values(kind, opts):
    """[(label, value, in_range)] for one widget."""
    if kind == "INT":
        lo, hi = opts.get("min"), opts.get("max")
        vals = []
        if lo is not None:
            vals += [("min", lo, True), ("min-1", lo - 1, False)]
        if hi is not None:
            vals += [("max", hi, True), ("max+1", hi + 1, False)]
        return vals + [("string", "abc", False), ("list", [1, 2, 3], False), ("null", None, False),
                       ("float", 2.5, False)]
    if kind == "FLOAT":
        lo, hi = opts.get("min"), opts.get("max")
        d = opts.get("step") or 0.01
        vals = []
        if lo is not None:
            vals += [("min", lo, True), ("min-step", lo - d, False)]
        if hi is not None:
            vals += [("max", hi, True), ("max+step", hi + d, False)]
        return vals + [("nan", float("nan"), False), ("inf", float("inf"), False), ("-inf", float("-inf"), False),
                       ("string", "abc", False), ("list", [0.5, 0.25, 0.125], False), ("null", None, False)]
    if kind == "COMBO":
        o = opts["options"]
        return [("first", o[0], True), ("last", o[-1], True), ("unknown", "nse_no_such_option", False),
                ("null", None, False), ("number", 3, False)]
    if kind == "BOOLEAN":
        return [("true", True, True), ("false", False, True), ("string", "abc", False), ("null", None, False),
                ("list", [True, False, True], False)]
    if kind == "STRING":
        return [("empty", "", True), ("list", ["a", "b", "c"], False), ("null", None, False)]
    raise KeyError(kind)


def _wrong_link(kind):
    """A link to an output of another type: the checkpoint's CLIP (slot 1) for everything but CLIP."""
    return ["1", 2] if kind == "LINK:CLIP" else ["1", 1]


def _latent_case(node, what, names=None, fast=None, **latent):
    nid, inp = latent_input_of(node)

    def mutate(p):
        src = p[nid]["inputs"][inp][0]
        w, h = LATENT_SIZE.get(node, (8, 8))
        p[src] = latent_node(**dict(dict(width=w, height=h), **latent))
    return Case(node, "latent", what, mutate, names or [inp], fast=fast)


def _empty_latent_case(node, what, **kw):
    nid, inp = latent_input_of(node)

    def mutate(p):
        src = p[nid]["inputs"][inp][0]
        p[src] = {"class_type": "EmptyLatentImage", "inputs": dict(dict(width=64, height=64, batch_size=1), **kw)}
        if CHECK in p and p[CHECK]["inputs"].get("original") == [src, 0]:
            del p[CHECK]["inputs"]["original"]
    return Case(node, "latent", what, mutate, [inp])


def latent_cases(node):
    nid, inp = latent_input_of(node)
    if nid is None:
        return []
    mask_names = [inp, "noise_mask", "denoise_mask", "mask"]
    cases = [
        _latent_case(node, "empty-0x0", width=0, height=0),
        _latent_case(node, "empty-width-0", width=0),
        _latent_case(node, "batch-0", batch=0),
        _latent_case(node, "nan", fill="nan"),
        _latent_case(node, "inf", fill="inf"),
        _latent_case(node, "16-channels-random", channels=16),
        _latent_case(node, "16-channels-zeros", channels=16, fill="zeros"),
        _empty_latent_case(node, "above-max-resolution", width=host_.nodes.MAX_RESOLUTION + 8),
        _empty_latent_case(node, "EmptyLatentImage-batch-0", batch_size=0),
    ]
    if nid == TARGET:          # (a raw value into SamplerCustomAdvanced's own input tests ComfyUI, not the pack)
        cases += [Case(node, "latent", "raw-string", _set(nid, inp, "abc"), [inp]),
                  Case(node, "latent", "null", _set(nid, inp, None), [inp])]
    if inp == "latent_image":
        for m in ("half", "wrong_size", "wrong_batch", "empty", "nan"):
            c = _latent_case(node, f"mask-{m}", names=mask_names, mask=m)
            cases.append(c)
        cases.append(_latent_case(node, "batch-3-mask-wrong_batch", names=mask_names, batch=3, mask="wrong_batch"))
    if node in ("ElasticLatentSampler", "ElasticGuider"):       # 16x the base size: faithful mode refuses it
        def huge(p):
            p[LATENT] = latent_node(width=1024, height=64)       # 8192 x 512 px, base 512 px (64 latent)
            p[TARGET]["inputs"].update(mode="faithful", base_resolution=512)
        cases.append(Case(node, "latent", "huge-faithful-16x", huge, [inp, "mode"], fast=HUGE_REFUSAL_S))
    if node == "ElasticLatentSampler":                           # the real wide case: 1024x512 px, base detected
        def wide(p):
            p[LATENT] = latent_node(width=128, height=64, fill="zeros")
            p[TARGET]["inputs"].update(base_resolution=0)
        cases.append(Case(node, "latent", "wide-1024x512", wide, [inp], valid=True))
    return cases


def _cheaper(**inputs):
    """Extra changes that make a costly valid value cheap to run: ``{node id: {input: value}}``, and
    ``latent`` for the source latent's size."""
    def mutate(p):
        for nid, values in inputs.items():
            if nid == "latent":
                p[LATENT]["inputs"].update(values)
            else:
                p[nid]["inputs"].update(values)
    return mutate


#: the most expensive valid values (about 1000 model calls each at their max): the rest of the prompt
#: made as cheap as it goes (1 outer step, cfg 1 = no uncond call, no repaint, one base-size tile)
CHEAPER = {
    ("NestedKSampler", "inner_steps", "max"): _cheaper(**{TARGET: dict(outer_steps=1, cfg=1.0)}),
    ("NestedSampler", "inner_steps", "max"): _cheaper(**{"6": dict(cfg=1.0)}),
    ("SplitGuidedSampler", "steps", "max"): _cheaper(**{TARGET: dict(cfg=1.0)}),
    ("ElasticLatentSampler", "steps", "max"): _cheaper(**{TARGET: dict(cfg=1.0, repaint=False),
                                                         "latent": dict(width=8, height=8)}),
}


def _then(*fns):
    def mutate(p):
        for fn in fns:
            fn(p)
    return mutate


def all_cases():
    cases = []
    for node in PACK_NODES:
        cases.append(Case(node, "base", "valid", lambda p: None, [], valid=True))
        for name, kind, opts, required in host_.input_specs(node):
            if kind in WIDGET_TYPES:
                for label, value, ok in widget_values(kind, opts):
                    mutate = _set(TARGET, name, value)
                    if (node, name, label) in CHEAPER:
                        mutate = _then(CHEAPER[(node, name, label)], mutate)
                    cases.append(Case(node, name, label, mutate, [name], valid=ok))
            elif required:
                cases += [Case(node, name, "raw-string", _set(TARGET, name, "abc"), [name]),
                          Case(node, name, "null", _set(TARGET, name, None), [name]),
                          Case(node, name, "wrong-link", _set(TARGET, name, _wrong_link(kind)), [name])]
            else:
                cases.append(Case(node, name, "wrong-link", _set(TARGET, name, _wrong_link(kind)), [name]))
        cases += latent_cases(node)
    return cases


CASES = all_cases()

def _bugs(reason, node_inputs, labels):
    return {f"{node}-{inp}-{label}": reason for node, inputs in node_inputs for inp in inputs for label in labels}


#: pack bugs this test found: case id -> what happens (the case is xfail until fixed; when one stops
#: misbehaving the summary says so, remove it here)
KNOWN_BUGS = {}   # all 60 cases found by the first run were fixed in the same change


# ------------------------------------------------------------------------------------------
# the server and a client on one websocket
# ------------------------------------------------------------------------------------------
class Client:
    """POST /prompt and follow the prompt on one websocket, on a private event loop."""

    def __init__(self, base, proc):
        self.base, self.proc = base, proc
        self.client_id = str(uuid.uuid4())
        self.loop = asyncio.new_event_loop()
        self.session = self.run(self._session())
        self.ws = self.run(self.session.ws_connect(f"{base.replace('http', 'ws')}/ws?clientId={self.client_id}"))

    async def _session(self):
        return aiohttp.ClientSession()

    def run(self, coro):
        return self.loop.run_until_complete(coro)

    def close(self):
        for c in (self.ws.close(), self.session.close()):
            try:
                self.run(c)
            except Exception:
                pass
        self.loop.close()

    def alive(self):
        return self.proc.poll() is None

    def post(self, prompt):
        """(HTTP status, body) of POST /prompt; the body is sent as ``json.dumps`` writes it (NaN and
        Infinity as bare tokens, as a Python script would)."""
        data = json.dumps({"prompt": prompt, "client_id": self.client_id})

        async def go():
            async with self.session.post(f"{self.base}/prompt", data=data,
                                         headers={"Content-Type": "application/json"}) as r:
                text = await r.text()
                try:
                    return r.status, json.loads(text)
                except ValueError:
                    return r.status, {"raw": text[:2000]}
        return self.run(go())

    def wait(self, pid, timeout=PROMPT_TIMEOUT):
        """('success' | 'error' | 'interrupted' | 'timeout' | 'closed', execution_error data or None).

        Waits for the worker's final ``executing`` (node None) message, which comes after the history
        entry is stored (``execution_success`` / ``execution_error`` come before it)."""
        async def go():
            deadline = time.monotonic() + timeout
            state, info = "success", None
            while True:
                left = deadline - time.monotonic()
                if left <= 0:
                    return "timeout", info
                try:
                    m = await self.ws.receive(timeout=left)
                except asyncio.TimeoutError:
                    return "timeout", info
                if m.type == aiohttp.WSMsgType.BINARY:
                    continue
                if m.type != aiohttp.WSMsgType.TEXT:
                    return "closed", info
                d = json.loads(m.data)
                data = d.get("data") or {}
                if not isinstance(data, dict) or data.get("prompt_id") != pid:
                    continue
                if d["type"] == "execution_error":
                    state, info = "error", data
                elif d["type"] == "execution_interrupted":
                    state, info = "interrupted", data
                elif d["type"] == "executing" and data.get("node") is None:
                    return state, info
        return self.run(go())

    def history(self, pid):
        async def go():
            async with self.session.get(f"{self.base}/history/{pid}") as r:
                return (await r.json()).get(pid, {})
        return self.run(go())

    def interrupt(self):
        async def go():
            async with self.session.post(f"{self.base}/interrupt") as r:
                return r.status
        return self.run(go())

    def object_info(self, node):
        async def go():
            async with self.session.get(f"{self.base}/object_info/{node}") as r:
                return (await r.json())[node]
        return self.run(go())


@pytest.fixture(scope="module")
def client(host):
    srv = comfy_host.Server(host.path, extra_args=["--preview-method", "none"], prefix="nse_fuzz_").start()
    c = None
    try:
        c = Client(srv.base, srv.proc)
        c.log_path = srv.log_path
        yield c
    finally:
        if c is not None:
            c.close()
        srv.stop()


# ------------------------------------------------------------------------------------------
# running and judging one case
# ------------------------------------------------------------------------------------------
COUNTS = {"tried": 0, "refused": 0, "named_error": 0, "succeeded": 0, "core_error": 0, "crashes": 0,
          "known_bugs": 0}
CRASHES = []          # (case id, what happened)
CORE_ERRORS = []      # (case id, what happened): unnamed errors raised by ComfyUI itself, the pack not on the stack
NOT_REPRODUCED = []   # KNOWN_BUGS entries that did not misbehave this time
REPORT = os.environ.get("NSE_FUZZ_REPORT")     # a path: every case's outcome is appended there (JSON lines)
_HEALTH_SEED = [100]
_RAN = [0]
HEALTH_EVERY = 4      # a valid prompt after every case that failed in the executor, and after every 4th success


PACK_MARK = os.sep + comfy_host.PACK_NAME + os.sep      # in the server's tracebacks of the pack's code


def names_input(message, names):
    """True when the message names one of ``names`` as a word (``attribute 'model'`` of an AttributeError
    is Python naming an attribute, not the node naming its input)."""
    message = re.sub(r"attribute '[^']*'", "", message or "")
    return any(re.search(rf"(?<![A-Za-z0-9_]){re.escape(n)}(?![A-Za-z0-9_])", message) for n in names)


def judge_outputs(entry):
    """None when every reported output is fine, else what is wrong."""
    outputs = entry.get("outputs") or {}
    reports = [r for o in outputs.values() for k in ("nse_check", "nse_sigmas") for r in (o.get(k) or [])]
    if not reports:
        return "no check output"
    for r in reports:
        if not r.get("finite"):
            return f"non-finite output {r}"
        if r.get("unchanged") is False:
            return f"the input latent was modified (or is not NSETestLatent's) {r}"
        if r.get("modified_elsewhere"):
            return f"{r['modified_elsewhere']} latent(s) of earlier prompts were modified since they were made {r}"
        if "decreasing" in r and not r["decreasing"]:
            return f"sigmas not strictly decreasing {r}"
    return None


def submit(client, prompt):
    """(outcome, detail, seconds): outcome is refused | error | success | crash."""
    t0 = time.monotonic()
    try:
        status, body = client.post(prompt)
    except Exception as e:                              # connection refused / reset: the server died
        return "crash", f"POST failed: {type(e).__name__}: {e}", time.monotonic() - t0
    if status == 400:
        if body.get("error") or body.get("node_errors"):
            return "refused", json.dumps(body.get("node_errors") or body.get("error"), default=str)[:600], \
                time.monotonic() - t0
        return "crash", f"HTTP 400 without an error: {body}", time.monotonic() - t0
    if status != 200 or "prompt_id" not in body:
        return "crash", f"HTTP {status}: {str(body)[:600]}", time.monotonic() - t0
    if body.get("node_errors"):
        return "crash", f"accepted with node_errors (a second output?): {body['node_errors']}", time.monotonic() - t0
    pid = body["prompt_id"]
    state, data = client.wait(pid)
    dt = time.monotonic() - t0
    if state == "timeout":
        client.interrupt()
        client.wait(pid, timeout=60)
        return "crash", f"no answer within {PROMPT_TIMEOUT}s (hang)", dt
    if state == "error":
        return "error", data, dt
    if state != "success":
        return "crash", f"prompt ended {state}: {data}", dt
    bad = judge_outputs(client.history(pid))
    return ("crash", bad, dt) if bad else ("success", None, dt)


def health_check(client):
    """A small valid prompt (a fresh seed, so it really runs) must still succeed."""
    _HEALTH_SEED[0] += 1
    p = base_prompt("NestedKSampler", f"health-{_HEALTH_SEED[0]}")
    p[TARGET]["inputs"]["seed"] = _HEALTH_SEED[0]
    outcome, detail, _ = submit(client, p)
    return None if outcome == "success" else f"the next valid prompt failed: {outcome} {detail}"


def run_case(client, case):
    """What happened, as (category, detail): refused | named_error | succeeded | crash."""
    if not client.alive():
        return "crash", "the server is not running"
    outcome, detail, dt = submit(client, case.prompt(f"{case.id}-{uuid.uuid4().hex[:8]}"))
    if outcome == "refused":
        if case.valid:
            return "crash", f"an in-range value was refused by validation: {detail}"
        result = ("refused", detail)
    elif outcome == "error":
        msg = str(detail.get("exception_message", ""))
        where = (f"{detail.get('node_type')} #{detail.get('node_id')}: {detail.get('exception_type')}: "
                 f"{msg[:400].strip()}")
        if case.names and names_input(msg, case.names):
            result = ("named_error", where)
        elif not any(PACK_MARK in str(line) for line in detail.get("traceback") or []):
            result = ("core_error", f"raised in ComfyUI, no pack code on the stack: {where}")
        else:
            result = ("crash", f"error not naming {case.names}: {where}")
    elif outcome == "success":
        result = ("succeeded", None)
    else:
        result = ("crash", detail)
    if case.fast is not None and outcome != "refused" and dt > case.fast:
        result = ("crash", f"answered in {dt:.1f}s (> {case.fast}s for a huge input): {result}")
    if outcome != "refused":                           # it reached the executor: the server must still serve
        _RAN[0] += 1
        if not client.alive():
            return "crash", f"the server died ({result})"
        bad = health_check(client) if outcome != "success" or _RAN[0] % HEALTH_EVERY == 0 else None
        if bad:
            return "crash", f"{bad} (after: {result})"
    return result


def _param(case):
    marks = [pytest.mark.xfail(reason=KNOWN_BUGS[case.id], strict=False)] if case.id in KNOWN_BUGS else []
    return pytest.param(case, id=case.id, marks=marks)


# ------------------------------------------------------------------------------------------
# tests
# ------------------------------------------------------------------------------------------
def test_fuzz_checks_catch_nan_modified_latents_and_bad_grids(host):
    """The harness itself (in-process): the check nodes flag NaN, a modified source latent or mask (also
    one modified by an earlier prompt), and a grid that is not strictly decreasing."""
    import torch
    make, check = host.node("NSETestLatent")(), host.node("NSETestLatentCheck")()
    sig = host.node("NSETestSigmasCheck")()

    def report(*a, **k):
        return {"outputs": {"x": check.check(*a, **k)["ui"]}}

    (lat,) = make.make(8, 8, 4, 1, "random", "half", 0)
    good = torch.zeros(1, 4, 8, 8)
    assert judge_outputs(report({"samples": good}, "t", original=lat)) is None
    assert "non-finite" in judge_outputs(report({"samples": torch.full((1, 4, 8, 8), float("nan"))}, "t"))
    assert "non-finite" in judge_outputs(report({"samples": good}, "t", samples_2={"samples": good / 0}))
    lat["samples"][0, 0, 0, 0] += 1.0                                  # a sampler writing into its input
    assert "was modified" in judge_outputs(report({"samples": good}, "t", original=lat))
    assert judge_outputs(report({"samples": good}, "t")) is None       # reported once
    (lat2,) = make.make(8, 8, 4, 1, "zeros", "ones", 1)
    lat2["noise_mask"].mul_(0.5)                                        # ... or into its mask, then failing
    assert "earlier prompts were modified" in judge_outputs(report({"samples": good}, "t"))
    assert "was modified" in judge_outputs(report({"samples": good}, "t", original={"samples": good}))
    assert judge_outputs({"outputs": {"x": sig.check(torch.tensor([2.0, 1.0, 0.0]), "t")["ui"]}}) is None
    assert "decreasing" in judge_outputs({"outputs": {"x": sig.check(torch.tensor([2.0, 1.0, 1.0, 0.0]), "t")["ui"]}})
    assert "non-finite" in judge_outputs({"outputs": {"x": sig.check(torch.tensor([float("nan"), 0.0]), "t")["ui"]}})
    assert judge_outputs({"outputs": {}}) == "no check output"
    for what, kw in {"empty": dict(width=0, height=0), "batch0": dict(batch=0)}.items():
        (e,) = make.make(**dict(dict(width=8, height=8, channels=4, batch=1, fill="random", mask="none", seed=0), **kw))
        assert e["samples"].numel() == 0, what
    (m,) = make.make(8, 8, 4, 1, "nan", "wrong_size", 0)
    assert torch.isnan(m["samples"]).sum() == 1 and m["noise_mask"].shape[-2:] != m["samples"].shape[-2:]
    assert names_input("cfg must be a finite number (got nan)", ["cfg"])
    assert not names_input("'str' object has no attribute 'model'", ["model"])
    assert not names_input("x contains NaN", ["latent_image"]) and not names_input("max_cfg", ["cfg"])


def test_fuzz_cases_cover_every_input_the_server_shows(client):
    """The cases come from the in-process schemas; the server must show the same inputs."""
    for node in PACK_NODES:
        info = client.object_info(node)
        shown = set((info["input"].get("required") or {})) | set((info["input"].get("optional") or {}))
        fuzzed = {c.what for c in CASES if c.node == node} - {"base", "latent"}
        assert shown == fuzzed, (node, shown ^ fuzzed)
    assert {c.node for c in CASES} == set(PACK_NODES)


@pytest.mark.server
@pytest.mark.parametrize("case", [_param(c) for c in CASES])
def test_fuzz(client, case):
    t0 = time.monotonic()
    category, detail = run_case(client, case)
    COUNTS["tried"] += 1
    if REPORT:
        with open(REPORT, "a") as f:
            f.write(json.dumps({"id": case.id, "category": category, "detail": detail,
                                "s": round(time.monotonic() - t0, 2)}, default=str) + "\n")
    if category == "crash":
        if case.id in KNOWN_BUGS:
            COUNTS["known_bugs"] += 1
        else:
            COUNTS["crashes"] += 1
            CRASHES.append((case.id, detail))
        pytest.fail(f"{case.id}: {detail}")
    COUNTS[category] += 1
    if category == "core_error":
        CORE_ERRORS.append((case.id, detail))
    if case.id in KNOWN_BUGS:
        NOT_REPRODUCED.append((case.id, f"{category}: {detail}"))


@pytest.mark.server
def test_fuzz_counts(client, capsys):
    c = COUNTS
    with capsys.disabled():
        print(f"\nfuzz (ComfyUI {host_.version}): inputs tried {c['tried']}, refused by validation {c['refused']}, "
              f"answered with a named error {c['named_error']}, succeeded {c['succeeded']}, "
              f"crashes {c['crashes']}; known pack bugs (xfail) {c['known_bugs']}, unnamed errors from ComfyUI "
              f"itself {c['core_error']}")
        for cid, what in CRASHES:
            print(f"  CRASH {cid}: {what}")
        for cid, what in CORE_ERRORS:
            print(f"  COMFYUI {cid}: {what}")
        for cid, what in NOT_REPRODUCED:
            print(f"  FIXED? known bug {cid} did not reproduce ({what}); remove it from KNOWN_BUGS")
    assert client.alive()
    assert c["crashes"] == 0, CRASHES
