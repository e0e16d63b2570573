"""Key conversion between diffusers' ``AutoencoderKL`` state_dict and the ldm / sgm layout.

Pure functions over ``{name: tensor}`` dicts (no prefix: strip ``first_stage_model.`` / ``vae.``
first). The facts mirrored are diffusers' ``convert_ldm_vae_checkpoint`` naming: ``down_blocks`` /
``up_blocks`` (decoder levels in reverse order), ``resnets``, ``conv_shortcut`` (ldm
``nin_shortcut``), ``mid_block``, ``conv_norm_out`` and the mid attention as ``Linear`` layers
``to_q/to_k/to_v/to_out.0`` (older diffusers files: ``query/key/value/proj_attn``) where ldm
has 1x1 convs ``q/k/v/proj_out``.
"""

from __future__ import annotations

import re

from torch import Tensor

_ATTN_LEAF_TO_LDM = {
    "group_norm": "norm",
    "to_q": "q",
    "query": "q",
    "to_k": "k",
    "key": "k",
    "to_v": "v",
    "value": "v",
    "to_out.0": "proj_out",
    "proj_attn": "proj_out",
}
_ATTN_LEAF_TO_DIFFUSERS = {
    "norm": "group_norm",
    "q": "to_q",
    "k": "to_k",
    "v": "to_v",
    "proj_out": "to_out.0",
}

_LDM_ATTN_WEIGHT = re.compile(
    r"\.(mid\.attn_1|(down|up)\.\d+\.attn\.\d+)\.(q|k|v|proj_out)\.weight$"
)
_SAME = re.compile(r"^((encoder|decoder)\.(conv_in|conv_out)|quant_conv|post_quant_conv)\.")


def _num_levels(keys: list[str], pattern: str) -> int:
    levels = [int(m.group(1)) for k in keys if (m := re.match(pattern, k))]
    if not levels:
        raise ValueError(f"no decoder level keys matching {pattern!r} in state_dict")
    return max(levels) + 1


def _diffusers_module_to_ldm(key: str, n_up: int) -> str:
    """Rename the module path of one diffusers key (everything before the attention leaf)."""
    rules = [
        (r"^(encoder|decoder)\.conv_norm_out\.", r"\1.norm_out."),
        (r"^encoder\.down_blocks\.(\d+)\.resnets\.", r"encoder.down.\1.block."),
        (r"^encoder\.down_blocks\.(\d+)\.attentions\.", r"encoder.down.\1.attn."),
        (r"^encoder\.down_blocks\.(\d+)\.downsamplers\.0\.", r"encoder.down.\1.downsample."),
        (r"^(encoder|decoder)\.mid_block\.resnets\.0\.", r"\1.mid.block_1."),
        (r"^(encoder|decoder)\.mid_block\.resnets\.1\.", r"\1.mid.block_2."),
        (r"^(encoder|decoder)\.mid_block\.attentions\.0\.", r"\1.mid.attn_1."),
    ]
    for pattern, repl in rules:
        key = re.sub(pattern, repl, key)
    m = re.match(r"^decoder\.up_blocks\.(\d+)\.(resnets|attentions|upsamplers\.0)\.(.*)$", key)
    if m:
        part = {"resnets": "block.", "attentions": "attn.", "upsamplers.0": "upsample."}[m.group(2)]
        key = f"decoder.up.{n_up - 1 - int(m.group(1))}.{part}{m.group(3)}"
    return key.replace(".conv_shortcut.", ".nin_shortcut.")


def _rename_attn_leaf(key: str, table: dict[str, str], attn: str) -> str:
    m = re.match(rf"^(.*\.{attn})\.(.+)\.(weight|bias)$", key)
    if m is None or m.group(2) not in table:
        return key
    return f"{m.group(1)}.{table[m.group(2)]}.{m.group(3)}"


def ldm_vae_attention_to_conv(state_dict: dict[str, Tensor]) -> dict[str, Tensor]:
    """Reshape Linear (C, C) attention q/k/v/proj_out weights of an ldm-key dict to 1x1 convs."""
    out = dict(state_dict)
    for key, value in state_dict.items():
        if _LDM_ATTN_WEIGHT.search("." + key) and value.ndim == 2:
            out[key] = value[:, :, None, None]
    return out


def diffusers_vae_to_ldm(state_dict: dict[str, Tensor]) -> dict[str, Tensor]:
    """diffusers ``AutoencoderKL.state_dict()`` -> ldm ``first_stage_model`` keys (no prefix)."""
    n_up = _num_levels(list(state_dict), r"^decoder\.up_blocks\.(\d+)\.")
    out: dict[str, Tensor] = {}
    for key, value in state_dict.items():
        new = _diffusers_module_to_ldm(key, n_up)
        new = _rename_attn_leaf(new, _ATTN_LEAF_TO_LDM, r"(?:mid\.attn_1|attn\.\d+)")
        if new == key and not _SAME.match(key):
            raise ValueError(f"unexpected key {key!r} in diffusers VAE state_dict")
        if new in out:
            raise ValueError(f"keys collide on {new!r} (duplicate attention naming styles?)")
        out[new] = value
    return ldm_vae_attention_to_conv(out)


def ldm_vae_to_diffusers(state_dict: dict[str, Tensor]) -> dict[str, Tensor]:
    """ldm ``first_stage_model`` keys (no prefix) -> diffusers ``AutoencoderKL`` keys."""
    n_up = _num_levels(list(state_dict), r"^decoder\.up\.(\d+)\.")
    rules = [
        (r"^(encoder|decoder)\.norm_out\.", r"\1.conv_norm_out."),
        (r"^encoder\.down\.(\d+)\.block\.", r"encoder.down_blocks.\1.resnets."),
        (r"^encoder\.down\.(\d+)\.attn\.", r"encoder.down_blocks.\1.attentions."),
        (r"^encoder\.down\.(\d+)\.downsample\.", r"encoder.down_blocks.\1.downsamplers.0."),
        (r"^(encoder|decoder)\.mid\.block_1\.", r"\1.mid_block.resnets.0."),
        (r"^(encoder|decoder)\.mid\.block_2\.", r"\1.mid_block.resnets.1."),
        (r"^(encoder|decoder)\.mid\.attn_1\.", r"\1.mid_block.attentions.0."),
    ]
    out: dict[str, Tensor] = {}
    for key, value in state_dict.items():
        if _LDM_ATTN_WEIGHT.search("." + key) and value.ndim == 4:
            value = value[:, :, 0, 0]  # 1x1 conv -> Linear
        new = _rename_attn_leaf(key, _ATTN_LEAF_TO_DIFFUSERS, r"(?:mid\.attn_1|attn\.\d+)")
        for pattern, repl in rules:
            new = re.sub(pattern, repl, new)
        m = re.match(r"^decoder\.up\.(\d+)\.(block|attn|upsample)\.(.*)$", new)
        if m:
            part = {"block": "resnets", "attn": "attentions", "upsample": "upsamplers.0"}
            new = f"decoder.up_blocks.{n_up - 1 - int(m.group(1))}.{part[m.group(2)]}.{m.group(3)}"
        new = new.replace(".nin_shortcut.", ".conv_shortcut.")
        if new == key and not _SAME.match(key):
            raise ValueError(f"unexpected key {key!r} in ldm VAE state_dict")
        out[new] = value
    return out
