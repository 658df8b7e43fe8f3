"""Procedural scenes: one flat-coloured object on a gradient background, generated from a seed.

Every picture is drawn from numbers, never by hand: a background that is a linear gradient between
two muted colours in a random direction plus a little pixel noise, and one object of a random kind,
size, position, rotation and colour.  The object's kind is the class label:

    0 disc, 1 square, 2 triangle, 3 ring, 4 cross

Images are float32 in [-1, 1], shaped [N, 3, H, W] (32 x 32 for the training data).  Shapes are
rendered with 4x supersampling, so their edges are anti-aliased.

Streams are keyed by ``(seed, split, index)`` with the pack's 64-bit stream hash, so the train and
test splits never share a picture and ``make_data(n, seed, split)`` gives the same pictures on
every machine.  :func:`render_scene` draws any canvas size with any number of objects on one
shared background (used to check the object counter on multi-object compositions).
"""
from __future__ import annotations

import math
from typing import List, Optional, Sequence, Tuple

import torch

from ._pack import common

CLASSES = ("disc", "square", "triangle", "ring", "cross")
N_CLASSES = len(CLASSES)
SIZE = 32
SUPERSAMPLE = 4

# object "radius" in pixels at the 32 x 32 scale (each kind scales its own geometry from it)
R_MIN, R_MAX = 5.5, 9.5
MARGIN = 1.5             # the object stays this far (pixels) inside the canvas
MIN_CONTRAST = 0.42      # RGB distance (in [0, 1] units) of the object colour from every background colour
BG_NOISE = 0.02          # std of the background pixel noise (in [0, 1] units)

__all__ = ["CLASSES", "N_CLASSES", "SIZE", "make_data", "render_scene", "sample_params", "batch_stream"]


def _hsv_to_rgb(h, s, v):
    i = torch.floor(h * 6.0)
    f = h * 6.0 - i
    p, q, t = v * (1 - s), v * (1 - s * f), v * (1 - s * (1 - f))
    i = i.long() % 6
    table = torch.stack([torch.stack([v, t, p], -1), torch.stack([q, v, p], -1), torch.stack([p, v, t], -1),
                         torch.stack([p, q, v], -1), torch.stack([t, p, v], -1), torch.stack([v, p, q], -1)], 0)
    return table[i, torch.arange(h.shape[0])]


def _seg_dist(c, a, b):
    """RGB distance of colours c [N,3] to the segments a-b [N,3]."""
    ab = b - a
    t = (((c - a) * ab).sum(-1) / (ab * ab).sum(-1).clamp_min(1e-9)).clamp(0, 1)
    return (c - (a + t[:, None] * ab)).norm(dim=-1)


def sample_params(g: torch.Generator, n: int, labels: Optional[torch.Tensor] = None,
                  height: int = SIZE, width: int = SIZE) -> dict:
    """Random scene parameters for ``n`` single-object scenes (all tensors, float64)."""
    if labels is None:
        labels = torch.randint(0, N_CLASSES, (n,), generator=g)
    u = lambda *s: torch.rand(*s, generator=g, dtype=torch.float64)  # noqa: E731
    # background: two muted colours, a gradient direction
    bg0 = _hsv_to_rgb(u(n), 0.15 + 0.45 * u(n), 0.2 + 0.7 * u(n))
    bg1 = (bg0 + 0.35 * (u(n, 3) - 0.5)).clamp(0, 1)
    angle = u(n) * 2 * math.pi
    # object colour: saturated, far enough from the whole background segment (rejection, vectorised)
    col = _hsv_to_rgb(u(n), 0.55 + 0.45 * u(n), 0.55 + 0.45 * u(n))
    for _ in range(64):
        bad = _seg_dist(col, bg0, bg1) < MIN_CONTRAST
        if not bad.any():
            break
        k = int(bad.sum())
        col[bad] = _hsv_to_rgb(u(k), 0.55 + 0.45 * u(k), 0.2 + 0.8 * u(k))
    bad = _seg_dist(col, bg0, bg1) < MIN_CONTRAST          # rare leftovers: push to the far corner of RGB
    col[bad] = (bg0[bad] + bg1[bad] < 1).to(torch.float64)
    r = R_MIN + (R_MAX - R_MIN) * u(n)
    ext = r + MARGIN
    cx = ext + (width - 2 * ext) * u(n)
    cy = ext + (height - 2 * ext) * u(n)
    rot = u(n) * 2 * math.pi
    thick = 0.32 + 0.12 * u(n)      # ring width / cross arm width, as a fraction of r
    return dict(labels=labels, bg0=bg0, bg1=bg1, angle=angle, color=col, r=r, cx=cx, cy=cy, rot=rot,
                thick=thick)


