"""VQ training presets: ``genmodels train --preset vqgan-digits`` then ``transformer-digits``.

The digits pair reproduces ``benchmarks/vq_digits.py`` (the issue-6 quality bars): the
``digits`` VQGAN (16 px -> 4x4 codes from 64 EMA codes) with L1 + L2 + a small PatchGAN from
step 400 (no LPIPS: no local weights for 1-channel 16 px images), then a class-conditional
4-layer GPT over its codes, written into the same directory for ``genmodels vq-sample``.
``transformer-digits-lowres`` conditions on the codes of an 8 px copy of each digit instead
(``genmodels vq-sample --ckpt runs/vq-digits-lowres --cond-image digit.png``).
"""

from __future__ import annotations

from dataclasses import replace

from genmodels.configs.vqgan import DIGITS, EMOJI
from genmodels.training.transformer_train import TransformerTrainConfig
from genmodels.training.vq_config import (
    GPTModelConfig,
    TransformerRunConfig,
    VQDataConfig,
    VQGANRunConfig,
    small_image_loss,
)
from genmodels.training.vqgan_train import VQGANTrainConfig

__all__ = ["VQ_TRAIN_PRESETS", "get_vq_train_config"]


_VQGAN_DIGITS = VQGANRunConfig(
    model=DIGITS,
    data=VQDataConfig(dataset="digits", size=16),
    train=VQGANTrainConfig(
        steps=800, batch_size=64, lr=2e-3, bf16=True, log_every=100, loss=small_image_loss(1)
    ),
    out_dir="runs/vq-digits",
)
_TRANSFORMER_DIGITS = TransformerRunConfig(
    vqgan_dir="runs/vq-digits",
    data=VQDataConfig(dataset="digits", size=16),
    gpt=GPTModelConfig(n_layer=4, n_head=4, n_embd=128),
    train=TransformerTrainConfig(steps=1000, batch_size=128, lr=1e-3, log_every=300),
    n_classes=10,
)
# Digits from their 8 px low-resolution copies (taming's cond stage: the first stage encodes
# the 8 px copy to 2x2 codes, the GPT samples the 4x4 codes of the 16 px digit after them).
_TRANSFORMER_DIGITS_LOWRES = replace(
    _TRANSFORMER_DIGITS, n_classes=0, cond_image="lowres", out_dir="runs/vq-digits-lowres"
)
# Emoji at 32 px (RGB, 8x8 codes from 128 codes); the GPT is unconditional (group labels unused).
_VQGAN_EMOJI = VQGANRunConfig(
    model=EMOJI,
    data=VQDataConfig(dataset="emoji", size=32),
    train=VQGANTrainConfig(
        steps=2000, batch_size=32, lr=1e-3, bf16=True, log_every=100, loss=small_image_loss(3)
    ),
    out_dir="runs/vq-emoji",
)
_TRANSFORMER_EMOJI = TransformerRunConfig(
    vqgan_dir="runs/vq-emoji",
    data=VQDataConfig(dataset="emoji", size=32),
    gpt=GPTModelConfig(n_layer=4, n_head=4, n_embd=128),
    train=TransformerTrainConfig(steps=2000, batch_size=64, lr=1e-3, log_every=200),
    n_classes=0,
)

VQ_TRAIN_PRESETS: dict[str, VQGANRunConfig | TransformerRunConfig] = {
    "vqgan-digits": _VQGAN_DIGITS,
    "transformer-digits": _TRANSFORMER_DIGITS,
    "transformer-digits-lowres": _TRANSFORMER_DIGITS_LOWRES,
    "vqgan-emoji": _VQGAN_EMOJI,
    "transformer-emoji": _TRANSFORMER_EMOJI,
}


def get_vq_train_config(name: str) -> VQGANRunConfig | TransformerRunConfig:
    """Return the VQ preset called ``name`` (see ``VQ_TRAIN_PRESETS``)."""
    if name not in VQ_TRAIN_PRESETS:
        raise ValueError(f"unknown VQ preset {name!r}; valid names: {sorted(VQ_TRAIN_PRESETS)}")
    return VQ_TRAIN_PRESETS[name]
