"""Nested Diffusion (Elata, Kawar, Michaeli, Elad — WACV 2024) as a k-diffusion sampler.

Anytime generation: the SIGMAS given to :func:`sample_nested` are the *outer* schedule.  At every
outer step i a complete, short *inner* diffusion runs from the current outer state (x, sigma_i)
down to sigma = 0; its result x̂0 is a viable image (the anytime preview) and is re-projected to
sigma_{i+1} with a DDIM(eta_out) step::

    for i in range(N):
        y   = inner(model, x, build_inner_sigmas(ms, sigma_i, K))    # inner diffusion, own noise
        x̂0  = y / sqrt(1 + sigma_end**2)                              # = y unless parity mode
        x   = x̂0 + sigma_down * (x - x̂0) / sigma_i + sigma_up * z    # outer DDIM(eta_out)

Pure torch: nothing here imports ComfyUI.  The inner solver is any k-diffusion-style callable; the schedule object ``ms`` only needs ComfyUI's
``model_sampling`` interface (``sigma(t)``, ``timestep(sigma)``, ``sigma_min``, ``sigma_max``).
"""
from __future__ import annotations

import inspect
import math
from typing import Callable, List, Optional, Union

import torch

from .checks import check_choice, check_float, check_int
from .common import (ancestral_update, batch_sigma, check_sigmas, exponential_sigmas, karras_sigmas,
                     make_noise_sampler, sample_euler_ancestral, stream_seed, CheckedDenoiser, check_callable,
                     check_x)

__all__ = [
    "INNER_SCHEDULES",
    "sample_nested",
    "build_inner_sigmas",
    "retarget_sigmas",
    "official_outer_sigmas",
    "continuous_timesteps",
    "sample_dpm_2s_grid",
    "validate_nested_options",
]

#: inner schedules built here; any other name is a ComfyUI scheduler re-targeted by the caller.
INNER_SCHEDULES = ("official", "official_dpm", "normal", "karras", "exponential")

#: purposes of the random streams (seed, purpose, index...): inner process i, and the outer steps.
INNER_STREAM, OUTER_STREAM = "nested-inner", "nested-outer"


# --------------------------------------------------------------------------------------------
# schedules
# --------------------------------------------------------------------------------------------
def _ms_sigma(ms, t: float) -> float:
    return float(ms.sigma(torch.tensor(float(t), dtype=torch.float64)))


def _ms_timestep(ms, sigma: float) -> float:
    """The (continuous) timestep t with ``ms.sigma(t) == sigma``.

    For discrete VP schedules this is ``ms.timestep(sigma)`` (the nearest integer index, as the
    official code rounds anyway).  For shifted flow schedules ComfyUI's ``timestep(sigma)`` is the
    model's input scale (sigma * multiplier), not the inverse of ``sigma(t)``; there the inverse is
    found by bisection on the monotone ``sigma(t)``.
    """
    t = float(ms.timestep(torch.tensor(float(sigma), dtype=torch.float64)))
    if sigma <= 0 or abs(_ms_sigma(ms, t) - sigma) <= 1e-3 * sigma + 1e-6 or getattr(ms, "log_sigmas", None) is not None:
        return t
    lo, hi = 0.0, max(t, float(ms.timestep(torch.tensor(float(ms.sigma_max), dtype=torch.float64))))
    while _ms_sigma(ms, hi) < sigma and hi < 1e7:
        hi *= 2
    for _ in range(80):
        mid = 0.5 * (lo + hi)
        if _ms_sigma(ms, mid) < sigma:
            lo = mid
        else:
            hi = mid
    return 0.5 * (lo + hi)


def continuous_timesteps(ms) -> bool:
    """True for schedules whose timesteps are not ~1000 discrete steps (e.g. Flux, t in [0, 1]),
    where the official integer-timestep grids degenerate."""
    try:
        return float(ms.timestep(torch.tensor(float(ms.sigma_max)))) < 100
    except Exception:
        return True


