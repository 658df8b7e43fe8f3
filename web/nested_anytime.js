// Nested · Split · Elastic: the anytime strip and "Stop & keep" in the graph editor.
//
// The Nested sampler sends the websocket event "nested.anytime" at the start of a run, after every
// outer step (with a thumbnail of that step's picture) and at its end.  This extension shows the
// thumbnails in order on the node that runs the sampler (NestedKSampler, or SamplerCustomAdvanced /
// SamplerCustom fed by a NestedSampler), enlarges one on click, and adds a "Stop & keep" button:
// the run finishes its current outer step and returns that picture as a normal result, so VAE
// Decode and Save Image still run.  The button posts to the pack's route /nested/stop.
// Only the standard widget API is used (a button and a DOM widget, neither saved in the workflow),
// so it works on the classic canvas and with the Vue node renderer.  Inside a subgraph the event
// carries the execution id "outer:...:inner"; the strip is shown on the node inside the subgraph
// and on every subgraph node around it, so it is in view at whichever level the user looks, and
// any of the buttons stops the run.

const comfy = window.comfyAPI || {};
const app = comfy.app && comfy.app.app;
const api = comfy.api && comfy.api.api;

const EVENT = "nested.anytime";
const STOP_ROUTE = "/nested/stop";
const STRIP = "nested_anytime_strip";
const BUTTON = "Stop & keep";
const runs = new WeakMap();   // node -> {promptId, node (execution id), total, running}

function graph() {
  return app.rootGraph || app.graph;
}

function byId(g, id) {
  return g.getNodeById(Number(id)) || g.getNodeById(id);
}

// The nodes that show a run with this execution id: the node itself and, inside subgraphs, every
// subgraph node on the way to it from the root graph.
function nodesOf(id) {
  let g = graph();
  const path = [];
  for (const part of String(id).split(":")) {
    const n = g && byId(g, part);
    if (!n) return [];
    path.push(n);
    g = n.subgraph;
  }
  return path.reverse();
}

function findNodes(detail) {
  if (!graph()) return [];
  for (const id of [detail.display_node, detail.node]) {
    if (id === undefined || id === null) continue;
    const found = nodesOf(id);
    if (found.length) return found;
  }
  return [];
}

function addStyle() {
  if (document.getElementById("nested-anytime-style")) return;
  const s = document.createElement("style");
  s.id = "nested-anytime-style";
  s.textContent = `
    .nested-strip { display: flex; flex-direction: column; gap: 4px; width: 100%; box-sizing: border-box;
                    font: 11px sans-serif; color: var(--input-text, #ddd); }
    .nested-strip-title { opacity: 0.8; white-space: nowrap; overflow: hidden; text-overflow: ellipsis; }
    .nested-strip-row { display: flex; gap: 4px; overflow-x: auto; min-height: 66px; align-items: flex-start; }
    .nested-strip-row figure { margin: 0; display: flex; flex-direction: column; align-items: center; }
    .nested-strip-row img { height: 56px; border-radius: 3px; cursor: zoom-in; border: 1px solid #555; }
    .nested-strip-row img.nested-last { border-color: #6c6; }
    .nested-strip-row figcaption { font-size: 10px; opacity: 0.7; }
    .nested-zoom { position: fixed; inset: 0; background: rgba(0,0,0,0.8); display: flex; z-index: 10000;
                   flex-direction: column; align-items: center; justify-content: center; cursor: zoom-out; }
    .nested-zoom img { max-width: 80vw; max-height: 80vh; min-width: 256px; image-rendering: auto; }
    .nested-zoom div { color: #eee; font: 14px sans-serif; margin-top: 8px; }`;
  document.head.appendChild(s);
}

function zoom(src, label) {
  const o = document.createElement("div");
  o.className = "nested-zoom";
  o.innerHTML = `<img alt="${label}"><div></div>`;
  o.querySelector("img").src = src;
  o.querySelector("div").textContent = label + " (click to close)";
  o.addEventListener("click", () => o.remove());
  document.body.appendChild(o);
}

