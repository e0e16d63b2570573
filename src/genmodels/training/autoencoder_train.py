"""Stage 1 of latent diffusion: train an ``AutoencoderKL`` (ldm ``LPIPSWithDiscriminator``).

Each step:

1. autoencoder: x_rec, q(z|x) = model(x) (z sampled); loss = VQGANLoss.generator_loss with the
   KL term in the codebook slot: L1 (+ LPIPS when local weights are given) + kl_weight * KL
   (+ adaptive-weighted PatchGAN term from ``loss.disc_start`` when ``loss.disc_factor > 0``);
2. discriminator (GAN on, from ``disc_start``): hinge / vanilla loss on real vs reconstructions.

Scale: ldm sums the L1 and the KL over all elements and divides by the batch size; ``VQGANLoss``
takes the L1 *mean* over pixels, so the KL is divided by the pixels per image too
(KL_sum / (C * H * W)), which keeps ldm's meaning of ``kl_weight`` (1e-6 for SD).

``latent_scale_factor`` computes ldm's ``scale_by_std``: 1 / std of the posterior latents, so the
diffusion model sees latents of unit variance.
"""

from __future__ import annotations

import json
import math
import time
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import save_file
from torch import Tensor

from genmodels.checkpoints.atomic import write_atomic
from genmodels.models.autoencoder_kl import AutoencoderKL

from .checkpoint import capture_loop, restore_loop
from .config import LatentConfig
from .latents import load_frozen_vae
from .vqgan_loss import VQGANLoss, VQGANLossConfig

__all__ = [
    "AutoencoderTrainConfig",
    "latent_scale_factor",
    "load_autoencoder_kl",
    "reconstruction_psnr",
    "save_autoencoder_kl",
    "train_autoencoder_kl",
]


def _default_loss() -> VQGANLossConfig:
    # no perceptual term and no GAN unless asked for (disc_factor > 0)
    return VQGANLossConfig(perceptual_weight=0.0, disc_factor=0.0)


@dataclass
class AutoencoderTrainConfig:
    """Settings of the stage-1 KL autoencoder loop (Adam betas (0.5, 0.9) as ldm)."""

    steps: int = 2000
    batch_size: int = 64
    lr: float = 1e-3
    disc_lr: float | None = None  # defaults to lr
    betas: tuple[float, float] = (0.5, 0.9)
    kl_weight: float = 1e-6
    seed: int = 0
    log_every: int = 100
    loss: VQGANLossConfig = field(default_factory=_default_loss)

    def __post_init__(self) -> None:
        if self.steps < 0 or self.batch_size < 1 or self.lr <= 0 or self.log_every < 1:
            raise ValueError(
                f"need steps >= 0, batch_size >= 1, lr > 0, log_every >= 1; got {self.steps}, "
                f"{self.batch_size}, {self.lr}, {self.log_every}"
            )
        if self.kl_weight < 0:
            raise ValueError(f"kl_weight must be >= 0, got {self.kl_weight}")


