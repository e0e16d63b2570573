"""Our configs <-> the ``config.json`` files of a diffusers Stable Diffusion folder.

UNet: ``UNet2DConditionModel`` (reading is ``diffusers_unet.unet_config_from_diffusers``).
VAE: ``AutoencoderKL`` (``block_out_channels``, ``layers_per_block``, ``latent_channels``,
``scaling_factor``). Text: transformers ``CLIPTextConfig``. Scheduler: the DDPM training schedule
SD uses (scaled_linear, 0.00085 .. 0.012, 1000 steps) with ``prediction_type``.
"""

from __future__ import annotations

from dataclasses import replace
from typing import Any

from genmodels.checkpoints.config_checks import CLIP_LIMITS, DIFFUSERS_VAE_LIMITS, check_bounds
from genmodels.checkpoints.io import CheckpointError
from genmodels.configs.autoencoder import PRESETS as VAE_PRESETS
from genmodels.configs.autoencoder import AutoencoderConfig
from genmodels.configs.text import CLIPTextConfig
from genmodels.configs.unet import UNetConfig
from genmodels.models.family import ModelFamily

DIFFUSERS_VERSION = "0.42.1"
ADDITION_TIME_EMBED_DIM = 256  # SDXL base and refiner: sgm ConcatTimestepEmbedderND(outdim=256)
_PREDICTION_TO_DIFFUSERS = {"eps": "epsilon", "v": "v_prediction"}
_PREDICTION_FROM_DIFFUSERS = {v: k for k, v in _PREDICTION_TO_DIFFUSERS.items()}


def _has_attention(cfg: UNetConfig, level: int) -> bool:
    return 2**level in cfg.attention_resolutions and cfg.depth(level) > 0


