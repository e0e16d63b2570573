"""taming-transformers checkpoints: VQGAN configs read off the weights, strict loading, and
the parts of a ``Net2NetTransformer`` checkpoint.

taming's ``.ckpt`` files hold no config (the YAML lives beside them in
``configs/*-project.yaml``, see :mod:`genmodels.checkpoints.taming_project`), so the VQGAN's
``ddconfig`` is recovered from tensor shapes:

* ``ch`` / ``in_channels``: ``encoder.conv_in.weight`` (ch, in_channels, 3, 3);
* ``ch_mult[i]``: the width of ``encoder.down.i.block.0.conv1`` over ``ch``;
* ``num_res_blocks``: the ``encoder.down.0.block.N``; ``z_channels``: ``encoder.conv_out``;
* ``attn_resolutions``: the levels i holding ``encoder.down.i.attn.*``, as
  ``resolution // 2**i`` (the Encoder attends at level i when its feature size, resolution
  halved i times, is listed; taming's released models are 256 px);
* ``embed_dim``: ``quant_conv``; ``out_ch``: ``decoder.conv_out``;
* the quantiser: ``quantize.embedding.weight`` (n_embed, embed_dim) = "vq" (beta on the
  codebook term, ``legacy``, as taming trained), with ``embedding.cluster_size`` = "ema";
  ``quantize.embed.weight`` + ``quantize.proj`` = "gumbel" (taming's ``GumbelVQ``);
  ``quantize.used`` = the ``remap`` list.

GroupNorm's group count is not in the weights; taming always uses 32.
A ``Net2NetTransformer`` checkpoint holds the VQGAN under ``first_stage_model.``, the GPT under
``transformer.``, a VQGAN cond stage under ``cond_stage_model.`` (none for taming's SOS / class
/ coordinate stages, which have no weights) and a non-raster order under ``permuter.``.
"""

from __future__ import annotations

import os
import re
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import Tensor

from genmodels.checkpoints.config_checks import (
    MAX_LEVELS,
    MAX_POSITIONS,
    MAX_VOCAB,
    MAX_WIDTH,
    check_bound,
    count_indices,
)
from genmodels.checkpoints.io import CheckpointError, StateDict, load_state_dict
from genmodels.checkpoints.strict import load_strict
from genmodels.configs.gpt import GPTConfig
from genmodels.configs.vqgan import VQConfig
from genmodels.models.gpt import GPT
from genmodels.models.vqgan import VQModel

__all__ = [
    "TAMING_RESOLUTION",
    "NET2NET_PREFIXES",
    "Net2NetParts",
    "vq_config_from_taming_state_dict",
    "find_vq_prefix",
    "vqgan_from_taming_state_dict",
    "load_taming_vq",
    "load_taming_gpt",
    "gpt_config_from_state_dict",
    "load_taming_vqgan",
    "gpt_from_taming_state_dict",
    "net2net_parts",
]

TAMING_RESOLUTION = 256
NET2NET_PREFIXES = ("first_stage_model.", "cond_stage_model.", "transformer.", "permuter.")
_VISUAL_ONLY = ("colorize",)  # a segmentation VQGAN's random label -> RGB projection


def _key(sd: Mapping[str, Tensor], prefix: str, name: str, source: str) -> Tensor:
    if prefix + name not in sd:
        raise CheckpointError(
            f"{source}: not a taming VQGAN: key {prefix + name!r} is missing "
            f"(first keys: {list(sd)[:6]})"
        )
    shape = tuple(sd[prefix + name].shape)
    if 0 in shape or any(n > MAX_VOCAB for n in shape):  # sizes come from these shapes
        raise CheckpointError(f"{source}: tensor {prefix + name!r} has implausible shape {shape}")
    return sd[prefix + name]


