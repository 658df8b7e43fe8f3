"""Nested Diffusion inside ComfyUI: the SAMPLER function, the prompt-switch guider, and the
per-outer-step report (progress, one preview per outer step, intermediates, time budget)."""
from __future__ import annotations

import logging
import time

import torch

import comfy.samplers
import comfy.utils

from ..samplers import nested
from . import anytime_live, compat, sampling

OFFICIAL_DPM = "official_dpm_2s_grid"
#: the nodes' inner sampler: deterministic Euler gave the best first and final picture on the demo model
DEFAULT_INNER_SAMPLER = "euler"
OUTER_INDEX_KEY = "nested_outer_index"


def inner_sampler_names():
    """ComfyUI's own sampler list, read when the schema is built, plus the official DPM inner."""
    return list(comfy.samplers.SAMPLER_NAMES) + [OFFICIAL_DPM]


def inner_scheduler_names():
    return list(nested.INNER_SCHEDULES) + [s for s in comfy.samplers.SCHEDULER_NAMES
                                           if s not in nested.INNER_SCHEDULES]


def outer_scheduler_names():
    return ["official_outer"] + list(comfy.samplers.SCHEDULER_NAMES)


def inner_schedule(name: str):
    """A built-in inner schedule name, or a callable re-targeting any ComfyUI scheduler."""
    if name in nested.INNER_SCHEDULES:
        return name
    handler = comfy.samplers.SCHEDULER_HANDLERS[name]

    def schedule(ms, s_start, k):
        if not handler.use_ms:     # (n, sigma_min, sigma_max) schedulers can start at s_start directly
            return handler.handler(n=k, sigma_min=min(float(ms.sigma_min), s_start * 0.5), sigma_max=s_start)
        return nested.retarget_sigmas(ms, comfy.samplers.calculate_sigmas(ms, name, k), s_start)

    return schedule


def sample_nested_comfy(model, x, sigmas, extra_args=None, callback=None, disable=None, *,
                        inner_sampler=DEFAULT_INNER_SAMPLER, inner_steps=8, inner_scheduler="official",
                        inner_eta=0.85, outer_eta=1.0, inner_end="zero", on_model_call=None, should_stop=None,
                        sample_ids=None, live=None, resume=None, state=None):
    """The k-diffusion function behind the SAMPLER: resolves ComfyUI pieces, then runs sample_nested.

    ``live``: the run's :class:`anytime_live.LiveRun` when the caller keeps one (NestedKSampler);
    else one is made here, so NestedSampler graphs get the strip and Stop & keep too.  ``resume``:
    ``{"step", "x"}`` of an earlier run (the outer state, model space) to continue from; ``state``:
    a dict that receives the same after every outer step."""
    sampling.check_sampler_input(x, extra_args, model)
    patcher = model.inner_model.model_patcher
    ms = patcher.get_model_object("model_sampling")
    start = 0 if resume is None else int(resume["step"])
    if start >= len(sigmas) - 1:                      # resuming a finished run: nothing is left to do
        return resume["x"].to(device=x.device, dtype=x.dtype)
    if inner_sampler == OFFICIAL_DPM:
        fn, opts, discard = nested.sample_dpm_2s_grid, {}, False
    else:
        fn, opts, discard = sampling.sampler_function_by_name(inner_sampler, eta=inner_eta)
    stochastic = "eta" in opts or "ancestral" in inner_sampler or "sde" in inner_sampler
    if not stochastic and outer_eta == 0 and len(sigmas) > 3:
        logging.warning(f"NestedSampler: the inner sampler {inner_sampler!r} is deterministic and outer_eta is 0; "
                        "on some models the result drifts over many outer steps (the outer state over-disperses). "
                        "Use outer_eta > 0 or an ancestral inner sampler.")
    # SDE solvers keep their own Brownian-tree noise (seeded per inner process); the others get
    # per-sample streams, so a sample alone equals the same sample in a batch.
    own_noise = (lambda i, x_i: None) if "sde" in inner_sampler else None
    proxy = sampling.ModelProxy(model, on_model_call)
    own_live = live is None
    live = anytime_live.LiveRun(patcher, len(sigmas) - 1, start) if own_live else live
    state = {"step": start} if state is None else state

    def step_done(d):
        if callback is not None:
            callback(d)
        if own_live:
            live.step(d["i"], d["denoised"], proxy.nfe)

    def stop(i):
        return live.should_stop(i) or (should_stop is not None and should_stop(i))

    x_start = x if resume is None else resume["x"].to(x.device)
    try:
        out = nested.sample_nested(proxy, x_start, sigmas, extra_args=extra_args, callback=step_done,
                                   disable=disable, model_sampling=ms, inner_sampler=fn, inner_options=opts,
                                   inner_steps=inner_steps, inner_scheduler=inner_schedule(inner_scheduler),
                                   inner_eta=inner_eta, outer_eta=outer_eta, inner_end=inner_end,
                                   discard_penultimate=discard, rf=sampling.is_rectified_flow(ms),
                                   should_stop=stop, outer_index_key=OUTER_INDEX_KEY,
                                   inner_noise_sampler_factory=own_noise, sample_ids=sample_ids,
                                   start_step=start, state=state)
    finally:
        if own_live:
            live.close(state.get("step", start), state.get("step", start) < len(sigmas) - 1)
    return out.to(x.dtype)


