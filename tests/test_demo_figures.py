"""The learned-model demo (scripts/demo.py) and its baselines (scripts/baselines.py), at tiny sizes.

Pure (no ComfyUI) and fast: a few pictures, a few steps.  What is checked:

* the baseline solvers make one model call per step and converge at their orders on an exact
  1-D mixture denoiser; Euler is the split sampler's DDIM;
* equal-NFE accounting: every method of the Split comparison makes exactly the network passes its
  label says, counted at the network itself (not by the counter the runs use);
* the MultiDiffusion patch baseline with one 32 x 32 window is direct generation, and the Elastic
  sampler at 32 x 32 is plain CFG;
* the trained model's Nested result is far closer to the data than an untrained model's;
* the figures: pictures pasted where the layout says, upsampled 3x with nearest neighbours; the
  demo writes every figure and the numbers file.
"""
import importlib.util
import json
import math
import os

import pytest
import torch
from PIL import Image

import baselines as B
import demo_figures as F
import demo_runs as R

demo = R.demo
SCRIPTS = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "scripts")


def load_demo_script():
    """scripts/demo.py by file location (the name ``demo`` is the demo model package)."""
    spec = importlib.util.spec_from_file_location("demo_script", os.path.join(SCRIPTS, "demo.py"))
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


# ------------------------------------------------------------------------------------------
# exact 1-D two-component mixture: D(x, sigma) = E[x0 | x]
# ------------------------------------------------------------------------------------------
MUS, SD = torch.tensor([-1.0, 0.8], dtype=torch.float64), 0.3


def mixture_denoiser(x, sigma, **_):
    s = torch.as_tensor(sigma, dtype=torch.float64).reshape(-1, 1)
    v = SD ** 2 + s ** 2
    w = torch.softmax(-(x - MUS) ** 2 / (2 * v), -1)
    return (w * (SD ** 2 * x + s ** 2 * MUS) / v).sum(-1, keepdim=True)


def log_grid(n, smax=14.6, smin=0.03):
    return torch.exp(torch.linspace(math.log(smax), math.log(smin), n + 1, dtype=torch.float64))


X_T = torch.linspace(-3, 3, 41, dtype=torch.float64).reshape(-1, 1) * 14.6


@pytest.fixture(scope="module")
def exact_end():
    return B.sample_uni_pc(mixture_denoiser, X_T, log_grid(3000))


@pytest.mark.parametrize("name,order", [("euler", 1), ("dpmpp_2m", 2), ("ipndm", 2), ("uni_pc", 3)])
def test_solvers_call_once_per_step_and_converge(name, order, exact_end):
    errs = []
    for n in (32, 64, 128):
        calls = []
        out = B.SOLVERS[name](lambda x, s, **kw: calls.append(1) or mixture_denoiser(x, s), X_T, log_grid(n))
        assert len(calls) == n
        errs.append(float((out - exact_end).abs().max()))
    rates = [math.log2(a / b) for a, b in zip(errs, errs[1:])]
    assert min(rates) > order - 0.35, (name, errs, rates)
    if name == "uni_pc":                       # the corrector buys an order over its predictor (= dpmpp_2m)
        dpm = B.sample_dpmpp_2m(mixture_denoiser, X_T, log_grid(64))
        assert errs[1] < 0.5 * float((dpm - exact_end).abs().max())


def test_euler_is_the_split_samplers_ddim_and_ends_at_x0():
    sig = log_grid(7)
    sig = torch.cat([sig, sig.new_zeros(1)])
    a = B.sample_euler(mixture_denoiser, X_T, sig)
    b = R.split.sample_split(mixture_denoiser, X_T, sig, method="ddim", split_term="none")
    assert torch.allclose(a, b, atol=1e-12, rtol=0)
    for name in ("dpmpp_2m", "ipndm", "uni_pc"):               # a last step to 0 returns the x0 estimate
        seen = []
        out = B.SOLVERS[name](mixture_denoiser, X_T, sig, callback=seen.append)
        assert torch.equal(out, seen[-1]["denoised"])


# ------------------------------------------------------------------------------------------
# the learned model
# ------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def models():
    return R.load_models()


@pytest.fixture(scope="module")
def scorer(models):
    return R.Scorer(models[1], n_reference=200)


class RowCounter:
    """Counts the pictures the UNet itself evaluates (independent of baselines.PassCounter)."""

    def __init__(self, den):
        self.den, self.rows, self.forward = den, 0, den.unet.forward

    def __enter__(self):
        def counted(x, t, labels):
            self.rows += x.shape[0]
            return self.forward(x, t, labels)
        self.den.unet.forward = counted
        return self

    def __exit__(self, *exc):
        self.den.unet.forward = self.forward


@pytest.mark.parametrize("label", list(R.SPLIT_METHODS))
def test_split_comparison_uses_exactly_the_labelled_nfe(models, label):
    den, n = models[0], 2
    kind, spec = R.SPLIT_METHODS[label]
    for budget in (8, 12):
        steps = R.steps_for_budget(kind, spec, budget)
        with RowCounter(den) as rc:
            img, nfe = R.split_run(den, R.balanced_labels(n), kind, spec, steps, cfg=9.0)
        assert img.shape == (n, 3, 32, 32) and torch.isfinite(img).all()
        assert rc.rows / n == nfe == R.split_passes(kind, spec, steps) <= budget
        if kind == "solver":
            assert nfe == budget                                 # 2 passes per CFG step, nothing else
        assert R.split_passes(kind, spec, steps + 1) > budget   # the most steps the budget allows


