"""Tiny random-weight Stable Diffusion models in the real diffusers layout, built with the
reference libraries (diffusers ``UNet2DConditionModel`` / ``AutoencoderKL``, transformers
``CLIPTextModel(WithProjection)``) and saved with their own ``save_pretrained``."""

from __future__ import annotations

import json
from dataclasses import dataclass, replace
from pathlib import Path

import pytest
import torch

from genmodels.checkpoints.diffusers_configs import (
    scheduler_config,
    text_config_to_hf,
    unet_config_to_diffusers,
    vae_config_to_diffusers,
)
from genmodels.configs.autoencoder import get_autoencoder_config
from genmodels.configs.text import TEXT_PRESETS, CLIPTextConfig
from genmodels.configs.unet import UNetConfig

diffusers = pytest.importorskip("diffusers")
transformers = pytest.importorskip("transformers")

CLIP = replace(TEXT_PRESETS["tiny-clip"], projection_dim=None)  # hidden 32
BIGG = TEXT_PRESETS["tiny-openclip"]  # hidden 48, projection 24 (pooled)
_XL = dict(
    model_channels=64,
    channel_mult=(1, 2),
    num_res_blocks=1,
    num_head_channels=64,
    use_linear_in_transformer=True,
    num_classes="sequential",
)


@dataclass(frozen=True)
class Family:
    unet: UNetConfig
    texts: tuple[CLIPTextConfig, ...]  # in diffusers folder order
    text_folders: tuple[str, ...]
    pooled: tuple[bool, ...]


FAMILIES = {
    "sd1": Family(
        UNetConfig(model_channels=32, channel_mult=(1, 2), num_res_blocks=1,
                   attention_resolutions=(2, 1), num_heads=8, context_dim=32),
        (CLIP,), ("text_encoder",), (False,),
    ),
    "sd2": Family(
        UNetConfig(model_channels=64, channel_mult=(1, 2), num_res_blocks=1,
                   attention_resolutions=(2, 1), num_head_channels=64, context_dim=48,
                   use_linear_in_transformer=True, upcast_attention=True),
        (replace(BIGG, projection_dim=None),), ("text_encoder",), (False,),
    ),
    "sdxl-base": Family(
        UNetConfig(**_XL, attention_resolutions=(2,), transformer_depth=(0, 2),
                   context_dim=80, adm_in_channels=24 + 6 * 256),
        (CLIP, BIGG), ("text_encoder", "text_encoder_2"), (False, True),
    ),
    "sdxl-refiner": Family(
        UNetConfig(**_XL, attention_resolutions=(2,), transformer_depth=2, context_dim=48,
                   adm_in_channels=24 + 5 * 256),
        (BIGG,), ("text_encoder_2",), (True,),
    ),
}  # fmt: skip
VAE = get_autoencoder_config("tiny")  # ch 32, f4


def randomize(module: torch.nn.Module, seed: int, norm_bias: float = 0.02) -> None:
    """Non-trivial random weights (the UNet's zero-initialised output conv included)."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in module.named_parameters():
            noise = torch.randn(p.shape, generator=gen)
            is_norm = "norm" in name or "ln_" in name
            if is_norm and name.endswith("weight"):
                p.copy_(1 + 0.1 * noise)
            else:
                p.copy_(noise * (norm_bias if is_norm else 0.1))


def build_reference(family: str, root: Path, seed: int = 0, in_channels: int = 4,
                    prediction: str = "eps") -> dict[str, torch.nn.Module]:  # fmt: skip
    """Save a diffusers folder for ``family`` at ``root``; return the reference modules."""
    fam = FAMILIES[family]
    unet_cfg = replace(fam.unet, in_channels=in_channels)
    unet = diffusers.UNet2DConditionModel(**_kwargs(unet_config_to_diffusers(unet_cfg)))
    vae = diffusers.AutoencoderKL(**_kwargs(vae_config_to_diffusers(VAE)))
    randomize(unet, seed)
    randomize(vae, seed + 1)
    unet.save_pretrained(root / "unet")
    vae.save_pretrained(root / "vae")
    modules: dict[str, torch.nn.Module] = {"unet": unet.eval(), "vae": vae.eval()}
    index = {"_class_name": "StableDiffusionPipeline", "unet": ["diffusers", "x"]}
    for i, (cfg, folder, pooled) in enumerate(zip(fam.texts, fam.text_folders, fam.pooled)):
        hf_cfg = transformers.CLIPTextConfig(**_kwargs(text_config_to_hf(cfg, pooled)))
        cls = transformers.CLIPTextModelWithProjection if pooled else transformers.CLIPTextModel
        model = cls(hf_cfg)
        randomize(model, seed + 2 + i)
        model.save_pretrained(root / folder)
        modules[folder] = model.eval()
        index[folder] = ["transformers", cls.__name__]
    (root / "scheduler").mkdir()
    sched = scheduler_config(prediction)
    (root / "scheduler" / "scheduler_config.json").write_text(json.dumps(sched))
    (root / "model_index.json").write_text(json.dumps(index))
    return modules


def _kwargs(config: dict) -> dict:
    skip = ("_class_name", "_diffusers_version", "architectures", "model_type")
    return {k: v for k, v in config.items() if k not in skip}
