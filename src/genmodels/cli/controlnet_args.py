"""The ControlNet options of ``genmodels txt2img | img2img | inpaint``.

    --controlnet canny.safetensors --control-image edges.png [--control-weight 0.8
    --control-start 0 --control-end 0.6]   (repeat the set for more units, matched in order)

Unit i takes the i-th ``--controlnet``, ``--control-image`` and, when given, the i-th weight /
start / end (defaults 1, 0, 1; with ``--from-png``, the values the PNG recorded for ControlNet
i). Everything is checked before the model is loaded; a PNG made with ControlNet units needs
their files again (the control image is not stored in it).
"""

from __future__ import annotations

import argparse
import math
import sys
from dataclasses import dataclass
from pathlib import Path

from genmodels.pipelines.controlnet import ControlUnit, LoadedControlNet, load_controlnet
from genmodels.pipelines.controlnet_infotext import (
    ControlRecord,
    legacy_model_hash,
    parse_control_infotext,
)
from genmodels.pipelines.image_reading import load_image
from genmodels.pipelines.latent_diffusion import LatentDiffusionPipeline
from genmodels.pipelines.metadata import parameters_from_infotext, read_png_parameters

__all__ = ["ControlSpec", "add_control_arguments", "control_specs", "load_units"]

_NUMBERS = (("weight", 1.0), ("start", 0.0), ("end", 1.0))


@dataclass(frozen=True)
class ControlSpec:
    """One unit from the command line, checked, not yet loaded."""

    path: Path
    image: Path
    weight: float
    start: float
    end: float


def add_control_arguments(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("ControlNet (repeat for several units, matched in order)")
    g.add_argument("--controlnet", type=Path, action="append", metavar="PATH",
                   help="ControlNet file (.safetensors/.pth) or diffusers folder")  # fmt: skip
    g.add_argument("--control-image", type=Path, action="append", metavar="IMG",
                   help="its control image, used as given (resized to the output)")  # fmt: skip
    g.add_argument("--control-weight", type=float, action="append", metavar="W",
                   help="its weight (default 1)")  # fmt: skip
    g.add_argument("--control-start", type=float, action="append", metavar="S",
                   help="first fraction of the sampling steps it acts on (default 0)")  # fmt: skip
    g.add_argument("--control-end", type=float, action="append", metavar="E",
                   help="last fraction of the sampling steps it acts on (default 1)")  # fmt: skip


def _recorded(args: argparse.Namespace) -> list[ControlRecord]:
    if getattr(args, "from_png", None) is None:
        return []
    try:
        extra = parameters_from_infotext(read_png_parameters(args.from_png)).extra
        return parse_control_infotext(extra)
    except ValueError as exc:
        raise ValueError(f"--from-png {args.from_png}: {exc}") from None


def control_specs(args: argparse.Namespace, max_pixels: int | None) -> list[ControlSpec]:
    """The units of the command line (with --from-png's recorded values), checked."""
    paths, images = args.controlnet or [], args.control_image or []
    recorded = _recorded(args)
    if len(recorded) > len(paths):
        missing = "; ".join(f"ControlNet {r.index} ({r.model})" for r in recorded[len(paths) :])
        raise ValueError(
            f"--from-png {args.from_png} was made with {missing}: give --controlnet PATH and "
            "--control-image IMG for each (the control image is not stored in the PNG)"
        )
    if len(images) != len(paths):
        raise ValueError(
            f"got {len(paths)} --controlnet and {len(images)} --control-image; give one control "
            "image per ControlNet"
        )
    for name, _ in _NUMBERS:
        given = getattr(args, f"control_{name}") or []
        if len(given) > len(paths):
            raise ValueError(f"got {len(given)} --control-{name} for {len(paths)} --controlnet")
    specs = []
    for i, (path, image) in enumerate(zip(paths, images)):
        if not path.exists():
            raise ValueError(f"--controlnet: not found: {path}")
        load_image(image, "RGB", max_pixels)  # readable, not too large
        record = recorded[i] if i < len(recorded) else None
        values = {}
        for name, default in _NUMBERS:
            given = getattr(args, f"control_{name}") or []
            value = given[i] if i < len(given) else getattr(record, name, default)
            if not math.isfinite(value):
                raise ValueError(f"--control-{name} must be finite, got {value}")
            values[name] = value
        if not 0.0 <= values["start"] <= values["end"] <= 1.0:
            raise ValueError(
                f"ControlNet unit {i}: need 0 <= --control-start <= --control-end <= 1, got "
                f"{values['start']} and {values['end']}"
            )
        if record is not None:
            _compare(record, path)
        specs.append(ControlSpec(path, image, **values))
    return specs


def _compare(record: ControlRecord, path: Path) -> None:
    """Say so when the file given is not the one the PNG names (by name or hash)."""
    weights = path if path.is_file() else None
    digest = legacy_model_hash(weights) if weights is not None else None
    name = path.name if path.is_dir() else path.stem
    if record.name != name or (record.hash and digest and record.hash != digest):
        print(
            f"note: --from-png recorded ControlNet {record.index} as {record.model!r}; using "
            f"{path} ({name} [{digest}])",
            file=sys.stderr,
        )
    if record.module not in ("none", "None"):
        print(
            f"note: ControlNet {record.index} used the preprocessor {record.module!r}; genmodels "
            "uses the control image as given (give the preprocessed image)",
            file=sys.stderr,
        )


def load_units(specs: list[ControlSpec], pipe: LatentDiffusionPipeline) -> list[ControlUnit]:
    """Load each unit's ControlNet for ``pipe`` (a file loaded once for several units)."""
    loaded: dict[Path, LoadedControlNet] = {}
    units = []
    for s in specs:
        if s.path not in loaded:
            loaded[s.path] = load_controlnet(s.path, pipe)
        units.append(ControlUnit(loaded[s.path], s.image, s.weight, s.start, s.end))
    return units