def official_outer_sigmas(ms, n: int, timesteps: int = 1000) -> torch.Tensor:
    """The official outer grid: sigma(t_k), t_k = round(1 + 998 (N-k)/N) for k < N, then 0.

    The official code's unused final target t = 1 is replaced by 0; at most 998 steps (more would
    repeat timesteps).  On continuous-time schedules the same fractions of the schedule are used
    (``percent_to_sigma``).
    """
    if continuous_timesteps(ms):
        check_int("steps", n, 1)
        ts = torch.linspace(1.0, 0.0, n + 1, dtype=torch.float64)
        return torch.tensor([float(ms.percent_to_sigma(1.0 - float(t))) if t < 1 else float(ms.sigma_max)
                             for t in ts[:-1]] + [0.0], dtype=torch.float64)
    last = timesteps - 1
    check_int("steps", n, 1, last - 1)      # above, rounding repeats timesteps (999 distinct ones)
    ts = [round(1 + (last - 1) * (n - k) / n) for k in range(n)]
    return torch.tensor([_ms_sigma(ms, t) for t in ts] + [0.0], dtype=torch.float64)


def retarget_sigmas(ms, full: torch.Tensor, s_start: float) -> torch.Tensor:
    """Re-target a full schedule (sigma_max ... 0) so that it starts exactly at ``s_start``.

    The timestep pattern of ``full`` is rescaled so its first timestep lands on timestep(s_start)
    (a linear rescaling in timestep space).  Works for any full schedule, e.g. a ComfyUI scheduler's output.
    """
    full = torch.as_tensor(full, dtype=torch.float64)
    body = full[:-1] if float(full[-1]) == 0.0 else full
    t0 = _ms_timestep(ms, s_start)
    tf = [_ms_timestep(ms, float(v)) for v in body]
    if tf[0] <= 0:
        sig = [float(s_start)]
    else:
        sig = [_ms_sigma(ms, t * t0 / tf[0]) for t in tf]
    sig[0] = float(s_start)
    sig = [v for j, v in enumerate(sig) if j == 0 or v < sig[j - 1]]   # keep it strictly descending
    return torch.tensor(sig + [0.0], dtype=torch.float64)


