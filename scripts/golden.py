"""Fingerprints of fixed-seed runs, to prove that a refactor changes no result (bit for bit).

    python scripts/golden.py pure            > a.json   # toy-world runs of the three pure samplers
    COMFYUI_PATH=~/ComfyUI <comfy python> scripts/golden.py host [nested split ...] > b.json   # workflows, mocks
    python scripts/golden.py compare a.json a2.json    # exit 1 and list every case that differs

To compare against an older commit: ``git worktree add <dir> <commit>``, copy this script into
it, run the same commands there, then ``compare``.  Each case is the SHA-256 of the output tensor's
bytes (float64 for the pure runs, the sampler's output latent for the host runs).
"""
import hashlib
import json
import math
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def digest(t):
    import torch
    t = t.detach().cpu().contiguous()
    return hashlib.sha256(t.numpy().tobytes()).hexdigest()[:32] + f"/{tuple(t.shape)}/{t.dtype}"


def _import_first(*names):
    import importlib
    for n in names:
        try:
            return importlib.import_module(n)
        except ImportError:
            continue
    raise ImportError(names)


def pure_cases():
    import torch
    from _pack import load_pack
    load_pack("nse")
    from nse.samplers import elastic, nested, split
    from nse.samplers.common import DiscreteSchedule
    toy = _import_first("nse.samplers.worlds.mixture", "nse.samplers.toy")
    guided = _import_first("nse.samplers.worlds.guided", "nse.samplers.split")
    torch.set_num_threads(1)
    out = {}
    ms = DiscreteSchedule()
    world = toy.ToyWorld()
    den = toy.ToyDenoiser(world, cond=1, cfg=3.0)
    g = torch.Generator().manual_seed(7)
    x = torch.randn(4, *world.shape, generator=g, dtype=torch.float64)
    outer = nested.official_outer_sigmas(ms, 5)
    for name, kw in {
        "default": {},
        "official_eta0": {"outer_eta": 0.0},
        "karras_inner6": {"inner_scheduler": "karras", "inner_steps": 6},
        "parity_sigma_min": {"inner_end": "sigma_min", "outer_eta": 0.0},
        "dpm_inner": {"inner_sampler": nested.sample_dpm_2s_grid, "inner_scheduler": "official_dpm"},
    }.items():
        y = nested.sample_nested(den, x * float(outer[0]), outer, extra_args={"seed": 11}, model_sampling=ms,
                                 inner_steps=kw.pop("inner_steps", 8), **kw)
        out[f"nested/{name}"] = digest(y)

    prob = guided.GuidedMixtureProblem(kappa=0.3)
    x2 = prob.initial(64, 80.0, seed=3)
    sig = torch.cat([torch.linspace(80.0 ** (1 / 7), 0.002 ** (1 / 7), 16, dtype=torch.float64) ** 7,
                     torch.zeros(1, dtype=torch.float64)])
    cfgden = guided.CFGDenoiser(prob.denoise_cond, prob.denoise_uncond, cfg=4.0)
    for method in split.METHODS:
        y = split.sample_split(cfgden, x2.clone(), sig, method=method)
        out[f"split/cfg_delta/{method}"] = digest(y)
        y = split.sample_split(prob.denoise_uncond, x2.clone(), sig, method=method, split_term="gradient",
                               guidance=prob.guidance(rough=True), guidance_scale=2.0)
        out[f"split/gradient/{method}"] = digest(y)
    for opts in ({"eval_mode": "sequential"}, {"ab_coeffs": "variable"}, {"split_base": "uncond"},
                 {"final_step": "denoised"}):
        y = split.sample_split(cfgden, x2.clone(), sig, method="stsp4", **opts)
        out["split/stsp4/" + ",".join(f"{k}={v}" for k, v in opts.items())] = digest(y)

    conv = torch.nn.Conv2d(4, 4, 3, padding=1, dtype=torch.float64)
    with torch.no_grad():
        gg = torch.Generator().manual_seed(0)
        conv.weight.copy_(torch.randn(conv.weight.shape, generator=gg, dtype=torch.float64) * 0.2)
        conv.bias.copy_(torch.randn(4, generator=gg, dtype=torch.float64) * 0.1)

    def eden(xx, sigma, which, meta):
        s = sigma.view(-1, 1, 1, 1).to(xx.dtype)
        eps = torch.tanh(conv(xx / torch.sqrt(1 + s * s)))
        m = torch.tensor([w == "cond" for w in which]).view(-1, 1, 1, 1)
        return xx - s * torch.where(m, eps + 0.2, eps)

    eden.base = 8
    esig = torch.tensor([14.6, 6.0, 2.5, 1.0, 0.3, 0.0], dtype=torch.float64)
    for (H, W), kw in {(8, 16): {}, (16, 16): {}, (12, 20): {}, (16, 8): {"mode": "faithful"},
                       (24, 8): {"preset": "custom", "resampling_steps": 3, "rrg_init_weight": 50.0},
                       (8, 8): {}}.items():
        gx = torch.Generator().manual_seed(H * 100 + W)
        xe = torch.randn(2, 4, H, W, generator=gx, dtype=torch.float64) * 14.6
        y = elastic.sample_elastic(eden, xe, esig, extra_args={"seed": 5}, **kw)
        out[f"elastic/{H}x{W}/" + ",".join(f"{k}={v}" for k, v in kw.items())] = digest(y)
    return out


