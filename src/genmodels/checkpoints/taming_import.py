"""Import a taming-transformers checkpoint as a genmodels run directory.

``import_taming(ckpt, out_dir)`` writes ``vqgan.safetensors`` / ``vqgan.json`` (read by
:func:`~genmodels.checkpoints.runs.load_vqgan`) and, for a ``Net2NetTransformer``,
``transformer.safetensors`` / ``transformer.json`` (read by
:func:`~genmodels.checkpoints.runs.load_transformer`), so ``genmodels vq-sample
--ckpt out_dir`` samples it and ``vqgan_dir: out_dir`` trains a new transformer on its codes.

What the weights do not say comes from the run's ``configs/*-project.yaml`` (found next to
``<logdir>/checkpoints/*.ckpt``, or given) or from the arguments: the GPT's ``n_head``, and
the weightless cond stage. taming lays its conditioning tokens over the image codes' ids
(SOS = ``sos_token``, default 0; class c = token c), recorded as ``cond_offset``. Image- and
coordinate-conditional models (a ``cond_stage_model.*`` VQGAN, ``__is_first_stage__``, a
``CoordStage``) are refused: their conditioning inputs (segmentation maps, depth, taming's
downsampled images, coordinates) are not what ``vq-sample`` makes.
The run directory appears whole or not at all (written in a temporary folder, then renamed).
"""

from __future__ import annotations

import math
import os
import shutil
import tempfile
from dataclasses import dataclass, field, replace
from pathlib import Path

import torch

from genmodels.checkpoints.io import CheckpointError, StateDict, load_state_dict
from genmodels.checkpoints.taming import (
    TAMING_RESOLUTION,
    find_vq_prefix,
    gpt_from_taming_state_dict,
    net2net_parts,
    vq_config_from_taming_state_dict,
    vqgan_from_taming_state_dict,
)
from genmodels.checkpoints.taming_project import (
    TamingProject,
    find_project_configs,
    merge_configs,
    taming_project_from_dict,
)
from genmodels.configs.io import read_yaml
from genmodels.models.gpt import GPT
from genmodels.models.net2net import TransformerMeta
from genmodels.models.permuters import PERMUTERS, make_permuter
from genmodels.models.vqgan import VQModel

from .runs import save_transformer, save_vqgan

__all__ = ["TamingImport", "import_taming", "read_project"]


@dataclass
class TamingImport:
    """What :func:`import_taming` wrote; ``notes`` are assumptions worth telling the user."""

    out_dir: Path
    vq: VQModel
    meta: TransformerMeta | None
    notes: list[str] = field(default_factory=list)


def read_project(ckpt: str | Path, project: str | Path | None = None) -> TamingProject | None:
    """The taming project config given, or the ones beside ``ckpt`` merged; None if none."""
    files = [Path(project)] if project is not None else find_project_configs(ckpt)
    if not files:
        return None
    merged = merge_configs([read_yaml(f) for f in files])
    return taming_project_from_dict(merged, ", ".join(str(f) for f in files))


def _agree(name: str, given: int | None, from_project: int | None, src: str) -> int | None:
    if given is not None and from_project is not None and given != from_project:
        raise ValueError(f"{name}={given} contradicts the project config of {src} ({from_project})")
    return given if given is not None else from_project


def _conditioning(
    proj: TamingProject | None, cond_stage: str, n_classes: int | None, sos: int | None, src: str
) -> tuple[int, int, list[str]]:
    """(n_classes, cond_offset, notes) of a Net2NetTransformer without cond-stage weights."""
    kind = proj.cond if proj is not None else ("class" if n_classes else "sos")
    if cond_stage != "none" or kind in ("first_stage", "vqgan", "coord"):
        what = "a VQGAN cond stage" if cond_stage != "none" else f"a {kind!r} cond stage"
        raise CheckpointError(
            f"{src}: an image- or coordinate-conditional taming transformer ({what}); genmodels "
            f"run directories hold only unconditional (SOS), class-conditional and 'lowres' / "
            f"'edges' models, so its conditioning cannot be expressed. Its VQGAN still loads "
            f"with genmodels.checkpoints.taming.load_taming_vqgan"
        )
    if kind == "class":
        n = _agree("n_classes", n_classes, proj.n_classes if proj else None, src)
        if not n or n < 1:
            raise ValueError(f"{src}: a class-conditional model: pass n_classes (e.g. 1000)")
        if sos is not None:
            raise ValueError(f"{src}: is class-conditional; sos_token does not apply")
        return n, 0, []  # taming's Labelator: the class label is the token
    if n_classes:
        raise ValueError(f"{src}: the project config says unconditional; n_classes does not apply")
    token = _agree("sos_token", sos, proj.sos_token if proj else None, src)
    notes = []
    if proj is None and sos is None:
        notes.append(
            "no taming project config beside the checkpoint: assumed unconditional with SOS "
            "token 0 (taming's default); pass n_classes for a class-conditional model"
        )
    return 0, 0 if token is None else token, notes


