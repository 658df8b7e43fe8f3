"""Wall-time benchmarks of the pack's one-node samplers against core KSampler in a real ComfyUI.

Same mock model (a real ModelPatcher around a heavier conv net), same latent, equal model
evaluations; medians of interleaved repeats.  Run with ComfyUI's python:

    COMFYUI_PATH=~/ComfyUI <comfy-python> scripts/bench_host.py [--repeats 5] [--size 64]
"""
import argparse
import os
import statistics
import sys
import time

import torch

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.join(os.path.dirname(HERE), "tests", "host"))


def load_host():
    import comfy_host
    path, reason = comfy_host.find_comfy()
    if path is None:
        print(f"== host timing skipped: {reason}")
        return None
    try:
        return comfy_host.Host(path)
    except ImportError as e:
        print(f"== host timing skipped: ComfyUI at {path} is not importable with this python ({e})")
        return None


def timed(fns, repeats):
    for fn in fns.values():
        fn()                                     # warm-up: model load, caches
    acc = {k: [] for k in fns}
    for _ in range(repeats):
        for k, fn in fns.items():
            t = time.perf_counter()
            fn()
            acc[k].append(time.perf_counter() - t)
    return {k: (statistics.median(v), min(v)) for k, v in acc.items()}


def bench_nested(host, model, pos, neg, lat, repeats, outer=5, inner=8):
    ks, nk = host.node("KSampler"), host.node("NestedKSampler")
    t = timed({
        "plain": lambda: ks().sample(model, 1, outer * inner, 5.0, "euler", "normal", pos, neg, lat, denoise=1.0),
        "nested": lambda: nk.execute(model=model, positive=pos, negative=neg, latent_image=lat, seed=1,
                                     outer_steps=outer, inner_steps=inner, cfg=5.0, inner_sampler="euler",
                                     inner_scheduler="official", outer_scheduler="official_outer", denoise=1.0,
                                     inner_eta=0.85, outer_eta=1.0, time_budget=0.0, switch_at_outer_step=0),
    }, repeats)
    (mn, bn), (mp, bp) = t["nested"], t["plain"]
    print(f"NestedKSampler {outer}x{inner} vs KSampler euler {outer * inner} steps (equal NFE): median "
          f"{mn * 1000:.0f} vs {mp * 1000:.0f} ms, ratio {mn / mp:.3f}; best {bn * 1000:.0f} vs {bp * 1000:.0f} ms, "
          f"ratio {bn / bp:.3f} (target <= 1.05)")
    return mn / mp


def bench_split(host, model, pos, neg, lat, repeats, steps=20):
    """Per-step wall time of SplitGuidedSampler (default sequential evaluation, and shared) over KSampler."""
    ks, sg = host.node("KSampler"), host.node("SplitGuidedSampler")
    run = lambda method, mode: sg.execute(model=model, positive=pos, negative=neg, latent_image=lat,  # noqa: E731
                                          seed=1, steps=steps, cfg=5.0, scheduler="normal", denoise=1.0,
                                          method=method, split_term="cfg_delta", split_base="cond", eval_mode=mode,
                                          ab_coeffs="variable", final_step="auto", guidance_scale=1.0)
    runs = {"ltsp4 auto (sequential, default)": ("ltsp4", "auto"), "ltsp4 shared": ("ltsp4", "shared"),
            "ltsp2 shared": ("ltsp2", "shared")}
    fns = {"euler": lambda: ks().sample(model, 1, steps, 5.0, "euler", "normal", pos, neg, lat, denoise=1.0)}
    fns.update({k: (lambda m=m, e=e: run(m, e)) for k, (m, e) in runs.items()})
    t = timed(fns, repeats)
    for k in runs:
        (ms_, bs_), (me, be) = t[k], t["euler"]
        print(f"SplitGuidedSampler {k} vs KSampler euler, {steps} steps: median {ms_ / steps * 1000:.1f} vs "
              f"{me / steps * 1000:.1f} ms/step, ratio {ms_ / me:.3f}; best ratio {bs_ / be:.3f} "
              f"(target: 1.5 for sequential = 3 passes / 2, else <= 1.05)")
    return t["ltsp4 shared"][0] / t["euler"][0]