def host_cases(only=()):
    import glob
    sys.path.insert(0, os.path.join(ROOT, "tests", "host"))
    import comfy_host
    path, reason = comfy_host.find_comfy()
    if path is None:
        raise SystemExit(reason)
    host = comfy_host.Host(path)
    import torch
    torch.set_num_threads(1)
    dec = host.node("NSETestMockVAEDecode")
    seen = []
    orig = dec.decode

    def decode(self, samples, vae):
        seen.append(digest(samples["samples"]))
        return orig(self, samples, vae)

    dec.decode = decode
    out = {}
    for p in sorted(glob.glob(os.path.join(ROOT, "workflows", "api", "*.json"))):
        if only and not any(o in os.path.basename(p) for o in only):
            continue
        kind = "sdxl" if "sdxl" in os.path.basename(p) else "sd15"
        prompt = comfy_host.mock_api_workflow(json.load(open(p)), kind)
        seen.clear()
        ex, server = host.run_prompt(prompt)
        assert ex.success, [m for m in server.messages if m[0] == "execution_error"]
        out[f"workflow/{os.path.basename(p)}"] = sorted(seen)
    graphs = {
        "nested_sampler": (("CFGGuider", {"model": ["1", 0], "positive": ["2", 0], "negative": ["3", 0],
                                          "cfg": 5.0}),
                           ("NestedSampler", {"inner_sampler": "euler_ancestral", "inner_steps": 4,
                                              "inner_scheduler": "karras", "inner_eta": 0.85, "outer_eta": 1.0,
                                              "inner_end": "zero"}),
                           ("NestedOfficialOuterScheduler", {"model": ["1", 0], "steps": 4})),
        "split_sampler": (("CFGGuider", {"model": ["1", 0], "positive": ["2", 0], "negative": ["3", 0],
                                         "cfg": 7.0}),
                          ("SplitSampler", {"method": "stsp4", "split_term": "cfg_delta", "split_base": "cond",
                                            "eval_mode": "auto", "ab_coeffs": "fixed", "final_step": "auto",
                                            "guidance_scale": 1.0}),
                          ("SplitRespace", {"model": ["1", 0], "steps": 8, "denoise": 1.0})),
        "elastic_guider": (("ElasticGuider", {"model": ["1", 0], "positive": ["2", 0], "negative": ["3", 0],
                                              "cfg": 7.5, "preset": "auto", "resampling_steps": -1, "new_p": 0.3,
                                              "rrg_init_weight": -1.0, "cosine_scale": 10.0, "rrg_stop_t": 0.4,
                                              "repaint": True, "patch_size": 0, "view_batch_size": 16,
                                              "base_resolution": 0, "size_cond": "per_call", "mode": "clean"}),
                           ("KSamplerSelect", {"sampler_name": "euler"}),
                           ("BasicScheduler", {"model": ["1", 0], "scheduler": "normal", "steps": 4,
                                               "denoise": 1.0})),
    }
    for name, (guider, sampler, sigmas) in graphs.items():
        if only and not any(o in name for o in only):
            continue
        w, h = (128, 64) if name == "elastic_guider" else (64, 64)
        prompt = comfy_host.custom_advanced_prompt(guider, sampler, sigmas, width=w * 8, height=h * 8)
        if name != "elastic_guider":
            prompt = comfy_host.custom_advanced_prompt(guider, sampler, sigmas)
        seen.clear()
        ex, server = host.run_prompt(prompt)
        assert ex.success, [m for m in server.messages if m[0] == "execution_error"]
        out[f"graph/{name}"] = sorted(seen)
    return out


def compare(a_path, b_path):
    a, b = json.load(open(a_path)), json.load(open(b_path))
    keys = sorted(set(a) & set(b)) if "--common" in sys.argv else sorted(set(a) | set(b))
    bad = [k for k in keys if a.get(k) != b.get(k)]
    for k in bad:
        print(f"DIFFERS {k}: {a.get(k)} != {b.get(k)}")
    print(f"{len(keys) - len(bad)} identical, {len(bad)} differ")
    return 1 if bad else 0


if __name__ == "__main__":
    what = sys.argv[1] if len(sys.argv) > 1 else "pure"
    if what == "compare":
        sys.exit(compare(sys.argv[2], sys.argv[3]))
    res = pure_cases() if what == "pure" else host_cases(sys.argv[2:])
    json.dump(res, sys.stdout, indent=1, sort_keys=True)
    print()
