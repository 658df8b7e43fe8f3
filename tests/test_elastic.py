"""Pure tests of samplers/elastic/ (ElasticDiffusion).

Small latents and cheap mock denoisers only (CI budget): pointwise maps for the stitching
identities, a 3x3-conv mock for everything that must see neighbours, padding and context.
"""
import math

import pytest
import torch
import torch.nn.functional as F

from nse.samplers import elastic as E
from nse.samplers.common import DiscreteSchedule, sample_euler

SCHED = DiscreteSchedule()


# ----------------------------------------------------------------------------------------------
# mock models
# ----------------------------------------------------------------------------------------------

class MockEps:
    """Deterministic epsilon-net in VP space: 3x3 convs (receptive radius 1), t-dependent,
    cond / uncond differ.  Row-independent (no batch statistics)."""

    def __init__(self, C=4, seed=0, dtype=torch.float64):
        g = torch.Generator().manual_seed(seed)
        self.wu = (torch.randn(C, C, 3, 3, generator=g, dtype=torch.float64) * 0.25).to(dtype)
        self.wc = (torch.randn(C, C, 3, 3, generator=g, dtype=torch.float64) * 0.25).to(dtype)
        self.bc = (torch.randn(C, generator=g, dtype=torch.float64) * 0.5).to(dtype)

    def __call__(self, x_vp, t, which):
        sc = 1.0 + float(t) / 1000.0
        eu = torch.tanh(F.conv2d(x_vp, self.wu.to(x_vp.dtype), padding=1)) * sc + 0.05 * x_vp
        ec = eu + 0.3 * torch.tanh(F.conv2d(x_vp, self.wc.to(x_vp.dtype), padding=1)) \
            + self.bc.to(x_vp.dtype).view(1, -1, 1, 1) * (float(t) / 1000.0)
        m = torch.tensor([w == "cond" for w in which], device=x_vp.device).view(-1, 1, 1, 1)
        return torch.where(m, ec, eu)


def protocol_denoiser(net, base, spy=None):
    """ComfyUI's EPS wrapper around ``net``: D(x, s) = x - s * net(x / sqrt(1 + s^2), t(s))."""

    def den(x, sigma, which, meta):
        assert x.shape[-2:] == (base, base), f"model call {tuple(x.shape)} is not base x base"
        assert len(which) == len(meta) == x.shape[0] == sigma.shape[0]
        if spy is not None:
            spy.append((x.clone(), list(which), list(meta)))
        s = sigma.view(-1, 1, 1, 1).to(x.dtype)
        t = int(SCHED.timestep(sigma[0].double()))
        return x - s * net(x / torch.sqrt(1 + s * s), t, which)

    den.base = base
    return den


def pointwise_denoiser(base, spy=None):
    """D depends on each pixel alone (and on sigma / which)."""

    def den(x, sigma, which, meta):
        assert x.shape[-2:] == (base, base), f"model call {tuple(x.shape)} is not base x base"
        if spy is not None:
            spy.append((x.shape, list(which), list(meta)))
        s = sigma.view(-1, 1, 1, 1).to(x.dtype)
        c = torch.tensor([0.4 if w == "cond" else -0.2 for w in which], dtype=x.dtype).view(-1, 1, 1, 1)
        return torch.tanh(x) / (1 + s * s) + c * x / (1 + s) + 0.1 * c

    den.base = base
    return den


