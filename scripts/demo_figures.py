"""Labelled figures for the demo, drawn with PIL only (no matplotlib).

* :func:`tile` — a picture [3, h, w] in [-1, 1] as a PIL image, upsampled by an integer factor with
  nearest neighbours (32 px -> 96 px at the default factor 3);
* :func:`cell` — pictures side by side (or stacked), a small label under each, a caption under all;
* :func:`grid` — cells in rows and columns with a title, column titles, row labels and a note;
  returns the image and where every picture was pasted;
* :func:`line_plot` — curves with axes, ticks (log or linear y), axis labels and a legend.
"""
from __future__ import annotations

import math
from typing import Dict, List, Optional, Sequence, Tuple

import torch
from PIL import Image, ImageDraw, ImageFont

__all__ = ["SCALE", "font", "tile", "cell", "grid", "line_plot", "COLORS"]

SCALE = 3                       # 32 px pictures are shown at 96 px
WHITE, INK, GREY, LIGHT = (255, 255, 255), (20, 20, 20), (105, 105, 105), (225, 225, 225)
COLORS = ((31, 119, 180), (214, 39, 40), (44, 160, 44), (148, 103, 189), (255, 127, 14), (140, 86, 75),
          (227, 119, 194), (23, 190, 207))
PAD = 8


def font(size: int):
    try:
        return ImageFont.load_default(size=size)
    except TypeError:                                  # Pillow < 10.1: the fixed bitmap font
        return ImageFont.load_default()


def _text_wh(text: str, fnt) -> Tuple[int, int]:
    box = ImageDraw.Draw(Image.new("RGB", (1, 1))).multiline_textbbox((0, 0), text, font=fnt, spacing=3)
    return box[2] - box[0], box[3]


