"""Noise schedules: DDPM beta schedules, sigma schedules, and the named schedulers users pick.

Two kinds of schedule live here:

* **Training schedules** (``make_beta_schedule`` -> ``alphas_cumprod``): the discrete forward
  process of a DDPM model (Ho et al. 2020). ``sigma = sqrt((1 - alphas_cumprod) / alphas_cumprod)``
  turns it into the variance-exploding noise levels every sampler works in.
* **Sampling schedules**: a decreasing 1-D tensor of ``steps + 1`` sigmas ending in 0, built up
  front. The plain functions (``get_sigmas_karras`` ...) follow k-diffusion; the named
  schedulers (``compute_sigmas(name, model, steps)``) follow ComfyUI's ``calculate_sigmas``.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Protocol

import torch
from torch import Tensor

from .betainc import beta_ppf

__all__ = [
    "SigmaModel",
    "SCHEDULERS",
    "append_zero",
    "betas_to_alphas_cumprod",
    "compute_sigmas",
    "discrete_timesteps",
    "get_sigmas_exponential",
    "get_sigmas_karras",
    "get_sigmas_kl_optimal",
    "get_sigmas_polyexponential",
    "get_sigmas_vp",
    "make_alphas_cumprod",
    "make_beta_schedule",
    "rescale_zero_terminal_snr",
    "shift_flow_t",
]

# alphas_cumprod[-1] after zero-terminal-SNR rescaling is exactly 0 (infinite sigma). Like
# ComfyUI we replace it with a tiny positive value so the largest sigma stays finite (~4500).
ZERO_SNR_ALPHA_CUMPROD = 4.8973451890853435e-08


# --------------------------------------------------------------------------------------------
# Training (DDPM) schedules
# --------------------------------------------------------------------------------------------


def make_beta_schedule(
    schedule: str,
    num_timesteps: int = 1000,
    linear_start: float = 0.00085,
    linear_end: float = 0.012,
    cosine_s: float = 8e-3,
) -> Tensor:
    """Betas of a DDPM forward process, float64, shape (num_timesteps,).

    Names follow diffusers: ``linear`` (Ho et al. 2020: linspace of betas), ``scaled_linear``
    (Stable Diffusion; ldm calls it "linear": linspace of sqrt(beta), squared), ``cosine`` /
    ``squaredcos_cap_v2`` (Nichol & Dhariwal 2021, eq. 17, betas clipped at 0.999).
    """
    if num_timesteps < 1:
        raise ValueError(f"num_timesteps must be >= 1, got {num_timesteps}")
    if schedule == "linear":
        return torch.linspace(linear_start, linear_end, num_timesteps, dtype=torch.float64)
    if schedule == "scaled_linear":
        ramp = torch.linspace(
            linear_start**0.5, linear_end**0.5, num_timesteps, dtype=torch.float64
        )
        return ramp**2
    if schedule in ("cosine", "squaredcos_cap_v2"):
        t = torch.arange(num_timesteps + 1, dtype=torch.float64) / num_timesteps
        alpha_bar = torch.cos((t + cosine_s) / (1 + cosine_s) * math.pi / 2) ** 2
        betas = 1 - alpha_bar[1:] / alpha_bar[:-1]
        return betas.clamp(max=0.999)
    raise ValueError(
        f"unknown beta schedule {schedule!r}; valid: linear, scaled_linear, cosine, "
        "squaredcos_cap_v2"
    )


def betas_to_alphas_cumprod(betas: Tensor) -> Tensor:
    """``alphas_cumprod[t] = prod_{s<=t} (1 - beta_s)`` in float64."""
    return torch.cumprod(1 - betas.double(), dim=0)


def rescale_zero_terminal_snr(alphas_cumprod: Tensor) -> Tensor:
    """Lin et al. 2023 ("Common diffusion noise schedules are flawed"), Algorithm 1.

    Shifts and scales sqrt(alphas_cumprod) so the last step has exactly zero SNR and the first
    is unchanged. The terminal value is then set to ``ZERO_SNR_ALPHA_CUMPROD`` so that sigma
    stays finite for samplers (ComfyUI's convention), or to a quarter of the step before it when
    that is smaller (schedules such as DDPM's linear one reach below it a step early), so the
    last step stays the noisiest.
    """
    sqrt_ab = alphas_cumprod.double().sqrt()
    first, last = sqrt_ab[0].clone(), sqrt_ab[-1].clone()
    sqrt_ab = (sqrt_ab - last) * first / (first - last)
    out = sqrt_ab**2
    out[-1] = min(ZERO_SNR_ALPHA_CUMPROD, float(out[-2]) / 4)
    return out


def make_alphas_cumprod(
    schedule: str = "scaled_linear",
    num_timesteps: int = 1000,
    linear_start: float = 0.00085,
    linear_end: float = 0.012,
    zero_terminal_snr: bool = False,
) -> Tensor:
    """alphas_cumprod (float64) of a named beta schedule; SD 1.x/2.x/XL use the defaults."""
    betas = make_beta_schedule(schedule, num_timesteps, linear_start, linear_end)
    alphas_cumprod = betas_to_alphas_cumprod(betas)
    return rescale_zero_terminal_snr(alphas_cumprod) if zero_terminal_snr else alphas_cumprod


def discrete_timesteps(
    steps: int, num_timesteps: int = 1000, spacing: str = "leading", steps_offset: int = 0
) -> Tensor:
    """Integer timesteps (descending) a discrete scheduler visits, as diffusers spaces them.

    ``linspace``: rounded linspace(0, T-1); ``leading``: multiples of T//steps plus
    ``steps_offset`` (SD's scheduler config uses steps_offset=1); ``trailing``: counted back
    from T (Lin et al. 2023, Table 2). Turn them into sigmas with ``model.t_to_sigma``.
    """
    if steps < 1 or steps > num_timesteps:
        raise ValueError(f"steps must be in [1, {num_timesteps}], got {steps}")
    if spacing == "linspace":
        ts = torch.linspace(0, num_timesteps - 1, steps, dtype=torch.float64).round()
    elif spacing == "leading":
        ratio = num_timesteps // steps
        ts = torch.arange(steps, dtype=torch.float64) * ratio + steps_offset
    elif spacing == "trailing":
        ratio = num_timesteps / steps
        ts = torch.arange(num_timesteps, 0, -ratio, dtype=torch.float64).round().flip(0) - 1
    else:
        raise ValueError(
            f"unknown timestep spacing {spacing!r}; valid: leading, trailing, linspace"
        )
    return ts.flip(0).long().clamp(0, num_timesteps - 1)


# --------------------------------------------------------------------------------------------
# Sigma schedules as functions (k-diffusion)
# --------------------------------------------------------------------------------------------


def append_zero(x: Tensor) -> Tensor:
    """Append the final sigma = 0 (the clean sample)."""
    return torch.cat([x, x.new_zeros([1])])


def _check_range(n: int, sigma_min: float, sigma_max: float) -> None:
    if n < 1:
        raise ValueError(f"the number of steps must be >= 1, got {n}")
    if not (0 < sigma_min <= sigma_max) or not math.isfinite(sigma_max):
        raise ValueError(f"need 0 < sigma_min <= sigma_max < inf, got {sigma_min}, {sigma_max}")


def get_sigmas_karras(
    n: int, sigma_min: float, sigma_max: float, rho: float = 7.0, device: str = "cpu"
) -> Tensor:
    """Karras et al. 2022, eq. 5: interpolate linearly in sigma^(1/rho)."""
    _check_range(n, sigma_min, sigma_max)
    ramp = torch.linspace(0, 1, n)
    min_inv_rho, max_inv_rho = sigma_min ** (1 / rho), sigma_max ** (1 / rho)
    sigmas = (max_inv_rho + ramp * (min_inv_rho - max_inv_rho)) ** rho
    return append_zero(sigmas).to(device)


def get_sigmas_exponential(
    n: int, sigma_min: float, sigma_max: float, device: str = "cpu"
) -> Tensor:
    """Sigmas evenly spaced in log(sigma)."""
    _check_range(n, sigma_min, sigma_max)
    sigmas = torch.linspace(math.log(sigma_max), math.log(sigma_min), n, device=device).exp()
    return append_zero(sigmas)


def get_sigmas_polyexponential(
    n: int, sigma_min: float, sigma_max: float, rho: float = 1.0, device: str = "cpu"
) -> Tensor:
    """Polynomial in log(sigma) (k-diffusion): rho=1 is ``exponential``."""
    _check_range(n, sigma_min, sigma_max)
    ramp = torch.linspace(1, 0, n, device=device) ** rho
    sigmas = torch.exp(ramp * (math.log(sigma_max) - math.log(sigma_min)) + math.log(sigma_min))
    return append_zero(sigmas)


def get_sigmas_vp(
    n: int, beta_d: float = 19.9, beta_min: float = 0.1, eps_s: float = 1e-3, device: str = "cpu"
) -> Tensor:
    """The continuous VP SDE's schedule (Song et al. 2021), as in k-diffusion."""
    if n < 1:
        raise ValueError(f"the number of steps must be >= 1, got {n}")
    t = torch.linspace(1, eps_s, n, device=device)
    sigmas = torch.sqrt(torch.exp(beta_d * t**2 / 2 + beta_min * t) - 1)
    return append_zero(sigmas)


def get_sigmas_kl_optimal(
    n: int, sigma_min: float, sigma_max: float, device: str = "cpu"
) -> Tensor:
    """ "Align Your Steps" (Sabour et al. 2024), eq. 5: linear in arctan(sigma)."""
    _check_range(n, sigma_min, sigma_max)
    ramp = torch.arange(n, dtype=torch.float32) / max(n - 1, 1)
    sigmas = torch.tan(ramp * math.atan(sigma_min) + (1 - ramp) * math.atan(sigma_max))
    return append_zero(sigmas).to(device)


def shift_flow_t(t: Tensor, shift: float) -> Tensor:
    """Resolution shift of flow-matching times (Esser et al. 2024, SD3 eq. 23)."""
    return shift * t / (1 + (shift - 1) * t)


# --------------------------------------------------------------------------------------------
# Named schedulers (ComfyUI's ``calculate_sigmas``)
# --------------------------------------------------------------------------------------------


class SigmaModel(Protocol):
    """What a named scheduler needs from a denoiser (every genmodels denoiser provides it)."""

    sigma_min: float
    sigma_max: float
    sigmas: Tensor | None  # the training noise levels of a discrete model, ascending

    def sigma_to_t(self, sigma: Tensor) -> Tensor: ...
    def t_to_sigma(self, t: Tensor) -> Tensor: ...


def _model_sigmas(model: SigmaModel, name: str) -> Tensor:
    sigmas = getattr(model, "sigmas", None)
    if sigmas is None:
        raise ValueError(f"scheduler {name!r} needs a discrete model (one with a sigmas table)")
    return sigmas.float().cpu()


def _normal(model: SigmaModel, steps: int, sgm: bool = False) -> Tensor:
    """Evenly spaced in the model's timestep (ComfyUI ``normal`` / ``sgm_uniform``)."""
    start = float(model.sigma_to_t(torch.tensor(model.sigma_max)))
    end = float(model.sigma_to_t(torch.tensor(model.sigma_min)))
    if sgm:
        ts = torch.linspace(start, end, steps + 1)[:-1]
    else:
        ts = torch.linspace(start, end, steps)
    sigmas = model.t_to_sigma(ts).float().cpu()
    # A model whose smallest sigma is 0 (ComfyUI: steps += 1 and no appended zero) already ends
    # there; every genmodels model has sigma_min > 0, so append the final 0.
    return append_zero(sigmas)


def _simple(model: SigmaModel, steps: int) -> Tensor:
    """Every len(sigmas)/steps-th training sigma from the top (ComfyUI ``simple``)."""
    table = _model_sigmas(model, "simple")
    stride = len(table) / steps
    picked = [table[-(1 + int(i * stride))] for i in range(steps)]
    return append_zero(torch.stack(picked))


def _ddim_uniform(model: SigmaModel, steps: int) -> Tensor:
    """DDIM's uniform timestep skipping (ComfyUI ``ddim_uniform``: t = 1, 1+c, 1+2c, ...)."""
    table = _model_sigmas(model, "ddim_uniform")
    stride = max(len(table) // steps, 1)
    picked = table[1::stride].flip(0)
    return append_zero(picked)


def _beta(model: SigmaModel, steps: int, alpha: float = 0.6, beta: float = 0.6) -> Tensor:
    """Beta-distributed timesteps (Lee et al. 2024, arXiv:2407.12173), duplicates dropped."""
    table = _model_sigmas(model, "beta")
    total = len(table) - 1
    q = 1 - torch.arange(steps, dtype=torch.float64) / steps
    ts = torch.round(beta_ppf(q, alpha, beta) * total).long()
    keep = torch.ones_like(ts, dtype=torch.bool)
    keep[1:] = ts[1:] != ts[:-1]
    return append_zero(table[ts[keep]])


def _linear_quadratic(
    model: SigmaModel, steps: int, threshold_noise: float = 0.025, linear_steps: int | None = None
) -> Tensor:
    """Linear then quadratic in sigma/sigma_max (Mochi; ComfyUI ``linear_quadratic``)."""
    if steps == 1:
        return torch.tensor([1.0, 0.0]) * float(model.sigma_max)
    lin = steps // 2 if linear_steps is None else linear_steps
    quad = steps - lin
    diff = lin - threshold_noise * steps
    quad_coef = diff / (lin * quad**2)
    lin_coef = threshold_noise / lin - 2 * diff / quad**2
    const = quad_coef * lin**2
    i = torch.arange(steps, dtype=torch.float64)
    ramp = torch.where(i < lin, i * threshold_noise / lin, quad_coef * i**2 + lin_coef * i + const)
    schedule = 1.0 - torch.cat([ramp, ramp.new_ones(1)])
    return schedule.float() * float(model.sigma_max)


def _with_range(fn: Callable[..., Tensor]) -> Callable[[SigmaModel, int], Tensor]:
    def scheduler(model: SigmaModel, steps: int) -> Tensor:
        return fn(steps, float(model.sigma_min), float(model.sigma_max))

    scheduler.__doc__ = fn.__doc__
    return scheduler


SCHEDULERS: dict[str, Callable[[SigmaModel, int], Tensor]] = {
    "normal": _normal,
    "karras": _with_range(get_sigmas_karras),
    "exponential": _with_range(get_sigmas_exponential),
    "sgm_uniform": lambda model, steps: _normal(model, steps, sgm=True),
    "simple": _simple,
    "ddim_uniform": _ddim_uniform,
    "beta": _beta,
    "linear_quadratic": _linear_quadratic,
    "kl_optimal": _with_range(get_sigmas_kl_optimal),
    "polyexponential": _with_range(get_sigmas_polyexponential),
}
SCHEDULERS["sgm_uniform"].__doc__ = "Like normal, without the last timestep (sgm's uniform)."

# A1111's display names for schedulers ("Automatic" means the sampler's own default: normal).
A1111_SCHEDULER_ALIASES: dict[str, str] = {
    "Automatic": "normal",
    "Uniform": "normal",
    "Karras": "karras",
    "Exponential": "exponential",
    "Polyexponential": "polyexponential",
    "SGM Uniform": "sgm_uniform",
    "KL Optimal": "kl_optimal",
    "Simple": "simple",
    "Normal": "normal",
    "DDIM": "ddim_uniform",
    "Beta": "beta",
}
_A1111_LOWER = {k.lower(): v for k, v in A1111_SCHEDULER_ALIASES.items()}


def resolve_scheduler(name: str) -> str:
    """Canonical scheduler name for a ComfyUI name or an A1111 display name."""
    if name in SCHEDULERS:
        return name
    alias = _A1111_LOWER.get(name.strip().lower()) if isinstance(name, str) else None
    if alias is None:
        valid = ", ".join(sorted(SCHEDULERS))
        raise ValueError(f"unknown scheduler {name!r}; valid: {valid}")
    return alias


def compute_sigmas(name: str, model: SigmaModel, steps: int) -> Tensor:
    """``steps + 1`` decreasing sigmas ending in 0 from a named scheduler (ComfyUI names)."""
    if not isinstance(steps, int) or steps < 1:
        raise ValueError(f"steps must be a positive integer, got {steps!r}")
    return SCHEDULERS[resolve_scheduler(name)](model, steps).float()
