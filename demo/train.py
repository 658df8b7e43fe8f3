"""Train the demo classifier and denoiser from a seed, then measure them.

    python -m demo.train                  # from the repository root; ~20-30 min on 2 CPU cores
    python -m demo.train --steps 300      # a quick smoke run (poor samples)
    python -m demo.train --only reference # rewrite the test's reference sample from the shipped weights

Writes ``demo/weights/{denoiser,classifier}.safetensors``, ``demo/weights/train.json`` (config,
seed, steps, losses, wall time, measured numbers) and ``demo/weights/reference_sample.json``.
Every random number comes from a stream keyed by ``(seed, purpose, step)``: the training data of
step k, its timesteps, noise and label dropout are the same whatever happened before, so a
resumed run (``--resume``; checkpoints in ``out/demo-train/``) gives the same weights.
"""
from __future__ import annotations

import argparse
import json
import math
import os
import platform
import sys
import time

import torch
import torch.nn.functional as F

if __package__ in (None, ""):                       # `python demo/train.py`
    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    __package__ = "demo"

from . import (CLASSIFIER_FILE, DENOISER_FILE, REFERENCE, REFERENCE_FILE, WEIGHTS, build_denoiser,  # noqa: E402
               load_classifier, load_denoiser, metrics, reference_sample, reference_summary, sample,
               untrained_denoiser)
from ._pack import common  # noqa: E402
from .classifier import CLASSIFIER_CONFIG, Classifier  # noqa: E402
from .data import N_CLASSES, batch_stream, make_data  # noqa: E402
from .model import DEFAULT_CONFIG, param_count  # noqa: E402
from .st import save_file  # noqa: E402

CKPT_DIR = os.path.normpath(os.path.join(os.path.dirname(WEIGHTS), "..", "out", "demo-train"))


def _raise_malloc_thresholds() -> None:
    """Keep freed activation buffers in the heap instead of returning them to the kernel after every
    step (glibc only; about 15 % faster here, no effect on the numbers)."""
    try:
        import ctypes
        libc = ctypes.CDLL("libc.so.6")
        libc.mallopt(-3, 1 << 30)     # M_MMAP_THRESHOLD
        libc.mallopt(-1, 1 << 30)     # M_TRIM_THRESHOLD
    except (OSError, AttributeError):
        pass


def log(msg: str) -> None:
    print(time.strftime("%H:%M:%S"), msg, flush=True)


def cosine_lr(step: int, total: int, base: float, warmup: int, floor: float = 0.05) -> float:
    if step < warmup:
        return base * (step + 1) / warmup
    p = (step - warmup) / max(1, total - warmup)
    return base * (floor + (1 - floor) * 0.5 * (1 + math.cos(math.pi * p)))


# ------------------------------------------------------------------------------------------
def train_classifier(seed: int, steps: int, batch: int, lr: float):
    torch.manual_seed(common.stream_seed(seed, "demo-classifier-init"))
    clf = Classifier(**CLASSIFIER_CONFIG)
    opt = torch.optim.AdamW(clf.parameters(), lr=lr, weight_decay=1e-4)
    t0, run = time.time(), None
    for k in range(steps):
        x, y = batch_stream(seed, "train-classifier", k, batch)
        g = common.keyed_generator(seed, "demo-classifier-aug", k)
        noise_std = 0.1 * torch.rand(batch, 1, 1, 1, generator=g)
        x = x + noise_std * torch.randn(x.shape, generator=g)
        for grp in opt.param_groups:
            grp["lr"] = cosine_lr(k, steps, lr, 50)
        loss = F.cross_entropy(clf(x), y)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        lv = float(loss.detach())
        run = lv if run is None else 0.98 * run + 0.02 * lv
        if (k + 1) % 100 == 0 or k + 1 == steps:
            log(f"classifier step {k + 1}/{steps} loss {run:.4f} ({time.time() - t0:.0f} s)")
    return clf.eval(), run, time.time() - t0


