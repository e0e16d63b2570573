"""DDIM, DDPM (ancestral) and LCM sampling written in sigma space.

The papers work with the variance-preserving (VP) chain ``x_vp = sqrt(a) x0 + sqrt(1 - a) eps``
(``a = alphas_cumprod``). With ``sigma^2 = (1 - a) / a`` the variance-exploding sample of the
samplers is ``x = x_vp / sqrt(a) = x_vp * sqrt(1 + sigma^2) = x0 + sigma * eps``, and every
update below is the paper's update rescaled by ``sqrt(1 + sigma_next^2)``:

* DDIM (Song et al. 2020, https://arxiv.org/abs/2010.02502, eq. 12 and 16): with
  ``eps = (x - x0) / sigma`` the step is ``x_next = x0 + sqrt(sigma_next^2 - sigma_up^2) eps
  + sigma_up z``; the paper's ``sigma_t(eta)^2 / a_prev`` becomes
  ``sigma_up^2 = eta^2 sigma_next^2 (sigma^2 - sigma_next^2) / sigma^2``. ``eta = 0`` is the
  Euler step of the probability-flow ODE, ``eta = 1`` the DDPM posterior.
* DDPM (Ho et al. 2020, https://arxiv.org/abs/2006.11239, eq. 6-7): the posterior
  ``q(x_{t-1} | x_t, x0)`` has, in VE form, mean ``x0 + (sigma_next / sigma)^2 (x - x0)`` and
  variance ``sigma_next^2 (1 - (sigma_next / sigma)^2)``.
* LCM (Luo et al. 2023, https://arxiv.org/abs/2310.04378, Algorithm 3): jump to the x0
  estimate, then re-noise it to ``sigma_next`` with fresh noise (not at the last step). The
  consistency boundary scalings (c_skip, c_out) belong to the denoiser, not to the sampler.

Shapes: ``x`` is (B, ...), ``sigmas`` is (N + 1,) decreasing (usually ending in 0),
``model(x, sigma (B,))`` -> like x.
"""

from __future__ import annotations

import torch
from torch import Tensor

from genmodels.diffusion.noise import NoiseSampler, default_noise_sampler
from genmodels.diffusion.samplers.common import (
    Callback,
    Denoiser,
    get_ancestral_step,
    notify,
    progress,
    to_d,
    validate_sigmas,
)

__all__ = ["sample_ddim", "sample_ddim_a1111", "sample_ddpm", "sample_lcm", "check_eta"]


def check_eta(eta: float) -> None:
    """``eta`` scales the injected noise: it must be a finite number >= 0."""
    if not (isinstance(eta, (int, float)) and 0 <= float(eta) < float("inf")):
        raise ValueError(f"eta must be a finite number >= 0, got {eta!r}")


def _prepare(
    x: Tensor, sigmas: Tensor, extra_args: dict | None, noise_sampler: NoiseSampler | None
) -> tuple[dict, NoiseSampler, Tensor]:
    validate_sigmas(sigmas)
    extra_args = {} if extra_args is None else extra_args
    noise_sampler = default_noise_sampler(x) if noise_sampler is None else noise_sampler
    return extra_args, noise_sampler, x.new_ones([x.shape[0]])


@torch.no_grad()
def sample_ddim(
    model: Denoiser,
    x: Tensor,
    sigmas: Tensor,
    extra_args: dict | None = None,
    callback: Callback | None = None,
    disable: bool | None = None,
    eta: float = 0.0,
    s_noise: float = 1.0,
    noise_sampler: NoiseSampler | None = None,
) -> Tensor:
    """DDIM (Song et al. 2020, eq. 12) with stochasticity ``eta``; ``eta = 0`` is deterministic.

    ``sigma_up`` is capped at ``sigma_next`` (eta > 1 cannot add more noise than the target
    level), as in k-diffusion's ancestral step.
    """
    check_eta(eta)
    extra_args, noise_sampler, s_in = _prepare(x, sigmas, extra_args, noise_sampler)
    for i in progress(len(sigmas) - 1, disable):
        sigma, sigma_next = sigmas[i], sigmas[i + 1]
        denoised = model(x, sigma * s_in, **extra_args)
        notify(callback, x, i, sigma, sigma, denoised)
        sigma_down, sigma_up = get_ancestral_step(sigma, sigma_next, eta=eta)
        # x0 + sqrt(sigma_next^2 - sigma_up^2) * eps, eps = (x - x0) / sigma
        x = denoised + to_d(x, sigma, denoised) * sigma_down
        if sigma_next > 0 and eta > 0:
            x = x + noise_sampler(sigma, sigma_next) * (s_noise * sigma_up)
    return x