def build_inner_sigmas(ms, s_start: float, steps: int, kind: Union[str, Callable] = "official",
                       end: str = "zero", discard_penultimate: bool = False,
                       sigma_min: Optional[float] = None) -> torch.Tensor:
    """Inner sigma list for an inner process starting at ``s_start``.

    ``kind``: one of :data:`INNER_SCHEDULES`, or a callable ``f(ms, s_start, steps) -> sigmas``
    (the ComfyUI layer passes one that re-targets any ComfyUI scheduler).  The first sigma equals
    ``s_start`` exactly.  ``end="zero"`` runs the inner process to sigma = 0 (clean x0);
    ``end="sigma_min"`` stops at the model's sigma(t=0) as the official code does (parity mode).
    ``discard_penultimate`` mirrors ComfyUI's handling of dpm_2/uni_pc-style samplers.  ``sigma_min``
    (karras / exponential without a schedule object ``ms``): the smallest sigma to reach.
    """
    s_start = float(s_start)
    k = int(steps) + (1 if discard_penultimate else 0)
    tail = _ms_sigma(ms, 0) if end == "sigma_min" else 0.0
    # Each branch lists sigmas from s_start down to its tail; _finalize pins the first to s_start
    # exactly, keeps the list strictly decreasing above `tail` and appends `tail`.
    if callable(kind):
        sig = torch.as_tensor(kind(ms, s_start, k), dtype=torch.float64)
    elif kind in ("official", "official_dpm") and continuous_timesteps(ms):
        return build_inner_sigmas(ms, s_start, steps, "normal", end, discard_penultimate)
    elif kind in ("official", "official_dpm"):
        T = int(round(_ms_timestep(ms, s_start)))
        n = max(1, min(k, T))
        if kind == "official":        # NestedScheduler: round(linspace(1, T, n)), reversed
            grid = torch.linspace(1, max(T, 1), n, dtype=torch.float64)
        else:                         # DPM: round(linspace(0, T, n + 1)) without the 0, reversed
            grid = torch.linspace(0, max(T, 1), n + 1, dtype=torch.float64)[1:]
        sig = torch.tensor([_ms_sigma(ms, round(float(t))) for t in grid.flip(0)] + [tail], dtype=torch.float64)
    elif kind == "normal":
        t0 = _ms_timestep(ms, s_start)
        if _ms_sigma(ms, 0) > 0:      # discrete VP-like: K points down to t=0 (sigma_min), then 0, as ComfyUI
            ts = torch.linspace(t0, 0, k, dtype=torch.float64) if k > 1 else torch.tensor([t0], dtype=torch.float64)
        else:                         # flow: sigma(t=0) is already 0, so stop one point earlier
            ts = torch.linspace(t0, 0, k + 1, dtype=torch.float64)[:-1]
        sig = torch.tensor([_ms_sigma(ms, float(t)) for t in ts] + [0.0], dtype=torch.float64)
    elif kind in ("karras", "exponential"):
        smin = min(float(ms.sigma_min) if ms is not None else float(sigma_min or s_start * 0.5), s_start * 0.5)
        fn = karras_sigmas if kind == "karras" else exponential_sigmas
        sig = fn(k, smin, s_start) if k > 1 else torch.tensor([s_start, 0.0], dtype=torch.float64)
    else:
        raise ValueError(f"inner_scheduler must be one of {INNER_SCHEDULES} or a callable (got {kind!r})")
    if discard_penultimate and len(sig) > 2:
        sig = torch.cat([sig[:-2], sig[-1:]])
    return _finalize(sig, s_start, tail)


def _finalize(sig: torch.Tensor, s_start: float, tail: float) -> torch.Tensor:
    """Start exactly at ``s_start``, stay strictly decreasing and above ``tail``, end at ``tail``."""
    body = [s_start]
    for v in sig[1:].tolist():
        if tail < v < body[-1]:
            body.append(v)
    if body[-1] <= tail:          # s_start at or below the parity tail: a single step to 0
        tail = 0.0
    return torch.tensor(body + [tail], dtype=torch.float64)


# --------------------------------------------------------------------------------------------
# the official DPM-Solver++(2S) "grid" inner solver
# --------------------------------------------------------------------------------------------
@torch.no_grad()
def sample_dpm_2s_grid(model, x, sigmas, extra_args=None, callback=None, disable=None):
    """DPM-Solver++ singlestep order 2 with the *grid point* as midpoint, as the official DPM inner.

    Steps come in pairs a -> b -> c over the grid: a first-order (DDIM eta 0) step a -> b, then a
    second-order update from x_a to c using D(x_a) and D(x_b).  An odd last step is first order.
    Deterministic; 1 model call per grid step.
    """
    extra_args = {} if extra_args is None else extra_args
    n = len(sigmas) - 1
    i = 0
    while i < n:
        sa, sb = sigmas[i], sigmas[i + 1]
        d0 = model(x, batch_sigma(x, sa), **extra_args)
        if callback is not None:
            callback({"x": x, "i": i, "sigma": sa, "sigma_hat": sa, "denoised": d0})
        if i + 1 == n or float(sb) == 0.0:           # odd tail: first order
            x = d0 if float(sb) == 0.0 else d0 + (sb / sa) * (x - d0)
            i += 1
            continue
        sc = sigmas[i + 2]
        xb = d0 + (sb / sa) * (x - d0)
        d1 = model(xb, batch_sigma(xb, sb), **extra_args)
        if callback is not None:
            callback({"x": xb, "i": i + 1, "sigma": sb, "sigma_hat": sb, "denoised": d1})
        if float(sc) == 0.0:
            x = d1
        else:
            r0 = math.log(float(sa) / float(sb)) / math.log(float(sa) / float(sc))
            x = (sc / sa) * x + (1 - sc / sa) * (d0 + (d1 - d0) / (2 * r0))
        i += 2
    return x