# ------------------------------------------------------------------------------------------
def train_denoiser(seed: int, steps: int, batch: int, lr: float, p_uncond: float, ema_decay: float,
                   resume: bool, ckpt_every: int = 250):
    torch.manual_seed(common.stream_seed(seed, "demo-denoiser-init"))
    den = build_denoiser(DEFAULT_CONFIG)
    unet = den.unet
    ema = build_denoiser(DEFAULT_CONFIG).unet
    ema.load_state_dict(unet.state_dict())
    for p in ema.parameters():
        p.requires_grad_(False)
    opt = torch.optim.AdamW(unet.parameters(), lr=lr, betas=(0.9, 0.99), weight_decay=0.0)
    alphas = den.model_sampling.alphas_cumprod.to(torch.float32)
    start, losses, elapsed = 0, [], 0.0
    ckpt = os.path.join(CKPT_DIR, f"denoiser-seed{seed}-steps{steps}.pt")
    if resume and os.path.exists(ckpt):
        st = torch.load(ckpt, weights_only=False)
        unet.load_state_dict(st["unet"])
        ema.load_state_dict(st["ema"])
        opt.load_state_dict(st["opt"])
        start, losses, elapsed = st["step"], st["losses"], st["elapsed"]
        log(f"resumed at step {start}")
    t0 = time.time() - elapsed
    for k in range(start, steps):
        x0, y = batch_stream(seed, "train", k, batch)
        g = common.keyed_generator(seed, "demo-denoiser-noise", k)
        t = torch.randint(0, 1000, (batch,), generator=g)
        eps = torch.randn(x0.shape, generator=g)
        drop = torch.rand(batch, generator=g) < p_uncond
        y = torch.where(drop, torch.full_like(y, N_CLASSES), y)
        a = alphas[t][:, None, None, None]
        x_in = a.sqrt() * x0 + (1 - a).sqrt() * eps          # = (x0 + sigma eps) * c_in
        for grp in opt.param_groups:
            grp["lr"] = cosine_lr(k, steps, lr, 100)
        loss = F.mse_loss(unet(x_in, t, y), eps)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(unet.parameters(), 1.0)
        opt.step()
        d = min(ema_decay, (1 + k) / (10 + k))
        with torch.no_grad():
            for pe, pm in zip(ema.parameters(), unet.parameters()):
                pe.lerp_(pm, 1 - d)
        losses.append(float(loss.detach()))
        if (k + 1) % 50 == 0 or k + 1 == steps:
            recent = sum(losses[-50:]) / len(losses[-50:])
            el = time.time() - t0
            log(f"denoiser step {k + 1}/{steps} loss {recent:.4f} lr {opt.param_groups[0]['lr']:.2e} "
                f"({el:.0f} s, ~{el / (k + 1 - start + 1e-9) * (steps - k - 1) if k + 1 > start else 0:.0f} s left)")
        if (k + 1) % ckpt_every == 0 and k + 1 < steps:
            os.makedirs(CKPT_DIR, exist_ok=True)
            torch.save({"unet": unet.state_dict(), "ema": ema.state_dict(), "opt": opt.state_dict(), "step": k + 1,
                        "losses": losses, "elapsed": time.time() - t0}, ckpt)
    return ema.eval(), losses, time.time() - t0


# ------------------------------------------------------------------------------------------
@torch.no_grad()
def evaluate(seed: int = 0, n: int = 250, steps: int = 20, cfg: float = 3.0) -> dict:
    """FD (trained vs untrained), accuracies and object counts of the shipped weights."""
    den, clf = load_denoiser(), load_classifier()
    xt, yt = make_data(2000, seed, "test")
    ref = metrics.features(clf, xt)
    out = {"classifier_accuracy_test": metrics.class_accuracy(clf, xt, yt)}
    labels = torch.arange(n) % N_CLASSES
    t0 = time.time()
    xs = sample(den, labels, steps=steps, cfg=cfg, seed=seed)
    out["sample_seconds_per_image"] = (time.time() - t0) / n
    xu = sample(untrained_denoiser(), labels, steps=steps, cfg=cfg, seed=seed)
    xr, _ = make_data(n, seed + 1, "test")
    out.update({
        "eval": dict(n=n, steps=steps, cfg=cfg, sampler="euler", schedule="normal"),
        "fd_trained": metrics.frechet(metrics.features(clf, xs), ref),
        "fd_untrained": metrics.frechet(metrics.features(clf, xu), ref),
        "fd_heldout_data": metrics.frechet(metrics.features(clf, xr), ref),
        "classifier_accuracy_samples": metrics.class_accuracy(clf, xs, labels),
        "classifier_accuracy_untrained_samples": metrics.class_accuracy(clf, xu, labels),
    })
    c_train = metrics.object_count(xt)
    c_samp = metrics.object_count(xs)
    out["object_count_test_data"] = metrics.count_summary(c_train)
    out["object_count_samples_32x32"] = metrics.count_summary(c_samp)
    n_wide = 50
    lw = torch.arange(n_wide) % N_CLASSES
    for name, (h, w) in {"64x32_wide": (32, 64), "32x64_tall": (64, 32), "96x32_wide": (32, 96)}.items():
        xw = sample(den, lw, steps=steps, cfg=cfg, seed=seed, height=h, width=w)
        cw = metrics.object_count(xw)
        out[f"object_count_direct_{name}"] = metrics.count_summary(cw)
        out[f"object_count_direct_{name}_histogram"] = torch.bincount(cw).tolist()
    return out


