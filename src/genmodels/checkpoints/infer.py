"""Architecture configs read off the tensors of a checkpoint (no config file needed).

Everything that shapes a weight is measured: widths, level counts, blocks per level, transformer
depths, context width, linear vs conv projections, the SDXL ``label_emb`` input width, CLIP
widths and layer counts. Two things leave no trace in the weights and follow the family's
released models (as A1111 and ComfyUI assume): attention heads (SD 1.x: 8 heads; SD 2.x / XL:
64-channel heads; CLIP: 64-channel heads) and, for the VAE, GroupNorm's 32 groups. When the
measured shapes equal one of our presets (including the tiny test ones), its head layout is used.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import asdict, fields, replace
from typing import Any

from torch import Tensor

from genmodels.checkpoints.config_checks import MAX_VOCAB, MAX_WIDTH, check_bound, count_indices
from genmodels.checkpoints.io import CheckpointError
from genmodels.configs.autoencoder import PRESETS as VAE_PRESETS
from genmodels.configs.autoencoder import AutoencoderConfig
from genmodels.configs.text import TEXT_PRESETS, CLIPTextConfig
from genmodels.configs.unet import UNET_PRESETS, UNetConfig
from genmodels.models.family import ModelFamily

StateDict = Mapping[str, Tensor]

# Fields that no tensor shape reveals.
_UNET_UNMEASURED = ("num_heads", "num_head_channels", "upcast_attention", "prediction_type")
_UNET_RUNTIME = ("dropout", "use_checkpoint", "conv_resample", "resblock_updown")


def _require(sd: StateDict, key: str, what: str) -> Tensor:
    """A tensor whose shape sizes the model: present, with no empty dimension (a zero-byte
    tensor of shape (10**6, 0, 3, 3) would otherwise declare a million channels for free) and
    no dimension above ``MAX_WIDTH * 4``."""
    if key not in sd:
        raise CheckpointError(f"{what}: expected tensor {key!r} is missing")
    shape = tuple(sd[key].shape)
    if 0 in shape or any(n > MAX_VOCAB for n in shape):
        raise CheckpointError(f"{what}: tensor {key!r} has an implausible shape {shape}")
    return sd[key]


def _max_index(sd: StateDict, pattern: str, what: str = "checkpoint") -> int:
    """How many consecutive indices 0..n-1 ``pattern`` captures over the keys (0 if none match);
    a gap is an error, so a count never comes from one crafted key name."""
    return count_indices(sd, pattern, what)


def _depth(sd: StateDict, block: str) -> int:
    return _max_index(sd, re.escape(block) + r"\.transformer_blocks\.(\d+)\.")


def infer_unet_config(
    sd: StateDict, family: ModelFamily, encoder_only: bool = False, what: str = "UNet"
) -> UNetConfig:
    """UNetConfig of an LDM-layout UNet state dict (``model.diffusion_model.`` stripped).
    ``encoder_only``: the tensors hold only the encoder half (a ControlNet); ``out_channels``
    is then set to ``in_channels``."""
    conv_in = _require(sd, "input_blocks.0.0.weight", what)  # (mc, in, 3, 3)
    mc, in_channels = conv_in.shape[0], conv_in.shape[1]
    widths: list[int] = []
    res_counts: list[int] = []
    depths: list[int] = []
    idx, count = 1, 0
    n_input = _max_index(sd, r"input_blocks\.(\d+)\.")
    while idx < n_input:
        if f"input_blocks.{idx}.0.op.weight" in sd:  # downsample ends a level
            res_counts.append(count)
            count = 0
        else:
            out = _require(sd, f"input_blocks.{idx}.0.out_layers.3.weight", what)
            if count == 0:
                widths.append(out.shape[0])
                depths.append(_depth(sd, f"input_blocks.{idx}.1"))
            count += 1
        idx += 1
    res_counts.append(count)
    check_bound(what, "measured widths", [mc, in_channels, *widths], 1, MAX_WIDTH)
    if not widths or len(widths) != len(res_counts) or any(w % mc for w in widths):
        raise CheckpointError(f"{what}: cannot read the level structure from input_blocks")
    levels = len(widths)
    attn_levels = [lvl for lvl in range(levels) if depths[lvl] > 0]
    attn_depths = {depths[lvl] for lvl in attn_levels}
    kw: dict[str, Any] = {
        "in_channels": in_channels,
        "out_channels": in_channels
        if encoder_only
        else _require(sd, "out.2.weight", what).shape[0],
        "model_channels": mc,
        "channel_mult": tuple(w // mc for w in widths),
        "num_res_blocks": res_counts[0] if len(set(res_counts)) == 1 else tuple(res_counts),
        "attention_resolutions": tuple(sorted((2**lvl for lvl in attn_levels), reverse=True)),
        "transformer_depth": attn_depths.pop() if len(attn_depths) == 1 else tuple(depths),
        "use_scale_shift_norm": sd["input_blocks.1.0.emb_layers.1.weight"].shape[0]
        == 2 * widths[0],
    }
    mid_depth = _depth(sd, "middle_block.1")
    last = kw["transformer_depth"]
    last = last[-1] if isinstance(last, tuple) else last
    kw["transformer_depth_middle"] = None if mid_depth == last else mid_depth
    k_proj = [v for k, v in sd.items() if k.endswith("attn2.to_k.weight")]
    kw["context_dim"] = k_proj[0].shape[1] if k_proj else None
    proj_in = [v for k, v in sd.items() if k.endswith(".proj_in.weight")]
    kw["use_linear_in_transformer"] = bool(proj_in) and proj_in[0].ndim == 2
    if "label_emb.0.0.weight" in sd:
        kw["num_classes"], kw["adm_in_channels"] = "sequential", sd["label_emb.0.0.weight"].shape[1]
    elif "label_emb.weight" in sd:
        kw["num_classes"] = sd["label_emb.weight"].shape[0]
    return _with_heads(kw, family)


def _unet_signature(cfg: UNetConfig) -> dict[str, Any]:
    skip = _UNET_UNMEASURED + _UNET_RUNTIME + ("in_channels", "out_channels")
    return {f.name: getattr(cfg, f.name) for f in fields(cfg) if f.name not in skip}


def _with_heads(kw: dict[str, Any], family: ModelFamily) -> UNetConfig:
    """Complete the measured fields with the unmeasurable ones (heads, attention upcast)."""
    probe = UNetConfig(**kw, num_heads=1)
    for preset in UNET_PRESETS.values():
        if _unet_signature(preset) == _unet_signature(probe):
            extra = {k: getattr(preset, k) for k in _UNET_UNMEASURED[:3]}
            return UNetConfig(**kw, **extra)
    if family == "sd1":
        extra = {"num_heads": 8}
    else:  # SD 2.x (attention upcast in fp32 by default, ldm ATTN_PRECISION) and SDXL
        extra = {"num_head_channels": 64, "upcast_attention": family == "sd2"}
    try:
        return UNetConfig(**kw, **extra)
    except ValueError as exc:
        raise CheckpointError(
            f"UNet: the {family} head layout {extra} does not fit the measured widths: {exc}"
        ) from exc


def unet_preset_name(cfg: UNetConfig) -> str | None:
    """Name of the preset with this architecture (exact first, then ignoring the prediction)."""
    exact = [name for name, preset in UNET_PRESETS.items() if preset == cfg]
    if exact:
        return exact[0]
    for name, preset in UNET_PRESETS.items():
        if replace(preset, prediction_type=cfg.prediction_type) == cfg:
            return name
    return None


def infer_vae_config(sd: StateDict, family: ModelFamily) -> AutoencoderConfig:
    """AutoencoderConfig of an LDM-layout VAE state dict (``first_stage_model.`` stripped)."""
    what = "VAE"
    conv_in = _require(sd, "encoder.conv_in.weight", what)  # (ch, in, 3, 3)
    ch = conv_in.shape[0]
    levels = _max_index(sd, r"encoder\.down\.(\d+)\.")
    if levels == 0:
        raise CheckpointError(f"{what}: no encoder.down.* tensors")
    mult = []
    for lvl in range(levels):
        w = _require(sd, f"encoder.down.{lvl}.block.0.conv2.weight", what).shape[0]
        check_bound(what, f"encoder.down.{lvl} width", w, 1, MAX_WIDTH)
        mult.append(w // ch)
    base = VAE_PRESETS["sdxl" if family.startswith("sdxl") else "sd"]
    resolution = base.resolution
    has_attn = [f"encoder.down.{lvl}.attn.0.norm.weight" in sd for lvl in range(levels)]
    attn = tuple(resolution // 2**lvl for lvl in range(levels) if has_attn[lvl])
    kw = {
        "ch": ch,
        "in_channels": conv_in.shape[1],
        "ch_mult": tuple(mult),
        "num_res_blocks": _max_index(sd, r"encoder\.down\.0\.block\.(\d+)\."),
        "attn_resolutions": attn,
        "z_channels": _require(sd, "encoder.conv_out.weight", what).shape[0] // 2,
        "embed_dim": _require(sd, "quant_conv.weight", what).shape[0] // 2,
        "out_ch": _require(sd, "decoder.conv_out.weight", what).shape[0],
    }
    try:
        return replace(base, **kw)
    except ValueError as exc:
        raise CheckpointError(f"{what}: measured shapes give an invalid config: {exc}") from exc


def infer_text_config(sd: StateDict, layout: str) -> CLIPTextConfig:
    """CLIPTextConfig of an HF-layout CLIP text state dict. ``layout`` is where the weights came
    from: "hf" (OpenAI CLIP, quick_gelu) or "openclip" (gelu)."""
    what = "CLIP text encoder"
    tok = _require(sd, "text_model.embeddings.token_embedding.weight", what)  # (V, D)
    pos = _require(sd, "text_model.embeddings.position_embedding.weight", what)  # (T, D)
    fc1 = _require(sd, "text_model.encoder.layers.0.mlp.fc1.weight", what)  # (I, D)
    proj = sd.get("text_projection.weight")  # (P, D)
    kw: dict[str, Any] = {
        "vocab_size": tok.shape[0],
        "max_position_embeddings": pos.shape[0],
        "hidden_size": tok.shape[1],
        "intermediate_size": fc1.shape[0],
        "num_hidden_layers": _max_index(sd, r"text_model\.encoder\.layers\.(\d+)\."),
        "hidden_act": "gelu" if layout == "openclip" else "quick_gelu",
        "projection_dim": None if proj is None else proj.shape[0],
    }
    check_bound(what, "measured widths", [kw["hidden_size"], kw["intermediate_size"]], 1,
                4 * MAX_WIDTH)  # fmt: skip
    for preset in TEXT_PRESETS.values():
        fields_ = asdict(preset)
        if all(fields_[k] == v for k, v in kw.items() if k != "projection_dim"):
            return replace(preset, projection_dim=kw["projection_dim"])
    heads = max(kw["hidden_size"] // 64, 1)
    try:
        return CLIPTextConfig(**kw, num_attention_heads=heads)
    except ValueError as exc:
        raise CheckpointError(f"{what}: measured shapes give an invalid config: {exc}") from exc
