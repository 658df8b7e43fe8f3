"""The main job (``./dev demo``): the three samplers on the learned demo model, as labelled figures.

No ComfyUI, no downloads: the demo model (``demo/``, a small class-conditional UNet on procedural
32 x 32 one-object scenes, EPS on the SD1.x schedule) ships with the repository.  Writes into --out:

* ``nested_anytime.png``  Nested 6 x 8: the picture after every outer step, next to plain Euler's
  x0 preview after the same number of network passes; ``nested_quality.png``: FD against NFE;
* ``split_grid.png``      strong CFG (9): ltsp/stsp against euler (= DDIM), dpmpp_2m, ipndm and
  uni_pc at equal NFE, 6..25 baseline steps, FD and class accuracy in every cell;
* ``elastic_sizes.png``   2x and 3x wide and tall: Elastic vs direct generation at that size vs
  MultiDiffusion-style patches, with the object count of every picture;
* ``demo_numbers.json``   every number printed.

NFE = network passes per picture (a CFG step costs 2).  FD = Fréchet distance of the demo
classifier's features to 500 held-out pictures (lower is better; at these small sample counts it is
biased upward, so compare numbers within one table only; scripts/bench_learned.py uses more).

    python scripts/demo.py [--out out] [--samples 20] [--split-samples 10] [--size-samples 4]
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import torch  # noqa: E402

import demo_figures as F  # noqa: E402
import demo_runs as R  # noqa: E402
from baselines import counts_of  # noqa: E402

SIZES = ((32, 64), (32, 96), (64, 32), (96, 32))      # (height, width)


def _column(pictures, show, caption, labels=None, vertical=True):
    return F.cell([F.tile(p) for p in pictures[:show]], labels, caption, vertical=vertical)


def _data_row(data, show, n_cols, vertical=True):
    return [_column(data, show, "held-out data", vertical=vertical)] + [None] * (n_cols - 1)


def _with_data_column(cells, data, show):
    """Append a column holding held-out data pictures (first row only)."""
    return [row + [_column(data, show, "same classes") if i == 0 else None] for i, row in enumerate(cells)]


def nested_section(den, sc, a):
    """Anytime strip and the quality curve: Nested outer x inner vs Euler's x0 previews."""
    lab = R.balanced_labels(a.samples)
    prev, nfe = R.nested_run(den, lab, a.outer, a.inner, a.cfg, a.seed)
    plain, pnfe, _ = R.plain_previews(den, lab, a.outer * a.inner, a.cfg, a.seed)
    at = [min(range(len(pnfe)), key=lambda j: abs(pnfe[j] - k)) for k in nfe]
    s_n = [sc(p, lab) for p in prev]
    s_p = [sc(plain[j], lab) for j in at]
    fd_plain = [sc.fd(p) for p in plain]
    floor = sc.fd(R.balanced_data(a.samples))
    cells = _with_data_column([[_column(p, a.show, f"FD {s['fd']:.3g}") for p, s in zip(prev, s_n)],
                               [_column(plain[j], a.show, f"FD {s['fd']:.3g}") for j, s in zip(at, s_p)]],
                              R.balanced_data(a.show), a.show)
    row_labels = [f"Nested {a.outer} x {a.inner}\nx0 after each\nouter step",
                  f"Euler, {a.outer * a.inner} steps\nx0 preview after\nthe same NFE"]
    strip, _ = F.grid(cells, row_labels,
                      [f"outer step {i + 1}\n{k:.0f} NFE" for i, k in enumerate(nfe)] + ["held-out\ndata"],
                      f"Nested: a finished picture after every outer step (cfg {a.cfg:g}, same initial noise)",
                      note=f"NFE = network passes per picture (CFG: 2 per model call). FD over {a.samples} pictures "
                           f"(lower is better; {a.samples} held-out data pictures: {floor:.3g}).")
    plot = F.line_plot([(f"Nested {a.outer} x {a.inner} (x0 after each outer step)", nfe, [s["fd"] for s in s_n]),
                        (f"Euler {a.outer * a.inner} steps (x0 preview)", pnfe, fd_plain)],
                       f"Nested vs plain sampling: quality of the current picture ({a.samples} pictures)",
                       "NFE (network passes per picture)", "FD to held-out data (log)",
                       hlines=[(f"data floor {floor:.3g}", floor)])
    rows = [[i + 1, f"{k:.0f}", f"{sn['fd']:.3g}", f"{sn['acc']:.2f}", f"{sp['fd']:.3g}", f"{sp['acc']:.2f}",
             f"{sp['fd'] / sn['fd']:.1f}x"] for i, (k, sn, sp) in enumerate(zip(nfe, s_n, s_p))]
    print(R.run_table(rows, ["outer", "NFE", "Nested FD", "acc", "Euler preview FD", "acc", "ratio"],
                      f"Nested {a.outer} x {a.inner} vs Euler {a.outer * a.inner} steps, cfg {a.cfg:g}, "
                      f"{a.samples} pictures (data floor {floor:.3g})"))
    numbers = {"nfe": nfe, "nested": s_n, "euler_preview": s_p, "euler_preview_curve": {"nfe": pnfe, "fd": fd_plain},
               "data_floor": floor, "samples": a.samples, "outer": a.outer, "inner": a.inner, "cfg": a.cfg}
    return numbers, {"nested_anytime.png": strip, "nested_quality.png": plot}


