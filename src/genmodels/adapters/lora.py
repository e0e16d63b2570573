"""Applying LoRA-family files to a UNet and its text encoders, stacking them, and removing them.

A LoRA is merged into the weights (as A1111 with its default settings and diffusers'
``fuse_lora``): ``W <- W + weight * alpha / rank * Delta W``, computed in float32 and cast to the
weight's dtype. The first time a module is changed its original weight tensor is kept (the
tensor itself, not a copy), and ``unload`` puts it back, so removing every LoRA restores the
model bit for bit. Several LoRAs stack: each adds its delta to the current weights.

A file is checked before the model changes: its model family (``lora_file.guess_lora_family``),
that its keys name modules of this model (keys that fit nothing are listed in a warning, or an
error with ``strict=True``) and that every delta has the module's shape; a failure part-way
through a file puts back what that file changed.
"""

from __future__ import annotations

import math
import os
import warnings
from collections.abc import Sequence
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path

import torch
from torch import Tensor, nn

from genmodels.adapters.deltas import layer_delta
from genmodels.adapters.hashes import lora_hash
from genmodels.adapters.kohya_names import Target, diffusers_lookup, kohya_lookup
from genmodels.adapters.lora_file import guess_lora_family, parse_lora
from genmodels.checkpoints.io import CheckpointError, load_state_dict, read_metadata
from genmodels.models.family import ModelFamily

__all__ = ["AppliedLora", "LoraError", "LoraStack", "FAMILY_NAMES"]

FAMILY_NAMES: dict[str, str] = {
    "sd1": "SD 1.x", "sd2": "SD 2.x", "sdxl-base": "SDXL", "sdxl-refiner": "SDXL refiner",
}  # fmt: skip
_COMPATIBLE = {
    "SD 1.x": ("sd1",), "SD 2.x": ("sd2",), "SD 1.x / 2.x": ("sd1", "sd2"),
    "SDXL": ("sdxl-base", "sdxl-refiner"),
}  # fmt: skip
_LISTED = 10
DIFFUSERS_FILES = ("pytorch_lora_weights.safetensors", "pytorch_lora_weights.bin")


class LoraError(ValueError):
    """A LoRA file that cannot be applied to this model."""


@dataclass
class AppliedLora:
    """One LoRA file applied to the model."""

    name: str  # the file name without suffix (A1111's network name)
    path: Path
    unet_weight: float
    text_weight: float
    modules: int  # modules changed
    unknown_keys: list[str] = field(default_factory=list)

    @cached_property
    def short_hash(self) -> str:
        """A1111's short LoRA hash (``hashes.lora_hash``), computed on first use."""
        return lora_hash(self.path)


def _listing(items: Sequence[str]) -> str:
    more = f" (+{len(items) - _LISTED} more)" if len(items) > _LISTED else ""
    return ", ".join(items[:_LISTED]) + more


class LoraStack:
    """The LoRAs applied to one model (a UNet and its text encoders) and the original weights
    of every module they changed."""

    def __init__(self) -> None:
        self.applied: list[AppliedLora] = []
        self._originals: dict[int, tuple[nn.Module, Tensor]] = {}  # id(module) -> original
        self._lookup: tuple[tuple[int, ...], dict[str, Target]] | None = None

    def _names(
        self, unet: nn.Module, texts: Sequence[nn.Module], family: ModelFamily
    ) -> dict[str, Target]:
        key = (id(unet), *map(id, texts))
        if self._lookup is None or self._lookup[0] != key:
            lookup = kohya_lookup(unet, texts, family)
            lookup.update(diffusers_lookup(unet, texts, family))
            self._lookup = (key, lookup)
        return self._lookup[1]

    def apply(
        self,
        path: str | os.PathLike,
        unet: nn.Module,
        texts: Sequence[nn.Module],
        family: ModelFamily,
        unet_weight: float = 1.0,
        text_weight: float = 1.0,
        strict: bool = False,
    ) -> AppliedLora:
        """Merge the LoRA at ``path`` into ``unet`` and ``texts`` (the embedders' CLIP models)."""
        path = Path(path)
        for what, w in (("unet_weight", unet_weight), ("text_weight", text_weight)):
            if not isinstance(w, int | float) or isinstance(w, bool) or not math.isfinite(w):
                raise ValueError(f"LoRA {what} must be a finite number, got {w!r}")
        name = path.stem
        if path.is_dir():  # a diffusers LoRA folder (save_lora_weights), named by the folder
            path = next((path / n for n in DIFFUSERS_FILES if (path / n).is_file()), path)
        try:
            sd, metadata = load_state_dict(path), read_metadata(path)
        except CheckpointError as exc:
            raise LoraError(f"LoRA {exc}") from None
        ours = FAMILY_NAMES.get(family, family)
        dora = [k for k in sd if k.endswith(("dora_scale", "lora_magnitude_vector.weight"))]
        if dora:  # the magnitude rescaling is not implemented: refuse rather than approximate
            raise LoraError(f"{path}: DoRA LoRAs are not supported ({len(dora)} keys such as "
                            f"{dora[0]})")  # fmt: skip
        theirs = guess_lora_family(sd)
        if theirs is not None and family not in _COMPATIBLE.get(theirs, ()):
            raise LoraError(
                f"{path}: an {theirs} LoRA cannot be applied to this {ours} model ({family})"
            )
        parsed = parse_lora(sd, metadata, self._names(unet, texts, family))
        if not parsed.layers:
            raise LoraError(
                f"{path}: none of its {len(sd)} keys names a module of this {ours} model (a "
                f"LoRA for another model family, or not a LoRA?): {_listing(sorted(sd))}"
            )
        if parsed.unknown:
            text = f"{path}: {len(parsed.unknown)} keys fit no module of this {ours} model"
            if strict:
                raise LoraError(f"{text}: {_listing(parsed.unknown)}")
            warnings.warn(f"{text} and are not applied: {_listing(parsed.unknown)}", stacklevel=2)
        modules = {"unet": [unet], "text": list(texts)}
        changed: list[tuple[nn.Module, Tensor]] = []
        try:
            for target, layer in parsed.layers.items():
                module = modules[target.component][target.index].get_submodule(target.path)
                weight = unet_weight if target.component == "unet" else text_weight
                changed.append((module, module.weight.data))
                self._add(module, layer.tensors, layer.alpha, weight, f"{path}: {layer.name}")
        except (ValueError, RuntimeError) as exc:
            for module, previous in reversed(changed):
                module.weight.data = previous
            detail = str(exc) if str(exc).startswith(str(path)) else f"{path}: {exc}"
            raise LoraError(f"{detail} (this {ours} model)") from None
        applied = AppliedLora(
            name, path, float(unet_weight), float(text_weight), len(changed), parsed.unknown
        )
        self.applied.append(applied)
        return applied

    @torch.no_grad()
    def _add(self, module: nn.Module, tensors: dict[str, Tensor], alpha: float | None,
             weight: float, name: str) -> None:  # fmt: skip
        current = module.weight.data
        tensors = {k: v.to(current.device) for k, v in tensors.items()}
        # float32 W + weight * delta, rounded once to the weight's dtype
        new = layer_delta(tensors, current.shape, alpha, name, weight, base=current)
        self._originals.setdefault(id(module), (module, current))
        module.weight.data = new

    def unload(self) -> None:
        """Put every changed module's original weight tensor back (bit-exact)."""
        for module, original in self._originals.values():
            current = module.weight.data
            if original.device != current.device or original.dtype != current.dtype:
                original = original.to(device=current.device, dtype=current.dtype)
            module.weight.data = original
        self._originals.clear()
        self.applied.clear()
