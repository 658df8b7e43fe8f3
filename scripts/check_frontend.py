"""Load every shipped UI workflow into ComfyUI's real web frontend in headless Chromium.

    .venv/bin/python scripts/check_frontend.py <ComfyUI checkout> <its python> [--dir D] [--shot x.png]

Starts ``main.py --cpu`` of the checkout on a loopback port with this pack and the test-only pack,
opens the page, loads each ``workflows/*.json`` with ``app.loadGraphData`` and checks: every node
type is registered, every widget value equals the file's, and the browser console printed no
warning or error while loading.  Needs Debian's ``chromium`` and the ``playwright`` client (it
drives the system browser; no browser download).  Prints one line per workflow; exit 1 on a problem.
"""
import json
import glob
import os
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.join(ROOT, "tests", "host"))


JS_LOAD = """async (wf) => {
  const app = window.app || (window.comfyAPI && window.comfyAPI.app && window.comfyAPI.app.app);
  await app.loadGraphData(wf);
  const g = app.rootGraph || app.graph || (app.canvas && app.canvas.graph);
  const LG = window.LiteGraph || (window.comfyAPI && window.comfyAPI.litegraph && window.comfyAPI.litegraph.LiteGraph);
  const nodes = g._nodes || g.nodes;
  const known = (n) => !!((n.constructor && n.constructor.comfyClass) || n.comfyClass ||
                          (LG && LG.registered_node_types && LG.registered_node_types[n.type]));
  return nodes.map(n => ({id: n.id, type: n.type, registered: known(n),
                          values: (n.widgets || []).map(w => w.value)}));
}"""


def check(page, path):
    wf = json.load(open(path))
    problems = []
    start = len(page.console)
    got = page.evaluate(JS_LOAD, wf)
    page.wait_for_timeout(500)
    by_id = {str(n["id"]): n for n in got}
    for node in wf["nodes"]:
        n = by_id.get(str(node["id"]))
        if n is None or not n["registered"]:
            problems.append(f"node {node['id']} {node['type']} missing or unregistered")
            continue
        want = list(node.get("widgets_values", []))
        vals = [v for v in n["values"] if v not in ("fixed", "increment", "decrement", "randomize")]
        want = [v for v in want if v not in ("fixed", "increment", "decrement", "randomize")]
        if vals[:len(want)] != want:
            problems.append(f"node {node['id']} {node['type']} widgets {vals} != file {want}")
    # "Failed to load resource": the frontend's own requests to the internet (none here), not the workflow
    noise = [m for m in page.console[start:] if m[0] in ("warning", "error") and "Failed to load resource" not in m[1]]
    problems += [f"console {k}: {t[:200]}" for k, t in noise]
    return problems


def main():
    checkout, python = sys.argv[1], sys.argv[2]
    shot = sys.argv[sys.argv.index("--shot") + 1] if "--shot" in sys.argv else None
    wf_dir = sys.argv[sys.argv.index("--dir") + 1] if "--dir" in sys.argv else os.path.join(ROOT, "workflows")
    from playwright.sync_api import sync_playwright
    import comfy_host
    srv = comfy_host.Server(checkout, python, prefix="nse_frontend_").start()
    bad = 0
    try:
        with sync_playwright() as pw:
            browser = pw.chromium.launch(executable_path="/usr/bin/chromium", args=["--no-sandbox"])
            page = browser.new_page(viewport={"width": 1600, "height": 1000})
            page.console = []
            page.on("console", lambda m: page.console.append((m.type, m.text)))
            page.goto(f"{srv.base}/", wait_until="networkidle")
            page.wait_for_function("() => !!(window.app || (window.comfyAPI && window.comfyAPI.app))", timeout=60000)
            page.wait_for_function("() => { const a = window.app; return !!(a && (a.rootGraph || a.graph)); }",
                                   timeout=60000)
            page.wait_for_timeout(3000)
            page.console.clear()
            for path in sorted(glob.glob(os.path.join(wf_dir, "*.json"))):
                problems = check(page, path)
                bad += bool(problems)
                print(f"{'OK ' if not problems else 'BAD'} {os.path.basename(path)}" +
                      "".join(f"\n    {p}" for p in problems))
            if shot:
                page.screenshot(path=shot)
            version = page.evaluate("() => window.__COMFYUI_FRONTEND_VERSION__ || ''")
            print(f"frontend {version or '(version not exposed)'}: {bad} workflow(s) with problems")
            browser.close()
    finally:
        srv.stop()
    sys.exit(1 if bad else 0)


if __name__ == "__main__":
    main()