# --------------------------------------------------------------------------------------------
# validation (called before any model work)
# --------------------------------------------------------------------------------------------
def validate_nested_options(inner_steps: int = 8, inner_eta: float = 0.85, outer_eta: float = 1.0,
                            inner_s_noise: float = 1.0, outer_s_noise: float = 1.0,
                            inner_end: str = "zero", inner_schedule="official") -> None:
    """Check the options of :func:`sample_nested`; raises ValueError naming the option."""
    check_int("inner_steps", inner_steps, 1)
    for name, v in (("inner_eta", inner_eta), ("outer_eta", outer_eta),
                    ("inner_s_noise", inner_s_noise), ("outer_s_noise", outer_s_noise)):
        check_float(name, v, 0.0)
    check_choice("inner_end", inner_end, ("zero", "sigma_min"))
    if not callable(inner_schedule):
        check_choice("inner_scheduler", inner_schedule, INNER_SCHEDULES)


def inner_sampler_takes_noise(fn) -> bool:
    """True when an inner sampler (None = the default ancestral Euler) accepts ``noise_sampler``."""
    if fn is None:
        return True
    try:
        return "noise_sampler" in inspect.signature(fn).parameters
    except (TypeError, ValueError):
        return False


# --------------------------------------------------------------------------------------------
# the sampler
# --------------------------------------------------------------------------------------------
@torch.no_grad()
def sample_nested(model, x, sigmas, extra_args=None, callback=None, disable=None, *,
                  model_sampling=None,
                  inner_sampler: Optional[Callable] = None,
                  inner_options: Optional[dict] = None,
                  inner_steps: int = 8,
                  inner_scheduler: Union[str, Callable, None] = None,
                  inner_eta: float = 0.85,
                  inner_s_noise: float = 1.0,
                  outer_eta: float = 1.0,
                  outer_s_noise: float = 1.0,
                  inner_end: str = "zero",
                  discard_penultimate: bool = False,
                  rf: bool = False,
                  collect: Optional[List[torch.Tensor]] = None,
                  should_stop: Optional[Callable[[int], bool]] = None,
                  inner_noise_sampler_factory: Optional[Callable] = None,
                  outer_noise_sampler=None,
                  outer_index_key: Optional[str] = "nested_outer_index",
                  sample_ids: Optional[List[int]] = None,
                  start_step: int = 0,
                  state: Optional[dict] = None):
    """Nested Diffusion sampler (k-diffusion contract).

    Args:
        model: denoiser ``model(x, sigma_batch, **extra_args) -> x0`` (CFG already applied).
        x: the initial state, already noise-scaled to ``sigmas[0]``.
        sigmas: the OUTER schedule (descending; may end in 0 or not).
        model_sampling: schedule object with ComfyUI's ``model_sampling`` interface; required for
            the ``official``/``official_dpm``/``normal`` inner schedules and generic re-targeting.
        inner_sampler: k-diffusion function used for every inner process; default: ancestral Euler
            with ``inner_eta`` (= the official "DDIM eta 0.85" inner).  Called as
            ``inner_sampler(model, x, inner_sigmas, extra_args=..., callback=None, disable=True,
            **inner_options)``.
        inner_options: extra keyword options for ``inner_sampler`` (e.g. ``{"eta": 0.85}``).
        inner_steps, inner_scheduler, inner_end, discard_penultimate: see :func:`build_inner_sigmas`.
        inner_eta, inner_s_noise: used by the default inner sampler only.
        outer_eta, outer_s_noise: the outer DDIM re-projection's eta.  The official code uses 0
            (deterministic); the default 1 re-noises the outer state with fresh noise, which keeps
            the marginals right when the inner result is an approximate posterior sample and
            removes the drift of long deterministic runs (an approximate inner sampler
            over-disperses the outer state; toy world: final distance 0.10 vs 0.22 for eta 0,
            plain DDIM 0.13; first preview unchanged).
        rf: rectified-flow ("CONST") outer formula.
        collect: a list that receives the per-outer-step x0 estimates (the anytime previews).
        should_stop: ``f(i) -> bool`` asked after outer step i; True returns that step's estimate
            (anytime stop, e.g. a wall-clock budget).
        inner_noise_sampler_factory: ``f(i, x) -> noise_sampler`` for inner process i (tests inject
            noise); default: an inner sampler that takes ``noise_sampler`` gets per-sample streams
            ``(seed, "nested-inner", i, sample id)``; any inner sampler also sees
            ``extra_args["seed"]`` = the seed of stream ``(seed, "nested-inner", i)``.
        outer_noise_sampler: noise for the outer steps; default: outer step i draws from the
            per-sample streams ``(seed, "nested-outer-i", sample id)``, so no stream state is carried
            from step to step (what makes resuming exact).
        sample_ids: one id per sample keying its streams (default 0..B-1; ComfyUI passes the
            latent's ``batch_index``), so a sample run alone equals the same sample in a batch.
        outer_index_key: when ``extra_args`` has ``model_options`` (ComfyUI's model calls),
            ``model_options[key] = i`` is set for every model call of outer step i, so a guider can
            switch prompts at an outer step (not on sigma).
        start_step: resume: ``x`` is the outer state at ``sigmas[start_step]`` (a ``state["x"]`` of an
            earlier run) and the run continues with outer step ``start_step``.  Every random stream is
            keyed by the outer step, so a stopped-then-resumed run equals the uninterrupted one.
        state: a dict that receives, after every outer step i, ``step = i + 1`` and ``x`` = the outer
            state at ``sigmas[i + 1]`` (the final x0 after the last step): what a resume needs.

    Returns the last x0 estimate when ``sigmas`` ends in 0, else x after the last outer update.
    """
    extra_args = {} if extra_args is None else extra_args
    sigmas = torch.as_tensor(sigmas)
    inner_scheduler = _check_call(model, x, sigmas, model_sampling, inner_sampler, inner_scheduler, inner_steps,
                                  inner_eta, outer_eta, inner_s_noise, outer_s_noise, inner_end, sample_ids)
    check_int("start_step", start_step, 0, len(sigmas) - 2)
    in_dtype = x.dtype
    if x.dtype in (torch.float16, torch.bfloat16):
        x = x.float()                                   # half-precision noise arithmetic drifts: work in fp32
    seed = extra_args.get("seed")
    if inner_sampler is None:
        inner_sampler = sample_euler_ancestral
        inner_options = {"eta": inner_eta, "s_noise": inner_s_noise, "rf": rf, **(inner_options or {})}
    inner = _InnerProcesses(CheckedDenoiser(model), extra_args, model_sampling, inner_sampler, inner_options,
                            inner_steps, inner_scheduler, inner_end, discard_penultimate,
                            float(sigmas[sigmas > 0].min()), inner_noise_sampler_factory, sample_ids, outer_index_key)

    for i in range(start_step, len(sigmas) - 1):
        s, s_next = sigmas[i], sigmas[i + 1]
        x0 = inner.run(i, x, s)                         # a complete short diffusion from (x, σ_i): a viable image
        if collect is not None:
            collect.append(x0.to(in_dtype))
        if callback is not None:
            callback({"x": x, "i": i, "sigma": s, "sigma_hat": s, "denoised": x0})
        noise = outer_noise_sampler or make_noise_sampler(x, seed, f"{OUTER_STREAM}-{i}", sample_ids)
        x = ancestral_update(x, x0, s, s_next, outer_eta, outer_s_noise, noise, rf=rf)    # outer DDIM(eta) to σ_i+1
        if state is not None:
            state.update(step=i + 1, x=x)
        if float(s_next) == 0.0 or (should_stop is not None and should_stop(i)):
            return x0.to(in_dtype)                      # the anytime result of outer step i
    return x.to(in_dtype)


