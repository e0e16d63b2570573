"""Latent diffusion on the built-in digits: KL autoencoder, then diffusion on its latents.

    python benchmarks/ldm_digits.py [--ae-steps 600] [--steps 1200] [--per-class 100]

Stage 1 trains a small f2 ``AutoencoderKL`` (8x8x1 -> 4x4x4) with L1 + KL (``task:
autoencoder``, the ``autoencoder-digits`` preset); its latent scale is set to 1 / std of the
latents (ldm ``scale_by_std``). Stage 2 trains the class-conditional ``digits-ldm`` preset on the
cached latents with the trainer. The generated images (decoded
through the VAE) are judged like ``genmodels demo``: accuracy of a classifier trained on the real
digits at recognising the intended class (target >= 90%) and the Fréchet distance in its
feature space, with the real-vs-real floor.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import torch

from genmodels.evaluation.digits_classifier import DigitsClassifier
from genmodels.pipelines.trained import sample_labels
from genmodels.training.autoencoder import train_autoencoder
from genmodels.training.diffusion import Trainer
from genmodels.training.images import save_grid
from genmodels.training.tasks import build_config


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

    # ---- stage 1: KL autoencoder (task: autoencoder, the autoencoder-digits preset) ---------
    ae_cfg = build_config(
        "autoencoder", None,
        [f"out_dir={out / 'ae'}", f"seed={args.seed}", f"steps={args.ae_steps}", "progress=false"],
        preset="autoencoder-digits",
    )  # fmt: skip
    train_autoencoder(ae_cfg, overwrite=True)
    summary = json.loads((out / "ae" / "summary.json").read_text())
    psnr, scale = summary["psnr_db"], summary["scale_factor"]
    t_ae = time.perf_counter() - t0
    print(f"autoencoder: {t_ae:.0f}s, PSNR {psnr:.2f} dB, scale_factor {scale:.4f}")

    # ---- stage 2: latent diffusion on its latents (the digits-ldm preset) -------------------
    overrides = [f"out_dir={out / 'ldm'}", f"seed={args.seed}", f"latent.vae_path={out / 'ae'}"]
    if args.steps is not None:
        overrides.append(f"steps={args.steps}")
    cfg = build_config("diffusion", None, overrides, preset="digits-ldm")
    trainer = Trainer(cfg, overwrite=True)
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
        "ae_final": summary.get("final", {}),
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
