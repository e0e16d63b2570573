"""A diffusion objective as one config: the network's parameterisation (its denoiser wrapper)
and the training loss on the same contract.

``build_denoiser`` wraps a network in the denoiser of its objective (``DiscreteDenoiser`` for
DDPM eps / v, ``KarrasDenoiser`` for EDM, ``FlowDenoiser`` for flow matching); ``build_loss``
returns the matching ``DiffusionLoss`` (``losses.py``), with offset noise (Guttenberg 2023) and,
for eps / v, min-SNR-gamma weighting (Hang et al. 2023) and a zero-terminal-SNR schedule (Lin et
al. 2024, "Common diffusion noise schedules and sample steps are flawed"; use it with ``v``).
Training and sampling a trained run both build from this config, so they agree.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from torch import nn

from .denoisers import DiscreteDenoiser, FlowDenoiser, KarrasDenoiser
from .losses import DiffusionLoss, ddpm_loss, edm_loss, flow_matching_loss
from .schedules import make_alphas_cumprod

__all__ = ["ObjectiveConfig", "build_denoiser", "build_loss", "null_label"]


@dataclass
class ObjectiveConfig:
    """Diffusion objective: DDPM ``eps`` / ``v``, ``edm`` or ``flow`` matching."""

    kind: Literal["eps", "v", "edm", "flow"] = "edm"
    beta_schedule: str = "linear"
    num_timesteps: int = 1000
    linear_start: float = 1e-4
    linear_end: float = 2e-2
    zero_terminal_snr: bool = False  # eps / v: rescale the schedule to zero terminal SNR
    min_snr_gamma: float | None = None
    offset_noise: float = 0.0  # noise + offset * N(0, 1) per (sample, channel)
    sigma_data: float = 0.5
    p_mean: float = -1.2
    p_std: float = 1.2
    cond_drop_prob: float = 0.1  # CFG dropout: labels / captions replaced by the null ones

    def __post_init__(self) -> None:
        if not 0.0 <= self.cond_drop_prob < 1.0:
            raise ValueError(
                f"objective.cond_drop_prob must be in [0, 1), got {self.cond_drop_prob}"
            )
        if self.offset_noise < 0:
            raise ValueError(f"objective.offset_noise must be >= 0, got {self.offset_noise}")
        if self.zero_terminal_snr and self.kind not in ("eps", "v"):
            raise ValueError(
                f"objective.zero_terminal_snr applies to the discrete eps / v objectives, "
                f"not {self.kind!r}"
            )


def build_denoiser(model: nn.Module, cfg: ObjectiveConfig) -> nn.Module:
    """The denoiser (x, sigma, **cond) -> x0 of objective ``cfg.kind`` around ``model``."""
    if cfg.kind in ("eps", "v"):
        alphas_cumprod = make_alphas_cumprod(
            cfg.beta_schedule,
            cfg.num_timesteps,
            cfg.linear_start,
            cfg.linear_end,
            zero_terminal_snr=cfg.zero_terminal_snr,
        )
        return DiscreteDenoiser(model, alphas_cumprod, prediction=cfg.kind)
    if cfg.kind == "edm":
        return KarrasDenoiser(model, sigma_data=cfg.sigma_data)
    if cfg.kind == "flow":
        return FlowDenoiser(model)
    raise ValueError(f"unknown objective.kind {cfg.kind!r}; valid: eps, v, edm, flow")


def build_loss(denoiser: nn.Module, cfg: ObjectiveConfig) -> DiffusionLoss:
    """The training loss (sigma distribution + weighting + offset noise) of ``cfg.kind``."""
    if cfg.kind in ("eps", "v"):
        loss = ddpm_loss(denoiser.sigmas, cfg.kind, min_snr_gamma=cfg.min_snr_gamma)
    elif cfg.kind == "edm":
        loss = edm_loss(cfg.sigma_data, cfg.p_mean, cfg.p_std)
    elif cfg.kind == "flow":
        loss = flow_matching_loss()
    else:
        raise ValueError(f"unknown objective.kind {cfg.kind!r}; valid: eps, v, edm, flow")
    loss.offset_noise = cfg.offset_noise
    return loss


def null_label(num_classes: int | str | None) -> int | None:
    """Index of the unconditional ("null") class: the last of the UNet's ``num_classes``."""
    return num_classes - 1 if isinstance(num_classes, int) else None
