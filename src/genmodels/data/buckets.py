"""Aspect-ratio bucketing (NovelAI 2022, "NovelAI Improvements on Stable Diffusion"; kohya
sd-scripts ``BucketManager``): train on images of several shapes without cropping away most of a
wide or tall picture.

* ``make_buckets``: (width, height) pairs in multiples of ``step`` px whose area is about
  ``resolution``^2 and no larger, each side within [min_size, max_size], both orientations,
  plus the square.
* ``assign_bucket``: the bucket whose aspect ratio is closest to the image's (in log ratio, so a
  2:1 and a 1:2 error weigh the same).
* ``crop_to_bucket``: scale the image to cover the bucket (bicubic), crop it (centre or random),
  optionally flip; returns the crop as SDXL's micro-conditioning needs it (Podell et al. 2023,
  Sec. 2.2: the original size and the top-left of the crop in the resized image, as sgm and
  diffusers' ``train_text_to_image_sdxl.py`` compute it).
* ``bucket_batches``: one epoch of batches, each from one bucket, every item in at least one
  (a bucket's last, partial batch is filled up with the bucket's first items of the epoch), a
  pure function of (seed, epoch) so resumed and data-parallel runs draw the same batches.
"""

from __future__ import annotations

import math
import random
from dataclasses import dataclass

import torch
from PIL import Image
from torch import Tensor

from .transforms import to_tensor

__all__ = ["CropInfo", "assign_bucket", "bucket_batches", "crop_to_bucket", "make_buckets"]

Bucket = tuple[int, int]  # (width, height) in pixels


def make_buckets(resolution: int, step: int = 64, min_size: int | None = None,
                 max_size: int | None = None) -> list[Bucket]:  # fmt: skip
    """Equal-area buckets for ``resolution`` (sorted by aspect ratio, width / height)."""
    min_size = min_size if min_size is not None else max(step, resolution // 2)
    max_size = max_size if max_size is not None else resolution * 2
    if resolution % step or min_size % step or max_size % step:
        raise ValueError(
            f"bucket sizes must be multiples of {step}: resolution={resolution}, "
            f"min_size={min_size}, max_size={max_size}"
        )
    if not step <= min_size <= resolution <= max_size:
        raise ValueError(
            f"need step <= min_size <= resolution <= max_size, got {step}, {min_size}, "
            f"{resolution}, {max_size}"
        )
    area = resolution * resolution
    buckets = {(resolution, resolution)}
    for width in range(min_size, max_size + 1, step):
        height = area // width // step * step
        if min_size <= height <= max_size:
            buckets |= {(width, height), (height, width)}
    return sorted(buckets, key=lambda b: b[0] / b[1])


def assign_bucket(size: Bucket, buckets: list[Bucket]) -> Bucket:
    """The bucket with the aspect ratio nearest to ``size`` = (width, height)."""
    ratio = math.log(size[0] / size[1])
    return min(buckets, key=lambda b: (abs(math.log(b[0] / b[1]) - ratio), -b[0] * b[1]))


@dataclass(frozen=True)
class CropInfo:
    """Where a training crop came from, in pixels as (height, width) like sgm's conditioning."""

    original_size: tuple[int, int]  # the image before resizing
    crop_top_left: tuple[int, int]  # in the resized image
    target_size: tuple[int, int]  # the bucket
    flipped: bool = False


def crop_to_bucket(
    img: Image.Image, bucket: Bucket, crop: str = "center", flip: bool = False, seed: int = 0
) -> tuple[Tensor, CropInfo]:
    """Resize ``img`` to cover ``bucket`` (the smallest scale that does), crop it to the bucket
    (``center`` or ``random``, randomness from ``seed``), flip with probability 1/2 if ``flip``
    -> ((3, H, W) in [-1, 1], CropInfo)."""
    if crop not in ("center", "random"):
        raise ValueError(f"unknown crop {crop!r}; valid: center, random")
    rng = random.Random(seed)
    (w, h), (bw, bh) = img.size, bucket
    scale = max(bw / w, bh / h)
    nw, nh = max(bw, round(w * scale)), max(bh, round(h * scale))
    if (nw, nh) != (w, h):
        img = img.resize((nw, nh), Image.BICUBIC)
    if crop == "center":
        left, top = (nw - bw) // 2, (nh - bh) // 2
    else:
        left, top = rng.randint(0, nw - bw), rng.randint(0, nh - bh)
    img = img.crop((left, top, left + bw, top + bh))
    flipped = flip and rng.random() < 0.5
    if flipped:
        img = img.transpose(Image.FLIP_LEFT_RIGHT)
    return to_tensor(img), CropInfo((h, w), (top, left), (bh, bw), flipped)


def bucket_batches(buckets_of: list[int], batch_size: int, seed: int, epoch: int
                   ) -> list[list[int]]:  # fmt: skip
    """Epoch ``epoch``'s batches of item indices: each from one bucket (``buckets_of[i]`` is item
    i's bucket id), items shuffled within their bucket, batch order shuffled."""
    gen = torch.Generator().manual_seed((seed * 1_000_003 + epoch) % 2**63)
    by_bucket: dict[int, list[int]] = {}
    for item, b in enumerate(buckets_of):
        by_bucket.setdefault(b, []).append(item)
    batches = []
    for b in sorted(by_bucket):
        items = by_bucket[b]
        order = [items[int(i)] for i in torch.randperm(len(items), generator=gen)]
        for start in range(0, len(order), batch_size):
            chunk = order[start : start + batch_size]
            while len(chunk) < batch_size:  # fill from the bucket's start (wrapping around)
                chunk += order[: batch_size - len(chunk)]
            batches.append(chunk)
    return [batches[int(i)] for i in torch.randperm(len(batches), generator=gen)]
