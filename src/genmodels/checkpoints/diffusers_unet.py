"""Convert UNet weights between diffusers' ``UNet2DConditionModel`` and the LDM/sgm layout.

The LDM layout (``input_blocks.N.M``, ``middle_block.M``, ``output_blocks.N.M``) is what
:class:`genmodels.models.unet.UNetModel` uses. Both directions are pure functions over dicts of
tensors plus a :class:`UNetConfig`, which fixes the block structure. Transformer sub-keys
(``transformer_blocks.*``, ``norm``, ``proj_in``, ``proj_out``) are identical in both layouts;
ResBlocks rename ``in_layers.0/2 -> norm1/conv1``, ``emb_layers.1 -> time_emb_proj``,
``out_layers.0/3 -> norm2/conv2`` and ``skip_connection -> conv_shortcut``.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

from torch import Tensor

from genmodels.checkpoints.config_checks import DIFFUSERS_UNET_LIMITS, check_bounds
from genmodels.configs.unet import UNetConfig

# (LDM name, diffusers name) inside a ResBlock.
_RESNET_RENAMES = (
    ("in_layers.0", "norm1"),
    ("in_layers.2", "conv1"),
    ("emb_layers.1", "time_emb_proj"),
    ("out_layers.0", "norm2"),
    ("out_layers.3", "conv2"),
    ("skip_connection", "conv_shortcut"),
)


def _prefix_pairs(config: UNetConfig) -> list[tuple[str, str, bool]]:
    """(LDM prefix, diffusers prefix, is_resnet) for every module of the block structure."""
    if config.resblock_updown:
        raise ValueError("diffusers UNet conversion: resblock_updown=True is not supported")
    pairs: list[tuple[str, str, bool]] = [
        ("time_embed.0", "time_embedding.linear_1", False),
        ("time_embed.2", "time_embedding.linear_2", False),
        ("input_blocks.0.0", "conv_in", False),
        ("out.0", "conv_norm_out", False),
        ("out.2", "conv_out", False),
        ("middle_block.0", "mid_block.resnets.0", True),
        ("middle_block.1", "mid_block.attentions.0", False),
        ("middle_block.2", "mid_block.resnets.1", True),
    ]
    if config.num_classes == "sequential":
        pairs += [
            ("label_emb.0.0", "add_embedding.linear_1", False),
            ("label_emb.0.2", "add_embedding.linear_2", False),
        ]
    elif config.num_classes is not None:
        pairs.append(("label_emb", "class_embedding", False))
    idx = 1
    for level in range(config.levels):
        for j in range(config.res_blocks(level)):
            pairs.append((f"input_blocks.{idx}.0", f"down_blocks.{level}.resnets.{j}", True))
            if config.has_attention(level):
                pairs.append(
                    (f"input_blocks.{idx}.1", f"down_blocks.{level}.attentions.{j}", False)
                )
            idx += 1
        if level != config.levels - 1:
            pairs.append(
                (f"input_blocks.{idx}.0.op", f"down_blocks.{level}.downsamplers.0.conv", False)
            )
            idx += 1
    idx = 0
    for up, level in enumerate(reversed(range(config.levels))):
        for j in range(config.res_blocks(level) + 1):
            pairs.append((f"output_blocks.{idx}.0", f"up_blocks.{up}.resnets.{j}", True))
            has_attn = config.has_attention(level)
            if has_attn:
                pairs.append((f"output_blocks.{idx}.1", f"up_blocks.{up}.attentions.{j}", False))
            if level and j == config.res_blocks(level):
                ldm = f"output_blocks.{idx}.{2 if has_attn else 1}.conv"
                pairs.append((ldm, f"up_blocks.{up}.upsamplers.0.conv", False))
            idx += 1
    return pairs


def _ordered(pairs: list[tuple[str, str, bool]], to_ldm: bool) -> list[tuple[str, str, bool]]:
    # Longest prefix first so that "input_blocks.1.0" never matches inside "input_blocks.1.0.op".
    src_index, dst_index = (1, 0) if to_ldm else (0, 1)
    ordered = sorted(pairs, key=lambda p: len(p[src_index]), reverse=True)
    return [(p[src_index], p[dst_index], p[2]) for p in ordered]


def _rename(key: str, ordered: list[tuple[str, str, bool]], to_ldm: bool) -> str | None:
    for src, dst, is_resnet in ordered:
        if key.startswith(src + "."):
            rest = key[len(src) + 1 :]
            if is_resnet:
                for ldm_name, diff_name in _RESNET_RENAMES:
                    a, b = (diff_name, ldm_name) if to_ldm else (ldm_name, diff_name)
                    if rest.startswith(a + "."):
                        rest = b + rest[len(a) :]
                        break
            return f"{dst}.{rest}"
    return None


def unet_key_renamer(config: UNetConfig, to_ldm: bool) -> Callable[[str], str | None]:
    """The key rename of the two conversions below as a function of one key (a parameter key
    or a module path followed by ``.``-separated names); ``None`` for a key outside the block
    structure. LoRA files name UNet modules with it (``adapters.kohya_names``)."""
    ordered = _ordered(_prefix_pairs(config), to_ldm)
    return lambda key: _rename(key, ordered, to_ldm)


def _convert(
    state_dict: Mapping[str, Tensor], pairs: list[tuple[str, str, bool]], to_ldm: bool
) -> dict[str, Tensor]:
    ordered = _ordered(pairs, to_ldm)
    out: dict[str, Tensor] = {}
    for key, value in state_dict.items():
        name = _rename(key, ordered, to_ldm)
        if name is None:
            layout = "diffusers" if to_ldm else "LDM"
            raise ValueError(f"UNet conversion: unexpected {layout} key {key!r} for this config")
        out[name] = value
    return out


def diffusers_to_ldm_unet(
    state_dict: Mapping[str, Tensor], config: UNetConfig
) -> dict[str, Tensor]:
    """diffusers ``UNet2DConditionModel.state_dict()`` -> LDM keys (``model.diffusion_model.*``
    without the prefix), loadable into ``UNetModel(config)`` with ``strict=True``."""
    return _convert(state_dict, _prefix_pairs(config), to_ldm=True)


def ldm_to_diffusers_unet(
    state_dict: Mapping[str, Tensor], config: UNetConfig
) -> dict[str, Tensor]:
    """LDM UNet keys (prefix already stripped) -> diffusers ``UNet2DConditionModel`` keys."""
    return _convert(state_dict, _prefix_pairs(config), to_ldm=False)


_UNSUPPORTED = {
    "norm_num_groups": 32,
    "norm_eps": 1e-5,
    "act_fn": "silu",
    "flip_sin_to_cos": True,
    "freq_shift": 0,
    "time_embedding_type": "positional",
    "mid_block_type": "UNetMidBlock2DCrossAttn",
    "conv_in_kernel": 3,
    "conv_out_kernel": 3,
    "class_embeddings_concat": False,
    "encoder_hid_dim": None,
    "time_cond_proj_dim": None,
    "attention_type": "default",
    "dual_cross_attention": False,
    "resnet_skip_time_act": False,
    "center_input_sample": False,
}


def _per_level(value: Any, levels: int, name: str) -> list[Any]:
    if isinstance(value, (list, tuple)):
        if len(value) != levels:
            raise ValueError(
                f"diffusers config: {name} has {len(value)} entries, expected {levels}"
            )
        return list(value)
    return [value] * levels


def unet_config_from_diffusers(cfg: Mapping[str, Any]) -> UNetConfig:
    """Build the :class:`UNetConfig` of a diffusers ``UNet2DConditionModel`` config dict.

    ``prediction_type`` lives in the scheduler config in diffusers and is left at ``"eps"``.
    """
    check_bounds(cfg, DIFFUSERS_UNET_LIMITS, "diffusers config")
    for key, supported in _UNSUPPORTED.items():
        if key in cfg and cfg[key] != supported:
            raise ValueError(
                f"diffusers config: {key}={cfg[key]!r} unsupported (need {supported!r})"
            )
    boc = list(cfg.get("block_out_channels", (320, 640, 1280, 1280)))
    levels, mc = len(boc), boc[0]
    if any(ch % mc for ch in boc):
        raise ValueError(f"diffusers config: block_out_channels {boc} are not multiples of {mc}")
    down_types = list(cfg.get("down_block_types", ()))
    if len(down_types) != levels:
        raise ValueError(f"diffusers config: down_block_types has {len(down_types)} entries")
    attn = [t.startswith("CrossAttn") for t in down_types]
    heads = cfg.get("num_attention_heads") or cfg.get("attention_head_dim", 8)
    heads_l = _per_level(heads, levels, "attention_head_dim")
    if isinstance(heads, int):
        head_kw = {"num_heads": heads}
    else:
        widths = {boc[i] // heads_l[i] for i in range(levels) if attn[i] or i == levels - 1}
        if len(widths) != 1:
            raise ValueError(f"diffusers config: head counts {heads} give unequal head widths")
        head_kw = {"num_head_channels": widths.pop()}
    depth = cfg.get("transformer_layers_per_block", 1)
    depth_l = _per_level(depth, levels, "transformer_layers_per_block")
    if any(not isinstance(d, int) for d in depth_l):
        raise ValueError("diffusers config: nested transformer_layers_per_block is unsupported")
    context = cfg.get("cross_attention_dim", 1280)
    if isinstance(context, (list, tuple)):
        if len(set(context)) != 1:
            raise ValueError(
                f"diffusers config: per-block cross_attention_dim {context} unsupported"
            )
        context = context[0]
    only_cross = cfg.get("only_cross_attention", False)
    num_classes: int | str | None = cfg.get("num_class_embeds")
    adm = None
    if cfg.get("addition_embed_type") == "text_time" or cfg.get("class_embed_type") == "projection":
        num_classes, adm = "sequential", cfg["projection_class_embeddings_input_dim"]
    elif cfg.get("addition_embed_type") or cfg.get("class_embed_type"):
        raise ValueError("diffusers config: only addition_embed_type='text_time' is supported")
    nrb = cfg.get("layers_per_block", 2)
    transformer_depth = (
        tuple(d if a else 0 for d, a in zip(depth_l, attn))
        if isinstance(depth, (list, tuple))
        else depth
    )
    # Only record what differs from UNetConfig's defaults so that SD configs equal our presets.
    last_depth = (
        transformer_depth[-1] if isinstance(transformer_depth, tuple) else transformer_depth
    )
    only_cross_l = _per_level(only_cross, levels, "only_cross_attention")
    return UNetConfig(
        in_channels=cfg.get("in_channels", 4),
        out_channels=cfg.get("out_channels", 4),
        model_channels=mc,
        channel_mult=tuple(ch // mc for ch in boc),
        num_res_blocks=tuple(nrb) if isinstance(nrb, (list, tuple)) else nrb,
        attention_resolutions=tuple(2**i for i in reversed(range(levels)) if attn[i]),
        transformer_depth=transformer_depth,
        transformer_depth_middle=None if depth_l[-1] == last_depth else depth_l[-1],
        context_dim=context,
        use_linear_in_transformer=cfg.get("use_linear_projection", False),
        disable_self_attentions=tuple(only_cross_l) if any(only_cross_l) else None,
        # diffusers' UNetMidBlock2DCrossAttn keeps self-attention despite only_cross_attention.
        disable_middle_self_attn=False,
        num_classes=num_classes,
        adm_in_channels=adm,
        use_scale_shift_norm=cfg.get("resnet_time_scale_shift", "default") == "scale_shift",
        dropout=cfg.get("dropout", 0.0),
        upcast_attention=cfg.get("upcast_attention", False),
        **head_kw,
    )
