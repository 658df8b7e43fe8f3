"""The main job on the embedded default (no ComfyUI, no downloads).

Runs NestedKSampler's algorithm on the analytic toy world (a class-conditional mixture of small
RGB images with an exact denoiser), writes the anytime preview strip next to a plain DDIM
sampler's x0 previews at equal NFE as PNGs, and prints the quality numbers (Fréchet distance to
the true class distribution after every outer step).

    python scripts/demo.py [--outer 5] [--inner 8] [--out out/]
"""
import argparse
import math
import os
import sys

import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from _pack import load_pack  # noqa: E402

nse = load_pack()
from nse.samplers import nested  # noqa: E402
from nse.samplers.common import DiscreteSchedule, sample_euler  # noqa: E402
from nse.samplers.worlds.mixture import ToyDenoiser, ToyWorld, frechet_distance  # noqa: E402


def anytime_curve(world, class_id, outer, inner, n, seed=0, cfg=1.0, outer_eta=1.0):
    """Per-outer-step x0 of Nested and of plain DDIM at the same NFE, plus their FD to the class data."""
    ms = DiscreteSchedule()
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, *world.shape, generator=g, dtype=torch.float64) * math.sqrt(1 + float(ms.sigma_max) ** 2)
    previews = []
    nested.sample_nested(ToyDenoiser(world, class_id, cfg=cfg), x, nested.official_outer_sigmas(ms, outer),
                         extra_args={"seed": seed}, model_sampling=ms, inner_steps=inner, outer_eta=outer_eta,
                         collect=previews)
    plain_x0 = []
    sample_euler(ToyDenoiser(world, class_id, cfg=cfg), x, nested.official_outer_sigmas(ms, outer * inner),
                 callback=lambda d: plain_x0.append(d["denoised"]))
    plain = [plain_x0[(i + 1) * inner - 1] for i in range(outer)]
    ref = world.sample(max(4 * n, 8000), class_id, torch.Generator().manual_seed(12345))
    fd_nested = [frechet_distance(p, ref) for p in previews]
    fd_plain = [frechet_distance(p, ref) for p in plain]
    return previews, plain, fd_nested, fd_plain


def to_image(batch, scale=6):
    """[B,3,h,w] in [-1,1] -> PIL image, samples side by side."""
    from PIL import Image
    x = ((batch.clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8)
    x = torch.nn.functional.interpolate(x.float(), scale_factor=scale, mode="nearest").to(torch.uint8)
    b, c, h, w = x.shape
    pad = 2
    canvas = torch.full((3, h, b * (w + pad) - pad), 255, dtype=torch.uint8)
    for i in range(b):
        canvas[:, :, i * (w + pad): i * (w + pad) + w] = x[i]
    return Image.fromarray(canvas.permute(1, 2, 0).numpy())


def strip(rows, labels, scale=6):
    """Rows of images (one row per outer step) -> one PIL image."""
    from PIL import Image, ImageDraw
    imgs = [to_image(r, scale) for r in rows]
    w = max(i.width for i in imgs) + 150
    h = sum(i.height + 6 for i in imgs)
    out = Image.new("RGB", (w, h), "white")
    y = 0
    d = ImageDraw.Draw(out)
    for im, lab in zip(imgs, labels):
        d.text((4, y + im.height // 2 - 6), lab, fill="black")
        out.paste(im, (150, y))
        y += im.height + 6
    return out


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--outer", type=int, default=5)
    ap.add_argument("--inner", type=int, default=8)
    ap.add_argument("--samples", type=int, default=4000, help="samples used for the quality numbers")
    ap.add_argument("--show", type=int, default=8, help="samples shown per row in the PNGs")
    ap.add_argument("--class-id", type=int, default=1)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out", default="out")
    a = ap.parse_args()
    world = ToyWorld()
    previews, plain, fdn, fdp = anytime_curve(world, a.class_id, a.outer, a.inner, a.samples, a.seed)
    os.makedirs(a.out, exist_ok=True)
    labels = [f"{(i + 1) * a.inner} NFE" for i in range(a.outer)]
    strip([p[:a.show] for p in previews], labels).save(os.path.join(a.out, "nested_anytime.png"))
    strip([p[:a.show] for p in plain], labels).save(os.path.join(a.out, "plain_ddim_x0.png"))
    data = world.sample(a.show, a.class_id, torch.Generator().manual_seed(7))
    to_image(data).save(os.path.join(a.out, "toy_world_data.png"))
    print(f"toy world: class '{world.class_names[a.class_id]}', {a.samples} samples, Nested {a.outer} outer x "
          f"{a.inner} inner vs plain DDIM {a.outer * a.inner} steps (exact denoiser)")
    print(f"{'NFE':>5} {'Nested FD':>10} {'plain x0 FD':>12} {'ratio':>7}")
    for i in range(a.outer):
        print(f"{(i + 1) * a.inner:>5} {fdn[i]:>10.4f} {fdp[i]:>12.4f} {fdp[i] / max(fdn[i], 1e-12):>7.1f}x")
    print(f"wrote {a.out}/nested_anytime.png, {a.out}/plain_ddim_x0.png, {a.out}/toy_world_data.png")


if __name__ == "__main__":
    main()
