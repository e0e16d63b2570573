"""KL autoencoder training presets: ``genmodels train --preset autoencoder-digits``.

``autoencoder-digits`` is stage 1 of ``benchmarks/ldm_digits.py`` with its defaults: the
``digits`` autoencoder (f2, 8x8x1 -> 4x4x4 latents) with L1 + 1e-6 KL (no LPIPS: no local
weights for 1-channel 8 px images; no GAN), 300 steps of 64 at lr 2e-3, seed 0, latents scaled
to unit std. It writes ``runs/ae-digits/vae.safetensors``, which the ``digits-ldm`` preset's
``latent.vae_path`` reads.
"""

from __future__ import annotations

from genmodels.configs.autoencoder import DIGITS
from genmodels.training.autoencoder_run import AutoencoderRunConfig
from genmodels.training.autoencoder_train import AutoencoderTrainConfig
from genmodels.training.vq_config import VQDataConfig

__all__ = ["AUTOENCODER_TRAIN_PRESETS", "get_autoencoder_train_config"]

_AUTOENCODER_DIGITS = AutoencoderRunConfig(
    model=DIGITS,
    data=VQDataConfig(dataset="digits", size=8),
    train=AutoencoderTrainConfig(steps=300, batch_size=64, lr=2e-3, log_every=100),
    sample_every=100,
    out_dir="runs/ae-digits",
)

AUTOENCODER_TRAIN_PRESETS: dict[str, AutoencoderRunConfig] = {
    "autoencoder-digits": _AUTOENCODER_DIGITS,
}


def get_autoencoder_train_config(name: str) -> AutoencoderRunConfig:
    """Return the autoencoder preset called ``name`` (see ``AUTOENCODER_TRAIN_PRESETS``)."""
    if name not in AUTOENCODER_TRAIN_PRESETS:
        raise ValueError(
            f"unknown autoencoder preset {name!r}; valid names: {sorted(AUTOENCODER_TRAIN_PRESETS)}"
        )
    return AUTOENCODER_TRAIN_PRESETS[name]
