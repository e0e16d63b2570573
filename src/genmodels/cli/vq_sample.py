"""``genmodels vq-sample``: images from a VQGAN + GPT checkpoint directory.

The directory holds ``vqgan.safetensors`` / ``vqgan.json`` and ``transformer.safetensors`` /
``transformer.json`` (written by ``genmodels.checkpoints.runs.save_vqgan`` and
``genmodels.checkpoints.runs.save_transformer``), e.g. by
``genmodels train --preset vqgan-digits`` then ``--preset transformer-digits``. Image i is
sampled with seed ``seed + i``, so ``--n 4 --seed 10`` gives the same images as four runs with
seeds 10..13. An image-conditional model (``cond_image: lowres`` / ``edges``) takes the image
its condition is made from with ``--cond-image``; ``--size`` above the training size samples
through a sliding window of the training grid.
Every PNG carries its settings as JSON in a ``parameters`` text chunk. Files are named A1111's
way, ``NNNNN-seed.png`` with the next free number of the folder, so no run overwrites another's.
"""

from __future__ import annotations

import argparse
import json
import math

import numpy as np
import torch
from PIL import Image

from genmodels.checkpoints.runs import load_transformer, load_vqgan
from genmodels.data.transforms import load_rgb, transform_image
from genmodels.pipelines.image_reading import open_regular
from genmodels.pipelines.limits import MAX_PIXELS
from genmodels.pipelines.outputs import check_outdir, image_name, write_output
from genmodels.pipelines.seeds import check_seed
from genmodels.pipelines.vq_transformer import load_cond_stage, sample_images


def register(sub: argparse._SubParsersAction) -> None:
    parser = sub.add_parser(
        "vq-sample",
        help="sample images from a VQGAN + transformer checkpoint",
        description="Sample code sequences with the GPT and decode them with the VQGAN; "
        "writes one PNG per image with the parameters in its metadata.",
    )
    parser.add_argument(
        "--ckpt", required=True, help="checkpoint directory (vqgan.* + transformer.*)"
    )
    parser.add_argument("--class", dest="class_label", type=int, default=None,
                        help="class id for a class-conditional model")  # fmt: skip
    parser.add_argument("--temperature", type=float, default=1.0)
    parser.add_argument("--top-k", type=int, default=None)
    parser.add_argument("--top-p", type=float, default=None)
    parser.add_argument("--seed", type=int, default=0, help="seed of the first image")
    parser.add_argument("--n", type=int, default=4, help="number of images")
    parser.add_argument(
        "--cond-image", default=None, help="image to condition on (image-conditional models)"
    )
    parser.add_argument(
        "--size",
        type=int,
        default=None,
        help="output size in px (default: the training size; larger: sliding-window sampling)",
    )
    parser.add_argument("--scale", type=int, default=1, help="enlarge the PNGs (nearest)")
    parser.add_argument("--outdir", default="vq_samples")
    parser.set_defaults(func=run)


def _to_pil(image: torch.Tensor, scale: int) -> Image.Image:
    """(C, H, W) in [-1, 1] -> an 8-bit grey or RGB image."""
    arr = ((image.float().clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8)
    arr = arr.permute(1, 2, 0).numpy()
    img = Image.fromarray(arr[..., 0] if arr.shape[2] == 1 else np.ascontiguousarray(arr))
    if scale > 1:
        img = img.resize((img.width * scale, img.height * scale), Image.NEAREST)
    return img


def _load_cond(path: str, size: int, channels: int, n: int) -> torch.Tensor:
    """An image file, centre-cropped to size x size px, as (n, channels, size, size) in [-1, 1]."""
    x = transform_image(load_rgb(path), size)  # (3, size, size)
    x = x.mean(0, keepdim=True) if channels == 1 else x
    return x.unsqueeze(0).expand(n, -1, -1, -1)


def _check_args(args: argparse.Namespace) -> None:
    """The arguments that can be checked before the checkpoint is loaded."""
    if args.n < 1 or args.scale < 1:
        raise ValueError(f"--n and --scale must be >= 1, got {args.n} and {args.scale}")
    if args.size is not None and args.size < 1:
        raise ValueError(f"--size must be >= 1, got {args.size}")
    pixels = ((args.size or 1) * args.scale) ** 2
    if pixels > MAX_PIXELS or args.n * pixels > 16 * MAX_PIXELS:
        raise ValueError(
            f"--n {args.n} images with --size {args.size} --scale {args.scale} are more than "
            f"the limit of {MAX_PIXELS} pixels per image or {16 * MAX_PIXELS} in all"
        )
    if not math.isfinite(args.temperature) or args.temperature <= 0:
        raise ValueError(f"--temperature must be a finite number > 0, got {args.temperature}")
    if args.top_p is not None and not 0 < args.top_p <= 1:
        raise ValueError(f"--top-p must be in (0, 1], got {args.top_p}")
    if args.top_k is not None and args.top_k < 1:
        raise ValueError(f"--top-k must be >= 1, got {args.top_k}")
    check_seed(args.seed, args.n, "--seed")
    if args.cond_image is not None:
        open_regular(args.cond_image, "--cond-image").close()
    check_outdir(args.outdir)


def run(args: argparse.Namespace) -> int:
    _check_args(args)
    vq = load_vqgan(args.ckpt)
    gpt, meta = load_transformer(args.ckpt)
    if meta.n_codes != vq.n_codes:
        raise ValueError(
            f"{args.ckpt}: transformer expects {meta.n_codes} codes, VQGAN has {vq.n_codes}"
        )
    labels = None
    if meta.n_classes > 0:
        if args.class_label is None:
            raise ValueError(
                f"this model is class-conditional: pass --class 0..{meta.n_classes - 1}"
            )
        labels = torch.full((args.n,), args.class_label, dtype=torch.long)
    elif args.class_label is not None:
        raise ValueError("this model is not class-conditional: --class does not apply")
    size = args.size or meta.grid[0] * vq.config.downsample_factor
    if (size * args.scale) ** 2 > MAX_PIXELS:
        raise ValueError(f"{size * args.scale} px images are more than {MAX_PIXELS} pixels")
    cond_vq, cond = load_cond_stage(args.ckpt, meta, vq), None
    if cond_vq is not None:
        if args.cond_image is None:
            raise ValueError(
                f"this model is conditioned on an image ({meta.cond_image}): pass --cond-image"
            )
        cond = _load_cond(args.cond_image, size, vq.config.in_channels, args.n)
    elif args.cond_image is not None:
        raise ValueError("this model is not image-conditional: --cond-image does not apply")
    sampling = (args.seed, args.temperature, args.top_k, args.top_p)
    images = sample_images(
        vq, gpt, meta, labels, args.n, *sampling, cond_images=cond, cond_vq=cond_vq, size=size
    )
    for i, image in enumerate(images):
        params = {
            "ckpt": str(args.ckpt),
            "class": args.class_label,
            "temperature": args.temperature,
            "top_k": args.top_k,
            "top_p": args.top_p,
            "seed": args.seed + i,
            "size": size,
            "cond_image": args.cond_image,
        }
        image = _to_pil(image, args.scale)
        print(write_output(args.outdir, image_name(args.seed + i), image, json.dumps(params)))
    return 0