def _masks(kind: torch.Tensor, cx, cy, r, rot, thick, height: int, width: int) -> torch.Tensor:
    """Anti-aliased coverage [N, H, W] of one object per row (supersampled, then averaged)."""
    s = SUPERSAMPLE
    n = kind.shape[0]
    ys = (torch.arange(height * s, dtype=torch.float32) + 0.5) / s
    xs = (torch.arange(width * s, dtype=torch.float32) + 0.5) / s
    out = torch.zeros(n, height, width)
    for k in range(N_CLASSES):
        idx = (kind == k).nonzero().flatten()
        if idx.numel() == 0:
            continue
        f = lambda t: t[idx].to(torch.float32)[:, None, None]  # noqa: E731
        dx = xs[None, None, :] - f(cx)
        dy = ys[None, :, None] - f(cy)
        rr, th, a0 = f(r), f(thick) * f(r), f(rot)
        c, sn = torch.cos(a0), torch.sin(a0)
        if k == 0:                                  # disc
            m = dx * dx + dy * dy <= rr * rr
        elif k == 1:                                # square, half side 0.82 r
            u, v = c * dx + sn * dy, -sn * dx + c * dy
            m = torch.maximum(u.abs(), v.abs()) <= 0.82 * rr
        elif k == 2:                                # equilateral triangle, circumradius 1.3 r
            m = None
            for j in range(3):
                a = a0 + j * 2 * math.pi / 3
                h = (dx * torch.cos(a) + dy * torch.sin(a)) <= 0.65 * rr
                m = h if m is None else m & h
        elif k == 3:                                # ring
            d2 = dx * dx + dy * dy
            m = (d2 <= rr * rr) & (d2 >= (rr - 1.1 * th) ** 2)
        else:                                       # cross
            u, v = (c * dx + sn * dy).abs(), (-sn * dx + c * dy).abs()
            arm = th * 0.55 + 0.6
            m = ((u <= arm) & (v <= rr)) | ((v <= arm) & (u <= rr))
        out[idx] = torch.nn.functional.avg_pool2d(m.to(torch.float32)[:, None], s)[:, 0]
    return out


def _background(p: dict, height: int, width: int, g: torch.Generator) -> torch.Tensor:
    n = p["bg0"].shape[0]
    ys = (torch.arange(height, dtype=torch.float64) + 0.5) / SIZE
    xs = (torch.arange(width, dtype=torch.float64) + 0.5) / SIZE
    Y, X = torch.meshgrid(ys, xs, indexing="ij")
    ca, sa = torch.cos(p["angle"])[:, None, None], torch.sin(p["angle"])[:, None, None]
    proj = (X[None] - width / (2 * SIZE)) * ca + (Y[None] - height / (2 * SIZE)) * sa
    span = (width * ca.abs() + height * sa.abs()) / SIZE
    t = (proj / span + 0.5).clamp(0, 1)           # 0..1 across the canvas
    bg = p["bg0"][:, :, None, None] + (p["bg1"] - p["bg0"])[:, :, None, None] * t[:, None]
    return bg + BG_NOISE * torch.randn(n, 3, height, width, generator=g, dtype=torch.float64)


