"""Latent diffusion on the built-in digits: KL autoencoder, then diffusion on its latents.

    python benchmarks/ldm_digits.py [--ae-steps 600] [--steps 1200] [--per-class 100]

Stage 1 trains a small f2 ``AutoencoderKL`` (8x8x1 -> 4x4x4) with L1 + KL; its latent scale is
set to 1 / std of the latents (ldm ``scale_by_std``). Stage 2 trains the class-conditional
``digits-ldm`` preset on the cached latents with the trainer. The generated images (decoded
through the VAE) are judged like ``genmodels demo``: accuracy of a classifier trained on the real
digits at recognising the intended class (target >= 90%) and the Fréchet distance in its
feature space, with the real-vs-real floor.
"""

from __future__ import annotations

import argparse
import json
import time
from dataclasses import replace
from pathlib import Path

import torch

from genmodels.configs.train import LDM_DIGITS_AUTOENCODER, get_train_config
from genmodels.data.digits import load_digits_tensor
from genmodels.evaluation.digits_classifier import DigitsClassifier
from genmodels.models.autoencoder_kl import AutoencoderKL
from genmodels.training.autoencoder_train import (
    AutoencoderTrainConfig,
    latent_scale_factor,
    save_autoencoder_kl,
    train_autoencoder_kl,
)
from genmodels.training.config import load_config
from genmodels.training.images import save_grid
from genmodels.training.sampling import sample_labels
from genmodels.training.trainer import Trainer


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--out", default="runs/ldm-digits")
    p.add_argument("--ae-steps", type=int, default=300)
    p.add_argument("--steps", type=int, default=None, help="diffusion steps (preset's)")
    p.add_argument("--per-class", type=int, default=100)
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args()
    out = Path(args.out)
    t0 = time.perf_counter()

    # ---- stage 1: KL autoencoder ------------------------------------------------------------
    cfg = load_config(None, [f"out_dir={out}", f"seed={args.seed}"], get_train_config("digits-ldm"))
    if args.steps is not None:
        cfg = replace(cfg, steps=args.steps)
    images, _ = load_digits_tensor(cfg.data.size)  # (N, 1, 8, 8) in [-1, 1]
    torch.manual_seed(args.seed)
    vae = AutoencoderKL(LDM_DIGITS_AUTOENCODER)
    ae_cfg = AutoencoderTrainConfig(steps=args.ae_steps, batch_size=64, lr=2e-3, log_every=100)
    records = train_autoencoder_kl(
        vae, images, ae_cfg, callback=lambda s, r: print(f"ae step {s}: {r}", flush=True)
    )
    with torch.no_grad():
        rec = vae(images, sample_posterior=False)[0].clamp(-1, 1)
    psnr = 10 * torch.log10(4.0 / (rec - images).square().mean()).item()
    scale = latent_scale_factor(vae, images)
    vae.config = replace(vae.config, scale_factor=scale)
    save_autoencoder_kl(out / "vae.safetensors", vae)
    t_ae = time.perf_counter() - t0
    print(f"autoencoder: {t_ae:.0f}s, PSNR {psnr:.2f} dB, scale_factor {scale:.4f}")

    # ---- stage 2: latent diffusion ----------------------------------------------------------
    cfg = replace(cfg, latent=replace(cfg.latent, vae_path=str(out / "vae.safetensors")))
    trainer = Trainer(cfg)
    trainer.fit()
    t_ldm = time.perf_counter() - t0 - t_ae

    labels = torch.arange(10).repeat_interleave(args.per_class)  # (10 * per_class,)
    latents = sample_labels(
        trainer.sampling_denoiser(), labels, (len(labels), *trainer.sample_shape), trainer.null,
        steps=cfg.sample_steps, guidance_scale=cfg.guidance_scale, seed=cfg.seed,
    )  # fmt: skip
    samples = trainer.decode(latents)  # (N, 1, 8, 8)
    t_sample = time.perf_counter() - t0 - t_ae - t_ldm
    first = samples.view(10, args.per_class, *samples.shape[1:])[:, :10].flatten(0, 1)
    save_grid(first, out / "samples.png", nrow=min(10, args.per_class), scale=4)

    report = DigitsClassifier(size=cfg.data.size, seed=cfg.seed).evaluate(samples, labels)
    figures = {
        "accuracy": report.accuracy,
        "fd": report.fd,
        "fd_real_vs_real": report.fd_real,
        "classifier_test_accuracy": report.classifier_test_accuracy,
        "ae_psnr_db": psnr,
        "ae_final": records[-1] if records else {},
        "scale_factor": scale,
        "ae_s": t_ae,
        "ldm_train_s": t_ldm,
        "sample_s": t_sample,
        "total_s": time.perf_counter() - t0,
        "ae_steps": args.ae_steps,
        "ldm_steps": cfg.steps,
    }
    (out / "report.json").write_text(json.dumps(figures, indent=2))
    print(f"ldm_digits: {report}")
    print(json.dumps(figures, indent=2))


if __name__ == "__main__":
    main()
