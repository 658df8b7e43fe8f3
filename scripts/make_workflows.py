"""Regenerate the shipped example workflows (UI format + API twins) from one description each.

Run with a ComfyUI environment (the node schemas are read from the real nodes, so widget order
and socket types always match):  COMFYUI_PATH=~/ComfyUI <comfy-python> scripts/make_workflows.py
"""
import json
import os
import sys
import uuid

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
sys.path.insert(0, os.path.join(ROOT, "tests", "host"))
sys.path.insert(0, HERE)

import comfy_host  # noqa: E402
from _pack import load_pack  # noqa: E402

load_pack()

WIDGET_TYPES = {"INT", "FLOAT", "STRING", "BOOLEAN", "COMBO"}
L = lambda node, slot: ("link", node, slot)  # noqa: E731


def text_to_image(kind, method, prompt, width, height, sampler_type, sampler_inputs):
    """Checkpoint -> prompts -> empty latent -> node 5 (the pack's sampler) -> VAE decode -> save."""
    ckpt = "v1-5-pruned-emaonly-fp16.safetensors" if kind == "sd15" else "sd_xl_base_1.0.safetensors"
    return {
        1: ("CheckpointLoaderSimple", {"ckpt_name": ckpt}),
        2: ("CLIPTextEncode", {"text": prompt, "clip": L(1, 1)}),
        3: ("CLIPTextEncode", {"text": "blurry, low quality, watermark", "clip": L(1, 1)}),
        4: ("EmptyLatentImage", {"width": width, "height": height, "batch_size": 1}),
        5: (sampler_type, {"model": L(1, 0), "positive": L(2, 0), "negative": L(3, 0), "latent_image": L(4, 0),
                           **sampler_inputs}),
        6: ("VAEDecode", {"samples": L(5, 0), "vae": L(1, 2)}),
        7: ("SaveImage", {"images": L(6, 0), "filename_prefix": f"{method}_{kind}"}),
    }


def nested_graph(kind):
    sd15 = kind == "sd15"
    graph = text_to_image(kind, "nested", "a photograph of a nest with a blue egg inside", 512 if sd15 else 1024,
                          512 if sd15 else 1024, "NestedKSampler", {
                              "seed": 24, "outer_steps": 5, "inner_steps": 8, "cfg": 7.5 if sd15 else 7.0,
                              "inner_sampler": "euler_ancestral", "inner_scheduler": "official",
                              "outer_scheduler": "official_outer", "denoise": 1.0, "inner_eta": 0.85,
                              "outer_eta": 1.0, "time_budget": 0.0, "switch_at_outer_step": 0})
    graph[8] = ("VAEDecode", {"samples": L(5, 1), "vae": L(1, 2)})      # the anytime strip
    graph[9] = ("PreviewImage", {"images": L(8, 0)})
    return graph


def split_graph(kind):
    sd15 = kind == "sd15"
    return text_to_image(kind, "split", "a red apple on a wooden table, studio light", 512 if sd15 else 1024,
                         512 if sd15 else 1024, "SplitGuidedSampler", {
                             "seed": 7, "steps": 15, "cfg": 9.0 if sd15 else 8.0, "scheduler": "split_respace",
                             "denoise": 1.0, "method": "ltsp4", "split_term": "cfg_delta", "split_base": "cond",
                             "eval_mode": "auto", "ab_coeffs": "fixed", "final_step": "auto",
                             "guidance_scale": 1.0})


def elastic_graph(kind):
    sd15 = kind == "sd15"
    prompt = ("a panoramic photo of a mountain lake at sunrise, one lone boat" if sd15
              else "an astronaut riding a horse on the moon, detailed, photograph")
    return text_to_image(kind, "elastic", prompt, 1024 if sd15 else 2048, 512 if sd15 else 2048,
                         "ElasticLatentSampler", {
                             "vae": L(1, 2), "seed": 11, "steps": 30, "cfg": 10.0, "preset": "auto",
                             "resampling_steps": -1, "new_p": 0.3, "rrg_init_weight": -1.0, "cosine_scale": 10.0,
                             "rrg_stop_t": 0.4, "repaint": True, "patch_size": 0, "view_batch_size": 16,
                             "base_resolution": 0, "size_cond": "per_call", "mode": "clean"})


GRAPHS = {
    "elastic_sd15_wide": lambda: elastic_graph("sd15"),
    "elastic_sdxl_2048": lambda: elastic_graph("sdxl"),
    "nested_sd15": lambda: nested_graph("sd15"),
    "nested_sdxl": lambda: nested_graph("sdxl"),
    "split_sd15": lambda: split_graph("sd15"),
    "split_sdxl": lambda: split_graph("sdxl"),
}


def input_specs(cls):
    """[(name, type, options, optional)] in the order the frontend lays them out."""
    info = cls.INPUT_TYPES()
    out = []
    for section, optional in (("required", False), ("optional", True)):
        for name, spec in (info.get(section) or {}).items():
            typ = spec[0]
            opts = spec[1] if len(spec) > 1 else {}
            if isinstance(typ, list):
                opts = dict(opts, options=typ)
                typ = "COMBO"
            out.append((name, typ, opts or {}, optional))
    return out


def is_widget(typ, opts):
    return typ in WIDGET_TYPES and not opts.get("forceInput")