def _render(p: dict, height: int, width: int, g: torch.Generator) -> torch.Tensor:
    bg = _background(p, height, width, g)
    m = _masks(p["labels"], p["cx"], p["cy"], p["r"], p["rot"], p["thick"], height, width).to(torch.float64)
    img = bg * (1 - m[:, None]) + p["color"][:, :, None, None] * m[:, None]
    return (img.clamp(0, 1) * 2 - 1).to(torch.float32)


def batch_stream(seed: int, split: str, index: int, n: int) -> Tuple[torch.Tensor, torch.Tensor]:
    """Batch ``index`` of the stream ``(seed, split)``: ``n`` 32 x 32 scenes and their labels."""
    g = common.keyed_generator(seed, "demo-data-" + split, index)
    p = sample_params(g, n)
    return _render(p, SIZE, SIZE, g), p["labels"]


def make_data(n: int, seed: int = 0, split: str = "test", chunk: int = 500) -> Tuple[torch.Tensor, torch.Tensor]:
    """``n`` 32 x 32 scenes of split ``split`` ('train', 'test', or any other name) from ``seed``:
    ``(images [n, 3, 32, 32] in [-1, 1], labels [n] int64)``.  Deterministic."""
    xs, ys = [], []
    for i in range(0, n, chunk):
        x, y = batch_stream(seed, split, i // chunk, min(chunk, n - i))
        xs.append(x)
        ys.append(y)
    return torch.cat(xs), torch.cat(ys)


def render_scene(height: int, width: int, kinds: Sequence[int], seed: int = 0,
                 centers: Optional[Sequence[Tuple[float, float]]] = None, radius: float = 7.5) -> torch.Tensor:
    """One [1, 3, height, width] scene with one object per entry of ``kinds`` on a shared background.

    ``centers``: (x, y) pixel centres; by default the objects sit evenly along the long side.
    Colours and rotations come from ``seed``."""
    g = torch.Generator().manual_seed(int(seed))
    k = len(kinds)
    p = sample_params(g, max(k, 1), labels=torch.as_tensor(list(kinds) or [0]), height=height, width=width)
    if centers is None:
        if width >= height:
            centers = [((i + 0.5) * width / k, height / 2) for i in range(k)]
        else:
            centers = [(width / 2, (i + 0.5) * height / k) for i in range(k)]
    bg = _background({key: p[key][:1] for key in ("bg0", "bg1", "angle")}, height, width, g)[0]
    img = bg
    if k:
        cx = torch.tensor([c[0] for c in centers], dtype=torch.float64)
        cy = torch.tensor([c[1] for c in centers], dtype=torch.float64)
        r = torch.full((k,), float(radius), dtype=torch.float64)
        # every object must stand out from the shared background
        col = p["color"]
        bad = _seg_dist(col, p["bg0"][:1].expand(k, 3), p["bg1"][:1].expand(k, 3)) < MIN_CONTRAST
        col[bad] = (p["bg0"][:1] + p["bg1"][:1] < 1).to(torch.float64).expand(int(bad.sum()), 3)
        m = _masks(p["labels"], cx, cy, r, p["rot"], p["thick"], height, width).to(torch.float64)
        for i in range(k):
            img = img * (1 - m[i]) + col[i][:, None, None] * m[i]
    return (img.clamp(0, 1) * 2 - 1).to(torch.float32)[None]


def tile(images: torch.Tensor, cols: int, rows: int = 1) -> torch.Tensor:
    """Place ``rows * cols`` images [N, 3, h, w] side by side: [1, 3, rows*h, cols*w]."""
    n = rows * cols
    x = images[:n]
    _, c, h, w = x.shape
    return x.reshape(rows, cols, c, h, w).permute(2, 0, 3, 1, 4).reshape(1, c, rows * h, cols * w)


def class_names(labels) -> List[str]:
    return [CLASSES[int(i)] for i in labels]
