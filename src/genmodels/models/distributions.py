"""Diagonal Gaussian posterior of the KL autoencoder (ldm ``DiagonalGaussianDistribution``).

The encoder emits ``2 * embed_dim`` channels: the mean and the log-variance of a factorised
Gaussian q(z | x) (Kingma & Welling, 2014; Rombach et al., 2022, sec. 3). As in ldm, the
log-variance is clamped to [-30, 20] before use.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

LOGVAR_MIN = -30.0
LOGVAR_MAX = 20.0


class DiagonalGaussianDistribution:
    """N(mean, diag(exp(logvar))) over latents of shape (B, C, H, W)."""

    def __init__(self, parameters: Tensor, deterministic: bool = False) -> None:
        if parameters.ndim < 2 or parameters.shape[1] % 2 != 0:
            raise ValueError(
                "expected parameters of shape (B, 2*C, ...) holding mean and logvar, "
                f"got {tuple(parameters.shape)}"
            )
        self.parameters = parameters
        self.mean, logvar = torch.chunk(parameters, 2, dim=1)  # (B, C, H, W) each
        self.logvar = torch.clamp(logvar, LOGVAR_MIN, LOGVAR_MAX)
        self.deterministic = deterministic
        if deterministic:
            self.var = self.std = torch.zeros_like(self.mean)
        else:
            self.std = torch.exp(0.5 * self.logvar)
            self.var = torch.exp(self.logvar)

    def sample(self, generator: torch.Generator | None = None) -> Tensor:
        """Reparameterised sample mean + std * eps; eps drawn on ``generator``'s device."""
        device = generator.device if generator is not None else self.mean.device
        eps = torch.randn(
            self.mean.shape, generator=generator, device=device, dtype=torch.float32
        ).to(self.mean.device, self.mean.dtype)
        return self.mean + self.std * eps

    def mode(self) -> Tensor:
        return self.mean

    def kl(self, other: DiagonalGaussianDistribution | None = None) -> Tensor:
        """KL(self || other) per sample, summed over (C, H, W); ``other=None`` means N(0, I)."""
        if self.deterministic:
            return torch.zeros(self.mean.shape[0], device=self.mean.device)
        dims = list(range(1, self.mean.ndim))
        if other is None:
            return 0.5 * torch.sum(self.mean.pow(2) + self.var - 1.0 - self.logvar, dim=dims)
        return 0.5 * torch.sum(
            (self.mean - other.mean).pow(2) / other.var
            + self.var / other.var
            - 1.0
            - self.logvar
            + other.logvar,
            dim=dims,
        )

    def nll(self, sample: Tensor, dims: tuple[int, ...] = (1, 2, 3)) -> Tensor:
        """Negative log-likelihood of ``sample`` under this Gaussian, summed over ``dims``."""
        if self.deterministic:
            return torch.zeros(self.mean.shape[0], device=self.mean.device)
        if sample.shape != self.mean.shape:
            raise ValueError(
                f"expected sample of shape {tuple(self.mean.shape)}, got {tuple(sample.shape)}"
            )
        log_two_pi = math.log(2.0 * math.pi)
        return 0.5 * torch.sum(
            log_two_pi + self.logvar + (sample - self.mean).pow(2) / self.var, dim=list(dims)
        )