def train_autoencoder_kl(
    model: AutoencoderKL,
    images: Tensor,
    cfg: AutoencoderTrainConfig,
    callback: Callable[[int, dict[str, float]], None] | None = None,
    on_step: Callable[[int, Callable[[], dict[str, Any]]], None] | None = None,
    resume: dict[str, Any] | None = None,
) -> list[dict[str, float]]:
    """Train ``model`` on ``images`` (N, C, H, W) in [-1, 1]; returns the logged records.

    Batches are drawn with replacement from a generator seeded with ``cfg.seed``. ``callback``
    gets each logged record; ``on_step(step, state)`` the number of finished steps after every
    step and a function returning the loop's state (reconstruction grids, checkpoints; it must
    leave ``model`` in training mode). ``resume``: such a state, with ``model`` already holding
    the weights saved with it; the loop continues at its step exactly (discriminator, both
    optimisers, the batch / posterior generator and the global RNG are restored; a log window
    cut by the checkpoint averages only the steps after it).
    """
    c = model.config
    if images.ndim != 4 or images.shape[1] != c.in_channels:
        raise ValueError(f"expected images (N, {c.in_channels}, H, W), got {tuple(images.shape)}")
    device = next(model.parameters()).device
    torch.manual_seed(cfg.seed)
    loss_cfg = replace(cfg.loss, codebook_weight=cfg.kl_weight, disc_in_channels=c.out_ch)
    loss_fn = VQGANLoss(loss_cfg).to(device).train()
    gan = loss_cfg.disc_factor > 0
    model.train()
    opt_ae = torch.optim.Adam(model.parameters(), lr=cfg.lr, betas=cfg.betas)
    opt_d = torch.optim.Adam(
        loss_fn.discriminator.parameters(), lr=cfg.disc_lr or cfg.lr, betas=cfg.betas
    )
    gen = torch.Generator().manual_seed(cfg.seed)
    start = 0
    stateful = {"loss": loss_fn, "opt_ae": opt_ae, "opt_d": opt_d}
    if resume is not None:
        start = restore_loop(resume, gen, **stateful)

    def state() -> dict[str, Any]:
        return capture_loop(step + 1, gen, **stateful)

    pixels = images[0].numel()  # C * H * W
    sums: dict[str, float] = {}
    count = 0  # steps summed in ``sums`` since the last logged record
    records: list[dict[str, float]] = []
    t0 = time.perf_counter()
    for step in range(start, cfg.steps):
        idx = torch.randint(0, images.shape[0], (cfg.batch_size,), generator=gen)
        x = images[idx].to(device)
        x_rec, posterior = model(x, sample_posterior=True, generator=gen)  # eps on the CPU
        kl = posterior.kl() / pixels  # (B,) per-pixel scale, see the module docstring
        last = model.decoder.conv_out.weight if gan else None
        loss, logs = loss_fn.generator_loss(kl, x, x_rec, step, last)
        opt_ae.zero_grad(set_to_none=True)
        loss.backward()
        opt_ae.step()
        if gan and step >= loss_cfg.disc_start:
            d_loss, d_logs = loss_fn.discriminator_loss(x, x_rec.detach(), step)
            opt_d.zero_grad(set_to_none=True)
            d_loss.backward()
            opt_d.step()
            logs |= d_logs
        logs["kl_loss"] = logs.pop("codebook_loss")
        for k, v in logs.items():
            sums[k] = sums.get(k, 0.0) + v
        count += 1
        if (step + 1) % cfg.log_every == 0 or step + 1 == cfg.steps:
            record = {k: v / count for k, v in sums.items()}
            record |= {"step": step + 1, "seconds": time.perf_counter() - t0}
            records.append(record)
            if callback is not None:
                callback(step + 1, record)
            sums, count = {}, 0
        if on_step is not None:
            on_step(step + 1, state)
    model.eval()
    return records


@torch.no_grad()
def latent_scale_factor(model: AutoencoderKL, images: Tensor, batch_size: int = 256) -> float:
    """1 / std of the posterior-mode latents of ``images`` (ldm ``scale_by_std``)."""
    model.eval()
    device = next(model.parameters()).device
    zs = [
        model.encode(images[i : i + batch_size].to(device), tiled=False).mode().float()
        for i in range(0, images.shape[0], batch_size)
    ]
    return float(1.0 / torch.cat(zs).std())


@torch.no_grad()
def reconstruction_psnr(model: AutoencoderKL, images: Tensor, batch_size: int = 256) -> float:
    """PSNR (dB; images in [-1, 1], peak-to-peak 2) of the posterior-mode reconstructions."""
    model.eval()
    device = next(model.parameters()).device
    se = 0.0
    for i in range(0, images.shape[0], batch_size):
        x = images[i : i + batch_size].to(device)
        x_rec = model(x, sample_posterior=False)[0].clamp(-1, 1)
        se += float((x_rec.float() - x).square().sum())
    mse = max(se / images.numel(), 1e-12)
    return 10 * math.log10(4.0 / mse)


def save_autoencoder_kl(path: str | Path, model: AutoencoderKL) -> Path:
    """Weights (ldm key names) as safetensors with the config as JSON metadata, atomically."""
    meta = {"autoencoder_config": json.dumps(model.config.to_dict())}
    sd = {k: v.detach().contiguous().cpu() for k, v in model.state_dict().items()}
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    return write_atomic(path, lambda tmp: save_file(sd, str(tmp), metadata=meta))


def load_autoencoder_kl(path: str | Path) -> AutoencoderKL:
    """An ``AutoencoderKL`` written by ``save_autoencoder_kl`` (eval mode, frozen)."""
    return load_frozen_vae(LatentConfig(enabled=True, vae_path=str(path)))
