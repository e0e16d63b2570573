"""Model configs checked against the tensors they describe, before any model is built.

A config read from a file (a diffusers ``config.json``, genmodels' safetensors metadata) sizes
the modules we build: ``layers_per_block=100000`` or a 10**6-wide channel count would spend
minutes and gigabytes constructing modules (and converting key names) before a strict load
finally noticed that the weights do not fit. So every config field that shapes modules is first
bounded (far above any released model) and then compared with the weights: level counts and
block counts with the key indices, widths with the tensor shapes. Errors name the config file,
the key and what the weights say instead.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping
from typing import Any

from torch import Tensor

from genmodels.checkpoints.io import CheckpointError
from genmodels.configs.autoencoder import AutoencoderConfig
from genmodels.configs.text import CLIPTextConfig
from genmodels.configs.unet import UNetConfig

__all__ = [
    "CLIP_LIMITS",
    "DIFFUSERS_UNET_LIMITS",
    "DIFFUSERS_VAE_LIMITS",
    "MAX_BLOCKS",
    "MAX_LEVELS",
    "MAX_WIDTH",
    "check_bound",
    "check_bounds",
    "check_diffusers_unet",
    "check_diffusers_vae",
    "check_hf_text",
    "check_text_config",
    "check_unet_config",
    "check_vae_config",
    "count_indices",
]

# Far above every released model (SD/XL widths <= 1280 x 4 channel mult, CLIP-bigG 5120-wide
# MLP and 32 layers, SDXL transformer depth 10) yet small enough to build in a blink.
MAX_WIDTH = 1 << 15
MAX_LEVELS = 8
MAX_BLOCKS = 64
MAX_LAYERS = 256
MAX_VOCAB = 1 << 20
MAX_POSITIONS = 1 << 16

StateDict = Mapping[str, Tensor]


def _short(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."


def check_bound(source: str, key: str, value: Any, low: int, high: int) -> None:
    """Every integer of ``value`` (an int or a flat/nested list of them) in [low, high]."""
    values = list(value) if isinstance(value, list | tuple) else [value]
    if len(values) > MAX_LEVELS * MAX_BLOCKS:
        raise CheckpointError(f"{source}: {key} has {len(values)} entries (too many)")
    for v in values:
        if isinstance(v, list | tuple):
            check_bound(source, key, v, low, high)
        elif isinstance(v, bool) or not isinstance(v, int) or not low <= v <= high:
            raise CheckpointError(
                f"{source}: {key}={_short(value)} is out of range (each value must be an "
                f"integer in [{low}, {high}])"
            )


def count_indices(sd: StateDict, pattern: str, source: str) -> int:
    """How many consecutive indices 0..n-1 the keys hold at ``pattern``'s group (0: none).
    A gap (``blocks.0``, ``blocks.99999``) is an error: counts never come from a lone key."""
    rx = re.compile(pattern)
    found = sorted({int(m.group(1)) for k in sd if (m := rx.match(k))})
    if found and found != list(range(len(found))):
        gaps = pattern.replace("\\", "").replace("(d+)", "N")
        raise CheckpointError(
            f"{source}: the indices N of {gaps} are not consecutive from 0 (found {_short(found)})"
        )
    return len(found)


def _tensor(sd: StateDict, key: str, source: str) -> Tensor:
    if key not in sd:
        raise CheckpointError(f"{source}: expected tensor {key!r} is missing")
    return sd[key]


def _match(source: str, key: str, declared: Any, measured: Any, evidence: str) -> None:
    if declared != measured:
        raise CheckpointError(
            f"{source}: {key}={_short(declared)} does not match the weights ({evidence} gives "
            f"{_short(measured)})"
        )


def _per_level(value: Any, levels: int, key: str, source: str) -> list[Any]:
    if isinstance(value, list | tuple):
        _match(source, f"{key} (entries)", len(value), levels, "the number of levels")
        return list(value)
    return [value] * levels


def check_bounds(
    cfg: Mapping[str, Any], limits: Iterable[tuple[str, int, int]], source: str
) -> None:
    """``check_bound`` on every key of ``cfg`` that ``limits`` names (missing/None skipped)."""
    for key, low, high in limits:
        if cfg.get(key) is not None:
            check_bound(source, key, cfg[key], low, high)


# --- diffusers folders (config.json beside the weights, diffusers key names) ---------------

DIFFUSERS_UNET_LIMITS = (
    ("block_out_channels", 1, MAX_WIDTH), ("layers_per_block", 1, MAX_BLOCKS),
    ("transformer_layers_per_block", 0, MAX_BLOCKS), ("in_channels", 1, MAX_WIDTH),
    ("out_channels", 1, MAX_WIDTH), ("cross_attention_dim", 1, MAX_WIDTH),
    ("attention_head_dim", 1, MAX_WIDTH), ("num_attention_heads", 1, MAX_WIDTH),
    ("projection_class_embeddings_input_dim", 1, MAX_WIDTH * 4),
    ("addition_time_embed_dim", 1, MAX_WIDTH), ("norm_num_groups", 1, MAX_WIDTH),
    ("sample_size", 1, MAX_POSITIONS), ("num_class_embeds", 1, MAX_VOCAB),
)  # fmt: skip


def _levels(cfg: Mapping[str, Any], default: list[int], source: str) -> list[int]:
    boc = cfg.get("block_out_channels", default)
    if not isinstance(boc, list | tuple) or not 1 <= len(boc) <= MAX_LEVELS:
        raise CheckpointError(
            f"{source}: block_out_channels={_short(boc)} must be a list of 1 to {MAX_LEVELS} widths"
        )
    return list(boc)


def check_diffusers_unet(cfg: Mapping[str, Any], sd: StateDict, source: str) -> None:
    """A ``UNet2DConditionModel`` config.json against its weights (diffusers keys)."""
    check_bounds(cfg, DIFFUSERS_UNET_LIMITS, source)
    boc = _levels(cfg, [320, 640, 1280, 1280], source)
    levels = count_indices(sd, r"down_blocks\.(\d+)\.", source)
    _match(source, "block_out_channels (levels)", len(boc), levels, "down_blocks.N")
    layers = _per_level(cfg.get("layers_per_block", 2), levels, "layers_per_block", source)
    depths = _per_level(cfg.get("transformer_layers_per_block", 1), levels,
                        "transformer_layers_per_block", source)  # fmt: skip
    for i in range(levels):
        width = _tensor(sd, f"down_blocks.{i}.resnets.0.conv1.weight", source).shape[0]
        _match(source, f"block_out_channels[{i}]", boc[i], width,
               f"down_blocks.{i}.resnets.0.conv1.weight")  # fmt: skip
        n = count_indices(sd, rf"down_blocks\.{i}\.resnets\.(\d+)\.", source)
        _match(source, "layers_per_block", layers[i], n, f"down_blocks.{i}.resnets.N")
        if isinstance(depths[i], int) and f"down_blocks.{i}.attentions.0.norm.weight" in sd:
            pattern = rf"down_blocks\.{i}\.attentions\.0\.transformer_blocks\.(\d+)\."
            found = count_indices(sd, pattern, source)
            _match(source, "transformer_layers_per_block", depths[i], found,
                   f"down_blocks.{i}.attentions.0.transformer_blocks.N")  # fmt: skip
    conv_in = _tensor(sd, "conv_in.weight", source)  # (C, in, 3, 3)
    _match(source, "in_channels", cfg.get("in_channels", 4), conv_in.shape[1], "conv_in.weight")
    conv_out = _tensor(sd, "conv_out.weight", source)  # (out, C, 3, 3)
    _match(source, "out_channels", cfg.get("out_channels", 4), conv_out.shape[0],
           "conv_out.weight")  # fmt: skip


DIFFUSERS_VAE_LIMITS = (
    ("block_out_channels", 1, MAX_WIDTH), ("layers_per_block", 1, MAX_BLOCKS),
    ("latent_channels", 1, MAX_WIDTH), ("in_channels", 1, MAX_WIDTH),
    ("out_channels", 1, MAX_WIDTH), ("norm_num_groups", 1, MAX_WIDTH),
    ("sample_size", 1, MAX_POSITIONS),
)  # fmt: skip


def check_diffusers_vae(cfg: Mapping[str, Any], sd: StateDict, source: str) -> None:
    """An ``AutoencoderKL`` config.json against its weights (diffusers keys)."""
    check_bounds(cfg, DIFFUSERS_VAE_LIMITS, source)
    boc = _levels(cfg, [64], source)
    levels = count_indices(sd, r"encoder\.down_blocks\.(\d+)\.", source)
    _match(source, "block_out_channels (levels)", len(boc), levels, "encoder.down_blocks.N")
    for i in range(levels):
        key = f"encoder.down_blocks.{i}.resnets.0.conv1.weight"
        _match(source, f"block_out_channels[{i}]", boc[i], _tensor(sd, key, source).shape[0], key)
    n = count_indices(sd, r"encoder\.down_blocks\.0\.resnets\.(\d+)\.", source)
    _match(source, "layers_per_block", cfg.get("layers_per_block", 1), n,
           "encoder.down_blocks.0.resnets.N")  # fmt: skip
    quant = _tensor(sd, "quant_conv.weight", source).shape[0]  # (2 latent, 2 latent, 1, 1)
    _match(source, "latent_channels", cfg.get("latent_channels", 4), quant // 2,
           "quant_conv.weight (2 x latent)")  # fmt: skip
    conv_in = _tensor(sd, "encoder.conv_in.weight", source)
    _match(source, "in_channels", cfg.get("in_channels", 3), conv_in.shape[1],
           "encoder.conv_in.weight")  # fmt: skip
    conv_out = _tensor(sd, "decoder.conv_out.weight", source)
    _match(source, "out_channels", cfg.get("out_channels", 3), conv_out.shape[0],
           "decoder.conv_out.weight")  # fmt: skip


CLIP_LIMITS = (
    ("vocab_size", 1, MAX_VOCAB), ("max_position_embeddings", 1, MAX_POSITIONS),
    ("hidden_size", 1, MAX_WIDTH), ("intermediate_size", 1, MAX_WIDTH * 4),
    ("num_hidden_layers", 1, MAX_LAYERS), ("num_attention_heads", 1, MAX_WIDTH),
    ("projection_dim", 1, MAX_WIDTH),
)  # fmt: skip
_CLIP_DEFAULTS = {"vocab_size": 49408, "max_position_embeddings": 77, "hidden_size": 512,
                  "intermediate_size": 2048, "num_hidden_layers": 12}  # fmt: skip


def check_hf_text(cfg: Mapping[str, Any], sd: StateDict, source: str) -> None:
    """A transformers ``CLIPTextConfig`` dict against HF CLIP text weights (``text_model.*``)."""
    check_bounds(cfg, CLIP_LIMITS, source)
    values = {k: cfg.get(k, default) for k, default in _CLIP_DEFAULTS.items()}
    tok = _tensor(sd, "text_model.embeddings.token_embedding.weight", source)  # (V, D)
    pos = _tensor(sd, "text_model.embeddings.position_embedding.weight", source)  # (T, D)
    fc1 = _tensor(sd, "text_model.encoder.layers.0.mlp.fc1.weight", source)  # (I, D)
    measured = {
        "vocab_size": (tok.shape[0], "text_model.embeddings.token_embedding.weight"),
        "hidden_size": (tok.shape[1], "text_model.embeddings.token_embedding.weight"),
        "max_position_embeddings": (
            pos.shape[0], "text_model.embeddings.position_embedding.weight"
        ),
        "intermediate_size": (fc1.shape[0], "text_model.encoder.layers.0.mlp.fc1.weight"),
        "num_hidden_layers": (
            count_indices(sd, r"text_model\.encoder\.layers\.(\d+)\.", source),
            "text_model.encoder.layers.N",
        ),
    }  # fmt: skip
    for key, (value, evidence) in measured.items():
        _match(source, key, values[key], value, evidence)


def check_text_config(cfg: CLIPTextConfig, sd: StateDict, source: str) -> None:
    """A CLIPTextConfig (e.g. from genmodels metadata) against HF-layout text weights."""
    fields = {k: getattr(cfg, k) for k, _, _ in CLIP_LIMITS}
    check_hf_text(fields, sd, source)


# --- LDM-layout configs (genmodels metadata) -----------------------------------------------


def check_unet_config(cfg: UNetConfig, sd: StateDict, source: str) -> None:
    """A UNetConfig against LDM UNet weights (``model.diffusion_model.`` stripped)."""
    check_bound(source, "unet.channel_mult", cfg.channel_mult, 1, MAX_WIDTH)
    check_bound(source, "unet.channel_mult (levels)", len(cfg.channel_mult), 1, MAX_LEVELS)
    check_bound(source, "unet.model_channels", cfg.model_channels, 1, MAX_WIDTH)
    check_bound(source, "unet.widths", [cfg.model_channels * m for m in cfg.channel_mult],
                1, MAX_WIDTH)  # fmt: skip
    check_bound(source, "unet.num_res_blocks", cfg.num_res_blocks, 1, MAX_BLOCKS)
    check_bound(source, "unet.transformer_depth", cfg.transformer_depth, 0, MAX_BLOCKS)
    check_bounds({"unet.transformer_depth_middle": cfg.transformer_depth_middle,
                     "unet.context_dim": cfg.context_dim,
                     "unet.adm_in_channels": cfg.adm_in_channels},
            (("unet.transformer_depth_middle", 0, MAX_BLOCKS),
             ("unet.context_dim", 1, MAX_WIDTH), ("unet.adm_in_channels", 1, MAX_WIDTH * 4)),
            source)  # fmt: skip
    conv_in = _tensor(sd, "input_blocks.0.0.weight", source)  # (mc, in, 3, 3)
    _match(source, "unet.model_channels", cfg.model_channels, conv_in.shape[0],
           "input_blocks.0.0.weight")  # fmt: skip
    _match(source, "unet.in_channels", cfg.in_channels, conv_in.shape[1],
           "input_blocks.0.0.weight")  # fmt: skip
    _match(source, "unet.out_channels", cfg.out_channels,
           _tensor(sd, "out.2.weight", source).shape[0], "out.2.weight")  # fmt: skip
    blocks = 1 + sum(cfg.res_blocks(lvl) for lvl in range(cfg.levels)) + cfg.levels - 1
    found = count_indices(sd, r"input_blocks\.(\d+)\.", source)
    _match(source, "unet.channel_mult/num_res_blocks", f"{blocks} input blocks",
           f"{found} input blocks", "input_blocks.N")  # fmt: skip
    idx = 1
    for lvl in range(cfg.levels):
        key = f"input_blocks.{idx}.0.out_layers.3.weight"
        width = cfg.model_channels * cfg.channel_mult[lvl]
        _match(source, f"unet width of level {lvl}", width, _tensor(sd, key, source).shape[0], key)
        depth = cfg.depth(lvl) if cfg.has_attention(lvl) else 0
        pattern = rf"input_blocks\.{idx}\.1\.transformer_blocks\.(\d+)\."
        found = count_indices(sd, pattern, source)
        where = f"input_blocks.{idx}.1.transformer_blocks.N"
        _match(source, f"unet.transformer_depth (level {lvl})", depth, found, where)
        idx += cfg.res_blocks(lvl) + 1


def check_vae_config(cfg: AutoencoderConfig, sd: StateDict, source: str) -> None:
    """An AutoencoderConfig against LDM VAE weights (``first_stage_model.`` stripped)."""
    check_bound(source, "vae.ch_mult (levels)", len(cfg.ch_mult), 1, MAX_LEVELS)
    check_bound(source, "vae.widths", [cfg.ch * m for m in cfg.ch_mult], 1, MAX_WIDTH)
    check_bound(source, "vae.num_res_blocks", cfg.num_res_blocks, 1, MAX_BLOCKS)
    for key in ("z_channels", "embed_dim", "in_channels", "out_ch"):
        check_bound(source, f"vae.{key}", getattr(cfg, key), 1, MAX_WIDTH)
    check_bound(source, "vae.resolution", cfg.resolution, 1, MAX_POSITIONS)
    conv_in = _tensor(sd, "encoder.conv_in.weight", source)  # (ch, in, 3, 3)
    _match(source, "vae.ch", cfg.ch, conv_in.shape[0], "encoder.conv_in.weight")
    _match(source, "vae.in_channels", cfg.in_channels, conv_in.shape[1], "encoder.conv_in.weight")
    levels = count_indices(sd, r"encoder\.down\.(\d+)\.", source)
    _match(source, "vae.ch_mult (levels)", len(cfg.ch_mult), levels, "encoder.down.N")
    for lvl in range(levels):
        key = f"encoder.down.{lvl}.block.0.conv2.weight"
        width = _tensor(sd, key, source).shape[0]
        _match(source, f"vae.ch_mult[{lvl}]", cfg.ch * cfg.ch_mult[lvl], width, key)
    n = count_indices(sd, r"encoder\.down\.0\.block\.(\d+)\.", source)
    _match(source, "vae.num_res_blocks", cfg.num_res_blocks, n, "encoder.down.0.block.N")
    z = _tensor(sd, "encoder.conv_out.weight", source).shape[0]
    _match(source, "vae.z_channels", cfg.z_channels * (2 if cfg.double_z else 1), z,
           "encoder.conv_out.weight")  # fmt: skip
    out = _tensor(sd, "decoder.conv_out.weight", source).shape[0]
    _match(source, "vae.out_ch", cfg.out_ch, out, "decoder.conv_out.weight")
