"""Small shared pieces for the pure-torch samplers (no ComfyUI imports).

Everything here follows k-diffusion / ComfyUI conventions:

* a *denoiser* ``model(x, sigma_batch, **extra_args)`` returns the x0 prediction D(x, sigma);
* ``x`` is in VE / k-diffusion space: ``x = x0 + sigma * eps`` (EPS models) or
  ``x = (1 - sigma) * x0 + sigma * eps`` (rectified flow, "CONST" models);
* sigma lists are descending and usually end in 0.

``DiscreteSchedule`` mirrors ComfyUI's ``ModelSamplingDiscrete`` (same ``sigma``/``timestep``
/``sigma_min``/``sigma_max``/``percent_to_sigma`` interface), so the samplers can be driven by
ComfyUI's own ``model_sampling`` object in the nodes and by this class in tests and demos.
"""
from __future__ import annotations

import hashlib
import math
from typing import Callable, List, Optional, Sequence

import torch

__all__ = [
    "DiscreteSchedule",
    "FlowSchedule",
    "get_ancestral_step",
    "make_noise_sampler",
    "stream_seed",
    "keyed_generator",
    "to_d",
    "sample_euler",
    "sample_euler_ancestral",
    "karras_sigmas",
    "exponential_sigmas",
    "append_zero",
    "batch_sigma",
    "check_sigmas",
    "check_x",
    "check_callable",
    "CheckedDenoiser",
]


def append_zero(x: torch.Tensor) -> torch.Tensor:
    return torch.cat([x, x.new_zeros([1])])


def batch_sigma(x: torch.Tensor, sigma) -> torch.Tensor:
    """``sigma * x.new_ones([B])`` as every k-diffusion sampler passes it to the model."""
    return x.new_ones([x.shape[0]]) * sigma


class DiscreteSchedule(torch.nn.Module):
    """Discrete VP schedule (SD1.x/SDXL "scaled_linear"), in sigma terms.

    Same maths as ComfyUI's ``ModelSamplingDiscrete``: ``sigma(t)`` interpolates log-sigma
    between integer timesteps, ``timestep(sigma)`` is the nearest integer index.
    """

    def __init__(self, beta_start: float = 0.00085, beta_end: float = 0.012,
                 timesteps: int = 1000, dtype=torch.float64):
        super().__init__()
        betas = torch.linspace(beta_start ** 0.5, beta_end ** 0.5, timesteps, dtype=torch.float64) ** 2
        alphas_cumprod = torch.cumprod(1.0 - betas, dim=0)
        sigmas = ((1 - alphas_cumprod) / alphas_cumprod) ** 0.5
        self.register_buffer("alphas_cumprod", alphas_cumprod.to(dtype))
        self.register_buffer("sigmas", sigmas.to(dtype))
        self.register_buffer("log_sigmas", sigmas.log().to(dtype))
        self.rf = False

    @property
    def sigma_min(self) -> torch.Tensor:
        return self.sigmas[0]

    @property
    def sigma_max(self) -> torch.Tensor:
        return self.sigmas[-1]

    def timestep(self, sigma) -> torch.Tensor:
        sigma = torch.as_tensor(sigma, dtype=self.log_sigmas.dtype)
        dists = sigma.log() - self.log_sigmas.reshape([-1] + [1] * sigma.dim())
        return dists.abs().argmin(dim=0).view(sigma.shape)

    def sigma(self, timestep) -> torch.Tensor:
        t = torch.as_tensor(timestep, dtype=self.log_sigmas.dtype).clamp(0, len(self.sigmas) - 1)
        low_idx = t.floor().long()
        high_idx = t.ceil().long()
        w = t.frac()
        log_sigma = (1 - w) * self.log_sigmas[low_idx] + w * self.log_sigmas[high_idx]
        return log_sigma.exp()

    def percent_to_sigma(self, percent: float) -> float:
        if percent <= 0.0:
            return 999999999.9
        if percent >= 1.0:
            return 0.0
        return float(self.sigma(torch.tensor((1.0 - percent) * 999.0)))


class FlowSchedule(torch.nn.Module):
    """Rectified-flow ("CONST") schedule as ComfyUI's ``ModelSamplingDiscreteFlow``."""

    def __init__(self, shift: float = 1.0, multiplier: float = 1000.0, timesteps: int = 1000):
        super().__init__()
        self.shift = shift
        self.multiplier = multiplier
        ts = self.sigma(torch.arange(1, timesteps + 1, 1, dtype=torch.float64) / timesteps * multiplier)
        self.register_buffer("sigmas", ts)
        self.rf = True

    @property
    def sigma_min(self) -> torch.Tensor:
        return self.sigmas[0]

    @property
    def sigma_max(self) -> torch.Tensor:
        return self.sigmas[-1]

    def timestep(self, sigma) -> torch.Tensor:
        return torch.as_tensor(sigma, dtype=torch.float64) * self.multiplier

    def sigma(self, timestep) -> torch.Tensor:
        t = torch.as_tensor(timestep, dtype=torch.float64) / self.multiplier
        if self.shift == 1.0:
            return t
        return self.shift * t / (1 + (self.shift - 1) * t)

    def percent_to_sigma(self, percent: float) -> float:
        if percent <= 0.0:
            return 1.0
        if percent >= 1.0:
            return 0.0
        return float(self.sigma(torch.tensor(1.0 - percent) * self.multiplier))


