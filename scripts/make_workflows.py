"""Regenerate the shipped example workflows (UI format + API twins) from one description each.

Run with a ComfyUI environment (the node schemas are read from the real nodes, so widget order
and socket types always match; each template's thumbnail is a run of its nodes on the demo model):  COMFYUI_PATH=~/ComfyUI <comfy-python> scripts/make_workflows.py
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
import workflow_thumbs  # noqa: E402
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
                              "inner_sampler": "euler", "inner_scheduler": "official",
                              "outer_scheduler": "official_outer", "denoise": 1.0, "inner_eta": 0.85,
                              "outer_eta": 1.0, "time_budget": 0.0, "switch_at_outer_step": 0})
    graph[8] = ("VAEDecode", {"samples": L(5, 1), "vae": L(1, 2)})      # the anytime strip
    graph[9] = ("PreviewImage", {"images": L(8, 0)})
    graph[10] = note(NOTES["nested"])
    return graph


def split_graph(kind):
    sd15 = kind == "sd15"
    return text_to_image(kind, "split", "a red apple on a wooden table, studio light", 512 if sd15 else 1024,
                         512 if sd15 else 1024, "SplitGuidedSampler", {
                             "seed": 7, "steps": 15, "cfg": 9.0 if sd15 else 8.0, "scheduler": "split_respace",
                             "denoise": 1.0, "method": "ltsp4", "split_term": "cfg_delta", "split_base": "cond",
                             "eval_mode": "auto", "ab_coeffs": "variable", "final_step": "auto",
                             "guidance_scale": 1.0}) | {8: note(NOTES["split"])}


def elastic_graph(kind):
    sd15 = kind == "sd15"
    prompt = ("a panoramic photo of a mountain lake at sunrise, one lone boat" if sd15
              else "an astronaut riding a horse on the moon, detailed, photograph")
    return text_to_image(kind, "elastic", prompt, 1024 if sd15 else 2048, 512 if sd15 else 2048,
                         "ElasticLatentSampler", {
                             "vae": L(1, 2), "seed": 11, "steps": 30, "cfg": 10.0, "preset": "auto",
                             "resampling_steps": -1, "new_p": 0.3, "rrg_init_weight": -1.0, "cosine_scale": 10.0,
                             "rrg_stop_t": 0.4, "repaint": True, "patch_size": 0, "view_batch_size": 16,
                             "base_resolution": 0, "size_cond": "per_call", "mode": "clean"}) | {8: note(NOTES["elastic"])}


NESTED_KS = {"seed": 24, "outer_steps": 5, "inner_steps": 8, "cfg": 7.5, "inner_sampler": "euler",
             "inner_scheduler": "official", "outer_scheduler": "official_outer", "denoise": 1.0, "inner_eta": 0.85,
             "outer_eta": 1.0, "time_budget": 0.0, "switch_at_outer_step": 0}
NOTE = "Note"       # the frontend's own note node: in the UI file only, never in the API twin


def note(text):
    return (NOTE, {"text": text})


def custom_advanced(method, prompt, guider, sampler, sigmas, width=512, height=512, seed=5):
    """Checkpoint -> prompts -> guider 5 + sampler 6 + sigmas 7 + noise 8 -> SamplerCustomAdvanced 9 -> save."""
    return {
        1: ("CheckpointLoaderSimple", {"ckpt_name": "v1-5-pruned-emaonly-fp16.safetensors"}),
        2: ("CLIPTextEncode", {"text": prompt, "clip": L(1, 1)}),
        3: ("CLIPTextEncode", {"text": "blurry, low quality, watermark", "clip": L(1, 1)}),
        4: ("EmptyLatentImage", {"width": width, "height": height, "batch_size": 1}),
        5: guider, 6: sampler, 7: sigmas,
        8: ("RandomNoise", {"noise_seed": seed}),
        9: ("SamplerCustomAdvanced", {"noise": L(8, 0), "guider": L(5, 0), "sampler": L(6, 0), "sigmas": L(7, 0),
                                      "latent_image": L(4, 0)}),
        10: ("VAEDecode", {"samples": L(9, 0), "vae": L(1, 2)}),
        11: ("SaveImage", {"images": L(10, 0), "filename_prefix": f"{method}_custom_advanced"}),
    }


def cfg_guider(cfg):
    return ("CFGGuider", {"model": L(1, 0), "positive": L(2, 0), "negative": L(3, 0), "cfg": cfg})


def nested_custom_advanced():
    g = custom_advanced("nested", "a photograph of a bird nest on a branch", cfg_guider(7.0),
                        ("NestedSampler", {"inner_sampler": "euler", "inner_steps": 8,
                                           "inner_scheduler": "official", "inner_eta": 0.85, "outer_eta": 1.0,
                                           "inner_end": "zero"}),
                        ("NestedOfficialOuterScheduler", {"model": L(1, 0), "steps": 5}))
    g[12] = note("NestedSampler is the Nested method as a SAMPLER: any guider works (CFGGuider here). The "
                 "SIGMAS are the outer steps. While it runs, the anytime strip and the Stop & keep button "
                 "appear on the SamplerCustomAdvanced node; Stop & keep saves the current outer step's "
                 "picture. (Resume needs NestedKSampler.)")
    return g


def split_custom_advanced():
    g = custom_advanced("split", "a red apple on a wooden table, studio light", cfg_guider(9.0),
                        ("SplitSampler", {"method": "ltsp4", "split_term": "cfg_delta", "split_base": "cond",
                                          "eval_mode": "auto", "ab_coeffs": "variable", "final_step": "auto",
                                          "guidance_scale": 1.0}),
                        ("SplitRespace", {"model": L(1, 0), "steps": 12, "denoise": 1.0}), seed=7)
    g[12] = note("SplitSampler under SamplerCustomAdvanced with a plain CFGGuider: the guidance term "
                 "(cond - uncond) is taken first order, the base field high order. Compare with KSampler "
                 "at the same steps: at strong cfg and few steps high-order solvers over-saturate; this "
                 "one stays stable. SplitRespace is the paper's step grid.")
    return g


def elastic_guider_custom_advanced():
    guider = ("ElasticGuider", {"model": L(1, 0), "positive": L(2, 0), "negative": L(3, 0), "cfg": 10.0,
                                "vae": L(1, 2), "preset": "auto", "resampling_steps": -1, "new_p": 0.3,
                                "patch_size": 0, "view_batch_size": 16, "base_resolution": 0,
                                "size_cond": "per_call", "mode": "clean"})
    g = custom_advanced("elastic", "a panoramic photo of a mountain lake at sunrise, one lone boat", guider,
                        ("KSamplerSelect", {"sampler_name": "euler"}),
                        ("BasicScheduler", {"model": L(1, 0), "scheduler": "normal", "steps": 30, "denoise": 1.0}),
                        width=1024, height=512, seed=11)
    g[12] = note("ElasticGuider: the ElasticDiffusion guider for SamplerCustomAdvanced, so any sampler and "
                 "scheduler can be used. The global (class) direction is computed on a reference at the "
                 "model's training size, the local score on patches. Resampling and repaint need the "
                 "one-node ElasticLatentSampler.")
    return g


def nested_time_budget():
    g = text_to_image("sd15", "nested_budget", "a lighthouse on a cliff at dusk", 512, 512, "NestedKSampler",
                      dict(NESTED_KS, outer_steps=10, time_budget=30.0, seed=31))
    g[8] = ("VAEDecode", {"samples": L(5, 1), "vae": L(1, 2)})
    g[9] = ("PreviewImage", {"images": L(8, 0)})
    g[10] = note("time_budget = 30 s: after the outer step in which 30 seconds have passed, the node returns "
                 "the latest complete picture as its result, so Save Image always gets a usable image in "
                 "about that time. 10 outer steps is the most it will do. The strip preview shows every "
                 "step it finished.")
    return g


def nested_prompt_switch():
    g = text_to_image("sd15", "nested_switch", "a wooden cabin in a snowy forest", 512, 512, "NestedKSampler",
                      dict(NESTED_KS, outer_steps=6, switch_at_outer_step=3, seed=40,
                           positive_2=L(10, 0)))
    g[10] = ("CLIPTextEncode", {"text": "a wooden cabin in a snowy forest at night, warm lit windows", "clip": L(1, 1)})
    g[8] = ("VAEDecode", {"samples": L(5, 1), "vae": L(1, 2)})
    g[9] = ("PreviewImage", {"images": L(8, 0)})
    g[11] = note("The paper's user intervention: outer steps 0-2 follow the first prompt; from outer step 3 "
                 "on, positive_2 takes over (negative_2 defaults to the negative). The first three pictures "
                 "of the strip are identical to a run without the switch.")
    return g


def nested_resume():
    g = text_to_image("sd15", "nested_resume", "a photograph of a nest with a blue egg inside", 512, 512,
                      "NestedKSampler", dict(NESTED_KS, outer_steps=8))
    g[10] = ("NestedKSampler", {"model": L(1, 0), "positive": L(2, 0), "negative": L(3, 0), "latent_image": L(4, 0),
                                **NESTED_KS, "outer_steps": 8, "resume": L(5, 0)})
    g[6] = ("VAEDecode", {"samples": L(10, 0), "vae": L(1, 2)})
    g[8] = ("VAEDecode", {"samples": L(5, 0), "vae": L(1, 2)})
    g[9] = ("PreviewImage", {"images": L(8, 0)})
    g[11] = note("Resume: press Stop & keep on the first NestedKSampler when its strip looks promising (or "
                 "set its time_budget). Its picture shows in the preview. Queue again: the first node is "
                 "cached, the second continues from the outer step where the first stopped. The result "
                 "equals an uninterrupted run bit for bit. Change the second node's prompt to steer the "
                 "rest of the run. Seed, steps, schedulers, denoise and latent must match.")
    return g


GRAPHS = {
    "elastic_sd15_wide": lambda: elastic_graph("sd15"),
    "elastic_sdxl_2048": lambda: elastic_graph("sdxl"),
    "elastic_guider_custom_advanced": elastic_guider_custom_advanced,
    "nested_sd15": lambda: nested_graph("sd15"),
    "nested_sdxl": lambda: nested_graph("sdxl"),
    "nested_custom_advanced": nested_custom_advanced,
    "nested_time_budget": nested_time_budget,
    "nested_prompt_switch": nested_prompt_switch,
    "nested_resume": nested_resume,
    "split_sd15": lambda: split_graph("sd15"),
    "split_sdxl": lambda: split_graph("sdxl"),
    "split_custom_advanced": split_custom_advanced,
}

NOTES = {
    "nested": "Watch the strip under the sampler's widgets: one picture per outer step. Press Stop & keep "
              "when it is good enough: the node returns that picture and VAE Decode + Save Image still run. "
              "'intermediates' decodes to every outer step's picture.",
    "split": "SplitGuidedSampler at strong cfg and few steps: the guidance term is taken first order, the "
             "model's own field high order (ltsp4). A step costs 1.5 KSampler steps (one CFG call plus one "
             "cond-only pass). Compare with KSampler dpmpp_2m at the same steps, or euler at 1.5x the steps.",
    "elastic": "ElasticLatentSampler: a size the model was not trained at. The global composition comes from "
               "a reference at the training size, details from patches, so the subject is drawn once, not "
               "repeated. It costs several times a KSampler run at that size.",
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
        if ct == NOTE:
            height = 60 + 18 * (len(values["text"]) // 44 + 1)
            y = col_y.get(col[nid], 60)
            col_y[col[nid]] = y + height + 50
            nodes.append({"id": nid, "type": NOTE, "pos": [40 + 440 * col[nid], y], "size": [400, height],
                          "flags": {}, "order": n, "mode": 0, "inputs": [], "outputs": [], "properties": {},
                          "widgets_values": [values["text"]], "color": "#432", "bgcolor": "#653"})
            continue
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
        workflow_thumbs.thumbnail(host, name, api, os.path.join(ROOT, "workflows", f"{name}.jpg"))
        print("wrote", name)


if __name__ == "__main__":
    main()