def split_section(den, sc, a):
    """Every split method and baseline at 2 x steps passes, under strong CFG."""
    lab = R.balanced_labels(a.split_samples)
    budgets = [2 * s for s in a.split_steps]
    res, cells = {}, []
    for label, (kind, spec) in R.SPLIT_METHODS.items():
        res[label], row = {}, []
        for b in budgets:
            k = R.steps_for_budget(kind, spec, b)
            img, used = R.split_run(den, lab, kind, spec, k, a.split_cfg, a.seed)
            s = {"steps": k, "nfe": used, **sc(img, lab)}
            res[label][b] = s
            cap = f"{used:.0f} NFE, {k} steps\nFD {s['fd']:.3g}, acc {s['acc']:.2f}"
            row.append(_column(img, a.split_show, cap, vertical=False))
        cells.append(row)
    cells.append(_data_row(R.balanced_data(a.split_show), a.split_show, len(budgets), vertical=False))
    fig, _ = F.grid(cells, list(R.SPLIT_METHODS) + ["data"],
                    [f"budget {b} NFE\n(= {b // 2} CFG steps)" for b in budgets],
                    f"Split under strong guidance (cfg {a.split_cfg:g}): equal NFE in every column",
                    note=f"NFE = network passes per picture: a CFG step costs 2; ltsp4 (default, sequential) adds a "
                         f"cond-only pass (3 passes a step), stsp4 5 passes a step, so they get fewer steps.\nFD and class accuracy over {a.split_samples} "
                         f"pictures; the same initial noise in every cell; 'normal' schedule.")
    head = ["method"] + [f"{b} NFE" for b in budgets]
    for key in ("fd", "acc"):
        rows = [[m] + [f"{r[b][key]:.3g}" + (f" ({r[b]['steps']})" if key == "fd" else "") for b in budgets]
                for m, r in res.items()]
        print(R.run_table(rows, head, f"Split, cfg {a.split_cfg:g}, {a.split_samples} pictures: "
                                      f"{'FD (steps)' if key == 'fd' else 'class accuracy'}"))
    return {"cfg": a.split_cfg, "samples": a.split_samples, "results": res}, {"split_grid.png": fig}


