"""Measures for the demo model's samples.

* :func:`frechet` — Fréchet distance between two feature sets (rows = samples), Gaussian fit to
  each: ``|mu_a - mu_b|^2 + tr(C_a + C_b - 2 (C_a^1/2 C_b C_a^1/2)^1/2)``; computed in float64.
  Used on the penultimate features of the demo classifier (64 numbers per picture), against
  held-out data.
* :func:`class_accuracy` — the fraction of pictures that the demo classifier assigns to the
  intended class.
* :func:`object_count` — the number of objects in each picture, from its colours only: the
  background (a smooth gradient in this data) is fitted per 32 x 32 tile by a robust plane per
  colour channel; pixels far from it in RGB are foreground; the count is the number of
  8-connected foreground components of at least ``min_area`` pixels.  A training picture has 1;
  a picture that repeats the composition (tiles, or a fixed-size model drawing at 2x) has 2 or more.
  Two copies that overlap are one component: read the count together with
* :func:`crop_accuracy` — for pictures of any size: a 32 x 32 crop centred on the largest object,
  read by the classifier.  Distorted, merged or half-drawn objects lower it.
"""
from __future__ import annotations

from typing import List, Tuple

import torch
import torch.nn.functional as F

from .data import SIZE

__all__ = ["frechet", "class_accuracy", "object_count", "foreground", "features", "fd_to_reference", "object_crops",
           "crop_accuracy", "count_summary"]

FG_THRESHOLD = 0.2    # RGB distance from the background, in [0, 1] colour units
MIN_AREA = 8          # pixels


def frechet(features_a: torch.Tensor, features_b: torch.Tensor) -> float:
    """Fréchet distance between the Gaussian fits of two sets of feature rows [N, d]."""
    a = torch.as_tensor(features_a).to(torch.float64).flatten(1)
    b = torch.as_tensor(features_b).to(torch.float64).flatten(1)
    if a.shape[1] != b.shape[1] or a.shape[0] < 2 or b.shape[0] < 2:
        raise ValueError(f"need two sets of >= 2 rows of the same width (got {tuple(a.shape)}, {tuple(b.shape)})")
    mu = ((a.mean(0) - b.mean(0)) ** 2).sum()
    ca, cb = torch.cov(a.T).reshape(a.shape[1], -1), torch.cov(b.T).reshape(b.shape[1], -1)
    ea, va = torch.linalg.eigh(ca)
    sa = (va * ea.clamp_min(0).sqrt()) @ va.T                     # C_a^1/2
    m = sa @ cb @ sa
    tr_sqrt = torch.linalg.eigvalsh((m + m.T) / 2).clamp_min(0).sqrt().sum()
    return float(mu + torch.trace(ca) + torch.trace(cb) - 2 * tr_sqrt)


@torch.no_grad()
def features(classifier, images: torch.Tensor, batch: int = 256) -> torch.Tensor:
    """The classifier's penultimate features of images [N, 3, 32, 32] (clamped to [-1, 1])."""
    out = [classifier.features(images[i:i + batch].to(torch.float32).clamp(-1, 1)) for i in range(0, len(images), batch)]
    return torch.cat(out)


def fd_to_reference(classifier, images: torch.Tensor, reference_features: torch.Tensor) -> float:
    """Fréchet distance of ``images`` to precomputed reference features (e.g. of held-out data)."""
    return frechet(features(classifier, images), reference_features)


@torch.no_grad()
def class_accuracy(classifier, images: torch.Tensor, labels) -> float:
    """Fraction of ``images`` that ``classifier`` assigns to ``labels`` (int or [N])."""
    logits = torch.cat([classifier(images[i:i + 256].to(torch.float32).clamp(-1, 1)) for i in range(0, len(images), 256)])
    labels = torch.as_tensor(labels).long().expand(len(images))
    return float((logits.argmax(-1) == labels).to(torch.float64).mean())


