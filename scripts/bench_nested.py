"""Benchmark of NestedKSampler.

1. The anytime curve on the toy world (exact denoiser): Fréchet distance of every outer step's
   estimate vs a plain DDIM run's x0 estimate at the same NFE (no ComfyUI needed).
2. In a real ComfyUI (``COMFYUI_PATH`` or ~/ComfyUI, run with its python): wall time of the
   NestedKSampler node over a plain core ``KSampler`` at equal NFE on the same mock model
   (target <= 1.05), median of repeated runs.

    python scripts/bench_nested.py [--repeats 5] [--size 64]
"""
import argparse
import os
import sys

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
from demo import anytime_curve  # noqa: E402
from nse.samplers.worlds.mixture import ToyWorld  # noqa: E402


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