def _quantizer(sd: Mapping[str, Tensor], p: str, embed_dim: int, source: str) -> dict:
    """Quantiser fields of VQConfig from the ``quantize.*`` keys."""
    if f"{p}quantize.embedding.weight" in sd:
        n_embed, dim = sd[f"{p}quantize.embedding.weight"].shape
        kind = "ema" if f"{p}quantize.embedding.cluster_size" in sd else "vq"
    elif f"{p}quantize.embed.weight" in sd and f"{p}quantize.proj.weight" in sd:
        n_embed, dim = sd[f"{p}quantize.embed.weight"].shape
        kind = "gumbel"
        hidden = sd[f"{p}quantize.proj.weight"].shape[1]
        if hidden != embed_dim:
            raise CheckpointError(
                f"{source}: {p}quantize.proj.weight takes {hidden} channels but quant_conv "
                f"gives {embed_dim}: a Gumbel VQGAN genmodels cannot build"
            )
    else:
        raise CheckpointError(
            f"{source}: not a taming VQGAN: no quantiser ({p}quantize.embedding.weight or "
            f"{p}quantize.embed.weight + {p}quantize.proj.weight); a KL autoencoder?"
        )
    if dim != embed_dim:
        raise CheckpointError(
            f"{source}: codebook vectors have {dim} channels but {p}quant_conv.weight gives "
            f"{embed_dim}"
        )
    fields = {"quantizer": kind, "n_embed": int(n_embed), "legacy": True}
    if kind == "gumbel":
        fields["kl_weight"] = 1e-8  # taming's GumbelVQ default (training only)
    if f"{p}quantize.used" in sd:
        fields["remap"] = tuple(int(i) for i in sd[f"{p}quantize.used"].tolist())
    return fields


