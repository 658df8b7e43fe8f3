"""Benchmark of the pure ElasticDiffusion step (samplers/elastic/) on CPU with a mock conv-net.

For a canvas of 2x the base size (square, auto preset: R = 10, repaint, RRG) it prints
  * the model calls of one step and their batch sizes (batched design vs the official call pattern),
  * wall time per step: batched clean step vs a sequential faithful evaluation of the same step
    (official call pattern: one call per resampling round, one view per call), target <= 0.5x,
  * peak CPU memory of the step (torch profiler memory events) against one base-size CFG step.

Usage:  .venv/bin/python scripts/bench_elastic.py [--base 32] [--repeats 5] [--threads N]
The default run takes well under two minutes on 2 CPU cores.  Pure torch, no ComfyUI.
"""
import argparse
import os
import sys
import time

import torch
import torch.nn as nn
import torch.nn.functional as F

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from _pack import load_pack  # noqa: E402

nse = load_pack()
from nse.samplers import elastic as E  # noqa: E402
from nse.samplers.common import DiscreteSchedule  # noqa: E402


class ResBlock(nn.Module):
    def __init__(self, ch, emb):
        super().__init__()
        self.n1, self.c1 = nn.GroupNorm(8, ch), nn.Conv2d(ch, ch, 3, padding=1)
        self.n2, self.c2 = nn.GroupNorm(8, ch), nn.Conv2d(ch, ch, 3, padding=1)
        self.e = nn.Linear(emb, ch)

    def forward(self, x, e):
        h = self.c1(F.silu(self.n1(x))) + self.e(e)[:, :, None, None]
        return x + self.c2(F.silu(self.n2(h)))


class Attn(nn.Module):
    def __init__(self, ch):
        super().__init__()
        self.n, self.qkv, self.o = nn.GroupNorm(8, ch), nn.Conv2d(ch, 3 * ch, 1), nn.Conv2d(ch, ch, 1)

    def forward(self, x):
        B, C, H, W = x.shape
        q, k, v = self.qkv(self.n(x)).reshape(B, 3, 4, C // 4, H * W).unbind(1)
        a = F.scaled_dot_product_attention(q.transpose(-1, -2), k.transpose(-1, -2), v.transpose(-1, -2))
        return x + self.o(a.transpose(-1, -2).reshape(B, C, H, W))


class MockUNet(nn.Module):
    """A small UNet-shaped epsilon-net (2 levels, GroupNorm, SiLU, attention at the low level);
    conditioning = a learned 'prompt' vector for cond rows, zero for uncond rows."""

    def __init__(self, c_in=4, ch=64, emb=128):
        super().__init__()
        self.t = nn.Sequential(nn.Linear(1, emb), nn.SiLU(), nn.Linear(emb, emb))
        self.prompt = nn.Parameter(torch.randn(emb) * 0.1)
        self.inp = nn.Conv2d(c_in, ch, 3, padding=1)
        self.d1, self.d2 = ResBlock(ch, emb), ResBlock(ch, emb)
        self.down = nn.Conv2d(ch, 2 * ch, 3, stride=2, padding=1)
        self.m1, self.ma, self.m2 = ResBlock(2 * ch, emb), Attn(2 * ch), ResBlock(2 * ch, emb)
        self.up = nn.ConvTranspose2d(2 * ch, ch, 4, stride=2, padding=1)
        self.u1 = ResBlock(ch, emb)
        self.out = nn.Sequential(nn.GroupNorm(8, ch), nn.SiLU(), nn.Conv2d(ch, c_in, 3, padding=1))

    def forward(self, x, t, cond):
        e = self.t(t.view(-1, 1) / 1000.0) + cond.view(-1, 1) * self.prompt
        h = self.d2(self.d1(self.inp(x), e), e)
        m = self.m2(self.ma(self.m1(self.down(h), e)), e)
        return self.out(self.u1(self.up(m) + h, e))


class TinyNet(nn.Module):
    """An overhead-bound net (two small convs): per-call cost dominated by fixed costs, like small
    models or batch-1 calls on a GPU."""

    def __init__(self, c_in=4, ch=16):
        super().__init__()
        self.a, self.b = nn.Conv2d(c_in, ch, 3, padding=1), nn.Conv2d(ch, c_in, 3, padding=1)

    def forward(self, x, t, cond):
        return self.b(F.silu(self.a(x))) * (1 + t.view(-1, 1, 1, 1) / 1000) + cond.view(-1, 1, 1, 1) * 0.1


class ProtocolDenoiser:
    """Elastic protocol wrapper (EPS model, ComfyUI's input scaling) that records every call."""

    def __init__(self, net, sched, base):
        self.net, self.sched, self.base, self.calls = net, sched, base, []

    def __call__(self, x, sigma, which, meta):
        self.calls.append((meta[0].role, meta[0].phase, x.shape[0]))
        s = sigma.view(-1, 1, 1, 1)
        t = self.sched.timestep(sigma.double()).to(x.dtype)
        cond = torch.tensor([w == "cond" for w in which], dtype=x.dtype)
        return x - s * self.net(x / torch.sqrt(1 + s * s), t, cond)


def peak_bytes(fn):
    """Peak of CPU bytes allocated while ``fn`` runs (profiler memory events; None if unavailable)."""
    from torch.profiler import ProfilerActivity, profile
    with profile(activities=[ProfilerActivity.CPU], profile_memory=True) as prof:
        fn()
    try:
        evs = [e for e in prof.profiler.kineto_results.events() if e.name() == "[memory]"]
        evs.sort(key=lambda e: e.start_ns())
        cur = peak = 0
        for e in evs:
            cur += e.nbytes()
            peak = max(peak, cur)
        return peak
    except Exception:  # private API moved: report n/a rather than a wrong number
        return None


def timed(fn, repeats):
    best = float("inf")
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - t0)
    return best


