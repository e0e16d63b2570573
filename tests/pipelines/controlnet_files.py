"""Tiny random ControlNets that fit the tiny ``build_pipeline`` models, written as the files
users have: ldm single files (with / without ``control_model.``, safetensors / pickle) and
diffusers folders saved by diffusers' own ``ControlNetModel.save_pretrained``."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import torch
from safetensors.torch import save_file

from genmodels.checkpoints.diffusers_configs import unet_config_to_diffusers
from genmodels.configs.controlnet import ControlNetConfig
from genmodels.models.controlnet import ControlNetModel
from genmodels.pipelines.latent_diffusion import LatentDiffusionPipeline

HINT = (8, 16, 32)  # the tiny VAE downsamples by 4: two stride-2 stages


def controlnet_for(pipe: LatentDiffusionPipeline, seed: int = 0) -> ControlNetModel:
    """A ControlNet of ``pipe``'s encoder with random weights everywhere (zero convs too)."""
    torch.manual_seed(seed)
    latent = pipe.vae.config.embed_dim  # an inpainting UNet's ControlNet sees the latent only
    unet = replace(pipe.unet.config, in_channels=latent, out_channels=latent)
    model = ControlNetModel(ControlNetConfig(unet, hint_block_channels=HINT))
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.1 * torch.randn(p.shape, generator=gen))
    return model.eval()


def save_ldm(model: ControlNetModel, path: Path, prefix: str = "control_model.") -> Path:
    sd = {prefix + k: v.contiguous() for k, v in model.state_dict().items()}
    if path.suffix == ".safetensors":
        save_file(sd, str(path))
    else:
        torch.save(sd, path)
    return path


def save_diffusers(model: ControlNetModel, folder: Path) -> Path:
    """The same weights as diffusers' ControlNetModel, saved by diffusers itself."""
    import diffusers

    from genmodels.checkpoints.controlnet_keys import ldm_to_diffusers_controlnet

    cfg = unet_config_to_diffusers(model.config.unet)
    keep = ("in_channels", "down_block_types", "block_out_channels", "layers_per_block",
            "cross_attention_dim", "attention_head_dim", "transformer_layers_per_block",
            "use_linear_projection", "upcast_attention", "addition_embed_type",
            "addition_time_embed_dim", "projection_class_embeddings_input_dim",
            "num_attention_heads", "only_cross_attention")  # fmt: skip
    kw = {k: v for k, v in cfg.items() if k in keep}
    ref = diffusers.ControlNetModel(conditioning_embedding_out_channels=HINT, **kw)
    ref.load_state_dict(ldm_to_diffusers_controlnet(model.state_dict(), model.config), strict=True)
    ref.save_pretrained(folder)
    return folder
