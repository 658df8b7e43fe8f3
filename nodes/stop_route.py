"""The pack's HTTP routes for anytime runs, next to ComfyUI's own ``/interrupt``.

``POST /nested/stop`` with a JSON object ``{"prompt_id": "<id>"}`` or ``{"prompt_id": "<id>",
"node_id": "<id>"}``: Stop & keep.  The Nested run of that node (or every Nested run of that
prompt) finishes its current outer step and returns that step's image as a normal result.  The
prompt must be running or queued, the node must be in it.  Answers 200 with what was asked, or a
4xx with a message: 400 malformed body, 404 unknown prompt or node, 413 body too large.

``GET /nested/runs``: the Nested runs in progress (prompt id, node id, step, total).

The routes write no files and keep only a bounded table of requests in memory.
"""
from __future__ import annotations

import json
import logging

from . import anytime_live, compat

STOP_PATH, RUNS_PATH = "/nested/stop", "/nested/runs"
MAX_BODY = 4096
MAX_ID = 200
FIELDS = ("prompt_id", "node_id")


class BadRequest(Exception):
    def __init__(self, status: int, message: str):
        super().__init__(message)
        self.status, self.message = status, message


def parse_stop_body(raw: bytes):
    """(prompt_id, node_id or None) from a request body, or :class:`BadRequest`."""
    if len(raw) > MAX_BODY:
        raise BadRequest(413, f"body too large: at most {MAX_BODY} bytes")
    try:
        body = json.loads(raw.decode("utf-8"))
    except (UnicodeDecodeError, ValueError):
        raise BadRequest(400, 'body must be a JSON object like {"prompt_id": "...", "node_id": "..."}')
    if not isinstance(body, dict):
        raise BadRequest(400, f"body must be a JSON object, got {type(body).__name__}")
    unknown = sorted(set(body) - set(FIELDS))
    if unknown:
        raise BadRequest(400, f"unknown field(s) {unknown}; allowed: {list(FIELDS)}")
    if "prompt_id" not in body:
        raise BadRequest(400, "prompt_id is required (the id /prompt answered when the prompt was queued)")
    ids = [_check_id(name, body[name]) for name in FIELDS if name in body]
    return ids[0], (ids[1] if len(ids) > 1 else None)


def _check_id(name, value) -> str:
    if not isinstance(value, str) or not value or len(value) > MAX_ID:
        raise BadRequest(400, f"{name} must be a non-empty string of at most {MAX_ID} characters "
                              f"(got {type(value).__name__})")
    return value


def stop(server, prompt_id: str, node_id=None) -> dict:
    """Record a stop request for a running or queued prompt; :class:`BadRequest` 404 otherwise."""
    prompts = compat.queue_prompts(server)
    anytime_live.STOPS.keep_only(prompts)
    if prompt_id not in prompts:
        raise BadRequest(404, f"prompt_id {prompt_id!r} is neither running nor queued")
    status, prompt = prompts[prompt_id]
    running = anytime_live.running_nodes(prompt_id)
    if node_id is not None and node_id not in running and node_id not in (prompt or {}):
        raise BadRequest(404, f"node_id {node_id!r} is not a node of prompt {prompt_id!r}")
    anytime_live.STOPS.add(prompt_id, node_id)
    return {"prompt_id": prompt_id, "node_id": node_id, "status": status, "running_nested": running}


def register(server) -> bool:
    """Add the routes to a ``PromptServer`` (before it starts); False where there is no server."""
    if server is None or not hasattr(server, "routes"):
        return False
    from aiohttp import web

    @server.routes.post(STOP_PATH)
    async def nested_stop(request):
        try:
            raw = await request.content.read(MAX_BODY + 1)
            prompt_id, node_id = parse_stop_body(raw)
            return web.json_response(stop(server, prompt_id, node_id))
        except BadRequest as e:
            return web.json_response({"error": e.message}, status=e.status)
        except Exception as e:      # never let a bad request take the server down
            logging.exception("nested: stop route failed")
            return web.json_response({"error": f"internal error: {type(e).__name__}"}, status=500)

    @server.routes.get(RUNS_PATH)
    async def nested_runs(request):
        return web.json_response({"runs": anytime_live.running_summary()})

    return True
