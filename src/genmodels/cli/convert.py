"""``genmodels convert SRC DST --to {safetensors,diffusers}``: lossless checkpoint conversion.

``safetensors`` writes one LDM/sgm-layout file (what A1111 / ComfyUI load) with the detected
configs in its metadata; ``diffusers`` writes a diffusers model folder. Both directions keep
every tensor bit-identical; the source is only read. An existing DST is replaced only with
``--overwrite``; a diffusers folder appears under its name only once complete.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from genmodels.checkpoints.convert import TARGETS


def register(sub: argparse._SubParsersAction) -> None:
    parser = sub.add_parser(
        "convert",
        help="convert a checkpoint between single-file safetensors and a diffusers folder",
        description="Convert a Stable Diffusion checkpoint (.safetensors, .ckpt or diffusers "
        "folder). Tensors are copied bit-identically; the source is never modified.",
    )
    parser.add_argument("src", type=Path, help="checkpoint file or diffusers folder")
    parser.add_argument("dst", type=Path, help="output .safetensors file or (empty) folder")
    parser.add_argument("--to", choices=TARGETS, required=True, help="output format")
    parser.add_argument(
        "--prediction", choices=("eps", "v"), default=None, help="override eps/v detection"
    )
    parser.add_argument(
        "--overwrite",
        action="store_true",
        help="replace an existing DST file (or diffusers model folder); refused otherwise",
    )
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from genmodels.checkpoints.convert import convert_checkpoint

    spec = convert_checkpoint(
        args.src, args.dst, args.to, prediction=args.prediction, overwrite=args.overwrite
    )
    print(f"{args.src} -> {args.dst} ({args.to}): {spec.description}, {spec.prediction}")
    return 0