def _tiles(length: int) -> List[int]:
    """Start offsets of base-size windows covering ``length`` (evenly spaced, overlapping if needed)."""
    if length <= SIZE:
        return [0]
    k = -(-length // SIZE)
    return [round(i * (length - SIZE) / (k - 1)) for i in range(k)]


def _robust_plane(img: torch.Tensor, iters: int = 6, c: float = 0.25) -> torch.Tensor:
    """Robust per-channel plane fit of a background to img [B, 3, h, w] in [0, 1] (Tukey IRLS,
    started from the window's border pixels); returns the fitted background, same shape."""
    b, ch, h, w = img.shape
    ys = torch.linspace(-1, 1, h, dtype=torch.float64)
    xs = torch.linspace(-1, 1, w, dtype=torch.float64)
    Y, X = torch.meshgrid(ys, xs, indexing="ij")
    A = torch.stack([torch.ones_like(X), X, Y], -1).reshape(-1, 3)          # [P, 3]
    z = img.to(torch.float64).reshape(b, ch, -1).transpose(1, 2)           # [B, P, 3]
    border = torch.zeros(h, w, dtype=torch.float64)
    border[:2], border[-2:], border[:, :2], border[:, -2:] = 1, 1, 1, 1
    wts = border.reshape(1, -1).expand(b, -1).clone()
    for _ in range(iters + 1):
        Aw = A[None] * wts[..., None]                                      # [B, P, 3]
        coef = torch.linalg.solve(Aw.transpose(1, 2) @ A[None] + 1e-6 * torch.eye(3, dtype=torch.float64),
                                  Aw.transpose(1, 2) @ z)                  # [B, 3, ch]
        fit = A[None] @ coef                                               # [B, P, ch]
        r = (z - fit).norm(dim=-1)
        wts = (1 - (r / c).clamp(max=1) ** 2) ** 2
    return fit.transpose(1, 2).reshape(b, ch, h, w).to(img.dtype)


def background(images: torch.Tensor) -> torch.Tensor:
    """The fitted background of images [B, 3, H, W] in [-1, 1] (0..1 colour units), one robust
    plane per base-size tile; each pixel takes the tile whose centre is nearest."""
    img = (images.to(torch.float32).clamp(-1, 1) + 1) / 2
    _, _, H, W = img.shape
    ty, tx = _tiles(H), _tiles(W)
    th, tw = min(H, SIZE), min(W, SIZE)
    bg = torch.empty_like(img)
    cy = torch.tensor([o + th / 2 for o in ty])
    cx = torch.tensor([o + tw / 2 for o in tx])
    own_y = ((torch.arange(H) + 0.5)[:, None] - cy[None]).abs().argmin(1)
    own_x = ((torch.arange(W) + 0.5)[:, None] - cx[None]).abs().argmin(1)
    for i, oy in enumerate(ty):
        for j, ox in enumerate(tx):
            fit = _robust_plane(img[:, :, oy:oy + th, ox:ox + tw])
            rows = (own_y == i).nonzero().flatten()
            cols = (own_x == j).nonzero().flatten()
            sub = fit[:, :, rows - oy][:, :, :, cols - ox]
            bg[:, :, rows[:, None], cols[None]] = sub
    return bg


def foreground(images: torch.Tensor, threshold: float = FG_THRESHOLD) -> torch.Tensor:
    """Boolean mask [B, H, W] of the pixels that differ from the fitted background."""
    img = (images.to(torch.float32).clamp(-1, 1) + 1) / 2
    return (img - background(images)).norm(dim=1) > threshold


def components(mask: torch.Tensor) -> torch.Tensor:
    """8-connected component labels [B, H, W] of a boolean mask (0 = background)."""
    b, h, w = mask.shape
    lab = (torch.arange(1, h * w + 1, dtype=torch.float32).reshape(1, h, w).expand(b, h, w) * mask).clone()
    m = mask.to(torch.float32)
    for _ in range(4 * (h + w) + 8):
        new = F.max_pool2d(lab[:, None], 3, stride=1, padding=1)[:, 0] * m
        if torch.equal(new, lab):
            break
        lab = new
    return lab.long()


def object_count(images: torch.Tensor, threshold: float = FG_THRESHOLD, min_area: int = MIN_AREA) -> torch.Tensor:
    """Objects per picture (int64 [B]) for images [B, 3, H, W] in [-1, 1]."""
    if images.dim() == 3:
        images = images[None]
    lab = components(foreground(images, threshold))
    counts = []
    for row in lab.flatten(1):
        areas = torch.bincount(row)[1:]
        counts.append(int((areas >= min_area).sum()))
    return torch.tensor(counts, dtype=torch.long)


def object_crops(images: torch.Tensor, threshold: float = FG_THRESHOLD) -> torch.Tensor:
    """A base-size crop [B, 3, 32, 32] of each picture, centred on its largest foreground component
    (clamped inside the canvas; the canvas centre when there is none).  Canvases smaller than 32 x 32
    are padded (replicate)."""
    if images.dim() == 3:
        images = images[None]
    _, _, H, W = images.shape
    ph, pw = max(0, SIZE - H), max(0, SIZE - W)
    if ph or pw:
        images = F.pad(images, (pw // 2, pw - pw // 2, ph // 2, ph - ph // 2), mode="replicate")
        H, W = images.shape[-2:]
    lab = components(foreground(images, threshold))
    ys, xs = torch.meshgrid(torch.arange(H, dtype=torch.float64), torch.arange(W, dtype=torch.float64), indexing="ij")
    out = []
    for img, row in zip(images, lab):
        areas = torch.bincount(row.flatten())
        areas[0] = 0
        if int(areas.max()) == 0:
            cy, cx = (H - 1) / 2, (W - 1) / 2
        else:
            m = row == int(areas.argmax())
            cy = (float(ys[m].min()) + float(ys[m].max())) / 2
            cx = (float(xs[m].min()) + float(xs[m].max())) / 2
        top = int(min(max(round(cy + 0.5 - SIZE / 2), 0), H - SIZE))
        left = int(min(max(round(cx + 0.5 - SIZE / 2), 0), W - SIZE))
        out.append(img[:, top:top + SIZE, left:left + SIZE])
    return torch.stack(out)


def crop_accuracy(classifier, images: torch.Tensor, labels) -> float:
    """:func:`class_accuracy` of the crops of :func:`object_crops` (pictures of any size)."""
    return class_accuracy(classifier, object_crops(images), labels)


def count_summary(counts: torch.Tensor) -> Tuple[float, float]:
    """(mean count, fraction of pictures with exactly one object)."""
    counts = torch.as_tensor(counts)
    return float(counts.to(torch.float64).mean()), float((counts == 1).to(torch.float64).mean())