def _check_call(model, x, sigmas, model_sampling, inner_sampler, inner_scheduler, inner_steps, inner_eta, outer_eta,
                inner_s_noise, outer_s_noise, inner_end, sample_ids):
    """Every check of :func:`sample_nested` before any model call; returns the resolved inner scheduler."""
    check_callable("model", model, "a denoiser model(x, sigma, **extra_args) -> x0")
    check_x(x)
    check_sigmas(sigmas)
    if inner_scheduler is None:
        inner_scheduler = "official" if model_sampling is not None else "karras"
    validate_nested_options(inner_steps, inner_eta, outer_eta, inner_s_noise, outer_s_noise, inner_end,
                            inner_scheduler)
    if inner_sampler is not None:
        check_callable("inner_sampler", inner_sampler, "a k-diffusion sampler function "
                       "f(model, x, sigmas, extra_args, callback, disable, **options) (the nodes resolve names)")
    if model_sampling is None and (not callable(inner_scheduler)):
        if inner_scheduler in ("official", "official_dpm", "normal") or inner_end == "sigma_min":
            raise ValueError(f"inner_scheduler={inner_scheduler!r} needs model_sampling (a schedule object); "
                             "without one use 'karras' or 'exponential' (the default)")
    if sample_ids is not None and len(sample_ids) != x.shape[0]:
        raise ValueError(f"sample_ids must have one id per sample ({x.shape[0]}), got {len(sample_ids)}")
    return inner_scheduler