function ensureUI(node) {
  if (node.nestedStrip) return node.nestedStrip;
  addStyle();
  const root = document.createElement("div");
  root.className = "nested-strip";
  root.innerHTML = `<div class="nested-strip-title">Anytime strip: queue the prompt to see every outer step</div>
                    <div class="nested-strip-row"></div>`;
  const widget = node.addDOMWidget(STRIP, "nested-strip", root, {
    serialize: false, hideOnZoom: false, getMinHeight: () => 92, getHeight: () => 92,
  });
  widget.serialize = false;
  const button = node.addWidget("button", BUTTON, null, () => stop(node), { serialize: false });
  button.serialize = false;
  node.nestedStrip = { root, title: root.firstElementChild, row: root.lastElementChild, button };
  setButton(node, false);
  const size = node.computeSize();
  node.setSize([Math.max(node.size[0], size[0]), Math.max(node.size[1], size[1])]);
  return node.nestedStrip;
}

function setButton(node, enabled, label) {
  const b = node.nestedStrip.button;
  b.disabled = !enabled;
  b.label = label || BUTTON;
  b.name = BUTTON;
  node.setDirtyCanvas && node.setDirtyCanvas(true, true);
}

async function stop(node) {
  const run = runs.get(node);
  if (!run || !run.running) {
    setButton(node, false, "Stop & keep (not running)");
    return;
  }
  setButton(node, false, "Stopping after this outer step…");
  try {
    const r = await api.fetchApi(STOP_ROUTE, {
      method: "POST", headers: { "Content-Type": "application/json" },
      body: JSON.stringify({ prompt_id: run.promptId, node_id: String(run.node) }),
    });
    if (!r.ok) {
      const body = await r.json().catch(() => ({}));
      setButton(node, false, `Stop failed: ${body.error || r.status}`);
    }
  } catch (e) {
    setButton(node, true, "Stop failed (server unreachable); try again");
  }
}

function onEvent(detail) {
  for (const node of findNodes(detail)) show(node, detail);
}

function show(node, detail) {
  const ui = ensureUI(node);
  if (detail.kind === "start") {
    runs.set(node, { promptId: detail.prompt_id, node: detail.node, total: detail.total, running: true });
    ui.row.replaceChildren();
    ui.title.textContent = detail.step > 0 ? `Resumed at outer step ${detail.step}/${detail.total}`
                                           : `Outer step 0/${detail.total}`;
    setButton(node, true);
  } else if (detail.kind === "step") {
    for (const img of ui.row.querySelectorAll("img")) img.classList.remove("nested-last");
    const fig = document.createElement("figure");
    const img = document.createElement("img");
    const label = `outer step ${detail.step}/${detail.total} · ${detail.nfe} model evaluations`;
    img.src = detail.image;
    img.title = label;
    img.className = "nested-last";
    img.dataset.step = String(detail.step);
    img.addEventListener("click", () => zoom(img.src, label));
    const cap = document.createElement("figcaption");
    cap.textContent = String(detail.step);
    fig.append(img, cap);
    ui.row.appendChild(fig);
    ui.row.scrollLeft = ui.row.scrollWidth;
    ui.title.textContent = `Outer step ${detail.step}/${detail.total}: click a picture to enlarge`;
  } else if (detail.kind === "end") {
    const run = runs.get(node);
    if (run) run.running = false;
    ui.title.textContent = detail.stopped
      ? `Kept outer step ${detail.step}/${detail.total} (stopped); resume continues from here`
      : `Done: ${detail.step}/${detail.total} outer steps`;
    setButton(node, false);
  }
}

if (app && api) {
  app.registerExtension({
    name: "nested_split_elastic.anytime",
    nodeCreated(node) {
      if (node.comfyClass === "NestedKSampler") ensureUI(node);
    },
    setup() {
      api.addEventListener(EVENT, (e) => onEvent(e.detail));
    },
  });
}