def unet_config_to_diffusers(cfg: UNetConfig) -> dict[str, Any]:
    """``UNet2DConditionModel`` config of a UNetConfig (inverse of
    ``unet_config_from_diffusers``)."""
    if cfg.resblock_updown or cfg.use_scale_shift_norm or cfg.disable_self_attentions:
        raise ValueError(
            "diffusers UNet config: resblock_updown, scale-shift norm and cross-only attention "
            "are not supported"
        )
    if cfg.num_classes is not None and cfg.num_classes != "sequential":
        raise ValueError("diffusers UNet config: class-label UNets are not supported")
    levels = cfg.levels
    widths = [cfg.model_channels * m for m in cfg.channel_mult]
    attn = [_has_attention(cfg, lvl) for lvl in range(levels)]
    if cfg.num_heads != -1:
        heads: int | list[int] = cfg.num_heads  # diffusers' attention_head_dim = head count
    else:
        heads = [w // cfg.num_head_channels for w in widths]
    depth = cfg.transformer_depth
    out: dict[str, Any] = {
        "_class_name": "UNet2DConditionModel",
        "_diffusers_version": DIFFUSERS_VERSION,
        "act_fn": "silu",
        "attention_head_dim": heads,
        "block_out_channels": widths,
        "center_input_sample": False,
        "cross_attention_dim": cfg.context_dim,
        "down_block_types": ["CrossAttnDownBlock2D" if a else "DownBlock2D" for a in attn],
        "downsample_padding": 1,
        "flip_sin_to_cos": True,
        "freq_shift": 0,
        "in_channels": cfg.in_channels,
        "layers_per_block": cfg.num_res_blocks
        if isinstance(cfg.num_res_blocks, int)
        else list(cfg.num_res_blocks),
        "mid_block_scale_factor": 1,
        "norm_eps": 1e-5,
        "norm_num_groups": 32,
        "out_channels": cfg.out_channels,
        "sample_size": 128 if cfg.num_classes == "sequential" else 64,
        "transformer_layers_per_block": depth
        if isinstance(depth, int)
        else [max(d, 1) for d in depth],
        "up_block_types": ["CrossAttnUpBlock2D" if a else "UpBlock2D" for a in reversed(attn)],
        "upcast_attention": cfg.upcast_attention,
        "use_linear_projection": cfg.use_linear_in_transformer,
    }
    if cfg.transformer_depth_middle is not None:
        raise ValueError(
            "diffusers UNet config: a separate middle transformer depth is unsupported"
        )
    if cfg.num_classes == "sequential":
        out.update(
            addition_embed_type="text_time",
            addition_time_embed_dim=ADDITION_TIME_EMBED_DIM,
            projection_class_embeddings_input_dim=cfg.adm_in_channels,
        )
    return out


def vae_config_to_diffusers(cfg: AutoencoderConfig) -> dict[str, Any]:
    """diffusers ``AutoencoderKL`` config of an AutoencoderConfig."""
    if cfg.attn_resolutions or cfg.embed_dim != cfg.z_channels or cfg.num_groups != 32:
        raise ValueError("diffusers VAE config: needs no level attention, embed_dim == "
                         "z_channels and 32 GroupNorm groups")  # fmt: skip
    levels = len(cfg.ch_mult)
    return {
        "_class_name": "AutoencoderKL",
        "_diffusers_version": DIFFUSERS_VERSION,
        "act_fn": "silu",
        "block_out_channels": [cfg.ch * m for m in cfg.ch_mult],
        "down_block_types": ["DownEncoderBlock2D"] * levels,
        "force_upcast": cfg.force_upcast,
        "in_channels": cfg.in_channels,
        "latent_channels": cfg.z_channels,
        "layers_per_block": cfg.num_res_blocks,
        "norm_num_groups": cfg.num_groups,
        "out_channels": cfg.out_ch,
        "sample_size": cfg.resolution,
        "scaling_factor": cfg.scale_factor,
        "shift_factor": cfg.shift_factor or None,
        "up_block_types": ["UpDecoderBlock2D"] * levels,
    }


def vae_config_from_diffusers(data: dict[str, Any], family: ModelFamily) -> AutoencoderConfig:
    """AutoencoderConfig of a diffusers ``AutoencoderKL`` config dict (its sizes bounded; the
    comparison with the weights is ``config_checks.check_diffusers_vae``)."""
    check_bounds(data, DIFFUSERS_VAE_LIMITS, "diffusers VAE config")
    boc = list(data.get("block_out_channels", (64,)))
    ch = boc[0]
    if any(w % ch for w in boc):
        raise CheckpointError(
            f"diffusers VAE config: block_out_channels {boc} not multiples of {ch}"
        )
    if not data.get("use_quant_conv", True) or not data.get("use_post_quant_conv", True):
        raise CheckpointError("diffusers VAE config: VAEs without quant_conv are not supported")
    base = VAE_PRESETS["sdxl" if family.startswith("sdxl") else "sd"]
    latent = data.get("latent_channels", 4)
    return replace(
        base,
        ch=ch,
        ch_mult=tuple(w // ch for w in boc),
        num_res_blocks=data.get("layers_per_block", 1),
        in_channels=data.get("in_channels", 3),
        out_ch=data.get("out_channels", 3),
        z_channels=latent,
        embed_dim=latent,
        num_groups=data.get("norm_num_groups", 32),
        resolution=data.get("sample_size", base.resolution),
        scale_factor=data.get("scaling_factor", base.scale_factor),
        shift_factor=data.get("shift_factor") or 0.0,
        force_upcast=data.get("force_upcast", base.force_upcast),
    )


def text_config_to_hf(cfg: CLIPTextConfig, with_projection: bool) -> dict[str, Any]:
    """transformers ``CLIPTextConfig`` dict (``CLIPTextModel`` or ``...WithProjection``)."""
    return {
        "architectures": ["CLIPTextModelWithProjection" if with_projection else "CLIPTextModel"],
        "attention_dropout": 0.0,
        "bos_token_id": 49406,
        "eos_token_id": 49407,
        "hidden_act": cfg.hidden_act,
        "hidden_size": cfg.hidden_size,
        "initializer_factor": 1.0,
        "initializer_range": 0.02,
        "intermediate_size": cfg.intermediate_size,
        "layer_norm_eps": cfg.layer_norm_eps,
        "max_position_embeddings": cfg.max_position_embeddings,
        "model_type": "clip_text_model",
        "num_attention_heads": cfg.num_attention_heads,
        "num_hidden_layers": cfg.num_hidden_layers,
        "pad_token_id": 1,
        "projection_dim": cfg.projection_dim or cfg.hidden_size,
        "vocab_size": cfg.vocab_size,
    }


def text_config_from_hf(data: dict[str, Any], has_projection: bool) -> CLIPTextConfig:
    """CLIPTextConfig of a transformers config dict (projection only if its weight exists)."""
    act = data.get("hidden_act", "quick_gelu")
    check_bounds(data, CLIP_LIMITS, "text encoder config.json")
    try:
        return CLIPTextConfig(
            vocab_size=data.get("vocab_size", 49408),
            max_position_embeddings=data.get("max_position_embeddings", 77),
            hidden_size=data.get("hidden_size", 512),
            intermediate_size=data.get("intermediate_size", 2048),
            num_hidden_layers=data.get("num_hidden_layers", 12),
            num_attention_heads=data.get("num_attention_heads", 8),
            hidden_act=act,
            layer_norm_eps=data.get("layer_norm_eps", 1e-5),
            projection_dim=data.get("projection_dim", 512) if has_projection else None,
        )
    except ValueError as exc:
        raise CheckpointError(f"text encoder config.json: {exc}") from exc


def scheduler_config(prediction: str, zero_terminal_snr: bool = False) -> dict[str, Any]:
    """``EulerDiscreteScheduler`` config with SD's training schedule."""
    return {
        "_class_name": "EulerDiscreteScheduler",
        "_diffusers_version": DIFFUSERS_VERSION,
        "beta_end": 0.012,
        "beta_schedule": "scaled_linear",
        "beta_start": 0.00085,
        "interpolation_type": "linear",
        "num_train_timesteps": 1000,
        "prediction_type": _PREDICTION_TO_DIFFUSERS[prediction],
        "rescale_betas_zero_snr": zero_terminal_snr,
        "steps_offset": 1,
        "timestep_spacing": "leading",
        "use_karras_sigmas": False,
    }


def prediction_from_scheduler(data: dict[str, Any]) -> tuple[str, bool]:
    """(prediction, zero_terminal_snr) of a diffusers scheduler config."""
    name = data.get("prediction_type", "epsilon")
    if name not in _PREDICTION_FROM_DIFFUSERS:
        raise CheckpointError(
            f"scheduler prediction_type {name!r} unsupported; "
            f"valid: {list(_PREDICTION_FROM_DIFFUSERS)}"
        )
    return _PREDICTION_FROM_DIFFUSERS[name], bool(data.get("rescale_betas_zero_snr", False))
