"""Pieces shared by the k-diffusion-style samplers: input checks, the Karras ODE derivative,
ancestral step sizes, the "churn" noise injection and the progress bar.

Conventions (Karras et al. 2022, "Elucidating the Design Space of Diffusion-Based Generative
Models", https://arxiv.org/abs/2206.00364): ``x`` is the noisy sample at noise level ``sigma``,
``model(x, sigma_batch, **extra_args)`` returns the denoised estimate of x0, and the
probability-flow ODE is ``dx/dsigma = (x - D(x, sigma)) / sigma``.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable
from typing import Any

import torch
from torch import Tensor
from tqdm.auto import trange

from genmodels.diffusion.denoisers import append_dims  # noqa: F401 (re-exported)
from genmodels.diffusion.noise import NoiseSampler

Denoiser = Callable[..., Tensor]
Callback = Callable[[dict[str, Any]], Any]


def validate_sigmas(sigmas: Tensor) -> None:
    """Check a noise schedule: 1-D, at least 2 entries, finite, non-increasing."""
    if not isinstance(sigmas, Tensor):
        raise ValueError(f"sigmas must be a torch.Tensor, got {type(sigmas).__name__}")
    if sigmas.ndim != 1:
        raise ValueError(f"sigmas must be 1-D, got shape {tuple(sigmas.shape)}")
    if sigmas.shape[0] < 2:
        raise ValueError(f"sigmas needs at least 2 entries (start and end), got {sigmas.shape[0]}")
    if not bool(torch.isfinite(sigmas).all()):
        raise ValueError(f"sigmas must be finite (no NaN/inf), got {sigmas.tolist()}")
    if bool((sigmas[1:] > sigmas[:-1]).any()):
        raise ValueError(f"sigmas must be non-increasing, got {sigmas.tolist()}")
    if bool((sigmas < 0).any()):
        raise ValueError(f"sigmas must be >= 0, got {sigmas.tolist()}")


def validate_sigma_range(sigma_min: float | Tensor, sigma_max: float | Tensor) -> None:
    """Check the range of the DPM-Solver samplers: ``0 < sigma_min < sigma_max``, finite."""
    lo, hi = float(sigma_min), float(sigma_max)
    if not (math.isfinite(lo) and math.isfinite(hi) and 0 < lo < hi):
        raise ValueError(
            f"need finite 0 < sigma_min < sigma_max, got sigma_min={lo}, sigma_max={hi}"
        )


def to_d(x: Tensor, sigma: Tensor, denoised: Tensor) -> Tensor:
    """Karras ODE derivative ``dx/dsigma = (x - D(x, sigma)) / sigma``."""
    return (x - denoised) / append_dims(sigma, x.ndim)


def get_ancestral_step(
    sigma_from: Tensor, sigma_to: Tensor, eta: float = 1.0
) -> tuple[Tensor | float, Tensor | float]:
    """Split an ancestral step ``sigma_from -> sigma_to`` into a deterministic step down to
    ``sigma_down`` and fresh noise of std ``sigma_up``, with ``sigma_down^2 + sigma_up^2 =
    sigma_to^2``; ``eta = 1`` is the DDPM posterior variance (Ho et al. 2020), ``eta = 0`` is ODE.
    """
    if not eta:
        return sigma_to, 0.0
    var = sigma_to**2 * (sigma_from**2 - sigma_to**2) / sigma_from**2
    sigma_up = min(sigma_to, eta * var**0.5)
    sigma_down = (sigma_to**2 - sigma_up**2) ** 0.5
    return sigma_down, sigma_up


def churn_step(
    x: Tensor,
    sigmas: Tensor,
    i: int,
    s_churn: float,
    s_tmin: float,
    s_tmax: float,
    s_noise: float,
    noise_sampler: NoiseSampler | None,
) -> tuple[Tensor, Tensor]:
    """Karras et al. (2022) Algorithm 2, lines 4-6 ("churn"): inside ``[S_tmin, S_tmax]`` raise
    the noise level to ``sigma_hat = sigma (1 + gamma)``, ``gamma = min(S_churn / N, sqrt(2) - 1)``,
    by adding noise of std ``sqrt(sigma_hat^2 - sigma^2)``. Returns ``(x, sigma_hat)``.

    Shared by euler, heun and dpm_2. With the default noise (``noise_sampler=None``) and
    ``s_churn > 0`` one ``randn_like`` is drawn every step, even when ``gamma == 0``, as
    k-diffusion does, so global-RNG seeding gives identical results. With ``s_churn == 0``
    nothing is drawn: the result is the same, k-diffusion's unused draws only advance the RNG.
    """
    sigma = sigmas[i]
    if s_churn <= 0:
        return x, sigma
    n_steps = len(sigmas) - 1
    gamma = min(s_churn / n_steps, 2**0.5 - 1) if s_tmin <= sigma <= s_tmax else 0.0
    if noise_sampler is None:
        eps = torch.randn_like(x) * s_noise
    elif gamma > 0:
        eps = noise_sampler(sigma, sigmas[i + 1]) * s_noise
    sigma_hat = sigma * (gamma + 1)
    if gamma > 0:
        x = x + eps * (sigma_hat**2 - sigma**2) ** 0.5
    return x, sigma_hat


def progress(n: int, disable: bool | None) -> Iterable[int]:
    """``range(n)`` with a tqdm progress bar unless ``disable`` (tqdm's own semantics)."""
    return trange(n, disable=disable)


def notify(
    callback: Callback | None,
    x: Tensor,
    i: int,
    sigma: Tensor,
    sigma_hat: Tensor,
    denoised: Tensor,
) -> None:
    """Call ``callback`` with k-diffusion's per-step dict."""
    if callback is not None:
        callback({"x": x, "i": i, "sigma": sigma, "sigma_hat": sigma_hat, "denoised": denoised})