def tile(picture: torch.Tensor, scale: int = SCALE) -> Image.Image:
    """[3, h, w] in [-1, 1] -> RGB PIL image of (w * scale) x (h * scale), nearest-neighbour."""
    x = ((picture.detach().float().clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8)
    x = x.repeat_interleave(scale, 1).repeat_interleave(scale, 2)
    return Image.fromarray(x.permute(1, 2, 0).contiguous().numpy(), "RGB")


def cell(pictures: Sequence[Image.Image], labels: Optional[Sequence[str]] = None, caption: Optional[str] = None,
         vertical: bool = False, gap: int = 4, size: int = 13) -> Tuple[Image.Image, List[Tuple[int, int]]]:
    """Pictures in a row (or a column), an optional label under each and a caption under the block.
    Returns the image and the top-left corner of every picture in it."""
    fnt = font(size)
    lab_h = (_text_wh("Ag", fnt)[1] + 2) if labels else 0
    slots = [(p.width, p.height + lab_h) for p in pictures]
    if vertical:
        w, h = max(s[0] for s in slots), sum(s[1] for s in slots) + gap * (len(slots) - 1)
    else:
        w, h = sum(s[0] for s in slots) + gap * (len(slots) - 1), max(s[1] for s in slots)
    cap_w, cap_h = _text_wh(caption, fnt) if caption else (0, 0)
    out = Image.new("RGB", (max(w, cap_w), h + (cap_h + 4 if caption else 0)), WHITE)
    d = ImageDraw.Draw(out)
    pos, x, y = [], 0, 0
    for k, p in enumerate(pictures):
        out.paste(p, (x, y))
        pos.append((x, y))
        if labels:
            lw = _text_wh(labels[k], fnt)[0]
            d.text((x + (p.width - lw) // 2, y + p.height + 1), labels[k], fill=GREY, font=fnt)
        if vertical:
            y += slots[k][1] + gap
        else:
            x += slots[k][0] + gap
    if caption:
        d.multiline_text((0, h + 3), caption, fill=INK, font=fnt, spacing=3)
    return out, pos


def grid(cells: Sequence[Sequence[Optional[Tuple[Image.Image, list]]]], row_labels: Sequence[str],
         col_titles: Sequence[str], title: str, note: Optional[str] = None
         ) -> Tuple[Image.Image, Dict[Tuple[int, int], List[Tuple[int, int]]]]:
    """Cells (from :func:`cell`; None leaves a gap) in rows and columns, with a title, column titles,
    row labels and a note at the bottom.  Returns the figure and, per (row, col), the absolute
    top-left corners of the cell's pictures."""
    f_title, f_head = font(20), font(15)
    col_w = [max([c[0].width for c in col if c is not None] + [_text_wh(t, f_head)[0]])
             for col, t in zip(zip(*cells), col_titles)]
    row_h = [max([c[0].height for c in row if c is not None] + [_text_wh(lab, f_head)[1]])
             for row, lab in zip(cells, row_labels)]
    label_w = max(_text_wh(lab, f_head)[0] for lab in row_labels) + 2 * PAD
    title_h = _text_wh(title, f_title)[1] + 2 * PAD
    head_h = max(_text_wh(t, f_head)[1] for t in col_titles) + PAD
    note_h = _text_wh(note, f_head)[1] + 2 * PAD if note else 0
    W = label_w + sum(col_w) + PAD * (len(col_w) + 1)
    H = title_h + head_h + sum(row_h) + PAD * (len(row_h) + 1) + note_h
    W = max(W, _text_wh(title, f_title)[0] + 2 * PAD, (_text_wh(note, f_head)[0] + 2 * PAD) if note else 0)
    fig = Image.new("RGB", (W, H), WHITE)
    d = ImageDraw.Draw(fig)
    d.multiline_text((PAD, PAD), title, fill=INK, font=f_title, spacing=3)
    xs = [label_w + PAD + sum(col_w[:j]) + PAD * j for j in range(len(col_w))]
    for j, t in enumerate(col_titles):
        d.multiline_text((xs[j], title_h), t, fill=INK, font=f_head, spacing=3)
    boxes, y = {}, title_h + head_h + PAD
    for i, row in enumerate(cells):
        d.line([(PAD, y - PAD // 2), (W - PAD, y - PAD // 2)], fill=LIGHT)
        d.multiline_text((PAD, y + 2), row_labels[i], fill=INK, font=f_head, spacing=3)
        for j, c in enumerate(row):
            if c is not None:
                fig.paste(c[0], (xs[j], y))
                boxes[(i, j)] = [(xs[j] + px, y + py) for px, py in c[1]]
        y += row_h[i] + PAD
    if note:
        d.multiline_text((PAD, y + PAD // 2), note, fill=GREY, font=f_head, spacing=3)
    return fig, boxes


def _nice_ticks(lo: float, hi: float, n: int = 6) -> List[float]:
    step = (hi - lo) / max(n, 1)
    mag = 10 ** math.floor(math.log10(step)) if step > 0 else 1.0
    step = min((m * mag for m in (1, 2, 2.5, 5, 10) if m * mag >= step), default=mag)
    start = math.ceil(lo / step) * step
    return [start + k * step for k in range(int((hi - start) / step + 1e-9) + 1)]


def _log_ticks(lo: float, hi: float) -> List[float]:
    ticks = [m * 10.0 ** e for e in range(math.floor(math.log10(lo)), math.ceil(math.log10(hi)) + 1)
             for m in (1, 2, 5) if lo <= m * 10.0 ** e <= hi]
    return ticks if len(ticks) <= 10 else [t for t in ticks if f"{t:g}".lstrip("0.").startswith("1")]


def _fmt(v: float) -> str:
    return "0" if abs(v) < 1e-12 else (f"{v:g}" if abs(v) >= 0.01 else f"{v:.0e}")


def line_plot(series: Sequence[Tuple[str, Sequence[float], Sequence[float]]], title: str, xlabel: str,
              ylabel: str, hlines: Sequence[Tuple[str, float]] = (), size: Tuple[int, int] = (780, 480),
              log_y: bool = True, markers: bool = True) -> Image.Image:
    """Curves (name, xs, ys) on shared axes; ``hlines`` are labelled dashed reference levels."""
    W, H = size
    f_title, f = font(18), font(13)
    left, right, top, bottom = 70, 20, 40, 60
    fig = Image.new("RGB", (W, H), WHITE)
    d = ImageDraw.Draw(fig)
    xs_all = [x for _, xs, _ in series for x in xs]
    ys_all = [y for _, _, ys in series for y in ys if y > 0 or not log_y] + [v for _, v in hlines]
    x0, x1 = 0.0, max(xs_all) * 1.02
    y0, y1 = min(ys_all), max(ys_all)
    ty = (lambda v: math.log10(v)) if log_y else (lambda v: v)
    if log_y:
        y0, y1 = y0 / 1.3, y1 * 1.3
    else:
        y0, y1 = min(0.0, y0), y1 * 1.05
    px = lambda v: left + (v - x0) / (x1 - x0) * (W - left - right)                      # noqa: E731
    py = lambda v: H - bottom - (ty(v) - ty(y0)) / (ty(y1) - ty(y0)) * (H - top - bottom)  # noqa: E731
    d.text((left, 8), title, fill=INK, font=f_title)
    d.rectangle([left, top, W - right, H - bottom], outline=INK)
    for t in _nice_ticks(x0, x1):
        d.line([(px(t), H - bottom), (px(t), H - bottom + 5)], fill=INK)
        d.text((px(t) - _text_wh(_fmt(t), f)[0] / 2, H - bottom + 8), _fmt(t), fill=INK, font=f)
    for t in (_log_ticks(y0, y1) if log_y else _nice_ticks(y0, y1)):
        d.line([(left - 5, py(t)), (left, py(t))], fill=INK)
        d.line([(left + 1, py(t)), (W - right - 1, py(t))], fill=LIGHT)
        d.text((left - 8 - _text_wh(_fmt(t), f)[0], py(t) - 7), _fmt(t), fill=INK, font=f)
    d.text((left + (W - left - right - _text_wh(xlabel, f)[0]) / 2, H - 24), xlabel, fill=INK, font=f)
    ylab = Image.new("RGB", _text_wh(ylabel, f), WHITE)
    ImageDraw.Draw(ylab).text((0, 0), ylabel, fill=INK, font=f)
    fig.paste(ylab.rotate(90, expand=True), (6, top + (H - top - bottom - ylab.width) // 2))
    for k, (name, v) in enumerate(hlines):
        for xa in range(left + 2, W - right - 2, 12):
            d.line([(xa, py(v)), (min(xa + 6, W - right - 2), py(v))], fill=GREY, width=1)
        d.text((W - right - 6 - _text_wh(name, f)[0], py(v) - 17), name, fill=GREY, font=f)
    for k, (name, xs, ys) in enumerate(series):
        col = COLORS[k % len(COLORS)]
        pts = [(px(x), py(y)) for x, y in zip(xs, ys) if y > 0 or not log_y]
        d.line(pts, fill=col, width=3 if len(pts) < 20 else 2)
        for p in (pts if markers and len(pts) < 20 else []):
            d.ellipse([p[0] - 4, p[1] - 4, p[0] + 4, p[1] + 4], fill=col)
    _legend(d, [name for name, _, _ in series], (W - right - 10, top + 10), f)
    return fig


def _legend(d: ImageDraw.ImageDraw, names: Sequence[str], top_right: Tuple[int, int], f) -> None:
    w = max(_text_wh(n, f)[0] for n in names) + 40
    h = len(names) * 20 + 8
    x, y = top_right[0] - w, top_right[1]
    d.rectangle([x, y, x + w, y + h], fill=WHITE, outline=GREY)
    for k, n in enumerate(names):
        yy = y + 6 + 20 * k
        d.line([(x + 6, yy + 8), (x + 28, yy + 8)], fill=COLORS[k % len(COLORS)], width=3)
        d.text((x + 34, yy), n, fill=INK, font=f)
