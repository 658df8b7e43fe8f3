"""The demo model: a small learned class-conditional diffusion network on procedural scenes.

Lives outside the pack's runtime import path (nothing under ``nodes/`` or ``samplers/`` imports
it).  Import it with the repository root on ``sys.path`` (scripts), or load ``demo/__init__.py``
by file location (the tests).  Loader API::

    den = load_denoiser()                 # Denoiser: den(x, sigma, cond=labels, cfg=3.0) -> x0
    clf = load_classifier()               # Classifier: clf(images) -> logits, clf.features(images)
    x, y = make_data(256, seed=0, split="test")
    bad = untrained_denoiser()            # same architecture, fresh init from a fixed seed
    imgs = sample(den, labels=y[:8], steps=20, cfg=3.0, seed=0)

See docs/demo-model.md.
"""
from __future__ import annotations

import json
import os
from typing import Optional

import torch

from . import metrics
from ._pack import common
from .classifier import CLASSIFIER_CONFIG, Classifier
from .data import CLASSES, N_CLASSES, SIZE, make_data, render_scene, tile
from .model import DEFAULT_CONFIG, Denoiser, UNet, param_count
from .st import read_file

__all__ = ["CLASSES", "N_CLASSES", "SIZE", "WEIGHTS", "make_data", "render_scene", "tile", "metrics",
           "load_denoiser", "load_classifier", "untrained_denoiser", "build_denoiser", "sigmas", "sample",
           "reference_sample", "cfg_denoiser", "elastic_denoiser", "Denoiser", "UNet", "Classifier", "param_count"]

WEIGHTS = os.path.join(os.path.dirname(os.path.abspath(__file__)), "weights")
DENOISER_FILE = os.path.join(WEIGHTS, "denoiser.safetensors")
CLASSIFIER_FILE = os.path.join(WEIGHTS, "classifier.safetensors")
REFERENCE_FILE = os.path.join(WEIGHTS, "reference_sample.json")


def _config(meta: dict, default: dict) -> dict:
    cfg = dict(default)
    if "config" in meta:
        cfg.update(json.loads(meta["config"]))
    for k in ("channels", "widths"):
        if k in cfg:
            cfg[k] = tuple(cfg[k])
    return cfg


def _frozen(module: torch.nn.Module) -> torch.nn.Module:
    module.eval()
    for p in module.parameters():
        p.requires_grad_(False)
    return module


def build_denoiser(config: Optional[dict] = None) -> Denoiser:
    return Denoiser(UNet(**(config or DEFAULT_CONFIG)))


def _load_weights(path: str, cls, default_config: dict):
    """A module of ``cls`` built from the file's stored config and loaded with its weights (strict)."""
    if not os.path.exists(path):
        raise FileNotFoundError(f"{path} not found: train it with `python -m demo.train` from the repository root")
    tensors, meta = read_file(path)
    module = cls(**_config(meta, default_config))
    module.load_state_dict(tensors, strict=True)
    return module


def load_denoiser(path: str = DENOISER_FILE) -> Denoiser:
    """The shipped (EMA) weights as a frozen :class:`Denoiser` in eval mode (CPU, float32)."""
    return _frozen(Denoiser(_load_weights(path, UNet, DEFAULT_CONFIG)))


def load_classifier(path: str = CLASSIFIER_FILE) -> Classifier:
    """The shipped classifier, frozen, in eval mode."""
    return _frozen(_load_weights(path, Classifier, CLASSIFIER_CONFIG))


def untrained_denoiser(seed: int = 0, config: Optional[dict] = None) -> Denoiser:
    """The same architecture with a fresh initialisation from ``seed`` (the control for the tests)."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        den = build_denoiser(config)
    return _frozen(den)


def sigmas(steps: int, denoiser: Optional[Denoiser] = None) -> torch.Tensor:
    """ComfyUI's "normal" schedule for the demo model: ``steps`` sigmas at timesteps evenly spaced
    from 999 to 0, then 0 (float64, descending)."""
    ms = denoiser.model_sampling if denoiser is not None else common.DiscreteSchedule()
    t = torch.linspace(999.0, 0.0, int(steps), dtype=torch.float64)
    return common.append_zero(ms.sigma(t))


def initial_noise(n: int, seed: int, height: int = SIZE, width: int = SIZE) -> torch.Tensor:
    """Unit Gaussian noise [n, 3, height, width] from the stream (seed, 'demo-noise')."""
    return torch.randn(n, 3, height, width, generator=common.keyed_generator(seed, "demo-noise"))


@torch.no_grad()
def sample(denoiser: Denoiser, labels, steps: int = 20, cfg: float = 3.0, seed: int = 0,
           height: int = SIZE, width: int = SIZE, n: Optional[int] = None, batch: int = 50) -> torch.Tensor:
    """Euler (= DDIM) samples [n, 3, height, width] for ``labels`` (int with ``n``, or [n]); ``cfg``
    is the CFG scale (null class as the negative).  The initial noise is drawn for the whole set at
    once (from ``seed``); the network runs ``batch`` images at a time."""
    labels = torch.as_tensor(labels).long()
    if labels.dim() == 0:
        labels = labels.expand(1 if n is None else n)
    sig = sigmas(steps, denoiser).to(torch.float32)
    x = initial_noise(len(labels), seed, height, width) * sig[0]
    out = [common.sample_euler(denoiser, x[i:i + batch], sig, extra_args={"cond": labels[i:i + batch], "cfg": cfg})
           for i in range(0, len(labels), batch)]
    return torch.cat(out)


REFERENCE = dict(n=8, steps=8, cfg=3.0, seed=0)


def reference_sample(denoiser: Denoiser) -> torch.Tensor:
    """The fixed-seed sample the test checks: 8 images (labels 0..4, 0..2), 8 Euler steps, cfg 3."""
    r = REFERENCE
    return sample(denoiser, torch.arange(r["n"]) % N_CLASSES, steps=r["steps"], cfg=r["cfg"], seed=r["seed"])


def reference_summary(x: torch.Tensor) -> list:
    """What the test compares: each image average-pooled to 4 x 4 per channel (8 x 3 x 4 x 4 numbers)."""
    return torch.nn.functional.avg_pool2d(x.to(torch.float64), 8).flatten().tolist()


def cfg_denoiser(denoiser: Denoiser, labels, cfg: float, **options):
    """The pack's analytic-world ``CFGDenoiser`` driven by this network: a split probe for
    SplitSampler's ``cfg_delta`` mode (records cond / uncond parts of every call)."""
    from ._pack import nse
    from nse.samplers.worlds.guided import CFGDenoiser
    return CFGDenoiser(denoiser.branch(labels), denoiser.branch(None), cfg, **options)


def elastic_denoiser(denoiser: Denoiser, labels):
    """The network in the pack's Elastic denoiser protocol ``f(x, sigma, which, meta) -> x0``: rows
    marked ``"cond"`` get the label of their sample (``labels``: int or one per sample), ``"uncond"``
    rows the null class.  ``f.base`` is the training size (32)."""
    labels = torch.as_tensor(labels).long().reshape(-1)

    def f(x, sigma, which, meta):
        lab = [int(labels[m.sample if len(labels) > 1 else 0]) if w == "cond" else denoiser.null_class
               for w, m in zip(which, meta)]
        return denoiser(x, sigma, cond=torch.tensor(lab, device=x.device), cfg=1.0)
    f.base = SIZE          # the training size, which the Elastic sampler reads as its default ``base``
    return f
