"""Merging checkpoints, as A1111's checkpoint merger (``modules/extras.py: run_modelmerger``):

* weighted sum: ``(1 - alpha) * A + alpha * B``
* add difference: ``A + alpha * (B - C)``

on the full LDM / sgm keys. Keys of A missing from B (or C) and non-floating tensors (HF's
``position_ids``) are copied from A, as A1111 does; a shape mismatch is an error naming the key.
All models must be of one family. Sums are computed in float32 and stored in A's dtype (float16
with ``half``).

Single-file safetensors inputs in the LDM layout are read one tensor at a time (plain reads
into fresh tensors, so no file mapping stays resident) and the output is written the same way
(``safetensors_stream``), so the peak memory is a few tensors, not three models; other inputs
(``.ckpt``, diffusers folders) are read whole first.
The recipe goes into the output's metadata as A1111's ``sd_merge_recipe`` / ``sd_merge_models``
(with the inputs' short hashes); A's genmodels metadata (its architecture) is kept.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO, Literal

import torch
from torch import Tensor

from genmodels.checkpoints.convert import check_destination, read_checkpoint
from genmodels.checkpoints.detect import FAMILY_NAMES, detect_checkpoint
from genmodels.checkpoints.io import (
    _SAFETENSORS_DTYPES,
    SAFETENSORS_SUFFIXES,
    CheckpointError,
    _stream_one,
    check_regular_file,
    read_metadata,
)
from genmodels.checkpoints.safetensors_stream import write_safetensors_streaming

__all__ = ["MERGE_MODES", "MergeRecipe", "merge_checkpoints"]

MergeMode = Literal["weighted-sum", "add-difference"]
MERGE_MODES: tuple[MergeMode, ...] = ("weighted-sum", "add-difference")
_A1111_NAMES = {"weighted-sum": "Weighted sum", "add-difference": "Add difference"}


@dataclass(frozen=True)
class MergeRecipe:
    mode: MergeMode
    alpha: float
    half: bool = False


class _Source:
    """The tensors of one input by key: a ``safe_open`` handle or a loaded dict."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.family: str
        self._handle: BinaryIO | None = None
        self._tensors: dict[str, Tensor] | None = None
        if path.is_file() and path.suffix.lower() in SAFETENSORS_SUFFIXES:
            self._open_streaming()
        if self._handle is None:
            self._tensors, spec = read_checkpoint(path)
            self.family = spec.family
            self.shapes = {k: (tuple(v.shape), v.dtype) for k, v in self._tensors.items()}

    def _open_streaming(self) -> None:
        check_regular_file(self.path)
        metadata = read_metadata(self.path)  # CheckpointError for a corrupt file
        f = open(self.path, "rb", buffering=0)  # noqa: SIM115 (lives as long as the source)
        try:
            n = int.from_bytes(f.read(8), "little")
            header = json.loads(f.read(n))
            infos = {k: v for k, v in header.items() if k != "__metadata__"}
            shapes = {k: (tuple(v["shape"]), _SAFETENSORS_DTYPES[v["dtype"]])
                      for k, v in infos.items()}  # fmt: skip
        except (ValueError, KeyError, TypeError) as exc:
            f.close()
            raise CheckpointError(f"{self.path}: not a readable safetensors file: {exc}") from None
        meta = {k: torch.empty(s, dtype=d, device="meta") for k, (s, d) in shapes.items()}
        try:
            spec = detect_checkpoint(meta, metadata, prediction="eps")
        except CheckpointError as exc:
            f.close()
            raise CheckpointError(f"{self.path}: {exc}") from None
        if spec.source_format not in ("ldm", "genmodels"):
            f.close()
            return
        self._handle, self._infos, self._base = f, infos, 8 + n
        self.shapes, self.family = shapes, spec.family
        self._buf = torch.empty(4 << 20, dtype=torch.uint8)

    def keys(self) -> list[str]:
        return list(self.shapes)

    def get(self, key: str) -> Tensor:
        """One tensor, read from the file into its own memory (no mapping of the file stays
        resident, so the peak is the tensors in use, not the models)."""
        if self._handle is None:
            return self._tensors[key]  # type: ignore[index]
        info = self._infos[key]
        start = self._base + info["data_offsets"][0]
        return _stream_one(self._handle, start, info, self.shapes[key][1], self._buf, self.path)

    def close(self) -> None:
        if self._handle is not None:
            self._handle.close()


def _short_hash(path: Path) -> str | None:
    """A1111's short model hash (first 10 hex digits of the file's sha256); None for folders."""
    if not path.is_file():
        return None
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()[:10]


