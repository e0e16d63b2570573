"""Training losses on the denoiser contract: ``loss_fn(denoiser, x0, cond) -> Tensor[B]``.

Every objective is the same computation with two injected parts (Kingma & Gao 2023,
"Understanding diffusion objectives"): a distribution of noise levels sigma, and a weighting
lambda(sigma) of the x0-space error,

    loss = lambda(sigma) * mean((D(x0 + sigma n, sigma) - x0)^2)

because each prediction target is affine in x0 for fixed x and sigma:

* eps target: eps_hat - eps = (x0 - D) / sigma            -> lambda = 1 / sigma^2  (= SNR)
* v target:   v_hat - v = (x0 - D) sqrt(1 + sigma^2)/sigma -> lambda = SNR + 1
* x0 target:                                              -> lambda = 1
* min-SNR-gamma (Hang et al. 2023) in any of these spaces  -> lambda = min(SNR, gamma)
* EDM (Karras et al. 2022, eq. 8 and Table 1)              -> lambda = 1 / c_out^2
* flow matching, v = noise - x0 along t = sigma/(1+sigma)  -> lambda = 1 / t^2

The trainer only averages and backpropagates.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor

from .denoisers import append_dims
from .schedules import shift_flow_t

__all__ = [
    "DiffusionLoss",
    "ddpm_loss",
    "edm_loss",
    "flow_matching_loss",
]

SigmaSampler = Callable[[int, torch.device, "torch.Generator | None"], Tensor]
Weighting = Callable[[Tensor], Tensor]


@dataclass
class DiffusionLoss:
    """Per-sample weighted denoising loss with an injected sigma distribution and weighting."""

    sigma_sampler: SigmaSampler
    weighting: Weighting
    offset_noise: float = 0.0  # Guttenberg 2023: add offset * N(0, 1) per (sample, channel)
    generator: torch.Generator | None = None

    def draw(
        self,
        n: int,
        shape: tuple[int, ...],
        device: torch.device | str = "cpu",
        dtype: torch.dtype = torch.float32,
        generator: torch.Generator | None = None,
    ) -> tuple[Tensor, Tensor]:
        """The randomness of ``n`` samples of ``shape``: sigma (n,) and noise (n, *shape), offset
        noise included; from ``generator`` (default: this loss's own)."""
        gen = generator if generator is not None else self.generator
        device = torch.device(device)
        like = torch.empty((), device=device, dtype=dtype)
        sigma = self.sigma_sampler(n, device, gen)
        noise = _randn((n, *shape), like, gen)
        if self.offset_noise:
            offset = _randn((n, shape[0]) + (1,) * (len(shape) - 1), like, gen)
            noise = noise + self.offset_noise * offset
        return sigma, noise

    def __call__(
        self,
        denoiser: Callable[..., Tensor],
        x0: Tensor,
        cond: Mapping[str, Any] | None = None,
        *,
        sigma: Tensor | None = None,
        noise: Tensor | None = None,
    ) -> Tensor:
        """Per-sample loss (B,); ``sigma`` / ``noise`` drawn here unless given (a trainer that
        draws a whole global batch at once, see ``draw``, passes each rank its rows)."""
        if x0.ndim < 2:
            raise ValueError(f"x0 must be batched (B, ...), got shape {tuple(x0.shape)}")
        b = x0.shape[0]
        if sigma is None or noise is None:
            sigma, noise = self.draw(b, tuple(x0.shape[1:]), x0.device, x0.dtype)
        if sigma.shape != (b,) or noise.shape != x0.shape:
            raise ValueError(
                f"sigma {tuple(sigma.shape)} / noise {tuple(noise.shape)} do not match x0 "
                f"of shape {tuple(x0.shape)}"
            )
        sigma, noise = sigma.to(x0.device), noise.to(x0)
        x = x0 + append_dims(sigma, x0.ndim).to(x0.dtype) * noise
        denoised = denoiser(x, sigma, **(cond or {}))
        err = (denoised.float() - x0.float()) ** 2
        return self.weighting(sigma).float() * err.flatten(1).mean(1)


def _randn(shape: tuple[int, ...], like: Tensor, generator: torch.Generator | None) -> Tensor:
    if generator is None:
        return torch.randn(shape, device=like.device, dtype=like.dtype)
    return torch.randn(shape, generator=generator, device=generator.device).to(like)


def _rand(n: int, device: torch.device, generator: torch.Generator | None) -> Tensor:
    if generator is None:
        return torch.rand(n, device=device)
    return torch.rand(n, generator=generator, device=generator.device).to(device)


def _snr(sigma: Tensor) -> Tensor:
    return sigma.float() ** -2


OBJECTIVE_WEIGHTS: dict[str, Weighting] = {
    "eps": _snr,
    "v": lambda sigma: _snr(sigma) + 1,
    "x0": lambda sigma: torch.ones_like(sigma, dtype=torch.float32),
}


def ddpm_loss(
    sigmas: Tensor,
    objective: str = "eps",
    min_snr_gamma: float | None = None,
    offset_noise: float = 0.0,
    generator: torch.Generator | None = None,
) -> DiffusionLoss:
    """DDPM training (Ho et al. 2020): t ~ U{0..T-1}, sigma = sigmas[t], eps / v / x0 target.

    ``sigmas`` is the model's training table (``DiscreteDenoiser.sigmas``); a sigma taken from
    it maps back to exactly its integer t inside the denoiser. ``min_snr_gamma`` (Hang et al.
    2023; 5 is their recommendation) clips the x0-space weight at gamma.
    """
    if objective not in OBJECTIVE_WEIGHTS:
        raise ValueError(f"unknown objective {objective!r}; valid: {', '.join(OBJECTIVE_WEIGHTS)}")
    if min_snr_gamma is not None and min_snr_gamma <= 0:
        raise ValueError(f"min_snr_gamma must be positive, got {min_snr_gamma}")
    table = sigmas.detach().float()

    def sample(n: int, device: torch.device, gen: torch.Generator | None) -> Tensor:
        if gen is None:
            t = torch.randint(0, len(table), (n,))
        else:
            t = torch.randint(0, len(table), (n,), generator=gen, device=gen.device).cpu()
        return table[t].to(device)

    if min_snr_gamma is None:
        weighting = OBJECTIVE_WEIGHTS[objective]
    else:
        gamma = float(min_snr_gamma)

        def weighting(sigma: Tensor) -> Tensor:
            return _snr(sigma).clamp(max=gamma)

    return DiffusionLoss(sample, weighting, offset_noise=offset_noise, generator=generator)


def edm_loss(
    sigma_data: float = 0.5,
    p_mean: float = -1.2,
    p_std: float = 1.2,
    generator: torch.Generator | None = None,
) -> DiffusionLoss:
    """EDM (Karras et al. 2022): ln(sigma) ~ N(P_mean, P_std^2), lambda = 1 / c_out^2."""
    if sigma_data <= 0 or p_std <= 0:
        raise ValueError("sigma_data and p_std must be positive")

    def sample(n: int, device: torch.device, gen: torch.Generator | None) -> Tensor:
        z = torch.randn(n) if gen is None else torch.randn(n, generator=gen, device=gen.device)
        return (z.to(device) * p_std + p_mean).exp()

    def weighting(sigma: Tensor) -> Tensor:
        sigma = sigma.float()
        return (sigma**2 + sigma_data**2) / (sigma * sigma_data) ** 2

    return DiffusionLoss(sample, weighting, generator=generator)


def flow_matching_loss(
    t_sampling: str = "logit_normal",
    logit_mean: float = 0.0,
    logit_std: float = 1.0,
    shift: float = 1.0,
    t_min: float = 1e-4,
    t_max: float = 0.999,
    generator: torch.Generator | None = None,
) -> DiffusionLoss:
    """Conditional flow matching (Lipman et al. 2022) on the velocity v = noise - x0.

    t ~ U(0, 1) (``uniform``) or logit-normal (``logit_normal``, Esser et al. 2024, eq. 19),
    optionally shifted; sigma = t / (1 - t) for the VE-form ``FlowDenoiser``.
    """
    if t_sampling not in ("uniform", "logit_normal"):
        raise ValueError(f"unknown t_sampling {t_sampling!r}; valid: uniform, logit_normal")
    if not (0 < t_min < t_max < 1):
        raise ValueError("need 0 < t_min < t_max < 1")

    def sample(n: int, device: torch.device, gen: torch.Generator | None) -> Tensor:
        if t_sampling == "uniform":
            t = _rand(n, device, gen)
        else:
            z = torch.randn(n) if gen is None else torch.randn(n, generator=gen, device=gen.device)
            t = torch.sigmoid(z.to(device) * logit_std + logit_mean)
        t = shift_flow_t(t, shift).clamp(t_min, t_max)
        return t / (1 - t)

    def weighting(sigma: Tensor) -> Tensor:
        t = sigma.float() / (1 + sigma.float())
        return t**-2

    return DiffusionLoss(sample, weighting, generator=generator)
