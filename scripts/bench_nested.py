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
import statistics
import sys
import time

import torch

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
from demo import anytime_curve  # noqa: E402
from nse.samplers.toy import ToyWorld  # noqa: E402


def toy_curve():
    print("== anytime curve, toy world (class 'disc', exact denoiser, 4000 samples) ==")
    for outer, inner in ((4, 10), (10, 10), (5, 8)):
        _, _, fdn, fdp = anytime_curve(ToyWorld(), 1, outer, inner, 4000)
        print(f"Nested {outer}x{inner}: NFE " + " ".join(f"{(i + 1) * inner:>6}" for i in range(outer)))
        print("   Nested FD        " + " ".join(f"{v:6.3f}" for v in fdn))
        print("   plain DDIM x0 FD " + " ".join(f"{v:6.3f}" for v in fdp))
        print(f"   first estimate {fdp[0] / fdn[0]:.1f}x closer; final {fdn[-1]:.3f} vs plain final {fdp[-1]:.3f}")


def host_timing(repeats, size, outer, inner):
    sys.path.insert(0, os.path.join(os.path.dirname(HERE), "tests", "host"))
    import comfy_host
    path, reason = comfy_host.find_comfy()
    if path is None:
        print(f"== host timing skipped: {reason}")
        return
    try:
        host = comfy_host.Host(path)
    except ImportError as e:
        print(f"== host timing skipped: ComfyUI at {path} is not importable with this python ({e})")
        return
    from mock_models import make_cond, make_model
    import comfy.utils
    comfy.utils.PROGRESS_BAR_ENABLED = False          # no console bar in the timed region
    model = make_model("sd15", heavy=True)
    pos, neg = make_cond("sd15", 0.7), make_cond("sd15", -0.3)
    lat = {"samples": torch.zeros(1, 4, size, size)}
    ks, nk = host.node("KSampler"), host.node("NestedKSampler")

    def run_plain():
        return ks().sample(model, 1, outer * inner, 5.0, "euler", "normal", pos, neg, lat, denoise=1.0)

    def run_nested():
        return nk.execute(model=model, positive=pos, negative=neg, latent_image=lat, seed=1, outer_steps=outer,
                          inner_steps=inner, cfg=5.0, inner_sampler="euler_ancestral", inner_scheduler="official",
                          outer_scheduler="official_outer", denoise=1.0, inner_eta=0.85, outer_eta=1.0,
                          time_budget=0.0, switch_at_outer_step=0)

    run_plain(), run_nested()            # warm-up (model load, caches)
    tp, tn = [], []
    for _ in range(repeats):
        for fn, acc in ((run_plain, tp), (run_nested, tn)):
            t = time.perf_counter()
            fn()
            acc.append(time.perf_counter() - t)
    mp, mn = statistics.median(tp), statistics.median(tn)
    print(f"== host timing: ComfyUI {host.version}, mock SD1.5-like model (heavy), latent 1x4x{size}x{size}, "
          f"cfg 5, {outer * inner} NFE each, median of {repeats} ==")
    print(f"KSampler euler {outer * inner} steps: {mp * 1000:8.1f} ms")
    print(f"NestedKSampler {outer}x{inner}:        {mn * 1000:8.1f} ms")
    print(f"ratio Nested / KSampler: {mn / mp:.3f}  (target <= 1.05)")


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--size", type=int, default=64, help="latent side (64 = 512 px)")
    ap.add_argument("--outer", type=int, default=5)
    ap.add_argument("--inner", type=int, default=8)
    ap.add_argument("--skip-toy", action="store_true")
    a = ap.parse_args()
    if not a.skip_toy:
        toy_curve()
    host_timing(a.repeats, a.size, a.outer, a.inner)


if __name__ == "__main__":
    main()