def node_height(n_sockets, n_outputs, n_widgets):
    """Height the frontend gives a node: title, socket rows, one row per widget (approximate, generous)."""
    return 36 + 22 * max(n_sockets, n_outputs) + 26 * n_widgets + 12


def depths(graph):
    """Column of every node: the longest link path from a source node."""
    memo = {}

    def d(nid):
        if nid not in memo:
            srcs = [v[1] for v in graph[nid][1].values() if isinstance(v, tuple)]
            memo[nid] = 0 if not srcs else 1 + max(d(s) for s in srcs)
        return memo[nid]

    return {nid: d(nid) for nid in graph}


def build(name, graph, host):
    nodes, links, api = [], [], {}
    link_id = 0
    out_links = {}            # (node, slot) -> [link ids]
    order = sorted(graph)
    col = depths(graph)
    col_y = {}
    for n, nid in enumerate(order):
        ct, values = graph[nid]
        cls = host.node(ct)
        inputs, widgets, api_inputs = [], [], {}
        rows = 0
        for iname, typ, opts, optional in input_specs(cls):
            v = values.get(iname)
            if is_widget(typ, opts):
                rows += 5 if opts.get("multiline") else 1
                if v is None:
                    v = opts.get("default", (opts.get("options") or [None])[0])
                widgets.append(v)
                if opts.get("control_after_generate"):
                    widgets.append("fixed")
                    rows += 1
                api_inputs[iname] = v
            else:
                entry = {"name": iname, "type": typ, "link": None}
                if isinstance(v, tuple):
                    link_id += 1
                    src, slot = v[1], v[2]
                    src_type = host.node(graph[src][0]).RETURN_TYPES[slot]
                    links.append([link_id, src, slot, nid, len(inputs), src_type])
                    out_links.setdefault((src, slot), []).append(link_id)
                    entry["link"] = link_id
                    api_inputs[iname] = [str(src), slot]
                inputs.append(entry)
        names = getattr(cls, "RETURN_NAMES", None) or cls.RETURN_TYPES
        outputs = [{"name": names[i], "type": t, "links": [], "slot_index": i} for i, t in enumerate(cls.RETURN_TYPES)]
        width = 380 if len(widgets) > 6 else 320
        height = node_height(len(inputs), len(outputs), rows)
        if ct in ("PreviewImage", "SaveImage"):
            height = max(height, 300)
        y = col_y.get(col[nid], 60)
        col_y[col[nid]] = y + height + 50
        nodes.append({"id": nid, "type": ct, "pos": [40 + 440 * col[nid], y], "size": [width, height],
                      "flags": {}, "order": n, "mode": 0, "inputs": inputs, "outputs": outputs,
                      "properties": {"Node name for S&R": ct}, "widgets_values": widgets})
        api[str(nid)] = {"class_type": ct, "inputs": api_inputs, "_meta": {"title": ct}}
    for node in nodes:
        for o in node["outputs"]:
            o["links"] = out_links.get((node["id"], o["slot_index"]), [])
    ui = {"id": str(uuid.uuid5(uuid.NAMESPACE_URL, f"nested-split-elastic/workflows/{name}")), "revision": 0,
          "last_node_id": max(order), "last_link_id": link_id, "nodes": nodes,
          "links": links, "groups": [], "config": {}, "extra": {"ds": {"scale": 0.8, "offset": [0, 0]}},
          "version": 0.4}
    return ui, api


def thumbnail(name, path):
    """A small template thumbnail: the method's name over toy-world images (no weights needed)."""
    import torch
    from PIL import Image, ImageDraw
    sys.path.insert(0, HERE)
    from demo import anytime_curve, to_image
    from nse.samplers.worlds.mixture import ToyWorld
    world = ToyWorld()
    cls = {"nested": 1, "split": 2, "elastic": 0}[name.split("_")[0]]
    previews, _, _, _ = anytime_curve(world, cls, 4, 6, 64, seed=3)
    strip = to_image(torch.cat([p[:1] for p in previews]), scale=9)
    img = Image.new("RGB", (400, 220), (24, 26, 32))
    img.paste(strip.resize((360, int(360 * strip.height / strip.width))), (20, 80))
    d = ImageDraw.Draw(img)
    from PIL import ImageFont
    try:
        big, small = ImageFont.load_default(size=26), ImageFont.load_default(size=16)
    except TypeError:                      # older Pillow: fixed-size bitmap font
        big = small = ImageFont.load_default()
    method, model = name.split("_")[0], name.split("_")[1]
    d.text((20, 16), method.upper(), fill=(235, 235, 235), font=big)
    d.text((20, 50), model.upper(), fill=(150, 170, 200), font=small)
    img.save(path, "JPEG", quality=85)


def main():
    path, reason = comfy_host.find_comfy()
    if path is None:
        sys.exit(reason)
    host = comfy_host.Host(path)
    os.makedirs(os.path.join(ROOT, "workflows", "api"), exist_ok=True)
    for name, make in GRAPHS.items():
        ui, api = build(name, make(), host)
        with open(os.path.join(ROOT, "workflows", f"{name}.json"), "w") as f:
            json.dump(ui, f, indent=2)
            f.write("\n")
        with open(os.path.join(ROOT, "workflows", "api", f"{name}.json"), "w") as f:
            json.dump(api, f, indent=2)
            f.write("\n")
        thumbnail(name, os.path.join(ROOT, "workflows", f"{name}.jpg"))
        print("wrote", name)


if __name__ == "__main__":
    main()
