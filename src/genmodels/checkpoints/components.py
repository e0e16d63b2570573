"""Splitting a single-file LDM / sgm checkpoint into its components, and joining them back.

Prefixes of the original releases:

    model.diffusion_model.*                  UNet (ldm ``DiffusionWrapper``)
    model_ema.<name without dots>            EMA copy of the UNet (ldm ``LitEma``)
    first_stage_model.*                      KL VAE
    cond_stage_model.transformer.*           SD 1.x CLIP ViT-L/14 (HF layout)
    cond_stage_model.model.*                 SD 2.x OpenCLIP ViT-H/14 (OpenCLIP layout)
    conditioner.embedders.0.transformer.*    SDXL base CLIP ViT-L/14 (HF layout)
    conditioner.embedders.1.model.*          SDXL base OpenCLIP ViT-bigG/14
    conditioner.embedders.0.model.*          SDXL refiner OpenCLIP ViT-bigG/14

Text encoders are handed out in our HF ``CLIPTextModel`` layout (``checkpoints.openclip_keys``).
Tensors that no component takes (``logit_scale``, HF ``position_ids``, EMA, marker keys such as
``v_pred``) are returned as ``unused`` and can be passed back to ``join_checkpoint`` unchanged, so
a split/join round trip is lossless.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field

from torch import Tensor

from genmodels.checkpoints.openclip_keys import hf_to_openclip, openclip_to_hf
from genmodels.models.family import MODEL_FAMILIES, ModelFamily

StateDict = dict[str, Tensor]

UNET_PREFIX = "model.diffusion_model."
VAE_PREFIX = "first_stage_model."
EMA_PREFIX = "model_ema."
FAMILIES = MODEL_FAMILIES

TEXT_PREFIXES: dict[str, tuple[tuple[str, str], ...]] = {
    "sd1": (("cond_stage_model.transformer.", "hf"),),
    "sd2": (("cond_stage_model.model.", "openclip"),),
    "sdxl-base": (
        ("conditioner.embedders.0.transformer.", "hf"),
        ("conditioner.embedders.1.model.", "openclip"),
    ),
    "sdxl-refiner": (("conditioner.embedders.0.model.", "openclip"),),
}


@dataclass
class Components:
    """The tensors of one checkpoint, by component, without prefixes."""

    unet: StateDict = field(default_factory=dict)
    vae: StateDict = field(default_factory=dict)
    text: list[StateDict] = field(default_factory=list)  # HF layout, in embedder order
    unused: StateDict = field(default_factory=dict)  # full original keys


def _check_family(family: ModelFamily) -> None:
    if family not in TEXT_PREFIXES:
        raise ValueError(f"unknown model family {family!r}; valid names: {list(TEXT_PREFIXES)}")


def _strip(sd: Mapping[str, Tensor], prefix: str) -> StateDict:
    return {k[len(prefix) :]: v for k, v in sd.items() if k.startswith(prefix)}


def split_checkpoint(sd: Mapping[str, Tensor], family: ModelFamily) -> Components:
    """Split an LDM/sgm state dict of ``family`` into UNet, VAE, text encoders and the rest."""
    _check_family(family)
    out = Components(unet=_strip(sd, UNET_PREFIX), vae=_strip(sd, VAE_PREFIX))
    taken = {UNET_PREFIX + k for k in out.unet} | {VAE_PREFIX + k for k in out.vae}
    for prefix, layout in TEXT_PREFIXES[family]:
        raw = _strip(sd, prefix)
        if layout == "openclip":
            hf = openclip_to_hf(raw)
            kept = hf_to_openclip(hf)
        else:
            hf = {k: v for k, v in raw.items() if k != "text_model.embeddings.position_ids"}
            kept = hf
        out.text.append(hf)
        taken |= {prefix + k for k in kept}
    out.unused = {k: v for k, v in sd.items() if k not in taken}
    return out


def join_checkpoint(parts: Components, family: ModelFamily) -> StateDict:
    """Inverse of ``split_checkpoint``: prefixed LDM/sgm keys (``unused`` merged back as is)."""
    _check_family(family)
    prefixes = TEXT_PREFIXES[family]
    if len(parts.text) not in (0, len(prefixes)):
        raise ValueError(f"{family} has {len(prefixes)} text encoders, got {len(parts.text)}")
    out: StateDict = {UNET_PREFIX + k: v for k, v in parts.unet.items()}
    out.update({VAE_PREFIX + k: v for k, v in parts.vae.items()})
    for (prefix, layout), sd in zip(prefixes, parts.text):
        converted = hf_to_openclip(sd) if layout == "openclip" else sd
        out.update({prefix + k: v for k, v in converted.items()})
    for key, value in parts.unused.items():
        if key in out:
            raise ValueError(f"unused tensor {key!r} collides with a component tensor")
        out[key] = value
    return out


def ema_key(unet_key: str) -> str:
    """ldm ``LitEma`` name of a UNet parameter: ``model_ema.`` + the name with dots removed."""
    return EMA_PREFIX + ("diffusion_model." + unet_key).replace(".", "")


def has_ema(sd: Mapping[str, Tensor]) -> bool:
    return any(k.startswith(EMA_PREFIX) and k not in _EMA_BOOKKEEPING for k in sd)


_EMA_BOOKKEEPING = ("model_ema.decay", "model_ema.num_updates")


def ema_unet(sd: Mapping[str, Tensor], unet: Mapping[str, Tensor]) -> StateDict:
    """The EMA weights for every key of ``unet`` (prefix-stripped UNet keys); raises
    ``ValueError`` naming up to 10 UNet keys with no EMA copy."""
    missing = [k for k in unet if ema_key(k) not in sd]
    if missing:
        more = f" (+{len(missing) - 10} more)" if len(missing) > 10 else ""
        raise ValueError(
            f"use_ema=True but {len(missing)} UNet tensors have no model_ema copy: "
            f"{', '.join(missing[:10])}{more}"
        )
    return {k: sd[ema_key(k)] for k in unet}


def detect_family_from_keys(sd: Mapping[str, Tensor]) -> ModelFamily | None:
    """The family named by the text-encoder prefixes present, or None."""
    if any(k.startswith("conditioner.embedders.1.") for k in sd):
        return "sdxl-base"
    if any(k.startswith("conditioner.embedders.0.model.") for k in sd):
        return "sdxl-refiner"
    if any(k.startswith("cond_stage_model.model.") for k in sd):
        return "sd2"
    if any(k.startswith("cond_stage_model.transformer.") for k in sd):
        return "sd1"
    return None
