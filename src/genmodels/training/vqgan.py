"""``task: vqgan``: stage 1 of the VQ models, a VQGAN (autoencoder + codebook + PatchGAN;
Esser et al. 2021) in one explicit loop: the codebook regulariser (``regularizers.py``) and the
shared autoencoder + discriminator step (``gan.py``). Forward passes can run under bf16 autocast
(``precision``); the quantiser computes distances and its loss in float32 either way. Codebook
usage and perplexity are accumulated over each log window. A Gumbel quantiser's temperature
follows ``gumbel_temperature`` (taming's ``temperature_scheduling``), set before each step.

The codebook's EMA statistics, k-means flag and dead-code counters are buffers of the model, so
its checkpoint carries them; under DDP they follow rank 0 (as DDP's ``broadcast_buffers``).

Writes ``<out_dir>/vqgan.safetensors`` + ``vqgan.json`` (``checkpoints/runs.py``) and
``vqgan_run.yaml``; resumable checkpoints in ``<out_dir>/checkpoints/``.
"""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from genmodels.checkpoints.runs import save_vqgan
from genmodels.models.quantize import codebook_usage as codebook_usage_of
from genmodels.models.quantize_gumbel import (
    GumbelQuantize,
    cosine_temperature,
    exponential_temperature,
)
from genmodels.models.vqgan import VQModel

from .autoencoder_loss import AutoencoderLoss
from .batches import BatchLoader, micro_batches
from .data import all_images, build_task_dataset
from .distributed import DistInfo, broadcast_buffers, init_distributed
from .ema import EMA
from .gan import gan_step
from .metrics import dataset_psnr
from .optim import OptimizerStep, autocast, make_optimizer
from .regularizers import vq_regularization
from .run import Run
from .task_configs import GumbelTemperatureConfig, VQGANRunConfig, dump_config

__all__ = ["LOG_FIELDS", "codebook_usage", "gumbel_temperature", "train_vqgan"]

LOG_FIELDS = ("step", "loss", "rec_loss", "codebook_loss", "g_loss", "d_weight", "d_loss",
              "logits_real", "logits_fake", "usage", "perplexity", "temperature", "lr",
              "grad_norm", "images_per_s")  # fmt: skip


def gumbel_temperature(cfg: GumbelTemperatureConfig, step: int) -> float:
    """The temperature of a Gumbel quantiser at training step ``step``."""
    if cfg.schedule == "cosine":
        span = (cfg.warm_up_steps, cfg.max_decay_steps)
        return cosine_temperature(step, *span, cfg.t_start, cfg.t_max, cfg.t_min)
    if cfg.schedule == "exponential":
        return exponential_temperature(step, cfg.t_start, cfg.rate, cfg.t_min)
    return cfg.t_start


def codebook_usage(sums: dict[str, Any], count: int) -> dict[str, float]:
    """Usage (fraction of codes picked) and perplexity of the window's code histogram."""
    counts = sums.get("counts")
    if counts is None or not int(counts.sum()):
        return {}
    p = counts.float() / counts.sum()
    return {"usage": float(codebook_usage_of(counts)),
            "perplexity": float(torch.exp(-(p * torch.log(p + 1e-10)).sum()))}  # fmt: skip


@torch.no_grad()
def reconstruct_psnr(model: VQModel, images: Tensor, batch_size: int = 256) -> tuple[float, Tensor]:
    """PSNR (dB) of the reconstructions of ``images`` and code counts (n_embed,) over them."""
    model.eval()
    device = next(model.parameters()).device
    counts = torch.zeros(model.config.n_embed, dtype=torch.long)

    def reconstruct(x: Tensor) -> Tensor:
        x_rec, _, info = model(x.to(device))
        counts.add_(info.counts.cpu())
        return x_rec

    return dataset_psnr(reconstruct, images, batch_size), counts


def train_vqgan(
    cfg: VQGANRunConfig,
    *,
    overwrite: bool = False,
    resume: bool = False,
    dist: DistInfo | None = None,
) -> Path:
    """Train stage 1 and write the VQGAN to ``cfg.out_dir``; returns that directory."""
    dist = dist or init_distributed(cfg.device)
    device = dist.device
    dataset = build_task_dataset(cfg.data)
    channels = dataset[0][0].shape[0]
    if channels != cfg.model.in_channels:
        raise ValueError(
            f"data.dataset={cfg.data.dataset!r} has {channels} channels, "
            f"model.in_channels={cfg.model.in_channels}"
        )
    run = Run(cfg, dump_config(cfg), overwrite=overwrite, dist=dist, fields=LOG_FIELDS)
    run.summaries.append(codebook_usage)
    torch.manual_seed(cfg.seed)  # weights; k-means start, dead-code restarts, Gumbel noise
    model = VQModel(cfg.model).to(device)
    loss_cfg = replace(cfg.loss, disc_in_channels=cfg.loss.disc_in_channels or channels)
    loss_fn = AutoencoderLoss(loss_cfg).to(device).train()
    trainable = [p for p in model.parameters() if p.requires_grad]
    opt_g = OptimizerStep(make_optimizer(trainable, cfg.optim), cfg.optim, cfg.steps, device,
                          cfg.precision)  # fmt: skip
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
    with run:
        model.train()
        while run.step < cfg.steps and not run.stopping:
            k = run.step
            x = loader.load(loader.indices(cfg.data.batch_size, k)[rows], k)[0].to(device)
            logs: dict[str, Any] = {}
            if isinstance(model.quantize, GumbelQuantize):  # taming's temperature_scheduling
                t = gumbel_temperature(cfg.gumbel_temperature, k)
                model.quantize.temperature = logs["temperature"] = t
            with autocast(device, cfg.precision):
                x_rec, q_loss, info = model(x)
            reg = vq_regularization(q_loss, cfg.regularizer.weight)
            loss, step_logs = gan_step(loss_fn, opt_g, opt_d, x, x_rec.float(), reg, k,
                                       model.get_last_layer(), dist,
                                       autocast(device, cfg.precision))  # fmt: skip
            broadcast_buffers(model, dist)
            if ema is not None:
                ema.update(model)
            run.end_step(logs | step_logs | {"counts": info.counts.cpu()}, loss=loss)
        run.finish()
        if run.is_main:
            _write_vqgan(ema.model if ema is not None else model, dataset, cfg, run)
    loader.close()
    return run.out_dir


def _write_vqgan(model: VQModel, dataset: Any, cfg: VQGANRunConfig, run: Run) -> None:
    psnr, counts = reconstruct_psnr(model, all_images(dataset))
    usage = float(codebook_usage_of(counts))
    print(f"vqgan: PSNR {psnr:.2f} dB, codebook usage {usage:.1%} of {len(counts)} codes")
    extra = {"psnr_db": psnr, "usage": usage, "steps": cfg.steps, "final": run.last_record}
    save_vqgan(run.out_dir, model.cpu(), extra=extra)
    dump_config(cfg, run.out_dir / "vqgan_run.yaml")
