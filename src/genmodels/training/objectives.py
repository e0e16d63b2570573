"""Model + parameterisation + loss for each diffusion objective, with CFG label dropout.

``build_denoiser`` wraps a network in the denoiser of its objective (``DiscreteDenoiser`` for
DDPM eps / v, ``KarrasDenoiser`` for EDM, ``FlowDenoiser`` for flow matching) and
``build_loss`` returns the matching ``DiffusionLoss`` from ``genmodels.diffusion.losses``.

``Objective.draw`` draws the per-sample randomness (sigma, noise, CFG dropout) for the *global*
batch from one generator seeded per step; each rank and micro-batch uses its rows of it, so
N ranks x B/N samples see exactly what one process with B samples sees (the DDP equality test
relies on it), and a resumed run draws exactly what the uninterrupted run drew.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor, nn

from genmodels.diffusion.denoisers import (
    DiscreteDenoiser,
    FlowDenoiser,
    KarrasDenoiser,
    append_dims,
)
from genmodels.diffusion.losses import DiffusionLoss, ddpm_loss, edm_loss, flow_matching_loss
from genmodels.diffusion.schedules import make_alphas_cumprod

from .config import ObjectiveConfig

__all__ = ["Draws", "Objective", "build_denoiser", "build_loss", "null_label"]


def build_denoiser(model: nn.Module, cfg: ObjectiveConfig) -> nn.Module:
    """The denoiser (x, sigma, **cond) -> x0 of objective ``cfg.kind`` around ``model``."""
    if cfg.kind in ("eps", "v"):
        alphas_cumprod = make_alphas_cumprod(
            cfg.beta_schedule, cfg.num_timesteps, cfg.linear_start, cfg.linear_end
        )
        return DiscreteDenoiser(model, alphas_cumprod, prediction=cfg.kind)
    if cfg.kind == "edm":
        return KarrasDenoiser(model, sigma_data=cfg.sigma_data)
    if cfg.kind == "flow":
        return FlowDenoiser(model)
    raise ValueError(f"unknown objective.kind {cfg.kind!r}; valid: eps, v, edm, flow")


def build_loss(denoiser: nn.Module, cfg: ObjectiveConfig) -> DiffusionLoss:
    """The training loss (sigma distribution + weighting) of objective ``cfg.kind``."""
    if cfg.kind in ("eps", "v"):
        return ddpm_loss(denoiser.sigmas, cfg.kind, min_snr_gamma=cfg.min_snr_gamma)
    if cfg.kind == "edm":
        return edm_loss(cfg.sigma_data, cfg.p_mean, cfg.p_std)
    if cfg.kind == "flow":
        return flow_matching_loss()
    raise ValueError(f"unknown objective.kind {cfg.kind!r}; valid: eps, v, edm, flow")


def null_label(num_classes: int | str | None) -> int | None:
    """Index of the unconditional ("null") class: the last of the UNet's ``num_classes``."""
    return num_classes - 1 if isinstance(num_classes, int) else None


@dataclass
class Draws:
    """The randomness of one global batch: sigma (B,), noise (B, ...), CFG drop mask (B,)."""

    sigma: Tensor
    noise: Tensor
    drop: Tensor

    def rows(self, rows: slice) -> Draws:
        return Draws(self.sigma[rows], self.noise[rows], self.drop[rows])


@dataclass
class Objective:
    """Per-sample training loss of a denoiser with class conditioning and CFG dropout."""

    denoiser: nn.Module
    loss_fn: DiffusionLoss
    null: int | None = None
    cond_drop_prob: float = 0.0

    def draw(
        self, global_batch: int, sample_shape: tuple[int, ...], generator: torch.Generator
    ) -> Draws:
        """Draw sigma, noise and the dropout mask for a whole global batch (on the CPU)."""
        cpu = torch.device("cpu")
        sigma = self.loss_fn.sigma_sampler(global_batch, cpu, generator)
        noise = torch.randn((global_batch, *sample_shape), generator=generator)
        drop = torch.rand(global_batch, generator=generator) < self.cond_drop_prob
        return Draws(sigma, noise, drop)

    def loss(
        self, x0: Tensor, labels: Tensor | None, draws: Draws, context: Tensor | None = None
    ) -> Tensor:
        """Loss per sample (B,) of x0 (B, C, H, W) with labels (B,) and this batch's draws.

        ``context`` (B, T, D): cross-attention conditioning (text), with CFG dropout already
        applied by the caller (``CaptionEmbeddings.batch`` with ``draws.drop``).
        """
        b = x0.shape[0]
        if draws.sigma.shape != (b,) or draws.noise.shape[1:] != x0.shape[1:]:
            raise ValueError(
                f"draws for {tuple(draws.noise.shape)} do not match x0 of shape {tuple(x0.shape)}"
            )
        cond = {}
        if self.null is not None:
            if labels is None:
                raise ValueError("a class-conditional model needs labels (B,)")
            if labels.shape != (b,) or bool((labels >= self.null).any()):
                raise ValueError(
                    f"labels must have shape ({b},) and lie in [0, {self.null}); "
                    f"index {self.null} is the unconditional class"
                )
            cond["y"] = torch.where(draws.drop.to(labels.device), self.null, labels)
        if context is not None:
            if context.ndim != 3 or context.shape[0] != b:
                raise ValueError(f"context must have shape ({b}, T, D), got {tuple(context.shape)}")
            cond["context"] = context.to(x0.device)
        sigma, noise = draws.sigma.to(x0.device), draws.noise.to(x0)
        x = x0 + append_dims(sigma, x0.ndim).to(x0.dtype) * noise
        denoised = self.denoiser(x, sigma, **cond)
        err = (denoised.float() - x0.float()) ** 2
        return self.loss_fn.weighting(sigma).float() * err.flatten(1).mean(1)
