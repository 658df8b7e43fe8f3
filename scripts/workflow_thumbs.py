"""Template thumbnails from real runs of each workflow's own nodes, on the learned demo model.

The workflow's API twin is run in ComfyUI with the test-only demo checkpoint (``tests/host``) in
place of the real one: the same pack nodes, settings and graph, at the demo model's scale (its
training size 32 px stands for the checkpoint's training size).  The prompt gets one of the demo's
object names, so every template shows its own object.  Used by ``make_workflows.py``.
"""
import copy

import torch

#: the demo object each template asks for (no two templates look alike)
OBJECT = {"nested_sd15": "disc", "nested_sdxl": "ring", "nested_custom_advanced": "cross",
          "nested_time_budget": "triangle", "nested_prompt_switch": "square", "nested_resume": "ring",
          "split_sd15": "square", "split_sdxl": "triangle", "split_custom_advanced": "disc",
          "elastic_sd15_wide": "ring", "elastic_sdxl_2048": "cross", "elastic_guider_custom_advanced": "square"}
SWITCH_OBJECT = "cross"
DEMO_SIZE = 256                 # EmptyLatentImage pixels of one 32 x 32 demo picture


def demo_prompt(name, api):
    """The API prompt on the demo model, and {decode node id: the latent link it decodes}."""
    p = copy.deepcopy(api)
    scale = DEMO_SIZE / (1024 if "sdxl" in name else 512)
    decodes = {}
    for nid, node in list(p.items()):
        ct, inp = node["class_type"], node["inputs"]
        if ct == "CheckpointLoaderSimple":
            node.update(class_type="NSETestDemoCheckpoint", inputs={"ckpt_name": "demo", "trained": True})
        elif ct == "CLIPTextEncode":
            node["class_type"] = "NSETestMockTextEncode"
            if "low quality" not in inp["text"]:
                word = SWITCH_OBJECT if "night" in inp["text"] else OBJECT[name]
                inp["text"] = f"a {word}; {inp['text']}"
        elif ct == "EmptyLatentImage":
            inp["width"], inp["height"] = int(inp["width"] * scale), int(inp["height"] * scale)
        elif ct in ("ElasticLatentSampler", "ElasticGuider"):
            inp["base_resolution"] = DEMO_SIZE
        elif ct == "VAEDecode":
            node["class_type"] = "NSETestMockVAEDecode"
            decodes[nid] = inp["samples"]
        elif ct == "SaveImage":
            node["class_type"] = "PreviewImage"
            inp.pop("filename_prefix", None)
    if name == "nested_resume":            # the first run stops after its first outer step, the second resumes
        p["5"]["inputs"]["time_budget"] = 1e-9
    for nid, link in decodes.items():
        p[f"cap{nid}"] = {"class_type": "NSETestCapture", "inputs": {"samples": link, "tag": nid}}
    return p, decodes


def run_pictures(host, name, api):
    """[(label, [pictures [3, h, w] in -1..1])] of one run: the saved image last."""
    import mock_models
    prompt, decodes = demo_prompt(name, api)
    mock_models.CAPTURED.clear()
    host.run_prompt(prompt)
    saved = {n["inputs"]["images"][0] for n in api.values() if n["class_type"] == "SaveImage"}
    rows = []
    for nid in sorted(decodes, key=lambda n: (n in saved, int(n))):
        x = mock_models.CAPTURED[nid]["samples"].float()
        rows.append(("saved" if nid in saved else "preview", [x[i] for i in range(x.shape[0])]))
    return rows


def to_pil(x, height):
    from PIL import Image
    a = ((x.clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8).permute(1, 2, 0).numpy()
    im = Image.fromarray(a)
    return im.resize((max(1, round(im.width * height / im.height)), height), Image.NEAREST)


def thumbnail(host, name, api, path):
    """A 400 x 220 JPEG: the template's name and the pictures its nodes made on the demo model."""
    from PIL import Image, ImageDraw, ImageFont
    rows = run_pictures(host, name, api)
    img = Image.new("RGB", (400, 220), (24, 26, 32))
    d = ImageDraw.Draw(img)
    try:
        big, small = ImageFont.load_default(size=20), ImageFont.load_default(size=12)
    except TypeError:                      # older Pillow: fixed-size bitmap font
        big = small = ImageFont.load_default()
    d.text((14, 10), name.replace("_", " ").upper(), fill=(235, 235, 235), font=big)
    d.text((14, 38), "pictures from a run of these nodes on the demo model", fill=(150, 170, 200), font=small)
    pics = [p for _, row in rows[:-1] for p in row][-8:]
    final = rows[-1][1][0]
    x0, y0 = 14, 62
    if pics:
        h = 60 if len(pics) <= 5 else 44
        for p in pics:
            tile = to_pil(p, h)
            if x0 + tile.width > 386:
                break
            img.paste(tile, (x0, y0))
            x0 += tile.width + 4
        y0 += h + 8
        x0 = 14
    tile = to_pil(final, 220 - y0 - 10)
    if tile.width > 372:
        tile = to_pil(final, max(8, round((220 - y0 - 10) * 372 / tile.width)))
    img.paste(tile, (x0, y0))
    img.save(path, "JPEG", quality=88)
