"""Whole-checkpoint reading and conversion: single-file LDM/sgm <-> diffusers folder.

``read_checkpoint`` gives one representation for every input (full LDM/sgm keys plus a
``ModelSpec``); writers take that representation back to a single ``.safetensors`` (genmodels
format: LDM keys, configs in the metadata) or to a diffusers folder. Tensors are moved, never
recomputed (only renamed, split or concatenated along rows, transposed or reshaped), so
conversions in both directions are bit-identical.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Literal

from torch import Tensor

from genmodels.checkpoints.detect import ModelSpec, detect_checkpoint
from genmodels.checkpoints.diffusers_folder import (
    is_diffusers_folder,
    read_diffusers_folder,
    write_diffusers_folder,
)
from genmodels.checkpoints.io import (
    SAFETENSORS_SUFFIXES,
    CheckpointError,
    load_state_dict,
    read_metadata,
    save_state_dict,
)
from genmodels.checkpoints.native import encode_metadata

StateDict = dict[str, Tensor]
TARGETS = ("safetensors", "diffusers")


def read_checkpoint(
    path: str | os.PathLike, prediction: str | None = None
) -> tuple[StateDict, ModelSpec]:
    """Full LDM/sgm state dict and detected ModelSpec of a file or diffusers folder."""
    path = Path(path)
    if path.is_dir():
        if not is_diffusers_folder(path):
            raise CheckpointError(f"{path}: a folder but not a diffusers model folder")
        return read_diffusers_folder(path, prediction)
    sd = load_state_dict(path)
    try:
        return sd, detect_checkpoint(sd, read_metadata(path), prediction)
    except CheckpointError as exc:  # name the file (detection only sees tensors)
        if str(path) in str(exc):
            raise
        raise CheckpointError(f"{path}: {exc}") from exc


def save_checkpoint(sd: StateDict, spec: ModelSpec, path: str | os.PathLike) -> None:
    """Single-file safetensors in the genmodels format (LDM/sgm keys, configs in metadata)."""
    if spec.vae is None:
        raise ValueError("save_checkpoint: the model has no VAE config")
    meta = encode_metadata(
        spec.family, spec.prediction, spec.zero_terminal_snr, spec.unet, spec.vae, spec.text
    )
    save_state_dict(sd, path, meta)


def check_destination(
    src: Path, dst: Path, to: Literal["safetensors", "diffusers"], overwrite: bool = False
) -> None:
    """Refuse a destination that would lose data or mislabel the output, before any reading:
    the source itself, an existing file without ``overwrite``, a folder for a file target, and a
    file name whose suffix is not the target format (safetensors under ``.ckpt`` would be read
    back as a pickle)."""
    if to not in TARGETS:
        raise ValueError(f"unknown target format {to!r}; valid: {list(TARGETS)}")
    if dst.exists() and dst.resolve() == src.resolve():
        raise ValueError(f"{dst}: destination is the source; refusing to overwrite it")
    if to == "diffusers":
        if dst.exists() and not dst.is_dir():
            raise ValueError(f"{dst}: exists and is not a folder; a diffusers model is a folder")
        return  # a non-empty folder is checked by write_diffusers_folder
    if dst.suffix.lower() not in SAFETENSORS_SUFFIXES:
        raise ValueError(
            f"{dst}: a safetensors file needs a {' or '.join(SAFETENSORS_SUFFIXES)} name "
            f"(got {dst.suffix or 'no suffix'!r}); e.g. {dst.with_suffix('.safetensors')}"
        )
    if dst.is_dir():
        raise ValueError(f"{dst}: is a folder; give a .safetensors file name")
    if dst.exists() and not overwrite:
        raise ValueError(f"{dst}: file exists; pass --overwrite (overwrite=True) to replace it")


def convert_checkpoint(
    src: str | os.PathLike,
    dst: str | os.PathLike,
    to: Literal["safetensors", "diffusers"],
    prediction: str | None = None,
    overwrite: bool = False,
) -> ModelSpec:
    """Convert ``src`` (single file or diffusers folder) to ``dst``. The source is only read;
    an existing ``dst`` is replaced only with ``overwrite`` (see ``check_destination``)."""
    src, dst = Path(src), Path(dst)
    check_destination(src, dst, to, overwrite)
    sd, spec = read_checkpoint(src, prediction)
    if to == "diffusers":
        write_diffusers_folder(sd, spec, dst, overwrite=overwrite)
    else:
        save_checkpoint(sd, spec, dst)
    return spec
