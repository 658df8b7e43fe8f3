"""Where the model looks: the reference size, the sub-pixel cells of the reference, the local windows.

Clean mode: the reference has long side ``base`` (aspect kept); reference pixel (p, q) owns the cell
of canvas rows floor(p H / h) .. floor((p+1) H / h) - 1 (columns likewise), any factor >= 1.  A
resampling round picks one pixel of each cell; the direction is written back at the very pixel
that was sampled, and pixels no round has sampled take their own cell's value.  Windows keep the
official count, spread evenly, each crop is exactly base (context re-allocated at the borders) and
overlaps are cross-faded.  Faithful mode swaps in the official maps (``official.py``).
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import List, Tuple

import torch

from . import official

__all__ = ["reference_size", "ElasticGeometry", "View", "make_views"]


def reference_size(H: int, W: int, base: int, mode: str = "clean") -> Tuple[int, int]:
    """Reference latent size: long side = base, aspect kept; (H, W) itself at or below base.

    ``clean``: round(side * base / long side).  ``faithful``: the official pixel formula.
    """
    if mode == "faithful":
        return official.official_reference_size(H, W, base)
    L = max(H, W)
    if L <= base:
        return H, W
    return (max(1, min(base, (2 * H * base + L) // (2 * L))),
            max(1, min(base, (2 * W * base + L) // (2 * L))))


@dataclass
class ElasticGeometry:
    """Sub-pixel sampling geometry of one canvas (built once per run).

    Every reference pixel (p, q) owns ``K`` candidate sources (flat indices ``cand`` [h, w, K], valid
    where ``valid``).  A round picks one candidate k per pixel; the direction estimate ``g`` is
    written at ``write[p, q, k]`` with the value ``g.flat[value[p, q, k]]``.  ``fill`` [H*W] is the
    reference pixel that fills unwritten positions (and upsamples x0_ref for RRG); ``down`` [h*w] is
    the full-size pixel read for the reference-level direction.

    clean: write = cand (scatter at the source), value = own cell, fill = cell-constant, down = cell
    top-left.  faithful: the official maps (see ``official.official_maps``).
    """
    H: int
    W: int
    h: int
    w: int
    K: int
    mode: str
    cand: torch.Tensor
    valid: torch.Tensor
    write: torch.Tensor
    value: torch.Tensor
    fill: torch.Tensor
    down: torch.Tensor
    cand_w: torch.Tensor          # [w] candidate-grid width of each column cell (k -> dy = k // cw, dx = k % cw)

    @property
    def trivial(self) -> bool:
        """The reference is the latent itself (size <= base): every cell is one pixel."""
        return self.h == self.H and self.w == self.W

    def to(self, device) -> "ElasticGeometry":
        for name in ("cand", "valid", "write", "value", "fill", "down", "cand_w"):
            setattr(self, name, getattr(self, name).to(device))
        return self

    @staticmethod
    def build(H: int, W: int, base: int, mode: str = "clean") -> "ElasticGeometry":
        h, w = reference_size(H, W, base, mode)
        if mode == "faithful":
            return ElasticGeometry(H, W, h, w, 4, "faithful", **official.official_maps(H, W, h, w))
        return ElasticGeometry._clean(H, W, h, w)

    @staticmethod
    def _clean(H, W, h, w):
        rb = torch.div(torch.arange(h + 1) * H, h, rounding_mode="floor")       # row cell boundaries
        cb = torch.div(torch.arange(w + 1) * W, w, rounding_mode="floor")
        hp, wq = rb[1:] - rb[:-1], cb[1:] - cb[:-1]
        K = int(hp.max()) * int(wq.max())
        k = torch.arange(K).view(1, 1, K)
        dy = torch.div(k, wq.view(1, w, 1), rounding_mode="floor")
        dx = k - dy * wq.view(1, w, 1)
        valid = dy < hp.view(h, 1, 1)
        rows = (rb[:-1].view(h, 1, 1) + dy).clamp(max=H - 1)
        cols = (cb[:-1].view(1, w, 1) + dx).clamp(max=W - 1)
        cand = torch.where(valid, rows * W + cols, torch.zeros_like(rows))
        own = (torch.arange(h).view(h, 1, 1) * w + torch.arange(w).view(1, w, 1)).expand(h, w, K)
        cell_r = torch.repeat_interleave(torch.arange(h), hp)
        cell_c = torch.repeat_interleave(torch.arange(w), wq)
        fill = (cell_r.view(H, 1) * w + cell_c.view(1, W)).reshape(-1)
        down = cand[:, :, 0].reshape(-1)
        return ElasticGeometry(H, W, h, w, K, "clean", cand, valid, cand.clone(), own.contiguous(), fill, down,
                               wq.clone())

    def _pick(self, table: torch.Tensor, picks: torch.Tensor) -> torch.Tensor:
        return table.expand(*picks.shape, self.K).gather(-1, picks.unsqueeze(-1)).squeeze(-1).flatten(-2)

    def sources(self, picks: torch.Tensor) -> torch.Tensor:
        """Flat source indices [..., h*w] of picks [..., h, w] (candidate indices)."""
        return self._pick(self.cand, picks)

    def writes(self, picks: torch.Tensor) -> torch.Tensor:
        return self._pick(self.write, picks)

    def values(self, picks: torch.Tensor) -> torch.Tensor:
        return self._pick(self.value, picks)


@dataclass
class View:
    """One local window: ``win`` = (y0, y1, x0, x1) canvas rows/cols it contributes; ``crop`` = the
    canvas region sent to the model (window + context); weights ``wy`` / ``wx`` over the window."""
    index: int
    win: Tuple[int, int, int, int]
    crop: Tuple[int, int, int, int]
    wy: torch.Tensor
    wx: torch.Tensor


def _axis_windows_clean(L: int, P: int, base: int) -> List[Tuple[int, int, int, int]]:
    """Clean windows: same count as the official grid, evenly spaced (overlaps spread over all seams),
    context = base - P split top/bottom with re-allocation at the borders, so crops are exactly base."""
    if L <= base:
        return [(0, L, 0, L)]
    n = math.ceil((L - P) / P) + 1
    ctx = base - P
    out = []
    for k in range(n):
        a = (k * (L - P) + (n - 1) // 2) // (n - 1)
        b = a + P
        nt0 = ctx // 2
        if a < nt0:
            nt = a
            nb = min(L - b, ctx - nt)
        else:
            nb = min(L - b, ctx - nt0)
            nt = min(a, ctx - nb)
        out.append((a, b, a - nt, b + nb))
    return out


def _feather_weights(wins: List[Tuple[int, int, int, int]]) -> List[torch.Tensor]:
    """Linear cross-fade over each overlap along one axis (weights of overlapping windows sum to 1)."""
    out = []
    for k, (a, b, _, _) in enumerate(wins):
        y = torch.arange(a, b, dtype=torch.float64)
        wgt = torch.ones(b - a, dtype=torch.float64)
        if k > 0 and wins[k - 1][1] > a:
            wgt = torch.minimum(wgt, (y - a + 0.5) / (wins[k - 1][1] - a))
        if k < len(wins) - 1 and wins[k + 1][0] < b:
            wgt = torch.minimum(wgt, (b - y - 0.5) / (b - wins[k + 1][0]))
        out.append(wgt)
    return out


def make_views(H: int, W: int, base: int, patch: int, mode: str = "clean") -> Tuple[List[View], torch.Tensor]:
    """Windows (row-major, as the official ``get_views``) and the weight normaliser [H, W]."""
    if mode == "faithful":
        rows, cols = official.official_axis_windows(H, patch, base), official.official_axis_windows(W, patch, base)
        wr, wc = official.first_write_weights(rows, H), official.first_write_weights(cols, W)
    else:
        rows, cols = _axis_windows_clean(H, patch, base), _axis_windows_clean(W, patch, base)
        wr, wc = _feather_weights(rows), _feather_weights(cols)
    views, norm = [], torch.zeros(H, W, dtype=torch.float64)
    for i, (ry, wy) in enumerate(zip(rows, wr)):
        for j, (cx, wx) in enumerate(zip(cols, wc)):
            views.append(View(len(views), (ry[0], ry[1], cx[0], cx[1]), (ry[2], ry[3], cx[2], cx[3]), wy, wx))
            norm[ry[0]:ry[1], cx[0]:cx[1]] += wy.view(-1, 1) * wx.view(1, -1)
    return views, norm
