"""Keyed randomness and the background pads of base-size calls.

Every random draw comes from its own CPU ``torch.Generator`` keyed by a hash of (seed, purpose,
sample id, step, ...) — never seed + id, so neighbouring seeds and samples share no stream — and
never from the global RNG, so a result does not depend on the device, on the batch
size of the calls, or on which other samples share the batch.
"""
from __future__ import annotations

from typing import Dict, Optional, Sequence, Tuple

import torch

from ..common import keyed_generator
from . import official

__all__ = ["StepRandom", "pad_sizes", "pad_to_base"]


class StepRandom:
    """All random draws of one step, keyed by (seed, purpose, sample id, step).

    ``picks`` sub-pixel choices, ``pad_parts`` background colour latent + unit noise of a pad block
    (identical for every call of the step with the same side and shape, as in the official code),
    ``repaint_noise`` the re-noise draw.  Pads are cached within the step.
    """

    def __init__(self, plan, seed: int, step: int, sample_ids: Optional[Sequence[int]] = None):
        self.plan, self.seed, self.step = plan, int(seed), int(step)
        self.sample_ids = None if sample_ids is None else [int(v) for v in sample_ids]
        self._pads: Dict[Tuple, Tuple[torch.Tensor, torch.Tensor]] = {}

    def _id(self, sample: int) -> int:
        """The id of sample ``sample`` keying its streams: its row index, or e.g. ComfyUI's batch_index."""
        return sample if self.sample_ids is None else self.sample_ids[sample]

    def picks(self, sample: int, rounds: int) -> torch.Tensor:
        """Candidate index per reference pixel for rounds 0..rounds-1 -> LongTensor [rounds, h, w].

        Round 0 is the top-left candidate.  Later rounds: a pixel takes a new candidate with
        probability new_p (faithful: the official integer draw), chosen uniformly among its
        not-yet-used candidates (none left: clean = any other candidate, faithful = any of the 4, the
        official fallback); otherwise it keeps the previous one.
        """
        geo, cfg = self.plan.geometry, self.plan.config
        cur = torch.zeros(geo.h, geo.w, dtype=torch.long)
        out = [cur]
        if rounds <= 1 or geo.trivial:
            return cur.expand(max(rounds, 1), -1, -1).contiguous().to(self.plan.device)
        gen = keyed_generator(self.seed, "elastic-subpixel", self._id(sample), self.step)
        valid = geo.valid.cpu()
        used = torch.zeros(geo.h, geo.w, geo.K, dtype=torch.bool)
        used[..., 0] = True
        kk = torch.arange(geo.K)
        for _ in range(1, rounds):
            scores = torch.rand(geo.h, geo.w, geo.K, generator=gen)
            allowed = valid & ~used
            none_left = ~allowed.any(-1, keepdim=True)
            if cfg.mode == "faithful":
                allowed = torch.where(none_left, valid, allowed)
                take = official.official_take(gen, geo.h, geo.w, cfg.new_p)
            else:
                fallback = valid & (kk.view(1, 1, -1) != cur.unsqueeze(-1))
                allowed = torch.where(none_left, fallback, allowed)
                take = (torch.rand(geo.h, geo.w, generator=gen) < cfg.new_p) & allowed.any(-1)
            new = torch.where(allowed, scores, torch.full_like(scores, -1.0)).argmax(-1)
            cur = torch.where(take, new, cur)
            used.scatter_(-1, cur.unsqueeze(-1), True)
            out.append(cur)
        return torch.stack(out).to(self.plan.device)

    def pad_parts(self, sample: int, side: str, ph: int, pw: int) -> Tuple[torch.Tensor, torch.Tensor]:
        """(background latent, unit noise) of a pad block [C, ph, pw]; the pad is z + sigma * n.

        The colour is one entry of the ``background`` palette drawn per (sample, step, side, shape);
        a [C] entry is broadcast, a spatial [C, h, w] entry is cropped from its top-left (tiled when
        smaller than the block) — encode constant images of 8*base px to cover every pad.
        """
        key = (sample, side, ph, pw)
        if key not in self._pads:
            plan = self.plan
            gen = keyed_generator(self.seed, "elastic-pad", self._id(sample), self.step, side, ph, pw)
            bg = plan.background
            colour = int(torch.randint(0, bg.shape[0], (1,), generator=gen))
            noise = torch.randn(plan.config.channels, ph, pw, generator=gen, dtype=torch.float64)
            z = bg[colour]
            if z.dim() == 1:
                z = z.view(-1, 1, 1).expand(-1, ph, pw)
            else:
                reps = (1, -(-ph // z.shape[1]), -(-pw // z.shape[2]))
                z = z.repeat(*reps)[:, :ph, :pw]
            self._pads[key] = (z.to(plan.dtype), noise.to(plan.device, plan.dtype))
        return self._pads[key]

    def repaint_noise(self, sample: int) -> torch.Tensor:
        cfg = self.plan.config
        gen = keyed_generator(self.seed, "elastic-repaint", self._id(sample), self.step)
        xi = torch.randn(cfg.channels, cfg.height, cfg.width, generator=gen, dtype=torch.float64)
        return xi.to(self.plan.device, self.plan.dtype)


def pad_sizes(ch: int, cw: int, base: int) -> Tuple[int, int, int, int]:
    """(top, bottom, left, right) pads to base; the smaller half goes top / left (as the official code)."""
    wp, hp = base - cw, base - ch
    return hp // 2, hp - hp // 2, wp // 2, wp - wp // 2


def pad_to_base(content: torch.Tensor, samples: Sequence[int], sigma: float, rnd: StepRandom
                ) -> Tuple[torch.Tensor, Tuple[int, int]]:
    """Background-pad [N, C, ch, cw] to base x base: width first (left/right blocks of height ch), then
    height (top/bottom blocks of full width); pad = z_bg + sigma * n.  Returns (input, (top, left))."""
    N, C, ch, cw = content.shape
    base = rnd.plan.config.base
    t, b, l, r = pad_sizes(ch, cw, base)
    if t == b == l == r == 0:
        return content, (0, 0)
    out = content.new_empty(N, C, base, base)
    out[:, :, t:t + ch, l:l + cw] = content
    blocks = (("left", t, t + ch, 0, l), ("right", t, t + ch, l + cw, base),
              ("top", 0, t, 0, base), ("bottom", t + ch, base, 0, base))
    for n, s in enumerate(samples):
        for side, y0, y1, x0, x1 in blocks:
            if y1 > y0 and x1 > x0:
                z, eps = rnd.pad_parts(s, side, y1 - y0, x1 - x0)
                out[n, :, y0:y1, x0:x1] = z + sigma * eps
    return out, (t, l)
