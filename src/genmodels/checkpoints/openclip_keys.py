"""Text-encoder keys of SD checkpoints, and OpenCLIP text tower <-> HF ``CLIPTextModel`` layout.

OpenCLIP (``open_clip.model.CLIP``) text keys -> ours (HF layout):

    token_embedding.weight                         text_model.embeddings.token_embedding.weight
    positional_embedding            (T, D)         text_model.embeddings.position_embedding.weight
    transformer.resblocks.N.ln_1.*                 text_model.encoder.layers.N.layer_norm1.*
    transformer.resblocks.N.attn.in_proj_weight    ...self_attn.{q,k,v}_proj.weight (split in 3)
    transformer.resblocks.N.attn.in_proj_bias      ...self_attn.{q,k,v}_proj.bias
    transformer.resblocks.N.attn.out_proj.*        ...self_attn.out_proj.*
    transformer.resblocks.N.ln_2.*                 text_model.encoder.layers.N.layer_norm2.*
    transformer.resblocks.N.mlp.c_fc.*             text_model.encoder.layers.N.mlp.fc1.*
    transformer.resblocks.N.mlp.c_proj.*           text_model.encoder.layers.N.mlp.fc2.*
    ln_final.*                                     text_model.final_layer_norm.*
    text_projection                 (D, P)         text_projection.weight (P, D), transposed

(``x @ text_projection`` in OpenCLIP equals ``nn.Linear`` with the transposed weight.)
"""

from __future__ import annotations

import re
from typing import Literal

import torch
from torch import Tensor

StateDict = dict[str, Tensor]

# OpenCLIP keys that are not part of the text transformer (CLIP logit scale, image tower).
_IGNORED = re.compile(r"^(logit_scale|logit_bias|attn_mask|visual\..*)$")
_BLOCK = re.compile(r"^transformer\.resblocks\.(\d+)\.(.+)$")
_OURS_BLOCK = re.compile(r"^text_model\.encoder\.layers\.(\d+)\.(.+)$")

_BLOCK_RENAMES = {  # OpenCLIP resblock suffix -> ours (in_proj handled separately)
    "ln_1.weight": "layer_norm1.weight",
    "ln_1.bias": "layer_norm1.bias",
    "ln_2.weight": "layer_norm2.weight",
    "ln_2.bias": "layer_norm2.bias",
    "attn.out_proj.weight": "self_attn.out_proj.weight",
    "attn.out_proj.bias": "self_attn.out_proj.bias",
    "mlp.c_fc.weight": "mlp.fc1.weight",
    "mlp.c_fc.bias": "mlp.fc1.bias",
    "mlp.c_proj.weight": "mlp.fc2.weight",
    "mlp.c_proj.bias": "mlp.fc2.bias",
}
_TOP_RENAMES = {
    "token_embedding.weight": "text_model.embeddings.token_embedding.weight",
    "positional_embedding": "text_model.embeddings.position_embedding.weight",
    "ln_final.weight": "text_model.final_layer_norm.weight",
    "ln_final.bias": "text_model.final_layer_norm.bias",
}

# Where each SD family keeps its text encoders, and in which layout.
TEXT_ENCODER_PREFIXES: dict[str, tuple[tuple[str, Literal["hf", "openclip"]], ...]] = {
    "sd1": (("cond_stage_model.transformer.", "hf"),),
    "sd2": (("cond_stage_model.model.", "openclip"),),
    "sdxl": (
        ("conditioner.embedders.0.transformer.", "hf"),
        ("conditioner.embedders.1.model.", "openclip"),
    ),
}


def openclip_to_hf(state_dict: StateDict) -> StateDict:
    """OpenCLIP text-tower tensors (no prefix) -> our HF-layout tensors. Image-tower keys and
    ``logit_scale`` are dropped; any other unknown key raises ``ValueError``."""
    out: StateDict = {}
    unknown = []
    for key, value in state_dict.items():
        if _IGNORED.match(key):
            continue
        block = _BLOCK.match(key)
        if key in _TOP_RENAMES:
            out[_TOP_RENAMES[key]] = value
        elif key == "text_projection":
            out["text_projection.weight"] = value.t().contiguous()
        elif block and block.group(2) in ("attn.in_proj_weight", "attn.in_proj_bias"):
            prefix = f"text_model.encoder.layers.{block.group(1)}.self_attn."
            kind = block.group(2).rsplit("_", 1)[1]  # weight | bias
            if value.shape[0] % 3:
                raise ValueError(f"{key}: first dim {value.shape[0]} is not divisible by 3")
            for name, part in zip(("q_proj", "k_proj", "v_proj"), value.chunk(3, dim=0)):
                out[f"{prefix}{name}.{kind}"] = part.contiguous()
        elif block and block.group(2) in _BLOCK_RENAMES:
            out[f"text_model.encoder.layers.{block.group(1)}.{_BLOCK_RENAMES[block.group(2)]}"] = (
                value
            )
        else:
            unknown.append(key)
    if unknown:
        raise ValueError(f"unknown OpenCLIP text keys: {', '.join(sorted(unknown)[:8])}")
    return out


