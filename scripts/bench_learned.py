"""Benchmark on the learned demo model: each method against its baselines at equal NFE.

NFE = network passes per picture (a CFG step costs 2).  Measures: Fréchet distance (FD) of the
demo classifier's features to 500 held-out pictures (lower is better; biased upward at small
sample counts, so only numbers of the same table compare), class accuracy of the pictures asked
for (chance 0.2), and for other sizes the object count per picture (the data has exactly one).

Sections (``--sections``; default all, with ``--quick`` the first three):

* ``nested``   Nested 6 x 8 vs Euler at equal NFE: x0 preview after the same passes, and a full
               Euler run with exactly that many steps (the baseline that knew its budget);
* ``split``    strong CFG (9): ltsp/stsp vs euler (= DDIM), dpmpp_2m, ipndm, uni_pc at 12..50 NFE;
* ``elastic``  2x and 3x wide and tall: Elastic vs direct generation vs MultiDiffusion patches;
* ``elastic-equal``  direct generation with as many steps as Elastic's NFE buys;
* ``nested-options``, ``split-options``, ``elastic-options``: the evidence for the defaults.

    .venv/bin/python scripts/bench_learned.py [--quick] [--sections nested split] [--json out/bench.json]
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import torch  # noqa: E402

import demo_runs as R  # noqa: E402
from baselines import counts_of  # noqa: E402

nse = R.nse
from nse.samplers import nested  # noqa: E402
from nse.samplers.common import sample_euler  # noqa: E402

SIZES = ((32, 64), (32, 96), (64, 32), (96, 32))     # (height, width)
SPLIT_STEPS = (6, 8, 12, 16, 25)                       # baseline steps; budget = 2 x steps passes


def f3(v):
    return f"{v:.3g}" if abs(v) < 1000 else f"{v:.0f}"


def _score_row(sc, images, labels):
    s = sc(images, labels)
    return s["fd"], s["acc"]


def bench_nested(den, sc, n, seed, outer=6, inner=8, cfg=3.0, full_baseline=True):
    """Anytime curve: FD / accuracy after every outer step vs Euler at the same NFE."""
    lab = R.balanced_labels(n)
    prev, nfe = R.nested_run(den, lab, outer, inner, cfg, seed)
    plain, pnfe, _ = R.plain_previews(den, lab, outer * inner, cfg, seed)
    rows, out = [], []
    for i, (x0, k) in enumerate(zip(prev, nfe)):
        fd_n, acc_n = _score_row(sc, x0, lab)
        fd_p, acc_p = _score_row(sc, plain[pnpe_index(pnfe, k)], lab)
        rec = {"outer": i + 1, "nfe": k, "nested_fd": fd_n, "nested_acc": acc_n, "preview_fd": fd_p,
               "preview_acc": acc_p}
        row = [i + 1, f"{k:.0f}", f3(fd_n), f"{acc_n:.2f}", f3(fd_p), f"{acc_p:.2f}", f"{fd_p / fd_n:.1f}x"]
        if full_baseline:
            full = R.split_run(den, lab, "solver", "euler", int(k // 2), cfg, seed)[0]
            rec["euler_fd"], rec["euler_acc"] = _score_row(sc, full, lab)
            row += [f3(rec["euler_fd"]), f"{rec['euler_acc']:.2f}", f"{rec['euler_fd'] / fd_n:.2f}x"]
        rows.append(row)
        out.append(rec)
    head = ["outer", "NFE", "Nested FD", "acc", "Euler x0 preview FD", "acc", "preview/Nested"]
    if full_baseline:
        head += ["Euler k steps FD", "acc", "Euler/Nested"]
    print(R.run_table(rows, head, f"Nested {outer} x {inner}, cfg {cfg:g}, {n} pictures (Euler: 48 steps, "
                                  f"'normal' schedule; 'Euler k steps' = a full run with NFE/2 steps)"))
    return out


def pnpe_index(pnfe, k):
    """Index of the plain run's preview made after exactly ``k`` passes."""
    return min(range(len(pnfe)), key=lambda j: abs(pnfe[j] - k))