def ddim_uniform_sigmas(model_sampling, steps):
    """ComfyUI's ``ddim_uniform`` scheduler (the nodes call ComfyUI's own): sigmas at t = 1 + k * (1000 // steps),
    descending, then 0; float32; for a ``steps`` that does not divide 1000 it may give more steps (30 -> 31)."""
    s = model_sampling.sigmas
    x = 1
    if math.isclose(float(s[x]), 0, abs_tol=0.00001):
        steps += 1
        sigs = []
    else:
        sigs = [0.0]
    ss = max(len(s) // steps, 1)
    while x < len(s):
        sigs.append(float(s[x]))
        x += ss
    return torch.tensor(sigs[::-1], dtype=torch.float32)


def _sigmas(n_steps, dtype=torch.float32):
    return ddim_uniform_sigmas(SCHED, n_steps).to(dtype)


# ----------------------------------------------------------------------------------------------
# schedule, presets, family
# ----------------------------------------------------------------------------------------------

def test_ddim_uniform_is_comfy_grid():
    s = ddim_uniform_sigmas(SCHED, 50)
    assert s.dtype == torch.float32 and len(s) == 51 and float(s[-1]) == 0.0
    t = torch.arange(981, 0, -20)
    assert torch.equal(s[:-1], SCHED.sigmas[t].float())
    # ComfyUI's own quirk: 30 steps give 31 (ss = 1000 // 30 = 33 -> t = 1, 34, ..., 991)
    assert len(ddim_uniform_sigmas(SCHED, 30)) == 32
    assert torch.equal(ddim_uniform_sigmas(SCHED, 30)[0], SCHED.sigmas[991].float())


@pytest.mark.parametrize("wp,hp,r,w0", [(2048, 2048, 10, 2000), (1536, 1536, 7, 1000), (1024, 2048, 7, 1000),
                                        (2048, 1024, 7, 1000), (1920, 1080, 7, 1000), (2048, 1536, 10, 1500),
                                        (1536, 2048, 10, 1500), (768, 2048, 7, 1000), (2048, 512, 7, 1000),
                                        (768, 768, 0, 0), (1024, 1024, 0, 0)])
def test_auto_preset_matches_official_table(wp, hp, r, w0):
    p = E.elastic_preset("auto", hp // 8, wp // 8, 128)
    assert p["resampling_steps"] == r and p["rrg_init_weight"] == w0 and p["rrg_min_weight"] == 10.0
    assert (p["cfg"], p["new_p"], p["cosine_scale"], p["rrg_stop_t"], p["patch_size"], p["view_batch_size"]) == \
        (10.0, 0.3, 10.0, 0.4, 64, 16)


def test_preset_scaling_custom_and_family():
    sd = E.elastic_preset("auto", 128, 128, 64)            # SD1.x at 1024^2 = factor 2, square
    assert sd["resampling_steps"] == 10 and sd["rrg_init_weight"] == 500.0 and sd["rrg_min_weight"] == 2.5
    # same per-element coefficient 2 W0 / (C H W) and the same active steps as SDXL 2048^2
    assert 2 * 500 / (4 * 128 * 128) == pytest.approx(2 * 2000 / (4 * 256 * 256))
    assert E.rrg_active_steps(50, 500, 0.4, 10, 2.5) == E.rrg_active_steps(50, 2000, 0.4, 10, 10)
    assert E.build_plan((1, 4, 32, 32), base=16).config.resampling_steps == 10       # auto is the default
    assert E.build_plan((1, 4, 32, 32), base=16, resampling_steps=2).config.resampling_steps == 2
    c = E.elastic_preset("custom", base=128, resampling_steps=3)
    assert c["resampling_steps"] == 3 and c["rrg_init_weight"] == 0.0 and c["patch_size"] == 64
    # the model-family table (base_resolution) is a host fact: tests/host/test_elastic_host.py


def test_rrg_schedule_steps():
    assert E.rrg_active_steps(50, 1000, 0.4, 10) == list(range(13))
    assert E.rrg_active_steps(50, 1500, 0.4, 10) == list(range(13))
    assert E.rrg_active_steps(50, 2000, 0.4, 10) == list(range(14))
    assert E.rrg_active_steps(50, 4000, 0.2, 10) == list(range(19))
    assert E.rrg_active_steps(50, 10, 0.4, 10) == []               # w <= 10: RRG off
    assert E.rrg_weight(0, 50, 1000, 0.4, 10) == 1000.0
    assert E.rrg_weight(30, 50, 1000, 0.4, 10) == 0.0               # T_rrg = 30


# ----------------------------------------------------------------------------------------------
# reduction to CFG at / below the training size
# ----------------------------------------------------------------------------------------------

@pytest.mark.parametrize("mode", ["clean", "faithful"])
def test_training_size_equals_comfy_euler_cfg(mode):
    base, cfg = 16, 5.0
    net = MockEps(dtype=torch.float32)
    spy = []
    den = protocol_denoiser(net, base, spy)
    sig = _sigmas(25)
    x0 = torch.randn(2, 4, base, base, generator=torch.Generator().manual_seed(1)) * sig[0]

    def cfg_model(x, s):
        u = den(x, s, ["uncond"] * x.shape[0], [None] * x.shape[0])
        c = den(x, s, ["cond"] * x.shape[0], [None] * x.shape[0])
        return u + (c - u) * cfg

    ref = sample_euler(cfg_model, x0.clone(), sig)
    spy.clear()
    out = E.sample_elastic(den, x0.clone(), sig, {"seed": 3}, base=base, cfg=cfg, mode=mode,
                           resampling_steps=0, rrg_init_weight=5000.0)      # RRG on: x0_ref == x0, no effect
    assert (out - ref).abs().max() < 1e-5 * ref.abs().max()
    assert len(spy) == 25 and all(len(w) == 4 for _, w, _ in spy)       # 2 evals per step, no duplicate uncond
    # R > 0 without repaint is still CFG (identical rounds), with repaint (cfg/3 pass) it is not
    same = E.sample_elastic(den, x0.clone(), sig, base=base, cfg=cfg, mode=mode, resampling_steps=3, repaint=False)
    assert (same - ref).abs().max() < 1e-5 * ref.abs().max()
    diff = E.sample_elastic(den, x0.clone(), sig, base=base, cfg=cfg, mode=mode, resampling_steps=3)
    assert (diff - ref).abs().max() > 0.05 * ref.abs().max()


def test_below_base_is_cfg_on_padded_canvas():
    base, cfg, H, W = 16, 4.0, 10, 13
    net = MockEps()
    den = protocol_denoiser(net, base)
    sig = _sigmas(10, torch.float64)
    bg = torch.randn(3, 4, dtype=torch.float64)
    x = torch.randn(1, 4, H, W, dtype=torch.float64) * sig[0]
    out = E.sample_elastic(den, x.clone(), sig, {"seed": 7}, base=base, cfg=cfg, resampling_steps=0, background=bg)
    plan = E.build_plan(x.shape, sig, base=base, background=bg, dtype=torch.float64)
    t, b, l, r = (base - H) // 2, base - H - (base - H) // 2, (base - W) // 2, base - W - (base - W) // 2
    y = x.clone()
    for i in range(10):
        rnd, s = E.StepRandom(plan, 7, i), float(sig[i])
        z = lambda side, ph, pw: (lambda p: p[0] + s * p[1])(rnd.pad_parts(0, side, ph, pw))
        row = torch.cat([z("left", H, l), y[0], z("right", H, r)], 2)
        full = torch.cat([z("top", t, base), row, z("bottom", b, base)], 1)[None]
        u = den(full, sig[i:i + 1], ["uncond"], [None])[:, :, t:t + H, l:l + W]
        c = den(full, sig[i:i + 1], ["cond"], [None])[:, :, t:t + H, l:l + W]
        d = u + (c - u) * cfg
        y = y + (y - d) / sig[i] * (sig[i + 1] - sig[i])
    assert torch.allclose(out, y, atol=1e-10, rtol=1e-10)


# ----------------------------------------------------------------------------------------------
# local pass: stitching identities, model-call shapes
# ----------------------------------------------------------------------------------------------

@pytest.mark.parametrize("mode", ["clean", "faithful"])
def test_stitching_pointwise_every_size_patch_and_view_batch(mode):
    base = 16
    sizes = [(8, 8), (16, 16), (17, 17), (16, 9), (32, 28), (32, 12), (30, 22), (20, 29), (32, 5), (27, 27)]
    if mode == "clean":                                            # faithful stops at 2x
        sizes += [(16, 40), (33, 20), (48, 48), (5, 70), (70, 5), (47, 31)]
    spy = []
    den = pointwise_denoiser(base, spy)
    g = torch.Generator().manual_seed(0)
    for H, W in sizes:
        x = torch.randn(2, 3, H, W, generator=g)
        expect = torch.tanh(x) / (1 + 1.5 ** 2) - 0.2 * x / 2.5 - 0.02
        for patch in ((1, 5, 8, 16) if max(H, W) <= 20 else (5, 8, 12, 16)):
            for vbs in (1, 7):
                plan = E.build_plan(x.shape, base=base, patch_size=patch, view_batch_size=vbs, mode=mode)
                spy.clear()
                L = E.local_pass(den, x, 1.5, plan, E.StepRandom(plan, 0, 0))
                assert torch.allclose(L, expect, atol=1e-6), (H, W, patch, vbs)
                assert all(w == ["uncond"] * len(w) for _, w, _ in spy)
                assert max(shape[0] for shape, _, _ in spy) <= 2 * vbs
                assert sorted((m.index, m.sample) for _, _, ms in spy for m in ms) == \
                    [(v, b) for v in range(len(plan.views)) for b in range(2)]     # each view once per sample


@pytest.mark.parametrize("mode", ["clean", "faithful"])
def test_stitching_conv_equals_full_evaluation(mode):
    """Receptive radius 1 <= (base - P) / 2 and all dims >= base: stitched == full-canvas evaluation."""
    base = 16
    net = MockEps()
    den = protocol_denoiser(net, base)
    g = torch.Generator().manual_seed(1)
    cases = [((32, 28), 8), ((30, 22), 12), ((27, 27), 8), ((32, 32), 14)]
    if mode == "clean":
        cases += [((16, 40), 8), ((33, 20), 12), ((48, 37), 8), ((40, 40), 14)]
    for (H, W), patch in cases:
        x = torch.randn(1, 4, H, W, generator=g, dtype=torch.float64)
        plan = E.build_plan(x.shape, base=base, patch_size=patch, mode=mode, dtype=torch.float64)
        L = E.local_pass(den, x, 2.0, plan, E.StepRandom(plan, 0, 0))
        s = torch.tensor([2.0], dtype=torch.float64)
        full = x - 2.0 * net(x / math.sqrt(5.0), int(SCHED.timestep(s[0])), ["uncond"])
        assert torch.allclose(L, full, atol=1e-12), (H, W, patch)


def test_clean_windows_feather_and_faithful_first_write():
    views, norm = E.make_views(40, 27, 16, 8, "clean")
    assert torch.allclose(norm, torch.ones_like(norm))           # cross-fades sum to 1
    assert all((v.crop[1] - v.crop[0], v.crop[3] - v.crop[2]) == (16, 16) for v in views)
    ys = sorted({v.win[:2] for v in views})
    assert ys[0][0] == 0 and ys[-1][1] == 40 and len(ys) == 5    # official count, evenly spread
    assert sorted({v.win[2:] for v in views}) == [(0, 8), (6, 14), (13, 21), (19, 27)]
    views_f, norm_f = E.make_views(40, 27, 16, 8, "faithful")
    assert torch.equal(norm_f, torch.ones_like(norm_f))
    assert [v.win[:2] for v in views_f][::4][:5] == [(0, 8), (8, 16), (16, 24), (24, 32), (32, 40)]
    assert sorted({v.win[2:] for v in views_f}) == [(0, 8), (8, 16), (16, 24), (19, 27)]   # shifted last window
    last = [v for v in views_f if v.win[2:] == (19, 27)][0]
    assert last.wx.tolist() == [0.0] * 5 + [1.0] * 3              # the earlier window owns the overlap


@pytest.mark.parametrize("wp,hp", [(1080, 1080), (1600, 1200), (2000, 1000), (1536, 1536)])
def test_clean_runs_awkward_sizes_every_call_base(wp, hp):
    base, spy = 128, []
    den = pointwise_denoiser(base, spy)
    sig = _sigmas(50)[[0, 25, 50]]
    x = torch.randn(1, 4, hp // 8, wp // 8, generator=torch.Generator().manual_seed(0)) * sig[0]
    out = E.sample_elastic(den, x, sig, base=base, resampling_steps=2, rrg_init_weight=2000.0, rrg_stop_t=0.0,
                           cosine_scale=1.0)
    assert out.shape == x.shape and torch.isfinite(out).all()
    assert spy and all(shape[-2:] == (base, base) for shape, _, _ in spy)
    assert {m[0].phase for _, _, m in spy} == {"main", "repaint"}


def test_faithful_rejects_official_crash_sizes():
    for hp, wp in [(1200, 1600), (1000, 2000)]:
        with pytest.raises(ValueError, match="faithful.*use mode='clean'"):
            E.validate_elastic((1, 4, hp // 8, wp // 8), base=128, mode="faithful")
    E.validate_elastic((1, 4, 192, 192), base=128, mode="faithful")     # 1536^2 runs (misregistered)


# ----------------------------------------------------------------------------------------------
# sub-pixel sampling
# ----------------------------------------------------------------------------------------------

@pytest.mark.parametrize("H,W,base", [(256, 256, 128), (192, 192, 128), (135, 240, 128), (150, 200, 128),
                                      (125, 250, 128), (384, 384, 128), (40, 17, 16), (16, 70, 16)])
def test_clean_subsample_invariants(H, W, base):
    plan = E.build_plan((1, 2, H, W), base=base)
    geo = plan.geometry
    h, w = geo.h, geo.w
    assert max(h, w) == base and abs(h / w - H / W) < 1.0 / min(h, w) + 1e-9
    rnd = E.StepRandom(plan, 5, 3)
    picks = rnd.picks(0, 6)
    rb = [math.floor(j * H / h) for j in range(h + 1)]
    cb = [math.floor(j * W / w) for j in range(w + 1)]
    x = torch.arange(2 * H * W, dtype=torch.float64).view(1, 2, H, W)
    pos_seen = torch.zeros(H * W, dtype=torch.bool)
    for r in range(6):
        src = geo.sources(picks[r]).view(h, w)
        ys, xs = src // W, src % W
        lo_y = torch.tensor(rb[:-1]).view(h, 1)
        hi_y = torch.tensor(rb[1:]).view(h, 1)
        lo_x = torch.tensor(cb[:-1]).view(1, w)
        hi_x = torch.tensor(cb[1:]).view(1, w)
        assert ((ys >= lo_y) & (ys < hi_y) & (xs >= lo_x) & (xs < hi_x)).all()   # source inside its cell
        assert torch.equal(geo.writes(picks[r]), geo.sources(picks[r]))           # scatter at the sources
        pos_seen[src.view(-1)] = True

    # through the real pass: D_c - D_u = the input, so G must equal x exactly at every written source
    def ident(xx, s, which, meta):
        c = torch.tensor([1.0 if q == "cond" else 0.0 for q in which], dtype=xx.dtype).view(-1, 1, 1, 1)
        return xx * (1 + c)

    plan = E.build_plan((1, 2, H, W), base=base, dtype=torch.float64)
    G, _, info = E.reference_pass(ident, x, 1.0, plan, E.StepRandom(plan, 5, 3), 6)
    Gf, xf = G.view(2, -1), x.view(2, -1)
    assert torch.equal(Gf[:, pos_seen], xf[:, pos_seen])
    assert info.filled == pytest.approx(pos_seen.double().mean().item())


def test_reference_keeps_noise_level():
    plan = E.build_plan((1, 4, 256, 192), base=128)
    for sigma in (0.1, 1.0, 14.6):
        x = torch.randn(1, 4, 256, 192, generator=torch.Generator().manual_seed(2)) * sigma
        rnd = E.StepRandom(plan, 0, 0)
        picks = rnd.picks(0, 3)[2]
        ref = x.view(1, 4, -1)[:, :, plan.geometry.sources(picks)]
        assert ref.std().item() == pytest.approx(sigma, rel=0.02)
        area = F.interpolate(x, size=(plan.geometry.h, plan.geometry.w), mode="area")
        assert area.std().item() == pytest.approx(sigma / 2, rel=0.03)        # what a resize would do


def _binom_cov(r, p):
    e = sum(min(3, k) * math.comb(r, k) * p ** k * (1 - p) ** (r - k) for k in range(r + 1))
    return (1 + e) / 4


def test_coverage_curve_factor2_new_p_03():
    table = [.25, .32, .40, .48, .55, .62, .68, .73, .78, .82, .86]        # the official coverage curve
    for mode, p in (("faithful", 30 / 101), ("clean", 0.3)):
        plan = E.build_plan((1, 4, 256, 256), base=128, mode=mode)
        picks = E.StepRandom(plan, 11, 0).picks(0, 21)
        cov = torch.zeros(256 * 256, dtype=torch.bool)
        curve = []
        for r in range(21):
            cov[plan.geometry.sources(picks[r])] = True
            curve.append(cov.double().mean().item())
        for r, v in enumerate(table):
            assert curve[r] == pytest.approx(v, abs=0.012), (mode, r)
            assert curve[r] == pytest.approx(_binom_cov(r, p), abs=0.008), (mode, r)
        assert curve[20] == pytest.approx(0.99, abs=0.01)


@pytest.mark.parametrize("mode,new_p,expect", [("clean", 0.3, 0.3), ("faithful", 0.3, 30 / 101),
                                                 ("clean", 0.004, 0.004), ("faithful", 0.004, 1 / 101)])
def test_new_pick_probability(mode, new_p, expect):
    """Round 1 re-picks a pixel with P = new_p (clean) or the official integer draw (faithful)."""
    plan = E.build_plan((1, 1, 512, 512), base=256, mode=mode, new_p=new_p)
    picks = E.StepRandom(plan, 1, 0).picks(0, 2)
    frac = (picks[1] != picks[0]).double().mean().item()
    n = picks[0].numel()
    assert abs(frac - expect) < 4 * math.sqrt(expect * (1 - expect) / n)


def test_faithful_misregistration_reproduced_clean_fixed():
    """Round 0 (top-left): share of written pixels whose value is their own cell's, and the mean L1
    distance to the source actually estimated (official map: 1536^2 25% / 1.0 px; 1920x1080 1.6% / 3.25)."""
    for (hp, wp), own_f, disp_f in (((1536, 1536), 0.25, 1.0), ((1080, 1920), 0.0156, 3.25),
                                   ((2048, 2048), 1.0, 0.0)):
        H, W = hp // 8, wp // 8
        for mode in ("faithful", "clean"):
            geo = E.ElasticGeometry.build(H, W, 128, mode)
            k = torch.zeros(geo.h, geo.w, dtype=torch.long)
            wr, val, src = geo.writes(k), geo.values(k), geo.sources(k)
            own = (val == torch.arange(geo.h * geo.w)).double().mean().item()
            vs = src[val]
            disp = ((wr // W - vs // W).abs() + (wr % W - vs % W).abs()).double().mean().item()
            if mode == "faithful":
                assert own == pytest.approx(own_f, abs=1e-3) and disp == pytest.approx(disp_f, abs=1e-3)
            else:
                assert own == 1.0 and disp == 0.0


# ----------------------------------------------------------------------------------------------
# repaint noise, prompt-free plumbing
# ----------------------------------------------------------------------------------------------

def test_repaint_noise_variance():
    """x_re - x' has per-element std sqrt(sigma_i^2 - sigma_{i+1}^2) and mean 0."""
    base, cfg = 64, 6.0
    den = pointwise_denoiser(base)
    seen = []

    def spy(xx, s, which, meta):
        seen.append((xx.clone(), meta[0].phase, list(which)))
        return den(xx, s, which, meta)

    sig = _sigmas(50, torch.float64)
    x = torch.randn(1, 4, base, base, dtype=torch.float64, generator=torch.Generator().manual_seed(3)) * sig[5]
    plan = E.build_plan(x.shape, sig, base=base, cfg=cfg, resampling_steps=2, dtype=torch.float64)
    E.elastic_step(spy, x, sig, 5, plan, seed=1)
    assert [(ph, w) for _, ph, w in seen] == [("main", ["cond", "uncond"]), ("repaint", ["cond", "uncond"])]
    d_c = den(x, sig[5:6], ["cond"], [None])
    d_u = den(x, sig[5:6], ["uncond"], [None])
    d = d_u + cfg * (d_c - d_u)
    x1 = x + (x - d) / sig[5] * (sig[6] - sig[5])
    diff = seen[1][0][:1] - x1
    target = math.sqrt(float(sig[5] ** 2 - sig[6] ** 2))
    assert diff.std().item() == pytest.approx(target, rel=0.03)
    assert abs(diff.mean().item()) < 0.03 * target


def test_prompt_free_direction_is_plain_patchwise_uncond():
    base = 16
    net = MockEps()

    def den(x, sigma, which, meta):                                  # positive == negative
        s = sigma.view(-1, 1, 1, 1)
        return x - s * net(x / torch.sqrt(1 + s * s), int(SCHED.timestep(sigma[0])), ["uncond"] * len(which))

    sig = _sigmas(8, torch.float64)
    x = torch.randn(1, 4, 32, 24, dtype=torch.float64, generator=torch.Generator().manual_seed(4)) * sig[0]
    runs = [E.sample_elastic(den, x.clone(), sig, base=base, cfg=c, resampling_steps=r, repaint=False,
                             rrg_init_weight=0.0) for c, r in ((3.0, 0), (9.0, 0), (9.0, 4))]
    assert torch.allclose(runs[0], runs[1], atol=1e-12) and torch.allclose(runs[0], runs[2], atol=1e-12)
    plan = E.build_plan(x.shape, sig, base=base, dtype=torch.float64)
    y = x.clone()
    for i in range(8):
        L = E.local_pass(den, y, float(sig[i]), plan, E.StepRandom(plan, 0, i))
        y = y + (y - L) / sig[i] * (sig[i + 1] - sig[i])
    assert torch.allclose(runs[0], y, atol=1e-12)


# ----------------------------------------------------------------------------------------------
# official equivalence: faithful step == transcription of the official VP loop
# ----------------------------------------------------------------------------------------------

def _official_vp_run(net, x_vp, ts, abar, abar_final, base, cfg, R, W0, stop, kappa, plan, seed, sample):
    """Direct transcription of the official loop (diffusers DDIM eta 0, VP space),
    for factor-2 canvases, taking only the random draws (sub-pixel picks, pads, repaint noise) from
    the module.  Returns the VP latent after every step."""
    N = len(ts)
    _, C, H, W = x_vp.shape
    h, w = H // 2, W // 2
    P = plan.config.patch_size
    ctx = base - P
    t_rrg = N - int(N * stop)
    outs = []

    def unet_step(inp, t, which, rnd, a_t):
        # pad to base: width first (left/right), then height (top/bottom); pad = add_noise(z_bg, n, t)
        hh, ww = inp.shape[-2:]
        wp, hp = base - ww, base - hh
        lp, rp, tp, bp = wp // 2, wp - wp // 2, hp // 2, hp - hp // 2

        def blk(side, ph, pw):
            z, n = rnd.pad_parts(sample, side, ph, pw)
            return (math.sqrt(a_t) * z + math.sqrt(1 - a_t) * n)[None].expand(inp.shape[0], -1, -1, -1)

        y = inp
        if wp > 0:
            y = torch.cat([blk("left", hh, lp), y, blk("right", hh, rp)], 3)
        if hp > 0:
            y = torch.cat([blk("top", tp, base), y, blk("bottom", bp, base)], 2)
        out = net(y, t, which)
        return out[:, :, tp:tp + hh, lp:lp + ww]

    def downsample(x, k):
        up = F.interpolate(x, size=(2 * H, 2 * W), mode="nearest")
        rows = [4 * j + o for j in range(h) for o in (0, 3)]       # to_even_rational(1/2) = 2 of 4: offsets 0, 3
        cols = [4 * j + o for j in range(w) for o in (0, 3)]
        kept = up[:, :, rows][:, :, :, cols]                        # (2h) x (2w)
        unf = F.unfold(kept, kernel_size=2, stride=2).view(1, C, 4, h * w)
        ref = unf[:, :, k.view(-1), torch.arange(h * w)].view(1, C, h, w)
        mask = torch.zeros(2 * h, 2 * w, dtype=torch.bool)
        pp, qq = torch.meshgrid(torch.arange(h), torch.arange(w), indexing="ij")
        mask[2 * pp + k // 2, 2 * qq + k % 2] = True                # restore_mask_shape is the identity at 2x
        return ref, mask

    def direction(x, t, picks, rounds, rnd, a_t):
        target = torch.full_like(x, float("nan"))
        for r in range(rounds):
            ref, mask = downsample(x, picks[r])
            e = unet_step(torch.cat([ref, ref]), t, ["uncond", "cond"], rnd, a_t)
            e_u, e_c = e[:1], e[1:]
            up = F.interpolate(e_c - e_u, size=(H, W), mode="nearest")
            target = torch.where(mask, up, target)
        target = torch.where(torch.isnan(target), up, target)
        return target, ref, e_u, F.interpolate(target, size=(h, w), mode="nearest")

    def views(L):
        ws = L if P + ctx >= L else P
        n = math.ceil((L - ws) / P) + 1
        out = []
        for k in range(n):
            a = k * P
            if a + ws > L:
                a = max(0, L - ws)
            out.append((a, a + ws))
        return out

    def crop_axis(a, b, L, n):
        if a - n < 0:
            nt = a
            nb = len(range(b, min(L, b + 2 * n - nt)))
        else:
            nb = len(range(b, min(L, b + n)))
            nt = len(range(max(0, a - (2 * n - nb)), a))
        return nt, nb

    def local(x, t, rnd, a_t):
        canvas = torch.zeros_like(x)
        for (a, b) in views(H):
            for (c, d) in views(W):
                nt, nb = crop_axis(a, b, H, ctx // 2)
                nl, nr = crop_axis(c, d, W, ctx // 2)
                crop = x[:, :, a - nt:b + nb, c - nl:d + nr]
                e = unet_step(crop, t, ["uncond"], rnd, a_t)
                centre = e[:, :, nt:nt + b - a, nl:nl + d - c]
                region = canvas[:, :, a:b, c:d]
                free = region == 0                                  # first write wins
                region[free] = centre[free]
        return canvas

    def ddim(eps, x, a_t, a_prev):
        x0 = (x - math.sqrt(1 - a_t) * eps) / math.sqrt(a_t)
        return x0, math.sqrt(a_prev) * x0 + math.sqrt(1 - a_prev) * eps

    x = x_vp
    for i, t in enumerate(ts):
        a_t = float(abar[t])
        a_prev = float(abar[ts[i + 1]]) if i + 1 < N else abar_final
        rnd = E.StepRandom(plan, seed, i)
        picks = rnd.picks(sample, R + 1)
        tgt, ref, e_u, down = direction(x, t, picks, R + 1, rnd, a_t)
        eps = local(x, t, rnd, a_t) + cfg * tgt
        x0, x_prev = ddim(eps, x, a_t, a_prev)
        g = cfg
        if R > 0 and i < N - 1:
            xi = rnd.repaint_noise(sample)[None]
            x_re = math.sqrt(a_t / a_prev) * x_prev + math.sqrt(1 - a_t / a_prev) * xi
            tgt, ref, e_u, down = direction(x_re, t, picks[:1], 1, rnd, a_t)
            g = cfg / 3
            eps = local(x_re, t, rnd, a_t) + g * tgt
            x0, x_prev = ddim(eps, x_re, a_t, a_prev)
        w_i = W0 * (0.5 * (1 + math.cos(math.pi * i / t_rrg))) ** kappa if i < t_rrg else 0.0
        if w_i > 10:
            ref_x0 = (ref - math.sqrt(1 - a_t) * (e_u + g * down)) / math.sqrt(a_t)
            up = F.interpolate(ref_x0, size=(H, W), mode="nearest")
            with torch.enable_grad():
                dummy = x0.clone().requires_grad_(True)
                (w_i * F.mse_loss(up, dummy)).backward()
            x_prev = x_prev - dummy.grad
        x = x_prev
        outs.append(x)
    return outs


@pytest.mark.parametrize("H,W", [(32, 28), (32, 12)])
def test_faithful_step_equals_official_vp_loop(H, W):
    base, P, cfg, R, W0, stop, kappa, seed = 16, 8, 7.5, 2, 3000.0, 0.4, 3.0, 9
    net = MockEps()
    den = protocol_denoiser(net, base)
    ts = list(range(901, 0, -100))                                  # 10-step leading DDIM grid
    abar = SCHED.alphas_cumprod
    abar_final = float(abar[0])                                    # set_alpha_to_one=False
    sig = torch.cat([SCHED.sigmas[ts], SCHED.sigmas[:1]]).double()  # ... ends at sigma(abar_0), not 0
    B = 2
    x_vp = torch.randn(B, 4, H, W, dtype=torch.float64, generator=torch.Generator().manual_seed(2))
    bg = torch.randn(2, 4, 5, 3, dtype=torch.float64)               # spatial background palette
    opts = dict(base=base, cfg=cfg, resampling_steps=R, rrg_init_weight=W0, rrg_stop_t=stop, cosine_scale=kappa,
                new_p=0.5, patch_size=P, mode="faithful", background=bg, view_batch_size=3, preset="custom")
    plan = E.build_plan(x_vp.shape, sig, dtype=torch.float64, **opts)
    assert (plan.geometry.h, plan.geometry.w) == (H // 2, W // 2)
    active = [i for i in range(10) if E.rrg_weight(i, 10, W0, stop, kappa) > 10]
    assert 0 < len(active) < 6                                      # RRG on for some steps, off for others
    x = x_vp * torch.sqrt(1 + sig[0] ** 2)
    ours = []
    for i in range(10):
        x = E.elastic_step(den, x, sig, i, plan, seed=seed).x
        ours.append(x)
    for b in range(B):
        off = _official_vp_run(net, x_vp[b:b + 1], ts, abar, abar_final, base, cfg, R, W0, stop, kappa,
                               plan, seed, b)
        for i in range(10):
            ve = off[i] * math.sqrt(1 + float(sig[i + 1]) ** 2)
            assert torch.allclose(ours[i][b:b + 1], ve, atol=1e-9, rtol=1e-9), (b, i, (ours[i][b] - ve[0]).abs().max())


def test_reference_size_rules():
    for (hp, wp), want in (((1080, 1920), (72, 128)), ((1080, 1080), (128, 128)), ((1200, 1600), (96, 128)),
                           ((1000, 2000), (64, 128)), ((2048, 512), (128, 32)), ((768, 1024), (96, 128))):
        assert E.reference_size(hp // 8, wp // 8, 128) == want
    assert E.reference_size(22, 30, 16) == (12, 16)                 # rounded, not floored (11.73)
    assert E.reference_size(10, 13, 16) == (10, 13)                 # at or below base: the latent itself
    assert E.reference_size(240, 135, 128, "faithful") == (128, 72)  # the official formula
    assert E.reference_size(135, 135, 128, "faithful") == (128, 128)


@pytest.mark.parametrize("repaint", [True, False])
def test_clean_step_equals_direct_transcription(repaint):
    """One clean step (non-integer factor, resampling, repaint, RRG) against a direct per-cell
    transcription of the clean rules (cells floor(j H / h), scatter at the source, own-cell fill, top-left
    read-back) and of the step; L is the full-canvas D_u, equal to the stitched one for this conv mock."""
    base, cfg, R, W0, seed, i = 16, 6.0, 2, 800.0, 3, 1
    net = MockEps()
    den = protocol_denoiser(net, base)
    H, W = 24, 20
    sig = _sigmas(10, torch.float64)
    x = torch.randn(1, 4, H, W, dtype=torch.float64, generator=torch.Generator().manual_seed(5)) * sig[i]
    plan = E.build_plan(x.shape, sig, base=base, cfg=cfg, resampling_steps=R, rrg_init_weight=W0, cosine_scale=1.0,
                        patch_size=8, background=torch.randn(2, 4, dtype=torch.float64), dtype=torch.float64,
                        repaint=repaint)
    got = E.elastic_step(den, x, sig, i, plan, seed=seed)
    h, w = round(H * base / max(H, W)), round(W * base / max(H, W))
    rb = [j * H // h for j in range(h + 1)]
    cb = [j * W // w for j in range(w + 1)]
    rnd = E.StepRandom(plan, seed, i)
    s, s1 = float(sig[i]), float(sig[i + 1])

    def model(xin, which):                                          # any size (the full canvas too)
        return xin - s * net(xin / math.sqrt(1 + s * s), int(SCHED.timestep(sig[i])), which)

    def pad(c):
        ch, cw = c.shape[-2:]
        lp, tp = (base - cw) // 2, (base - ch) // 2
        blk = lambda side, ph, pw: (lambda p: (p[0] + s * p[1])[None])(rnd.pad_parts(0, side, ph, pw))
        row = torch.cat([blk("left", ch, lp), c, blk("right", ch, base - cw - lp)], 3) if cw < base else c
        return (torch.cat([blk("top", tp, base), row, blk("bottom", base - ch - tp, base)], 2) if ch < base
                else row), tp, lp

    def direction(xx, picks):
        G = torch.full_like(xx, float("nan"))
        for r in range(picks.shape[0]):
            xr = torch.empty(1, 4, h, w, dtype=xx.dtype)
            src = {}
            for p in range(h):
                for q in range(w):
                    k, cw = int(picks[r, p, q]), cb[q + 1] - cb[q]
                    yy, xx_ = rb[p] + k // cw, cb[q] + k % cw
                    assert rb[p] <= yy < rb[p + 1] and cb[q] <= xx_ < cb[q + 1]
                    xr[0, :, p, q] = xx[0, :, yy, xx_]
                    src[p, q] = (yy, xx_)
            inp, tp, lp = pad(xr)
            dc = model(inp, ["cond"])[:, :, tp:tp + h, lp:lp + w]
            du = model(inp, ["uncond"])[:, :, tp:tp + h, lp:lp + w]
            g = dc - du
            for (p, q), (yy, xx_) in src.items():
                G[0, :, yy, xx_] = g[0, :, p, q]
        for p in range(h):
            for q in range(w):
                cell = G[0, :, rb[p]:rb[p + 1], cb[q]:cb[q + 1]]
                cell[torch.isnan(cell)] = g[0, :, p, q].view(-1, 1, 1).expand_as(cell)[torch.isnan(cell)]
        g_down = G[:, :, rb[:-1]][:, :, :, cb[:-1]]
        return G, du, g_down

    picks = rnd.picks(0, R + 1)
    G, du, g_down = direction(x, picks)
    D = model(x, ["uncond"]) + cfg * G
    x1 = x + (x - D) / s * (s1 - s)
    g = cfg
    if repaint:
        x_re = x1 + math.sqrt(s * s - s1 * s1) * rnd.repaint_noise(0)[None]
        G, du, g_down = direction(x_re, picks[:1])
        g = cfg / 3
        D = model(x_re, ["uncond"]) + g * G
        x1 = x_re + (x_re - D) / s * (s1 - s)
    wgt = E.rrg_weight(i, 10, W0, 0.4, 1.0)
    assert wgt > 10
    d_ref = du + g * g_down
    up = d_ref[:, :, torch.repeat_interleave(torch.arange(h), torch.tensor(rb[1:]) - torch.tensor(rb[:-1]))]
    up = up[:, :, :, torch.repeat_interleave(torch.arange(w), torch.tensor(cb[1:]) - torch.tensor(cb[:-1]))]
    x1 = x1 + math.sqrt(1 + s1 * s1) * 2 * wgt / (4 * H * W) * (up - D)
    assert torch.allclose(got.denoised, D, atol=1e-10)
    assert torch.allclose(got.x, x1, atol=1e-10)


# ----------------------------------------------------------------------------------------------
# determinism, batching, callback
# ----------------------------------------------------------------------------------------------

def _run(den, x, sig, **kw):
    opts = dict(base=16, resampling_steps=3, rrg_init_weight=300.0, cosine_scale=1.0, patch_size=6,
                background=torch.randn(3, 4, generator=torch.Generator().manual_seed(5)))
    opts.update(kw)
    return E.sample_elastic(den, x.clone(), sig, **opts)


@pytest.mark.parametrize("mode", ["clean", "faithful"])
def test_view_batch_independence_batch_vs_alone_determinism(mode):
    den = protocol_denoiser(MockEps(), 16)
    sig = _sigmas(4, torch.float64)
    x = torch.randn(3, 4, 30, 22, generator=torch.Generator().manual_seed(6), dtype=torch.float64) * sig[0]
    a = _run(den, x, sig, mode=mode, view_batch_size=1, seed=4)
    b = _run(den, x, sig, mode=mode, view_batch_size=5, ref_batch_size=1, seed=4)
    c = _run(den, x, sig, mode=mode, view_batch_size=64, ref_batch_size=2, seed=4)
    assert (a - b).abs().max() < 1e-10 and (a - c).abs().max() < 1e-10
    again = _run(den, x, sig, mode=mode, view_batch_size=1, seed=4)
    assert torch.equal(a, again)                                  # bit-identical, no global RNG
    torch.manual_seed(123)
    assert torch.equal(a, _run(den, x, sig, mode=mode, view_batch_size=1, seed=4))
    for i in range(3):
        alone = _run(den, x[i:i + 1], sig, mode=mode, view_batch_size=1, seed=4, sample_ids=[i])
        assert (alone - a[i:i + 1]).abs().max() < 1e-10
    other = _run(den, x, sig, mode=mode, view_batch_size=1, seed=5)
    assert (other - a).abs().max() > 1e-3


def test_sample_ids_key_the_randomness_like_a_batch_index():
    den = protocol_denoiser(MockEps(), 16)
    sig = _sigmas(4, torch.float64)
    x = torch.randn(2, 4, 30, 22, generator=torch.Generator().manual_seed(6), dtype=torch.float64) * sig[0]
    a = _run(den, x, sig, seed=4, sample_ids=[7, 2])
    for i, sid in enumerate([7, 2]):
        alone = _run(den, x[i:i + 1], sig, seed=4, sample_ids=[sid])
        assert (alone - a[i:i + 1]).abs().max() < 1e-10
        # keys are hashed, not added: sample sid at seed 4 is not sample 0 at seed 4 + sid
        assert (alone - _run(den, x[i:i + 1], sig, seed=4 + sid)).abs().max() > 1e-3
    with pytest.raises(ValueError, match="sample_ids must have one id per sample"):
        _run(den, x, sig, seed=4, sample_ids=[1])


def test_call_batching_and_row_order_at_2x():
    base, B, R, vbs = 16, 2, 4, 5
    spy = []
    den = pointwise_denoiser(base, spy)
    sig = _sigmas(4)
    x = torch.randn(B, 4, 32, 32) * sig[0]
    plan = E.build_plan(x.shape, sig, base=base, resampling_steps=R, view_batch_size=vbs)
    res = E.elastic_step(den, x, sig, 0, plan, seed=0)
    n_views = len(plan.views)
    assert n_views == 16
    expect = [("reference", "main", 2 * B * (R + 1))] + [("patch", "main", B * min(vbs, n_views - k))
                                                          for k in range(0, n_views, vbs)]
    expect += [("reference", "repaint", 2 * B)] + [("patch", "repaint", B * min(vbs, n_views - k))
                                                    for k in range(0, n_views, vbs)]
    assert res.info["calls"] == expect and res.info["repaint"]
    ref_meta = spy[0][2]
    n = len(ref_meta)
    assert spy[0][1] == ["cond"] * (n // 2) + ["uncond"] * (n // 2)
    assert [(m.index, m.sample) for m in ref_meta[:n // 2]] == [(r, b) for r in range(R + 1) for b in range(B)]
    assert [(m.index, m.sample) for m in ref_meta[:n // 2]] == [(m.index, m.sample) for m in ref_meta[n // 2:]]
    patch_meta = spy[1][2]
    assert [(m.index, m.sample) for m in patch_meta] == [(v, b) for v in range(vbs) for b in range(B)]
    m = patch_meta[2]                                             # view 1, sample 0
    v = plan.views[1]
    assert m.window == (v.win[0], v.win[2], v.win[1] - v.win[0], v.win[3] - v.win[2])
    assert m.source == (v.crop[0], v.crop[2], 16, 16) and m.content == (0, 0, 16, 16) and m.canvas == (32, 32)
    # a canvas shorter than base: content boxes locate the real pixels inside the padded inputs
    spy.clear()
    x = torch.randn(1, 4, 8, 40) * sig[0]
    plan = E.build_plan(x.shape, sig, base=base, resampling_steps=1)
    E.elastic_step(den, x, sig, 0, plan, seed=0)
    ref = [m for _, _, ms in spy for m in ms if m.role == "reference"][0]
    assert ref.reference_size == (3, 16) and ref.content == (6, 0, 3, 16) and ref.source == (0, 0, 8, 40)
    patches = [m for _, _, ms in spy for m in ms if m.role == "patch" and m.phase == "main"]
    assert {m.content for m in patches} == {(4, 0, 8, 16)}
    assert [m.window[1] for m in patches] == [0, 8, 16, 24, 32] and {m.source[2:] for m in patches} == {(8, 16)}


def test_callback_and_rrg_effect():
    den = protocol_denoiser(MockEps(dtype=torch.float32), 16)
    sig = _sigmas(5)
    x = torch.randn(1, 4, 32, 24, generator=torch.Generator().manual_seed(8)) * sig[0]
    got = []
    out = E.sample_elastic(den, x.clone(), sig, {"seed": 2}, got.append, base=16, resampling_steps=1,
                           rrg_init_weight=400.0, cosine_scale=1.0)
    assert [d["i"] for d in got] == list(range(5))
    assert all(set(d) == {"x", "i", "sigma", "sigma_hat", "denoised"} and d["denoised"].shape == x.shape for d in got)
    assert torch.allclose(got[-1]["denoised"], out, atol=1e-5)    # last step lands on sigma 0
    no_rrg = E.sample_elastic(den, x.clone(), sig, {"seed": 2}, base=16, resampling_steps=1, rrg_init_weight=0.0)
    assert (no_rrg - out).abs().max() > 1e-3


# ----------------------------------------------------------------------------------------------
# validation
# ----------------------------------------------------------------------------------------------

@pytest.mark.parametrize("kwargs,match", [
    (dict(patch_size=20), r"patch_size=20 is larger than the base size 16"),
    (dict(patch_size=0), r"patch_size must be an integer >= 1 \(got 0\)"),
    (dict(new_p=0.0), r"new_p must be a finite number in \(0, 1\] \(got 0.0\)"),
    (dict(new_p=1.5), r"new_p must be .*\(got 1.5\)"),
    (dict(resampling_steps=-1), r"resampling_steps must be an integer >= 0 \(got -1\)"),
    (dict(view_batch_size=0), r"view_batch_size must be an integer >= 1 \(got 0\)"),
    (dict(mode="fast"), r"mode must be one of 'clean', 'faithful' \(got 'fast'\)"),
    (dict(preset="xl"), r"preset must be one of 'auto', 'custom' \(got 'xl'\)"),
    (dict(rrg_stop_t=1.5), r"rrg_stop_t must be a finite number between 0 and 1 \(got 1.5\)"),
    (dict(cfg=float("nan")), r"cfg must be a finite number \(got nan\)"),
    (dict(repaint="yes"), r"repaint must be True or False \(got 'yes'\)"),
    (dict(patchsize=8), r"unknown option"),
    (dict(background=torch.zeros(2, 3)), r"background must be a tensor \[K, 4\]"),
    (dict(max_factor=1.5), r"at most max_factor=1.5x"),
    (dict(mode="faithful", base=8), r"faithful.*at most 2x"),
])
def test_bad_inputs_raise_before_any_model_work(kwargs, match):
    def den(*a):
        raise AssertionError("model called")

    opts = dict(base=16)
    opts.update(kwargs)
    with pytest.raises(ValueError, match=match):
        E.sample_elastic(den, torch.zeros(1, 4, 32, 24), _sigmas(4), **opts)
    with pytest.raises(ValueError, match=match):
        E.validate_elastic((1, 4, 32, 24), _sigmas(4), **opts)


def test_bad_sizes_steps_and_sigmas():
    with pytest.raises(ValueError, match=r"width=1081 px is not a multiple of the latent grid"):
        E.latent_size_from_pixels(1081, 1080)
    assert E.latent_size_from_pixels(1920, 1080) == (135, 240)
    with pytest.raises(ValueError, match=r"steps must be an integer >= 1 \(got 0\)"):
        E.validate_elastic((1, 4, 16, 16), base=16, steps=0)
    with pytest.raises(ValueError, match=r"sigmas must be a 1-D tensor with at least 2 values"):
        E.validate_elastic((1, 4, 16, 16), torch.tensor([1.0]), base=16)
    with pytest.raises(ValueError, match=r"sigmas must be strictly decreasing"):
        E.validate_elastic((1, 4, 16, 16), torch.tensor([1.0, 2.0, 0.0]), base=16)
    with pytest.raises(ValueError, match=r"base .* is required"):
        E.validate_elastic((1, 4, 16, 16))
    with pytest.raises(ValueError, match=r"4-D"):
        E.validate_elastic((4, 16, 16), base=16)


def test_a_validated_config_is_used_as_given():
    """``config=`` (validated once by its maker, e.g. the node) gives the same run as the options."""
    den = protocol_denoiser(MockEps(), 16)
    sig = _sigmas(3, torch.float64)
    x = torch.randn(2, 4, 30, 22, generator=torch.Generator().manual_seed(6), dtype=torch.float64) * sig[0]
    opts = dict(base=16, resampling_steps=2, rrg_init_weight=300.0, cosine_scale=1.0, patch_size=6,
                background=torch.randn(3, 4, dtype=torch.float64))
    config = E.validate_elastic(x.shape, sig, **opts)
    a = E.sample_elastic(den, x.clone(), sig, seed=4, **opts)
    assert torch.equal(a, E.sample_elastic(den, x.clone(), sig, seed=4, config=config))
    with pytest.raises(ValueError, match="cannot be given together with config"):
        E.sample_elastic(den, x.clone(), sig, config=config, cfg=3.0)
    with pytest.raises(ValueError, match="config is for latents"):
        E.sample_elastic(den, x[:, :, :20].clone(), sig, config=config)
