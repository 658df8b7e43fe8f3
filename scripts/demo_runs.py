"""The three methods and their baselines on the learned demo model (scripts side).

Shared by ``scripts/demo.py`` (figures), ``scripts/bench_learned.py`` (tables) and the tests.  Every
run starts from the demo's keyed initial noise ``demo.initial_noise(n, seed, H, W)`` and counts its
network passes with :class:`baselines.PassCounter`: **NFE = network passes per picture**, so a CFG
step costs 2 and a base-only call of the split sampler costs 1.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Dict, List, Optional, Sequence, Tuple

import torch

from _pack import load_demo, load_pack
from baselines import SOLVERS, PassCounter, cfg_model, sample_euler, sample_multidiffusion

nse = load_pack()
demo = load_demo()
from nse.samplers import elastic, nested, split  # noqa: E402

metrics = demo.metrics

__all__ = ["load_models", "Scorer", "balanced_labels", "balanced_data", "NESTED_NODE_DEFAULTS", "nested_run", "plain_previews", "SPLIT_NODE_DEFAULTS",
           "SPLIT_METHODS", "split_passes", "steps_for_budget", "split_run", "ELASTIC_METHODS", "SizeRun",
           "elastic_run", "object_summary", "crop_scores", "run_table"]


def load_models(trained: bool = True):
    """(denoiser, classifier): the shipped weights (or the untrained control), the network in
    channels-last memory format (the same numbers to ~1e-5, about 1.5x faster on a CPU)."""
    den = demo.load_denoiser() if trained else demo.untrained_denoiser()
    den.to(memory_format=torch.channels_last)
    forward = den.unet.forward
    den.unet.forward = lambda x, t, labels: forward(x.contiguous(memory_format=torch.channels_last), t, labels)
    return den, demo.load_classifier()


def balanced_labels(n: int) -> torch.Tensor:
    """Labels 0, 1, 2, 3, 4, 0, 1, ... (every class equally often)."""
    return torch.arange(n) % demo.N_CLASSES


def balanced_data(n: int, seed: int = 1, split: str = "test") -> torch.Tensor:
    """``n`` data pictures whose labels are :func:`balanced_labels` (for the data row and the FD floor;
    the classifier's features are class-specific, so class proportions move the FD)."""
    x, y = demo.make_data(2 * n + 40, seed=seed, split=split)
    per = [(y == c).nonzero().flatten().tolist() for c in range(demo.N_CLASSES)]
    lab = balanced_labels(n).tolist()
    return x[[per[c][k // demo.N_CLASSES] for k, c in enumerate(lab)]]


class Scorer:
    """Fréchet distance (classifier features) to held-out data, and class accuracy."""

    def __init__(self, clf, n_reference: int = 500, seed: int = 0):
        self.clf = clf
        self.data, self.data_labels = demo.make_data(n_reference, seed=seed, split="test")
        self.ref = metrics.features(clf, self.data)

    def fd(self, images: torch.Tensor) -> float:
        return metrics.frechet(metrics.features(self.clf, images), self.ref)

    def __call__(self, images: torch.Tensor, labels) -> Dict[str, float]:
        return {"fd": self.fd(images), "acc": metrics.class_accuracy(self.clf, images, labels)}


def _noise(n: int, seed: int, sigma0, height: int = 32, width: int = 32) -> torch.Tensor:
    return demo.initial_noise(n, seed, height, width) * float(sigma0)


# --------------------------------------------------------------------------------------------
# Nested
# --------------------------------------------------------------------------------------------
#: What the nodes default to where it differs from the pure function's (the paper's) default: a
#: deterministic Euler inner sampler.  ``inner_sampler=None`` runs the paper's ancestral inner.
NESTED_NODE_DEFAULTS = {"inner_sampler": sample_euler}


def nested_run(den, labels, outer: int, inner: int, cfg: float = 3.0, seed: int = 0,
               **options) -> Tuple[List[torch.Tensor], List[float]]:
    """Nested Diffusion on the official outer grid with the node defaults (``options`` override them):
    (x0 after every outer step, NFE used by then)."""
    options = {**NESTED_NODE_DEFAULTS, **options}
    counter = PassCounter(den)
    ms = den.model_sampling
    sig = nested.official_outer_sigmas(ms, outer).to(torch.float32)
    x = _noise(len(labels), seed, sig[0])
    previews, nfe = [], []
    nested.sample_nested(cfg_model(counter, labels, cfg), x, sig, extra_args={"seed": seed}, model_sampling=ms,
                         inner_steps=inner, collect=previews,
                         callback=lambda d: nfe.append(counter.per_picture(len(labels))), **options)
    return previews, nfe


def plain_previews(den, labels, steps: int, cfg: float = 3.0, seed: int = 0, solver: str = "euler"
                   ) -> Tuple[List[torch.Tensor], List[float], torch.Tensor]:
    """A plain run on ComfyUI's "normal" schedule: (x0 preview after every call, NFE by then, result)."""
    counter = PassCounter(den)
    sig = demo.sigmas(steps, den).to(torch.float32)
    previews, nfe = [], []

    def cb(d):
        previews.append(d["denoised"])
        nfe.append(counter.per_picture(len(labels)))
    out = SOLVERS[solver](cfg_model(counter, labels, cfg), _noise(len(labels), seed, sig[0]), sig, callback=cb)
    return previews, nfe, out


# --------------------------------------------------------------------------------------------
# Split: every method at equal NFE under strong CFG
# --------------------------------------------------------------------------------------------
#: What the nodes default to where it differs from the pure function's (the paper's) default.  With
#: the demo's probe (which has a base-only call) eval_mode 'auto' is the paper's sequential mode.
SPLIT_NODE_DEFAULTS = {"ab_coeffs": split.GRID_DEFAULTS["ab_coeffs"]}

#: label -> ("split", sample_split options) or ("solver", name in baselines.SOLVERS)
SPLIT_METHODS: Dict[str, Tuple[str, object]] = {
    "ltsp4 (default)": ("split", {"method": "ltsp4", **SPLIT_NODE_DEFAULTS}),
    "ltsp2 shared": ("split", {"method": "ltsp2", "eval_mode": "shared"}),
    "stsp4": ("split", {"method": "stsp4"}),
    "euler = DDIM": ("solver", "euler"),
    "dpmpp_2m": ("solver", "dpmpp_2m"),
    "ipndm": ("solver", "ipndm"),
    "uni_pc (bh2)": ("solver", "uni_pc"),
}


def split_passes(kind: str, spec, steps: int) -> int:
    """Network passes per picture of one run (CFG: a model call is 2 passes, a base-only call 1)."""
    if kind == "solver":
        return 2 * steps
    opts = dict(spec)
    c = split.nfe_per_run(opts.pop("method"), steps, split_term="cfg_delta", split_probe=_PROBE_SHAPE,
                          base_only=True, **opts)
    return 2 * c["model"] + c["base"]


#: the demo's probe has a base-only call (``demo.cfg_denoiser``); the cost formula needs only that
_PROBE_SHAPE = split.BaseOnlyStandIn()


def steps_for_budget(kind: str, spec, budget: int) -> int:
    """The most steps (>= 1) whose passes stay within ``budget`` passes per picture."""
    n = 1
    while split_passes(kind, spec, n + 1) <= budget:
        n += 1
    return n


def split_run(den, labels, kind: str, spec, steps: int, cfg: float = 9.0, seed: int = 0
              ) -> Tuple[torch.Tensor, float]:
    """One run of a split method or a baseline solver on the "normal" schedule: (pictures, NFE counted)."""
    counter = PassCounter(den)
    sig = demo.sigmas(steps, den).to(torch.float32)
    x = _noise(len(labels), seed, sig[0])
    if kind == "split":
        probe = demo.cfg_denoiser(counter, labels, cfg)       # the model is its own split probe (cfg_delta)
        out = split.sample_split(probe, x, sig, **dict(spec))
    else:
        out = SOLVERS[spec](cfg_model(counter, labels, cfg), x, sig)
    return out, counter.per_picture(len(labels))


# --------------------------------------------------------------------------------------------
# Elastic: other sizes
# --------------------------------------------------------------------------------------------
ELASTIC_METHODS = ("elastic", "direct", "patches")


@dataclass
class SizeRun:
    images: torch.Tensor
    nfe: float                 # network passes per picture, in 32 x 32 units
    counts: torch.Tensor       # objects per picture


def elastic_run(den, labels, height: int, width: int, method: str, steps: int = 16, cfg: float = 3.0,
                seed: int = 0, **options) -> SizeRun:
    """Pictures of ``height`` x ``width`` by the Elastic sampler, direct generation (the fully
    convolutional network at that size) or the MultiDiffusion-style patch baseline (Euler, same
    schedule, same initial noise)."""
    counter = PassCounter(den)
    sig = demo.sigmas(steps, den).to(torch.float32)
    x = _noise(len(labels), seed, sig[0], height, width)
    if method == "elastic":
        f = demo.elastic_denoiser(counter, labels)
        out = elastic.sample_elastic(f, x, sig, cfg=cfg, seed=seed, **options)
    elif method == "direct":
        out = SOLVERS["euler"](cfg_model(counter, labels, cfg), x, sig)
    elif method == "patches":
        out = sample_multidiffusion(counter, x, sig, labels, cfg, **options)
    else:
        raise ValueError(f"method must be one of {ELASTIC_METHODS} (got {method!r})")
    return SizeRun(out, counter.per_picture(len(labels)), metrics.object_count(out))


def object_summary(counts: torch.Tensor) -> Dict[str, float]:
    """Mean count and the fractions with exactly one / none / two or more objects."""
    c = torch.as_tensor(counts)
    mean, one = metrics.count_summary(c)
    return {"mean": mean, "one": one, "none": float((c == 0).double().mean()),
            "many": float((c >= 2).double().mean())}


def crop_scores(scorer: Scorer, images: torch.Tensor, labels) -> Dict[str, float]:
    """FD and class accuracy of 32 x 32 crops around the largest object (pictures of any size)."""
    crops = metrics.object_crops(images)
    fd = scorer.fd(crops) if len(crops) > 1 else float("nan")
    return {"crop_fd": fd, "crop_acc": metrics.class_accuracy(scorer.clf, crops, labels)}


def run_table(rows: Sequence[Sequence], header: Sequence[str], title: Optional[str] = None) -> str:
    """A plain-text table (numbers already formatted as strings)."""
    cells = [list(map(str, header))] + [list(map(str, r)) for r in rows]
    widths = [max(len(r[i]) for r in cells) for i in range(len(header))]
    lines = [] if title is None else [title]
    for k, r in enumerate(cells):
        lines.append("  ".join(c.rjust(w) if i else c.ljust(w) for i, (c, w) in enumerate(zip(r, widths))))
        if k == 0:
            lines.append("  ".join("-" * w for w in widths))
    return "\n".join(lines)