def bench_elastic(host, model, pos, neg, repeats, steps=3, side=128):
    """ElasticLatentSampler's machinery at 2x the base size in the real host: batched (view_batch_size 16,
    all reference rounds in one call) vs one call per reference round and per patch (the official
    call pattern), same rows.  Also reports calls and rows per step from the mock net."""
    import comfy.samplers
    mod = host.pack_module("nodes.elastic_nodes")
    guider_mod = host.pack_module("nodes.elastic_guider")
    sampling = host.pack_module("nodes.sampling")
    lat = {"samples": torch.zeros(1, 4, side, side)}
    sigmas = comfy.samplers.calculate_sigmas(model.get_model_object("model_sampling"), "ddim_uniform", steps)

    def run(vbs, rbs):
        g = guider_mod.ElasticCFGGuider(model, 64, "per_call", preset="auto", view_batch_size=vbs, ref_batch_size=rbs)
        g.set_conds(pos, neg)
        g.set_cfg(7.0)
        sampler = comfy.samplers.KSAMPLER(mod.sample_elastic_comfy, extra_options={"guider": g})
        return sampling.run_guider(g, model, lat, sampler, sigmas, 1)

    calls = model.model.diffusion_model.calls
    counts = {}
    for name, args in (("batched", (16, 0)), ("sequential", (1, 1))):
        del calls[:]
        run(*args)
        counts[name] = (len(calls) / (len(sigmas) - 1), sum(c["shape"][0] for c in calls) / (len(sigmas) - 1))
    t = timed({"batched": lambda: run(16, 0), "sequential": lambda: run(1, 1)}, repeats)
    n = len(sigmas) - 1
    print(f"ElasticLatentSampler machinery, {side * 8}x{side * 8} px on a 512-px model (2x), R=10: "
          f"batched {counts['batched'][0]:.1f} calls / {counts['batched'][1]:.0f} rows per step, "
          f"{t['batched'][0] / n * 1000:.0f} ms/step; official call pattern {counts['sequential'][0]:.1f} calls / "
          f"{counts['sequential'][1]:.0f} rows, {t['sequential'][0] / n * 1000:.0f} ms/step; ratio "
          f"{t['batched'][0] / t['sequential'][0]:.2f} (target <= 0.5 on a GPU)")


#: ComfyUI's unet config of SD1.x (what its model detection finds in an SD1.5 checkpoint)
SD15_UNET = {"use_checkpoint": False, "image_size": 32, "out_channels": 4, "use_spatial_transformer": True,
             "legacy": False, "adm_in_channels": None, "in_channels": 4, "model_channels": 320,
             "num_res_blocks": [2, 2, 2, 2], "transformer_depth": [1, 1, 1, 1, 1, 1, 0, 0],
             "channel_mult": [1, 2, 4, 4], "transformer_depth_middle": 1, "use_linear_in_transformer": False,
             "context_dim": 768, "num_heads": 8, "transformer_depth_output": [1, 1, 1, 1, 1, 1, 1, 1, 1, 0, 0, 0],
             "use_temporal_resblock": False, "use_temporal_attention": False}


def make_sd15_unet():
    """The real SD1.5 UNet architecture (860 M parameters) with random weights, as a ModelPatcher on the CPU:
    what a model call costs in ComfyUI, without a checkpoint download (the pictures are noise)."""
    import comfy.model_patcher
    import comfy.supported_models
    cpu = torch.device("cpu")
    m = comfy.supported_models.SD15(dict(SD15_UNET)).get_model({}, "", device=cpu)
    g = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for p in m.parameters():
            p.copy_(torch.randn(p.shape, generator=g) * 0.02)
    return comfy.model_patcher.ModelPatcher(m, load_device=cpu, offload_device=cpu)


def run(only=None, repeats=9, size=64, real_arch=False):
    """Load the host, build the model and run the selected benchmarks (None = all).

    ``real_arch``: the real SD1.5 UNet (random weights) instead of the heavy mock net, with short runs
    (Nested 2x3, Split 4 steps) because a CPU call of it takes seconds; Elastic is skipped there."""
    host = load_host()
    if host is None:
        return
    import comfy.utils
    from mock_models import make_cond, make_model
    comfy.utils.PROGRESS_BAR_ENABLED = False
    # The mock net is not a real denoiser: its activations drift into subnormal floats on some
    # trajectories, whose CPU cost depends on the values, not on the sampler.  Flush them.
    torch.set_flush_denormal(True)
    model = make_sd15_unet() if real_arch else make_model("sd15", heavy=True)
    pos, neg = make_cond("sd15", 0.7), make_cond("sd15", -0.3)
    lat = {"samples": torch.zeros(1, 4, size, size)}
    what = ("real SD1.5 UNet architecture (random weights)" if real_arch
            else "mock SD1.5-like model (heavy conv net)")
    print(f"== host timing: ComfyUI {host.version}, CPU, {what}, latent "
          f"1x4x{size}x{size}, cfg 5, median of {repeats} interleaved runs ==")
    if only in (None, "nested"):
        bench_nested(host, model, pos, neg, lat, repeats, *((2, 3) if real_arch else ()))
    if only in (None, "split"):
        bench_split(host, model, pos, neg, lat, repeats, *((4,) if real_arch else ()))
    if only in (None, "elastic") and not real_arch:
        print("(heavy conv net: compute-bound, as a UNet on a CPU)")
        bench_elastic(host, model, pos, neg, max(3, repeats // 3))
        print("(tiny net: per-call overhead dominates, closer to a GPU running batch-1 calls)")
        bench_elastic(host, make_model("sd15"), pos, neg, max(3, repeats // 3))


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--repeats", type=int, default=9)
    ap.add_argument("--size", type=int, default=64, help="latent side (64 = 512 px)")
    ap.add_argument("--only", choices=["nested", "split", "elastic"], default=None)
    ap.add_argument("--real-arch", action="store_true",
                    help="Nested and Split on the real SD1.5 UNet architecture (random weights; slow on a CPU)")
    a = ap.parse_args()
    if a.real_arch:
        run(a.only, max(1, min(a.repeats, 3)), 16 if a.size == 64 else a.size, real_arch=True)
    else:
        run(a.only, a.repeats, a.size)


if __name__ == "__main__":
    main()