def hf_to_openclip(state_dict: StateDict) -> StateDict:
    """Our HF-layout tensors -> OpenCLIP text-tower tensors (inverse of ``openclip_to_hf``)."""
    top = {v: k for k, v in _TOP_RENAMES.items()}
    block_renames = {v: k for k, v in _BLOCK_RENAMES.items()}
    out: StateDict = {}
    qkv: dict[tuple[str, str], dict[str, Tensor]] = {}
    unknown = []
    for key, value in state_dict.items():
        block = _OURS_BLOCK.match(key)
        if key in top:
            out[top[key]] = value
        elif key == "text_projection.weight":
            out["text_projection"] = value.t().contiguous()
        elif key == "text_model.embeddings.position_ids":
            continue
        elif block and re.match(r"self_attn\.[qkv]_proj\.(weight|bias)$", block.group(2)):
            proj, kind = block.group(2).split(".")[1:]
            qkv.setdefault((block.group(1), kind), {})[proj[0]] = value
        elif block and block.group(2) in block_renames:
            out[f"transformer.resblocks.{block.group(1)}.{block_renames[block.group(2)]}"] = value
        else:
            unknown.append(key)
    if unknown:
        raise ValueError(f"unknown CLIP text keys: {', '.join(sorted(unknown)[:8])}")
    for (layer, kind), parts in qkv.items():
        if set(parts) != {"q", "k", "v"}:
            missing = sorted({"q", "k", "v"} - set(parts))
            raise ValueError(f"layer {layer}: missing self_attn {missing} projection {kind}")
        out[f"transformer.resblocks.{layer}.attn.in_proj_{kind}"] = torch.cat(
            [parts["q"], parts["k"], parts["v"]], dim=0
        )
    return out


def extract_text_encoders(checkpoint: StateDict, family: str) -> list[StateDict]:
    """The text-encoder state dicts (our HF layout, in embedder order) of an SD checkpoint.

    ``family`` is "sd1" (``cond_stage_model.transformer.*``), "sd2" (``cond_stage_model.model.*``)
    or "sdxl" (``conditioner.embedders.{0,1}.*``). HF's ``position_ids`` buffer is dropped.
    """
    if family not in TEXT_ENCODER_PREFIXES:
        raise ValueError(f"unknown family {family!r}; valid names: {sorted(TEXT_ENCODER_PREFIXES)}")
    result = []
    for prefix, layout in TEXT_ENCODER_PREFIXES[family]:
        sub = {k[len(prefix) :]: v for k, v in checkpoint.items() if k.startswith(prefix)}
        if not sub:
            raise ValueError(f"no text-encoder keys with prefix {prefix!r} in the checkpoint")
        sub.pop("text_model.embeddings.position_ids", None)
        result.append(openclip_to_hf(sub) if layout == "openclip" else sub)
    return result


def text_encoders_to_checkpoint(state_dicts: list[StateDict], family: str) -> StateDict:
    """Inverse of ``extract_text_encoders``: our per-embedder state dicts -> prefixed SD keys."""
    if family not in TEXT_ENCODER_PREFIXES:
        raise ValueError(f"unknown family {family!r}; valid names: {sorted(TEXT_ENCODER_PREFIXES)}")
    prefixes = TEXT_ENCODER_PREFIXES[family]
    if len(state_dicts) != len(prefixes):
        raise ValueError(f"{family} has {len(prefixes)} text encoders, got {len(state_dicts)}")
    out: StateDict = {}
    for (prefix, layout), sd in zip(prefixes, state_dicts):
        converted = hf_to_openclip(sd) if layout == "openclip" else sd
        out.update({prefix + k: v for k, v in converted.items()})
    return out
