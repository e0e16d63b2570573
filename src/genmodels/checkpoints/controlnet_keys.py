"""ControlNet key conversion between diffusers' ``ControlNetModel`` and the ldm ``cldm`` layout.

The encoder half (``time_embedding``, ``add_embedding``, ``conv_in``, ``down_blocks``,
``mid_block``) has the UNet's names, converted by ``checkpoints.diffusers_unet``; the rest is
ControlNet's own:

    controlnet_cond_embedding.conv_in      input_hint_block.0
    controlnet_cond_embedding.blocks.i     input_hint_block.{2 (i + 1)}
    controlnet_cond_embedding.conv_out     input_hint_block.{2 (n_blocks + 1)}
    controlnet_down_blocks.i               zero_convs.i.0
    controlnet_mid_block                   middle_block_out.0

The block structure that the UNet conversion needs (levels, ResBlocks per level, which levels
have attention, the label embedding) is read off the diffusers key names themselves, so a
diffusers-keyed single file converts without a config.json.
"""

from __future__ import annotations

import re
from collections.abc import Mapping

from torch import Tensor

from genmodels.checkpoints.config_checks import MAX_WIDTH, check_bound, count_indices
from genmodels.checkpoints.diffusers_unet import diffusers_to_ldm_unet, ldm_to_diffusers_unet
from genmodels.checkpoints.io import CheckpointError
from genmodels.configs.controlnet import ControlNetConfig
from genmodels.configs.unet import UNetConfig

__all__ = ["diffusers_to_ldm_controlnet", "hint_conv_indices", "ldm_to_diffusers_controlnet"]

StateDict = Mapping[str, Tensor]
_COND = "controlnet_cond_embedding."


def _structure(sd: StateDict, source: str) -> UNetConfig:
    """The block structure of diffusers ControlNet keys (widths and heads are placeholders:
    only what ``diffusers_unet``'s key mapping reads is meaningful)."""
    levels = count_indices(sd, r"down_blocks\.(\d+)\.", source)
    if levels == 0 or "conv_in.weight" not in sd:
        raise CheckpointError(f"{source}: no down_blocks.N / conv_in tensors (not a ControlNet?)")
    res = tuple(
        count_indices(sd, rf"down_blocks\.{i}\.resnets\.(\d+)\.", source) for i in range(levels)
    )
    attn = [any(k.startswith(f"down_blocks.{i}.attentions.0.") for k in sd) for i in range(levels)]
    kw: dict = {}
    if "add_embedding.linear_1.weight" in sd:
        kw = {"num_classes": "sequential", "adm_in_channels": 1}
    elif "class_embedding.weight" in sd:
        kw = {"num_classes": 1}
    return UNetConfig(
        model_channels=32, channel_mult=(1,) * levels, num_res_blocks=res, num_heads=1,
        attention_resolutions=tuple(2**i for i in range(levels) if attn[i]), **kw,
    )  # fmt: skip


def hint_conv_indices(n_convs: int) -> list[int]:
    """ldm indices of the hint encoder's convolutions (SiLUs sit between them)."""
    return [2 * i for i in range(n_convs)]


def diffusers_to_ldm_controlnet(sd: StateDict, source: str = "ControlNet") -> dict[str, Tensor]:
    """diffusers ``ControlNetModel.state_dict()`` -> ldm ``cldm`` keys (no ``control_model.``)."""
    n_blocks = count_indices(sd, re.escape(_COND) + r"blocks\.(\d+)\.", source)
    check_bound(source, "controlnet_cond_embedding blocks", n_blocks, 0, MAX_WIDTH)
    hint = hint_conv_indices(n_blocks + 2)
    out: dict[str, Tensor] = {}
    unet: dict[str, Tensor] = {}
    for key, value in sd.items():
        if key.startswith(_COND + "conv_in."):
            out[f"input_hint_block.0.{key[len(_COND) + 8 :]}"] = value
        elif key.startswith(_COND + "conv_out."):
            out[f"input_hint_block.{hint[-1]}.{key[len(_COND) + 9 :]}"] = value
        elif m := re.match(re.escape(_COND) + r"blocks\.(\d+)\.(.*)", key):
            out[f"input_hint_block.{hint[int(m.group(1)) + 1]}.{m.group(2)}"] = value
        elif m := re.match(r"controlnet_down_blocks\.(\d+)\.(.*)", key):
            out[f"zero_convs.{m.group(1)}.0.{m.group(2)}"] = value
        elif key.startswith("controlnet_mid_block."):
            out["middle_block_out.0." + key[len("controlnet_mid_block.") :]] = value
        else:
            unet[key] = value
    try:
        out.update(diffusers_to_ldm_unet(unet, _structure(sd, source)))
    except ValueError as exc:
        if isinstance(exc, CheckpointError):
            raise
        raise CheckpointError(f"{source}: {exc}") from exc
    return out


def ldm_to_diffusers_controlnet(sd: StateDict, config: ControlNetConfig) -> dict[str, Tensor]:
    """ldm ``cldm`` keys (no prefix) -> diffusers ``ControlNetModel`` keys."""
    hint = hint_conv_indices(2 * len(config.hint_block_channels))
    names = {idx: f"blocks.{i - 1}" for i, idx in enumerate(hint)}
    names[hint[0]], names[hint[-1]] = "conv_in", "conv_out"
    out: dict[str, Tensor] = {}
    unet: dict[str, Tensor] = {}
    for key, value in sd.items():
        if m := re.match(r"input_hint_block\.(\d+)\.(.*)", key):
            out[f"{_COND}{names[int(m.group(1))]}.{m.group(2)}"] = value
        elif m := re.match(r"zero_convs\.(\d+)\.0\.(.*)", key):
            out[f"controlnet_down_blocks.{m.group(1)}.{m.group(2)}"] = value
        elif key.startswith("middle_block_out.0."):
            out["controlnet_mid_block." + key[len("middle_block_out.0.") :]] = value
        else:
            unet[key] = value
    out.update(ldm_to_diffusers_unet(unet, config.unet))
    return out