def check_sigmas(sigmas) -> List[float]:
    """Validate a sampler's SIGMAS (1-D, >= 2 values, finite, > 0 but the last, strictly decreasing);
    returns them as Python floats.  Raises ValueError naming the problem."""
    if not isinstance(sigmas, torch.Tensor):
        sigmas = torch.as_tensor(sigmas)
    if sigmas.dim() != 1 or sigmas.numel() < 2:
        raise ValueError(f"sigmas must be a 1-D tensor with at least 2 values; got shape {tuple(sigmas.shape)}")
    sig = [float(v) for v in sigmas.detach().cpu().to(torch.float64)]
    if not all(math.isfinite(v) for v in sig) or any(v < 0 for v in sig) or any(v == 0 for v in sig[:-1]):
        raise ValueError("sigmas must be finite and > 0 (only the last value may be 0)")
    if any(b >= a for a, b in zip(sig, sig[1:])):
        raise ValueError("sigmas must be strictly decreasing")
    return sig


def get_ancestral_step(sigma_from, sigma_to, eta: float = 1.0):
    """(sigma_down, sigma_up) of an ancestral step; eta=0 gives (sigma_to, 0). Same as k-diffusion."""
    if not eta:
        return sigma_to, 0.0
    sigma_up = min(float(sigma_to), eta * (float(sigma_to) ** 2 * (float(sigma_from) ** 2 - float(sigma_to) ** 2)
                                           / float(sigma_from) ** 2) ** 0.5)
    sigma_down = (float(sigma_to) ** 2 - sigma_up ** 2) ** 0.5
    return sigma_down, sigma_up


def stream_seed(seed: int, purpose: str, *index) -> int:
    """The 63-bit seed of the random stream ``(seed, purpose, *index)``.

    The tuple is mixed by a 64-bit hash, never by adding offsets: neighbouring seeds, purposes and
    indices give unrelated streams (with ``seed + i`` stream i of seed s+1 would be stream i+1 of s).
    """
    key = repr((int(seed), str(purpose)) + tuple(i if isinstance(i, str) else int(i) for i in index)).encode()
    return int.from_bytes(hashlib.blake2b(key, digest_size=8).digest(), "little") & ((1 << 63) - 1)


def keyed_generator(seed: int, purpose: str, *index) -> torch.Generator:
    """A CPU generator for the stream ``(seed, purpose, *index)`` (results do not depend on the device)."""
    return torch.Generator(device="cpu").manual_seed(stream_seed(seed, purpose, *index))


def make_noise_sampler(x: torch.Tensor, seed: Optional[int], purpose: str = "noise",
                       sample_ids: Optional[Sequence[int]] = None) -> Callable:
    """A noise sampler ``f(sigma, sigma_next) -> N(0, I)`` shaped like ``x``.

    Sample b draws from its own stream ``(seed, purpose, sample_ids[b])`` (default ids 0..B-1), so a
    sample run alone with its id gets the same noise as inside a batch.  ``seed=None`` falls back to
    the global RNG.
    """
    if seed is None:
        return lambda sigma=None, sigma_next=None: torch.randn_like(x)
    if x.dim() == 0:
        raise ValueError("x must have a batch dimension [B, ...] (got a 0-D tensor)")
    ids = range(x.shape[0]) if sample_ids is None else sample_ids
    gens = [keyed_generator(seed, purpose, b) for b in ids]

    def sampler(sigma=None, sigma_next=None):
        z = torch.stack([torch.randn(x.shape[1:], generator=g, dtype=torch.float32) for g in gens])
        return z.to(device=x.device, dtype=x.dtype)

    return sampler


def check_x(x, name: str = "x") -> None:
    """A sampler's state: a finite float tensor with a batch dimension."""
    if not isinstance(x, torch.Tensor):
        raise ValueError(f"{name} must be a torch.Tensor [B, ...] (got {type(x).__name__})")
    if x.dim() == 0 or x.shape[0] == 0 or x.numel() == 0:
        raise ValueError(f"{name} must be a tensor with a non-empty batch dimension [B, ...] (got shape {tuple(x.shape)})")
    if not x.is_floating_point():
        raise ValueError(f"{name} must be a floating-point tensor (got {x.dtype})")
    if not torch.isfinite(x).all():
        raise ValueError(f"{name} contains NaN or infinite values")


