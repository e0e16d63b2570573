"""``task: autoencoder``: stage 1 of latent diffusion, an ``AutoencoderKL`` trained with ldm's
``LPIPSWithDiscriminator``: L1 (+ L2, + LPIPS from local weights) + the KL regulariser
(``regularizers.py``), and, when ``loss.disc_factor > 0``, a PatchGAN from ``loss.disc_start``
(``gan.py``).

Output directory (``out_dir``):

* ``config.yaml``; ``log.csv`` (and ``tensorboard/``): the mean losses of every ``log_every``
  steps;
* ``samples/recon-<step>.png``: the first ``grid_images`` images (top row) over their
  posterior-mode reconstructions, every ``sample_every`` steps and at the end;
* ``vae.safetensors``: the autoencoder (ldm key names, its config as metadata, ``scale_factor``
  = 1 / std of its latents when ``scale_by_std``), at every checkpoint and at the end; latent
  diffusion takes it as ``latent.vae_path=<out_dir>``;
* ``checkpoints/step-<step>/``: the resumable checkpoints (``checkpoint.py``);
* ``summary.json``: reconstruction PSNR over the data, the latent scale, the last log record.
"""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path

import torch
from torch import Tensor

from genmodels.checkpoints.atomic import write_atomic
from genmodels.checkpoints.vae import VAE_FILE, save_vae
from genmodels.models.autoencoder_kl import AutoencoderKL

from .autoencoder_loss import AutoencoderLoss
from .batches import BatchLoader, micro_batches, step_generator
from .data import all_images, build_task_dataset
from .distributed import DistInfo, init_distributed
from .ema import EMA
from .gan import gan_step
from .images import save_grid
from .metrics import dataset_psnr
from .optim import OptimizerStep, autocast, make_optimizer
from .regularizers import kl_regularization
from .run import Run
from .task_configs import AutoencoderRunConfig, dump_config

__all__ = ["LOG_FIELDS", "latent_scale_factor", "train_autoencoder"]

# columns of log.csv (the GAN ones empty before disc_start)
LOG_FIELDS = ("step", "loss", "rec_loss", "kl_loss", "g_loss", "d_weight", "d_loss",
              "logits_real", "logits_fake", "lr", "grad_norm", "images_per_s")  # fmt: skip


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


def _reconstruct(model: AutoencoderKL) -> callable:
    device = next(model.parameters()).device
    return lambda x: model(x.to(device), sample_posterior=False)[0]