def vq_config_from_taming_state_dict(
    sd: Mapping[str, Tensor],
    prefix: str = "",
    resolution: int = TAMING_RESOLUTION,
    source: str = "state dict",
) -> VQConfig:
    """The :class:`VQConfig` of a taming ``VQModel`` / ``GumbelVQ`` state dict (see the module
    docstring). ``prefix``: e.g. "first_stage_model."; ``source`` names the file in errors."""
    p = prefix
    conv_in = _key(sd, p, "encoder.conv_in.weight", source)
    ch, in_channels = int(conv_in.shape[0]), int(conv_in.shape[1])
    down = re.compile(rf"{re.escape(p)}encoder\.down\.(\d+)\.")
    levels = sorted({int(m.group(1)) for k in sd if (m := down.match(k))})
    if levels != list(range(len(levels))) or not levels:
        raise CheckpointError(f"{source}: encoder levels {levels} are not 0..n-1")
    ch_mult = []
    for i in levels:
        width = int(_key(sd, p, f"encoder.down.{i}.block.0.conv1.weight", source).shape[0])
        if width % ch:
            raise CheckpointError(
                f"{source}: {p}encoder.down.{i}.block.0.conv1.weight has {width} channels, "
                f"not a multiple of ch={ch}"
            )
        ch_mult.append(width // ch)
    check_bound(source, "ch", ch, 1, MAX_WIDTH)
    check_bound(source, "ch_mult (levels)", len(levels), 1, MAX_LEVELS)
    num_res_blocks = count_indices(sd, rf"{re.escape(p)}encoder\.down\.0\.block\.(\d+)\.", source)
    if resolution < 2 ** (len(levels) - 1):
        raise CheckpointError(f"resolution {resolution} is below the f{2 ** (len(levels) - 1)}")
    attn = [i for i in levels if any(k.startswith(f"{p}encoder.down.{i}.attn.") for k in sd)]
    z_channels = int(_key(sd, p, "encoder.conv_out.weight", source).shape[0])
    quant_conv = _key(sd, p, "quant_conv.weight", source)
    if quant_conv.shape[1] != z_channels:
        raise CheckpointError(
            f"{source}: {p}encoder.conv_out gives {z_channels} channels but quant_conv takes "
            f"{quant_conv.shape[1]} (a double_z KL encoder?)"
        )
    embed_dim = int(quant_conv.shape[0])
    return VQConfig(
        ch=ch,
        ch_mult=tuple(ch_mult),
        num_res_blocks=num_res_blocks,
        attn_resolutions=tuple(resolution // 2**i for i in attn),
        in_channels=in_channels,
        out_ch=int(_key(sd, p, "decoder.conv_out.weight", source).shape[0]),
        resolution=resolution,
        z_channels=z_channels,
        embed_dim=embed_dim,
        **_quantizer(sd, p, embed_dim, source),
    )


def find_vq_prefix(sd: Mapping[str, Tensor], source: str = "state dict") -> str:
    """ "" for a VQGAN checkpoint, "first_stage_model." for a Net2NetTransformer."""
    for prefix in ("", "first_stage_model."):
        if f"{prefix}encoder.conv_in.weight" in sd:
            return prefix
    hint = " (a Stable Diffusion checkpoint?)" if any(".diffusion_model." in k for k in sd) else ""
    raise CheckpointError(
        f"{source}: not a taming VQGAN or Net2NetTransformer: no 'encoder.conv_in.weight' or "
        f"'first_stage_model.encoder.conv_in.weight' key{hint} (first keys: {list(sd)[:6]})"
    )


def load_taming_vq(model: VQModel, state_dict: Mapping[str, Tensor], prefix: str = "") -> list[str]:
    """Load a taming ``VQModel`` state dict into ``model`` strictly; returns the ignored
    ``loss.*`` keys. ``prefix`` (e.g. "first_stage_model.") is stripped first; keys without it
    are ignored."""
    sd: dict[str, Tensor] = {}
    ignored: list[str] = []
    for key, value in state_dict.items():
        if not key.startswith(prefix):
            continue
        name = key[len(prefix) :]
        if name.startswith("loss."):
            ignored.append(name)
        else:
            sd[name] = value
    load_strict(model, sd, "taming VQModel state dict", prefix)
    return ignored


def load_taming_gpt(
    gpt: GPT, state_dict: Mapping[str, Tensor], prefix: str = "transformer."
) -> list[str]:
    """Load taming's GPT weights into ``gpt`` strictly; returns the ignored keys.

    ``prefix`` ("transformer." in a Net2NetTransformer checkpoint, "" for a bare GPT) is
    stripped; keys without it belong to the other stages and are ignored."""
    sd = {k[len(prefix) :]: v for k, v in state_dict.items() if k.startswith(prefix)}
    if not sd:
        raise ValueError(f"no GPT weights: no key starts with {prefix!r}")
    load_strict(gpt, sd, "GPT state dict", prefix)
    return [k for k in state_dict if not k.startswith(prefix)]


def gpt_config_from_state_dict(
    state_dict: Mapping[str, Tensor], n_head: int, prefix: str = "transformer.", **dropouts: float
) -> GPTConfig:
    """The :class:`GPTConfig` of taming GPT weights: vocab_size, n_embd (``tok_emb``),
    block_size (``pos_emb``), n_layer (``blocks.N``) and n_unmasked (the mask buffer).

    ``n_head`` is not recorded in the weights and must be given (taming's ImageNet
    class-conditional transformer uses 16); ``dropouts`` are the ``*_pdrop`` fields.
    """
    sd = {k[len(prefix) :]: v for k, v in state_dict.items() if k.startswith(prefix)}
    for key in ("tok_emb.weight", "pos_emb", "blocks.0.attn.mask"):
        if key not in sd:
            raise ValueError(f"not taming GPT weights: {prefix}{key} is missing")
    vocab_size, n_embd = sd["tok_emb.weight"].shape
    n_layer = count_indices(sd, r"blocks\.(\d+)\.", f"GPT weights ({prefix}blocks.N)")
    check_bound(f"GPT weights ({prefix}tok_emb.weight)", "vocab_size, n_embd",
                [int(vocab_size), int(n_embd)], 1, MAX_VOCAB)  # fmt: skip
    check_bound(f"GPT weights ({prefix}pos_emb)", "block_size", int(sd["pos_emb"].shape[1]), 1,
                MAX_POSITIONS)  # fmt: skip
    first_row = sd["blocks.0.attn.mask"].reshape(sd["pos_emb"].shape[1], -1)[0]
    n_unmasked = int(first_row.sum()) if int(first_row.sum()) > 1 else 0
    return GPTConfig(
        vocab_size=int(vocab_size),
        block_size=int(sd["pos_emb"].shape[1]),
        n_layer=n_layer,
        n_head=n_head,
        n_embd=int(n_embd),
        n_unmasked=n_unmasked,
        **dropouts,
    )


def vqgan_from_taming_state_dict(
    sd: Mapping[str, Tensor],
    prefix: str,
    config: VQConfig | None = None,
    resolution: int = TAMING_RESOLUTION,
    source: str = "state dict",
) -> VQModel:
    """A :class:`VQModel` (eval mode) holding the ``prefix`` weights of ``sd``, loaded strictly
    (``loss.*`` and a segmentation model's ``colorize`` are dropped)."""
    if config is None:
        config = vq_config_from_taming_state_dict(sd, prefix, resolution, source)
    kept = {k: v for k, v in sd.items() if k[len(prefix) :] not in _VISUAL_ONLY}
    model = VQModel(config)
    try:
        load_taming_vq(model, kept, prefix=prefix)
    except ValueError as exc:
        where = f" (keys under {prefix!r})" if prefix else ""
        raise CheckpointError(f"{source}{where}: {exc}") from None
    return model.eval()


def load_taming_vqgan(
    path: str | os.PathLike,
    config: VQConfig | None = None,
    prefix: str | None = None,
    resolution: int = TAMING_RESOLUTION,
) -> VQModel:
    """A taming VQGAN from ``path``: a Lightning ``.ckpt`` (weights under ``state_dict``), a bare
    state dict or a ``.safetensors``; a ``Net2NetTransformer`` checkpoint gives its first stage
    (``prefix`` "cond_stage_model." its cond stage). The config is inferred unless given."""
    path = Path(path)
    sd = load_state_dict(path)
    prefix = find_vq_prefix(sd, str(path)) if prefix is None else prefix
    return vqgan_from_taming_state_dict(sd, prefix, config, resolution, str(path))


def gpt_from_taming_state_dict(
    sd: Mapping[str, Tensor], n_head: int, source: str = "state dict"
) -> GPT:
    """The ``transformer.*`` minGPT of a Net2NetTransformer state dict (eval mode, strict)."""
    try:
        gpt = GPT(gpt_config_from_state_dict(sd, n_head))
        load_taming_gpt(gpt, sd, prefix="transformer.")
    except ValueError as exc:
        raise CheckpointError(f"{source}: {exc}") from None
    return gpt.eval()


@dataclass(frozen=True)
class Net2NetParts:
    """What the keys of a Net2NetTransformer checkpoint say about its stages.

    ``cond_stage``: "none" (no weights: taming's SOS, class or coordinate stage), "first_stage"
    (``__is_first_stage__``: the same weights under both prefixes) or "vqgan" (its own VQGAN).
    ``permuter_order``: ``permuter.forward_shuffle_idx`` (None: taming's ``Identity``).
    """

    has_transformer: bool
    cond_stage: str
    permuter_order: Tensor | None


def net2net_parts(sd: StateDict) -> Net2NetParts:
    """Classify the stages of a taming checkpoint from its keys (see :class:`Net2NetParts`)."""
    first = {k[len("first_stage_model.") :]: v for k, v in sd.items()
             if k.startswith("first_stage_model.")}  # fmt: skip
    cond = {k[len("cond_stage_model.") :]: v for k, v in sd.items()
            if k.startswith("cond_stage_model.")}  # fmt: skip
    if not cond:
        cond_stage = "none"
    elif cond.keys() == first.keys() and all(torch.equal(cond[k], first[k]) for k in cond):
        cond_stage = "first_stage"
    else:
        cond_stage = "vqgan"
    return Net2NetParts(
        has_transformer=any(k.startswith("transformer.") for k in sd),
        cond_stage=cond_stage,
        permuter_order=sd.get("permuter.forward_shuffle_idx"),
    )
