"""Names of the modules a LoRA file adapts: kohya / A1111 and diffusers / PEFT <-> ours.

Our UNet uses the LDM / sgm module paths (``input_blocks.1.1.transformer_blocks.0.attn1.to_q``)
and our text encoders the HF ``CLIPTextModel`` paths (``text_model.encoder.layers.0.self_attn.
q_proj``). LoRA files name the same modules in three ways:

* kohya sd-scripts / A1111 (``lora_unet_*``, ``lora_te_*``; SDXL ``lora_te1_*`` / ``lora_te2_*``):
  a module path with ``.`` replaced by ``_`` behind a prefix. SD 1.x / 2.x LoRAs use the diffusers
  UNet paths (``lora_unet_down_blocks_0_attentions_0_..._to_q``), SDXL LoRAs and the older LDM
  trainers the LDM paths (``lora_unet_input_blocks_4_1_..._to_q``); both are accepted everywhere.
* diffusers / PEFT: the dotted diffusers path behind the component folder name
  (``unet.down_blocks.0...to_q``, ``text_encoder.text_model...q_proj``, ``text_encoder_2.``).

The UNet names come from the one LDM <-> diffusers key conversion
(``checkpoints.diffusers_unet.unet_key_renamer``), applied to module paths. ``kohya_names`` gives
the names to write (a trainer saving a kohya LoRA), ``kohya_lookup`` / ``diffusers_lookup`` the
modules that the names of a file refer to.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Literal, NamedTuple

from torch import nn

from genmodels.checkpoints.diffusers_unet import unet_key_renamer
from genmodels.models.family import ModelFamily

__all__ = [
    "KOHYA_TEXT_PREFIXES",
    "DIFFUSERS_TEXT_FOLDERS",
    "Target",
    "adaptable_modules",
    "diffusers_lookup",
    "kohya_lookup",
    "kohya_name",
    "kohya_names",
    "kohya_unet_names",
]

UNET_PREFIX = "lora_unet_"
# per family: the kohya prefix of each text encoder, in our embedder order
KOHYA_TEXT_PREFIXES: dict[str, tuple[str, ...]] = {
    "sd1": ("lora_te_",),
    "sd2": ("lora_te_",),
    "sdxl-base": ("lora_te1_", "lora_te2_"),
    "sdxl-refiner": ("lora_te2_",),
}
# per family: the diffusers folder name of each text encoder, in our embedder order
DIFFUSERS_TEXT_FOLDERS: dict[str, tuple[str, ...]] = {
    "sd1": ("text_encoder",),
    "sd2": ("text_encoder",),
    "sdxl-base": ("text_encoder", "text_encoder_2"),
    "sdxl-refiner": ("text_encoder_2",),
}
UNetLayout = Literal["diffusers", "ldm"]


class Target(NamedTuple):
    """One adapted module: ``component`` "unet" or "text" (``index``: the embedder), ``path``
    its module path in our model."""

    component: Literal["unet", "text"]
    index: int
    path: str


def adaptable_modules(module: nn.Module) -> dict[str, nn.Module]:
    """The modules a LoRA can adapt: every ``nn.Linear`` and ``nn.Conv2d``, by path."""
    return {n: m for n, m in module.named_modules() if isinstance(m, nn.Linear | nn.Conv2d)}


def kohya_name(prefix: str, path: str) -> str:
    """``prefix`` + dotted module path with ``.`` -> ``_`` (kohya's ``lora_name``)."""
    return prefix + path.replace(".", "_")


def _diffusers_unet_paths(unet: nn.Module) -> dict[str, str]:
    """Our UNet module path -> its diffusers module path."""
    rename = unet_key_renamer(unet.config, to_ldm=False)  # type: ignore[arg-type]
    out = {}
    for path in adaptable_modules(unet):
        name = rename(path + ".weight")
        if name is not None:
            out[path] = name.removesuffix(".weight")
    return out


def default_unet_layout(family: ModelFamily) -> UNetLayout:
    """The UNet naming kohya sd-scripts writes: LDM / sgm paths for SDXL, diffusers otherwise."""
    return "ldm" if family.startswith("sdxl") else "diffusers"


def kohya_unet_names(
    unet: nn.Module, family: ModelFamily, unet_layout: UNetLayout | None = None
) -> dict[str, str]:
    """Our UNet module path -> its kohya name (``lora_unet_...``) in ``unet_layout`` (default:
    the layout kohya sd-scripts writes for ``family``)."""
    if (unet_layout or default_unet_layout(family)) == "diffusers":
        return {path: kohya_name(UNET_PREFIX, diff)
                for path, diff in _diffusers_unet_paths(unet).items()}  # fmt: skip
    return {path: kohya_name(UNET_PREFIX, path) for path in adaptable_modules(unet)}


def kohya_names(
    unet: nn.Module,
    text_models: Sequence[nn.Module],
    family: ModelFamily,
    unet_layout: UNetLayout | None = None,
) -> dict[Target, str]:
    """Our module -> the kohya name a trainer writes for it (``lora_unet_...``, ``lora_te...``).
    ``text_models`` may be empty (a UNet-only LoRA); otherwise one per text encoder."""
    out = {Target("unet", 0, path): name
           for path, name in kohya_unet_names(unet, family, unet_layout).items()}  # fmt: skip
    prefixes = KOHYA_TEXT_PREFIXES[family]
    if text_models and len(prefixes) != len(text_models):
        raise ValueError(f"{family} has {len(prefixes)} text encoders, got {len(text_models)}")
    for index, (prefix, model) in enumerate(zip(prefixes, text_models)):
        for path in adaptable_modules(model):
            out[Target("text", index, path)] = kohya_name(prefix, path)
    return out


def kohya_lookup(
    unet: nn.Module, text_models: Sequence[nn.Module], family: ModelFamily
) -> dict[str, Target]:
    """Every kohya name a LoRA file may use for our modules (both UNet layouts) -> the module."""
    out = {v: k for k, v in kohya_names(unet, text_models, family, "ldm").items()}
    out.update({v: k for k, v in kohya_names(unet, text_models, family, "diffusers").items()})
    return out


def diffusers_lookup(
    unet: nn.Module, text_models: Sequence[nn.Module], family: ModelFamily
) -> dict[str, Target]:
    """diffusers / PEFT dotted names (``unet.<diffusers path>``, ``text_encoder.<path>``,
    ``text_encoder_2.<path>``) -> our module."""
    out = {
        f"unet.{diff}": Target("unet", 0, path)
        for path, diff in _diffusers_unet_paths(unet).items()
    }
    folders = DIFFUSERS_TEXT_FOLDERS[family]
    for index, (folder, model) in enumerate(zip(folders, text_models)):
        for path in adaptable_modules(model):
            out[f"{folder}.{path}"] = Target("text", index, path)
            # transformers >= 5 CLIP models drop the ``text_model.`` level from module paths
            out[f"{folder}.{path.removeprefix('text_model.')}"] = Target("text", index, path)
    return out
