"""Faithful mode only: the official code's quirks, reproduced where they change results.

Nothing here is used in clean mode.  Each function re-derives one piece of the official
implementation (its reference-size formula, its 2x-upsample / keep-rows / 2x2-block sub-sampling
map with the ``F.interpolate`` fill, its windows with first-write-wins stitching, its integer
new-pick draw) so that faithful runs match it, misregistration included.
"""
from __future__ import annotations

import math
from fractions import Fraction
from typing import Dict, List, Tuple

import torch
import torch.nn.functional as F

__all__ = ["VAE_SCALE", "OfficialShapeError", "official_reference_size", "official_axis", "official_maps",
           "check_official_size", "official_axis_windows", "first_write_weights", "official_take"]

VAE_SCALE = 8                 # the official code sizes its reference in pixels of an 8x VAE


class OfficialShapeError(Exception):
    """The official sub-sampling map produces the wrong shape for this size."""


def official_reference_size(H: int, W: int, base: int) -> Tuple[int, int]:
    """The official ``int((px // f) // 8)`` with f = max(1, max px / base px), float quirk included
    (1080 px -> 127 rows)."""
    hp, wp = H * VAE_SCALE, W * VAE_SCALE
    f = max(max(hp, wp) / (base * VAE_SCALE), 1)
    return int((hp // f) // VAE_SCALE), int((wp // f) // VAE_SCALE)


def _even_rational(f: float) -> Tuple[int, int]:
    """Official ``to_even_rational``: f ~ keep/block with both even, denominators <= 32."""
    fr = Fraction(f).limit_denominator(32)
    if fr.numerator % 2 or fr.denominator % 2:
        fr = Fraction(f).limit_denominator(16)
        if fr.numerator % 2 or fr.denominator % 2:
            return fr.numerator * 2, fr.denominator * 2
    return fr.numerator, fr.denominator


def _keep_offsets(block: int, remove: int) -> Tuple[List[int], List[int]]:
    """Official ``get_keep_blocks`` re-derived: drop ``remove`` rows of a block in pairs at even spacing.

    Returns the kept offsets and, in kept coordinates, the pairs of kept rows that straddle a dropped
    pair (they map to two different source rows and are restored as two mask rows).
    """
    pairs = remove // 2
    keep = [True] * block
    interval = block // (pairs + 1)
    if interval % 2:
        interval += 1
    marks: List[int] = []
    for k in range(pairs):
        s = (k + 1) * interval - 1
        marks += [s - 1 - 2 * k, s - 2 * k]
        for u in (s, s + 1):
            if 0 <= u < block:
                keep[u] = False
    return [o for o in range(block) if keep[o]], marks


def _kept_rows(L: int, l: int, keep: int, block: int, offsets: List[int]) -> List[int]:
    """Upsampled rows the official map keeps (2l of them where the official code works)."""
    nblocks = (2 * l) // keep
    if nblocks * block > 2 * L:
        nblocks -= 1
    span = nblocks * block
    rows = [u for u in (b * block + o for b in range(nblocks) for o in offsets) if u < 2 * L]
    remain = 2 * l - len(rows)
    rows += list(range(span, min(span + remain, 2 * L))) if remain > 0 else []
    return rows


def official_axis(L: int, l: int) -> Tuple[List[int], List[int], int]:
    """The official sub-sampling map along one axis, re-derived.

    The latent is nearest-upsampled 2x (upsampled row u has source u // 2); ``keep`` of every
    ``block`` upsampled rows are kept to reach 2l rows; the reference picks one of each kept pair.
    Returns ``src`` (source row of each of the 2l kept rows), ``restore`` (row of the official write
    mask for each kept row) and the restored mask length.  Raises :class:`OfficialShapeError` where
    the official code produces the wrong shape.
    """
    if l < 1:
        raise OfficialShapeError("an empty reference")
    keep, block = _even_rational(l / L)
    offsets, marks = _keep_offsets(block, block - keep)
    rows = _kept_rows(L, l, keep, block, offsets)
    if len(rows) != 2 * l:
        raise OfficialShapeError(f"{len(rows) // 2} reference rows instead of {l}")
    src = [u // 2 for u in rows]
    a = [s + m for s in range(0, 2 * l, keep) for m in marks]
    restore = [0] * (2 * l)
    j = o = 0
    for i in range(0, 2 * l, 2):
        if j < len(a) and i == a[j]:
            restore[i], restore[i + 1] = o, o + 1
            o += 2
            j += 2
        else:
            restore[i] = restore[i + 1] = o
            o += 1
    if o > L:
        raise OfficialShapeError(f"write mask of {o} rows for {L} latent rows")
    return src, restore, o


def _nearest_map(src_len: int, dst_len: int) -> torch.Tensor:
    """The index map of ``F.interpolate(mode='nearest')`` from src_len to dst_len (exactly torch's)."""
    idx = torch.arange(src_len, dtype=torch.float64).view(1, 1, src_len, 1)
    return F.interpolate(idx, size=(dst_len, 1), mode="nearest").view(dst_len).round().long()


def official_maps(H: int, W: int, h: int, w: int) -> Dict[str, torch.Tensor]:
    """The official 2x2-block candidate map and its write / value / fill / down indices.

    write = the official restored mask, value / fill / down = ``F.interpolate`` nearest (which is
    what misregisters the estimate at non-integer factors).
    """
    src_r, res_r, _ = official_axis(H, h)
    src_c, res_c, _ = official_axis(W, w)
    src_r, res_r, src_c, res_c = (torch.tensor(v) for v in (src_r, res_r, src_c, res_c))
    k = torch.arange(4)
    dy, dx = torch.div(k, 2, rounding_mode="floor"), k % 2
    ky = 2 * torch.arange(h).view(h, 1, 1) + dy.view(1, 1, 4)
    kx = 2 * torch.arange(w).view(1, w, 1) + dx.view(1, 1, 4)
    cand = src_r[ky] * W + src_c[kx]
    write_r, write_c = res_r[ky], res_c[kx]
    up_r, up_c = _nearest_map(h, H), _nearest_map(w, W)           # full -> reference (floor map)
    dn_r, dn_c = _nearest_map(H, h), _nearest_map(W, w)           # reference -> full
    return dict(cand=cand, valid=torch.ones(h, w, 4, dtype=torch.bool), write=write_r * W + write_c,
                value=up_r[write_r] * w + up_c[write_c], fill=(up_r.view(H, 1) * w + up_c.view(1, W)).reshape(-1),
                down=(dn_r.view(h, 1) * W + dn_c.view(1, w)).reshape(-1),
                cand_w=torch.full((w,), 2, dtype=torch.long))


def check_official_size(H: int, W: int, base: int) -> None:
    """Raise ValueError for the sizes faithful mode cannot run: above 2x (the official map picks
    from 2x2 blocks only) or where the official map breaks."""
    factor = max(H, W) / base
    if factor > 2.0 + 1e-12:
        raise ValueError(f"mode='faithful' supports at most 2x the base size (the official map picks from "
                         f"2x2 blocks); size {H}x{W} is {factor:.3g}x; use mode='clean'")
    h, w = official_reference_size(H, W, base)
    for axis, big, small in (("height", H, h), ("width", W, w)):
        try:
            official_axis(big, small)
        except OfficialShapeError as e:
            raise ValueError(f"mode='faithful' cannot run {W * VAE_SCALE}x{H * VAE_SCALE} px "
                             f"(latent HxW {H}x{W}): the official sub-sampling map breaks on the {axis} axis "
                             f"({e}); use mode='clean'") from None


def official_axis_windows(L: int, P: int, base: int) -> List[Tuple[int, int, int, int]]:
    """Official ``get_views`` + ``crop_with_context`` along one axis -> (a, b, crop0, crop1):
    stride = window = P, the last window shifted back inside, context (base - P) // 2 per side."""
    ctx = base - P
    ws = L if P + ctx >= L else P
    n = math.ceil((L - ws) / P) + 1
    n_ctx = ctx // 2
    out = []
    for k in range(n):
        a = k * P
        if a + ws > L:
            a = max(0, L - ws)
        b = a + ws
        if a - n_ctx < 0:
            nt = a
            nb = max(0, min(L - b, 2 * n_ctx - nt))
        else:
            nb = min(L - b, n_ctx)
            nt = max(0, min(a, 2 * n_ctx - nb))
        out.append((a, b, a - nt, b + nb))
    return out


def first_write_weights(wins: List[Tuple[int, int, int, int]], L: int) -> List[torch.Tensor]:
    """0/1 weights along one axis: the first window that covers a row owns it (official stitching)."""
    owner = torch.full((L,), -1, dtype=torch.long)
    for k, (a, b, _, _) in enumerate(wins):
        seg = owner[a:b]
        seg[seg < 0] = k
    return [(owner[a:b] == k).double() for k, (a, b, _, _) in enumerate(wins)]


def official_take(gen: torch.Generator, h: int, w: int, new_p: float) -> torch.Tensor:
    """Which pixels take a new candidate: the official integer draw randint(0, 101) > 100 (1 - new_p)
    (30/101 for new_p 0.3)."""
    thr = 100.0 * (1.0 - new_p)
    draw = torch.randint(0, 101, (h, w), generator=gen)
    return (draw > thr) | (thr <= 0)