def test_patch_baseline_with_one_window_is_direct_generation(models):
    den, lab = models[0], R.balanced_labels(3)
    assert B.window_starts(32) == [0] and B.window_starts(64) == [0, 16, 32]
    assert B.window_starts(96) == [0, 16, 32, 48, 64]
    patches = R.elastic_run(den, lab, 32, 32, "patches", steps=3)
    direct = R.elastic_run(den, lab, 32, 32, "direct", steps=3)
    ref = demo.sample(den, lab, steps=3, cfg=3.0, seed=0)
    assert torch.allclose(patches.images, direct.images, atol=1e-6, rtol=0)
    assert torch.allclose(direct.images, ref, atol=1e-4, rtol=0)
    assert patches.nfe == direct.nfe == 6
    elastic = R.elastic_run(den, lab, 32, 32, "elastic", steps=3)       # at the training size: plain CFG
    assert torch.allclose(elastic.images, direct.images, atol=1e-4, rtol=0) and elastic.nfe == 6


def test_patch_baseline_counts_its_windows(models):
    den, lab = models[0], R.balanced_labels(2)
    with RowCounter(den) as rc:
        run = R.elastic_run(den, lab, 32, 64, "patches", steps=2)
    assert rc.rows == 2 * 3 * 2 * 2 and run.nfe == 12       # steps x windows x CFG x pictures
    assert run.images.shape == (2, 3, 32, 64) and run.counts.shape == (2,)


def test_trained_nested_is_far_closer_to_data_than_untrained(models, scorer):
    lab = R.balanced_labels(15)
    trained, nfe = R.nested_run(models[0], lab, 2, 4, cfg=3.0)
    untrained, _ = R.nested_run(R.load_models(trained=False)[0], lab, 2, 4, cfg=3.0)
    assert nfe == [8.0, 16.0]
    fd_t, fd_u = scorer.fd(trained[-1]), scorer.fd(untrained[-1])
    assert fd_t < 0.1 * fd_u, (fd_t, fd_u)
    assert scorer.fd(trained[-1]) < scorer.fd(trained[0])           # the second outer step improves on the first


# ------------------------------------------------------------------------------------------
# figures
# ------------------------------------------------------------------------------------------
def pixels(img):
    return torch.frombuffer(bytearray(img.tobytes()), dtype=torch.uint8).reshape(img.height, img.width, 3)


def test_grid_pastes_nearest_upsampled_tiles_where_it_says():
    pics = torch.rand(4, 3, 32, 32) * 2 - 1
    cells = [[F.cell([F.tile(pics[0]), F.tile(pics[1])], ["a", "b"], "caption"), None],
             [F.cell([F.tile(pics[2])], caption="c", vertical=True), F.cell([F.tile(pics[3])])]]
    fig, boxes = F.grid(cells, ["row one", "row two"], ["col 1", "col 2"], "a title", note="a note")
    assert set(boxes) == {(0, 0), (1, 0), (1, 1)}
    for (r, c), k in (((0, 0), [0, 1]), ((1, 0), [2]), ((1, 1), [3])):
        for (x, y), i in zip(boxes[(r, c)], k):
            assert torch.equal(pixels(fig.crop((x, y, x + 96, y + 96))), pixels(F.tile(pics[i])))
    t = pixels(F.tile(pics[0]))
    assert torch.equal(t[::3, ::3].repeat_interleave(3, 0).repeat_interleave(3, 1), t)     # 3x3 blocks
    assert fig.width >= 2 * 96 + 96 and fig.height >= 96 + 96 + 40


def test_line_plot_draws_every_series():
    img = F.line_plot([("one", [1, 2, 3], [100.0, 10.0, 1.0]), ("two", [1, 2, 3], [50.0, 20.0, 5.0])],
                      "title", "x", "y", hlines=[("floor", 0.5)], size=(500, 300))
    assert img.size == (500, 300)
    colours = {c for _, c in img.getcolors(500 * 300)}
    assert F.COLORS[0] in colours and F.COLORS[1] in colours


def test_demo_writes_every_figure_and_number(models, tmp_path):
    demo_script = load_demo_script()
    argv = ["--out", str(tmp_path), "--samples", "5", "--outer", "2", "--inner", "2", "--show", "2",
            "--split-samples", "2", "--split-steps", "2", "--split-show", "2", "--size-samples", "1",
            "--size-steps", "2", "--size-show", "1"]
    numbers = demo_script.main(argv, models=models)
    for name in ("nested_anytime.png", "nested_quality.png", "split_grid.png", "elastic_sizes.png"):
        with Image.open(os.path.join(tmp_path, name)) as img:
            assert img.mode == "RGB" and img.width >= 3 * 96 and img.height >= 3 * 96, (name, img.size)
    with Image.open(os.path.join(tmp_path, "split_grid.png")) as img:
        assert img.height >= 8 * 96                     # 7 method rows + the data row, 96 px pictures
    saved = json.load(open(os.path.join(tmp_path, "demo_numbers.json")))
    assert saved["nested"]["nfe"] == [4.0, 8.0] == numbers["nested"]["nfe"]
    for label, row in saved["split"]["results"].items():
        assert row["4"]["nfe"] == R.split_passes(*R.SPLIT_METHODS[label], row["4"]["steps"]) <= 4
    assert set(saved["elastic"]["results"]) == {f"{w}x{h} {m}" for h, w in ((32, 64), (32, 96), (64, 32), (96, 32))
                                                for m in R.ELASTIC_METHODS}