@torch.no_grad()
def sample_ddim_a1111(
    model: Denoiser,
    x: Tensor,
    sigmas: Tensor,
    extra_args: dict | None = None,
    callback: Callback | None = None,
    disable: bool | None = None,
    eta: float = 0.0,
    noise_sampler: NoiseSampler | None = None,
) -> Tensor:
    """A1111's "DDIM" (stable-diffusion-webui >= 1.6, ``sd_samplers_timesteps``) in sigma space.

    With ldm's ``ddim_uniform`` timesteps ``tau = 1, 1 + c, ...`` (c = 1000 // steps; the
    ``ddim_uniform`` schedule gives their sigmas, then 0), A1111 evaluates the model at every
    timestep but the first, ``len(tau) - 1`` DDIM steps, so the last one lands on ``tau_0 = 1``:
    ``alphas_cumprod[1]``, not sigma 0. That noisy variance-preserving sample
    ``x_vp = x / sqrt(1 + sigma^2)`` is what A1111 decodes, and what this returns. (ldm's own
    DDIMSampler, A1111 < 1.6, takes one step more, to ``alphas_cumprod[0]``.) A1111 starts
    txt2img from unit variance-preserving noise, ``x = noise * sqrt(1 + sigma_max^2)``: the
    registry marks this sampler ``vp_start`` so that ``sampling.sample`` scales it so. A
    schedule that does not end with 0 (the base model's part before a refiner takes over) runs
    plain DDIM steps, its end converted by the part that ends the schedule.
    """
    if sigmas[-1] != 0:  # part of a schedule (a refiner continues): plain DDIM steps
        return sample_ddim(model, x, sigmas, extra_args, callback, disable, eta,
                           noise_sampler=noise_sampler)  # fmt: skip
    positive = sigmas[:-1]  # the last step, to sigma 0, is the one A1111 does not take
    if len(positive) >= 2:
        x = sample_ddim(model, x, positive, extra_args, callback, disable, eta,
                        noise_sampler=noise_sampler)  # fmt: skip
    return x / (1 + positive[-1] ** 2).sqrt()


@torch.no_grad()
def sample_ddpm(
    model: Denoiser,
    x: Tensor,
    sigmas: Tensor,
    extra_args: dict | None = None,
    callback: Callback | None = None,
    disable: bool | None = None,
    s_noise: float = 1.0,
    noise_sampler: NoiseSampler | None = None,
) -> Tensor:
    """Ancestral DDPM: sample the posterior q(x_next | x, x0) (Ho et al. 2020, eq. 6-7)."""
    extra_args, noise_sampler, s_in = _prepare(x, sigmas, extra_args, noise_sampler)
    for i in progress(len(sigmas) - 1, disable):
        sigma, sigma_next = sigmas[i], sigmas[i + 1]
        denoised = model(x, sigma * s_in, **extra_args)
        notify(callback, x, i, sigma, sigma, denoised)
        ratio2 = (sigma_next / sigma) ** 2  # VE form of the posterior coefficients
        x = denoised + (x - denoised) * ratio2
        if sigma_next > 0:
            std = sigma_next * (1 - ratio2).clamp(min=0) ** 0.5
            x = x + noise_sampler(sigma, sigma_next) * (s_noise * std)
    return x


@torch.no_grad()
def sample_lcm(
    model: Denoiser,
    x: Tensor,
    sigmas: Tensor,
    extra_args: dict | None = None,
    callback: Callback | None = None,
    disable: bool | None = None,
    s_noise: float = 1.0,
    noise_sampler: NoiseSampler | None = None,
) -> Tensor:
    """Consistency-model multistep sampling (Luo et al. 2023, Algorithm 3; Song et al. 2023,
    Algorithm 1): ``x <- D(x, sigma)``, then ``x <- x + sigma_next * z`` unless the next level
    is the last one at 0."""
    extra_args, noise_sampler, s_in = _prepare(x, sigmas, extra_args, noise_sampler)
    for i in progress(len(sigmas) - 1, disable):
        sigma, sigma_next = sigmas[i], sigmas[i + 1]
        denoised = model(x, sigma * s_in, **extra_args)
        notify(callback, x, i, sigma, sigma, denoised)
        x = denoised
        if sigma_next > 0:
            x = x + noise_sampler(sigma, sigma_next) * (s_noise * sigma_next)
    return x
