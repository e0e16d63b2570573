"""The autoencoder's regulariser, a swappable part of its loss (sgm's ``regularizers``): the
KL term of a Gaussian posterior (ldm's KL autoencoder) or the codebook term of a vector
quantiser (VQGAN). Each returns its weighted loss term and the value it logs.

KL scale: ldm sums the L1 and the KL over all elements and divides by the batch size; the
reconstruction term here is a *mean* over pixels, so the KL is divided by the pixels per image
too (KL_sum / (C * H * W)), which keeps ldm's meaning of the weight (1e-6 for SD).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from torch import Tensor

from genmodels.models.distributions import DiagonalGaussianDistribution

__all__ = ["RegularizerConfig", "Regularization", "kl_regularization", "vq_regularization"]


@dataclass
class RegularizerConfig:
    """``kind``: ``kl`` (a Gaussian posterior, the KL autoencoder) or ``vq`` (a codebook, the
    VQGAN); ``weight``: ldm's ``kl_weight`` / taming's ``codebook_weight``."""

    kind: Literal["kl", "vq"] = "kl"
    weight: float = 1e-6

    def __post_init__(self) -> None:
        if self.weight < 0:
            raise ValueError(f"regularizer.weight must be >= 0, got {self.weight}")


@dataclass
class Regularization:
    """A regulariser's term of the autoencoder loss (weighted, scalar) and its log values."""

    loss: Tensor
    logs: dict[str, float]


def kl_regularization(
    posterior: DiagonalGaussianDistribution, pixels: int, weight: float
) -> Regularization:
    """``weight`` x KL(q(z|x) || N(0, I)) per image, divided by its ``pixels`` (C * H * W)."""
    kl = (posterior.kl() / pixels).mean()
    return Regularization(weight * kl, {"kl_loss": kl.item()})


def vq_regularization(codebook_loss: Tensor, weight: float) -> Regularization:
    """``weight`` x the quantiser's codebook + commitment loss."""
    q = codebook_loss.mean()
    return Regularization(weight * q, {"codebook_loss": q.item()})