def write_reference() -> dict:
    x = reference_sample(load_denoiser())
    ref = {**REFERENCE, "labels": (torch.arange(REFERENCE["n"]) % N_CLASSES).tolist(), "sampler": "euler",
           "schedule": "normal", "summary": "avg_pool2d(x, 8) flattened (8 x 3 x 4 x 4)",
           "pooled": [round(v, 6) for v in reference_summary(x)],
           "mean": float(x.mean()), "std": float(x.std()), "torch": torch.__version__}
    with open(REFERENCE_FILE, "w") as f:
        json.dump(ref, f, indent=1)
    return ref


def _reexec_with_passive_threads(argv) -> None:
    """Run again with OMP_WAIT_POLICY=PASSIVE (read by OpenMP at start-up only): on a shared machine,
    spinning worker threads made training 5-10x slower whenever another process took a core."""
    if os.environ.get("OMP_WAIT_POLICY") or os.environ.get("DEMO_TRAIN_NO_REEXEC"):
        return
    env = dict(os.environ, OMP_WAIT_POLICY="PASSIVE", DEMO_TRAIN_NO_REEXEC="1")
    sys.stdout.flush()
    os.execve(sys.executable, [sys.executable, os.path.abspath(__file__)] + list(argv), env)


def main(argv=None):
    if argv is None:
        _reexec_with_passive_threads(sys.argv[1:])
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--steps", type=int, default=3000, help="denoiser optimisation steps")
    ap.add_argument("--batch", type=int, default=64)
    ap.add_argument("--lr", type=float, default=2e-3)
    ap.add_argument("--p-uncond", type=float, default=0.15, help="label dropout to the null class (CFG)")
    ap.add_argument("--ema", type=float, default=0.999)
    ap.add_argument("--clf-steps", type=int, default=800)
    ap.add_argument("--clf-batch", type=int, default=128)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--resume", action="store_true", help="continue from out/demo-train/ checkpoints")
    ap.add_argument("--only", choices=["classifier", "denoiser", "evaluate", "reference"], default=None)
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)
    _raise_malloc_thresholds()
    os.makedirs(WEIGHTS, exist_ok=True)
    info_path = os.path.join(WEIGHTS, "train.json")
    info = json.load(open(info_path)) if os.path.exists(info_path) else {}
    t_all = time.time()
    if args.only in (None, "classifier"):
        clf, loss, secs = train_classifier(args.seed, args.clf_steps, args.clf_batch, 2e-3)
        save_file(clf.state_dict(), CLASSIFIER_FILE,
                  {"config": json.dumps(CLASSIFIER_CONFIG), "seed": str(args.seed), "steps": str(args.clf_steps)})
        info["classifier"] = dict(config=CLASSIFIER_CONFIG, seed=args.seed, steps=args.clf_steps, batch=args.clf_batch,
                                  lr=2e-3, final_loss=loss, seconds=secs, parameters=param_count(clf),
                                  bytes=os.path.getsize(CLASSIFIER_FILE))
    if args.only in (None, "denoiser"):
        ema, losses, secs = train_denoiser(args.seed, args.steps, args.batch, args.lr, args.p_uncond, args.ema,
                                           args.resume)
        save_file(ema.state_dict(), DENOISER_FILE,
                  {"config": json.dumps(DEFAULT_CONFIG), "seed": str(args.seed), "steps": str(args.steps),
                   "prediction": "eps", "schedule": "scaled_linear 0.00085..0.012, 1000 steps",
                   "weights": f"EMA {args.ema}"})
        tail = losses[-200:]
        info["denoiser"] = dict(config=DEFAULT_CONFIG, seed=args.seed, steps=args.steps, batch=args.batch, lr=args.lr,
                                p_uncond=args.p_uncond, ema=args.ema, final_loss=sum(tail) / len(tail),
                                loss_curve=[round(sum(losses[i:i + 100]) / len(losses[i:i + 100]), 5)
                                            for i in range(0, len(losses), 100)],
                                seconds=secs, parameters=param_count(ema), bytes=os.path.getsize(DENOISER_FILE))
    if args.only in (None, "reference"):
        write_reference()
    if args.only in (None, "evaluate"):
        info["measures"] = evaluate(args.seed)
        log(json.dumps(info["measures"], indent=1))
    info["machine"] = dict(torch=torch.__version__, threads=args.threads, python=platform.python_version(),
                           processor=platform.processor() or platform.machine())
    info["last_run_seconds"] = time.time() - t_all
    with open(info_path, "w") as f:
        json.dump(info, f, indent=1)
    log(f"done in {time.time() - t_all:.0f} s -> {WEIGHTS}")


if __name__ == "__main__":
    main()