class _InnerProcesses:
    """Runs inner process i of an outer run: its sigmas (starting exactly at σ_i), its own noise
    stream, the outer-index tag for a prompt-switching guider, and the official parity division."""

    def __init__(self, model, extra_args, ms, sampler, options, steps, scheduler, end, discard_penultimate,
                 sigma_min, noise_factory, sample_ids, outer_index_key):
        self.model, self.extra_args, self.ms = model, extra_args, ms
        self.sampler, self.options = sampler, dict(options or {})
        self.steps, self.scheduler, self.end = steps, scheduler, end
        self.discard, self.sigma_min, self.key = discard_penultimate, sigma_min, outer_index_key
        self.seed = extra_args.get("seed")
        self.takes_noise = inner_sampler_takes_noise(sampler)
        if noise_factory is None and self.seed is not None and self.takes_noise:
            noise_factory = lambda i, x: make_noise_sampler(x, self.seed, f"{INNER_STREAM}-{i}", sample_ids)
        self.noise_factory = noise_factory

    def run(self, i: int, x: torch.Tensor, s: torch.Tensor) -> torch.Tensor:
        sig = build_inner_sigmas(self.ms, float(s), self.steps, self.scheduler, self.end, self.discard,
                                 sigma_min=self.sigma_min).to(device=s.device, dtype=s.dtype)
        sig[0] = s                                      # bit-exact start at the outer level
        ea = dict(self.extra_args)
        if self.seed is not None:
            ea["seed"] = stream_seed(self.seed, INNER_STREAM, i)    # for inner samplers that seed their own noise
        if self.key is not None and "model_options" in self.extra_args:     # ComfyUI's model calls
            ea["model_options"] = {**self.extra_args["model_options"], self.key: i}
        opts = dict(self.options)
        if self.noise_factory is not None and self.takes_noise:
            opts["noise_sampler"] = self.noise_factory(i, x)
        y = self.sampler(self.model, x.clone(), sig, extra_args=ea, callback=None, disable=True, **opts).to(x.dtype)
        tail = float(sig[-1])
        return y / math.sqrt(1.0 + tail ** 2) if tail > 0 else y    # official parity: VP sample at t=0 taken as x0