def _grid(order: torch.Tensor | None, vq: VQModel, size: int | None) -> tuple[int, int]:
    """The code grid: from the permuter's length (square) or the image size."""
    if size is not None:
        grid = vq.config.latent_shape(size)
    elif order is not None and math.isqrt(order.numel()) ** 2 == order.numel():
        return (math.isqrt(order.numel()),) * 2
    else:
        grid = vq.config.latent_shape(vq.config.resolution)
    if order is not None and order.numel() != grid[0] * grid[1]:
        raise ValueError(f"the permuter orders {order.numel()} codes, not a {grid} grid")
    return grid


def _permuter_name(order: torch.Tensor | None, grid: tuple[int, int], src: str) -> str:
    if order is None:
        return "identity"
    for name in PERMUTERS[1:]:
        if torch.equal(make_permuter(name, *grid).forward_shuffle_idx, order.long()):
            return name
    raise CheckpointError(
        f"{src}: permuter.forward_shuffle_idx is an order none of genmodels' permuters "
        f"({', '.join(PERMUTERS[1:])}) gives on a {grid} grid"
    )


def _meta(sd: StateDict, vq: VQModel, n_head: int, cond: tuple[int, int], size: int | None,
          src: str) -> tuple[GPT, TransformerMeta]:  # fmt: skip
    gpt = gpt_from_taming_state_dict(sd, n_head, src)
    order = net2net_parts(sd).permuter_order
    grid = _grid(order, vq, size)
    n_classes, offset = cond
    try:
        meta = TransformerMeta(gpt.config, vq.n_codes, n_classes, grid,
                               _permuter_name(order, grid, src), cond_offset=offset)  # fmt: skip
    except ValueError as exc:
        if isinstance(exc, CheckpointError):
            raise
        hint = " (trained on another image size? pass size)" if "block_size" in str(exc) else ""
        raise ValueError(f"{src}: {exc}{hint}") from None
    return gpt, meta


def _check_destination(out_dir: Path) -> None:
    if out_dir.exists() and (not out_dir.is_dir() or any(out_dir.iterdir())):
        raise ValueError(f"{out_dir}: exists and is not an empty directory; choose a new one")


def _write(
    out_dir: Path, vq: VQModel, gpt: GPT | None, meta: TransformerMeta | None, source: str
) -> None:
    _check_destination(out_dir)
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out_dir.name}.", suffix=".tmp", dir=out_dir.parent))
    try:
        save_vqgan(tmp, vq, extra={"imported_from": source, "format": "taming"})
        if gpt is not None and meta is not None:
            save_transformer(tmp, gpt, meta)
        tmp.chmod(0o755)
        os.rename(tmp, out_dir)  # replaces an empty directory
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def import_taming(
    path: str | os.PathLike,
    out_dir: str | os.PathLike,
    *,
    n_head: int | None = None,
    project: str | os.PathLike | None = None,
    n_classes: int | None = None,
    sos_token: int | None = None,
    size: int | None = None,
) -> TamingImport:
    """Write the genmodels run directory ``out_dir`` (new or empty) for taming ``path``.

    ``n_head`` (not in the weights; taming's released transformers use 16), ``n_classes`` and
    ``sos_token`` default to the project config (``project``, or found beside ``path``) and
    must agree with it. ``size``: the training image size in px when not the first stage's
    ``resolution`` (256). A plain VQGAN checkpoint gives a directory with the VQGAN alone.
    """
    path, out_dir = Path(path), Path(out_dir)
    src = str(path)
    _check_destination(out_dir)  # before reading a large file
    proj = read_project(path, project)
    sd = load_state_dict(path)
    prefix = find_vq_prefix(sd, src)
    resolution = proj.resolution if proj and proj.resolution else TAMING_RESOLUTION
    cfg = vq_config_from_taming_state_dict(sd, prefix, resolution, src)
    if cfg.remap is not None and proj is not None and proj.unknown_index is not None:
        cfg = replace(cfg, unknown_index=proj.unknown_index)
    vq = vqgan_from_taming_state_dict(sd, prefix, cfg, source=src)
    parts = net2net_parts(sd)
    gpt, meta, notes = None, None, []
    if parts.has_transformer:
        heads = _agree("n_head", n_head, proj.n_head if proj else None, src)
        if heads is None:
            raise ValueError(
                f"{src}: the GPT's n_head is not stored in the weights and no taming project "
                f"config was found: pass n_head (taming's released transformers use 16)"
            )
        *cond, notes = _conditioning(proj, parts.cond_stage, n_classes, sos_token, src)
        gpt, meta = _meta(sd, vq, heads, tuple(cond), size, src)
    elif any(v is not None for v in (n_head, n_classes, sos_token, size)):
        raise ValueError(f"{src}: a VQGAN without a transformer; n_head / n_classes / "
                         f"sos_token / size do not apply")  # fmt: skip
    _write(out_dir, vq, gpt, meta, src)
    return TamingImport(out_dir, vq, meta, notes)