def timed_pair(fa, fb, repeats):
    """Best-of-``repeats`` wall times of two functions, measured alternately (robust to load drift)."""
    ta = tb = float("inf")
    for _ in range(repeats):
        ta = min(ta, timed(fa, 1))
        tb = min(tb, timed(fb, 1))
    return ta, tb


def summarize(calls):
    out = {}
    for role, phase, n in calls:
        out.setdefault((phase, role), []).append(n)
    return ", ".join(f"{phase}/{role}: {len(v)} call(s) {v if len(v) <= 6 else str(v[:6])[:-1] + ', ...]'}"
                     for (phase, role), v in out.items())


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--base", type=int, default=32, help="model (training) latent size; canvas = 2x base")
    ap.add_argument("--repeats", type=int, default=5, help="best-of-N timing, measured alternately")
    ap.add_argument("--threads", type=int, default=0, help="torch threads (0 = leave as is)")
    ap.add_argument("--step", type=int, default=0, help="which step of a 50-step ddim_uniform run to time")
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    base, H = args.base, 2 * args.base
    sched = DiscreteSchedule()
    t = torch.arange(981, 0, -20)                               # ComfyUI's ddim_uniform grid for 50 steps
    sig = torch.cat([sched.sigmas[t], sched.sigmas.new_zeros(1)]).float()
    net = MockUNet().eval()
    den = ProtocolDenoiser(net, sched, base)
    x = torch.randn(1, 4, H, H) * sig[args.step]
    preset = E.elastic_preset("auto", H, H, base)
    common = dict(base=base, background=torch.randn(4, 4) * 0.5)
    fast = E.build_plan(x.shape, sig, mode="clean", view_batch_size=16, **common)
    seq = E.build_plan(x.shape, sig, mode="faithful", view_batch_size=1, ref_batch_size=1, **common)
    print(f"torch {torch.__version__}, threads {torch.get_num_threads()}, mock UNet "
          f"{sum(p.numel() for p in net.parameters()) / 1e6:.2f} M params")
    print(f"canvas {H}x{H} latent (2x base {base}); auto preset: R={preset['resampling_steps']}, "
          f"W0={preset['rrg_init_weight']:g}, patch {fast.config.patch_size}, views {len(fast.views)}; step {args.step}")

    with torch.no_grad():
        def run(plan):
            return lambda: E.elastic_step(den, x, sig, args.step, plan, seed=0)

        def cfg_step():
            xb = torch.randn(1, 4, base, base) * sig[args.step]
            s = sig[args.step].expand(2)
            inp = torch.cat([xb, xb])
            d = den(inp, s, ["cond", "uncond"], [E.RowMeta("reference", "main", "cond", 0, 0, 0, (base, base),
                                                             (base, base), base, (0, 0, base, base),
                                                             (0, 0, base, base), (0, 0, base, base))] * 2)
            d_c, d_u = d.chunk(2)
            return xb + (xb - (d_u + 7.0 * (d_c - d_u))) / sig[args.step] * (sig[args.step + 1] - sig[args.step])

        for name, plan in (("batched clean (vbs 16)", fast), ("sequential faithful (official calls)", seq)):
            den.calls.clear()
            run(plan)()
            rows = sum(n for _, _, n in den.calls)
            print(f"{name}: {len(den.calls)} model calls, {rows} base-size rows per step")
            print(f"    {summarize(den.calls)}")
        run(fast)()
        run(seq)()                                                  # warm-up
        cfg_step()
        t_fast, t_seq = timed_pair(run(fast), run(seq), args.repeats)
        t_cfg = timed(cfg_step, args.repeats)
        print(f"wall time per step: batched {t_fast * 1e3:.0f} ms, sequential {t_seq * 1e3:.0f} ms "
              f"-> ratio {t_fast / t_seq:.2f}x (target <= 0.5x); one base-size CFG step {t_cfg * 1e3:.0f} ms")
        m_fast, m_seq, m_cfg = peak_bytes(run(fast)), peak_bytes(run(seq)), peak_bytes(cfg_step)
        if None in (m_fast, m_seq, m_cfg):
            print("peak memory: n/a (profiler memory events unavailable)")
        else:
            mb = 1 / 2 ** 20
            print(f"peak CPU memory per step: batched {m_fast * mb:.1f} MiB ({m_fast / m_cfg:.1f}x), sequential "
                  f"{m_seq * mb:.1f} MiB ({m_seq / m_cfg:.1f}x), base-size CFG step {m_cfg * mb:.1f} MiB (1.0x)")
        tiny = ProtocolDenoiser(TinyNet().eval(), sched, base)

        def run_tiny(plan):
            return lambda: E.elastic_step(tiny, x, sig, args.step, plan, seed=0)

        run_tiny(fast)()
        run_tiny(seq)()
        tt_fast, tt_seq = timed_pair(run_tiny(fast), run_tiny(seq), 2 * args.repeats)
        print(f"same step with an overhead-bound tiny net: batched {tt_fast * 1e3:.1f} ms, sequential "
              f"{tt_seq * 1e3:.1f} ms -> ratio {tt_fast / tt_seq:.2f}x")
        bounded = E.build_plan(x.shape, sig, mode="clean", view_batch_size=2, ref_batch_size=1, **common)
        m_b = peak_bytes(run(bounded))
        t_b = timed(run(bounded), args.repeats)
        if m_b is not None and m_cfg:
            print(f"memory-bounded clean (ref_batch_size 1, view_batch_size 2): {t_b * 1e3:.0f} ms, "
                  f"peak {m_b / 2 ** 20:.1f} MiB ({m_b / m_cfg:.1f}x CFG step)")


if __name__ == "__main__":
    main()