def check_callable(name: str, fn, what: str) -> None:
    if not callable(fn) or isinstance(fn, (str, bytes)):
        raise ValueError(f"{name} must be {what} (got {fn!r})")


class CheckedDenoiser:
    """Wraps a denoiser ``model(x, sigma, **extra_args)`` and checks every output: a tensor shaped
    like ``x`` (no silent broadcasting of a wrong shape).  Attributes are forwarded."""

    def __init__(self, model):
        self._model = model

    def __call__(self, x, sigma, **extra_args):
        out = self._model(x, sigma, **extra_args)
        if not isinstance(out, torch.Tensor) or out.shape != x.shape:
            got = tuple(out.shape) if isinstance(out, torch.Tensor) else type(out).__name__
            raise ValueError(f"model returned {got} for an input of shape {tuple(x.shape)}; a denoiser must "
                             "return the x0 prediction shaped like x")
        return out

    def __getattr__(self, name):
        return getattr(self._model, name)


def to_d(x, sigma, denoised):
    return (x - denoised) / sigma


@torch.no_grad()
def sample_euler(model, x, sigmas, extra_args=None, callback=None, disable=None):
    """Plain Euler (= DDIM eta 0 in sigma space); one model call per step."""
    extra_args = {} if extra_args is None else extra_args
    for i in range(len(sigmas) - 1):
        denoised = model(x, batch_sigma(x, sigmas[i]), **extra_args)
        if callback is not None:
            callback({"x": x, "i": i, "sigma": sigmas[i], "sigma_hat": sigmas[i], "denoised": denoised})
        if sigmas[i + 1] == 0:
            x = denoised
        else:
            x = x + to_d(x, sigmas[i], denoised) * (sigmas[i + 1] - sigmas[i])
    return x


@torch.no_grad()
def sample_euler_ancestral(model, x, sigmas, extra_args=None, callback=None, disable=None,
                           eta: float = 1.0, s_noise: float = 1.0, noise_sampler=None, rf: bool = False):
    """Ancestral Euler (= DDIM with eta in sigma space). ``rf=True`` uses the rectified-flow form."""
    extra_args = {} if extra_args is None else extra_args
    if noise_sampler is None:
        noise_sampler = make_noise_sampler(x, extra_args.get("seed"))
    for i in range(len(sigmas) - 1):
        denoised = model(x, batch_sigma(x, sigmas[i]), **extra_args)
        if callback is not None:
            callback({"x": x, "i": i, "sigma": sigmas[i], "sigma_hat": sigmas[i], "denoised": denoised})
        x = ancestral_update(x, denoised, sigmas[i], sigmas[i + 1], eta, s_noise, noise_sampler, rf=rf)
    return x


def ancestral_update(x, denoised, sigma, sigma_next, eta, s_noise, noise_sampler, rf: bool = False):
    """One ancestral step from ``sigma`` to ``sigma_next`` given the x0 estimate ``denoised``.

    EPS form: x' = d + sigma_down*(x-d)/sigma + sigma_up*z  (exactly DDIM(eta)).
    RF form: ComfyUI's ``sample_euler_ancestral_RF`` update.  With eta = 0 both reduce to the
    deterministic DDIM re-projection x' = d + (sigma_next/sigma)*(x - d).
    """
    if float(sigma_next) == 0.0:
        return denoised
    if not rf:
        sigma_down, sigma_up = get_ancestral_step(sigma, sigma_next, eta)
        x = denoised + (x - denoised) * (sigma_down / sigma)
        if sigma_up > 0:
            x = x + noise_sampler(sigma, sigma_next) * (s_noise * sigma_up)
        return x
    downstep_ratio = 1 + (sigma_next / sigma - 1) * eta
    sigma_down = sigma_next * downstep_ratio
    alpha_ip1 = 1 - sigma_next
    alpha_down = 1 - sigma_down
    renoise = (sigma_next ** 2 - sigma_down ** 2 * alpha_ip1 ** 2 / alpha_down ** 2) ** 0.5
    ratio = sigma_down / sigma
    x = ratio * x + (1 - ratio) * denoised
    if eta > 0:
        x = (alpha_ip1 / alpha_down) * x + noise_sampler(sigma, sigma_next) * (s_noise * renoise)
    return x


def karras_sigmas(n: int, sigma_min: float, sigma_max: float, rho: float = 7.0, dtype=torch.float64):
    ramp = torch.linspace(0, 1, n, dtype=dtype)
    min_inv_rho = sigma_min ** (1 / rho)
    max_inv_rho = sigma_max ** (1 / rho)
    sigmas = (max_inv_rho + ramp * (min_inv_rho - max_inv_rho)) ** rho
    return append_zero(sigmas)


def exponential_sigmas(n: int, sigma_min: float, sigma_max: float, dtype=torch.float64):
    sigmas = torch.linspace(math.log(sigma_max), math.log(sigma_min), n, dtype=dtype).exp()
    return append_zero(sigmas)
