"""``build_pipeline``: a ``LatentDiffusionPipeline`` from presets with (seeded) random weights.

For tests and demos: ``build_pipeline()`` is a tiny SD 1.x-style model that generates a 32x32
image in milliseconds; ``model_type="sdxl-base"`` gives a tiny SDXL-style one (two embedders,
pooled text + size conditioning through ``y``); ``inpainting=True`` a 9-channel UNet.
"""

from __future__ import annotations

import os
from dataclasses import replace

import torch
from torch import Tensor, nn

from genmodels.checkpoints.components import Components, join_checkpoint
from genmodels.checkpoints.convert import save_checkpoint
from genmodels.checkpoints.detect import ModelSpec
from genmodels.configs.autoencoder import get_autoencoder_config
from genmodels.configs.text import encoder_preset
from genmodels.configs.unet import get_unet_config
from genmodels.diffusion.denoisers import DiscreteDenoiser
from genmodels.diffusion.schedules import make_alphas_cumprod
from genmodels.models.autoencoder_kl import AutoencoderKL
from genmodels.models.family import ModelFamily
from genmodels.models.text.encoders import TextEncoder
from genmodels.models.unet import UNetModel
from genmodels.pipelines.conditioning import SIZE_EMBED_DIM
from genmodels.pipelines.devices import resolve_device, resolve_dtype
from genmodels.pipelines.latent_diffusion import LatentDiffusionPipeline, LoadInfo

__all__ = ["build_pipeline", "save_pipeline"]

_MODEL_TYPES = ("sd1", "sd2", "sdxl-base", "sdxl-refiner")
_SIZE_IDS = {"sdxl-base": 6, "sdxl-refiner": 5}


def build_pipeline(
    unet_preset: str = "tiny",
    vae_preset: str = "tiny",
    text_preset: str | None = None,
    model_type: ModelFamily = "sd1",
    prediction: str = "eps",
    inpainting: bool = False,
    seed: int = 0,
    dtype: torch.dtype | str = torch.float32,
    device: torch.device | str = "cpu",
) -> LatentDiffusionPipeline:
    """Assemble a pipeline from presets, initialised from ``torch.manual_seed(seed)``.

    Layers that the architecture initialises to zero (ldm's ``zero_module``) get their default
    random init instead, so the untrained UNet responds to its input and conditioning.
    ``text_preset`` defaults to ``"tiny-sd1"`` / ``"tiny-sd2"`` / ``"tiny-sdxl"`` by model type
    (the refiner keeps only tiny-sdxl's second, pooled embedder, as SDXL's refiner).
    The UNet's ``context_dim`` (and SDXL's ``adm_in_channels``) are set to fit the text encoder.
    """
    device = resolve_device(device)
    dtype = resolve_dtype(dtype, device)
    if model_type not in _MODEL_TYPES:
        raise ValueError(f"unknown model_type {model_type!r}; valid: {list(_MODEL_TYPES)}")
    family = "sdxl" if model_type.startswith("sdxl") else model_type
    text_cfg = encoder_preset(text_preset or f"tiny-{family}")
    if model_type == "sdxl-refiner" and text_preset is None:  # the refiner: OpenCLIP-bigG only
        text_cfg = replace(text_cfg, embedders=text_cfg.embedders[1:])
    context_dim = sum(e.text.hidden_size for e in text_cfg.embedders)
    unet_cfg = replace(
        get_unet_config(unet_preset), context_dim=context_dim, prediction_type=prediction
    )
    if inpainting:
        unet_cfg = replace(unet_cfg, in_channels=9)
    if family == "sdxl":
        pooled = [e.text.projection_dim for e in text_cfg.embedders if e.with_pooled]
        if not pooled:
            raise ValueError(f"text preset {text_preset!r} has no pooled output for SDXL")
        adm = pooled[0] + SIZE_EMBED_DIM * _SIZE_IDS[model_type]
        unet_cfg = replace(unet_cfg, num_classes="sequential", adm_in_channels=adm)
    state = torch.random.get_rng_state()
    torch.manual_seed(seed)
    try:
        unet = _reset_zero_layers(UNetModel(unet_cfg))
        vae = AutoencoderKL(get_autoencoder_config(vae_preset))
        text_encoder = _shift_layer_norms(TextEncoder(text_cfg))
    finally:
        torch.random.set_rng_state(state)
    denoiser = DiscreteDenoiser(unet, make_alphas_cumprod(), prediction=prediction)
    info = LoadInfo(
        source=f"build_pipeline(unet={unet_preset!r}, vae={vae_preset!r}, seed={seed})",
        source_format="genmodels",
        description=f"random {model_type}" + (" inpainting" if inpainting else ""),
        unet_preset=unet_preset,
        prediction_source="argument",
    )
    pipe = LatentDiffusionPipeline(
        unet, vae, text_encoder, denoiser, model_type, prediction, dtype, torch.device(device), info
    )
    return pipe.to(device=device, dtype=dtype).eval()


def _reset_zero_layers(module: nn.Module) -> nn.Module:
    """Re-initialise the zero-initialised layers (ldm's ``zero_module`` output convs) with the
    layer's default init, so an untrained model's output depends on its input and conditioning."""
    for m in module.modules():
        weight = getattr(m, "weight", None)
        if isinstance(weight, Tensor) and hasattr(m, "reset_parameters") and not weight.any():
            m.reset_parameters()
    return module


def _shift_layer_norms(module: nn.Module, std: float = 0.1) -> nn.Module:
    """Random LayerNorm biases: at init every normalised token has mean exactly 0, which makes
    A1111's mean-restoring prompt weighting divide 0 by 0."""
    for m in module.modules():
        if isinstance(m, nn.LayerNorm) and m.bias is not None:
            nn.init.normal_(m.bias, std=std)
    return module


def save_pipeline(pipe: LatentDiffusionPipeline, path: str | os.PathLike) -> None:
    """Write ``pipe`` as a genmodels ``.safetensors`` (LDM/sgm keys, configs in the metadata)."""
    parts = Components(
        unet=pipe.unet.state_dict(),
        vae=pipe.vae.state_dict(),
        text=[e.model.state_dict() for e in pipe.text_encoder.embedders],
    )
    spec = ModelSpec(
        family=pipe.model_type, unet=pipe.unet.config, vae=pipe.vae.config,
        text=pipe.text_encoder.config, prediction=pipe.prediction, prediction_source="metadata",
        zero_terminal_snr=pipe.zero_terminal_snr, source_format="genmodels",
    )  # fmt: skip
    sd = {k: v.contiguous() for k, v in join_checkpoint(parts, pipe.model_type).items()}
    save_checkpoint(sd, spec, path)