def elastic_section(den, sc, a):
    """Other sizes: object counts of Elastic, direct generation and the patch baseline."""
    lab = R.balanced_labels(a.size_samples)
    res, cells, rows = {}, [[] for _ in R.ELASTIC_METHODS], []
    for h, w in SIZES:
        for m_i, m in enumerate(R.ELASTIC_METHODS):
            run = R.elastic_run(den, lab, h, w, m, a.size_steps, a.cfg, a.seed)
            s = {**R.object_summary(run.counts), "nfe": run.nfe, "counts": run.counts.tolist()}
            res[f"{w}x{h} {m}"] = s
            labels = [f"{int(c)} object{'s' if c != 1 else ''}" for c in run.counts[:a.size_show]]
            cap = f"mean {s['mean']:.2f}, exactly 1: {s['one']:.0%}\n{run.nfe:.0f} NFE"
            cells[m_i].append(_column(run.images, a.size_show, cap, labels, vertical=w > h))
            rows.append([f"{w}x{h}", m, f"{run.nfe:.0f}", f"{s['mean']:.2f}", f"{s['one']:.0%}",
                         counts_of(run.counts)])
    cells = _with_data_column(cells, R.balanced_data(a.size_show), a.size_show)
    names = {"elastic": "Elastic (auto preset)", "direct": "direct generation\nat that size",
             "patches": "MultiDiffusion\npatches (32 px,\nstride 16)"}
    fig, _ = F.grid(cells, [names[m] for m in R.ELASTIC_METHODS],
                    [f"{w} x {h}" for h, w in SIZES] + ["held-out data\n32 x 32"],
                    f"Elastic: pictures at 2x and 3x the training size (one object asked for; cfg {a.cfg:g}, "
                    f"{a.size_steps} steps)",
                    note=f"Label under each picture: objects found by the colour-based counter (the data always "
                         f"has 1). Summary over {a.size_samples} pictures per cell;\nNFE in 32 x 32 network passes "
                         f"per picture.")
    print(R.run_table(rows, ["size (w x h)", "method", "NFE", "mean count", "exactly 1", "counts"],
                      f"Elastic, {a.size_samples} pictures per size, {a.size_steps} steps, cfg {a.cfg:g}"))
    return {"samples": a.size_samples, "steps": a.size_steps, "results": res}, {"elastic_sizes.png": fig}


def parse_args(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", default="out")
    ap.add_argument("--sections", nargs="+", default=["nested", "split", "elastic"],
                    choices=["nested", "split", "elastic"])
    ap.add_argument("--samples", type=int, default=20, help="pictures for the Nested numbers")
    ap.add_argument("--outer", type=int, default=6)
    ap.add_argument("--inner", type=int, default=8)
    ap.add_argument("--cfg", type=float, default=3.0, help="CFG scale of Nested and Elastic")
    ap.add_argument("--show", type=int, default=5, help="pictures shown per Nested cell")
    ap.add_argument("--split-samples", type=int, default=10)
    ap.add_argument("--split-steps", type=int, nargs="+", default=[6, 8, 12, 16, 25])
    ap.add_argument("--split-cfg", type=float, default=9.0)
    ap.add_argument("--split-show", type=int, default=3)
    ap.add_argument("--size-samples", type=int, default=4)
    ap.add_argument("--size-steps", type=int, default=12)
    ap.add_argument("--size-show", type=int, default=3)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--threads", type=int, default=1, help="torch threads (1 is fastest on a shared 2-core machine)")
    return ap.parse_args(argv)


def main(argv=None, models=None):
    a = parse_args(argv)
    torch.set_num_threads(a.threads)
    t_start = time.time()
    den, clf = models or R.load_models()
    sc = R.Scorer(clf)
    os.makedirs(a.out, exist_ok=True)
    sections = {"nested": nested_section, "split": split_section, "elastic": elastic_section}
    numbers, written = {"seed": a.seed}, []
    for name in a.sections:
        t0 = time.time()
        print(f"\n== {name}")
        numbers[name], figs = sections[name](den, sc, a)
        numbers[name]["seconds"] = time.time() - t0
        for fname, img in figs.items():
            img.save(os.path.join(a.out, fname), optimize=True)
            written.append(os.path.join(a.out, fname))
        print(f"({time.time() - t0:.0f} s)")
    numbers["seconds"] = time.time() - t_start
    path = os.path.join(a.out, "demo_numbers.json")
    with open(path, "w") as f:
        json.dump(numbers, f, indent=1, default=float)
    print(f"\nwrote {', '.join(written + [path])} in {numbers['seconds']:.0f} s")
    return numbers


if __name__ == "__main__":
    main()
