"""Reading ControlNet files: what they hold, their config (from the tensors) and their family.

Accepted, as A1111's sd-webui-controlnet, ComfyUI and diffusers load them:

* single files (``.safetensors``; ``.ckpt`` / ``.pth`` through the safe weights-only reader) in
  the ldm ``cldm`` layout, with the ``control_model.`` prefix (the original ControlNet 1.0
  files, which may also hold a whole SD model: only ``control_model.*`` is read) or without it
  (ControlNet 1.1, ``input_hint_block.*`` at the top);
* single files with diffusers key names (``controlnet_cond_embedding.*``, as many SDXL
  ControlNets are shared);
* diffusers folders (``config.json`` with ``_class_name: ControlNetModel`` beside
  ``diffusion_pytorch_model.safetensors``).

Everything that shapes a weight is measured from the tensors (``checkpoints.infer``); the
attention heads, which leave no trace, come from the folder's ``config.json``, else from the
UNet the ControlNet is loaded for (a ControlNet is a copy of its encoder), else from the family
rule of ``infer``. The family is told by the tensors: an SDXL ``label_emb`` (input width 2816),
else the cross-attention context width (768: SD 1.x, 1024: SD 2.x).
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass, replace
from pathlib import Path

from safetensors import SafetensorError, safe_open
from torch import Tensor

from genmodels.checkpoints.controlnet_keys import diffusers_to_ldm_controlnet, hint_conv_indices
from genmodels.checkpoints.detect import FAMILY_NAMES
from genmodels.checkpoints.diffusers_folder import component_weights_file, find_component_weights
from genmodels.checkpoints.diffusers_unet import unet_config_from_diffusers
from genmodels.checkpoints.infer import infer_unet_config
from genmodels.checkpoints.io import (
    CheckpointError,
    check_regular_file,
    load_state_dict,
    read_json,
)
from genmodels.configs.controlnet import ControlNetConfig
from genmodels.configs.unet import UNetConfig
from genmodels.models.family import ModelFamily

__all__ = [
    "ControlNetFile", "check_controlnet_fits", "controlnet_family", "is_controlnet",
    "read_controlnet",
]  # fmt: skip

StateDict = dict[str, Tensor]
PREFIX = "control_model."
_LDM_MARKER = "input_hint_block.0.weight"
_DIFFUSERS_MARKER = "controlnet_cond_embedding.conv_in.weight"


@dataclass
class ControlNetFile:
    """A ControlNet read from disk: ldm-layout tensors (no prefix), config, family."""

    state_dict: StateDict
    config: ControlNetConfig
    family: ModelFamily | None  # None: the tensors do not say (non-standard widths)
    layout: str  # "ldm" | "diffusers" (key names of the file)
    weights_file: Path  # the file holding the tensors (a folder's weights file)


def controlnet_family(config: UNetConfig) -> ModelFamily | None:
    """The SD family a ControlNet (or UNet) encoder belongs to, from its measured widths."""
    if config.num_classes == "sequential":  # as detect.detect_family: base unless 2560 wide
        return "sdxl-refiner" if config.adm_in_channels == 2560 else "sdxl-base"
    return {768: "sd1", 1024: "sd2"}.get(config.context_dim or 0)


def is_controlnet(path: str | os.PathLike) -> bool:
    """Whether ``path`` holds a ControlNet (by its key names or config.json; cheap: safetensors
    headers only). Unreadable files are not ControlNets here (the caller's reader reports)."""
    path = Path(path)
    try:
        if path.is_dir():
            cfg = path / "config.json"
            return cfg.is_file() and read_json(cfg).get("_class_name") == "ControlNetModel"
        if path.suffix.lower() not in (".safetensors", ".sft"):
            return False
        check_regular_file(path)  # never open a FIFO: it would block
        with safe_open(str(path), framework="pt") as f:
            keys = set(f.keys())
    except (OSError, ValueError, SafetensorError, CheckpointError):
        return False
    markers = (PREFIX + _LDM_MARKER, _LDM_MARKER, _DIFFUSERS_MARKER)
    return any(m in keys for m in markers)


def _ldm_tensors(sd: StateDict, path: Path) -> tuple[StateDict, str]:
    """(ldm-layout tensors without prefix, layout of the file)."""
    if any(k.startswith(PREFIX) for k in sd):
        return {k[len(PREFIX) :]: v for k, v in sd.items() if k.startswith(PREFIX)}, "ldm"
    if _LDM_MARKER in sd:
        return dict(sd), "ldm"
    if _DIFFUSERS_MARKER in sd:
        return diffusers_to_ldm_controlnet(sd, str(path)), "diffusers"
    if "difference" in sd:
        raise CheckpointError(
            f"{path}: a ControlNet 1.0 'transfer control' (difference) file; only plain "
            "ControlNets are supported"
        )
    if any(k.startswith("model.diffusion_model.") for k in sd):
        what = "a Stable Diffusion checkpoint, not a ControlNet"
    else:
        what = "no ControlNet tensors"
    keys = ", ".join(sorted(sd)[:5]) or "-"
    raise CheckpointError(
        f"{path}: {what} (expected {PREFIX}{_LDM_MARKER}, {_LDM_MARKER} or {_DIFFUSERS_MARKER}; "
        f"found {keys}{' ...' if len(sd) > 5 else ''})"
    )


def _hint_block_channels(sd: StateDict, source: str) -> tuple[int, tuple[int, ...]]:
    """(hint_channels, hint_block_channels) from the ``input_hint_block`` convolutions."""
    found = sorted(
        {int(m.group(1)) for k in sd if (m := re.match(r"input_hint_block\.(\d+)\.", k))}
    )
    n = len(found)
    if n < 2 or n % 2 or found != hint_conv_indices(n):
        raise CheckpointError(
            f"{source}: input_hint_block convolutions at indices {found[:12]}; expected an even "
            "number of them at 0, 2, 4, ..."
        )
    shapes = []
    for j in range(n // 2):  # the first conv of each stage: (width, in, 3, 3)
        weight = sd.get(f"input_hint_block.{4 * j}.weight")
        if weight is None or weight.ndim != 4:
            raise CheckpointError(
                f"{source}: input_hint_block.{4 * j}.weight is missing or not 4-d"
            )
        shapes.append(tuple(weight.shape))
    return shapes[0][1], tuple(s[0] for s in shapes)


def _heads(measured: UNetConfig, heads_from: UNetConfig) -> UNetConfig:
    """``measured`` with the attention heads (and upcast) of ``heads_from``, if they fit."""
    try:
        return replace(
            measured, num_heads=heads_from.num_heads, upcast_attention=heads_from.upcast_attention,
            num_head_channels=heads_from.num_head_channels,
        )  # fmt: skip
    except ValueError:
        return measured


def read_controlnet(path: str | os.PathLike, like: UNetConfig | None = None) -> ControlNetFile:
    """Read a ControlNet single file or diffusers folder (see the module docstring).

    ``like``: the UNet it will control; its heads are used when the file does not say."""
    path = Path(path)
    folder_cfg = None
    weights = path
    if path.is_dir():
        if not (path / "config.json").is_file():
            raise CheckpointError(
                f"{path}: a folder without config.json (not a diffusers ControlNet)"
            )
        folder_cfg = read_json(path / "config.json")
        cls = folder_cfg.get("_class_name", "ControlNetModel")
        if cls != "ControlNetModel":
            raise CheckpointError(f"{path}/config.json: _class_name {cls!r}, not a ControlNetModel")
        weights = component_weights_file(path) or path
        raw = find_component_weights(path)
    else:
        raw = load_state_dict(path)
    sd, layout = _ldm_tensors(raw, path)
    source = str(path)
    hint_channels, hint_widths = _hint_block_channels(sd, source)
    what = f"{source} (ControlNet)"
    unet = infer_unet_config(sd, "sd1", encoder_only=True, what=what)  # heads: a placeholder
    family = controlnet_family(unet)
    if folder_cfg is not None:
        try:
            unet = _heads(unet, unet_config_from_diffusers(folder_cfg))
        except ValueError as exc:
            raise CheckpointError(f"{path}/config.json: {exc}") from exc
    elif like is not None and like.context_dim == unet.context_dim:
        unet = _heads(unet, like)
    elif family is not None:  # the family's released head layout (or a matching preset)
        try:
            unet = infer_unet_config(sd, family, encoder_only=True, what=what)
        except CheckpointError:  # non-standard widths: keep the placeholder heads
            pass
    try:
        config = ControlNetConfig(unet, hint_channels, hint_widths)
    except ValueError as exc:
        raise CheckpointError(f"{source}: {exc}") from exc
    return ControlNetFile(sd, config, family, layout, weights)


def _skip_channels(c: UNetConfig) -> list[int]:
    """Channels of the residuals a ControlNet / UNet encoder exchanges (one per input block,
    then the middle block)."""
    chans = [c.model_channels]
    for level, mult in enumerate(c.channel_mult):
        chans += [mult * c.model_channels] * c.res_blocks(level)
        if level != c.levels - 1:
            chans.append(mult * c.model_channels)
    return chans + [chans[-1]]


def _describe(family: ModelFamily | None, c: UNetConfig) -> str:
    if family is not None:
        return FAMILY_NAMES[family]
    label = f", SDXL label input {c.adm_in_channels}" if c.num_classes == "sequential" else ""
    return f"an unrecognised family (context width {c.context_dim}{label})"


def check_controlnet_fits(
    cn: ControlNetFile, unet: UNetConfig, family: ModelFamily, latent_channels: int,
    vae_factor: int, source: str,
) -> None:  # fmt: skip
    """Refuse a ControlNet that cannot control this model, naming the file and both families."""
    c = cn.config.unet
    problems = []
    if cn.family is not None and cn.family != family:
        problems.append("another model family")
    if c.context_dim != unet.context_dim:
        problems.append(f"context width {c.context_dim} vs the model's {unet.context_dim}")
    if (c.num_classes == "sequential") and c.adm_in_channels != unet.adm_in_channels:
        problems.append(f"label input {c.adm_in_channels} vs the model's {unet.adm_in_channels}")
    if _skip_channels(c) != _skip_channels(unet):
        problems.append(
            f"residual channels {_skip_channels(c)} vs the UNet's {_skip_channels(unet)}"
        )
    if c.in_channels != latent_channels:
        problems.append(f"{c.in_channels} input channels vs {latent_channels} latent channels")
    if cn.config.hint_factor != vae_factor:
        problems.append(
            f"its hint encoder downsamples by {cn.config.hint_factor}, the VAE by {vae_factor}"
        )
    if problems:
        raise CheckpointError(
            f"{source}: a ControlNet for {_describe(cn.family, c)} cannot control this "
            f"{_describe(family, unet)} model ({'; '.join(problems)})"
        )