def _fits(key: str, a: _Source, shape: tuple[int, ...], other: _Source) -> int | None:
    """Input channels of A's tensor that ``other`` covers: all (None) when the shapes are
    equal, 4 for A1111's inpainting / instruct-pix2pix rule (A's 9- or 8-channel input conv
    against a 4-channel one: only the latent channels are merged, the rest kept from A)."""
    theirs = other.shapes[key][0]
    if theirs == shape:
        return None
    same_conv = len(shape) == len(theirs) == 4
    same_conv = same_conv and theirs[:1] + theirs[2:] == shape[:1] + shape[2:]
    if same_conv and shape[1] in (8, 9) and theirs[1] == 4:
        return 4
    hint = " (A must be the inpainting model)" if same_conv and theirs[1] in (8, 9) else ""
    raise ValueError(f"{key}: shape {theirs} in {other.path}, {shape} in {a.path}{hint}")


def _combine(recipe: MergeRecipe, out_dtype: torch.dtype, sources: Sequence[_Source]
             ) -> Callable[[str], Tensor]:  # fmt: skip
    a, b, *rest = sources
    alpha = recipe.alpha

    def produce(key: str) -> Tensor:
        x = a.get(key)
        others = [s for s in (b, *rest) if key in s.shapes]
        if not x.is_floating_point() or len(others) != len(sources) - 1:
            return x.to(out_dtype) if x.is_floating_point() else x
        covered = {_fits(key, a, tuple(x.shape), s) for s in others}
        if len(covered) != 1:
            raise ValueError(
                f"{key}: the models' shapes differ: {[s.shapes[key][0] for s in others]}"
            )
        c = covered.pop()
        x = x.float()
        part = x if c is None else x[:, :c]
        if recipe.mode == "weighted-sum":
            part = (1 - alpha) * part + alpha * b.get(key).float()
        else:
            part = part + alpha * (b.get(key).float() - rest[0].get(key).float())
        if c is None:
            return part.to(out_dtype)
        x[:, :c] = part
        return x.to(out_dtype)

    return produce


def _check(paths: Sequence[Path], recipe: MergeRecipe) -> None:
    if recipe.mode not in MERGE_MODES:
        raise ValueError(f"unknown merge mode {recipe.mode!r}; valid: {list(MERGE_MODES)}")
    need = 3 if recipe.mode == "add-difference" else 2
    if len(paths) != need:
        raise ValueError(f"{recipe.mode} merges {need} models (A B{' C' * (need == 3)}), "
                         f"got {len(paths)}")  # fmt: skip
    alpha = recipe.alpha
    if not isinstance(alpha, int | float) or isinstance(alpha, bool) or alpha != alpha:
        raise ValueError(f"alpha must be a number, got {alpha!r}")


def merge_checkpoints(
    paths: Sequence[str | os.PathLike],
    out: str | os.PathLike,
    recipe: MergeRecipe,
    overwrite: bool = False,
) -> Path:
    """Merge ``paths`` (A, B[, C]) into the single-file safetensors ``out``."""
    paths = [Path(p) for p in paths]
    out = Path(out)
    _check(paths, recipe)
    for p in paths:
        check_destination(p, out, "safetensors", overwrite)
    sources: list[_Source] = []
    try:
        for p in paths:
            sources.append(_Source(p))
        return _merge(sources, paths, out, recipe)
    finally:
        for source in sources:
            source.close()


def _merge(sources: list[_Source], paths: list[Path], out: Path, recipe: MergeRecipe) -> Path:
    a = sources[0]
    for s in sources[1:]:
        if s.family != a.family:
            raise ValueError(
                f"{s.path} is a {FAMILY_NAMES[s.family]} checkpoint, {a.path} a "
                f"{FAMILY_NAMES[a.family]} one: models of different families cannot be merged"
            )
    first_float = next((d for _, d in a.shapes.values() if d.is_floating_point), torch.float32)
    out_dtype = torch.float16 if recipe.half else first_float
    entries = [(k, s, out_dtype if d.is_floating_point else d) for k, (s, d) in a.shapes.items()]
    metadata = read_metadata(paths[0]) if paths[0].is_file() else {}
    metadata = {k: v for k, v in metadata.items() if not k.startswith("sd_merge_")}
    metadata.update(_recipe_metadata(paths, recipe))
    write_safetensors_streaming(out, entries, _combine(recipe, out_dtype, sources), metadata)
    return out


def _recipe_metadata(paths: Sequence[Path], recipe: MergeRecipe) -> dict[str, str]:
    hashes = [_short_hash(p) for p in paths]
    names = ("primary", "secondary", "tertiary")
    recipe_json = {
        "type": "genmodels",
        "interp_method": _A1111_NAMES[recipe.mode],
        "multiplier": recipe.alpha,
        "save_as_half": recipe.half,
        **{f"{n}_model_hash": h for n, h in zip(names, hashes)},
        **{f"{n}_model_name": p.stem for n, p in zip(names, paths)},
    }
    models = {h or p.name: {"name": p.stem} for h, p in zip(hashes, paths)}
    return {
        "format": "pt",
        "sd_merge_recipe": json.dumps(recipe_json),
        "sd_merge_models": json.dumps(models),
    }
