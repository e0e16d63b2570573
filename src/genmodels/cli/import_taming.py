"""``genmodels import-taming SRC DST``: a taming-transformers checkpoint as a run directory.

SRC is a taming ``.ckpt`` (VQGAN or Net2NetTransformer), a bare state dict or a safetensors
file; DST (new or empty) gets ``vqgan.*`` and, for a transformer, ``transformer.*``, which
``genmodels vq-sample --ckpt DST`` samples. Settings the weights lack (``--n-head``, the class
count, the SOS token) come from the run's ``configs/*-project.yaml`` when it is found beside
the checkpoint or given with ``--config``.
"""

from __future__ import annotations

import argparse
from pathlib import Path


def register(sub: argparse._SubParsersAction) -> None:
    parser = sub.add_parser(
        "import-taming",
        help="turn a taming-transformers VQGAN / transformer checkpoint into a run directory",
        description="Read a taming-transformers checkpoint (weights only, no code from the file "
        "runs) and write a genmodels VQGAN (+ transformer) directory for vq-sample.",
    )
    parser.add_argument("src", type=Path, help="taming .ckpt, state dict or .safetensors")
    parser.add_argument("dst", type=Path, help="output run directory (new or empty)")
    parser.add_argument(
        "--n-head",
        type=int,
        default=None,
        help="the GPT's attention heads (not in the weights; taming used 16)",
    )
    parser.add_argument(
        "--config",
        type=Path,
        default=None,
        help="taming project YAML (default: <logdir>/configs/*-project.yaml)",
    )
    parser.add_argument(
        "--n-classes", type=int, default=None, help="class count of a class-conditional transformer"
    )
    parser.add_argument(
        "--sos-token",
        type=int,
        default=None,
        help="SOS token of an unconditional transformer (taming's default 0)",
    )
    parser.add_argument(
        "--size",
        type=int,
        default=None,
        help="training image size in px (default: the VQGAN's, 256)",
    )
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from genmodels.checkpoints.taming_import import import_taming

    done = import_taming(
        args.src,
        args.dst,
        n_head=args.n_head,
        project=args.config,
        n_classes=args.n_classes,
        sos_token=args.sos_token,
        size=args.size,
    )
    cfg = done.vq.config
    print(
        f"{args.src} -> {args.dst}: VQGAN f{cfg.downsample_factor}, {cfg.n_embed} codes "
        f"({cfg.quantizer})"
    )
    if done.meta is not None:
        m = done.meta
        cond = f"{m.n_classes} classes" if m.n_classes else f"SOS token {m.cond_start}"
        print(
            f"transformer: {m.gpt.n_layer} layers, {m.gpt.n_head} heads, {m.grid[0]}x{m.grid[1]}"
            f" codes, {cond}, {m.permuter} order"
        )
    for note in done.notes:
        print(f"note: {note}")
    return 0