def bench_split(den, sc, n, seed, cfg=9.0, steps=SPLIT_STEPS, methods=None):
    """Every method at the budgets 2 x steps passes; FD and accuracy tables."""
    lab = R.balanced_labels(n)
    methods = methods or R.SPLIT_METHODS
    res = {}
    for label, (kind, spec) in methods.items():
        res[label] = {}
        for st in steps:
            k = R.steps_for_budget(kind, spec, 2 * st)
            img, used = R.split_run(den, lab, kind, spec, k, cfg, seed)
            fd, acc = _score_row(sc, img, lab)
            res[label][2 * st] = {"steps": k, "nfe": used, "fd": fd, "acc": acc}
    budgets = [2 * s for s in steps]
    head = ["method"] + [f"{b} NFE" for b in budgets]
    for key, name in (("fd", "FD"), ("acc", "class accuracy")):
        rows = [[lab_] + [f"{f3(r[b][key])} ({r[b]['steps']}st)" if key == "fd" else f"{r[b][key]:.2f}"
                          for b in budgets] for lab_, r in res.items()]
        print(R.run_table(rows, head, f"Split, cfg {cfg:g}, {n} pictures: {name} (steps in brackets)"))
    kinds = {kind for kind, _ in methods.values()}
    if kinds == {"split", "solver"}:
        best = {kind: {b: min(v[b]["fd"] for k, v in res.items() if methods[k][0] == kind) for b in budgets}
                for kind in kinds}
        print("  best split FD / best baseline FD: " + "  ".join(
            f"{b}: {best['split'][b] / best['solver'][b]:.2f}" for b in budgets))
    return res


def bench_elastic(den, sc, n, seed, sizes=SIZES, steps=16, cfg=3.0, methods=R.ELASTIC_METHODS, **options):
    """Object counts (and the object crops' FD / accuracy) per size and method."""
    lab = R.balanced_labels(n)
    res, rows = {}, []
    for h, w in sizes:
        for m in methods:
            run = R.elastic_run(den, lab, h, w, m, steps, cfg, seed, **(options if m == "elastic" else {}))
            s = {**R.object_summary(run.counts), **R.crop_scores(sc, run.images, lab), "nfe": run.nfe,
                 "counts": run.counts.tolist()}
            res[f"{w}x{h} {m}"] = s
            rows.append([f"{w}x{h}", m, f"{run.nfe:.0f}", f"{s['mean']:.2f}", f"{s['one']:.0%}", f"{s['many']:.0%}",
                         f"{s['none']:.0%}", f3(s["crop_fd"]), f"{s['crop_acc']:.2f}", counts_of(run.counts)])
    print(R.run_table(rows, ["size (w x h)", "method", "NFE", "mean count", "exactly 1", ">= 2", "none",
                             "crop FD", "crop acc", "counts"],
                      f"Elastic, {steps} steps, cfg {cfg:g}, {n} pictures per size (NFE in 32 x 32 passes)"))
    return res