def make_nested_sampler(**options):
    return comfy.samplers.KSAMPLER(sample_nested_comfy, extra_options=options)


class NestedGuider(comfy.samplers.CFGGuider):
    """CFG guider that switches to a second prompt pair from a given outer step on.

    The Nested sampler tags every model call of outer step i with
    ``model_options["nested_outer_index"] = i``; keying the switch on the outer index (not on
    sigma) means inner processes never see a mix of prompts, and outer steps before the switch
    are computed exactly as without it.
    """

    switch_at = 0

    def set_switch(self, positive_2, negative_2, switch_at: int):
        """Add the second prompt pair (converted like the first) and the outer step it starts at."""
        self.switch_at = switch_at
        self.inner_set_conds({"positive_2": positive_2, "negative_2": negative_2})

    def predict_noise(self, x, timestep, model_options={}, seed=None):
        i = model_options.get(OUTER_INDEX_KEY)
        if self.switch_at and i is not None and i >= self.switch_at and "positive_2" in self.conds:
            pos, neg = self.conds.get("positive_2"), self.conds.get("negative_2")
        else:
            pos, neg = self.conds.get("positive"), self.conds.get("negative")
        return comfy.samplers.sampling_function(self.inner_model, x, timestep, neg, pos, self.cfg,
                                                model_options=model_options, seed=seed)


class AnytimeReport:
    """Progress, previews, the anytime strip and intermediates of one NestedKSampler run.

    The progress bar counts model evaluations; after every outer step the estimate is kept (the
    ``intermediates`` output), previewed on the node and sent to the strip; ``should_stop`` ends the
    run after the outer step in which the time budget (seconds, 0 = off) ran out.  ``state`` is
    what a resume needs (filled by the sampler).
    """

    def __init__(self, model, node_id, total: int, time_budget: float, started: float, outer_total: int,
                 start_step: int = 0):
        self.pbar = comfy.utils.ProgressBar(total, node_id=node_id)
        self.previewer = sampling.Previewer(model)
        self.nfe, self.total = 0, total
        self.budget, self.started = time_budget, started
        self.estimates = []
        self.live = anytime_live.LiveRun(model, outer_total, start_step)
        self.state = {"step": start_step}
        self.outer_total = outer_total

    def on_model_call(self, nfe: int):
        self.nfe = nfe
        self.total = max(self.total, nfe)
        self.pbar.update_absolute(nfe, self.total)

    def callback(self, step, x0, x, total_steps):
        self.estimates.append(compat.image_part(x0).detach().to(torch.float32).cpu())
        preview = self.previewer.image(x0)
        self.pbar.update_absolute(self.nfe, self.total, preview)
        self.live.step(step, x0, self.nfe, preview)

    def should_stop(self, i: int) -> bool:
        return self.budget > 0 and time.monotonic() - self.started >= self.budget

    def close(self):
        step = int(self.state.get("step", 0))
        self.live.close(step, step < self.outer_total)

    def intermediates(self, model, out: dict) -> dict:
        """The estimates of the outer steps run here (a resumed finished run: its final latent)."""
        if not self.estimates:
            return {"samples": out["samples"]}
        return {"samples": sampling.process_out(model, torch.cat(self.estimates, dim=0))}
