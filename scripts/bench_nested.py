"""Benchmark of NestedKSampler.

1. The anytime curve on the toy world (exact denoiser): Fréchet distance of every outer step's
   estimate vs a plain DDIM run's x0 estimate at the same NFE (no ComfyUI needed).
2. In a real ComfyUI (``COMFYUI_PATH`` or ~/ComfyUI, run with its python): wall time of the
   NestedKSampler node over a plain core ``KSampler`` at equal NFE on the same mock model
   (target <= 1.05), median of repeated runs.

    python scripts/bench_nested.py [--repeats 5] [--size 64]
"""
import argparse
import math
import os
import sys

import torch

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
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


def toy_curve():
    print("== anytime curve, toy world (class 'disc', exact denoiser, 4000 samples) ==")
    for outer, inner in ((4, 10), (10, 10), (5, 8)):
        _, _, fdn, fdp = anytime_curve(ToyWorld(), 1, outer, inner, 4000)
        print(f"Nested {outer}x{inner}: NFE " + " ".join(f"{(i + 1) * inner:>6}" for i in range(outer)))
        print("   Nested FD        " + " ".join(f"{v:6.3f}" for v in fdn))
        print("   plain DDIM x0 FD " + " ".join(f"{v:6.3f}" for v in fdp))
        print(f"   first estimate {fdp[0] / fdn[0]:.1f}x closer; final {fdn[-1]:.3f} vs plain final {fdp[-1]:.3f}")


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--repeats", type=int, default=9)
    ap.add_argument("--size", type=int, default=64, help="latent side (64 = 512 px)")
    ap.add_argument("--skip-toy", action="store_true")
    ap.add_argument("--skip-host", action="store_true")
    a = ap.parse_args()
    if not a.skip_toy:
        toy_curve()
    if not a.skip_host:
        import bench_host
        bench_host.run("nested", a.repeats, a.size)


if __name__ == "__main__":
    main()