def elastic_equal_nfe(den, sc, n, seed, sizes=SIZES, steps=16, cfg=3.0):
    """Direct generation given Elastic's budget: as many Euler steps as Elastic's NFE allows."""
    lab = R.balanced_labels(n)
    res, rows = {}, []
    for h, w in sizes:
        el = R.elastic_run(den, lab, h, w, "elastic", steps, cfg, seed)
        per_step = 2 * h * w / 32 ** 2
        k = max(steps, int(el.nfe // per_step))
        run = R.elastic_run(den, lab, h, w, "direct", k, cfg, seed)
        for name, r in (("elastic", el), (f"direct, {k} steps", run)):
            s = {**R.object_summary(r.counts), **R.crop_scores(sc, r.images, lab), "nfe": r.nfe}
            res[f"{w}x{h} {name}"] = s
            rows.append([f"{w}x{h}", name, f"{r.nfe:.0f}", f"{s['mean']:.2f}", f"{s['one']:.0%}",
                         f3(s["crop_fd"]), f"{s['crop_acc']:.2f}", counts_of(r.counts)])
    print(R.run_table(rows, ["size (w x h)", "method", "NFE", "mean count", "exactly 1", "crop FD", "crop acc",
                             "counts"], f"Elastic vs direct generation at equal NFE, {n} pictures per size"))
    return res


def _nested_final(den, sc, lab, outer, inner, cfg, seed, **opts):
    prev, nfe = R.nested_run(den, lab, outer, inner, cfg, seed, **opts)
    fd, acc = _score_row(sc, prev[-1], lab)
    fd1, _ = _score_row(sc, prev[0], lab)
    return {"nfe": nfe[-1], "fd": fd, "acc": acc, "first_fd": fd1}


def nested_options(den, sc, n, seed, cfg=3.0):
    """outer_eta, inner sampler and the outer x inner split at 48 model calls."""
    lab = R.balanced_labels(n)
    anc = {"inner_sampler": None}        # the paper's inner: ancestral Euler, eta 0.85
    variants = {
        "6x8 inner euler, outer_eta 1 (default)": (6, 8, {}),
        "6x8 inner euler, outer_eta 0": (6, 8, {"outer_eta": 0.0}),
        "6x8 inner dpm_2s_grid": (6, 8, {"inner_sampler": nested.sample_dpm_2s_grid,
                                         "inner_scheduler": "official_dpm"}),
        "6x8 inner ancestral (paper), outer_eta 1": (6, 8, anc),
        "6x8 inner ancestral, outer_eta 0.5": (6, 8, {**anc, "outer_eta": 0.5}),
        "6x8 inner ancestral, outer_eta 0 (paper)": (6, 8, {**anc, "outer_eta": 0.0}),
        "3x16": (3, 16, {}),
        "12x4": (12, 4, {}),
        "2x24": (2, 24, {}),
    }
    res, rows = {}, []
    for label, (o, i, opts) in variants.items():
        r = _nested_final(den, sc, lab, o, i, cfg, seed, **opts)
        res[label] = r
        rows.append([label, f"{r['nfe']:.0f}", f3(r["first_fd"]), f3(r["fd"]), f"{r['acc']:.2f}"])
    for solver in ("euler", "dpmpp_2m"):
        img, used = R.split_run(den, lab, "solver", solver, 48, cfg, seed)
        fd, acc = _score_row(sc, img, lab)
        res[f"plain {solver} 48 steps"] = {"nfe": used, "fd": fd, "acc": acc}
        rows.append([f"plain {solver} 48 steps", f"{used:.0f}", "-", f3(fd), f"{acc:.2f}"])
    print(R.run_table(rows, ["Nested variant", "NFE", "first preview FD", "final FD", "acc"],
                      f"Nested options, cfg {cfg:g}, {n} pictures"))
    return res


SPLIT_OPTION_VARIANTS = {
    "ltsp4 (default: sequential, variable)": ("split", {"method": "ltsp4", "ab_coeffs": "variable"}),
    "ltsp4 sequential fixed (paper)": ("split", {"method": "ltsp4"}),
    "ltsp4 shared fixed": ("split", {"method": "ltsp4", "eval_mode": "shared"}),
    "ltsp4 shared variable": ("split", {"method": "ltsp4", "eval_mode": "shared", "ab_coeffs": "variable"}),
    "ltsp4 shared base uncond": ("split", {"method": "ltsp4", "eval_mode": "shared", "split_base": "uncond"}),
    "ltsp4 sequential base uncond": ("split", {"method": "ltsp4", "ab_coeffs": "variable", "split_base": "uncond"}),
    "ltsp2 shared": ("split", {"method": "ltsp2", "eval_mode": "shared"}),
    "ltsp2 shared variable": ("split", {"method": "ltsp2", "eval_mode": "shared", "ab_coeffs": "variable"}),
    "ltsp2 sequential variable": ("split", {"method": "ltsp2", "ab_coeffs": "variable"}),
    "stsp4": ("split", {"method": "stsp4", "ab_coeffs": "variable"}),
    "stsp2": ("split", {"method": "stsp2", "ab_coeffs": "variable"}),
    "plms4 (no split)": ("split", {"method": "plms4"}),
    "euler = DDIM": ("solver", "euler"),
}


def split_options(den, sc, n, seed, cfg=9.0, steps=(6, 8, 16)):
    """The split sampler's options at two budgets under strong CFG."""
    return bench_split(den, sc, n, seed, cfg, steps, SPLIT_OPTION_VARIANTS)


def elastic_options(den, sc, n, seed, sizes=((32, 64), (32, 96)), steps=16, cfg=3.0):
    """Elastic presets: auto (the default) vs no resampling / no RRG / no repaint, on the demo's sizes,
    and the official guidance scale 10."""
    variants = {"auto (default)": (cfg, {}), "custom (R 0, no RRG)": (cfg, {"preset": "custom"}),
                "auto, no RRG": (cfg, {"rrg_init_weight": 0.0}), "auto, no repaint": (cfg, {"repaint": False}),
                "auto, R 3": (cfg, {"resampling_steps": 3}), "auto, cfg 10 (official)": (10.0, {})}
    res = {}
    for label, (g, opts) in variants.items():
        print(f"-- Elastic variant: {label}")
        res[label] = bench_elastic(den, sc, n, seed, sizes, steps, g, ("elastic",), **opts)
    return res


SECTIONS = ("nested", "split", "elastic", "elastic-equal", "nested-options", "split-options", "elastic-options")


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="fewer pictures (numbers are noisier)")
    ap.add_argument("--sections", nargs="+", default=None, choices=SECTIONS,
                    help="default: all; with --quick: nested split elastic")
    ap.add_argument("--samples", type=int, default=None, help="pictures per 32 x 32 setting (default 100, quick 25)")
    ap.add_argument("--size-samples", type=int, default=None, help="pictures per size (default 20, quick 5)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--json", default=None, help="also write the numbers to this file")
    a = ap.parse_args(argv)
    torch.set_num_threads(a.threads)
    sections = a.sections or (["nested", "split", "elastic"] if a.quick else list(SECTIONS))
    n = a.samples or (25 if a.quick else 100)
    ns = a.size_samples or (5 if a.quick else 20)
    den, clf = R.load_models()
    sc = R.Scorer(clf)
    floor = sc.fd(R.balanced_data(n, seed=1))
    print(f"learned demo model; FD reference: {len(sc.ref)} held-out pictures; FD of {n} other held-out "
          f"pictures (the floor at this count): {floor:.3g}")
    out = {"samples": n, "size_samples": ns, "seed": a.seed, "fd_floor": floor}
    run = {"nested": lambda: bench_nested(den, sc, n, a.seed, full_baseline=True),
           "split": lambda: bench_split(den, sc, n, a.seed),
           "elastic": lambda: bench_elastic(den, sc, ns, a.seed),
           "elastic-equal": lambda: elastic_equal_nfe(den, sc, ns, a.seed),
           "nested-options": lambda: nested_options(den, sc, n, a.seed),
           "split-options": lambda: split_options(den, sc, n, a.seed),
           "elastic-options": lambda: elastic_options(den, sc, ns, a.seed)}
    for name in sections:
        t0 = time.time()
        print(f"\n== {name}")
        out[name] = run[name]()
        print(f"({time.time() - t0:.0f} s)")
    if a.json:
        os.makedirs(os.path.dirname(os.path.abspath(a.json)), exist_ok=True)
        with open(a.json, "w") as f:
            json.dump(out, f, indent=1, default=float)


if __name__ == "__main__":
    main()