def train_autoencoder(
    cfg: AutoencoderRunConfig,
    *,
    overwrite: bool = False,
    resume: bool = False,
    dist: DistInfo | None = None,
) -> Path:
    """Train the autoencoder and write ``cfg.out_dir`` (see the module docstring); returns it."""
    dist = dist or init_distributed(cfg.device)
    device = dist.device
    dataset = build_task_dataset(cfg.data)
    x0 = dataset[0][0]
    if x0.shape[0] != cfg.model.in_channels:
        raise ValueError(
            f"data.dataset={cfg.data.dataset!r} has {x0.shape[0]} channels, "
            f"model.in_channels={cfg.model.in_channels}"
        )
    run = Run(cfg, dump_config(cfg), overwrite=overwrite, dist=dist, fields=LOG_FIELDS)
    torch.manual_seed(cfg.seed)  # identical initial weights on every rank
    model = AutoencoderKL(cfg.model).to(device)
    channels = cfg.loss.disc_in_channels or cfg.model.out_ch
    loss_fn = AutoencoderLoss(replace(cfg.loss, disc_in_channels=channels)).to(device).train()
    opt_g = OptimizerStep(make_optimizer(model.parameters(), cfg.optim), cfg.optim, cfg.steps,
                          device, cfg.precision)  # fmt: skip
    opt_d = OptimizerStep(
        make_optimizer(loss_fn.discriminator.parameters(), cfg.optim, lr=cfg.optim.disc_lr),
        cfg.optim, cfg.steps, device, cfg.precision,
    )  # fmt: skip
    ema = EMA(model, cfg.ema) if cfg.ema.enabled else None
    modules = {"model": model, "discriminator": loss_fn.discriminator}
    run.track(modules | ({"ema": ema.model} if ema else {}),
              {"opt_g": opt_g, "opt_d": opt_d} | ({"ema": ema} if ema else {}))  # fmt: skip
    if resume:
        run.resume()
    loader = BatchLoader(dataset, cfg.seed, cfg.data.num_workers)
    (rows,) = micro_batches(cfg.data.batch_size, dist, 1)
    pixels = x0.numel()  # C * H * W, the KL's per-pixel scale
    grid = all_images(dataset, cfg.grid_images)
    out = run.out_dir
    final = ema.model if ema is not None else model

    def save_outputs() -> None:  # rank 0: the reconstruction grid and vae.safetensors
        step = f"{run.step:08d}"
        _save_reconstructions(final, grid, out / "samples" / f"recon-{step}.png")
        _save_vae(final, dataset, cfg, out / VAE_FILE)
        model.train()

    with run:
        if run.is_main:
            dump_config(cfg, out / "config.yaml")
        model.train()
        while run.step < cfg.steps and not run.stopping:
            k = run.step
            gen = step_generator(cfg.seed, k)
            indices = loader.indices(cfg.data.batch_size, k)
            x = loader.load(indices[rows], k)[0].to(device)
            with autocast(device, cfg.precision):
                posterior = model.encode(x, tiled=False)
                eps = torch.randn((cfg.data.batch_size, *posterior.mean.shape[1:]), generator=gen)
                z = posterior.mean + posterior.std * eps[rows].to(posterior.mean)
                x_rec = model.decode(z, tiled=False).float()
            reg = kl_regularization(posterior, pixels, cfg.regularizer.weight)
            last = model.decoder.conv_out.weight
            loss, logs = gan_step(loss_fn, opt_g, opt_d, x, x_rec, reg, k, last, dist,
                                  autocast(device, cfg.precision))  # fmt: skip
            if ema is not None:
                ema.update(model)
            run.end_step(logs, loss=loss)
            if run.is_main and run.due(cfg.sample_every) and run.step < cfg.steps:
                save_outputs()
        run.finish()
        if run.is_main:
            save_outputs()
            _write_summary(final, dataset, cfg, out, run.last_record)
    loader.close()
    return out


@torch.no_grad()
def _save_reconstructions(model: AutoencoderKL, x: Tensor, path: Path) -> None:
    """Originals (top row) over their posterior-mode reconstructions, enlarged to >= 32 px."""
    model.eval()
    x_rec = _reconstruct(model)(x).cpu()
    save_grid(torch.cat([x, x_rec]), path, nrow=x.shape[0], scale=max(1, 32 // x.shape[-1]))


def _save_vae(model: AutoencoderKL, dataset: object, cfg: AutoencoderRunConfig, path: Path) -> None:
    """Write the VAE file (with the latent scale when ``scale_by_std``)."""
    if cfg.scale_by_std:
        scale = latent_scale_factor(model, all_images(dataset))
        model.config = replace(model.config, scale_factor=scale)
    save_vae(path, model)


def _write_summary(
    model: AutoencoderKL, dataset: object, cfg: AutoencoderRunConfig, out: Path, last: dict
) -> None:
    model.eval()
    psnr = dataset_psnr(_reconstruct(model), all_images(dataset))
    scale = model.config.scale_factor
    print(f"autoencoder: PSNR {psnr:.2f} dB, scale_factor {scale:.4g}", flush=True)
    summary = {"psnr_db": psnr, "scale_factor": scale, "steps": cfg.steps, "final": last}
    text = json.dumps(summary, indent=2)
    write_atomic(out / "summary.json", lambda p: p.write_text(text))
